//! Multi-queue virtio-net with RSS against QEMU's virtio-net-pci
//! (`mq=on,rss=on`, FASTLANE_VIRTIO_MQ) through real VFIO. Built with
//! `--features guest`, run in the guest by tests/guest/run-all.sh with that
//! port and the first igb port bound to vfio-pci.
//!
//! vm/run.sh puts the port on a multi-queue host tap bridged to the QEMU
//! hub of the igb ports (a hubport has one queue). Without a tap (run.sh
//! not root) FASTLANE_VIRTIO_MQ is unset and every test here says so and
//! passes without checking anything.
//!
//! IPv4/UDP frames from the igb port, 64 flows (source ports), must arrive
//! each exactly once, intact (both checksums), on the queue the Toeplitz
//! hash and the indirection table predict, computed here in software; each
//! queue pair is driven by its own thread, which also sends frames of its
//! own back to the igb port, all of which must arrive intact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fastlane::framework::Vfio;
use fastlane::nic::igb::Igb;
use fastlane::nic::proto::{build_udp, parse_udp_frame, Mac};
use fastlane::nic::virtio::{spec, VirtioNet};
use fastlane::nic::{alloc_packet, Nic, NicConfig, NicError, Packet, PacketPool};

const DEADLINE: Duration = Duration::from_secs(30);
const FLOWS: u16 = 64;
const PER_FLOW: u32 = 16;
/// Frames each virtio queue pair sends to the igb port.
const PER_QUEUE_TX: u32 = 64;
/// Frames in flight from igb at once: QEMU's and the tap's queues stay short.
const WINDOW: usize = 32;
const SRC_IP: [u8; 4] = [10, 77, 0, 1];
const DST_IP: [u8; 4] = [10, 77, 0, 2];
const SPORT: u16 = 40000;
const DPORT: u16 = 9999;
/// Source ports of the virtio queues' own frames: this plus the queue.
const TX_SPORT: u16 = 50000;

/// The multi-queue port and its queue pairs, or None (said once) when the
/// guest has none.
fn mq_port() -> Option<(String, usize)> {
    match (
        std::env::var("FASTLANE_VIRTIO_MQ"),
        std::env::var("FASTLANE_VIRTIO_MQ_QUEUES"),
    ) {
        (Ok(a), Ok(q)) => Some((a, q.parse().expect("FASTLANE_VIRTIO_MQ_QUEUES"))),
        _ => {
            eprintln!(
                "SKIPPED: no FASTLANE_VIRTIO_MQ (vm/run.sh could not create a multi-queue tap)"
            );
            None
        }
    }
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} not set: run in the guest"))
}

/// A tag for this run's frames: frames of earlier runs still queued in the
/// tap are told apart.
fn run_tag() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn payload_byte(a: u32, seq: u32, i: usize) -> u8 {
    (seq.wrapping_mul(97) ^ a.rotate_left(5)).wrapping_add(i as u32 * 7) as u8
}

/// UDP payload: run tag, `a` (flow or queue), sequence number, then a
/// pattern; 16 to 16 + 300 bytes.
fn payload(run: u64, a: u32, seq: u32) -> Vec<u8> {
    let len = 16 + (seq as usize * 37 + a as usize * 11) % 300;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&run.to_le_bytes());
    v.extend_from_slice(&a.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((16..len).map(|i| payload_byte(a, seq, i)));
    v
}

#[allow(clippy::too_many_arguments)]
fn packet(pool: &PacketPool, dst: Mac, src: Mac, sport: u16, run: u64, a: u32, seq: u32) -> Packet {
    let mut bytes = Vec::new();
    build_udp(
        &mut bytes,
        dst,
        src,
        SRC_IP,
        DST_IP,
        sport,
        DPORT,
        &payload(run, a, seq),
    )
    .unwrap();
    let mut p = alloc_packet(pool.pool(), 0).unwrap();
    p.write(&bytes).unwrap();
    p
}

