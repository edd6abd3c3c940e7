//! igb driver tests against QEMU's two `igb` ports through real VFIO. Built
//! with `--features guest`, run in the guest (tests/guest/nic.sh) with both
//! ports bound to vfio-pci. The ports share a QEMU hub: what one sends, the
//! other receives (a virtio-net port on the hub receives it too; the sender
//! never sees its own frames).
//!
//! Test frames carry EtherType 0x88B5 (local experimental), a per-test tag
//! and a sequence number, so frames left over from an earlier test (QEMU
//! queues frames for a port that is closed) are recognised and ignored.

use std::time::{Duration, Instant};

mod common;

use common::{frame_bytes, frame_meta, HEADER, META};
use fastlane::framework::Vfio;
use fastlane::nic::igb::{check_frame, Igb};
use fastlane::nic::proto::{checksum_add, checksum_fold, internet_checksum, pseudo_header_sum, ETHERTYPE_IPV4, IPPROTO_UDP};
use fastlane::nic::offload::IPPROTO_TCP;
use fastlane::nic::{
    alloc_packet, Nic, NicConfig, NicError, Packet, PacketPool, RxChecksum, TxOffload, L4, MAX_FRAME, MIN_FRAME,
};

const DEADLINE: Duration = Duration::from_secs(30);

fn bdf(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} not set: run in the guest (tests/guest/nic.sh)"))
}

struct Pair {
    pool: PacketPool,
    a: Igb,
    b: Igb,
    // Dropped last: the ports and pool hold mappings in its container.
    _vfio: Vfio,
}

fn open_pair(cfg_a: &NicConfig, cfg_b: &NicConfig) -> Pair {
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 8192).unwrap();
    let a = Igb::open(&vfio, &bdf("FASTLANE_IGB0"), &pool, cfg_a).unwrap();
    let b = Igb::open(&vfio, &bdf("FASTLANE_IGB1"), &pool, cfg_b).unwrap();
    let mut p = Pair { pool, a, b, _vfio: vfio };
    drain(&mut p.a);
    drain(&mut p.b);
    p
}

fn default_pair() -> Pair {
    open_pair(&NicConfig::default(), &NicConfig::default())
}

/// Receives and drops frames until none came for a while (leftovers from
/// earlier tests).
fn drain(port: &mut Igb) {
    let mut v = Vec::with_capacity(64);
    let mut quiet = Instant::now();
    let start = Instant::now();
    while quiet.elapsed() < Duration::from_millis(300) && start.elapsed() < DEADLINE {
        if port.rx_burst(&mut v, 64) > 0 {
            quiet = Instant::now();
            v.clear();
        }
    }
}

fn payload_byte(tag: u32, seq: u32, i: usize) -> u8 {
    (seq.wrapping_mul(31) ^ tag).wrapping_add(i as u32) as u8
}

/// A test frame of `len` bytes (at least HEADER + META).
fn frame(pool: &PacketPool, dst: [u8; 6], src: [u8; 6], tag: u32, seq: u32, len: usize) -> Packet {
    let f = frame_bytes(dst, src, tag, seq, len, |i| payload_byte(tag, seq, i));
    let mut p = alloc_packet(pool.pool(), 0).unwrap();
    p.write(&f).unwrap();
    p
}

/// A received frame of this test: (sequence number, sent length), after
/// checking every byte. Frames of other tests or protocols give `None`.
fn parse(p: &Packet, tag: u32) -> Option<(u32, usize)> {
    let f = p.to_vec();
    let (seq, sent) = match frame_meta(&f)? {
        (t, seq, sent) if t == tag => (seq, sent),
        _ => return None,
    };
    assert_eq!(f.len(), sent.max(MIN_FRAME), "frame {seq}: length");
    for (i, &b) in f.iter().enumerate().skip(HEADER + META) {
        let want = if i < sent { payload_byte(tag, seq, i) } else { 0 };
        assert_eq!(b, want, "frame {seq} of {sent} bytes: byte {i}");
    }
    Some((seq, sent))
}

/// Sends `pkts` from `tx`, receiving on `rx` at the same time, until all
/// were sent and `expect` frames of `tag` arrived; returns them in arrival
/// order. At most `window` frames are on their way at once: no more than
/// the receive ring holds, as nothing on a wire waits for a slow receiver
/// (QEMU drops what does not fit, like a NIC).
fn exchange_within(
    tx: &mut Igb,
    rx: &mut Igb,
    mut pkts: Vec<Packet>,
    tag: u32,
    expect: usize,
    window: usize,
) -> Vec<(u32, usize)> {
    let mut got = Vec::with_capacity(expect);
    let mut inbox = Vec::with_capacity(64);
    let mut stage = Vec::with_capacity(window);
    let mut sent = 0;
    let start = Instant::now();
    while got.len() < expect || !pkts.is_empty() {
        if start.elapsed() >= DEADLINE {
            let missing: Vec<u32> = (0..expect as u32).filter(|s| !got.iter().any(|g: &(u32, usize)| g.0 == *s)).take(8).collect();
            panic!(
                "timed out: {} of {expect} frames received, {} not sent; missing (if numbered from 0): {missing:?}; \
                 receiver {:?} {:?}; sender {:?} {:?} in flight {}",
                got.len(),
                pkts.len(),
                rx.rx_counters(),
                rx.hw_counters(),
                tx.tx_counters(),
                tx.hw_counters(),
                tx.tx_in_flight()
            );
        }
        let room = window.saturating_sub(sent - got.len()).min(pkts.len());
        if room > 0 {
            stage.extend(pkts.drain(..room));
            sent += tx.tx_burst(&mut stage);
            pkts.splice(0..0, stage.drain(..));
        }
        rx.rx_burst(&mut inbox, 64);
        got.extend(inbox.drain(..).filter_map(|p| parse(&p, tag)));
    }
    // Nothing extra trickles in.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(200) {
        rx.rx_burst(&mut inbox, 64);
        got.extend(inbox.drain(..).filter_map(|p| parse(&p, tag)));
    }
    got
}

