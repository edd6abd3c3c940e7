//! Layer-2 forwarding with DPDK l2fwd's semantics: ports are paired in the
//! order given (0 with 1, 2 with 3, ...); every frame received on one port
//! of a pair leaves on the other with its source MAC set to that port's own
//! and its destination MAC set to 02:00:00:00:00:XX, XX the sending port's
//! index (or what `--eth-dest` says). One thread per queue pair: on igb
//! ports as many queues as cores (RSS spreads flows over them), else one.
//!
//! ```text
//! sudo ./hugepages.sh bind 0000:01:00.0 0000:02:00.0
//! cargo run --release --example l2fwd -- --ports 0000:01:00.0,0000:02:00.0 --time 10
//! ```

mod common;

use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::Parser;
use common::{args, net};
use fastlane::framework::{PciAddress, Vfio};
use fastlane::nic::{Nic, NicConfig, Packet, PacketPool};

/// Forwards frames between port pairs, rewriting both MAC addresses.
#[derive(Parser)]
#[command(
    name = "l2fwd",
    after_help = "Without --promiscuous a port takes only frames for its own MAC and broadcasts.\n\
                  Frames the other port's transmit ring has no room for are dropped and counted.\n\
                  Ports: Intel igb or virtio-net, in any mix."
)]
struct Cli {
    /// Ports bound to vfio-pci, an even number, paired in order: A,B[,C,D...]
    #[arg(long, value_name = "BDF,BDF[,...]", value_parser = ports)]
    ports: std::vec::Vec<PciAddress>,
    /// Queue pairs per port, one thread each [default: cores / port pairs; 1 on virtio-net]
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u16>(s, 1, 8))]
    queues: Option<u16>,
    /// Destination MAC for frames leaving port PORT (repeatable) [default: 02:00:00:00:00:PORT]
    #[arg(long, value_name = "PORT,MAC", value_parser = net::eth_dest)]
    eth_dest: Vec<(usize, [u8; 6])>,
    /// Receive every frame, not only those for the port's MAC
    #[arg(long)]
    promiscuous: bool,
    /// Frames per rx_burst, 1..512
    #[arg(long, value_name = "N", default_value = "32", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<usize>(s, 1, 512))]
    burst: usize,
    #[command(flatten)]
    run: common::RunControl,
}

/// `--ports`: an even number of different PCI addresses.
fn ports(s: &str) -> Result<Vec<PciAddress>, String> {
    let list = s
        .split(',')
        .map(args::pci_address)
        .collect::<Result<Vec<_>, _>>()?;
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(format!(
            "{} port(s): give an even number, paired in order",
            list.len()
        ));
    }
    for (i, a) in list.iter().enumerate() {
        if list[..i].contains(a) {
            return Err(format!("{a} given twice"));
        }
    }
    Ok(list)
}

/// Per port and direction: frames received, sent on, dropped.
#[derive(Default, Clone, Copy)]
struct Counts {
    rx: u64,
    tx: u64,
    dropped: u64,
}

/// Receives a burst on `from`, rewrites MACs and sends on `to`.
fn forward(
    from: &mut dyn Nic,
    to: &mut dyn Nic,
    macs: &[u8; 12],
    pkts: &mut Vec<Packet>,
    burst: usize,
    c: &mut Counts,
) {
    let n = from.rx_burst(pkts, burst);
    if n == 0 {
        if to.tx_in_flight() > 0 {
            to.tx_burst(pkts); // reclaim
        }
        return;
    }
    c.rx += n as u64;
    pkts.retain_mut(|p| {
        let at = p.offset();
        // Every received frame has at least the 12 address bytes (the
        // drivers deliver 14 or more); a shorter one is dropped.
        p.len() >= macs.len() && p.buf_mut().write(at, macs).is_ok()
    });
    c.dropped += (n - pkts.len()) as u64;
    c.tx += to.tx_burst(pkts) as u64;
    c.dropped += pkts.len() as u64;
    pkts.clear();
}

