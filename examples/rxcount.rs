//! Receive counter: receives on one port, drops the frames and prints the
//! rate every second and the totals at the end.
//!
//! ```text
//! cargo run --release --example rxcount -- --device 0000:02:00.0 --time 10
//! ```

mod common;

use std::time::Duration;

use clap::Parser;
use common::{args, Tick, Ticker};
use fastlane::framework::{PciAddress, Vfio};
use fastlane::nic::{NicConfig, PacketPool};

/// Receives frames (promiscuous) and counts them; prints packets/s and
/// bits/s every second and the totals, with the device's own counters, at
/// the end.
#[derive(Parser)]
#[command(name = "rxcount", after_help = "Ports: Intel igb or virtio-net.")]
struct Cli {
    /// Port bound to vfio-pci, e.g. 0000:02:00.0
    #[arg(long, value_name = "BDF", value_parser = args::pci_address)]
    device: PciAddress,
    /// How long to run
    #[arg(long, value_name = "SECONDS", default_value = "10", allow_hyphen_values = true,
          value_parser = args::duration)]
    time: Duration,
    /// End with a JSON summary line
    #[arg(long)]
    json: bool,
}

const BURST: usize = 64;
/// Polls between two looks at the clock.
const CLOCK_EVERY: u32 = 64;

fn run(device: PciAddress, time: Duration, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let pool = PacketPool::new(&vfio, 8192)?;
    // The largest receive ring, to ride out bursts.
    let mut port = common::open_port(&vfio, device, &pool, &NicConfig { rx_ring: 4096, ..NicConfig::default() })?;
    let mut cache = pool.cache(2 * BURST);
    println!("rxcount: {device} mac {:02x?} link {:?}", port.mac_address(), port.link_status());
    let mut pkts = Vec::with_capacity(BURST);
    let (mut packets, mut bytes) = (0u64, 0u64);
    let (mut last_packets, mut last_bytes) = (0u64, 0u64);
    let mut ticker = Ticker::new(CLOCK_EVERY, Some(time));
    loop {
        if port.rx_burst(&mut pkts, BURST) > 0 {
            packets += pkts.len() as u64;
            bytes += pkts.iter().map(|p| p.len() as u64).sum::<u64>();
            common::recycle(&mut cache, &mut pkts);
        }
        match ticker.poll() {
            Tick::Quiet => {}
            Tick::Done => break,
            Tick::Report { secs, at } => {
                println!(
                    "{at:6.1} s {:>12.0} pkt/s {:>9.2} Mbit/s",
                    (packets - last_packets) as f64 / secs,
                    (bytes - last_bytes) as f64 * 8.0 / secs / 1e6
                );
                (last_packets, last_bytes) = (packets, bytes);
            }
        }
    }
    let secs = ticker.elapsed();
    let st = port.stats();
    println!(
        "total: {packets} frames, {bytes} bytes in {secs:.2} s ({:.0} pkt/s); device: {} received, {} dropped, {} errors",
        packets as f64 / secs,
        st.rx_packets,
        st.rx_dropped,
        st.rx_errors
    );
    if json {
        println!(
            "{{\"tool\":\"rxcount\",\"device\":\"{device}\",\"packets\":{packets},\"bytes\":{bytes},\"seconds\":{secs:.3},\
             \"pps\":{:.0},\"device_rx_packets\":{},\"device_rx_dropped\":{}}}",
            packets as f64 / secs,
            st.rx_packets,
            st.rx_dropped
        );
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.device, cli.time, cli.json) {
        eprintln!("rxcount: {e}");
        std::process::exit(1);
    }
}
