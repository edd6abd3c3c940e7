//! Receive counter: receives on one port, drops the frames and prints the
//! rate every second; at the end the totals, IPv4/UDP flows with their
//! sequence gaps (loss, reordering, duplicates, from the sequence number
//! pktgen puts at the start of each flow's UDP payload) and the IP and UDP
//! checksum verdicts (verified in software).
//!
//! ```text
//! cargo run --release --example rxcount -- --device 0000:02:00.0 --time 10
//! ```

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use clap::Parser;
use common::net::{self, SeqTracker};
use common::{args, Tick, Ticker};
use fastlane::framework::{PciAddress, Vfio};
use fastlane::nic::proto::{self, Parsed, ProtoError, Udp, UdpChecksum};
use fastlane::nic::{NicConfig, PacketPool, MAX_MTU};

/// Receives frames (promiscuous) and counts them; prints packets/s and
/// bits/s every second and the totals, with the device's own counters, at
/// the end.
#[derive(Parser)]
#[command(
    name = "rxcount",
    after_help = "IPv4/UDP frames are counted per flow (addresses and ports); a UDP payload of 8 bytes or\n\
                  more starts with the flow's 64-bit sequence number (pktgen's), from which loss,\n\
                  reordering and duplicates are counted. IP and UDP checksums are verified in software.\n\
                  Ports: Intel igb or virtio-net."
)]
struct Cli {
    /// Port bound to vfio-pci, e.g. 0000:02:00.0
    #[arg(long, value_name = "BDF", value_parser = args::pci_address)]
    device: PciAddress,
    /// How long to run at most
    #[arg(long, value_name = "SECONDS", default_value = "10", allow_hyphen_values = true,
          value_parser = args::duration)]
    time: Duration,
    /// Stop after N frames
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 1, u64::MAX))]
    count: Option<u64>,
    /// Flows listed at the end (most packets first)
    #[arg(long, value_name = "N", default_value = "16", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<usize>(s, 0, MAX_FLOWS as u64))]
    show_flows: usize,
    /// Largest IP packet per frame: 1500, up to 9000 to receive jumbo
    /// frames (multi-buffer packets)
    #[arg(long, value_name = "BYTES", default_value = "1500", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u16>(s, 68, u64::from(MAX_MTU)))]
    mtu: u16,
    /// End with a JSON summary line
    #[arg(long)]
    json: bool,
}

const BURST: usize = 64;
/// Polls between two looks at the clock.
const CLOCK_EVERY: u32 = 64;
/// Flows tracked at most; frames of further flows are counted apart.
const MAX_FLOWS: usize = 65536;

/// A UDP flow: source and destination address and port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
struct FlowKey {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
}

#[derive(Default)]
struct Flow {
    packets: u64,
    bytes: u64,
    seq: SeqTracker,
}

/// What the frames were, as far as the software checks tell.
#[derive(Default)]
struct Verdicts {
    ipv4: u64,
    ip_csum_bad: u64,
    udp: u64,
    udp_csum_good: u64,
    udp_csum_bad: u64,
    udp_csum_absent: u64,
    arp: u64,
    other: u64,
    /// Frames refused by the parsers, by reason.
    malformed: HashMap<&'static str, u64>,
    untracked_flows: u64,
}

fn reason(e: &ProtoError) -> &'static str {
    match e {
        ProtoError::Truncated { .. } => "truncated",
        ProtoError::WrongProtocol(_) => "wrong protocol",
        ProtoError::BadVersion(_) => "IP version",
        ProtoError::BadIhl(_) => "IHL below 5",
        ProtoError::BadLength { .. } => "bad length",
        ProtoError::Fragment => "fragment",
        ProtoError::BadArp => "bad ARP",
        ProtoError::BadIpChecksum | ProtoError::BadChecksum(_) => "bad checksum",
    }
}

/// Classifies one frame and counts it.
fn account(frame: &[u8], v: &mut Verdicts, flows: &mut HashMap<FlowKey, Flow>) {
    let ip = match proto::parse(frame) {
        Err(e) => {
            *v.malformed.entry(reason(&e)).or_default() += 1;
            return;
        }
        Ok(Parsed::Arp(..)) => {
            v.arp += 1;
            return;
        }
        Ok(Parsed::Other(_)) => {
            v.other += 1;
            return;
        }
        Ok(Parsed::Ipv4(_, ip)) => ip,
    };
    v.ipv4 += 1;
    if !ip.checksum_ok() {
        v.ip_csum_bad += 1;
    }
    let udp = match Udp::parse(&ip) {
        Ok(u) => u,
        Err(ProtoError::WrongProtocol(_)) => return,
        Err(e) => {
            *v.malformed.entry(reason(&e)).or_default() += 1;
            return;
        }
    };
    v.udp += 1;
    match udp.checksum(&ip) {
        UdpChecksum::Good => v.udp_csum_good += 1,
        UdpChecksum::Bad => v.udp_csum_bad += 1,
        UdpChecksum::Absent => v.udp_csum_absent += 1,
    }
    let key = FlowKey {
        src: ip.hdr.src,
        dst: ip.hdr.dst,
        sport: udp.hdr.sport.get(),
        dport: udp.hdr.dport.get(),
    };
    if flows.len() >= MAX_FLOWS && !flows.contains_key(&key) {
        v.untracked_flows += 1;
        return;
    }
    let f = flows.entry(key).or_default();
    f.packets += 1;
    f.bytes += frame.len() as u64;
    if let Some(seq) = udp.payload.get(..8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(seq);
        f.seq.see(u64::from_be_bytes(b));
    }
}

