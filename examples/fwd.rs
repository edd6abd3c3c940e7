//! Two-port forwarder: every frame received on one port is sent out of the
//! other, both ways, untouched (a two-port bridge without learning).
//! Prints the rate of each direction every second.
//!
//! ```text
//! cargo run --release --example fwd -- --ports 0000:01:00.0,0000:02:00.0 --time 10
//! ```
//!
//! Do not join both ports to the same segment (QEMU's test guest puts them
//! on one hub): every forwarded frame would come back and loop.

mod common;

use std::time::Duration;

use clap::Parser;
use common::{args, Tick, Ticker};
use fastlane::framework::{PciAddress, PoolCache, Vfio};
use fastlane::nic::{Nic, NicConfig, Packet, PacketPool};

/// Forwards frames between two ports in both directions and prints the
/// rate of each direction every second.
#[derive(Parser)]
#[command(name = "fwd", after_help = "Ports: Intel igb or virtio-net, in any mix.")]
struct Cli {
    /// The two ports, bound to vfio-pci (two different addresses)
    #[arg(long, value_name = "A,B", value_parser = args::port_pair)]
    ports: [PciAddress; 2],
    /// How long to run
    #[arg(long, value_name = "SECONDS", default_value = "10", allow_hyphen_values = true,
          value_parser = args::duration)]
    time: Duration,
    /// Frames per receive call, 1..512
    #[arg(long, value_name = "N", default_value = "32", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<usize>(s, 1, 512))]
    burst: usize,
}

/// Rounds (a burst each way) between two looks at the clock.
const CLOCK_EVERY: u32 = 64;

/// Frames forwarded and dropped (the output ring was full) in one direction.
#[derive(Clone, Copy, Default)]
struct Dir {
    forwarded: u64,
    dropped: u64,
}

/// One round in one direction: receive a burst, send what fits, drop the rest.
fn forward(from: &mut dyn Nic, to: &mut dyn Nic, pkts: &mut Vec<Packet>, cache: &mut PoolCache, burst: usize, d: &mut Dir) {
    if from.rx_burst(pkts, burst) == 0 {
        return;
    }
    d.forwarded += to.tx_burst(pkts) as u64;
    d.dropped += pkts.len() as u64;
    common::recycle(cache, pkts);
}

fn run(ports: [PciAddress; 2], time: Duration, burst: usize) -> Result<(), Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let pool = PacketPool::new(&vfio, 8192)?;
    let mut a = common::open_port(&vfio, ports[0], &pool, &NicConfig::default())?;
    let mut b = common::open_port(&vfio, ports[1], &pool, &NicConfig::default())?;
    let mut cache = pool.cache(4 * burst);
    println!("fwd: {} <-> {} (links {:?} / {:?})", ports[0], ports[1], a.link_status().up, b.link_status().up);
    let mut pkts = Vec::with_capacity(burst);
    let (mut ab, mut ba) = (Dir::default(), Dir::default());
    let (mut last_ab, mut last_ba) = (ab, ba);
    let mut ticker = Ticker::new(CLOCK_EVERY, Some(time));
    loop {
        forward(&mut *a, &mut *b, &mut pkts, &mut cache, burst, &mut ab);
        forward(&mut *b, &mut *a, &mut pkts, &mut cache, burst, &mut ba);
        match ticker.poll() {
            Tick::Quiet => {}
            Tick::Done => break,
            Tick::Report { secs, at } => {
                println!(
                    "{at:6.1} s  A->B {:>10.0} pkt/s ({} dropped)  B->A {:>10.0} pkt/s ({} dropped)",
                    (ab.forwarded - last_ab.forwarded) as f64 / secs,
                    ab.dropped - last_ab.dropped,
                    (ba.forwarded - last_ba.forwarded) as f64 / secs,
                    ba.dropped - last_ba.dropped
                );
                (last_ab, last_ba) = (ab, ba);
            }
        }
    }
    let secs = ticker.elapsed();
    println!(
        "total in {secs:.2} s: A->B {} forwarded, {} dropped; B->A {} forwarded, {} dropped",
        ab.forwarded, ab.dropped, ba.forwarded, ba.dropped
    );
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.ports, cli.time, cli.burst) {
        eprintln!("fwd: {e}");
        std::process::exit(1);
    }
}