/// A frame of this run: (source port, `a`, sequence number) after checking
/// both checksums and every payload byte. Other frames give None.
fn parse(frame: &[u8], run: u64) -> Option<(u16, u32, u32)> {
    let f = parse_udp_frame(frame).ok()?;
    if f.udp.hdr.dport.get() != DPORT || f.udp.payload.get(..8)? != run.to_le_bytes() {
        return None;
    }
    let p = f.udp.payload;
    let a = u32::from_le_bytes(p[8..12].try_into().unwrap());
    let seq = u32::from_le_bytes(p[12..16].try_into().unwrap());
    assert_eq!(p, payload(run, a, seq), "payload of {a}/{seq}");
    assert_eq!((f.ip.hdr.src, f.ip.hdr.dst), (SRC_IP, DST_IP));
    Some((f.udp.hdr.sport.get(), a, seq))
}

fn config(queues: u16) -> NicConfig {
    NicConfig {
        rx_ring: 256,
        tx_ring: 256,
        queues,
        ..NicConfig::default()
    }
}

#[test]
fn queue_pairs_are_negotiated_and_bad_counts_refused() {
    let Some((addr, queues)) = mq_port() else {
        return;
    };
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 4096).unwrap();
    for bad in [0, queues as u16 + 1] {
        match VirtioNet::open_multi(&vfio, &addr, &pool, &config(bad)) {
            Err(NicError::InvalidArgument(_)) => {}
            other => panic!("{bad} queues: {:?}", other.map(|v| v.len())),
        }
    }
    // VirtioNet::open is one pair, and says where several are opened.
    assert!(matches!(
        VirtioNet::open(&vfio, &addr, &pool, &config(2)),
        Err(NicError::InvalidArgument(e)) if e.contains("open_multi")
    ));
    let ports = VirtioNet::open_multi(&vfio, &addr, &pool, &config(queues as u16)).unwrap();
    assert_eq!(ports.len(), queues);
    let f = ports[0].features();
    assert_eq!(
        f & (spec::VIRTIO_NET_F_MQ | spec::VIRTIO_NET_F_RSS),
        spec::VIRTIO_NET_F_MQ | spec::VIRTIO_NET_F_RSS
    );
    let rss = ports[0].rss().expect("an RSS setup");
    assert_eq!(rss.queues as usize, queues);
    assert!(rss.table.len().is_power_of_two() && rss.table.len() >= queues);
    for (i, p) in ports.iter().enumerate() {
        assert_eq!((p.queue(), p.queues()), (i, queues));
        assert_eq!(p.rx_posted(), 256, "queue {i}: ring full");
        assert_eq!(p.mac_address(), ports[0].mac_address());
    }
    println!(
        "{queues} queue pairs, table of {}, hash types {:#x}",
        rss.table.len(),
        rss.hash_types
    );
    // Dropped out of order: the device is reset once, by the last.
    let mut ports = ports;
    ports.swap(0, queues - 1);
    drop(ports);
    // And one pair on the same device works too.
    let one = VirtioNet::open(&vfio, &addr, &pool, &config(1)).unwrap();
    assert_eq!((one.queues(), one.rss()), (1, None));
    assert_eq!(one.features() & spec::VIRTIO_NET_F_MQ, 0);
}

/// What one queue pair's thread saw.
#[derive(Default)]
struct QueueLog {
    /// (flow, seq) of this run's frames from igb.
    got: Vec<(u32, u32)>,
    /// Frames of other runs or protocols.
    other: usize,
    /// Its own frames the transmit queue took.
    sent: u32,
}

#[test]
fn flows_land_on_the_queue_the_hash_predicts_one_thread_per_queue() {
    let Some((addr, queues)) = mq_port() else {
        return;
    };
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 8192).unwrap();
    let mut igb = Igb::open(&vfio, &env("FASTLANE_IGB0"), &pool, &config(1)).unwrap();
    // FASTLANE_VIRTIO_MQ_RING=packed: the same on packed rings (for QEMU
    // trace counts of one layout per run).
    let packed = std::env::var("FASTLANE_VIRTIO_MQ_RING").is_ok_and(|r| r == "packed");
    let cfg = config(queues as u16);
    let ports = match packed {
        true => VirtioNet::open_multi_packed(&vfio, &addr, &pool, &cfg).unwrap(),
        false => VirtioNet::open_multi(&vfio, &addr, &pool, &cfg).unwrap(),
    };
    let is_packed = ports[0].features() & spec::VIRTIO_F_RING_PACKED != 0;
    assert_eq!(is_packed, packed, "split unless asked");
    flows(&pool, &mut igb, ports, PER_FLOW);
}

