//! The NVMe driver's own CPU cost per 4 KiB read (submit + completion
//! handling), against the in-process controller model (`fastlane::nvme::sim`)
//! run synchronously on the driver's own thread and core, so no other core
//! writes the queue memory and the time measured is the driver's.
//!
//! Setup: the model (`store_data: false`, 4 KiB blocks, SGLs reported as
//! QEMU's controller does) is brought up on its own thread, then switched
//! to synchronous mode ([`SimController::set_synchronous`]) once the queue
//! pair exists. One queue pair of depth 64; a batch is [`QD`] = 32
//! one-block reads (`qp.read` x 32, one `qp.submit()`), then the model runs
//! one pass (`sim.process()`: it executes the 32 reads and posts their
//! completions), then `qp.poll` hands the 32 back. Buffers are recycled
//! through a `Vec`, so no pool work is timed.
//!
//! What is measured:
//! - `wall`: criterion, and a plain loop for the table: elapsed time per I/O
//!   of whole batches, driver and model together.
//! - `driver`: the time *inside* driver calls: a TSC read before and after
//!   the 32 `read`s + `submit`, and around the `poll`, the model's pass
//!   outside both. The cost of a back-to-back TSC pair is subtracted per
//!   bracket, a bracket over ~100 us (the thread was preempted) is dropped,
//!   and ticks are converted to ns with a calibration against `Instant`.
//!   The model touched the CQ and the buffers last, on the same core: the
//!   driver takes no cross-core cache misses here (a real device causes
//!   some, in its own time).
//! - `floor`: what any driver must do per I/O at the least: a volatile
//!   write of a 64-byte `SubmissionEntry` into a ring slot plus a 16-byte
//!   `CompletionEntry` read, in a warm ring of 1024 slots, through framework
//!   `DmaArray`s (bounds-checked, as the driver's queues are).
//! - `async`: the same batches through `fastlane::nvme::AsyncQueue`: [`QD`]
//!   tasks on a `LocalExecutor`, each looping `aq.read(..).await`. A round
//!   of the executor (`cg_async_tasks`: each task takes its result and
//!   submits its next read, then one doorbell), the model's pass, then
//!   `aq.poll` (`cg_async_poll`: completions to their slots, tasks woken).
//!   Against the callback path this adds the request table, the wakers and
//!   the executor's task polls.
//! - instructions per I/O: `benches/callgrind.sh` runs this binary with
//!   `--callgrind` (I/O count from `FASTLANE_BENCH_ITERS`) under callgrind.
//!   The model's pass (`cg_model`) runs between them, so polls find
//!   completions and the inclusive cost of `cg_submit` + `cg_poll` is the
//!   driver's count.
//!
//! After criterion, `cargo bench --bench nvme` prints a Markdown table of
//! these, timed in the same run (median of 5), with the target of
//! 60 ns of driver CPU per I/O as a measurement, not an assertion.
//! `cargo test --all-targets` runs each benchmark once and skips the table.
// criterion_group!/criterion_main! generate undocumented public items.
#![allow(missing_docs)]

mod common;

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{benchmarking, median5, tick_calibration, ticks};
use criterion::{Criterion, Throughput};
use fastlane::framework::{BufferPool, DmaArray, DmaBuf, DmaRegion, PageSize};
use fastlane::nvme::sim::{SimConfig, SimController};
use fastlane::nvme::spec::{CompletionEntry, SubmissionEntry};
use fastlane::nvme::{AsyncQueue, Controller, IoQueuePair, LocalExecutor, Options};

/// Reads per batch (queue depth in use).
const QD: usize = 32;
/// Queue pair depth (capacity 63).
const DEPTH: u16 = 64;
/// Block size = I/O size.
const BLOCK: u32 = 4096;
const NS_BLOCKS: u64 = 1 << 20;
/// Slots of the floor's ring.
const FLOOR_SLOTS: usize = 1024;
/// The target, ns of driver CPU per I/O.
const TARGET_NS: f64 = 60.0;
/// SPDK's single-core record: 13.85 M IOPS, about 72 ns per I/O.
const SPDK_NS: f64 = 1e9 / 13.85e6;

// ---------------------------------------------------------------------------
// The driver against the model.