/// [`exchange_within`] a default receive ring.
fn exchange(tx: &mut Igb, rx: &mut Igb, pkts: Vec<Packet>, tag: u32, expect: usize) -> Vec<(u32, usize)> {
    exchange_within(tx, rx, pkts, tag, expect, NicConfig::default().rx_ring as usize - 1)
}

/// Reclaims until every queued frame is reported sent.
fn flush(port: &mut Igb) {
    let start = Instant::now();
    while port.tx_in_flight() > 0 {
        port.tx_burst(&mut Vec::new());
        assert!(start.elapsed() < DEADLINE, "{} frames never reported sent", port.tx_in_flight());
    }
}

#[test]
fn link_comes_up_and_mac_addresses_are_qemu_defaults() {
    let mut p = default_pair();
    for port in [&p.a, &p.b] {
        let l = port.link_status();
        assert!(l.up, "{port:?}: link down");
        assert_eq!(l.speed_mbps, Some(1000));
        assert!(l.full_duplex);
        assert_eq!(port.model(), "82576");
        let mac = port.mac_address();
        assert_eq!(mac[..5], [0x52, 0x54, 0x00, 0x12, 0x34], "{mac:02x?}");
        assert_eq!(mac[5] & 0xf0, 0x50, "{mac:02x?}");
        println!("{}: {} mac {mac:02x?} link {l:?}", port.pci_address(), port.model());
    }
    assert_ne!(p.a.mac_address(), p.b.mac_address());
    // Counters start at zero (frames drained since open may have been received).
    let s = p.a.stats();
    assert_eq!((s.tx_packets, s.tx_bytes, s.rx_dropped, s.rx_errors, s.tx_errors), (0, 0, 0, 0, 0));
}

#[test]
fn frames_of_every_size_arrive_in_order_with_their_content() {
    let mut p = default_pair();
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    let sizes: Vec<usize> = (MIN_FRAME..=MAX_FRAME).collect();
    let pkts = sizes.iter().enumerate().map(|(i, &n)| frame(&p.pool, mb, ma, 1, i as u32, n)).collect();
    let got = exchange(&mut p.a, &mut p.b, pkts, 1, sizes.len());
    let want: Vec<(u32, usize)> = sizes.iter().enumerate().map(|(i, &n)| (i as u32, n)).collect();
    assert_eq!(got, want);

    // The other direction, and frames shorter than the minimum (the NIC pads).
    let sizes: Vec<usize> = [24, 59, 60, 61, 1513, 1514].into_iter().chain((62..1513).step_by(97)).collect();
    let pkts = sizes.iter().enumerate().map(|(i, &n)| frame(&p.pool, ma, mb, 2, i as u32, n)).collect();
    let got = exchange(&mut p.b, &mut p.a, pkts, 2, sizes.len());
    let want: Vec<(u32, usize)> = sizes.iter().enumerate().map(|(i, &n)| (i as u32, n)).collect();
    assert_eq!(got, want);
}

#[test]
fn a_burst_larger_than_the_ring_is_sent_in_parts_without_loss() {
    let small = NicConfig { rx_ring: 64, tx_ring: 64, promiscuous: true, ..NicConfig::default() };
    let mut p = open_pair(&small, &small);
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    let total = 2000u32;
    let mut pkts: Vec<Packet> = (0..total).map(|i| frame(&p.pool, mb, ma, 3, i, 60 + (i as usize * 7) % 1400)).collect();
    let first = p.a.tx_burst(&mut pkts);
    assert_eq!(first, 63, "a 64-descriptor ring takes 63 frames");
    assert_eq!(pkts.len(), (total - 63) as usize, "the rest stay with the caller");
    // The rest, at most a ring's worth in flight; the first 63 arrive too.
    let mut got = Vec::new();
    let mut inbox = Vec::new();
    let start = Instant::now();
    while got.len() < 63 {
        assert!(start.elapsed() < DEADLINE, "{} of the first 63 frames arrived", got.len());
        p.b.rx_burst(&mut inbox, 64);
        got.extend(inbox.drain(..).filter_map(|f| parse(&f, 3)));
    }
    got.extend(exchange_within(&mut p.a, &mut p.b, pkts, 3, (total - 63) as usize, 63));
    let seqs: Vec<u32> = got.iter().map(|&(s, _)| s).collect();
    assert_eq!(seqs, (0..total).collect::<Vec<_>>(), "lost, duplicated or reordered frames");
    flush(&mut p.a);
    assert_eq!(p.a.tx_counters().done, u64::from(total));
}