/// The same traffic on packed rings (the device offers them: vm/run.sh
/// sets packed=on), then split and packed rounds interleaved, timed: the
/// rates and their ratio are printed, not asserted.
#[test]
fn packed_rings_carry_the_same_traffic_and_are_timed_against_split() {
    let Some((addr, queues)) = mq_port() else {
        return;
    };
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 8192).unwrap();
    let mut igb = Igb::open(&vfio, &env("FASTLANE_IGB0"), &pool, &config(1)).unwrap();
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..6 {
        let packed = round % 2 == 1;
        let cfg = config(queues as u16);
        let ports = if packed {
            VirtioNet::open_multi_packed(&vfio, &addr, &pool, &cfg).unwrap()
        } else {
            VirtioNet::open_multi(&vfio, &addr, &pool, &cfg).unwrap()
        };
        assert_eq!(
            ports[0].features() & spec::VIRTIO_F_RING_PACKED != 0,
            packed
        );
        let (frames, t) = flows(&pool, &mut igb, ports, 2 * PER_FLOW);
        rates[packed as usize].push(frames as f64 / t.as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (split, packed) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "igb -> {queues}-queue virtio-net and back, frames/s (median of 3 interleaved rounds each): \
         split {split:.0}, packed {packed:.0}, packed/split {:.2}",
        packed / split
    );
}

