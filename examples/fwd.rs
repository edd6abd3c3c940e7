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

use common::{fail, Args, Tick, Ticker};
use fastlane::framework::Vfio;
use fastlane::nic::igb::Igb;
use fastlane::nic::{Nic, NicConfig, Packet, PacketPool};

const USAGE: &str = "\
usage: fwd --ports BDF,BDF [--time SECONDS] [--burst N]

Forwards frames between two ports in both directions and prints the rate
of each direction every second.

  --ports A,B     the two ports, bound to vfio-pci (required)
  --time SECONDS  how long to run (default 10)
  --burst N       frames per receive call, 1..512 (default 32)";

/// Rounds (a burst each way) between two looks at the clock.
const CLOCK_EVERY: u32 = 64;

/// Opens a port (the one place that names the driver).
fn open_port(vfio: &Vfio, bdf: &str, pool: &PacketPool) -> fastlane::nic::Result<Igb> {
    Igb::open(vfio, bdf, pool, &NicConfig::default())
}

/// Frames forwarded and dropped (the output ring was full) in one direction.
#[derive(Clone, Copy, Default)]
struct Dir {
    forwarded: u64,
    dropped: u64,
}

/// One round in one direction: receive a burst, send what fits, drop the rest.
fn forward(from: &mut Igb, to: &mut Igb, pkts: &mut Vec<Packet>, burst: usize, d: &mut Dir) {
    if from.rx_burst(pkts, burst) == 0 {
        return;
    }
    d.forwarded += to.tx_burst(pkts) as u64;
    d.dropped += pkts.len() as u64;
    from.recycle(pkts);
}

fn run(ports: [&str; 2], time: Duration, burst: usize) -> Result<(), Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let pool = PacketPool::new(&vfio, 8192)?;
    let mut a = open_port(&vfio, ports[0], &pool)?;
    let mut b = open_port(&vfio, ports[1], &pool)?;
    println!("fwd: {} <-> {} (links {:?} / {:?})", ports[0], ports[1], a.link_status().up, b.link_status().up);
    let mut pkts = Vec::with_capacity(burst);
    let (mut ab, mut ba) = (Dir::default(), Dir::default());
    let (mut last_ab, mut last_ba) = (ab, ba);
    let mut ticker = Ticker::new(CLOCK_EVERY, Some(time));
    loop {
        forward(&mut a, &mut b, &mut pkts, burst, &mut ab);
        forward(&mut b, &mut a, &mut pkts, burst, &mut ba);
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
    let a = Args::parse(USAGE, &[]);
    a.only(USAGE, &["ports", "time", "burst"]);
    let spec = a.str("ports").unwrap_or_else(|| fail(USAGE, "--ports is required"));
    let ports: Vec<&str> = spec.split(',').collect();
    let [p0, p1] = ports[..] else {
        fail(USAGE, &format!("--ports {spec:?}: expected two addresses separated by a comma"));
    };
    if p0 == p1 {
        fail(USAGE, "--ports: the two ports must differ");
    }
    let secs: f64 = a.get(USAGE, "time", 10.0);
    if !(secs > 0.0 && secs.is_finite()) {
        fail(USAGE, &format!("--time {secs}: must be a positive number of seconds"));
    }
    let burst = a.get(USAGE, "burst", 32usize);
    if !(1..=512).contains(&burst) {
        fail(USAGE, &format!("--burst {burst}: must be 1..512"));
    }
    if let Err(e) = run([p0, p1], Duration::from_secs_f64(secs), burst) {
        eprintln!("fwd: {e}");
        std::process::exit(1);
    }
}