/// Model, controller, queue pair and buffers. Fields drop in declaration
/// order after [`Rig`]'s `Drop` put the model back on its thread: the
/// queue pair and the controller talk to the model while they shut down,
/// so the model goes last.
struct Rig {
    qp: IoQueuePair,
    bufs: Vec<DmaBuf>,
    _pool: BufferPool,
    _ctrl: Controller,
    sim: SimController,
    /// Next LBA to read.
    lba: u64,
}

/// The model (on its thread), the driver brought up against it, a pool of
/// 4 KiB buffers and a queue pair of [`DEPTH`] using SGLs.
fn bring_up() -> (SimController, Controller, BufferPool, IoQueuePair) {
    let cfg = SimConfig {
        namespace_blocks: NS_BLOCKS,
        lba_size: BLOCK,
        store_data: false,
        sgls: 1,
        ..SimConfig::default()
    };
    let (sim, mmio) = SimController::start(cfg);
    let ctrl = Controller::with_registers(mmio, Options::default()).expect("driver bring-up");
    let pool = BufferPool::new_unmapped(BLOCK as usize, 2 * QD as u32, PageSize::Small)
        .expect("buffer pool");
    let qp = ctrl.create_qpair(DEPTH).expect("queue pair");
    assert!(qp.uses_sgl(), "the model reports SGLs, as QEMU does");
    (sim, ctrl, pool, qp)
}

impl Rig {
    fn new() -> Rig {
        let (mut sim, ctrl, pool, qp) = bring_up();
        let bufs = (0..QD).map(|_| pool.alloc().expect("buffer")).collect();
        sim.set_synchronous(true);
        Rig {
            qp,
            bufs,
            _pool: pool,
            _ctrl: ctrl,
            sim,
            lba: 0,
        }
    }

    /// One batch, wall clock only.
    #[inline]
    fn batch(&mut self) {
        cg_submit(&mut self.qp, &mut self.bufs, &mut self.lba);
        cg_model(&mut self.sim);
        let n = cg_poll(&mut self.qp, &mut self.bufs);
        assert_eq!(n, QD, "one model pass completes the batch");
    }

    /// One batch, adding the ticks spent in the driver's calls to `acc`.
    #[inline]
    fn batch_accounted(&mut self, acc: &mut Account) {
        let a = ticks();
        cg_submit(&mut self.qp, &mut self.bufs, &mut self.lba);
        let b = ticks();
        cg_model(&mut self.sim);
        let c = ticks();
        let n = cg_poll(&mut self.qp, &mut self.bufs);
        let d = ticks();
        assert_eq!(n, QD, "one model pass completes the batch");
        acc.add([b - a, d - c], QD);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Queue deletion and shutdown wait for the model: its thread again.
        self.sim.set_synchronous(false);
    }
}

/// A poll bracket this long (about 100 us at 2-4 GHz) was interrupted by
/// the scheduler, not spent in the driver: counted apart, not as busy.
const PREEMPTED_TICKS: u64 = 300_000;

#[derive(Default)]
struct Account {
    busy: u64,
    preempted: u64,
    brackets: u64,
    ios: u64,
}

impl Account {
    /// Two brackets of driver ticks around a batch of `ios` I/Os.
    fn add(&mut self, brackets: [u64; 2], ios: usize) {
        for t in brackets {
            if t > PREEMPTED_TICKS {
                self.preempted += 1;
            } else {
                self.busy += t;
                self.brackets += 1;
            }
        }
        self.ios += ios as u64;
    }

    /// Driver ns per I/O, the cost of a tick pair taken off each bracket.
    fn ns_per_io(&self, ns_per_tick: f64, pair: f64) -> f64 {
        (self.busy as f64 - pair * self.brackets as f64) * ns_per_tick / self.ios as f64
    }
}

/// One pass of the model (not driver work).
#[inline(never)]
fn cg_model(sim: &mut SimController) {
    sim.process();
}

/// Submits [`QD`] one-block reads and rings the doorbell once.
#[inline(never)]
fn cg_submit(qp: &mut IoQueuePair, bufs: &mut Vec<DmaBuf>, lba: &mut u64) {
    for buf in bufs.drain(..) {
        if let Err(r) = qp.read(1, *lba, 1, buf, *lba) {
            panic!("read refused: {}", r.error);
        }
        *lba = (*lba + 1) % NS_BLOCKS;
    }
    qp.submit();
}

