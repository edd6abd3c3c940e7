//! The real driver against the in-process controller model (`sim`): bring-up,
//! data integrity through PRP lists, back-pressure, malformed and lost
//! completions, controller fatal status, resets under load, several queue
//! pairs, and bad input.
//!
//! Every test starts its own model. Locals drop in reverse order of
//! declaration, so declaring the model first and the queue pairs last drops
//! queue pairs and controller (which still talk to the model: Delete I/O
//! Queue, shutdown) before the model thread stops.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fastlane_framework::{BufferPool, PageSize};
use fastlane_nvme::sim::{SimConfig, SimController};
use fastlane_nvme::spec::{admin_opcode, feature, CompletionEntry, SubmissionEntry};
use fastlane_nvme::{
    pattern, Completion, Controller, IoQueuePair, MetadataFormat, Namespace, NvmeError, Options,
    Rejected,
};

/// How long any single wait in these tests may take before it is a failure.
const PATIENCE: Duration = Duration::from_secs(30);

fn small() -> SimConfig {
    SimConfig {
        namespace_blocks: 1 << 16,
        lba_size: 512,
        mdts: 5,
        max_queues: 4,
        mqes: 255,
        store_data: true,
        sgls: 0,
        metadata_namespaces: Vec::new(),
    }
}

/// Starts the model and brings the driver up against it.
fn start(cfg: SimConfig, options: Options) -> (SimController, Controller) {
    let (sim, mmio) = SimController::start(cfg);
    let ctrl =
        Controller::with_registers(mmio, options).expect("driver bring-up against the model");
    (sim, ctrl)
}

fn short_timeout() -> Options {
    Options {
        io_timeout: Duration::from_millis(200),
        ..Options::default()
    }
}

/// `count` consecutive extents from `first`, sizes cycling through `sizes`.
fn extents(first: u64, count: usize, sizes: &[u32]) -> Vec<(u64, u32)> {
    let mut lba = first;
    (0..count)
        .map(|i| {
            let blocks = sizes[i % sizes.len()];
            let e = (lba, blocks);
            lba += blocks as u64;
            e
        })
        .collect()
}

/// What a workload saw.
#[derive(Debug, Default)]
struct Outcome {
    writes: usize,
    reads: usize,
    /// Commands ended by a controller reset and submitted again.
    reset: usize,
    /// Commands ended by a timeout and submitted again.
    timed_out: usize,
    /// Submissions refused with QueueFull.
    queue_full: usize,
}

/// Writes every extent with the pattern of `seed`, then reads every extent
/// back and checks it, keeping the queue full. Commands that end with
/// `Reset` or `Timeout` are submitted again (writes are idempotent).
/// `hook` sees the number of successful completions so far.
fn write_then_verify(
    qp: &mut IoQueuePair,
    pool: &BufferPool,
    ns: Namespace,
    extents: &[(u64, u32)],
    seed: u64,
    hook: &mut dyn FnMut(usize),
) -> Outcome {
    let mut out = Outcome::default();
    for write in [true, false] {
        run_phase(qp, pool, ns, extents, seed, write, &mut out, hook);
    }
    assert_eq!(qp.outstanding(), 0);
    out
}

#[allow(clippy::too_many_arguments)]
fn run_phase(
    qp: &mut IoQueuePair,
    pool: &BufferPool,
    ns: Namespace,
    extents: &[(u64, u32)],
    seed: u64,
    write: bool,
    out: &mut Outcome,
    hook: &mut dyn FnMut(usize),
) {
    let bs = ns.block_size as usize;
    let mut todo: VecDeque<usize> = (0..extents.len()).collect();
    let mut in_flight = 0usize;
    let mut done: Vec<Completion> = Vec::with_capacity(64);
    let deadline = Instant::now() + PATIENCE;
    while !todo.is_empty() || in_flight > 0 {
        assert!(
            Instant::now() < deadline,
            "{} phase stuck: {} to go, {in_flight} in flight, {:?}",
            if write { "write" } else { "read" },
            todo.len(),
            qp.stats()
        );
        while let Some(&i) = todo.front() {
            let Ok(mut buf) = pool.alloc() else { break };
            let (lba, blocks) = extents[i];
            let len = blocks as usize * bs;
            let r = if write {
                let mut data = vec![0u8; len];
                pattern::fill(&mut data, bs, lba, seed);
                buf.write(0, &data).unwrap();
                qp.write(ns.id, lba, blocks, buf, i as u64)
            } else {
                buf.fill(0xA5);
                qp.read(ns.id, lba, blocks, buf, i as u64)
            };
            match r {
                Ok(()) => {
                    todo.pop_front();
                    in_flight += 1;
                }
                Err(Rejected {
                    error: NvmeError::QueueFull,
                    buf,
                }) => {
                    assert!(buf.is_some(), "QueueFull must hand the buffer back");
                    out.queue_full += 1;
                    break;
                }
                Err(e) => panic!("extent {i} ({lba}, {blocks}) refused: {}", e.error),
            }
        }
        qp.submit();
        qp.poll(64, |c| done.push(c));
        for c in done.drain(..) {
            in_flight -= 1;
            let i = c.tag as usize;
            let buf = c.buf.expect("every completion hands its buffer back");
            match c.result {
                Ok(()) if write => out.writes += 1,
                Ok(()) => {
                    let (lba, blocks) = extents[i];
                    let mut data = vec![0u8; blocks as usize * bs];
                    buf.read(0, &mut data).unwrap();
                    assert_eq!(
                        pattern::check(&data, bs, lba, seed),
                        Ok(()),
                        "extent {i}: {blocks} blocks at {lba} read back wrong (lba, offset)"
                    );
                    out.reads += 1;
                }
                Err(NvmeError::Reset) => {
                    out.reset += 1;
                    todo.push_back(i);
                }
                Err(NvmeError::Timeout { .. }) => {
                    out.timed_out += 1;
                    todo.push_back(i);
                }
                Err(e) => panic!("extent {i} failed: {e}"),
            }
            hook(out.writes + out.reads);
        }
    }
}

/// Polls until `n` completions arrived (or panics after `limit`).
fn wait_for(qp: &mut IoQueuePair, n: usize, limit: Duration) -> Vec<Completion> {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} completions after {limit:?}: {:?}",
            got.len(),
            qp.stats()
        );
        qp.poll(n - got.len(), |c| got.push(c));
    }
    got
}

