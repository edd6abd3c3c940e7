//! The async layer (`AsyncQueue`, `LocalExecutor`) against the in-process
//! controller model, run synchronously on the test's thread
//! (`set_synchronous` + `process`), so every step is deterministic: many
//! tasks on one queue pair, a full queue making submissions wait in order,
//! futures dropped in every state (buffers back to their pool, a reused
//! slot seeing only its own result), split requests waiting for enough
//! command slots, typed errors, timeouts.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use fastlane_framework::{BufferPool, DmaBuf, PageSize};
use fastlane_nvme::sim::{SimConfig, SimController};
use fastlane_nvme::spec::nvm_opcode;
use fastlane_nvme::{
    block_on, pattern, AsyncQueue, Controller, Io, LocalExecutor, NvmeError, Options,
};

const BS: usize = 512;

/// Model, controller, pool and the async queue. Fields drop in order after
/// `Drop` put the model back on its thread (queue deletion and shutdown
/// wait for it).
struct Rig {
    aq: AsyncQueue,
    pool: BufferPool,
    _ctrl: Controller,
    sim: SimController,
}

impl Rig {
    /// A queue pair of `depth` (capacity `depth - 1`), MDTS `2^mdts` pages.
    fn new(depth: u16, mdts: u8, buffers: u32, options: Options) -> Rig {
        let cfg = SimConfig {
            namespace_blocks: 1 << 16,
            mdts,
            ..SimConfig::default()
        };
        let (mut sim, mmio) = SimController::start(cfg);
        let ctrl = Controller::with_registers(mmio, options).expect("bring-up");
        let pool = BufferPool::new_unmapped(64 * 1024, buffers, PageSize::Small).expect("pool");
        let aq = AsyncQueue::new(ctrl.create_qpair(depth).expect("queue pair"));
        sim.set_synchronous(true);
        Rig {
            aq,
            pool,
            _ctrl: ctrl,
            sim,
        }
    }

    fn sync(depth: u16) -> Rig {
        Rig::new(depth, 5, 512, Options::default())
    }

    /// `blocks` blocks at `lba` with the pattern of `seed`, written and
    /// completed before returning.
    fn put(&mut self, lba: u64, blocks: u32, seed: u64) {
        let mut data = vec![0u8; blocks as usize * BS];
        pattern::fill(&mut data, BS, lba, seed);
        let mut buf = self.pool.alloc().unwrap();
        buf.write(0, &data).unwrap();
        let (aq, sim) = (&self.aq, &mut self.sim);
        let (_, r) = block_on(aq.write(1, lba, blocks, buf), || {
            step(aq, sim);
        });
        r.unwrap();
    }
}

/// The idle step: doorbell, one model pass, completions to futures.
fn step(aq: &AsyncQueue, sim: &mut SimController) -> usize {
    aq.submit();
    sim.process();
    aq.poll(64)
}

/// Runs every task to its end, a model step between rounds; returns the
/// rounds it took (at most 100,000, else the test fails).
fn run_all(exec: &mut LocalExecutor<'_>, aq: &AsyncQueue, sim: &mut SimController) -> usize {
    let mut rounds = 0;
    exec.run(|| {
        rounds += 1;
        assert!(rounds < 100_000, "stuck: {:?}", aq.stats());
        step(aq, sim);
    });
    rounds
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.sim.set_synchronous(false);
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counter() -> (Arc<Count>, Waker) {
    let c = Arc::new(Count::default());
    (c.clone(), Waker::from(c))
}

fn wakes(c: &Count) -> usize {
    c.0.load(Ordering::SeqCst)
}

fn poll<F: Future + Unpin>(f: &mut F, w: &Waker) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(w))
}

fn ready<T, F: Future<Output = T> + Unpin>(f: &mut F, w: &Waker) -> T {
    match poll(f, w) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("expected the future to be ready"),
    }
}

/// A read of `blocks` blocks at `lba`, polled once (it must be pending),
/// with its waker and the waker's wake counter.
fn started<'q>(
    aq: &'q AsyncQueue,
    pool: &BufferPool,
    lba: u64,
    blocks: u32,
) -> (Io<'q>, Arc<Count>, Waker) {
    let (count, waker) = counter();
    let mut io = aq.read(1, lba, blocks, pool.alloc().unwrap());
    assert!(
        poll(&mut io, &waker).is_pending(),
        "read at {lba} did not wait"
    );
    (io, count, waker)
}

