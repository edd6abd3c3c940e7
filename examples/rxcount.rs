//! Receive counter: receives on one port, drops the frames and prints the
//! rate every second and the totals at the end.
//!
//! ```text
//! cargo run --release --example rxcount -- --device 0000:02:00.0 --time 10
//! ```

mod common;

use std::time::Duration;

use common::{fail, Args, Tick, Ticker};
use fastlane::framework::Vfio;
use fastlane::nic::igb::Igb;
use fastlane::nic::{Nic, NicConfig, PacketPool};

const USAGE: &str = "\
usage: rxcount --device BDF [--time SECONDS] [--json]

Receives frames (promiscuous) and counts them; prints packets/s and bits/s
every second and the totals, with the device's own counters, at the end.

  --device BDF    port bound to vfio-pci, e.g. 0000:02:00.0 (required)
  --time SECONDS  how long to run (default 10)
  --json          end with a JSON summary line";

const BURST: usize = 64;
/// Polls between two looks at the clock.
const CLOCK_EVERY: u32 = 64;

/// Opens the port (the one place that names the driver), with the largest
/// receive ring to ride out bursts.
fn open_port(vfio: &Vfio, bdf: &str, pool: &PacketPool) -> fastlane::nic::Result<Igb> {
    Igb::open(vfio, bdf, pool, &NicConfig { rx_ring: 4096, ..NicConfig::default() })
}

fn run(device: &str, time: Duration, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let pool = PacketPool::new(&vfio, 8192)?;
    let mut port = open_port(&vfio, device, &pool)?;
    println!("rxcount: {device} mac {:02x?} link {:?}", port.mac_address(), port.link_status());
    let mut pkts = Vec::with_capacity(BURST);
    let (mut packets, mut bytes) = (0u64, 0u64);
    let (mut last_packets, mut last_bytes) = (0u64, 0u64);
    let mut ticker = Ticker::new(CLOCK_EVERY, Some(time));
    loop {
        if port.rx_burst(&mut pkts, BURST) > 0 {
            packets += pkts.len() as u64;
            bytes += pkts.iter().map(|p| p.len() as u64).sum::<u64>();
            port.recycle(&mut pkts);
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
    let a = Args::parse(USAGE, &["json"]);
    a.only(USAGE, &["device", "time", "json"]);
    let device = a.str("device").unwrap_or_else(|| fail(USAGE, "--device is required"));
    let secs: f64 = a.get(USAGE, "time", 10.0);
    if !(secs > 0.0 && secs.is_finite()) {
        fail(USAGE, &format!("--time {secs}: must be a positive number of seconds"));
    }
    if let Err(e) = run(device, Duration::from_secs_f64(secs), a.flag("json")) {
        eprintln!("rxcount: {e}");
        std::process::exit(1);
    }
}