/// One poll; completed buffers go back to `bufs`. Returns completions.
#[inline(never)]
fn cg_poll(qp: &mut IoQueuePair, bufs: &mut Vec<DmaBuf>) -> usize {
    qp.poll(QD, |c| {
        if let Err(e) = c.result {
            panic!("read {} failed: {e}", c.tag);
        }
        if let Some(b) = c.buf {
            bufs.push(b);
        }
    })
}

// ---------------------------------------------------------------------------
// The same reads through the async layer.

/// [`QD`] tasks, each looping over one-block reads on the shared queue.
struct AsyncRig<'a> {
    exec: LocalExecutor<'a>,
    aq: &'a AsyncQueue,
    sim: &'a mut SimController,
}

impl AsyncRig<'_> {
    /// One batch: a round of the tasks (results taken, next reads
    /// submitted, one doorbell), the model's pass, one poll.
    #[inline]
    fn batch(&mut self) {
        let n = cg_async_tasks(&mut self.exec, self.aq);
        cg_model(self.sim);
        let c = cg_async_poll(self.aq);
        assert_eq!(
            (n, c),
            (QD, QD),
            "every task submits, one model pass completes the batch"
        );
    }

    /// One batch, adding the ticks spent in the tasks and the poll to `acc`.
    #[inline]
    fn batch_accounted(&mut self, acc: &mut Account) {
        let a = ticks();
        let n = cg_async_tasks(&mut self.exec, self.aq);
        let b = ticks();
        cg_model(self.sim);
        let c = ticks();
        let m = cg_async_poll(self.aq);
        let d = ticks();
        assert_eq!(
            (n, m),
            (QD, QD),
            "every task submits, one model pass completes the batch"
        );
        acc.add([b - a, d - c], QD);
    }
}

/// Builds an [`AsyncRig`] (its own model and queue pair) for `f`, then
/// shuts it down with the model back on its thread.
fn with_async_rig<R>(f: impl FnOnce(&mut AsyncRig<'_>) -> R) -> R {
    let (mut sim, ctrl, pool, qp) = bring_up();
    let aq = AsyncQueue::new(qp);
    let lba = Cell::new(0);
    sim.set_synchronous(true);
    let r = {
        let mut exec = LocalExecutor::new(QD);
        for _ in 0..QD {
            let buf = pool.alloc().expect("buffer");
            exec.spawn(reader(&aq, buf, &lba)).expect("task slot");
        }
        // The first round submits the first batch.
        cg_async_tasks(&mut exec, &aq);
        cg_model(&mut sim);
        cg_async_poll(&aq);
        f(&mut AsyncRig {
            exec,
            aq: &aq,
            sim: &mut sim,
        })
    };
    sim.set_synchronous(false);
    drop(aq);
    drop((pool, ctrl));
    r
}

/// A task: one-block reads one after the other, the buffer reused.
async fn reader(aq: &AsyncQueue, mut buf: DmaBuf, next: &Cell<u64>) {
    loop {
        let lba = next.get();
        next.set((lba + 1) % NS_BLOCKS);
        let (b, r) = aq.read(1, lba, 1, buf).await;
        if let Err(e) = r {
            panic!("read {lba} failed: {e}");
        }
        buf = b;
    }
}

/// One executor round (each woken task takes its result and submits its
/// next read), then the doorbell. Returns the tasks polled.
#[inline(never)]
fn cg_async_tasks(exec: &mut LocalExecutor<'_>, aq: &AsyncQueue) -> usize {
    let n = exec.run_ready();
    aq.submit();
    n
}

/// One poll of the async queue: completions to their slots, tasks woken.
#[inline(never)]
fn cg_async_poll(aq: &AsyncQueue) -> usize {
    aq.poll(QD)
}

// ---------------------------------------------------------------------------
// The floor: a 64-byte command written, a 16-byte completion read.

/// A submission and a completion ring in DMA memory, reached the way the
/// driver reaches its queues: framework `DmaArray`s (bounds-checked).
struct Floor {
    sq: DmaArray<SubmissionEntry>,
    cq: DmaArray<CompletionEntry>,
    next: usize,
}

impl Floor {
    fn new() -> Floor {
        let sq_bytes = FLOOR_SLOTS * size_of::<SubmissionEntry>();
        let cq_bytes = FLOOR_SLOTS * size_of::<CompletionEntry>();
        let region =
            DmaRegion::new_unmapped(sq_bytes + cq_bytes, PageSize::Small).expect("floor region");
        let sq = region.carve(0, FLOOR_SLOTS).expect("floor SQ");
        let cq = region.carve(sq_bytes, FLOOR_SLOTS).expect("floor CQ");
        sq.fill(SubmissionEntry::default());
        cq.fill(CompletionEntry::default());
        Floor { sq, cq, next: 0 }
    }

    /// `n` I/Os: per I/O one SQE written to the ring, one CQE read back.
    #[inline(never)]
    fn cg_floor(&mut self, n: usize) -> u16 {
        let mut cmd = SubmissionEntry::read(1, 0, 0, 0x1000, 0);
        let mut acc = 0u16;
        for _ in 0..n {
            let slot = self.next;
            self.next = (slot + 1) % FLOOR_SLOTS;
            cmd.cdw10 = slot as u32;
            cmd.set_cid(slot as u16);
            self.sq.write(slot, cmd);
            acc ^= self.cq.read(slot).cid;
        }
        acc
    }
}

// ---------------------------------------------------------------------------
// Criterion.

/// A way of running batches of [`QD`] reads: the callback path or the
/// async one.
trait Batches {
    /// One batch, wall clock only.
    fn batch(&mut self);
    /// One batch, the driver's ticks added to `acc`.
    fn batch_accounted(&mut self, acc: &mut Account);
}

impl Batches for Rig {
    fn batch(&mut self) {
        Rig::batch(self)
    }
    fn batch_accounted(&mut self, acc: &mut Account) {
        Rig::batch_accounted(self, acc)
    }
}

impl Batches for AsyncRig<'_> {
    fn batch(&mut self) {
        AsyncRig::batch(self)
    }
    fn batch_accounted(&mut self, acc: &mut Account) {
        AsyncRig::batch_accounted(self, acc)
    }
}

