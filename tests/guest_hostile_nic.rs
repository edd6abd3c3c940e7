//! The NIC drivers under hostile but fair use, in the QEMU guest through
//! real VFIO (issue 8, items 1, 2, 3 and 9 for igb and virtio-net). Built
//! with `--features guest`, run by tests/guest/nic-soak.sh (from
//! run-all.sh, under both IOMMU apertures: 39 bits, regions at an offset;
//! 48 bits, identity mapped) with both igb ports and the virtio-net port
//! bound to vfio-pci.
//!
//! - a pool of another VFIO container is refused at open, by igb,
//!   virtio-net and `nic::open`; packets of another container stop
//!   `tx_burst` and stay with the caller, and no byte of any other buffer
//!   reaches the wire;
//! - a second open of an open port (as "0000:01:00.0" and as "01:00.0") is
//!   `Busy`, and the first handle keeps sending and receiving, also after
//!   the refused attempt is gone;
//! - virtio-net sends every frame handed to `tx_burst` one at a time,
//!   through `VirtioNet::open` and through `nic::open`, without a later call;
//! - ports opened, closed and reopened in several orders with pools made
//!   before, between and after the opens carry verified traffic each time;
//! - ports of two containers exchange verified traffic and refuse each
//!   other's packets.
//!
//! All ports share a QEMU hub: a frame one sends reaches the others. Test
//! frames (tests/common/nic.rs) carry EtherType 0x88B5, a tag, a sequence
//! number and the length; everything after is a pattern checked byte by
//! byte.

use std::time::{Duration, Instant};

mod common;

use common::nic::{drain, env, exchange, frame, len_of, parse, DEADLINE};
use fastlane::framework::{Error, Vfio};
use fastlane::nic::igb::Igb;
use fastlane::nic::virtio::VirtioNet;
use fastlane::nic::{self, Nic, NicConfig, NicError, Packet, PacketPool};

/// Frames unreceived at once: below every receive ring used here.
const WINDOW: u32 = 128;
/// Buffers per pool: enough for three ports' rings and caches.
const POOL: u32 = 4096;

fn cfg() -> NicConfig {
    NicConfig::default()
}

fn open_igb(vfio: &Vfio, var: &str, pool: &PacketPool) -> Box<dyn Nic> {
    let mut p: Box<dyn Nic> = Box::new(Igb::open(vfio, &env(var), pool, &cfg()).unwrap_or_else(|e| panic!("{var}: {e}")));
    wait_link(p.as_mut());
    drain(p.as_mut());
    p
}

fn open_virtio(vfio: &Vfio, pool: &PacketPool) -> Box<dyn Nic> {
    let mut p: Box<dyn Nic> = Box::new(VirtioNet::open(vfio, &env("FASTLANE_VIRTIO"), pool, &cfg()).unwrap());
    drain(p.as_mut());
    p
}