/// The pattern check of `blocks` blocks at `lba` in `buf`.
fn holds(buf: &DmaBuf, lba: u64, blocks: u32, seed: u64) -> Result<(), (u64, usize)> {
    let mut out = vec![0u8; blocks as usize * BS];
    buf.read(0, &mut out).unwrap();
    pattern::check(&out, BS, lba, seed)
}

fn reads(sim: &SimController) -> u64 {
    sim.stats().io[nvm_opcode::READ as usize]
}

#[test]
fn many_tasks_on_one_queue_pair_each_get_their_own_data() {
    const TASKS: usize = 256;
    const BLOCKS: u32 = 8;
    let mut rig = Rig::sync(33);
    assert_eq!(rig.aq.capacity(), 32);
    let free = rig.pool.available();
    let verified = Cell::new(0);
    let mut exec = LocalExecutor::new(TASKS);
    for t in 0..TASKS as u64 {
        let (aq, pool, verified) = (&rig.aq, &rig.pool, &verified);
        exec.spawn(async move {
            // Ranges of neighbours interleave: a misdelivered buffer fails.
            let lba = t * BLOCKS as u64;
            let mut data = vec![0u8; BLOCKS as usize * BS];
            pattern::fill(&mut data, BS, lba, 7 + t);
            let mut buf = pool.alloc().unwrap();
            buf.write(0, &data).unwrap();
            let (mut buf, r) = aq.write(1, lba, BLOCKS, buf).await;
            r.unwrap();
            buf.fill(0xee);
            let (buf, r) = aq.read(1, lba, BLOCKS, buf).await;
            r.unwrap();
            assert_eq!(holds(&buf, lba, BLOCKS, 7 + t), Ok(()), "task {t}");
            verified.set(verified.get() + 1);
        })
        .unwrap();
    }
    run_all(&mut exec, &rig.aq, &mut rig.sim);
    assert_eq!(verified.get(), TASKS);
    let s = rig.aq.stats();
    assert_eq!(
        (s.submitted, s.completed),
        (2 * TASKS as u64, 2 * TASKS as u64)
    );
    assert!(
        s.waited >= (TASKS - 32) as u64,
        "a full queue made requests wait: {s:?}"
    );
    assert_eq!((s.abandoned, s.stale), (0, 0));
    assert_eq!(rig.aq.outstanding(), 0);
    assert_eq!(rig.pool.available(), free, "every buffer back in its pool");
    // The queue pair never refused a command (QueueFull would have failed a
    // task), and the doorbell went once per round, not per command.
    let qs = rig.aq.qpair_stats();
    assert_eq!(qs.submitted, 2 * TASKS as u64);
    assert!(qs.doorbell_writes * 4 < qs.submitted, "{qs:?}");
}

#[test]
fn a_dropped_future_gives_its_buffer_back_and_the_slot_reused_sees_only_its_own_result() {
    // Capacity 1: the next command reuses the dropped one's slot.
    let mut rig = Rig::sync(2);
    rig.put(10, 1, 0xA);
    rig.put(20, 1, 0xB);
    let free = rig.pool.available();
    let (_, w) = counter();
    let mut a = rig.aq.read(1, 10, 1, rig.pool.alloc().unwrap());
    assert!(poll(&mut a, &w).is_pending());
    assert_eq!(rig.aq.outstanding(), 1);
    drop(a);
    // The device may still write it: the queue pair keeps it.
    assert_eq!(rig.pool.available(), free - 1);
    let (bc, bw) = counter();
    let mut b = rig.aq.read(1, 20, 1, rig.pool.alloc().unwrap());
    assert!(poll(&mut b, &bw).is_pending(), "the queue is full: b waits");
    assert_eq!(rig.aq.waiting(), 1);
    assert_eq!(reads(&rig.sim), 0);
    // a's completion arrives: its buffer goes back, b is woken.
    assert_eq!(step(&rig.aq, &mut rig.sim), 1);
    assert_eq!(rig.pool.available(), free - 1, "a's buffer back, b's out");
    assert_eq!(wakes(&bc), 1);
    assert_eq!(rig.aq.stats().abandoned, 1);
    assert!(poll(&mut b, &bw).is_pending(), "b submitted");
    assert_eq!(step(&rig.aq, &mut rig.sim), 1);
    assert_eq!(wakes(&bc), 2);
    let (buf, r) = ready(&mut b, &bw);
    r.unwrap();
    assert_eq!(holds(&buf, 20, 1, 0xB), Ok(()), "b's own data, not a's");
    drop(buf);
    assert_eq!(rig.pool.available(), free);
    assert_eq!(reads(&rig.sim), 2);
    let s = rig.aq.stats();
    assert_eq!(
        (s.submitted, s.completed, s.abandoned, s.stale),
        (4, 3, 1, 0)
    );
}

