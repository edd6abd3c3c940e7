//! Packet generator: transmits frames on one port as fast as it can (or at
//! `--rate`) and prints the rate every second. Frames are raw (a private
//! EtherType and a sequence number) or, with `--ip`, `--udp` or `--flows`,
//! IPv4/UDP with correct checksums and a sequence number per flow.
//!
//! ```text
//! sudo ./hugepages.sh setup && sudo ./hugepages.sh bind 0000:01:00.0
//! cargo run --release --example pktgen -- --device 0000:01:00.0 --size 60 --time 10
//! cargo run --release --example pktgen -- --device 0000:01:00.0 --dst-mac 52:54:00:12:34:56 \
//!     --ip 10.0.0.2,10.0.0.1 --udp 5000,9000 --flows 8 --rate 10000 --count 100000
//! ```

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::{args, net, Tick, Ticker};
use fastlane::framework::{PciAddress, Vfio};
use fastlane::nic::proto::{self, UDP_OFFSET, UDP_PAYLOAD_OFFSET};
use fastlane::nic::{Nic, NicConfig, Packet, PacketPool, MAX_FRAME, MAX_JUMBO_FRAME, MIN_FRAME};

/// Transmits frames as fast as the port takes them and prints packets/s and
/// bits/s every second, then a summary.
#[derive(Parser)]
#[command(
    name = "pktgen",
    after_help = "Raw frames go from 02:00:00:00:00:01 to 02:00:00:00:00:02 with EtherType 0x88B5\n\
                  (local experimental) and a 64-bit sequence number after the header.\n\
                  With --ip, --udp or --flows: IPv4/UDP frames (IP and UDP checksums computed), from the\n\
                  port's MAC unless --src-mac; flow i uses source port SPORT+i, and the UDP payload starts\n\
                  with the flow's own 64-bit sequence number (big-endian, from 0); flows take turns.\n\
                  Ports: Intel igb or virtio-net."
)]
struct Cli {
    /// Port bound to vfio-pci, e.g. 0000:01:00.0
    #[arg(long, value_name = "BDF", value_parser = args::pci_address)]
    device: PciAddress,
    /// Frame size without CRC, 60..9014 (above 1514: jumbo frames, the
    /// port opened with MTU = size - 14, each frame a multi-buffer packet)
    #[arg(long, value_name = "BYTES", default_value_t = MIN_FRAME, allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<usize>(s, MIN_FRAME as u64, MAX_JUMBO_FRAME as u64))]
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
    /// Destination MAC [default: 02:00:00:00:00:02]
    #[arg(long, value_name = "MAC", value_parser = net::mac)]
    dst_mac: Option<[u8; 6]>,
    /// Source MAC [default: raw 02:00:00:00:00:01, UDP the port's own]
    #[arg(long, value_name = "MAC", value_parser = net::mac)]
    src_mac: Option<[u8; 6]>,
    /// IPv4/UDP frames between these addresses [default: 198.18.0.1,198.18.0.2]
    #[arg(long, value_name = "SRC,DST", value_parser = net::ip_pair)]
    ip: Option<([u8; 4], [u8; 4])>,
    /// IPv4/UDP frames between these ports [default: 9,9]
    #[arg(long, value_name = "SPORT,DPORT", value_parser = net::udp_ports)]
    udp: Option<(u16, u16)>,
    /// IPv4/UDP flows, source ports SPORT..SPORT+N-1 (RSS spreads them)
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u16>(s, 1, net::MAX_FLOWS.into()))]
    flows: Option<u16>,
    /// Packets per second at most [default: as fast as the port takes them]
    #[arg(long, value_name = "PPS", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 1, net::MAX_RATE))]
    rate: Option<u64>,
    /// End with a JSON summary line
    #[arg(long)]
    json: bool,
}

/// The IPv4/UDP frames to make (`--ip`, `--udp`, `--flows`).
struct UdpSpec {
    dst_mac: Option<[u8; 6]>,
    src_mac: Option<[u8; 6]>,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flows: u16,
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
    rate: Option<u64>,
    udp: Option<UdpSpec>,
    raw_macs: ([u8; 6], [u8; 6]),
    json: bool,
}