/// Criterion: `{name}_wall` and `{name}_driver_only` for `r`.
fn bench_batches(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    r: &mut impl Batches,
) {
    g.bench_function(format!("{name}_wall"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                r.batch();
            }
            start.elapsed()
        })
    });
    g.bench_function(format!("{name}_driver_only"), |b| {
        let (ns_per_tick, pair) = tick_calibration();
        b.iter_custom(|iters| {
            let mut acc = Account::default();
            for _ in 0..iters {
                r.batch_accounted(&mut acc);
            }
            let ticks = (acc.busy as f64 - pair * acc.brackets as f64).max(0.0);
            Duration::from_nanos((ticks * ns_per_tick) as u64)
        })
    });
}

fn benches(rig: &mut Rig) {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("nvme_read_4k");
    g.throughput(Throughput::Elements(QD as u64));
    bench_batches(&mut g, "qd32_batch", rig);
    with_async_rig(|ar| bench_batches(&mut g, "qd32_batch_async", ar));
    g.bench_function("qd32_floor_sqe_write_cqe_read", |b| {
        let mut floor = Floor::new();
        b.iter(|| black_box(floor.cg_floor(QD)))
    });
    g.finish();
}

// ---------------------------------------------------------------------------
// The table.

/// Batches for each timed figure of the table.
const BATCHES: usize = 50_000;

/// What [`measure`] found: ns per I/O.
struct Measured {
    wall: f64,
    driver: f64,
    brackets_per_batch: f64,
    preempted: u64,
}

/// Wall and driver time per I/O of `r` (medians of 5 runs of [`BATCHES`]).
fn measure(r: &mut impl Batches) -> Measured {
    let (ns_per_tick, pair) = tick_calibration();
    for _ in 0..1000 {
        r.batch();
    }
    let wall = median5(|| {
        let start = Instant::now();
        for _ in 0..BATCHES {
            r.batch();
        }
        start.elapsed().as_nanos() as f64 / (BATCHES * QD) as f64
    });
    let mut brackets_per_batch = 0.0;
    let mut preempted = 0;
    let driver = median5(|| {
        let mut acc = Account::default();
        for _ in 0..BATCHES {
            r.batch_accounted(&mut acc);
        }
        brackets_per_batch = acc.brackets as f64 / BATCHES as f64;
        preempted = acc.preempted;
        acc.ns_per_io(ns_per_tick, pair)
    });
    Measured {
        wall,
        driver,
        brackets_per_batch,
        preempted,
    }
}