#[test]
fn oversized_and_runt_frames_get_typed_errors() {
    let mut p = default_pair();
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    // A frame over MAX_FRAME cannot be built, whichever way it is tried.
    assert!(matches!(alloc_packet(p.pool.pool(), MAX_FRAME + 1), Err(NicError::FrameTooLarge { len: 1515, max: 1514 })));
    let mut big = alloc_packet(p.pool.pool(), MAX_FRAME).unwrap();
    assert!(matches!(big.set_len(MAX_FRAME + 1), Err(NicError::FrameTooLarge { .. })));
    assert!(Igb::check_frame(&big).is_ok());
    // A buffer holds more than a standard frame (a jumbo port's 1515-2048
    // byte frames fit one): the packet takes 1515 bytes, but a standard
    // port refuses to send them and the packet stays first.
    big.write(&[0u8; MAX_FRAME + 1]).unwrap();
    assert!(matches!(p.a.check_tx(&big), Err(NicError::FrameTooLarge { len: 1515, max: 1514 })));
    let mut pkts = vec![big];
    assert_eq!(p.a.tx_burst(&mut pkts), 0);
    assert_eq!(pkts.len(), 1);
    // Past its buffer it cannot be written at all.
    assert!(matches!(pkts[0].write(&[0u8; 2049]), Err(NicError::FrameTooLarge { .. })));
    assert_eq!(pkts[0].len(), MAX_FRAME + 1, "a refused write leaves the packet alone");

    // A frame shorter than an Ethernet header is refused by the driver, and
    // tx_burst stops in front of it.
    let mut runt = alloc_packet(p.pool.pool(), 0).unwrap();
    runt.set_len(10).unwrap();
    assert!(matches!(check_frame(&runt), Err(NicError::FrameTooShort { len: 10, min: 14 })));
    let mut pkts = vec![frame(&p.pool, mb, ma, 4, 0, 100), runt, frame(&p.pool, mb, ma, 4, 1, 200)];
    assert_eq!(p.a.tx_burst(&mut pkts), 1);
    assert_eq!((pkts.len(), pkts[0].len()), (2, 10), "the runt stays first");
    assert_eq!(p.a.tx_burst(&mut pkts), 0);
    assert_eq!(p.a.driver_stats().tx_packets, 1);
    pkts.remove(0);
    let got = exchange(&mut p.a, &mut p.b, pkts, 4, 2);
    assert_eq!(got, vec![(0, 100), (1, 200)]);
}

/// The zero-copy path on the real device: port B, used only through
/// `&mut dyn Nic`, takes A's frames, replaces their MAC addresses in place
/// (stripped with `trim_front`, new ones written into the headroom with
/// `prepend`) and sends the same buffers back; A gets every frame back
/// intact with the new addresses.
#[test]
fn received_frames_are_rewritten_in_place_and_sent_back_through_the_trait() {
    let mut p = default_pair();
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    let total = 600u32;
    let mut pkts: Vec<Packet> =
        (0..total).map(|i| frame(&p.pool, mb, ma, 20, i, 60 + (i as usize * 13) % 1455)).collect();
    let (a, b): (&mut Igb, &mut dyn Nic) = (&mut p.a, &mut p.b);
    let (mut stage, mut fwd, mut inbox, mut got) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut sent, mut reflected) = (0, 0);
    let start = Instant::now();
    while got.len() < total as usize {
        assert!(start.elapsed() < DEADLINE, "{} of {total} frames came back, {reflected} reflected", got.len());
        let room = 200usize.saturating_sub(sent - got.len()).min(pkts.len());
        if room > 0 {
            stage.extend(pkts.drain(..room));
            sent += a.tx_burst(&mut stage);
            pkts.splice(0..0, stage.drain(..));
        }
        let from = fwd.len();
        b.rx_burst(&mut fwd, 64);
        for q in &mut fwd[from..] {
            assert_eq!(q.headroom(), 0, "igb receives at the buffer start");
            if q.data().get(..6) != Some(&mb[..]) {
                continue; // not for B: sent back as it came, A ignores it
            }
            q.trim_front(12).unwrap();
            let macs = q.prepend(12).unwrap();
            macs[..6].copy_from_slice(&ma);
            macs[6..].copy_from_slice(&mb);
        }
        reflected += b.tx_burst(&mut fwd);
        a.rx_burst(&mut inbox, 64);
        for mut f in inbox.drain(..) {
            if let Some((seq, len)) = parse(&f, 20) {
                assert_eq!(f.data()[..12], [ma, mb].concat()[..], "frame {seq}: addresses");
                got.push((seq, len));
            }
        }
    }
    let want: Vec<(u32, usize)> = (0..total).map(|i| (i, 60 + (i as usize * 13) % 1455)).collect();
    assert_eq!(got, want, "lost, duplicated, reordered or resized frames");
    b.recycle(&mut fwd);
}