fn main() {
    let cli = Cli::parse();
    if let Some((p, _)) = cli.eth_dest.iter().find(|(p, _)| *p >= cli.ports.len()) {
        clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!(
                "invalid value for '--eth-dest <PORT,MAC>': port {p}, but there are {} ports\n",
                cli.ports.len()
            ),
        )
        .exit();
    }
    if let Err(e) = run(&cli) {
        eprintln!("l2fwd: {e}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let pairs = cli.ports.len() / 2;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let want = cli
        .queues
        .unwrap_or(u16::try_from((cores / pairs).clamp(1, 8))?);
    let cfg = NicConfig {
        promiscuous: cli.promiscuous,
        ..NicConfig::default()
    };
    let pool = PacketPool::new(
        &vfio,
        2048 * u32::from(want) * u32::try_from(cli.ports.len())?,
    )?;
    // Both ports of a pair get the same number of queues: the smaller.
    let mut opened: Vec<Vec<Box<dyn Nic>>> = Vec::new();
    for pair in cli.ports.chunks(2) {
        let q = if pair
            .iter()
            .all(|a| common::pci_driver(*a) == Some(fastlane::nic::Driver::Igb))
        {
            want
        } else {
            // virtio-net: several only when asked (the device needs MQ).
            cli.queues.unwrap_or(1)
        };
        for a in pair {
            opened.push(common::open_queues(&vfio, *a, &pool, &cfg, q)?);
        }
    }
    let macs: Vec<[u8; 6]> = opened.iter().map(|q| q[0].mac_address()).collect();
    let mut dest: Vec<[u8; 6]> = (0..cli.ports.len())
        .map(|i| [0x02, 0, 0, 0, 0, i as u8])
        .collect();
    for (p, m) in &cli.eth_dest {
        dest[*p] = *m;
    }
    for (i, a) in cli.ports.iter().enumerate() {
        println!(
            "l2fwd: port {i} {a} mac {} link {:?}, {} queue(s), frames from port {} leave with dst {}",
            net::fmt_mac(&macs[i]),
            opened[i][0].link_status(),
            opened[i].len(),
            i ^ 1,
            net::fmt_mac(&dest[i])
        );
    }
    let stop = cli.run.stop_flag();
    println!("l2fwd: ready");
    let start = Instant::now();
    let mut handles = Vec::new();
    let mut ports = opened.into_iter();
    let mut index = 0usize;
    while let (Some(qa), Some(qb)) = (ports.next(), ports.next()) {
        let (a, b) = (index, index + 1);
        index += 2;
        // Frames leaving b (from a) and leaving a (from b): dst then src.
        let mut to_b = [0u8; 12];
        to_b[..6].copy_from_slice(&dest[b]);
        to_b[6..].copy_from_slice(&macs[b]);
        let mut to_a = [0u8; 12];
        to_a[..6].copy_from_slice(&dest[a]);
        to_a[6..].copy_from_slice(&macs[a]);
        for (mut qa, mut qb) in qa.into_iter().zip(qb) {
            let stop = stop.clone();
            let burst = cli.burst;
            handles.push((
                a,
                std::thread::spawn(move || {
                    let (mut ab, mut ba) = (Counts::default(), Counts::default());
                    let mut pkts = Vec::with_capacity(burst);
                    let mut polls = 0u32;
                    loop {
                        polls = polls.wrapping_add(1);
                        if polls.is_multiple_of(1024) && stop.load(Ordering::Relaxed) {
                            break;
                        }
                        forward(qa.as_mut(), qb.as_mut(), &to_b, &mut pkts, burst, &mut ab);
                        forward(qb.as_mut(), qa.as_mut(), &to_a, &mut pkts, burst, &mut ba);
                    }
                    (ab, ba)
                }),
            ));
        }
    }
    cli.run.wait(start, &stop);
    // Per port: received there (and forwarded), sent there, dropped on the way out there.
    let mut per_port = vec![Counts::default(); cli.ports.len()];
    for (a, h) in handles {
        let (ab, ba) = h.join().map_err(|_| "a forwarding thread panicked")?;
        per_port[a].rx += ab.rx;
        per_port[a + 1].tx += ab.tx;
        per_port[a + 1].dropped += ab.dropped;
        per_port[a + 1].rx += ba.rx;
        per_port[a].tx += ba.tx;
        per_port[a].dropped += ba.dropped;
    }
    let secs = start.elapsed().as_secs_f64();
    for (i, c) in per_port.iter().enumerate() {
        println!(
            "port {i}: rx {} tx {} dropped {} in {secs:.2} s",
            c.rx, c.tx, c.dropped
        );
    }
    if cli.run.json {
        let ports: Vec<String> = per_port
            .iter()
            .map(|c| {
                format!(
                    "{{\"rx\":{},\"tx\":{},\"dropped\":{}}}",
                    c.rx, c.tx, c.dropped
                )
            })
            .collect();
        println!(
            "{{\"tool\":\"l2fwd\",\"seconds\":{secs:.3},\"ports\":[{}]}}",
            ports.join(",")
        );
    }
    Ok(())
}
