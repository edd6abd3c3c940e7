//! The igb driver's own CPU cost per packet, receive and transmit in bursts
//! of 32, and an l2fwd-style forwarding loop, against the in-process device
//! model (`fastlane::nic::igb::sim`).
//!
//! Setup: one port from `Igb::with_registers` on the model's register
//! block, rings of 512 descriptors, an unmapped pool of 2048 buffers, 60-byte
//! frames. One thread plays both sides: the model works between driver
//! calls, synchronously, so nothing here waits or spins.
//!
//! What is measured (TSC read before and after each driver call, the cost of
//! a back-to-back pair subtracted, ticks converted to ns with a calibration
//! against `Instant`):
//! - `rx_burst32/driver`: the model writes back 32 receive descriptors
//!   (DD | EOP, length) and moves RDH; then, timed, one `rx_burst(out, 32)`:
//!   32 status reads, 32 fresh buffers from the port's cache written into
//!   the ring, 32 `Packet`s pushed, one RDT write. The application's part,
//!   giving the packets' buffers back (`Igb::recycle`), is not timed.
//! - `tx_burst32/driver`: 32 packets taken from the port's cache (not
//!   timed); then, timed, one `tx_burst`: reclaim of the previous burst
//!   (one DD check, 32 buffers back to the cache) and 32 descriptors
//!   written, one TDT write; then the model "sends" them (DD written back,
//!   TDH moved).
//! - `l2fwd32/{igb,dyn_nic}`: the model writes back 32 receive
//!   descriptors; then, timed, what DPDK's l2fwd does per burst: one
//!   `rx_burst(out, 32)`, both MAC addresses of every frame rewritten in
//!   place (`Packet::data_mut`, no copy), one `tx_burst` of the same
//!   packets (reclaim of the previous burst included) and `recycle` of any
//!   it did not take; then the model "sends" them. `igb` calls the port
//!   directly, `dyn_nic` through `&mut dyn Nic` (an application written
//!   against the trait): the same code, monomorphised once for each.
//! - `floor`: what any driver must do per packet at the least: the volatile
//!   read of one 8-byte status word and the volatile write of one 16-byte
//!   descriptor, in a warm ring of 512 slots, through a framework
//!   `DmaArray` (bounds-checked, as the driver's rings are).
//!
//! The model runs on the same core just before the driver, so descriptors
//! are in L1: a real NIC's DMA writes cost the driver cache misses this
//! bench does not see. It is the driver's instruction path, best case.
//! Instructions per packet: `benches/callgrind-nic.sh` runs this binary with
//! `--callgrind` (packet count from `FASTLANE_BENCH_ITERS`).
//!
//! After criterion, `cargo bench --bench nic` prints a Markdown table (median
//! of 5 runs) with the target of 15 ns per packet per direction as a
//! measurement, not an assertion. `cargo test --all-targets` runs each
//! benchmark once and skips the table.
// criterion_group!/criterion_main! generate undocumented public items.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{benchmarking, median5, tick_calibration, ticks, ticks_to_ns};
use criterion::{Criterion, Throughput};
use fastlane::framework::{DmaArray, DmaRegion, PageSize};
use fastlane::nic::igb::sim::SimIgb;
use fastlane::nic::igb::Igb;
use fastlane::nic::{Nic, NicConfig, Packet, PacketPool};

/// Packets per burst.
const BURST: usize = 32;
/// Descriptors per ring.
const RING: u16 = 512;
/// Pool buffers: the receive ring's, the port cache's (512), bursts in hand.
const POOL: u32 = 2048;
/// Frame length (minimum Ethernet frame without FCS).
const FRAME: u16 = 60;
/// Slots of the floor's ring.
const FLOOR_SLOTS: usize = 512;
/// The target, ns per packet per direction.
const TARGET_NS: f64 = 15.0;
/// ixy.rs forwarding 26 Mpps on one 3.3 GHz core: ns per packet per
/// direction (half of the per-packet forwarding time).
const IXY_NS: f64 = 1e9 / 26e6 / 2.0;

// ---------------------------------------------------------------------------
// Ticks.

