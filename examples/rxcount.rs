//! Receive counter: receives on one port, drops the frames and prints the
//! rate every second and the totals at the end.
//!
//! ```text
//! cargo run --release --example rxcount -- --device 0000:02:00.0 --time 10
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{fail, Args};
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
    let start = Instant::now();
    let (mut tick, mut polls) = (start, 0u32);
    loop {
        if port.rx_burst(&mut pkts, BURST) > 0 {
            packets += pkts.len() as u64;
            bytes += pkts.iter().map(|p| p.len() as u64).sum::<u64>();
            port.recycle(&mut pkts);
        }
        // The clock only every CLOCK_EVERY polls: in a guest it costs more
        // than a poll.
        polls = polls.wrapping_add(1);
        if polls % CLOCK_EVERY != 0 {
            continue;
        }
        let now = Instant::now();
        if now - start >= time {
            break;
        }
        if now - tick >= Duration::from_secs(1) {
            let secs = (now - tick).as_secs_f64();
            println!(
                "{:6.1} s {:>12.0} pkt/s {:>9.2} Mbit/s",
                (now - start).as_secs_f64(),
                (packets - last_packets) as f64 / secs,
                (bytes - last_bytes) as f64 * 8.0 / secs / 1e6
            );
            (tick, last_packets, last_bytes) = (now, packets, bytes);
        }
    }
    let secs = start.elapsed().as_secs_f64();
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