#[test]
fn device_and_driver_counters_match_the_traffic() {
    let mut p = default_pair();
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    let (a0, b0) = (p.a.stats(), p.b.stats());
    let (da0, db0) = (p.a.driver_stats(), p.b.driver_stats());
    let sizes: Vec<usize> = (0..500).map(|i| 60 + (i * 37) % 1455).collect();
    let bytes: u64 = sizes.iter().map(|&n| n as u64).sum();
    let pkts = sizes.iter().enumerate().map(|(i, &n)| frame(&p.pool, mb, ma, 5, i as u32, n)).collect();
    let got = exchange(&mut p.a, &mut p.b, pkts, 5, sizes.len());
    assert_eq!(got.len(), sizes.len());
    flush(&mut p.a);
    let (a, b) = (p.a.stats() - a0, p.b.stats() - b0);
    let (da, db) = (p.a.driver_stats() - da0, p.b.driver_stats() - db0);
    println!("sender device {a:?}\nsender driver {da:?}\nreceiver device {b:?}\nreceiver driver {db:?}");
    let n = sizes.len() as u64;
    assert_eq!((a.tx_packets, a.tx_bytes), (n, bytes), "sender, device counters");
    assert_eq!((da.tx_packets, da.tx_bytes), (n, bytes), "sender, driver counters");
    assert_eq!((b.rx_packets, b.rx_bytes), (n, bytes), "receiver, device counters");
    assert_eq!((db.rx_packets, db.rx_bytes), (n, bytes), "receiver, driver counters");
    assert_eq!((a.rx_packets, b.tx_packets), (0, 0), "nothing the other way");
    for s in [a, b, da, db] {
        assert_eq!((s.rx_dropped, s.rx_errors, s.tx_errors), (0, 0, 0));
    }
}

#[test]
fn without_promiscuous_mode_only_our_unicast_arrives() {
    let strict = NicConfig { promiscuous: false, ..NicConfig::default() };
    let mut p = open_pair(&NicConfig::default(), &strict);
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    let other = [0x02, 0, 0, 0, 0, 0x99];
    let mk = |pool: &PacketPool, tag| -> Vec<Packet> {
        (0..20).map(|i| frame(pool, if i % 2 == 0 { mb } else { other }, ma, tag, i, 80)).collect()
    };
    let got = exchange(&mut p.a, &mut p.b, mk(&p.pool, 6), 6, 10);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (0..20).step_by(2).collect::<Vec<_>>());
    p.b.set_promiscuous(true).unwrap();
    let got = exchange(&mut p.a, &mut p.b, mk(&p.pool, 7), 7, 20);
    assert_eq!(got.len(), 20);
}

#[test]
fn closing_a_port_returns_every_buffer_to_the_pool() {
    let mut p = default_pair();
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    let cap = p.pool.pool().capacity() as usize;
    let pkts = (0..300).map(|i| frame(&p.pool, mb, ma, 8, i, 500)).collect();
    exchange(&mut p.a, &mut p.b, pkts, 8, 300);
    // Packets from the port's own cache go back to it.
    let mut own: Vec<Packet> = (0..10).map(|_| p.a.alloc_packet(100).unwrap()).collect();
    assert!(own.iter().all(|q| q.len() == 100));
    p.a.recycle(&mut own);
    assert!(own.is_empty());
    // Leave frames in flight and in the receive ring on purpose.
    let mut more: Vec<Packet> = (0..100).map(|i| frame(&p.pool, mb, ma, 8, 300 + i, 500)).collect();
    p.a.tx_burst(&mut more);
    assert!(p.pool.pool().available() < cap);
    let Pair { pool, a, b, _vfio } = p;
    drop(more);
    drop(a);
    drop(b);
    assert_eq!(pool.pool().available(), cap, "buffers missing after close");
}