// ---------------------------------------------------------------------------
// The driver against the model.

/// Port, model and the packet vectors. The port drops first (it disables
/// its queues, after which the model no longer touches the rings).
struct Rig {
    port: Igb,
    sim: SimIgb,
    rx: Vec<Packet>,
    tx: Vec<Packet>,
    _pool: PacketPool,
}

impl Rig {
    fn new() -> Rig {
        let pool = PacketPool::new_unmapped(POOL).expect("packet pool");
        // The model reaches the rings through SimDma (unmapped memory,
        // IOVA == VA) and is called from this thread, between driver calls.
        let (sim, regs) = SimIgb::new();
        let cfg = NicConfig {
            rx_ring: RING,
            tx_ring: RING,
            promiscuous: true,
            ..NicConfig::default()
        };
        let port = Igb::with_registers(regs, &pool, &cfg).expect("driver bring-up on the model");
        Rig {
            port,
            sim,
            rx: Vec::with_capacity(BURST),
            tx: Vec::with_capacity(BURST),
            _pool: pool,
        }
    }

    /// One receive burst; returns the ticks spent in `rx_burst`.
    #[inline]
    fn rx_round(&mut self) -> u64 {
        let delivered = self.sim.receive(BURST, FRAME);
        let a = ticks();
        let n = cg_rx(&mut self.port, &mut self.rx);
        let b = ticks();
        assert!(delivered == BURST && n == BURST, "model delivered {delivered}, driver took {n}");
        self.port.recycle(&mut self.rx);
        b - a
    }

    /// One transmit burst; returns the ticks spent in `tx_burst`.
    #[inline]
    fn tx_round(&mut self) -> u64 {
        for _ in 0..BURST {
            self.tx.push(self.port.alloc_packet(FRAME as usize).expect("packet buffer"));
        }
        let a = ticks();
        let n = cg_tx(&mut self.port, &mut self.tx);
        let b = ticks();
        assert_eq!(n, BURST, "tx_burst took {n}");
        self.sim.transmit(usize::MAX);
        b - a
    }
}

/// Destination and source MAC written into every forwarded frame.
const L2FWD_MACS: [u8; 12] = [0x02, 0, 0, 0, 0, 0x01, 0x02, 0x00, 0x00, 0x5e, 0x10, 0xc9];

/// How the l2fwd loop reaches the port.
#[derive(Clone, Copy)]
enum Via {
    /// `Igb` methods, statically dispatched.
    Igb,
    /// `&mut dyn Nic`, as an application written against the trait.
    DynNic,
}

impl Rig {
    /// One l2fwd burst; returns the ticks spent forwarding.
    #[inline]
    fn l2fwd_round(&mut self, via: Via) -> u64 {
        let delivered = self.sim.receive(BURST, FRAME);
        let a = ticks();
        let n = match via {
            Via::Igb => cg_l2fwd_igb(&mut self.port, &mut self.rx),
            // black_box: the call goes through the vtable, as it would for
            // a port opened by `nic::open`.
            Via::DynNic => cg_l2fwd_dyn(black_box(&mut self.port as &mut dyn Nic), &mut self.rx),
        };
        let b = ticks();
        assert!(delivered == BURST && n == BURST, "model delivered {delivered}, forwarded {n}");
        self.sim.transmit(usize::MAX);
        b - a
    }
}

/// DPDK l2fwd's per-burst work on one port: receive, rewrite both MAC
/// addresses in place, send the same packets, recycle what did not fit.
#[inline(always)]
fn l2fwd<N: Nic + ?Sized>(port: &mut N, pkts: &mut Vec<Packet>) -> usize {
    let n = port.rx_burst(pkts, BURST);
    for p in pkts.iter_mut() {
        if let Some(macs) = p.data_mut().get_mut(..12) {
            macs.copy_from_slice(&L2FWD_MACS);
        }
    }
    port.tx_burst(pkts);
    if !pkts.is_empty() {
        port.recycle(pkts);
    }
    n
}

