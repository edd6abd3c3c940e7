//! A network service other stacks can talk to: on one IPv4 address (and
//! the port's MAC) it answers ARP requests and ICMP echo requests (ping)
//! and sends every UDP datagram back to where it came from (addresses and
//! ports swapped, checksums recomputed). One thread per queue: several
//! queues with RSS spreading the flows (igb; virtio-net with MQ and RSS).
//!
//! ```text
//! sudo ./hugepages.sh setup && sudo ./hugepages.sh bind 0000:02:00.0
//! cargo run --release --example udp_echo -- --device 0000:02:00.0 --ip 10.11.0.2 --queues 2
//! # elsewhere on the link: ping 10.11.0.2; echo hi | nc -u 10.11.0.2 7
//! ```

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{args, net};
use fastlane::framework::{PciAddress, Vfio};
use fastlane::nic::proto::{self, Answered, ProtoError};
use fastlane::nic::{Nic, NicConfig, Packet, PacketPool, TxOffload, L4, MAX_MTU, MIN_FRAME};

/// Answers ARP and ping for `--ip` and echoes UDP datagrams sent to it.
#[derive(Parser)]
#[command(
    name = "udp_echo",
    after_help = "Frames not for --ip (or not ARP, ICMP echo or UDP) are dropped and counted; so are\n\
                  malformed ones, fragments and any with a bad IP, ICMP or UDP checksum.\n\
                  Runs until --time passes, standard input closes (--until-stdin-closes) or it is killed.\n\
                  Ports: Intel igb or virtio-net (several queues where the device offers MQ + RSS)."
)]
struct Cli {
    /// Port bound to vfio-pci, e.g. 0000:02:00.0
    #[arg(long, value_name = "BDF", value_parser = args::pci_address)]
    device: PciAddress,
    /// The IPv4 address to answer for
    #[arg(long, value_name = "ADDR", value_parser = net::ipv4)]
    ip: [u8; 4],
    /// Queue pairs, one thread each (igb: 1 to 8; virtio-net: up to the device's pairs)
    #[arg(long, value_name = "N", default_value = "1", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u16>(s, 1, 8))]
    queues: u16,
    /// Largest IP packet per frame: 1500, up to 9000 for jumbo frames
    /// (received and echoed as multi-buffer packets)
    #[arg(long, value_name = "BYTES", default_value = "1500", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u16>(s, 68, u64::from(MAX_MTU)))]
    mtu: u16,
    /// Leave the UDP replies' IPv4 and UDP checksums to the NIC (igb:
    /// context descriptors; virtio-net: the device where it offers it)
    #[arg(long)]
    tx_offload: bool,
    #[command(flatten)]
    run: common::RunControl,
}

const BURST: usize = 32;

/// What one queue's thread did.
#[derive(Default, Clone, Copy)]
struct Counts {
    rx: u64,
    arp: u64,
    icmp: u64,
    udp: u64,
    /// Not for us, or not a request we answer.
    ignored: u64,
    /// Refused: malformed, fragments.
    malformed: u64,
    /// Refused: a bad IP, ICMP or UDP checksum.
    bad_checksum: u64,
    tx: u64,
    /// Replies the transmit ring had no room for.
    tx_dropped: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.rx += o.rx;
        self.arp += o.arp;
        self.icmp += o.icmp;
        self.udp += o.udp;
        self.ignored += o.ignored;
        self.malformed += o.malformed;
        self.bad_checksum += o.bad_checksum;
        self.tx += o.tx;
        self.tx_dropped += o.tx_dropped;
    }
}