#[test]
fn a_device_that_is_not_an_igb_is_refused() {
    let Ok(nvme) = std::env::var("FASTLANE_NVME") else {
        return;
    };
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 1024).unwrap();
    match Igb::open(&vfio, &nvme, &pool, &NicConfig::default()) {
        Err(NicError::Unsupported { vendor, device, .. }) => assert_eq!((vendor, device), (0x1b36, 0x0010)),
        Err(NicError::Framework(e)) => println!("skipped: {nvme} cannot be opened here: {e}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

/// An IPv4/UDP frame from `src_ip:sport` to 10.2.0.1:9000 with a valid
/// header checksum, carrying `tag`, `seq` and `len` like [`frame`].
#[allow(clippy::too_many_arguments)]
fn udp_frame(pool: &PacketPool, dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4], sport: u16, tag: u32, seq: u32, len: usize) -> Packet {
    const IP: usize = HEADER;
    const UDP: usize = IP + 20;
    const DATA: usize = UDP + 8;
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - IP) as u16;
    f[IP] = 0x45; // version 4, 5 words of header
    f[IP + 2..IP + 4].copy_from_slice(&ip_len.to_be_bytes());
    f[IP + 4..IP + 6].copy_from_slice(&(seq as u16).to_be_bytes());
    f[IP + 6] = 0x40; // don't fragment
    f[IP + 8] = 64; // TTL
    f[IP + 9] = 17; // UDP
    f[IP + 12..IP + 16].copy_from_slice(&src_ip);
    f[IP + 16..IP + 20].copy_from_slice(&UDP_DST_IP);
    let sum = f[IP..UDP].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    f[IP + 10..IP + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[UDP..UDP + 2].copy_from_slice(&sport.to_be_bytes());
    f[UDP + 2..UDP + 4].copy_from_slice(&UDP_DST_PORT.to_be_bytes());
    f[UDP + 4..UDP + 6].copy_from_slice(&(ip_len - 20).to_be_bytes()); // checksum 0: none
    f[DATA..DATA + 4].copy_from_slice(&tag.to_be_bytes());
    f[DATA + 4..DATA + 8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(DATA + 8) {
        *b = payload_byte(tag, seq, i);
    }
    let mut p = alloc_packet(pool.pool(), 0).unwrap();
    p.write(&f).unwrap();
    p
}

const UDP_DST_IP: [u8; 4] = [10, 2, 0, 1];
const UDP_DST_PORT: u16 = 9000;

/// A received [`udp_frame`] of this test: (sequence number, source address,
/// source port), after checking every byte. Other frames give `None`.
fn parse_udp(p: &Packet, tag: u32) -> Option<(u32, [u8; 4], u16)> {
    let f = p.to_vec();
    let data = HEADER + 28;
    if f.len() < data + 8 || f[12..14] != [0x08, 0x00] || f[HEADER + 9] != 17 || f[data..data + 4] != tag.to_be_bytes() {
        return None;
    }
    let seq = u32::from_be_bytes(f[data + 4..data + 8].try_into().unwrap());
    let sent = HEADER + u16::from_be_bytes([f[HEADER + 2], f[HEADER + 3]]) as usize;
    assert_eq!(f.len(), sent.max(MIN_FRAME), "frame {seq}: length");
    for (i, &b) in f.iter().enumerate().skip(data + 8) {
        assert_eq!(b, payload_byte(tag, seq, i), "frame {seq}: byte {i}");
    }
    let src_ip = f[HEADER + 12..HEADER + 16].try_into().unwrap();
    let sport = u16::from_be_bytes([f[HEADER + 20], f[HEADER + 21]]);
    Some((seq, src_ip, sport))
}

#[test]
fn rss_spreads_flows_over_queues() {
    use fastlane::nic::igb::rss;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const QUEUES: usize = 4;
    const TOTAL: u32 = 4000;
    const TAG: u32 = 9;
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 8192).unwrap();
    let cap = pool.pool().capacity() as usize;
    let multi = NicConfig { rx_ring: 256, tx_ring: 256, queues: QUEUES as u16, ..NicConfig::default() };
    assert!(matches!(Igb::open(&vfio, &bdf("FASTLANE_IGB0"), &pool, &multi), Err(NicError::InvalidArgument(_))));
    let qs = Igb::open_multi(&vfio, &bdf("FASTLANE_IGB0"), &pool, &multi).unwrap();
    assert_eq!(qs.len(), QUEUES);
    let mut b = Igb::open(&vfio, &bdf("FASTLANE_IGB1"), &pool, &NicConfig::default()).unwrap();
    drain(&mut b);
    let (ma, mb) = (qs[0].mac_address(), b.mac_address());
    for (n, q) in qs.iter().enumerate() {
        assert_eq!((q.queue(), q.queues(), q.mac_address()), (n, QUEUES, ma));
        assert!(q.link_status().up);
    }

    // Flows: 250 source addresses, each with 16 source ports.
    let flow = |seq: u32| ([10, 1, (seq / 16 / 256) as u8, (seq / 16 % 256) as u8], 1024 + (seq % 16) as u16 * 997);
    let received = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = qs
        .into_iter()
        .map(|mut q| {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut inbox = Vec::with_capacity(64);
                while !stop.load(Ordering::Relaxed) {
                    q.rx_burst(&mut inbox, 64);
                    let mine: Vec<_> = inbox.drain(..).filter_map(|p| parse_udp(&p, TAG)).collect();
                    received.fetch_add(mine.len(), Ordering::Relaxed);
                    got.extend(mine);
                }
                (q, got)
            })
        })
        .collect();

    // Send with at most a receive ring's worth in flight (every frame
    // could hash to one queue).
    let mut pkts: Vec<Packet> = (0..TOTAL)
        .map(|seq| {
            let (ip, port) = flow(seq);
            udp_frame(&pool, ma, mb, ip, port, TAG, seq, 60 + (seq as usize * 13) % 500)
        })
        .collect();
    let window = multi.rx_ring as usize - 1;
    let mut sent = 0;
    let mut stage = Vec::with_capacity(window);
    let start = Instant::now();
    while received.load(Ordering::Relaxed) < TOTAL as usize {
        let done = received.load(Ordering::Relaxed);
        assert!(start.elapsed() < DEADLINE, "timed out: {done} of {TOTAL} frames received, {sent} sent");
        let room = window.saturating_sub(sent - done).min(pkts.len());
        if room > 0 {
            stage.extend(pkts.drain(..room));
            sent += b.tx_burst(&mut stage);
            pkts.splice(0..0, stage.drain(..));
        } else {
            b.tx_burst(&mut Vec::new());
        }
    }
    std::thread::sleep(Duration::from_millis(200)); // nothing extra trickles in
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    let mut seen = vec![0u32; TOTAL as usize];
    let mut per_queue = Vec::new();
    for (q, got) in &results {
        per_queue.push(got.len());
        for &(seq, ip, port) in got {
            assert_eq!((ip, port), flow(seq), "frame {seq}: headers");
            seen[seq as usize] += 1;
            // The queue the RSS hash of the frame's addresses and ports
            // picks, computed here.
            let input = rss::ipv4_input(ip, UDP_DST_IP, Some((port, UDP_DST_PORT)));
            let want = rss::queue_of(rss::toeplitz(&rss::KEY, &input), QUEUES);
            assert_eq!(q.queue(), want, "frame {seq} from {ip:?}:{port}: queue");
        }
    }
    println!("frames per queue: {per_queue:?}");
    let missing: Vec<_> = (0..TOTAL).filter(|&s| seen[s as usize] != 1).collect();
    assert!(missing.is_empty(), "{} frames not received exactly once, first {:?}", missing.len(), &missing[..missing.len().min(10)]);
    assert!(per_queue.iter().filter(|&&n| n > 0).count() > 1, "one queue got everything: {per_queue:?}");
    assert!(per_queue.iter().all(|&n| n > 0), "a queue got nothing: {per_queue:?}");

    // Each handle sends on its own queue; the stats are the port's.
    let mut qs: Vec<Igb> = results.into_iter().map(|(q, _)| q).collect();
    let s = qs[1].stats();
    assert!(s.rx_packets >= u64::from(TOTAL), "{s:?}");
    let per_tx = 50;
    for (n, q) in qs.iter_mut().enumerate() {
        let mut batch: Vec<Packet> =
            (0..per_tx).map(|i| frame(&pool, mb, ma, 10, (n * per_tx + i) as u32, 100)).collect();
        assert_eq!(q.tx_burst(&mut batch), per_tx);
    }
    let mut got = Vec::new();
    let mut inbox = Vec::new();
    let start = Instant::now();
    while got.len() < QUEUES * per_tx && start.elapsed() < DEADLINE {
        b.rx_burst(&mut inbox, 64);
        got.extend(inbox.drain(..).filter_map(|p| parse(&p, 10)));
    }
    got.sort();
    assert_eq!(got, (0..(QUEUES * per_tx) as u32).map(|s| (s, 100)).collect::<Vec<_>>());
    for q in &mut qs {
        flush(q);
    }

    // Frames RSS cannot hash (not IP) arrive on queue 0; polled round robin.
    let mut pkts: Vec<Packet> = (0..20).map(|i| frame(&pool, ma, mb, 11, i, 80)).collect();
    assert_eq!(b.tx_burst(&mut pkts), 20);
    let mut per_queue = [0usize; QUEUES];
    let start = Instant::now();
    while per_queue.iter().sum::<usize>() < 20 && start.elapsed() < DEADLINE {
        for q in &mut qs {
            q.rx_burst(&mut inbox, 64);
            per_queue[q.queue()] += inbox.drain(..).filter_map(|p| parse(&p, 11)).count();
        }
    }
    assert_eq!(per_queue, [20, 0, 0, 0]);

    // Closing every handle returns every buffer.
    drop(qs);
    drop(b);
    assert_eq!(pool.pool().available(), cap, "buffers missing after close");
}