/// [`l2fwd`] on the igb port directly.
#[inline(never)]
fn cg_l2fwd_igb(port: &mut Igb, pkts: &mut Vec<Packet>) -> usize {
    l2fwd(port, pkts)
}

/// [`l2fwd`] through the `Nic` trait object.
#[inline(never)]
fn cg_l2fwd_dyn(port: &mut dyn Nic, pkts: &mut Vec<Packet>) -> usize {
    l2fwd(port, pkts)
}

/// One `rx_burst` of up to [`BURST`] packets.
#[inline(never)]
fn cg_rx(port: &mut Igb, out: &mut Vec<Packet>) -> usize {
    port.rx_burst(out, BURST)
}

/// One `tx_burst` of the packets in `pkts`.
#[inline(never)]
fn cg_tx(port: &mut Igb, pkts: &mut Vec<Packet>) -> usize {
    port.tx_burst(pkts)
}

// ---------------------------------------------------------------------------
// The floor: a status word read, a 16-byte descriptor written, per packet.

/// A ring of 16-byte descriptors (address, status quadword) in DMA memory,
/// reached the way the driver reaches its rings: a framework `DmaArray`.
struct Floor {
    ring: DmaArray<[u64; 2]>,
    next: usize,
}

impl Floor {
    fn new() -> Floor {
        let region = DmaRegion::new_unmapped(FLOOR_SLOTS * 16, PageSize::Small).expect("floor region");
        let ring = region.carve::<[u64; 2]>(0, FLOOR_SLOTS).expect("floor ring");
        ring.fill([0; 2]);
        Floor { ring, next: 0 }
    }

    /// `n` packets: per packet one status word read, one descriptor written.
    #[inline(never)]
    fn cg_floor(&mut self, n: usize) -> u64 {
        let mut acc = 0u64;
        for _ in 0..n {
            let slot = self.next;
            self.next = (slot + 1) % FLOOR_SLOTS;
            acc ^= self.ring.read_field::<u64>(slot, 8);
            self.ring.write(slot, [(slot as u64) << 11, 0]);
        }
        acc
    }
}

// ---------------------------------------------------------------------------
// Criterion.