#[test]
fn a_future_dropped_after_its_completion_frees_the_slot_and_wakes_the_next() {
    let mut rig = Rig::sync(2);
    let free = rig.pool.available();
    let (a, _, _) = started(&rig.aq, &rig.pool, 0, 1);
    let (mut b, bc, bw) = started(&rig.aq, &rig.pool, 1, 1);
    assert_eq!(step(&rig.aq, &mut rig.sim), 1);
    // a is done but not taken: it still holds the slot.
    assert_eq!(wakes(&bc), 0);
    drop(a);
    assert_eq!(wakes(&bc), 1, "dropping a's result frees the slot for b");
    assert_eq!(rig.pool.available(), free - 1);
    assert!(poll(&mut b, &bw).is_pending());
    assert_eq!(step(&rig.aq, &mut rig.sim), 1);
    let (_, r) = ready(&mut b, &bw);
    r.unwrap();
    assert_eq!(
        rig.aq.stats().abandoned,
        0,
        "a completed before it was dropped"
    );
}

#[test]
fn a_full_queue_makes_requests_wait_in_order_and_none_go_past() {
    let mut rig = Rig::sync(3); // capacity 2
    let mut f: Vec<_> = (0..6u64)
        .map(|i| rig.aq.read(1, i, 1, rig.pool.alloc().unwrap()))
        .collect();
    let c: Vec<_> = (0..6).map(|_| counter()).collect();
    for i in 0..5 {
        assert!(poll(&mut f[i], &c[i].1).is_pending());
    }
    assert_eq!(rig.aq.waiting(), 3);
    step(&rig.aq, &mut rig.sim);
    assert_eq!(reads(&rig.sim), 2, "only the queue's capacity went out");
    // f3 gives up while waiting: its turn passes to f4.
    let f3 = f.remove(3);
    drop(f3);
    let (c3, _) = c[3].clone();
    assert_eq!(rig.aq.waiting(), 2);
    ready(&mut f[0], &c[0].1).1.unwrap();
    assert_eq!((wakes(&c[2].0), wakes(&c[4].0)), (1, 0), "f2 first");
    // f5 arrives now: the free slot is promised to f2, f5 queues.
    assert!(poll(&mut f[4], &c[5].1).is_pending());
    ready(&mut f[1], &c[1].1).1.unwrap();
    assert_eq!(
        (wakes(&c[2].0), wakes(&c[4].0), wakes(&c3)),
        (1, 1, 0),
        "then f4, not f3"
    );
    assert_eq!(wakes(&c[5].0), 0);
    assert!(poll(&mut f[2], &c[2].1).is_pending());
    assert!(poll(&mut f[3], &c[4].1).is_pending());
    step(&rig.aq, &mut rig.sim);
    assert_eq!(reads(&rig.sim), 4);
    let (buf, r) = ready(&mut f[3], &c[4].1);
    r.unwrap();
    drop(buf);
    assert_eq!(wakes(&c[5].0), 1, "f5 after f4");
    ready(&mut f[2], &c[2].1).1.unwrap();
    assert!(poll(&mut f[4], &c[5].1).is_pending());
    step(&rig.aq, &mut rig.sim);
    ready(&mut f[4], &c[5].1).1.unwrap();
    assert_eq!(reads(&rig.sim), 5);
    assert_eq!(rig.aq.stats().waited, 4, "f2 to f5");
}