fn wait_link(p: &mut dyn Nic) {
    let start = Instant::now();
    while !p.link_status().up {
        assert!(start.elapsed() < Duration::from_secs(10), "link down after open");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `n` verified frames from `tx` (buffers from `pool`) to `rx`, after
/// both ports dropped what queued up for them (a port nobody polls fills
/// its ring with the hub's broadcasts, and the hub then drops frames).
fn one_way(pool: &PacketPool, tx: &mut dyn Nic, rx: &mut dyn Nic, tag: u32, n: u32) {
    drain(tx);
    drain(rx);
    exchange(pool, tx, rx, tag, n, WINDOW);
}

/// Both directions between two ports, verified: `n` frames each way.
fn both_ways(pool_a: &PacketPool, a: &mut dyn Nic, pool_b: &PacketPool, b: &mut dyn Nic, tag: u32, n: u32) {
    one_way(pool_a, a, b, tag, n);
    one_way(pool_b, b, a, tag | 0x8000, n);
}

/// "0000:01:00.0" -> "01:00.0".
fn short(addr: &str) -> &str {
    addr.strip_prefix("0000:").expect("a full PCI address")
}

/// `r` must be the framework's `Busy`; the refused attempt is dropped
/// here, which must not touch the device.
fn assert_busy<T>(r: Result<T, NicError>, what: &str) {
    assert!(
        matches!(r, Err(NicError::Framework(Error::Busy(_)))),
        "{what}: {:?}",
        r.as_ref().err()
    );
}

fn is_foreign<T>(r: &Result<T, NicError>) -> bool {
    matches!(r, Err(NicError::ForeignBuffer))
}

/// Everything `rx` receives for `ms` milliseconds, as bytes.
fn listen(rx: &mut dyn Nic, ms: u64) -> Vec<Vec<u8>> {
    let (mut inbox, mut all) = (Vec::with_capacity(64), Vec::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(ms) {
        rx.rx_burst(&mut inbox, 64);
        all.extend(inbox.drain(..).map(|p: Packet| p.to_vec()));
    }
    all
}

/// Sends `good` frames of `tag` from `tx` with a packet of another
/// container's pool (`foreign`, tag `tag + 1`) in the middle: the burst must
/// stop at it, leave it first in the caller's vector with `ForeignBuffer`,
/// and after it is taken out the rest go. On `rx`, exactly the good frames
/// arrive, each intact, and nothing else at all: no frame of the foreign
/// tag, no frame made of some other buffer's bytes or of zeros.
fn foreign_packet_stays_with_the_caller(
    pool: &PacketPool,
    tx: &mut dyn Nic,
    foreign: &PacketPool,
    rx: &mut dyn Nic,
    tag: u32,
) {
    drain(rx);
    let src = tx.mac_address();
    let good = 6u32;
    let bad = frame(foreign, src, tag + 1, 0, 200);
    let bad_pool = bad.buf().pool_id();
    let mut pkts: Vec<Packet> = (0..good).map(|s| frame(pool, src, tag, s, len_of(tag, s))).collect();
    pkts.insert(3, bad);
    assert_eq!(tx.tx_burst(&mut pkts), 3, "the burst stops at the foreign packet");
    assert_eq!(pkts.len(), 4);
    assert_eq!(pkts[0].buf().pool_id(), bad_pool, "the foreign packet stays first");
    assert!(is_foreign(&tx.check_tx(&pkts[0])), "{:?}", tx.check_tx(&pkts[0]));
    assert_eq!(tx.tx_burst(&mut pkts), 0, "and keeps stopping the burst");
    assert!(tx.check_tx(&pkts[1]).is_ok());
    let bad = pkts.remove(0);
    assert_eq!(parse(&bad), Some((tag + 1, 0, 200)), "the refused packet is untouched");
    let start = Instant::now();
    while !pkts.is_empty() {
        tx.tx_burst(&mut pkts);
        assert!(start.elapsed() < DEADLINE);
    }
    let got = listen(rx, 1500);
    let ours: Vec<(u32, u32, usize)> =
        got.iter().filter_map(|f| common::frame_meta(f)).filter(|&(t, _, _)| t == tag).collect();
    let want: Vec<(u32, u32, usize)> = (0..good).map(|s| (tag, s, len_of(tag, s))).collect();
    assert_eq!(ours, want, "the good frames, in order");
    assert_eq!(got.len(), good as usize, "frames besides the good ones reached the wire: {got:02x?}");
    for f in &got {
        let (t, s, len) = common::frame_meta(f).unwrap();
        assert_eq!(f.len(), len);
        for (i, &b) in f.iter().enumerate().skip(common::HEADER + common::META) {
            assert_eq!(b, common::nic::payload_byte(t, s, i), "frame {s}: byte {i}");
        }
    }
}

#[test]
fn pools_of_another_container_are_refused_at_open() {
    let (a, b) = (Vfio::new().unwrap(), Vfio::new().unwrap());
    let pool_a = PacketPool::new(&a, POOL).unwrap();
    // A pool of B, mapped there (B has a device open) and not yet mapped
    // (C has none): both foreign to A.
    let pool_b = PacketPool::new(&b, POOL).unwrap();
    let mut igb_b = open_igb(&b, "FASTLANE_IGB1", &pool_b);
    let c = Vfio::new().unwrap();
    let pool_c = PacketPool::new(&c, POOL).unwrap();
    for (what, pool) in [("mapped in another container", &pool_b), ("of a container without devices", &pool_c)] {
        let r = Igb::open(&a, &env("FASTLANE_IGB0"), pool, &cfg());
        assert!(is_foreign(&r), "igb with a pool {what}: {:?}", r.as_ref().err());
        let r = VirtioNet::open(&a, &env("FASTLANE_VIRTIO"), pool, &cfg());
        assert!(is_foreign(&r), "virtio-net with a pool {what}: {:?}", r.as_ref().err());
        for var in ["FASTLANE_IGB0", "FASTLANE_VIRTIO"] {
            let r = nic::open(&a, &env(var), pool, &cfg());
            assert!(is_foreign(&r), "nic::open {var} with a pool {what}: {:?}", r.as_ref().err());
        }
    }
    // The refused opens left the devices usable: open them properly now.
    let mut igb_a = open_igb(&a, "FASTLANE_IGB0", &pool_a);
    both_ways(&pool_a, igb_a.as_mut(), &pool_b, igb_b.as_mut(), 0x48_0100, 300);
    let mut virtio_a = open_virtio(&a, &pool_a);
    one_way(&pool_a, virtio_a.as_mut(), igb_b.as_mut(), 0x48_0200, 300);
}

#[test]
fn igb_keeps_packets_of_another_container_with_the_caller() {
    let (a, b) = (Vfio::new().unwrap(), Vfio::new().unwrap());
    let (pool_a, pool_b) = (PacketPool::new(&a, POOL).unwrap(), PacketPool::new(&b, POOL).unwrap());
    let mut igb_a = open_igb(&a, "FASTLANE_IGB0", &pool_a);
    let mut igb_b = open_igb(&b, "FASTLANE_IGB1", &pool_b);
    foreign_packet_stays_with_the_caller(&pool_a, igb_a.as_mut(), &pool_b, igb_b.as_mut(), 0x48_1100);
    foreign_packet_stays_with_the_caller(&pool_b, igb_b.as_mut(), &pool_a, igb_a.as_mut(), 0x48_1200);
    // Both buffers' pools are whole once the ports close: nothing of B went
    // onto A's rings or the other way round.
    drop((igb_a, igb_b));
    assert_eq!(pool_a.pool().available(), POOL as usize);
    assert_eq!(pool_b.pool().available(), POOL as usize);
}

#[test]
fn virtio_keeps_packets_of_another_container_with_the_caller() {
    let (a, b) = (Vfio::new().unwrap(), Vfio::new().unwrap());
    let (pool_a, pool_b) = (PacketPool::new(&a, POOL).unwrap(), PacketPool::new(&b, POOL).unwrap());
    let mut virtio_a = open_virtio(&a, &pool_a);
    let mut igb_b = open_igb(&b, "FASTLANE_IGB1", &pool_b);
    foreign_packet_stays_with_the_caller(&pool_a, virtio_a.as_mut(), &pool_b, igb_b.as_mut(), 0x48_2100);
    foreign_packet_stays_with_the_caller(&pool_b, igb_b.as_mut(), &pool_a, virtio_a.as_mut(), 0x48_2200);
    // Through nic::open as well.
    drop(virtio_a);
    let mut virtio_a = nic::open(&a, &env("FASTLANE_VIRTIO"), &pool_a, &cfg()).unwrap();
    drain(virtio_a.as_mut());
    foreign_packet_stays_with_the_caller(&pool_a, virtio_a.as_mut(), &pool_b, igb_b.as_mut(), 0x48_2300);
}

/// A jumbo (multi-buffer) packet whose second buffer belongs to another
/// container: igb and virtio-net refuse it whole (`ForeignBuffer`), it
/// stays first and unchanged, nothing reaches the wire; the same frame
/// built from the port's own pool arrives intact, one packet.
#[test]
fn jumbo_frames_with_a_buffer_of_another_container_stay_with_the_caller() {
    let (a, b) = (Vfio::new().unwrap(), Vfio::new().unwrap());
    let (pool_a, pool_b) = (PacketPool::new(&a, POOL).unwrap(), PacketPool::new(&b, POOL).unwrap());
    let jumbo = NicConfig { mtu: 9000, ..cfg() };
    let mut igb_b = nic::open(&b, &env("FASTLANE_IGB1"), &pool_b, &jumbo).unwrap();
    wait_link(igb_b.as_mut());
    // dst broadcast, src 02:..., a private EtherType; then a pattern.
    let mut f: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    f[..12].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0x4a, 0x4b]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    let build = |tail_pool: &PacketPool| {
        let mut head = Packet::new(pool_a.pool().alloc().unwrap(), 0).unwrap();
        head.write(&f[..1500]).unwrap();
        for (k, part) in [&f[1500..3500], &f[3500..]].into_iter().enumerate() {
            // The last buffer is `tail_pool`'s: foreign, or the port's own.
            let from = if k == 1 { tail_pool } else { &pool_a };
            let mut seg = Packet::new(from.pool().alloc().unwrap(), 0).unwrap();
            seg.write(part).unwrap();
            head.push_segment(seg).map_err(|(_, e)| e).unwrap();
        }
        head
    };
    for var in ["FASTLANE_IGB0", "FASTLANE_VIRTIO"] {
        let mut port = nic::open(&a, &env(var), &pool_a, &jumbo).unwrap();
        drain(port.as_mut());
        drain(igb_b.as_mut());
        let mut pkts = vec![build(&pool_b)];
        assert_eq!(port.tx_burst(&mut pkts), 0, "{var}: a frame with a foreign buffer went");
        assert!(is_foreign(&port.check_tx(&pkts[0])), "{var}: {:?}", port.check_tx(&pkts[0]));
        assert_eq!((pkts[0].segment_count(), pkts[0].to_vec()), (3, f.clone()), "{var}: left as it was");
        assert!(listen(igb_b.as_mut(), 500).is_empty(), "{var}: something reached the wire");
        // The same frame from the port's own pool: one packet, intact.
        let mut pkts = vec![build(&pool_a)];
        assert_eq!(port.tx_burst(&mut pkts), 1, "{var}");
        let got = listen(igb_b.as_mut(), 1500);
        assert_eq!(got.len(), 1, "{var}");
        assert_eq!(got[0], f, "{var}: the jumbo frame arrived changed");
    }
}

#[test]
fn a_second_open_of_an_open_port_is_busy_and_the_first_keeps_working() {
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, POOL).unwrap();
    let (igb0, virtio) = (env("FASTLANE_IGB0"), env("FASTLANE_VIRTIO"));
    let mut first = open_igb(&vfio, "FASTLANE_IGB0", &pool);
    let mut peer = open_virtio(&vfio, &pool);
    both_ways(&pool, first.as_mut(), &pool, peer.as_mut(), 0x48_3100, 200);
    for addr in [igb0.as_str(), short(&igb0)] {
        assert_busy(Igb::open(&vfio, addr, &pool, &cfg()), &format!("Igb::open {addr}"));
        assert_busy(nic::open(&vfio, addr, &pool, &cfg()), &format!("nic::open {addr}"));
        let two = NicConfig { queues: 2, ..cfg() };
        assert_busy(Igb::open_multi(&vfio, addr, &pool, &two), &format!("Igb::open_multi {addr}"));
        // The refused attempts held nothing: dropping them touched nothing.
        both_ways(&pool, first.as_mut(), &pool, peer.as_mut(), 0x48_3200, 200);
    }
    for addr in [virtio.as_str(), short(&virtio)] {
        assert_busy(VirtioNet::open(&vfio, addr, &pool, &cfg()), &format!("VirtioNet::open {addr}"));
        assert_busy(nic::open(&vfio, addr, &pool, &cfg()), &format!("nic::open {addr}"));
        both_ways(&pool, peer.as_mut(), &pool, first.as_mut(), 0x48_3300, 200);
    }
    // A second container may not take a device this one holds either.
    let other = Vfio::new().unwrap();
    let other_pool = PacketPool::new(&other, POOL).unwrap();
    assert_busy(Igb::open(&other, &igb0, &other_pool, &cfg()), &format!("Igb::open {igb0} from another container"));
    both_ways(&pool, first.as_mut(), &pool, peer.as_mut(), 0x48_3400, 200);
    // Once closed, the port opens again.
    drop(first);
    let mut again = open_igb(&vfio, "FASTLANE_IGB0", &pool);
    both_ways(&pool, again.as_mut(), &pool, peer.as_mut(), 0x48_3500, 200);
}

/// `n` frames from `tx`, one per `tx_burst` call and no other transmit call
/// at all; every one must arrive at `rx`, intact, in order.
fn one_frame_per_call(pool: &PacketPool, tx: &mut dyn Nic, rx: &mut dyn Nic, tag: u32, n: u32) {
    let src = tx.mac_address();
    for s in 0..n {
        let mut one = vec![frame(pool, src, tag, s, len_of(tag, s))];
        assert_eq!(tx.tx_burst(&mut one), 1, "frame {s} not taken");
    }
    let (mut got, mut inbox) = (Vec::new(), Vec::with_capacity(64));
    let start = Instant::now();
    while got.len() < n as usize && start.elapsed() < Duration::from_secs(10) {
        rx.rx_burst(&mut inbox, 64);
        got.extend(inbox.drain(..).filter_map(|p| parse(&p)).filter(|&(t, _, _)| t == tag));
    }
    got.extend(listen(rx, 300).iter().filter_map(|f| common::frame_meta(f)).filter(|&(t, _, _)| t == tag));
    let want: Vec<(u32, u32, usize)> = (0..n).map(|s| (tag, s, len_of(tag, s))).collect();
    assert_eq!(got, want, "{} of {n} frames arrived, {} still in flight", got.len(), tx.tx_in_flight());
}

#[test]
fn virtio_sends_every_frame_of_one_frame_bursts() {
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, POOL).unwrap();
    let mut igb = open_igb(&vfio, "FASTLANE_IGB0", &pool);
    let mut virtio = open_virtio(&vfio, &pool);
    one_frame_per_call(&pool, virtio.as_mut(), igb.as_mut(), 0x48_4100, 50);
    // Again after a pause: the device went idle in between.
    std::thread::sleep(Duration::from_millis(200));
    one_frame_per_call(&pool, virtio.as_mut(), igb.as_mut(), 0x48_4200, 50);
    // The same port reopened through nic::open, with the pool made before
    // (the case where the frame on the wire was all zeros).
    drop(virtio);
    let mut virtio = nic::open(&vfio, &env("FASTLANE_VIRTIO"), &pool, &cfg()).unwrap();
    drain(virtio.as_mut());
    one_frame_per_call(&pool, virtio.as_mut(), igb.as_mut(), 0x48_4300, 50);
    drop((virtio, igb, pool, vfio));

    // A fresh container (the last one keeps its devices until it goes):
    // nic::open for both ports, the pool made before any device.
    let fresh = Vfio::new().unwrap();
    let pool = PacketPool::new(&fresh, POOL).unwrap();
    let mut virtio = nic::open(&fresh, &env("FASTLANE_VIRTIO"), &pool, &cfg()).unwrap();
    drain(virtio.as_mut());
    let mut igb = nic::open(&fresh, &env("FASTLANE_IGB0"), &pool, &cfg()).unwrap();
    wait_link(igb.as_mut());
    drain(igb.as_mut());
    one_frame_per_call(&pool, virtio.as_mut(), igb.as_mut(), 0x48_4400, 50);
    // And the igb the same way, for comparison.
    one_frame_per_call(&pool, igb.as_mut(), virtio.as_mut(), 0x48_4500, 50);
}