/// Sends `per_flow` frames of each of FLOWS flows from igb to the queue
/// pairs `ports` (one thread each, which also sends PER_QUEUE_TX frames
/// back), and checks that every frame arrived once, intact, on the queue
/// the hash predicts. Returns the frames moved and the time taken.
fn flows(
    pool: &PacketPool,
    igb: &mut Igb,
    ports: Vec<VirtioNet>,
    per_flow: u32,
) -> (usize, Duration) {
    let queues = ports.len();
    let rss = ports[0].rss().unwrap().clone();
    let (vmac, imac) = (ports[0].mac_address(), igb.mac_address());
    let run = run_tag();
    let total = FLOWS as usize * per_flow as usize;
    let received = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let threads: Vec<_> = ports
        .into_iter()
        .map(|mut port| {
            let (received, stop, pool) = (received.clone(), stop.clone(), pool.clone());
            std::thread::spawn(move || {
                let q = port.queue() as u32;
                let mut log = QueueLog::default();
                let mut out: Vec<Packet> = (0..PER_QUEUE_TX)
                    .map(|s| packet(&pool, imac, vmac, TX_SPORT + q as u16, run, q, s))
                    .collect();
                let mut pkts = Vec::with_capacity(32);
                while !stop.load(Ordering::Relaxed) {
                    if !out.is_empty() {
                        log.sent += port.tx_burst(&mut out) as u32;
                    }
                    if port.rx_burst(&mut pkts, 32) == 0 {
                        std::thread::yield_now();
                    }
                    for mut p in pkts.drain(..) {
                        match parse(p.data(), run) {
                            Some((sport, flow, seq)) if sport == SPORT + flow as u16 => {
                                log.got.push((flow, seq));
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(other) => panic!("queue {q}: unexpected frame {other:?}"),
                            None => log.other += 1,
                        }
                    }
                }
                let stats = port.stats();
                (q, log, stats, port)
            })
        })
        .collect();

    // igb sends every flow's frames, WINDOW ahead of what has arrived, and
    // takes the virtio queues' frames meanwhile.
    let start = Instant::now();
    let mut from_queues: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut pkts = Vec::with_capacity(64);
    let mut to_send: Vec<Packet> = Vec::new();
    let mut next = 0usize;
    let expected_back = queues * PER_QUEUE_TX as usize;
    let mut back = 0usize;
    // Until everything arrived, or 2 s without progress (a frame lost).
    let (mut progress, mut last_progress) = (0, start);
    while (received.load(Ordering::Relaxed) < total || back < expected_back)
        && start.elapsed() < DEADLINE
        && last_progress.elapsed() < Duration::from_secs(2)
    {
        let now = received.load(Ordering::Relaxed) + back;
        if now != progress {
            (progress, last_progress) = (now, Instant::now());
        }
        while next < total && to_send.len() < 8 && next < received.load(Ordering::Relaxed) + WINDOW
        {
            let (flow, seq) = (
                (next % FLOWS as usize) as u32,
                (next / FLOWS as usize) as u32,
            );
            to_send.push(packet(
                pool,
                vmac,
                imac,
                SPORT + flow as u16,
                run,
                flow,
                seq,
            ));
            next += 1;
        }
        igb.tx_burst(&mut to_send);
        igb.rx_burst(&mut pkts, 64);
        for mut p in pkts.drain(..) {
            if let Some((sport, q, seq)) = parse(p.data(), run) {
                assert_eq!(sport, TX_SPORT + q as u16);
                from_queues.entry(q).or_default().push(seq);
                back += 1;
            }
        }
    }
    let done = received.load(Ordering::Relaxed) == total && back == expected_back;
    let elapsed = if done {
        start.elapsed()
    } else {
        last_progress - start
    };
    stop.store(true, Ordering::Relaxed);
    let mut logs: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    logs.sort_by_key(|l| l.0);

    // Every frame from igb once, on the predicted queue.
    let mut seen = HashMap::new();
    let mut per_queue = vec![0usize; queues];
    let mut predicted = vec![0usize; queues];
    for flow in 0..FLOWS {
        predicted[rss.queue_of_ipv4(SRC_IP, DST_IP, Some((SPORT + flow, DPORT)))] +=
            per_flow as usize;
    }
    for (q, log, stats, _) in &logs {
        for &(flow, seq) in &log.got {
            let want = rss.queue_of_ipv4(SRC_IP, DST_IP, Some((SPORT + flow as u16, DPORT)));
            assert_eq!(
                *q as usize, want,
                "flow {flow} frame {seq} on queue {q}, hash says {want}"
            );
            assert!(
                seen.insert((flow, seq), *q).is_none(),
                "flow {flow} frame {seq} twice"
            );
        }
        per_queue[*q as usize] = log.got.len();
        println!(
            "queue {q}: {} frames from igb ({} predicted), {} others; sent {}; rx_errors {}",
            log.got.len(),
            predicted[*q as usize],
            log.other,
            log.sent,
            stats.rx_errors
        );
        assert_eq!(stats.rx_errors, 0, "queue {q}");
        assert_eq!(log.sent, PER_QUEUE_TX, "queue {q} sent all its frames");
    }
    // The frames cross the host (tap, bridge, tap): a rare drop there is
    // told, and tolerated up to 1 in 500; every frame that arrived was
    // checked above (queue, bytes, once).
    let lost: Vec<(u32, u32)> = (0..total as u32)
        .map(|i| (i % FLOWS as u32, i / FLOWS as u32))
        .filter(|k| !seen.contains_key(k))
        .collect();
    if !lost.is_empty() {
        println!("lost on the way (flow, seq): {lost:?}");
    }
    assert!(
        lost.len() <= total / 500,
        "{} of {total} frames from igb lost",
        lost.len()
    );
    for (q, p) in predicted.iter_mut().enumerate() {
        *p -= lost
            .iter()
            .filter(|&&(flow, _)| {
                rss.queue_of_ipv4(SRC_IP, DST_IP, Some((SPORT + flow as u16, DPORT))) == q
            })
            .count();
    }
    assert_eq!(per_queue, predicted);
    assert!(
        predicted.iter().all(|&n| n > 0),
        "64 flows reach every queue: {predicted:?}"
    );
    // Every queue's own frames reached igb, once each, intact.
    for q in 0..queues as u32 {
        let mut seqs = from_queues.remove(&q).unwrap_or_default();
        seqs.sort();
        assert_eq!(
            seqs,
            (0..PER_QUEUE_TX).collect::<Vec<_>>(),
            "frames of queue {q} at igb"
        );
    }
    println!(
        "{total} frames over {queues} queues as predicted, {expected_back} back to igb, in {:.2} s",
        elapsed.as_secs_f64()
    );
    (total + expected_back, elapsed)
}