#[test]
fn a_split_request_waits_for_all_its_command_slots_and_blocks_later_ones() {
    // MDTS 2^1 pages = 8 KiB: a 32 KiB read is 4 commands; capacity 4.
    let mut rig = Rig::new(5, 1, 64, Options::default());
    rig.put(100, 64, 3);
    let (mut small, _, w0) = started(&rig.aq, &rig.pool, 100, 1);
    let (mut big, bc, bw) = started(&rig.aq, &rig.pool, 100, 64);
    // 3 slots free, but big is first.
    let (mut later, lc, lw) = started(&rig.aq, &rig.pool, 101, 1);
    let before = reads(&rig.sim);
    step(&rig.aq, &mut rig.sim);
    assert_eq!(reads(&rig.sim) - before, 1);
    assert_eq!(holds(&ready(&mut small, &w0).0, 100, 1, 3), Ok(()));
    assert_eq!((wakes(&bc), wakes(&lc)), (1, 0));
    assert!(poll(&mut big, &bw).is_pending());
    step(&rig.aq, &mut rig.sim);
    assert_eq!(reads(&rig.sim) - before, 5, "one plus four commands");
    let (buf, r) = ready(&mut big, &bw);
    r.unwrap();
    assert_eq!(holds(&buf, 100, 64, 3), Ok(()));
    drop(buf);
    assert_eq!(wakes(&lc), 1);
    assert!(poll(&mut later, &lw).is_pending());
    step(&rig.aq, &mut rig.sim);
    assert_eq!(holds(&ready(&mut later, &lw).0, 101, 1, 3), Ok(()));
    // Above what the queue pair holds (8 commands > 4): refused, typed.
    let mut huge = rig.aq.read(1, 0, 128, rig.pool.alloc().unwrap());
    let (buf, r) = ready(&mut huge, &w0);
    assert!(matches!(r, Err(NvmeError::TooLarge { .. })), "{r:?}");
    assert_eq!(buf.len(), 64 * 1024, "the buffer comes back");
}

#[test]
fn refused_requests_resolve_at_once_with_typed_errors_and_their_buffer() {
    let mut rig = Rig::sync(4);
    let free = rig.pool.available();
    let (_, w) = counter();
    // The queue is full: requests for blocks outside the namespace, no
    // blocks or an unknown namespace do not wait for a slot.
    let mut full: Vec<_> = (0..3)
        .map(|i| started(&rig.aq, &rig.pool, i, 1).0)
        .collect();
    let cases: [(u32, u64, u32); 4] = [
        (1, (1 << 16) - 1, 2),
        (1, u64::MAX, 1),
        (1, 0, 0),
        (9, 0, 1),
    ];
    for (nsid, lba, blocks) in cases {
        let mut f = rig.aq.read(nsid, lba, blocks, rig.pool.alloc().unwrap());
        let (buf, r) = ready(&mut f, &w);
        match (nsid, blocks, r) {
            (
                1,
                1 | 2,
                Err(NvmeError::LbaOutOfRange {
                    lba: l,
                    blocks: b,
                    capacity,
                }),
            ) => {
                assert_eq!((l, b, capacity), (lba, blocks, 1 << 16))
            }
            (1, 0, Err(NvmeError::InvalidArgument(_))) => {}
            (9, _, Err(NvmeError::InvalidNamespace(9))) => {}
            (_, _, r) => panic!("nsid {nsid} lba {lba} blocks {blocks}: {r:?}"),
        }
        drop(buf);
    }
    assert_eq!(rig.aq.waiting(), 0);
    step(&rig.aq, &mut rig.sim);
    for f in full.iter_mut() {
        ready(f, &w).1.unwrap();
    }
    drop(full);
    // Refused by the queue pair for its buffer: when it is submitted.
    let mut f = rig.aq.read(1, 0, 256, rig.pool.alloc().unwrap());
    match ready(&mut f, &w) {
        (buf, Err(NvmeError::BufferTooSmall { need, have })) => {
            assert_eq!((need, have), (256 * BS, 64 * 1024));
            assert_eq!(buf.len(), 64 * 1024);
        }
        (_, r) => panic!("{r:?}"),
    }
    assert_eq!(rig.pool.available(), free);
    let s = rig.aq.stats();
    assert_eq!((s.submitted, s.completed, s.waited), (3, 3, 0));
    assert_eq!(rig.aq.outstanding(), 0);
}