#[test]
fn ports_open_close_and_reopen_in_any_order_with_live_pools() {
    let vfio = Vfio::new().unwrap();
    let before = PacketPool::new(&vfio, POOL).unwrap();
    let mut igb0 = open_igb(&vfio, "FASTLANE_IGB0", &before);
    let between = PacketPool::new(&vfio, POOL).unwrap();
    let mut igb1 = open_igb(&vfio, "FASTLANE_IGB1", &between);
    let after = PacketPool::new(&vfio, POOL).unwrap();
    both_ways(&before, igb0.as_mut(), &between, igb1.as_mut(), 0x48_5100, 300);
    // Any pool of the container serves any port.
    both_ways(&after, igb0.as_mut(), &before, igb1.as_mut(), 0x48_5200, 300);

    // Close the first opened, reopen it on a pool made after.
    drop(igb0);
    one_way(&before, igb1.as_mut(), open_virtio(&vfio, &after).as_mut(), 0x48_5300, 200);
    let mut igb0 = open_igb(&vfio, "FASTLANE_IGB0", &after);
    both_ways(&between, igb0.as_mut(), &before, igb1.as_mut(), 0x48_5400, 300);

    // Close everything; a pool made with no device open; reopen in the
    // other order, each on an older pool.
    drop(igb1);
    drop(igb0);
    let closed = PacketPool::new(&vfio, POOL).unwrap();
    let mut igb1 = open_igb(&vfio, "FASTLANE_IGB1", &before);
    let mut igb0 = open_igb(&vfio, "FASTLANE_IGB0", &closed);
    both_ways(&closed, igb0.as_mut(), &between, igb1.as_mut(), 0x48_5500, 300);
    let mut virtio = open_virtio(&vfio, &between);
    both_ways(&after, virtio.as_mut(), &closed, igb0.as_mut(), 0x48_5600, 300);

    // Close in the order opened, reopen through nic::open.
    drop(igb1);
    drop(igb0);
    drop(virtio);
    let mut ports: Vec<Box<dyn Nic>> = ["FASTLANE_VIRTIO", "FASTLANE_IGB1", "FASTLANE_IGB0"]
        .iter()
        .map(|v| {
            let mut p = nic::open(&vfio, &env(v), &before, &cfg()).unwrap();
            drain(p.as_mut());
            p
        })
        .collect();
    let (v, rest) = ports.split_at_mut(1);
    let (i1, i0) = rest.split_at_mut(1);
    both_ways(&after, v[0].as_mut(), &closed, i0[0].as_mut(), 0x48_5700, 300);
    both_ways(&between, i1[0].as_mut(), &before, i0[0].as_mut(), 0x48_5800, 300);
    drop(ports);
    for (name, p) in [("before", &before), ("between", &between), ("after", &after), ("closed", &closed)] {
        assert_eq!(p.pool().available(), POOL as usize, "pool made {name}: buffers missing");
    }
}