// ---------------------------------------------------------------------------
// Offloads (issue 11 part 3): checked by the peer port in software.

/// Destination port of the offload tests' UDP and TCP frames (nothing
/// else sends to it).
const OFL_PORT: u16 = 40_123;

/// An IPv4 frame (IHL 5) carrying a UDP (17) or TCP (6) segment to
/// [`OFL_PORT`] with `seq` in the payload, both checksums right.
fn l4_frame(dst: [u8; 6], src: [u8; 6], proto: u8, seq: u32, payload_len: usize) -> Vec<u8> {
    let hlen = if proto == IPPROTO_TCP { 20 } else { 8 };
    let l4_len = hlen + 4 + payload_len;
    let mut f = vec![0u8; 34 + l4_len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let (src, dst) = ([10, 3, 0, 1], [10, 3, 0, 2]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    f[20] = 0x40; // DF
    f[22] = 64;
    f[23] = proto;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    let c = internet_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&(1000 + seq as u16).to_be_bytes());
    f[36..38].copy_from_slice(&OFL_PORT.to_be_bytes());
    if proto == IPPROTO_TCP {
        f[46] = 5 << 4; // data offset
        f[47] = 0x18; // PSH, ACK
    } else {
        f[38..40].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    f[34 + hlen..34 + hlen + 4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(34 + hlen + 4) {
        *b = payload_byte(proto.into(), seq, i);
    }
    let at = 34 + if proto == IPPROTO_TCP { 16 } else { 6 };
    let c = checksum_fold(checksum_add(pseudo_header_sum(src, dst, proto, l4_len as u16), &f[34..]));
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f
}

/// What a receiver computes: (IPv4 header checksum right, TCP/UDP checksum
/// right) for an untagged frame of [`l4_frame`]'s shape.
fn software_verdict(f: &[u8]) -> (bool, bool) {
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let (src, dst) = (f[26..30].try_into().unwrap(), f[30..34].try_into().unwrap());
    let seg = &f[34..14 + total];
    let l4 = checksum_fold(checksum_add(pseudo_header_sum(src, dst, f[23], seg.len() as u16), seg));
    (internet_checksum(&f[14..34]) == 0, l4 == 0)
}

/// Frames of these tests that reach `rx` within 10 s, until `want` came:
/// (frame bytes, receive status) keyed by their sequence number.
fn collect_offload_frames(rx: &mut Igb, want: usize) -> Vec<(u32, Vec<u8>, Packet)> {
    let mut got = Vec::new();
    let mut inbox = Vec::new();
    let start = Instant::now();
    while got.len() < want && start.elapsed() < Duration::from_secs(10) {
        rx.rx_burst(&mut inbox, 64);
        for p in inbox.drain(..) {
            let f = p.to_vec();
            let l2 = if f.get(12..14) == Some(&[0x81, 0x00][..]) { 18 } else { 14 };
            let proto = f.get(l2 + 9).copied().unwrap_or(0);
            let hlen = if proto == IPPROTO_TCP { 20 } else { 8 };
            let ours = f.get(l2 - 2..l2) == Some(&ETHERTYPE_IPV4.to_be_bytes()[..])
                && f.get(l2 + 22..l2 + 24) == Some(&OFL_PORT.to_be_bytes()[..]);
            if ours {
                let at = l2 + 20 + hlen;
                let seq = u32::from_be_bytes(f[at..at + 4].try_into().unwrap());
                got.push((seq, f, p));
            }
        }
    }
    got
}

/// The NIC fills in IPv4, UDP and TCP checksums that were left zero (the
/// IPv4 one even when it held garbage); the peer port checks every frame
/// in software and with its own receive offload.
#[test]
fn transmit_checksum_offload_fills_ipv4_udp_and_tcp_checksums() {
    let mut p = open_pair(&NicConfig::default(), &NicConfig { rx_checksum: true, ..NicConfig::default() });
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    for (proto, l4) in [(IPPROTO_UDP, L4::Udp), (IPPROTO_TCP, L4::Tcp)] {
        let sizes: Vec<usize> = vec![0, 1, 17, 200, 1000, MAX_FRAME - 34 - 24 - 4];
        let mut pkts: Vec<Packet> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut f = l4_frame(mb, ma, proto, i as u32, n);
                f[24..26].copy_from_slice(&[0xde, 0xad]); // IPv4 checksum: garbage
                let at = 34 + if proto == IPPROTO_TCP { 16 } else { 6 };
                f[at..at + 2].fill(0);
                let mut q = p.a.alloc_packet(0).unwrap();
                q.write(&f).unwrap();
                q
            })
            .collect();
        let off = TxOffload { ip_checksum: true, l4_checksum: Some(l4), vlan: None };
        assert_eq!(p.a.tx_burst_offload(&mut pkts, &off), sizes.len(), "{l4:?}");
        let got = collect_offload_frames(&mut p.b, sizes.len());
        let seqs: Vec<u32> = got.iter().map(|g| g.0).collect();
        assert_eq!(seqs, (0..sizes.len() as u32).collect::<Vec<_>>(), "{l4:?}: frames lost or reordered");
        for (seq, f, q) in &got {
            let want = l4_frame(mb, ma, proto, *seq, sizes[*seq as usize]);
            assert_eq!(software_verdict(f), (true, true), "{l4:?} frame {seq}: checksums on the wire");
            // Frames under 60 bytes arrive padded with zeros.
            assert_eq!(&f[..want.len()], &want[..], "{l4:?} frame {seq}: exactly the frame with right checksums");
            assert!(f[want.len()..].iter().all(|&b| b == 0) && f.len() == want.len().max(MIN_FRAME), "{l4:?} {seq}: padding");
            assert_eq!((q.rx_ip_checksum(), q.rx_l4_checksum()), (RxChecksum::Good, RxChecksum::Good), "{l4:?} {seq}");
        }
        println!("{l4:?}: {} frames of 0..{} payload bytes, checksums filled in by the NIC, right on the wire", got.len(), sizes[sizes.len() - 1]);
    }
    // A frame the offload does not fit stops the burst and stays unsent.
    let mut arp = p.a.alloc_packet(0).unwrap();
    arp.write(&[0u8; 60]).unwrap();
    let mut pkts = vec![arp];
    let off = TxOffload { l4_checksum: Some(L4::Udp), ..TxOffload::default() };
    assert_eq!(p.a.tx_burst_offload(&mut pkts, &off), 0);
    assert_eq!(pkts.len(), 1);
    flush(&mut p.a);
}

/// The receive checksum status of every frame matches a software check:
/// right ones Good, a bad IPv4 header, a bad UDP and a bad TCP checksum
/// Bad, a frame that is not IP NotChecked. Sent without offloads, so the
/// bytes on the wire are exactly these.
#[test]
fn receive_checksum_status_matches_a_software_check_and_catches_bad_ones() {
    let mut p = open_pair(&NicConfig::default(), &NicConfig { rx_checksum: true, ..NicConfig::default() });
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    let mut frames = Vec::new();
    for seq in 0..24u32 {
        let proto = if seq % 2 == 0 { IPPROTO_UDP } else { IPPROTO_TCP };
        let mut f = l4_frame(mb, ma, proto, seq, 40 + seq as usize * 50);
        match seq % 6 {
            2 => f[24] ^= 0x40,              // IPv4 header checksum wrong
            3 => f[34 + 16] ^= 0x01,         // TCP checksum wrong
            4 => f[34 + 6] ^= 0x80,          // UDP checksum wrong
            5 => *f.last_mut().unwrap() ^= 1, // a payload byte flipped
            _ => {}
        }
        frames.push(f);
    }
    let mut pkts: Vec<Packet> = frames.iter().map(|f| {
        let mut q = alloc_packet(p.pool.pool(), 0).unwrap();
        q.write(f).unwrap();
        q
    }).collect();
    let sent = p.a.tx_burst(&mut pkts);
    assert_eq!(sent, frames.len());
    let got = collect_offload_frames(&mut p.b, frames.len());
    assert_eq!(got.len(), frames.len(), "every frame arrives, bad ones too");
    let (mut good, mut bad) = (0, 0);
    for (seq, f, q) in &got {
        assert_eq!(f, &frames[*seq as usize], "frame {seq} changed on the way");
        let (ip_ok, l4_ok) = software_verdict(f);
        let verdict = |ok: bool| if ok { RxChecksum::Good } else { RxChecksum::Bad };
        assert_eq!(q.rx_ip_checksum(), verdict(ip_ok), "frame {seq}: IPv4 verdict");
        // A NIC may skip the L4 check when the IP header is bad.
        if ip_ok {
            assert_eq!(q.rx_l4_checksum(), verdict(l4_ok), "frame {seq}: TCP/UDP verdict");
        }
        if ip_ok && l4_ok { good += 1 } else { bad += 1 }
    }
    assert_eq!((good, bad), (8, 16));
    // Not IP at all: nothing checked.
    let f = frame(&p.pool, mb, ma, 30, 0, 100);
    let got = exchange(&mut p.a, &mut p.b, vec![f], 30, 1);
    assert_eq!(got.len(), 1);
    let mut inbox = Vec::new();
    let mut q = frame(&p.pool, mb, ma, 31, 0, 100);
    q.data_mut()[12..14].copy_from_slice(&[0x88, 0xb5]);
    let mut v = vec![q];
    p.a.tx_burst(&mut v);
    let start = Instant::now();
    let verdicts = loop {
        p.b.rx_burst(&mut inbox, 64);
        if let Some(r) = inbox.iter().find(|r| parse(r, 31).is_some()) {
            break (r.rx_ip_checksum(), r.rx_l4_checksum());
        }
        inbox.clear();
        assert!(start.elapsed() < DEADLINE, "the non-IP frame never arrived");
    };
    assert_eq!(verdicts, (RxChecksum::NotChecked, RxChecksum::NotChecked));
    println!("receive checksum status: {good} right and {bad} wrong frames, every verdict as a software check says");
}

/// VLAN insert on transmit (A, VLAN offloads on) seen tagged by a port
/// without them (B); a tagged frame from B stripped by A and reported.
#[test]
fn vlan_tags_are_inserted_on_transmit_and_stripped_on_receive() {
    let on = NicConfig { vlan: true, ..NicConfig::default() };
    let mut p = open_pair(&on, &NicConfig::default());
    let (ma, mb) = (p.a.mac_address(), p.b.mac_address());
    let tci = 0x6000 | 100; // priority 3, VLAN 100
    let plain = l4_frame(mb, ma, IPPROTO_UDP, 7, 300);
    let mut q = p.a.alloc_packet(0).unwrap();
    q.write(&plain).unwrap();
    let off = TxOffload { vlan: Some(tci), ..TxOffload::default() };
    assert_eq!(p.a.tx_burst_offload(&mut vec![q], &off), 1);
    let got = collect_offload_frames(&mut p.b, 1);
    assert_eq!(got.len(), 1, "the tagged frame arrived");
    let f = &got[0].1;
    assert_eq!(f.len(), plain.len() + 4);
    assert_eq!(&f[..12], &plain[..12]);
    assert_eq!(&f[12..16], &[0x81, 0x00, (tci >> 8) as u8, tci as u8], "802.1Q tag after the addresses");
    assert_eq!(&f[16..], &plain[12..]);
    assert_eq!(got[0].2.rx_vlan(), None, "B does not strip");

    // B sends the tagged frame back to A, which strips and reports it.
    let mut back = f.clone();
    back[..6].copy_from_slice(&ma);
    back[6..12].copy_from_slice(&mb);
    let mut q = alloc_packet(p.pool.pool(), 0).unwrap();
    q.write(&back).unwrap();
    assert_eq!(p.b.tx_burst(&mut vec![q]), 1);
    let got = collect_offload_frames(&mut p.a, 1);
    assert_eq!(got.len(), 1, "the tagged frame came back");
    let (_, f, r) = &got[0];
    assert_eq!(r.rx_vlan(), Some(tci), "stripped tag reported");
    assert_eq!(&f[12..], &plain[12..], "the tag is gone from the frame");
    assert_eq!(&f[..6], &ma);
    println!("VLAN: tag {tci:#06x} inserted by A's NIC, seen by B, stripped by A's NIC and reported");
}