fn benches(rig: &mut Rig) {
    let mut c = Criterion::default().configure_from_args();
    let mut floor = Floor::new();
    let mut g = c.benchmark_group("rx_burst32");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function("driver", |b| {
        b.iter_custom(|iters| {
            let t: u64 = (0..iters).map(|_| rig.rx_round()).sum();
            Duration::from_nanos(ticks_to_ns(t, iters) as u64)
        })
    });
    g.bench_function("floor_status_read_desc_write", |b| b.iter(|| black_box(floor.cg_floor(BURST))));
    g.finish();
    let mut g = c.benchmark_group("tx_burst32");
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function("driver", |b| {
        b.iter_custom(|iters| {
            let t: u64 = (0..iters).map(|_| rig.tx_round()).sum();
            Duration::from_nanos(ticks_to_ns(t, iters) as u64)
        })
    });
    g.bench_function("floor_status_read_desc_write", |b| b.iter(|| black_box(floor.cg_floor(BURST))));
    g.finish();
    let mut g = c.benchmark_group("l2fwd32");
    g.throughput(Throughput::Elements(BURST as u64));
    for (name, via) in [("igb", Via::Igb), ("dyn_nic", Via::DynNic)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t: u64 = (0..iters).map(|_| rig.l2fwd_round(via)).sum();
                Duration::from_nanos(ticks_to_ns(t, iters) as u64)
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// The table.

fn table(rig: &mut Rig) {
    const BURSTS: u64 = 50_000;
    let (ns_per_tick, pair) = tick_calibration();
    for _ in 0..1000 {
        rig.rx_round();
        rig.tx_round();
        rig.l2fwd_round(Via::Igb);
        rig.l2fwd_round(Via::DynNic);
    }
    let per_pkt = |t: u64| ticks_to_ns(t, BURSTS) / (BURSTS as usize * BURST) as f64;
    let rx = median5(|| per_pkt((0..BURSTS).map(|_| rig.rx_round()).sum()));
    let tx = median5(|| per_pkt((0..BURSTS).map(|_| rig.tx_round()).sum()));
    let fwd_igb = median5(|| per_pkt((0..BURSTS).map(|_| rig.l2fwd_round(Via::Igb)).sum()));
    let fwd_dyn = median5(|| per_pkt((0..BURSTS).map(|_| rig.l2fwd_round(Via::DynNic)).sum()));
    let mut floor = Floor::new();
    let floor_ns = median5(|| {
        let n = BURSTS as usize * BURST;
        let start = Instant::now();
        black_box(floor.cg_floor(n));
        start.elapsed().as_nanos() as f64 / n as f64
    });
    let s = rig.sim.stats();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "igb driver cost per packet, bursts of {BURST}, {FRAME}-byte frames, rings of {RING}, {cpus} CPUs, \
         {ns_per_tick:.3} ns/tick, timer pair {pair:.1} ticks subtracted per burst; model received {} and sent {} \
         frames ({} missed, {} malformed):",
        s.rx_frames, s.tx_frames, s.rx_missed, s.tx_malformed,
    );
    println!();
    println!("| measurement | ns per packet | TSC ticks per packet | vs floor |");
    println!("|---|---:|---:|---:|");
    let row = |what: &str, ns: f64| {
        println!("| {what} | {ns:.2} | {:.1} | {:.1}x |", ns / ns_per_tick, ns / floor_ns);
    };
    row("rx: `rx_burst(out, 32)` (status reads, buffer refill from the port cache, RDT write)", rx);
    row("tx: `tx_burst` of 32 (reclaim of the previous burst, descriptor writes, TDT write)", tx);
    row("l2fwd on `Igb`: rx_burst, both MACs rewritten in place, tx_burst (both directions)", fwd_igb);
    row("l2fwd through `&mut dyn Nic`: the same", fwd_dyn);
    row("floor: volatile 8-byte status read + 16-byte descriptor write", floor_ns);
    row("target (issue), per direction", TARGET_NS);
    row("ixy.rs, 26 Mpps forwarding on one 3.3 GHz core, per direction", IXY_NS);
    println!();
    for (dir, ns) in [("rx", rx), ("tx", tx)] {
        let verdict = if ns < TARGET_NS { "met" } else { "not met" };
        println!(
            "- {dir}: target of {TARGET_NS:.0} ns per packet {verdict} in this run ({ns:.2} ns, {:.0}% of the target).",
            100.0 * ns / TARGET_NS
        );
    }
    println!(
        "- l2fwd through the trait / directly on igb: {:.2}x in this run ({fwd_dyn:.2} vs {fwd_igb:.2} ns per packet).",
        fwd_dyn / fwd_igb
    );
    println!("- instructions per packet: `benches/callgrind-nic.sh`.");
}

// ---------------------------------------------------------------------------
// Callgrind mode.

/// `--callgrind`: a fixed number of packets per direction
/// (`FASTLANE_BENCH_ITERS`, default 100000, rounded up to bursts) and as
/// many floor packets, for counting instructions.
fn callgrind_mode() {
    let pkts: usize = std::env::var("FASTLANE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let bursts = pkts.div_ceil(BURST);
    let mut rig = Rig::new();
    let mut floor = Floor::new();
    for _ in 0..bursts {
        rig.rx_round();
        rig.tx_round();
    }
    for _ in 0..bursts {
        rig.l2fwd_round(Via::Igb);
    }
    for _ in 0..bursts {
        rig.l2fwd_round(Via::DynNic);
    }
    black_box(floor.cg_floor(bursts * BURST));
    let s = rig.sim.stats();
    println!(
        "callgrind mode: {} packets per direction in {bursts} bursts of {BURST} (and as many through each l2fwd); model received {} sent {}",
        bursts * BURST,
        s.rx_frames,
        s.tx_frames
    );
}

fn main() {
    if std::env::args().any(|a| a == "--callgrind") {
        callgrind_mode();
        return;
    }
    let mut rig = Rig::new();
    benches(&mut rig);
    Criterion::default().configure_from_args().final_summary();
    if benchmarking() {
        table(&mut rig);
    }
}