#[test]
fn bring_up_and_identify() {
    let (sim, ctrl) = start(small(), Options::default());
    let info = ctrl.info();
    assert_eq!(info.serial, "SIM0001");
    assert_eq!(info.model, "fastlane sim");
    assert_eq!(info.firmware, "1.0");
    assert_eq!((info.version.major(), info.version.minor()), (1, 4));
    // MDTS 5: 2^5 pages of 4 KiB.
    assert_eq!(info.max_transfer, 128 << 10);
    assert_eq!(info.max_queue_entries, 256);
    // Asked for 8 (the default), the model has 4.
    assert_eq!(info.io_queues, 4);
    assert!(info.supports_write_zeroes && info.supports_dsm);
    let ns1 = Namespace {
        id: 1,
        blocks: 1 << 16,
        block_size: 512,
        metadata: MetadataFormat::NONE,
    };
    assert_eq!(ctrl.namespaces(), [ns1]);
    assert_eq!(ctrl.namespace(1).unwrap(), ns1);
    assert!(matches!(
        ctrl.namespace(2),
        Err(NvmeError::InvalidNamespace(2))
    ));
    assert!(ctrl.csts().rdy() && !ctrl.csts().cfs());
    assert_eq!(ctrl.resets(), 0);
    let s = sim.stats();
    assert_eq!(
        s.admin[admin_opcode::IDENTIFY as usize],
        3,
        "controller, active namespace list, namespace 1"
    );
    assert_eq!(s.io_total(), 0);
    drop(ctrl);
    drop(sim);

    // Other geometries: 4 KiB blocks, MDTS 3, and no MDTS (one PRP list page).
    for (lba_size, mdts, max) in [(4096, 3, 32 << 10), (512, 0, 2 << 20)] {
        let cfg = SimConfig {
            lba_size,
            mdts,
            namespace_blocks: 12345,
            ..small()
        };
        let (_sim, ctrl) = start(cfg, Options::default());
        assert_eq!(ctrl.info().max_transfer, max);
        assert_eq!(ctrl.namespaces()[0].blocks, 12345);
        assert_eq!(ctrl.namespaces()[0].block_size, lba_size);
    }
}

#[test]
fn write_read_verify_one_block_to_mdts() {
    for lba_size in [512u32, 4096] {
        let (sim, ctrl) = start(
            SimConfig {
                lba_size,
                ..small()
            },
            Options::default(),
        );
        let ns = ctrl.namespaces()[0];
        let max_blocks = (ctrl.info().max_transfer / lba_size as usize) as u32;
        // Single PRP, PRP1 + PRP2, PRP lists of every length up to MDTS.
        let mut sizes: Vec<u32> = (1..=max_blocks)
            .filter(|b| b % 7 == 1 || b.is_power_of_two())
            .collect();
        sizes.push(max_blocks - 1);
        sizes.push(max_blocks);
        let pool = BufferPool::new_unmapped(ctrl.info().max_transfer, 48, PageSize::Small).unwrap();
        let mut qp = ctrl.create_qpair(32).unwrap();
        let list = extents(3, 300, &sizes);
        let seed = 0xF00D + lba_size as u64;
        let out = write_then_verify(&mut qp, &pool, ns, &list, seed, &mut |_| ());
        assert_eq!(
            (out.writes, out.reads, out.reset, out.timed_out),
            (300, 300, 0, 0)
        );
        let st = qp.stats();
        assert_eq!((st.submitted, st.completed), (600, 600));
        assert_eq!(
            (st.unknown_cids, st.malformed, st.timeouts, st.resets_seen),
            (0, 0, 0, 0)
        );
        let s = sim.stats();
        assert_eq!(s.io[1], 300, "writes the model executed");
        assert_eq!(s.io[2], 300, "reads the model executed");

        // A second seed over the same blocks: nothing stale survives.
        let out = write_then_verify(&mut qp, &pool, ns, &list[..40], seed + 1, &mut |_| ());
        assert_eq!((out.writes, out.reads), (40, 40));
        drop(qp);
        assert_eq!(pool.available(), 48, "every buffer came home");
    }
}

#[test]
fn queue_full_is_back_pressure() {
    let (_sim, ctrl) = start(small(), Options::default());
    let ns = ctrl.namespaces()[0];
    let pool = BufferPool::new_unmapped(4096, 16, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(4).unwrap();
    assert_eq!(qp.capacity(), 3);
    for i in 0..3 {
        qp.read(ns.id, i * 8, 8, pool.alloc().unwrap(), i).unwrap();
    }
    // Not submitted yet: the fourth is refused, with its buffer.
    let extra = pool.alloc().unwrap();
    let index = extra.index();
    let r = qp.read(ns.id, 24, 8, extra, 3).unwrap_err();
    assert!(matches!(r.error, NvmeError::QueueFull), "{}", r.error);
    let extra = r.buf.expect("QueueFull hands the buffer back");
    assert_eq!(extra.index(), index);
    assert_eq!(qp.outstanding(), 3);
    qp.submit();
    let got = wait_for(&mut qp, 3, PATIENCE);
    let mut tags: Vec<u64> = got.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, [0, 1, 2]);
    assert!(got.iter().all(|c| c.result.is_ok() && c.buf.is_some()));
    drop(got);
    // Now it fits.
    qp.read(ns.id, 24, 8, extra, 3).unwrap();
    qp.submit();
    let got = wait_for(&mut qp, 1, PATIENCE);
    assert_eq!(got[0].tag, 3);
    drop(got);

    // A long run on the tiny queue: full queues are frequent, nothing lost.
    let list = extents(0, 500, &[1, 3, 8]);
    let out = write_then_verify(&mut qp, &pool, ns, &list, 9, &mut |_| ());
    assert_eq!((out.writes, out.reads), (500, 500));
    assert!(out.queue_full > 0, "the run never filled the 3-entry queue");
    let st = qp.stats();
    assert_eq!(st.submitted, st.completed);
    assert_eq!(st.submitted, 4 + 1000);
    drop(qp);
    assert_eq!(pool.available(), 16);
}