fn parse() -> Opts {
    let cli = Cli::parse();
    let limit = match (cli.count, cli.time) {
        (Some(n), _) => Limit::Count(n),
        (None, t) => Limit::Time(t.unwrap_or(Duration::from_secs(10))),
    };
    let udp = (cli.ip.is_some() || cli.udp.is_some() || cli.flows.is_some()).then(|| {
        let (src, dst) = cli.ip.unwrap_or(([198, 18, 0, 1], [198, 18, 0, 2]));
        let (sport, dport) = cli.udp.unwrap_or((9, 9));
        UdpSpec {
            dst_mac: cli.dst_mac,
            src_mac: cli.src_mac,
            src,
            dst,
            sport,
            dport,
            flows: cli.flows.unwrap_or(1),
        }
    });
    if let Some(u) = &udp {
        if let Err(e) = net::check_flows(u.sport, u.flows) {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '--flows <N>': {e}\n"),
            )
            .exit();
        }
    }
    Opts {
        device: cli.device,
        size: cli.size,
        limit,
        burst: cli.burst,
        rate: cli.rate,
        udp,
        raw_macs: (cli.dst_mac.unwrap_or(DST), cli.src_mac.unwrap_or(SRC)),
        json: cli.json,
    }
}

/// The frame every buffer starts with: raw, or IPv4/UDP with sequence
/// number 0 and the first flow's source port.
fn template(o: &Opts, port_mac: [u8; 6]) -> Result<Vec<u8>, proto::ProtoError> {
    let Some(u) = &o.udp else {
        let mut frame = vec![0u8; o.size];
        frame[..6].copy_from_slice(&o.raw_macs.0);
        frame[6..12].copy_from_slice(&o.raw_macs.1);
        frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        for (i, b) in frame.iter_mut().enumerate().skip(SEQ_OFFSET + 8) {
            *b = i as u8;
        }
        return Ok(frame);
    };
    // size >= MIN_FRAME (60) > UDP_PAYLOAD_OFFSET + 8 (50): room for the sequence number.
    let payload: Vec<u8> = (UDP_PAYLOAD_OFFSET..o.size)
        .map(|i| {
            if i < UDP_PAYLOAD_OFFSET + 8 {
                0
            } else {
                i as u8
            }
        })
        .collect();
    let mut frame = Vec::with_capacity(o.size);
    let dst_mac = u.dst_mac.unwrap_or(DST);
    let src_mac = u.src_mac.unwrap_or(port_mac);
    proto::build_udp(
        &mut frame, dst_mac, src_mac, u.src, u.dst, u.sport, u.dport, &payload,
    )?;
    Ok(frame)
}

/// Writes `frame` once into every buffer the port can hand out (its cache
/// and the pool behind it: all but its receive ring's), where
/// `alloc_packet` puts frames; afterwards only the sequence number (and
/// for UDP the source port and checksum) changes.
fn prefill(port: &mut dyn Nic, frame: &[u8]) -> fastlane::nic::Result<()> {
    let mut all = Vec::new();
    while let Ok(mut p) = port.alloc_packet(frame.len()) {
        p.write(frame)?;
        all.push(p);
    }
    port.recycle(&mut all);
    Ok(())
}

/// Per-packet part of an IPv4/UDP frame: the UDP header (source port and
/// checksum vary by flow and sequence number) and the sequence number,
/// 16 bytes from [`UDP_OFFSET`], written with one copy.
struct UdpStamp {
    /// The header as built (source port of flow 0, checksum over seq 0).
    hdr: [u8; 8],
    /// One's complement sum of pseudo-header, header and payload with the
    /// source port, checksum and sequence number taken as zero.
    base_sum: u64,
    sport: u16,
    flows: u64,
}

impl UdpStamp {
    fn new(frame: &[u8], u: &UdpSpec) -> Result<UdpStamp, Box<dyn std::error::Error>> {
        let f = proto::parse_udp_frame(frame)?;
        let mut seg = f.udp.segment.to_vec();
        seg[0..2].fill(0);
        seg[6..8].fill(0);
        seg[8..16].fill(0);
        let len = u16::try_from(seg.len())?;
        let base_sum = proto::checksum_add(
            proto::pseudo_header_sum(u.src, u.dst, proto::IPPROTO_UDP, len),
            &seg,
        );
        let mut hdr = [0u8; 8];
        hdr.copy_from_slice(&frame[UDP_OFFSET..UDP_OFFSET + 8]);
        Ok(UdpStamp {
            hdr,
            base_sum,
            sport: u.sport,
            flows: u64::from(u.flows),
        })
    }