#[test]
fn ports_of_two_containers_exchange_traffic_and_refuse_each_others_packets() {
    let (a, b) = (Vfio::new().unwrap(), Vfio::new().unwrap());
    let (pool_a, pool_b) = (PacketPool::new(&a, POOL).unwrap(), PacketPool::new(&b, POOL).unwrap());
    let mut igb0 = nic::open(&a, &env("FASTLANE_IGB0"), &pool_a, &cfg()).unwrap();
    let mut igb1 = nic::open(&b, &env("FASTLANE_IGB1"), &pool_b, &cfg()).unwrap();
    wait_link(igb0.as_mut());
    wait_link(igb1.as_mut());
    drain(igb0.as_mut());
    drain(igb1.as_mut());
    both_ways(&pool_a, igb0.as_mut(), &pool_b, igb1.as_mut(), 0x48_6100, 1000);
    // Received packets belong to the receiving port's container: sending
    // them out of the other port is refused; out of their own, fine.
    let src = igb0.mac_address();
    let mut pkts: Vec<Packet> = (0..8).map(|s| frame(&pool_a, src, 0x48_6200, s, 100)).collect();
    let mut received = Vec::new();
    let start = Instant::now();
    while !pkts.is_empty() || received.len() < 8 {
        assert!(start.elapsed() < DEADLINE);
        igb0.tx_burst(&mut pkts);
        igb1.rx_burst(&mut received, 64);
        received.retain(|p| parse(p).is_some_and(|(t, _, _)| t == 0x48_6200));
    }
    assert_eq!(igb0.tx_burst(&mut received), 0, "B's buffers out of A's port");
    assert!(is_foreign(&igb0.check_tx(&received[0])));
    assert_eq!(received.len(), 8);
    let mut inbox = Vec::new();
    let start = Instant::now();
    while !received.is_empty() {
        assert!(start.elapsed() < DEADLINE);
        igb1.tx_burst(&mut received);
        igb0.rx_burst(&mut inbox, 64);
    }
    // A third container on the virtio port talks to both.
    let c = Vfio::new().unwrap();
    let pool_c = PacketPool::new(&c, POOL).unwrap();
    let mut virtio = nic::open(&c, &env("FASTLANE_VIRTIO"), &pool_c, &cfg()).unwrap();
    both_ways(&pool_c, virtio.as_mut(), &pool_a, igb0.as_mut(), 0x48_6300, 300);
    one_way(&pool_c, virtio.as_mut(), igb1.as_mut(), 0x48_6400, 300);
    let mut wrong = vec![frame(&pool_a, virtio.mac_address(), 0x48_6500, 0, 100)];
    assert_eq!(virtio.tx_burst(&mut wrong), 0);
    assert!(is_foreign(&virtio.check_tx(&wrong[0])));
}