/// One command whose completion the model loses (dropped or with a wrong
/// CID) comes back, after abort and controller reset, as an error with its
/// buffer; the queue pair works afterwards.
fn lost_completion_recovers(corrupt: bool) {
    let (sim, ctrl) = start(small(), short_timeout());
    let ns = ctrl.namespaces()[0];
    let pool = BufferPool::new_unmapped(4096, 32, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(16).unwrap();
    let warmup = extents(0, 20, &[8]);
    write_then_verify(&mut qp, &pool, ns, &warmup, 1, &mut |_| ());

    if corrupt {
        sim.corrupt_next_cid();
    } else {
        sim.drop_next_completions(1);
    }
    let buf = pool.alloc().unwrap();
    let index = buf.index();
    let start = Instant::now();
    qp.write(ns.id, 1000, 8, buf, 77).unwrap();
    qp.submit();
    let mut got = Vec::new();
    let deadline = start + PATIENCE;
    if corrupt {
        while qp.stats().unknown_cids == 0 {
            assert!(Instant::now() < deadline);
            qp.poll(8, |c| got.push(c));
        }
        assert_eq!(qp.stats().unknown_cids, 1);
        assert!(
            got.is_empty(),
            "a corrupted completion completed something: {got:?}"
        );
        assert_eq!(qp.outstanding(), 1, "the real command is still outstanding");
    }
    while got.is_empty() {
        assert!(
            Instant::now() < deadline,
            "lost command never came back: {:?}",
            qp.stats()
        );
        qp.poll(8, |c| got.push(c));
    }
    let waited = start.elapsed();
    assert_eq!(got.len(), 1);
    let c = got.pop().unwrap();
    assert_eq!(c.tag, 77);
    assert_eq!(
        c.buf.as_ref().map(|b| b.index()),
        Some(index),
        "the buffer comes back"
    );
    assert!(
        matches!(c.result, Err(NvmeError::Timeout { .. } | NvmeError::Reset)),
        "{:?}",
        c.result
    );
    assert!(
        waited >= Duration::from_millis(200),
        "timed out after only {waited:?}"
    );
    let st = qp.stats();
    assert!(
        st.timeouts >= 1 && st.aborts_sent >= 1 && st.resets_seen >= 1,
        "{st:?}"
    );
    assert_eq!(st.unknown_cids, corrupt as u64);
    assert!(ctrl.resets() >= 1);
    let s = sim.stats();
    assert!(s.admin[admin_opcode::ABORT as usize] >= 1);
    assert_eq!(
        (s.corrupted_completions, s.dropped_completions),
        (corrupt as u64, !corrupt as u64)
    );
    drop(c);

    // I/O works afterwards, including the blocks of the lost write.
    let after = extents(990, 30, &[1, 8, 5]);
    let out = write_then_verify(&mut qp, &pool, ns, &after, 2, &mut |_| ());
    assert_eq!(
        (out.writes, out.reads, out.reset, out.timed_out),
        (30, 30, 0, 0)
    );
    assert_eq!(qp.outstanding(), 0);
}

#[test]
fn corrupted_cid_is_counted_then_times_out() {
    lost_completion_recovers(true);
}

#[test]
fn dropped_completion_times_out() {
    lost_completion_recovers(false);
}

#[test]
fn fatal_status_mid_run_resets() {
    let (sim, ctrl) = start(small(), Options::default());
    let ns = ctrl.namespaces()[0];
    let pool = BufferPool::new_unmapped(32 << 10, 64, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(32).unwrap();
    let list = extents(0, 600, &[1, 8, 64]);
    let mut fatal_set = false;
    let out = write_then_verify(&mut qp, &pool, ns, &list, 3, &mut |done| {
        if done == 150 && !fatal_set {
            sim.set_fatal();
            fatal_set = true;
        }
    });
    assert!(fatal_set);
    assert_eq!((out.writes, out.reads), (600, 600));
    assert!(out.reset >= 1, "no command came back with Reset: {out:?}");
    assert_eq!(out.timed_out, 0);
    assert!(ctrl.resets() >= 1);
    assert!(qp.stats().resets_seen >= 1);
    assert!(!ctrl.csts().cfs() && ctrl.csts().rdy());
}

#[test]
fn user_reset_while_another_thread_does_io() {
    let (sim, ctrl) = start(small(), Options::default());
    let ns = ctrl.namespaces()[0];
    let pool = BufferPool::new_unmapped(32 << 10, 64, PageSize::Small).unwrap();
    let progress = AtomicUsize::new(0);
    let list = extents(0, 3000, &[1, 8, 64, 3]);
    let resets = 3;
    let (out, stats) = std::thread::scope(|s| {
        let io = s.spawn(|| {
            let mut qp = ctrl.create_qpair(32).unwrap();
            let out = write_then_verify(&mut qp, &pool, ns, &list, 4, &mut |d| {
                progress.store(d, Ordering::Relaxed)
            });
            (out, qp.stats())
        });
        let deadline = Instant::now() + PATIENCE;
        for k in 1..=resets {
            // Spread the resets over the write and the read phase.
            while progress.load(Ordering::Relaxed) < k * 1500 && !io.is_finished() {
                assert!(Instant::now() < deadline);
                std::thread::yield_now();
            }
            ctrl.reset().expect("user-requested reset");
        }
        io.join().expect("I/O thread")
    });
    assert_eq!(ctrl.resets(), resets as u64);
    assert_eq!((out.writes, out.reads), (3000, 3000));
    assert!(
        stats.resets_seen >= 1,
        "the queue pair never noticed a reset: {stats:?} {out:?}"
    );
    assert_eq!((stats.unknown_cids, stats.malformed), (0, 0), "{stats:?}");
    assert!(sim.stats().io_total() >= 6000);
}

#[test]
fn several_queue_pairs_on_threads() {
    let (sim, ctrl) = start(small(), Options::default());
    let ns = ctrl.namespaces()[0];
    let pool = BufferPool::new_unmapped(64 << 10, 128, PageSize::Small).unwrap();
    let threads = 3u64;
    let per = 400;
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (ctrl, pool) = (&ctrl, pool.clone());
                s.spawn(move || {
                    let mut qp = ctrl.create_qpair(32).unwrap();
                    // Disjoint LBA ranges, different seeds.
                    let list = extents(t * 20_000, per, &[1, 8, 16, 128]);
                    let out = write_then_verify(&mut qp, &pool, ns, &list, 100 + t, &mut |_| ());
                    (qp.qid(), out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut qids: Vec<u16> = results.iter().map(|r| r.0).collect();
    qids.sort();
    qids.dedup();
    assert_eq!(qids.len(), threads as usize, "queue ids must be distinct");
    for (_, out) in &results {
        assert_eq!((out.writes, out.reads), (per, per));
    }
    assert_eq!(sim.stats().io_total(), threads * per as u64 * 2);

    // Every range again from one queue pair: the threads did not overwrite
    // each other.
    let mut qp = ctrl.create_qpair(32).unwrap();
    for t in 0..threads {
        let list = extents(t * 20_000, per, &[1, 8, 16, 128]);
        let mut reads = Outcome::default();
        run_phase(
            &mut qp,
            &pool,
            ns,
            &list,
            100 + t,
            false,
            &mut reads,
            &mut |_| (),
        );
        assert_eq!(reads.reads, per);
    }
}

#[test]
fn bad_input_is_typed_errors() {
    let (sim, ctrl) = start(small(), Options::default());
    let ns = ctrl.namespaces()[0];
    assert_eq!(ns.blocks, 1 << 16);
    let pool = BufferPool::new_unmapped(4096, 8, PageSize::Small).unwrap();
    let big = BufferPool::new_unmapped(256 << 10, 1, PageSize::Small).unwrap();

    for depth in [0, 1, 257, 1024, u16::MAX] {
        assert!(
            matches!(ctrl.create_qpair(depth), Err(NvmeError::InvalidArgument(_))),
            "depth {depth}"
        );
    }
    let mut qp = ctrl.create_qpair(256).unwrap();
    assert_eq!(qp.capacity(), 255);

    let bad = |r: Result<(), Rejected>| -> NvmeError {
        let r = r.expect_err("must be refused");
        assert!(r.buf.is_some(), "{} lost the buffer", r.error);
        r.error
    };
    let last = ns.blocks - 1;
    let e = bad(qp.read(1, last, 2, pool.alloc().unwrap(), 0));
    assert!(
        matches!(e, NvmeError::LbaOutOfRange { lba, blocks: 2, capacity: 65536 } if lba == last),
        "{e}"
    );
    let e = bad(qp.write(1, ns.blocks, 1, pool.alloc().unwrap(), 0));
    assert!(matches!(e, NvmeError::LbaOutOfRange { .. }), "{e}");
    let e = bad(qp.read(1, u64::MAX, 1, pool.alloc().unwrap(), 0));
    assert!(matches!(e, NvmeError::LbaOutOfRange { .. }), "{e}");
    for nsid in [0, 2, u32::MAX] {
        let e = bad(qp.read(nsid, 0, 1, pool.alloc().unwrap(), 0));
        assert!(
            matches!(e, NvmeError::InvalidNamespace(n) if n == nsid),
            "{e}"
        );
    }
    let e = bad(qp.read(1, 0, 0, pool.alloc().unwrap(), 0));
    assert!(matches!(e, NvmeError::InvalidArgument(_)), "{e}");
    let e = bad(qp.read(1, 0, u32::MAX, pool.alloc().unwrap(), 0));
    assert!(
        matches!(
            e,
            NvmeError::InvalidArgument(_) | NvmeError::LbaOutOfRange { .. }
        ),
        "{e}"
    );
    let e = bad(qp.read(1, 0, 9, pool.alloc().unwrap(), 0));
    assert!(
        matches!(
            e,
            NvmeError::BufferTooSmall {
                need: 4608,
                have: 4096
            }
        ),
        "{e}"
    );
    // Above MDTS a request is split; more commands than the queue pair
    // holds at once is too large for it.
    let mut one = ctrl.create_qpair(2).unwrap();
    assert_eq!(one.capacity(), 1);
    let e = bad(one.write(1, 0, 512, big.alloc().unwrap(), 0));
    drop(one);
    assert!(
        matches!(
            e,
            NvmeError::TooLarge {
                bytes: 262144,
                max: 131072
            }
        ),
        "{e}"
    );

    // Commands without a buffer.
    let e = qp.flush(2, 0).unwrap_err().error;
    assert!(matches!(e, NvmeError::InvalidNamespace(2)), "{e}");
    let e = qp.write_zeroes(1, 0, 0, 0).unwrap_err().error;
    assert!(matches!(e, NvmeError::InvalidArgument(_)), "{e}");
    let e = qp.write_zeroes(1, last, 2, 0).unwrap_err().error;
    assert!(matches!(e, NvmeError::LbaOutOfRange { .. }), "{e}");
    let e = qp.deallocate(1, &[], 0).unwrap_err().error;
    assert!(matches!(e, NvmeError::InvalidArgument(_)), "{e}");
    let e = qp.deallocate(1, &[(0, 8), (last, 2)], 0).unwrap_err().error;
    assert!(matches!(e, NvmeError::LbaOutOfRange { .. }), "{e}");

    // Nothing reached the device, nothing is outstanding, nothing leaked.
    assert_eq!(qp.outstanding(), 0);
    assert_eq!(qp.stats().submitted, 0);
    assert_eq!(sim.stats().io_total(), 0);
    assert_eq!(pool.available(), 8);
    assert_eq!(big.available(), 1);

    // The queue pair still works, at the edges of the namespace.
    let edges = [(0, 1), (last, 1), (ns.blocks - 8, 8)];
    let out = write_then_verify(&mut qp, &pool, ns, &edges, 5, &mut |_| ());
    assert_eq!((out.writes, out.reads), (3, 3));
    qp.flush(1, 9).unwrap();
    qp.submit();
    let c = wait_for(&mut qp, 1, PATIENCE);
    assert!(c[0].result.is_ok() && c[0].buf.is_none() && c[0].tag == 9);

    // Queue ids run out: the model has 4 and `qp` holds one.
    let more: Vec<IoQueuePair> = (0..3).map(|_| ctrl.create_qpair(2).unwrap()).collect();
    assert!(matches!(
        ctrl.create_qpair(2),
        Err(NvmeError::NoQueuesLeft(4))
    ));
    drop(more);
    let again = ctrl
        .create_qpair(2)
        .expect("queue ids are released on drop");
    drop(again);
}

/// A lost completion is caught while other commands keep completing: the
/// timeout does not wait for the queue to go quiet.
#[test]
fn lost_completion_is_caught_under_steady_traffic() {
    let (sim, ctrl) = start(small(), short_timeout());
    let ns = ctrl.namespaces()[0];
    let pool = BufferPool::new_unmapped(4096, 16, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(16).unwrap();
    sim.drop_next_completions(1);
    let start = Instant::now();
    let (mut ok, mut failed, mut submitted) = (0u64, Vec::new(), 0u64);
    // Keep 8 reads in flight for 2 s; one of the first completions is lost.
    while start.elapsed() < Duration::from_secs(2) {
        while qp.outstanding() < 8 {
            let buf = pool.alloc().unwrap();
            qp.read(ns.id, (submitted * 8) % 60_000, 8, buf, submitted)
                .unwrap();
            submitted += 1;
        }
        qp.submit();
        qp.poll(16, |c| match c.result {
            Ok(()) => ok += 1,
            Err(e) => failed.push((c.tag, e, c.buf.is_some())),
        });
    }
    while qp.outstanding() > 0 {
        assert!(start.elapsed() < PATIENCE);
        qp.poll(16, |c| match c.result {
            Ok(()) => ok += 1,
            Err(e) => failed.push((c.tag, e, c.buf.is_some())),
        });
    }
    assert!(ok > 100, "steady traffic: only {ok} completions");
    assert!(
        failed.iter().any(|(tag, e, has_buf)| *tag == 0
            && matches!(e, NvmeError::Timeout { .. })
            && *has_buf),
        "the lost command (tag 0) did not come back as a timeout: {failed:?}"
    );
    assert!(failed
        .iter()
        .all(|(_, e, b)| *b && matches!(e, NvmeError::Timeout { .. } | NvmeError::Reset)));
    assert_eq!(
        ok + failed.len() as u64,
        submitted,
        "every command came back once"
    );
    assert!(qp.stats().aborts_sent >= 1);
    drop(qp);
    drop(ctrl);
    drop(sim);
}

/// Polls until `cond` holds (or panics after PATIENCE), handing any
/// completion to `got`.
fn poll_until(
    qp: &mut IoQueuePair,
    got: &mut Vec<Completion>,
    mut cond: impl FnMut(&IoQueuePair) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    while !cond(qp) {
        assert!(Instant::now() < deadline, "stuck: {:?}", qp.stats());
        qp.poll(16, |c| got.push(c));
    }
}

/// Waits until the model has done what `cond` says.
fn wait_model(sim: &SimController, cond: impl Fn(&fastlane_nvme::sim::SimStats) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond(&sim.stats()) {
        assert!(
            Instant::now() < deadline,
            "model stuck: {:?}",
            sim.stats().injected_completions
        );
        std::thread::yield_now();
    }
}

/// Issue 8, item 8: a malformed completion (another SQ id, an impossible SQ
/// head, a command id that is free or never issued, a repeat of one that
/// completed) finishes nothing and hands no buffer back; the command stays
/// outstanding, and its genuine completion later completes it exactly once.
#[test]
fn malformed_completions_finish_nothing() {
    let (sim, ctrl) = start(small(), Options::default());
    let ns = ctrl.namespaces()[0];
    let pool = BufferPool::new_unmapped(4096, 4, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(8).unwrap();
    let qid = qp.qid();

    // The model executes the read but holds its completion back.
    sim.hold_completions(true);
    let buf = pool.alloc().unwrap();
    let index = buf.index();
    qp.read(ns.id, 0, 8, buf, 5).unwrap();
    qp.submit();
    wait_model(&sim, |s| s.held_completions == 1);

    // The first command of a fresh queue pair has cid 0 and leaves SQ head 1.
    let genuine = CompletionEntry {
        sq_head: 1,
        sq_id: qid,
        cid: 0,
        ..CompletionEntry::default()
    };
    let bad = [
        CompletionEntry {
            sq_id: qid + 1,
            ..genuine
        },
        CompletionEntry {
            sq_head: 5,
            ..genuine
        },
        CompletionEntry {
            sq_head: 200,
            ..genuine
        },
        CompletionEntry { cid: 3, ..genuine },
        CompletionEntry {
            cid: u16::MAX,
            ..genuine
        },
    ];
    for e in bad {
        sim.inject_completion(qid, e);
    }
    wait_model(&sim, |s| s.injected_completions == 5);
    let mut got = Vec::new();
    poll_until(&mut qp, &mut got, |qp| {
        let s = qp.stats();
        s.malformed + s.unknown_cids == 5
    });
    let s = qp.stats();
    assert_eq!(
        (s.malformed, s.unknown_cids, s.completed),
        (3, 2, 0),
        "{s:?}"
    );
    assert!(
        got.is_empty(),
        "a malformed completion finished a command: {got:?}"
    );
    assert_eq!(qp.outstanding(), 1, "the command is still outstanding");
    assert_eq!(pool.available(), 3, "its buffer is still the device's");

    // The genuine completion completes it, once.
    sim.hold_completions(false);
    let mut got = wait_for(&mut qp, 1, PATIENCE);
    let c = got.pop().unwrap();
    assert_eq!(c.tag, 5);
    assert!(c.result.is_ok(), "{:?}", c.result);
    assert_eq!(c.buf.as_ref().map(|b| b.index()), Some(index));
    assert_eq!(qp.outstanding(), 0);

    // A repeat of it names a cid no longer in flight: nothing happens.
    sim.inject_completion(qid, genuine);
    wait_model(&sim, |s| s.injected_completions == 6);
    let mut more = Vec::new();
    poll_until(&mut qp, &mut more, |qp| qp.stats().unknown_cids == 3);
    for _ in 0..100 {
        qp.poll(16, |c| more.push(c));
    }
    assert!(more.is_empty(), "completed twice: {more:?}");
    assert_eq!(qp.stats().completed, 1);
    drop(c);

    // The queue pair goes on working.
    let out = write_then_verify(&mut qp, &pool, ns, &extents(0, 40, &[1, 8]), 4, &mut |_| ());
    assert_eq!((out.writes, out.reads), (40, 40));
}

/// Issue 8, item 7: the safe admin API takes only commands whose every
/// address field the driver fills itself; Identify and Get Log Page work.
#[test]
fn admin_commands_with_addresses_are_refused() {
    let (sim, ctrl) = start(small(), Options::default());
    let pool = BufferPool::new_unmapped(4096, 2, PageSize::Small).unwrap();
    let mut buf = pool.alloc().unwrap();
    let target = buf.iova().get();
    let admin_before = sim.stats().admin;

    let mut hmb = SubmissionEntry::set_features(feature::HOST_MEMORY_BUFFER, 1, false);
    hmb.cdw11 = 1; // EHM: enable
    hmb.cdw12 = 16; // HSIZE: 16 pages
    hmb.cdw13 = target as u32; // HMDLLA: descriptor list address
    hmb.cdw14 = (target >> 32) as u32; // HMDLUA
    hmb.cdw15 = 1; // HMDLEC: one descriptor
    let mut mptr = SubmissionEntry::identify_controller(0);
    mptr.mptr = target;
    let mut prp = SubmissionEntry::identify_controller(0);
    prp.prp1 = target;
    let long_log = SubmissionEntry::get_log_page(0x02, u32::MAX, 2048);
    let mut fused = SubmissionEntry::identify_controller(0);
    fused.cdw0 |= 1 << 14; // PSDT: SGL
    let cases = [
        (
            "Set Features - Host Memory Buffer",
            hmb,
            admin_opcode::SET_FEATURES,
        ),
        ("nonzero metadata pointer", mptr, admin_opcode::IDENTIFY),
        ("caller-written PRP1", prp, admin_opcode::IDENTIFY),
        (
            "Create I/O CQ",
            SubmissionEntry::create_io_cq(3, 16, target),
            admin_opcode::CREATE_IO_CQ,
        ),
        (
            "Create I/O CQ at 0",
            SubmissionEntry::create_io_cq(3, 16, 0),
            admin_opcode::CREATE_IO_CQ,
        ),
        (
            "Create I/O SQ",
            SubmissionEntry::create_io_sq(3, 16, 0, 3, fastlane_nvme::spec::QueuePriority::Low),
            admin_opcode::CREATE_IO_SQ,
        ),
        (
            "Delete I/O SQ",
            SubmissionEntry::delete_io_sq(1),
            admin_opcode::DELETE_IO_SQ,
        ),
        (
            "Doorbell Buffer Config",
            SubmissionEntry::doorbell_buffer_config(0, 0),
            admin_opcode::DOORBELL_BUFFER_CONFIG,
        ),
        (
            "Namespace Attachment",
            SubmissionEntry::new(admin_opcode::NAMESPACE_ATTACHMENT, 1),
            admin_opcode::NAMESPACE_ATTACHMENT,
        ),
        (
            "Get Log Page over 4 KiB",
            long_log,
            admin_opcode::GET_LOG_PAGE,
        ),
        ("SGL data pointer", fused, admin_opcode::IDENTIFY),
    ];
    for (what, cmd, opcode) in cases {
        let mut data = vec![0u8; 4096];
        match ctrl.admin_command(cmd, Some(&mut data)) {
            Err(NvmeError::UnsafeCommand { opcode: o, .. }) => assert_eq!(o, opcode, "{what}"),
            other => panic!("{what}: accepted by admin_command: {other:?}"),
        }
        match ctrl.admin_command(cmd, None) {
            Err(NvmeError::UnsafeCommand { .. }) => {}
            other => panic!("{what}: accepted by admin_command without data: {other:?}"),
        }
        match ctrl.admin_command_buf(cmd, &mut buf) {
            Err(e @ NvmeError::UnsafeCommand { .. }) => assert!(e.to_string().contains("refused")),
            other => panic!("{what}: accepted by admin_command_buf: {other:?}"),
        }
    }
    assert_eq!(
        sim.stats().admin,
        admin_before,
        "a refused command reached the device"
    );

    // What the safe API is for still works.
    let mut raw = vec![0u8; 4096];
    ctrl.admin_command(SubmissionEntry::identify_controller(0), Some(&mut raw))
        .unwrap();
    let idc = fastlane_nvme::spec::IdentifyController::from_bytes(&raw).unwrap();
    assert_eq!(idc.serial(), "SIM0001");
    ctrl.admin_command_buf(SubmissionEntry::identify_namespace(1, 0), &mut buf)
        .unwrap();
    let mut ns = vec![0u8; 4096];
    buf.read(0, &mut ns).unwrap();
    let ns = fastlane_nvme::spec::IdentifyNamespace::from_bytes(&ns).unwrap();
    assert_eq!(ns.nsze, 1 << 16);
    let mut log = vec![0xFFu8; 512];
    ctrl.admin_command(
        SubmissionEntry::get_log_page(0x02, u32::MAX, 128),
        Some(&mut log),
    )
    .unwrap();
    assert!(
        log.iter().all(|&b| b == 0),
        "the model's SMART log is zeroes"
    );
    let wc = SubmissionEntry::set_features(feature::VOLATILE_WRITE_CACHE, 0, false);
    ctrl.admin_command(wc, None).unwrap();
    let s = sim.stats();
    assert_eq!(
        s.admin[admin_opcode::IDENTIFY as usize] - admin_before[admin_opcode::IDENTIFY as usize],
        2
    );
    assert_eq!(s.admin[admin_opcode::GET_LOG_PAGE as usize], 1);
    assert_eq!(
        s.admin[admin_opcode::SET_FEATURES as usize]
            - admin_before[admin_opcode::SET_FEATURES as usize],
        1
    );
    drop(buf);
}

// ---------------------------------------------------------------------------
// Data pointers (SGL or PRP) and requests above MDTS.

use fastlane_nvme::DataPointer;

fn with_sgls(sgls: u32) -> SimConfig {
    SimConfig { sgls, ..small() }
}

/// Every size from one block to MDTS, written and read back verified, in
/// each data pointer mode; the model counts which form each command had.
#[test]
fn sgl_and_prp_every_size_one_block_to_mdts() {
    for (sgls, lba_size) in [(0b01, 512u32), (0b01, 4096), (0b10, 4096)] {
        let (sim, ctrl) = start(
            SimConfig {
                lba_size,
                ..with_sgls(sgls)
            },
            Options::default(),
        );
        let ns = ctrl.namespaces()[0];
        assert_eq!(ns.block_size, lba_size);
        let max_blocks = (ctrl.info().max_transfer / lba_size as usize) as u32;
        let sizes: Vec<u32> = (1..=max_blocks).collect();
        let pool = BufferPool::new_unmapped(ctrl.info().max_transfer, 32, PageSize::Small).unwrap();
        let mut qp = ctrl.create_qpair(32).unwrap();
        let list = extents(1, sizes.len(), &sizes);
        let mut seen = sim.stats();
        for (seed, mode) in [
            (1u64, DataPointer::Auto),
            (2, DataPointer::Prp),
            (3, DataPointer::Sgl),
        ] {
            qp.set_data_pointer(mode).unwrap();
            assert_eq!(qp.uses_sgl(), mode != DataPointer::Prp);
            let out = write_then_verify(&mut qp, &pool, ns, &list, seed + sgls as u64, &mut |_| ());
            assert_eq!((out.writes, out.reads), (list.len(), list.len()));
            let s = sim.stats();
            let (prp, sgl) = (
                s.prp_commands - seen.prp_commands,
                s.sgl_commands - seen.sgl_commands,
            );
            let n = 2 * list.len() as u64;
            if mode == DataPointer::Prp {
                assert_eq!((prp, sgl), (n, 0), "sgls {sgls:#b} {mode:?}");
            } else {
                assert_eq!((prp, sgl), (0, n), "sgls {sgls:#b} {mode:?}");
            }
            seen = s;
        }
        assert_eq!(
            ctrl.info().sgl,
            fastlane_nvme::spec::SglSupport::from_sgls(sgls)
        );
    }
}

/// One pool buffer is one IOVA range: a single SGL descriptor over the
/// whole of a buffer spanning many pages moves the right bytes (the model
/// reads and writes exactly that range through SimDma).
#[test]
fn one_buffer_is_one_descriptor() {
    let (sim, ctrl) = start(
        SimConfig {
            mdts: 0,
            ..with_sgls(1)
        },
        Options::default(),
    );
    let ns = ctrl.namespaces()[0];
    let len = 2 << 20; // 512 pages of 4 KiB, the largest command
    assert_eq!(ctrl.info().max_transfer, len);
    let pool = BufferPool::new_unmapped(len, 2, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(4).unwrap();
    let list = [(7u64, (len / 512) as u32)];
    let out = write_then_verify(&mut qp, &pool, ns, &list, 99, &mut |_| ());
    assert_eq!((out.writes, out.reads), (1, 1));
    let s = sim.stats();
    assert_eq!((s.sgl_commands, s.prp_commands), (2, 0));
}

/// Without SGL support everything goes with PRPs, and forcing SGLs is refused.
#[test]
fn controller_without_sgls_uses_prps() {
    let (sim, ctrl) = start(with_sgls(0), Options::default());
    assert_eq!(ctrl.info().sgl, fastlane_nvme::spec::SglSupport::None);
    let ns = ctrl.namespaces()[0];
    let pool = BufferPool::new_unmapped(ctrl.info().max_transfer, 8, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(8).unwrap();
    assert!(!qp.uses_sgl());
    assert!(matches!(
        qp.set_data_pointer(DataPointer::Sgl),
        Err(NvmeError::InvalidArgument(_))
    ));
    let list = extents(0, 20, &[1, 8, 9, 256]);
    write_then_verify(&mut qp, &pool, ns, &list, 5, &mut |_| ());
    let s = sim.stats();
    assert_eq!((s.prp_commands, s.sgl_commands), (40, 0));
    drop(qp);
    drop(ctrl);
    drop(sim);
    let (sim, mmio) = SimController::start(with_sgls(0));
    let forced = Options {
        data_pointer: DataPointer::Sgl,
        ..Options::default()
    };
    assert!(matches!(
        Controller::with_registers(mmio, forced),
        Err(NvmeError::InvalidArgument(_))
    ));
    drop(sim);
}

/// Requests of 2 to 4 times MDTS (and in between) split into commands over
/// sub-ranges of one buffer and complete once each, data verified, with
/// SGLs and with PRPs.
#[test]
fn requests_above_mdts_are_split_and_complete_once() {
    for mode in [DataPointer::Sgl, DataPointer::Prp] {
        let (sim, ctrl) = start(
            with_sgls(1),
            Options {
                data_pointer: mode,
                ..Options::default()
            },
        );
        let ns = ctrl.namespaces()[0];
        let max = ctrl.info().max_transfer; // 128 KiB
        let max_blocks = (max / 512) as u32;
        let pool = BufferPool::new_unmapped(4 * max, 8, PageSize::Small).unwrap();
        let mut qp = ctrl.create_qpair(16).unwrap();
        let sizes = [
            2 * max_blocks,
            4 * max_blocks,
            2 * max_blocks + 1,
            3 * max_blocks - 7,
            max_blocks + 1,
        ];
        let list = extents(11, 10, &sizes);
        let before = sim.stats();
        let out = write_then_verify(&mut qp, &pool, ns, &list, 77, &mut |_| ());
        assert_eq!((out.writes, out.reads), (10, 10), "{mode:?}");
        let commands: u64 = list
            .iter()
            .map(|&(_, b)| b.div_ceil(max_blocks) as u64)
            .sum();
        let s = sim.stats();
        assert_eq!(
            s.io[1] - before.io[1],
            commands,
            "writes the model executed ({mode:?})"
        );
        assert_eq!(
            s.io[2] - before.io[2],
            commands,
            "reads the model executed ({mode:?})"
        );
        let st = qp.stats();
        assert_eq!(st.completed, 20, "one completion per request ({mode:?})");
        assert_eq!(st.submitted, 2 * commands);
        assert_eq!((st.unknown_cids, st.malformed), (0, 0));
        drop(qp);
        assert_eq!(pool.available(), 8);
    }
}

/// A split request needs all its command slots at once: QueueFull (buffer
/// back, nothing submitted) when fewer are free, TooLarge when the queue
/// pair holds fewer.
#[test]
fn split_requests_take_all_slots_or_none() {
    let (sim, ctrl) = start(with_sgls(1), Options::default());
    let max_blocks = (ctrl.info().max_transfer / 512) as u32;
    let pool = BufferPool::new_unmapped(5 * ctrl.info().max_transfer, 4, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(5).unwrap(); // 4 commands in flight
    sim.hold_completions(true);
    qp.read(1, 0, 2 * max_blocks, pool.alloc().unwrap(), 1)
        .unwrap();
    qp.read(1, 0, max_blocks, pool.alloc().unwrap(), 2).unwrap();
    assert_eq!(qp.outstanding(), 3);
    let r = qp
        .read(1, 0, 2 * max_blocks, pool.alloc().unwrap(), 3)
        .unwrap_err();
    assert!(
        matches!(r.error, NvmeError::QueueFull) && r.buf.is_some(),
        "{}",
        r.error
    );
    drop(r);
    let r = qp
        .read(1, 0, 4 * max_blocks + 1, pool.alloc().unwrap(), 4)
        .unwrap_err();
    assert!(
        matches!(r.error, NvmeError::TooLarge { .. }) && r.buf.is_some(),
        "{}",
        r.error
    );
    drop(r);
    assert_eq!(qp.outstanding(), 3, "refused requests submit nothing");
    qp.submit();
    sim.hold_completions(false);
    let got = wait_for(&mut qp, 2, PATIENCE);
    let mut tags: Vec<u64> = got.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, [1, 2]);
    assert!(got.iter().all(|c| c.result.is_ok() && c.buf.is_some()));
    assert_eq!(sim.stats().io[2], 3);
}

/// An error in one command of a split request fails the request exactly
/// once, and only after every command of it completed: the buffer never
/// comes back while the device may still write into it.
#[test]
fn split_request_error_fails_once_after_all_parts() {
    let (sim, ctrl) = start(with_sgls(1), Options::default());
    let max_blocks = (ctrl.info().max_transfer / 512) as u32;
    let pool = BufferPool::new_unmapped(3 * ctrl.info().max_transfer, 2, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(8).unwrap();
    let qid = qp.qid();
    // The model executes the three commands (cids 0, 1, 2) but posts no
    // completion; the test posts them one at a time.
    sim.drop_next_completions(3);
    qp.read(1, 0, 3 * max_blocks, pool.alloc().unwrap(), 42)
        .unwrap();
    qp.submit();
    let deadline = Instant::now() + PATIENCE;
    while sim.stats().dropped_completions < 3 {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    let entry = |cid: u16, sc: u16| CompletionEntry {
        sq_head: 3,
        sq_id: qid,
        cid,
        status: sc << 1,
        ..Default::default()
    };
    let settle = |qp: &mut IoQueuePair, injected: u64| -> Vec<Completion> {
        let mut got = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while sim.stats().injected_completions < injected {
            assert!(Instant::now() < deadline);
            qp.poll(8, |c| got.push(c));
        }
        for _ in 0..100 {
            qp.poll(8, |c| got.push(c));
        }
        got
    };
    // The middle command fails (Data Transfer Error), then the last one
    // succeeds: the head is still outstanding, nothing finishes.
    sim.inject_completion(qid, entry(1, 0x04));
    sim.inject_completion(qid, entry(2, 0));
    assert!(
        settle(&mut qp, 2).is_empty(),
        "finished before its head completed"
    );
    assert_eq!(qp.outstanding(), 1);
    // The head succeeds: the request ends once, with the child's error.
    sim.inject_completion(qid, entry(0, 0));
    let got = settle(&mut qp, 3);
    assert_eq!(got.len(), 1);
    let c = &got[0];
    assert_eq!(c.tag, 42);
    assert!(c.buf.is_some());
    assert!(
        matches!(&c.result, Err(NvmeError::Status(s)) if s.sc == 0x04),
        "{:?}",
        c.result
    );
    // Repeats finish nothing more.
    sim.inject_completion(qid, entry(0, 0));
    sim.inject_completion(qid, entry(2, 0));
    assert!(settle(&mut qp, 5).is_empty());
    assert_eq!(qp.stats().unknown_cids, 2);
    assert_eq!(qp.outstanding(), 0);

    // The head's own completion first, with an error; children after.
    sim.drop_next_completions(3);
    qp.read(1, 0, 3 * max_blocks, pool.alloc().unwrap(), 43)
        .unwrap();
    qp.submit();
    while sim.stats().dropped_completions < 6 {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    let entry2 = |cid: u16, sc: u16| CompletionEntry {
        sq_head: 6,
        ..entry(cid, sc)
    };
    // Command ids come back in LIFO order: find them from what is in flight.
    sim.inject_completion(qid, entry2(0, 0x80));
    assert!(settle(&mut qp, 6).is_empty());
    sim.inject_completion(qid, entry2(0, 0));
    assert!(
        settle(&mut qp, 7).is_empty(),
        "a repeated head completion finishes nothing"
    );
    sim.inject_completion(qid, entry2(1, 0));
    sim.inject_completion(qid, entry2(2, 0));
    let got = settle(&mut qp, 9);
    assert_eq!(got.len(), 1);
    assert!(
        matches!(&got[0].result, Err(NvmeError::Status(s)) if s.sc == 0x80),
        "{:?}",
        got[0].result
    );
    assert_eq!(qp.stats().unknown_cids, 3);
}

/// Queue sizes: spare entries by default (the CQ never fills), exactly the
/// depth or the controller's maximum on request; in-flight commands stay
/// limited to depth - 1 in every case.
#[test]
fn queue_sizes() {
    use fastlane_nvme::QueueSize;
    assert_eq!(QueueSize::Spare.entries(2, 2048), 256);
    assert_eq!(QueueSize::Spare.entries(200, 2048), 400);
    assert_eq!(QueueSize::Spare.entries(200, 256), 256);
    assert_eq!(QueueSize::Spare.entries(256, 256), 256);
    assert_eq!(QueueSize::Minimal.entries(2, 2048), 2);
    assert_eq!(QueueSize::Maximum.entries(2, 2048), 2048);
    for size in [QueueSize::Spare, QueueSize::Minimal, QueueSize::Maximum] {
        let (sim, ctrl) = start(
            small(),
            Options {
                queue_size: size,
                ..Options::default()
            },
        );
        let ns = ctrl.namespaces()[0];
        let pool = BufferPool::new_unmapped(4096, 8, PageSize::Small).unwrap();
        let mut qp = ctrl.create_qpair(2).unwrap();
        assert_eq!(qp.capacity(), 1);
        let list = extents(0, 50, &[1, 8]);
        let out = write_then_verify(&mut qp, &pool, ns, &list, 3, &mut |_| ());
        assert!(
            out.queue_full > 0,
            "{size:?}: one command in flight at a time"
        );
        assert_eq!((out.writes, out.reads), (50, 50));
        drop(qp);
        drop(ctrl);
        drop(sim);
    }
}

/// Interrupt mode needs MSI-X through VFIO: the model has none, so asking
/// for it is refused at bring-up, and a queue pair without a vector refuses
/// to sleep rather than sleeping forever.
#[test]
fn interrupts_need_a_vfio_device_and_wait_needs_interrupts() {
    let (sim, mmio) = SimController::start(small());
    let asked = Controller::with_registers(mmio, Options { interrupts: true, ..Options::default() });
    assert!(matches!(asked, Err(NvmeError::InvalidArgument(_))));
    drop(sim);
    let (_sim, ctrl) = start(small(), Options::default());
    let mut qp = ctrl.create_qpair(4).unwrap();
    assert!(!qp.has_interrupt());
    assert!(matches!(qp.wait(Some(Duration::ZERO)), Err(NvmeError::InvalidArgument(_))));
    let slept = qp.poll_or_sleep(1, Duration::ZERO, Some(Duration::ZERO), |_| {});
    assert!(matches!(slept, Err(NvmeError::InvalidArgument(_))));
}

/// A removal (as the framework's watcher reports it) ends every outstanding
/// command exactly once with `Removed`, the ones the device never saw and
/// the ones it holds alike, hands every buffer back, refuses new
/// submissions (buffer back) and admin commands, and closing takes no
/// device timeouts.
#[test]
fn removal_ends_everything_once_and_refuses_new_work() {
    let (mut sim, ctrl) = start(small(), short_timeout());
    let pool = BufferPool::new_unmapped(4096, 32, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(32).unwrap();
    sim.set_synchronous(true); // the model holds what reaches it
    for tag in 0..20u64 {
        qp.read(1, tag * 8, 8, pool.alloc().unwrap(), tag).map_err(|r| r.error).unwrap();
        if tag == 9 {
            qp.submit(); // the first ten reach the device, the rest do not
        }
    }
    assert_eq!(qp.outstanding(), 20);
    ctrl.removal().simulate();
    let mut tags = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tags.len() < 20 {
        assert!(Instant::now() < deadline, "only {} of 20 ended", tags.len());
        qp.poll(64, |c| {
            assert!(matches!(c.result, Err(NvmeError::Removed)), "{:?}", c.result);
            assert!(c.buf.is_some());
            tags.push(c.tag);
        });
    }
    tags.sort_unstable();
    assert_eq!(tags, (0..20).collect::<Vec<_>>(), "each exactly once");
    for _ in 0..100 {
        assert_eq!(qp.poll(64, |c| panic!("ended twice: {}", c.tag)), 0);
    }
    let rej = qp.read(1, 0, 8, pool.alloc().unwrap(), 99).unwrap_err();
    assert!(matches!(rej.error, NvmeError::Removed) && rej.buf.is_some());
    assert!(qp.flush(1, 100).is_err());
    assert!(matches!(ctrl.reset(), Err(NvmeError::Removed)));
    assert!(ctrl.create_qpair(4).is_err());
    drop(rej);
    let t = Instant::now();
    drop(qp);
    drop(ctrl);
    assert!(t.elapsed() < Duration::from_secs(1), "close waited {:?}", t.elapsed());
    assert_eq!(pool.available(), 32, "every buffer back");
}