    /// The 16 bytes for packet number `n`: flow `n % flows`, that flow's
    /// sequence number `n / flows`.
    #[inline]
    fn stamp(&self, n: u64) -> [u8; 16] {
        // flow < flows <= MAX_FLOWS, and sport + flows - 1 <= 65535 (checked).
        let sport = self.sport + (n % self.flows) as u16;
        let seq = (n / self.flows).to_be_bytes();
        let sum = proto::checksum_add(self.base_sum + u64::from(sport), &seq);
        let c = match proto::checksum_fold(sum) {
            0 => 0xffff,
            c => c,
        };
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.hdr);
        out[0..2].copy_from_slice(&sport.to_be_bytes());
        out[6..8].copy_from_slice(&c.to_be_bytes());
        out[8..].copy_from_slice(&seq);
        out
    }
}

/// Writes `bytes` at `at` in `f` (nothing if they do not fit).
#[inline]
fn copy_into(f: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = f.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

fn rate_line(label: &str, packets: u64, secs: f64, size: usize) -> (f64, f64, f64) {
    let pps = packets as f64 / secs;
    let bps = pps * (size * 8) as f64;
    let wire = pps * ((size + WIRE_OVERHEAD) * 8) as f64;
    println!(
        "{label} {pps:>12.0} pkt/s {:>9.2} Mbit/s ({:.2} Mbit/s on the wire)",
        bps / 1e6,
        wire / 1e6
    );
    (pps, bps, wire)
}

fn run(o: &Opts) -> Result<(), Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    // Frames cycle through the port's own cache: alloc_packet takes them,
    // the transmit reclaim gives them back, never through the pool's
    // shared queue.
    let pool = PacketPool::new(&vfio, 4096)?;
    // The port's MAC is the default UDP source: open first, then fill the
    // buffers the port did not take for its receive ring.
    let jumbo = o.size > MAX_FRAME;
    let cfg = NicConfig {
        // A jumbo frame carries size - 14 bytes of IP.
        mtu: o.size.saturating_sub(14).max(1500) as u16,
        ..NicConfig::default()
    };
    let mut port = common::open_port(&vfio, o.device, &pool, &cfg)?;
    let mut frame = template(o, port.mac_address())?;
    if !jumbo {
        prefill(port.as_mut(), &frame)?;
    }
    let stamp = match &o.udp {
        Some(u) => Some(UdpStamp::new(&frame, u)?),
        None => None,
    };
    let pacer = o.rate.map(net::Pacer::new);
    println!(
        "pktgen: {} mac {} link {:?}, {}-byte frames, burst {}",
        o.device,
        net::fmt_mac(&port.mac_address()),
        port.link_status(),
        o.size,
        o.burst
    );
    if let Some(u) = &o.udp {
        println!(
            "pktgen: IPv4/UDP {} -> {}, {}:{}..{} -> {}:{}, {} flow(s){}",
            net::fmt_mac(&frame[6..12].try_into()?),
            net::fmt_mac(&frame[..6].try_into()?),
            std::net::Ipv4Addr::from(u.src),
            u.sport,
            u32::from(u.sport) + u32::from(u.flows) - 1,
            std::net::Ipv4Addr::from(u.dst),
            u.dport,
            u.flows,
            o.rate
                .map(|r| format!(", at most {r} pkt/s"))
                .unwrap_or_default()
        );
    }
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
        let mut want = (o.burst - batch.len()).min(remaining.min(o.burst as u64) as usize);
        if let Some(p) = &pacer {
            // usize: at most o.burst.
            want = p.allowed(Duration::from_secs_f64(ticker.elapsed()), made, want as u64) as usize;
        }
        for _ in 0..want {
            if jumbo {
                // Several buffers a frame, from the port's cache; the
                // whole frame is written each time (no prefilled buffers).
                let Ok(mut p) = port.alloc_packet(o.size) else { break };
                match &stamp {
                    Some(s) => frame[UDP_OFFSET..UDP_OFFSET + 16].copy_from_slice(&s.stamp(made)),
                    None => frame[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&made.to_be_bytes()),
                }
                p.write(&frame)?;
                batch.push(p);
                made += 1;
                continue;
            }
            let Ok(mut p) = port.alloc_packet(o.size) else { break };
            // o.size >= MIN_FRAME: both fields are inside the frame.
            let f = p.data_mut();
            match &stamp {
                Some(s) => copy_into(f, UDP_OFFSET, &s.stamp(made)),
                None => copy_into(f, SEQ_OFFSET, &made.to_be_bytes()),
            }
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
    println!(
        "total: {sent} frames in {secs:.2} s; device counted {} sent, {} bytes",
        stats.tx_packets, stats.tx_bytes
    );
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