/// Answers what arrives on one queue until `stop`.
fn serve(
    mut q: Box<dyn Nic>,
    ip: [u8; 4],
    max_frame: usize,
    offload: TxOffload,
    stop: &AtomicBool,
) -> Result<Counts, fastlane::nic::NicError> {
    let mac = q.mac_address();
    let mut c = Counts::default();
    let mut rx: Vec<Packet> = Vec::with_capacity(BURST);
    let mut tx: Vec<Packet> = Vec::with_capacity(BURST);
    // UDP replies whose checksums the NIC fills in (--tx-offload).
    let mut tx_udp: Vec<Packet> = Vec::with_capacity(BURST);
    let mut frame = vec![0u8; max_frame];
    let mut polls = 0u32;
    loop {
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(1024) && stop.load(Ordering::Relaxed) {
            break;
        }
        if q.rx_burst(&mut rx, BURST) == 0 {
            if q.tx_in_flight() > 0 {
                q.tx_burst(&mut tx); // reclaim
            }
            continue;
        }
        c.rx += rx.len() as u64;
        for mut p in rx.drain(..) {
            let len = p.len();
            let Some(f) = frame.get_mut(..len) else {
                c.malformed += 1; // longer than the port's MTU allows
                continue;
            };
            p.read(0, f)?;
            match proto::respond(f, mac, ip) {
                Ok(Some((what, n))) => {
                    match what {
                        Answered::Arp => c.arp += 1,
                        Answered::IcmpEcho => c.icmp += 1,
                        Answered::Udp => c.udp += 1,
                    }
                    // Replies shorter than the Ethernet minimum are padded
                    // here, not left to the NIC.
                    let n = if n < MIN_FRAME {
                        frame[n..MIN_FRAME].fill(0);
                        MIN_FRAME
                    } else {
                        n
                    };
                    if p.write(&frame[..n]).is_err() {
                        // Longer than the packet's buffers hold: dropped.
                        c.tx_dropped += 1;
                        continue;
                    }
                    if what == Answered::Udp && !offload.is_empty() {
                        tx_udp.push(p);
                    } else {
                        tx.push(p);
                    }
                }
                Ok(None) => c.ignored += 1,
                Err(ProtoError::BadIpChecksum | ProtoError::BadChecksum(_)) => c.bad_checksum += 1,
                Err(_) => c.malformed += 1,
            }
        }
        for (pkts, off) in [(&mut tx, TxOffload::default()), (&mut tx_udp, offload)] {
            if pkts.is_empty() {
                continue;
            }
            // A full ring gets a few more tries; what still does not fit
            // (or what the offload refuses) is dropped and counted rather
            // than holding up receive.
            for _ in 0..64 {
                c.tx += q.tx_burst_offload(pkts, &off) as u64;
                if pkts.is_empty() {
                    break;
                }
            }
            c.tx_dropped += pkts.len() as u64;
            q.recycle(pkts);
        }
    }
    // Let the last replies leave.
    let start = Instant::now();
    while q.tx_in_flight() > 0 && start.elapsed() < Duration::from_millis(500) {
        q.tx_burst(&mut tx);
    }
    Ok(c)
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let pool = PacketPool::new(&vfio, 2048 * u32::from(cli.queues))?;
    let cfg = NicConfig {
        promiscuous: false,
        mtu: cli.mtu,
        ..NicConfig::default()
    };
    let max_frame = cfg.max_frame()?;
    let offload = if cli.tx_offload {
        TxOffload { ip_checksum: true, l4_checksum: Some(L4::Udp), vlan: None }
    } else {
        TxOffload::default()
    };
    let queues = common::open_queues(&vfio, cli.device, &pool, &cfg, cli.queues)?;
    let mac = queues[0].mac_address();
    let stop = cli.run.stop_flag();
    println!(
        "udp_echo: {} mac {} ip {} link {:?}, {} queue(s): ready",
        cli.device,
        net::fmt_mac(&mac),
        std::net::Ipv4Addr::from(cli.ip),
        queues[0].link_status(),
        queues.len()
    );
    let start = Instant::now();
    let handles: Vec<_> = queues
        .into_iter()
        .map(|q| {
            let stop = stop.clone();
            let ip = cli.ip;
            std::thread::spawn(move || serve(q, ip, max_frame, offload, &stop))
        })
        .collect();
    cli.run.wait(start, &stop);
    let mut total = Counts::default();
    let mut per_queue = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let c = h
            .join()
            .map_err(|_| format!("queue {i}: thread panicked"))??;
        println!(
            "queue {i}: rx {} arp {} icmp {} udp {} ignored {} malformed {} bad-checksum {} tx {} tx-dropped {}",
            c.rx, c.arp, c.icmp, c.udp, c.ignored, c.malformed, c.bad_checksum, c.tx, c.tx_dropped
        );
        per_queue.push(c.rx);
        total += c;
    }
    let t = total;
    println!(
        "total: rx {} arp {} icmp {} udp {} ignored {} malformed {} bad-checksum {} tx {} tx-dropped {} in {:.2} s",
        t.rx,
        t.arp,
        t.icmp,
        t.udp,
        t.ignored,
        t.malformed,
        t.bad_checksum,
        t.tx,
        t.tx_dropped,
        start.elapsed().as_secs_f64()
    );
    if cli.run.json {
        println!(
            "{{\"tool\":\"udp_echo\",\"device\":\"{}\",\"rx\":{},\"arp\":{},\"icmp\":{},\"udp\":{},\"ignored\":{},\
             \"malformed\":{},\"bad_checksum\":{},\"tx\":{},\"tx_dropped\":{},\"rx_per_queue\":{:?}}}",
            cli.device, t.rx, t.arp, t.icmp, t.udp, t.ignored, t.malformed, t.bad_checksum, t.tx, t.tx_dropped, per_queue
        );
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("udp_echo: {e}");
        std::process::exit(1);
    }
}