#[test]
fn a_lost_completion_ends_as_a_typed_timeout_with_its_buffer_and_the_queue_goes_on() {
    // The model on its own thread: the timeout path aborts and resets.
    let (sim, mmio) = SimController::start(SimConfig::default());
    let opts = Options {
        io_timeout: Duration::from_millis(200),
        ..Options::default()
    };
    let ctrl = Controller::with_registers(mmio, opts).unwrap();
    let pool = BufferPool::new_unmapped(4096, 8, PageSize::Small).unwrap();
    let aq = AsyncQueue::new(ctrl.create_qpair(8).unwrap());
    sim.drop_next_completions(1);
    let start = Instant::now();
    let idle = || {
        assert!(start.elapsed() < Duration::from_secs(30), "no timeout");
        aq.poll(8);
    };
    let (buf, r) = block_on(aq.read(1, 0, 1, pool.alloc().unwrap()), idle);
    assert!(matches!(r, Err(NvmeError::Timeout { .. })), "{r:?}");
    drop(buf);
    let (_, r) = block_on(aq.read(1, 0, 1, pool.alloc().unwrap()), idle);
    r.unwrap();
    assert_eq!(pool.available(), 8);
    drop(aq);
    drop(ctrl);
    drop(sim);
}

/// Polls `f` at most `polls` times (yielding between), then drops it:
/// `None` if it had not resolved.
struct Within<F> {
    f: Option<F>,
    polls: u32,
}

impl<F: Future + Unpin> Future for Within<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(f) = self.f.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(v) = Pin::new(f).poll(cx) {
            return Poll::Ready(Some(v));
        }
        if self.polls == 0 {
            self.f = None;
            return Poll::Ready(None);
        }
        self.polls -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn futures_dropped_at_random_points_lose_no_buffer_and_misdeliver_no_data() {
    const TASKS: u64 = 64;
    let mut rig = Rig::new(17, 5, 128, Options::default());
    let free = rig.pool.available();
    let checked = Cell::new(0u32);
    let dropped = Cell::new(0u32);
    let mut exec = LocalExecutor::new(TASKS as usize);
    for t in 0..TASKS {
        let (aq, pool, checked, dropped) = (&rig.aq, &rig.pool, &checked, &dropped);
        exec.spawn(async move {
            let mut rng = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let lba = t * 4;
            for round in 0..12u64 {
                let seed = t << 8 | round;
                // Writes always finish: later reads then know the data.
                let mut data = vec![0u8; 4 * BS];
                pattern::fill(&mut data, BS, lba, seed);
                let mut buf = pool.alloc().unwrap();
                buf.write(0, &data).unwrap();
                let (_, r) = aq.write(1, lba, 4, buf).await;
                r.unwrap();
                for _ in 0..3 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let io = aq.read(1, lba, 4, pool.alloc().unwrap());
                    match (Within {
                        f: Some(io),
                        polls: (rng % 16) as u32,
                    })
                    .await
                    {
                        Some((buf, r)) => {
                            r.unwrap();
                            assert_eq!(holds(&buf, lba, 4, seed), Ok(()), "task {t}");
                            checked.set(checked.get() + 1);
                        }
                        None => dropped.set(dropped.get() + 1),
                    }
                }
            }
        })
        .unwrap();
    }
    let rounds = run_all(&mut exec, &rig.aq, &mut rig.sim);
    for _ in rounds..100_000 {
        if rig.aq.outstanding() == 0 {
            break;
        }
        step(&rig.aq, &mut rig.sim);
    }
    assert_eq!(
        rig.aq.outstanding(),
        0,
        "abandoned commands never completed"
    );
    let s = rig.aq.stats();
    let (c, d) = (checked.get(), dropped.get());
    assert!(
        c > 300 && d > 300,
        "{c} checked, {d} dropped: both paths taken often"
    );
    assert!(s.abandoned > 0, "{s:?}");
    assert_eq!(s.submitted, s.completed + s.abandoned, "{s:?}");
    assert_eq!(s.stale, 0);
    assert_eq!(rig.pool.available(), free, "every buffer back in its pool");
}