fn flow_name(k: &FlowKey) -> String {
    format!(
        "{}:{} -> {}:{}",
        Ipv4Addr::from(k.src),
        k.sport,
        Ipv4Addr::from(k.dst),
        k.dport
    )
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let device = cli.device;
    let vfio = Vfio::new()?;
    let pool = PacketPool::new(&vfio, 8192)?;
    // The largest receive ring, to ride out bursts.
    let cfg = NicConfig {
        rx_ring: 4096,
        mtu: cli.mtu,
        ..NicConfig::default()
    };
    let mut port = common::open_port(&vfio, device, &pool, &cfg)?;
    let mut cache = pool.cache(2 * BURST);
    println!(
        "rxcount: {device} mac {} link {:?}",
        net::fmt_mac(&port.mac_address()),
        port.link_status()
    );
    let mut pkts = Vec::with_capacity(BURST);
    let (mut packets, mut bytes) = (0u64, 0u64);
    let (mut last_packets, mut last_bytes) = (0u64, 0u64);
    let mut verdicts = Verdicts::default();
    let mut flows: HashMap<FlowKey, Flow> = HashMap::new();
    // Up to a VLAN tag more than the MTU says.
    let mut frame = vec![0u8; cfg.max_frame()? + 4];
    let mut ticker = Ticker::new(CLOCK_EVERY, Some(cli.time));
    let limit = cli.count.unwrap_or(u64::MAX);
    while packets < limit {
        let want = BURST.min(usize::try_from(limit - packets).unwrap_or(BURST));
        if port.rx_burst(&mut pkts, want) > 0 {
            packets += pkts.len() as u64;
            for p in &pkts {
                bytes += p.len() as u64;
                let Some(f) = frame.get_mut(..p.len()) else {
                    *verdicts.malformed.entry("longer than the MTU").or_default() += 1;
                    continue;
                };
                p.read(0, f)?;
                account(f, &mut verdicts, &mut flows);
            }
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
    let v = &verdicts;
    let mut malformed: Vec<_> = v.malformed.iter().map(|(k, n)| (*k, *n)).collect();
    malformed.sort();
    let malformed_total: u64 = malformed.iter().map(|(_, n)| n).sum();
    println!(
        "checksums: IPv4 {} ({} bad header checksums); UDP {} ({} good, {} bad, {} without); ARP {}, other {}; malformed {malformed_total} {malformed:?}",
        v.ipv4, v.ip_csum_bad, v.udp, v.udp_csum_good, v.udp_csum_bad, v.udp_csum_absent, v.arp, v.other
    );
    let mut list: Vec<(&FlowKey, &Flow)> = flows.iter().collect();
    list.sort_by(|a, b| b.1.packets.cmp(&a.1.packets).then(a.0.cmp(b.0)));
    let (mut lost, mut reordered, mut dups) = (0u64, 0u64, 0u64);
    for (_, f) in &list {
        lost += f.seq.lost();
        reordered += f.seq.reordered;
        dups += f.seq.duplicates;
    }
    println!(
        "flows: {} ({} frames of untracked flows); sequence: {lost} lost, {reordered} reordered, {dups} duplicates",
        list.len(),
        v.untracked_flows
    );
    // name, frames, bytes, next sequence number, lost, reordered, duplicates
    let rows: Vec<(String, [u64; 6])> = list
        .iter()
        .take(cli.show_flows)
        .map(|(k, f)| {
            let s = &f.seq;
            (
                flow_name(k),
                [
                    f.packets,
                    f.bytes,
                    s.next(),
                    s.lost(),
                    s.reordered,
                    s.duplicates,
                ],
            )
        })
        .collect();
    for (name, [n, b, next, lost, re, dup]) in &rows {
        println!("  {name:<44} {n:>10} frames {b:>12} bytes, seq next {next} lost {lost} reordered {re} dup {dup}");
    }
    if cli.json {
        let flows_json: Vec<String> = rows
            .iter()
            .map(|(name, [n, b, next, lost, re, dup])| {
                format!(
                    "{{\"flow\":\"{name}\",\"frames\":{n},\"bytes\":{b},\"next_seq\":{next},\"lost\":{lost},\"reordered\":{re},\"duplicates\":{dup}}}"
                )
            })
            .collect();
        println!(
            "{{\"tool\":\"rxcount\",\"device\":\"{device}\",\"packets\":{packets},\"bytes\":{bytes},\"seconds\":{secs:.3},\
             \"pps\":{:.0},\"device_rx_packets\":{},\"device_rx_dropped\":{},\"ipv4\":{},\"ip_csum_bad\":{},\"udp\":{},\
             \"udp_csum_good\":{},\"udp_csum_bad\":{},\"udp_csum_absent\":{},\"malformed\":{malformed_total},\
             \"flow_count\":{},\"lost\":{lost},\"reordered\":{reordered},\"duplicates\":{dups},\"flows\":[{}]}}",
            packets as f64 / secs,
            st.rx_packets,
            st.rx_dropped,
            v.ipv4,
            v.ip_csum_bad,
            v.udp,
            v.udp_csum_good,
            v.udp_csum_bad,
            v.udp_csum_absent,
            list.len(),
            flows_json.join(",")
        );
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("rxcount: {e}");
        std::process::exit(1);
    }
}