fn table(rig: &mut Rig) {
    let (ns_per_tick, pair) = tick_calibration();
    let cb = measure(rig);
    let aio = with_async_rig(|ar| measure(ar));
    let (wall, driver) = (cb.wall, cb.driver);
    let mut floor = Floor::new();
    let floor_ns = median5(|| {
        let n = BATCHES * QD;
        let start = Instant::now();
        black_box(floor.cg_floor(n));
        start.elapsed().as_nanos() as f64 / n as f64
    });
    let sim = rig.sim.stats();
    let verdict = if driver < TARGET_NS { "met" } else { "not met" };
    println!();
    println!(
        "NVMe driver cost per 4 KiB read, QD {QD}, model run synchronously on the driver's thread, \
         SGL data pointers, {:.3} ns/tick, timer pair {:.1} ticks; \
         model executed {} reads, {} SQ / {} CQ doorbell changes:",
        ns_per_tick,
        pair,
        sim.io[fastlane::nvme::spec::nvm_opcode::READ as usize],
        sim.sq_doorbell_writes,
        sim.cq_doorbell_writes,
    );
    println!();
    println!("| measurement | ns per I/O | vs floor |");
    println!("|---|---:|---:|");
    println!("| wall: batch of {QD} reads, one model pass, one poll (driver and model) | {wall:.1} | {:.1}x |", wall / floor_ns);
    println!(
        "| driver: time inside `read`/`submit` and `poll` ({:.1} brackets per batch, {} preempted brackets dropped) | {driver:.1} | {:.1}x |",
        cb.brackets_per_batch,
        cb.preempted,
        driver / floor_ns
    );
    println!("| async wall: {QD} tasks awaiting `AsyncQueue::read`, one model pass, one poll | {:.1} | {:.1}x |", aio.wall, aio.wall / floor_ns);
    println!(
        "| async driver: executor round (results taken, reads submitted) and `AsyncQueue::poll` ({:.1} brackets per batch, {} preempted dropped) | {:.1} | {:.1}x |",
        aio.brackets_per_batch,
        aio.preempted,
        aio.driver,
        aio.driver / floor_ns
    );
    println!("| floor: `write_volatile` of a 64-byte SQE + read of a 16-byte CQE | {floor_ns:.2} | 1.0x |");
    println!(
        "| target (issue) | {TARGET_NS:.0} | {:.1}x |",
        TARGET_NS / floor_ns
    );
    println!(
        "| SPDK single-core record, 13.85 M IOPS | {SPDK_NS:.1} | {:.1}x |",
        SPDK_NS / floor_ns
    );
    println!();
    println!(
        "- target of {TARGET_NS:.0} ns of driver CPU per I/O: {verdict} in this run ({driver:.1} ns measured, {:.0}% of the target); \
         instructions per I/O: `benches/callgrind.sh`.",
        100.0 * driver / TARGET_NS
    );
    println!(
        "- async against callback, same run: {:.2}x the driver time ({:+.1} ns per I/O), {:.2}x the wall time.",
        aio.driver / driver,
        aio.driver - driver,
        aio.wall / wall
    );
}

// ---------------------------------------------------------------------------
// Callgrind mode.

/// `--callgrind`: a fixed number of I/Os (`FASTLANE_BENCH_ITERS`, default
/// 100000, rounded to batches) and as many floor I/Os, for counting
/// instructions, then as many through the async layer. The model's pass
/// (`cg_model`) runs between submit and poll.
fn callgrind_mode() {
    let ios: usize = std::env::var("FASTLANE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let batches = ios.div_ceil(QD);
    let mut rig = Rig::new();
    let mut floor = Floor::new();
    for _ in 0..batches {
        rig.batch();
    }
    black_box(floor.cg_floor(batches * QD));
    with_async_rig(|ar| {
        for _ in 0..batches {
            ar.batch();
        }
    });
    println!(
        "callgrind mode: {} I/Os in {batches} batches of {QD}, 0 empty polls",
        batches * QD
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
    // Queue pair and controller shut down while the model still runs.
    drop(rig);
}
