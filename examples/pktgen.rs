//! Packet generator: transmits frames on one port as fast as it can and
//! prints the rate every second.
//!
//! ```text
//! sudo ./hugepages.sh setup && sudo ./hugepages.sh bind 0000:01:00.0
//! cargo run --release --example pktgen -- --device 0000:01:00.0 --size 60 --time 10
//! ```

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::{args, Tick, Ticker};
use fastlane::framework::{PciAddress, Vfio};
use fastlane::nic::{NicConfig, Packet, PacketPool, MAX_FRAME, MIN_FRAME};

/// Transmits frames as fast as the port takes them and prints packets/s and
/// bits/s every second, then a summary.
#[derive(Parser)]
#[command(
    name = "pktgen",
    after_help = "Frames go from 02:00:00:00:00:01 to 02:00:00:00:00:02 with EtherType 0x88B5\n\
                  (local experimental) and a 64-bit sequence number after the header.\n\
                  Ports: Intel igb or virtio-net."
)]
struct Cli {
    /// Port bound to vfio-pci, e.g. 0000:01:00.0
    #[arg(long, value_name = "BDF", value_parser = args::pci_address)]
    device: PciAddress,
    /// Frame size without CRC, 60..1514
    #[arg(long, value_name = "BYTES", default_value_t = MIN_FRAME, allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<usize>(s, MIN_FRAME as u64, MAX_FRAME as u64))]
    size: usize,
    /// Stop after N frames
    #[arg(long, value_name = "N", conflicts_with = "time", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 1, u64::MAX))]
    count: Option<u64>,
    /// Stop after this long [default: 10]
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = args::duration)]
    time: Option<Duration>,
    /// Frames per tx_burst call, 1..512
    #[arg(long, value_name = "N", default_value = "32", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<usize>(s, 1, 512))]
    burst: usize,
    /// End with a JSON summary line
    #[arg(long)]
    json: bool,
}

/// Destination and source of the generated frames: locally administered.
const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// EtherType of the generated frames (IEEE 802 local experimental).
const ETHERTYPE: u16 = 0x88b5;
/// Where the sequence number sits in the frame.
const SEQ_OFFSET: usize = 14;
/// Preamble, start delimiter, CRC and inter-frame gap: bytes a frame
/// occupies on the wire besides its own.
const WIRE_OVERHEAD: usize = 24;
/// Bursts between two looks at the clock.
const CLOCK_EVERY: u32 = 64;

enum Limit {
    Count(u64),
    Time(Duration),
}

struct Opts {
    device: PciAddress,
    size: usize,
    limit: Limit,
    burst: usize,
    json: bool,
}

fn parse() -> Opts {
    let cli = Cli::parse();
    let limit = match (cli.count, cli.time) {
        (Some(n), _) => Limit::Count(n),
        (None, t) => Limit::Time(t.unwrap_or(Duration::from_secs(10))),
    };
    Opts { device: cli.device, size: cli.size, limit, burst: cli.burst, json: cli.json }
}

/// Writes the frame header and padding into every buffer of `pool` once;
/// afterwards only the sequence number changes.
fn prefill(pool: &PacketPool, size: usize) -> fastlane::nic::Result<()> {
    let mut frame = vec![0u8; size];
    frame[..6].copy_from_slice(&DST);
    frame[6..12].copy_from_slice(&SRC);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    for (i, b) in frame.iter_mut().enumerate().skip(SEQ_OFFSET + 8) {
        *b = i as u8;
    }
    let mut all = Vec::with_capacity(pool.pool().capacity() as usize);
    while let Ok(mut p) = pool.alloc() {
        p.write(&frame)?;
        all.push(p);
    }
    Ok(())
}

fn rate_line(label: &str, packets: u64, secs: f64, size: usize) -> (f64, f64, f64) {
    let pps = packets as f64 / secs;
    let bps = pps * (size * 8) as f64;
    let wire = pps * ((size + WIRE_OVERHEAD) * 8) as f64;
    println!("{label} {pps:>12.0} pkt/s {:>9.2} Mbit/s ({:.2} Mbit/s on the wire)", bps / 1e6, wire / 1e6);
    (pps, bps, wire)
}

fn run(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    // Every buffer gets the frame before the port takes some for its
    // receive ring; frames then cycle between the cache below and the pool.
    let pool = PacketPool::new(&vfio, 4096)?;
    prefill(&pool, o.size)?;
    let mut port = common::open_port(&vfio, o.device, &pool, &NicConfig::default())?;
    // Frames come from this cache; sent buffers go back to the pool.
    let mut cache = pool.cache(2 * o.burst);
    println!(
        "pktgen: {} mac {:02x?} link {:?}, {}-byte frames, burst {}",
        o.device,
        port.mac_address(),
        port.link_status(),
        o.size,
        o.burst
    );
    let mut batch: Vec<Packet> = Vec::with_capacity(o.burst);
    let (mut made, mut sent, mut last_sent) = (0u64, 0u64, 0u64);
    let run_time = match o.limit {
        Limit::Time(t) => Some(t),
        Limit::Count(_) => None,
    };
    let mut ticker = Ticker::new(CLOCK_EVERY, run_time);
    let mut time_up = false;
    loop {
        match ticker.poll() {
            Tick::Quiet => {}
            Tick::Done => time_up = true,
            Tick::Report { secs, at } => {
                rate_line(&format!("{at:6.1} s"), sent - last_sent, secs, o.size);
                last_sent = sent;
            }
        }
        let remaining = match o.limit {
            Limit::Count(n) => n - made,
            Limit::Time(_) if time_up => {
                batch.clear(); // not sent: the time is up
                break;
            }
            Limit::Time(_) => u64::MAX,
        };
        if remaining == 0 && batch.is_empty() {
            break;
        }
        let want = (o.burst - batch.len()).min(remaining.min(o.burst as u64) as usize);
        for _ in 0..want {
            let Ok(buf) = cache.alloc() else { break };
            let mut p = Packet::new(buf, o.size)?;
            p.buf_mut().write(SEQ_OFFSET, &made.to_be_bytes())?;
            batch.push(p);
            made += 1;
        }
        sent += port.tx_burst(&mut batch) as u64;
    }
    let secs = ticker.elapsed();
    let flush_start = Instant::now();
    while port.tx_in_flight() > 0 && flush_start.elapsed() < Duration::from_secs(1) {
        port.tx_burst(&mut batch);
    }
    let stats = port.stats();
    println!("total: {sent} frames in {secs:.2} s; device counted {} sent, {} bytes", stats.tx_packets, stats.tx_bytes);
    let (pps, bps, wire) = rate_line("average", sent, secs, o.size);
    if o.json {
        println!(
            "{{\"tool\":\"pktgen\",\"device\":\"{}\",\"size\":{},\"burst\":{},\"packets\":{sent},\"seconds\":{secs:.3},\
             \"pps\":{pps:.0},\"bps\":{bps:.0},\"wire_bps\":{wire:.0},\"device_tx_packets\":{}}}",
            o.device, o.size, o.burst, stats.tx_packets
        );
    }
    Ok(())
}

fn main() {
    let opts = parse();
    if let Err(e) = run(&opts) {
        eprintln!("pktgen: {e}");
        std::process::exit(1);
    }
}
