//! The async layer (`AsyncQueue` on a `LocalExecutor`) against QEMU's NVMe
//! controller through real VFIO: a copy between LBA ranges by 256 tasks on
//! one 32-command queue pair, data verified block by block (also with
//! requests above MDTS, split into several commands); futures dropped in
//! flight and while waiting for a slot give every buffer back and the
//! slots reused carry only their own data. Built with `--features guest`,
//! run by tests/guest/run-all.sh.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use fastlane::framework::{BufferPool, DmaBuf, PageSize, Vfio};
use fastlane::nvme::{
    block_on, pattern, AsyncQueue, Controller, LocalExecutor, Namespace, Options,
};

/// Queue pair depth: 32 commands in flight.
const DEPTH: u16 = 33;
/// The longest any run here may take before it is a failure.
const PATIENCE: Duration = Duration::from_secs(60);

fn open() -> (Vfio, Controller, Namespace) {
    let bdf = std::env::var("FASTLANE_NVME").expect("FASTLANE_NVME not set: run in the guest");
    let vfio = Vfio::new().unwrap();
    let ctrl = Controller::open(&vfio, &bdf, Options::default()).unwrap();
    let ns = ctrl.namespaces()[0];
    (vfio, ctrl, ns)
}

/// Runs every task, polling `aq` between rounds, within [`PATIENCE`].
fn run(exec: &mut LocalExecutor<'_>, aq: &AsyncQueue) {
    let start = Instant::now();
    exec.run(|| {
        assert!(
            start.elapsed() < PATIENCE,
            "stuck: {:?} {:?}",
            aq.stats(),
            aq.qpair_stats()
        );
        aq.poll(64);
    });
}

/// `chunks` chunks of `chunk` blocks from `first`: chunk `i` starts at
/// `first + i * chunk`. Each of `tasks` tasks takes the next chunk until
/// none is left and runs `op` on it with its own buffer.
fn for_chunks<'a, F, Fut>(
    aq: &'a AsyncQueue,
    pool: &'a BufferPool,
    tasks: usize,
    chunks: u64,
    op: F,
) where
    F: Fn(u64, DmaBuf) -> Fut + Copy + 'a,
    Fut: Future<Output = DmaBuf> + 'a,
{
    let next = Cell::new(0u64);
    let mut exec = LocalExecutor::new(tasks);
    for _ in 0..tasks {
        let next = &next;
        exec.spawn(async move {
            let mut buf = pool.alloc().unwrap();
            loop {
                let i = next.get();
                if i >= chunks {
                    return;
                }
                next.set(i + 1);
                buf = op(i, buf).await;
            }
        })
        .unwrap();
    }
    run(&mut exec, aq);
}

/// Writes the pattern over `blocks` at `src`, copies them to `dst` with
/// `tasks` tasks in chunks of `chunk` blocks, reads `dst` back and checks
/// every block against its source's pattern. Returns the chunks copied.
fn copy_and_verify(
    aq: &AsyncQueue,
    pool: &BufferPool,
    ns: Namespace,
    tasks: usize,
    chunk: u32,
    (src, dst): (u64, u64),
    blocks: u64,
) -> u64 {
    let bs = ns.block_size as usize;
    let chunks = blocks / chunk as u64;
    let seed = src ^ dst ^ chunk as u64;
    let len = chunk as usize * bs;
    for_chunks(aq, pool, tasks, chunks, |i, mut buf| async move {
        let lba = src + i * chunk as u64;
        let mut data = vec![0u8; len];
        pattern::fill(&mut data, bs, lba, seed);
        buf.write(0, &data).unwrap();
        let (buf, r) = aq.write(ns.id, lba, chunk, buf).await;
        r.unwrap_or_else(|e| panic!("write at {lba}: {e}"));
        buf
    });
    for_chunks(aq, pool, tasks, chunks, |i, buf| async move {
        let off = i * chunk as u64;
        let (buf, r) = aq.read(ns.id, src + off, chunk, buf).await;
        r.unwrap_or_else(|e| panic!("read at {}: {e}", src + off));
        let (buf, r) = aq.write(ns.id, dst + off, chunk, buf).await;
        r.unwrap_or_else(|e| panic!("write at {}: {e}", dst + off));
        buf
    });
    let checked = Cell::new(0u64);
    let checked_ref = &checked;
    for_chunks(aq, pool, tasks, chunks, |i, mut buf| async move {
        let off = i * chunk as u64;
        buf.fill(0xee);
        let (buf, r) = aq.read(ns.id, dst + off, chunk, buf).await;
        r.unwrap_or_else(|e| panic!("read at {}: {e}", dst + off));
        let mut data = vec![0u8; len];
        buf.read(0, &mut data).unwrap();
        if let Err((lba, at)) = pattern::check(&data, bs, src + off, seed) {
            panic!(
                "block {} (copied from {lba}) wrong at byte {at}",
                dst + (lba - src)
            );
        }
        checked_ref.set(checked_ref.get() + 1);
        buf
    });
    assert_eq!(checked.get(), chunks);
    chunks
}

/// 256 tasks copy 4 MiB between two ranges on one 32-command queue pair,
/// 4 KiB per command; then 8 tasks copy 4 MiB in requests of twice MDTS
/// (each split into two commands). Every block verified.
#[test]
fn many_tasks_copy_a_range_on_one_queue_pair_and_the_copy_verifies() {
    let (vfio, ctrl, ns) = open();
    let bs = ns.block_size as u64;
    let pool = BufferPool::new(&vfio, 2 * ctrl.info().max_transfer, 256, PageSize::Huge2M).unwrap();
    let aq = AsyncQueue::new(ctrl.create_qpair(DEPTH).unwrap());
    assert_eq!(aq.capacity(), 32);
    let blocks = (4 << 20) / bs;
    let (src, dst) = (ns.blocks / 4, ns.blocks / 2);
    let start = Instant::now();
    let chunks = copy_and_verify(&aq, &pool, ns, 256, (4096 / bs) as u32, (src, dst), blocks);
    eprintln!(
        "4 KiB chunks: {chunks} copied and verified in {:?}, {:?}",
        start.elapsed(),
        aq.stats()
    );
    let s = aq.stats();
    assert_eq!(s.submitted, 4 * chunks);
    assert_eq!((s.completed, s.abandoned, s.stale), (4 * chunks, 0, 0));
    assert!(s.waited > 0, "256 tasks on 32 slots: some waited");
    let split = (2 * ctrl.info().max_transfer as u64 / bs) as u32;
    let start = Instant::now();
    let chunks = copy_and_verify(&aq, &pool, ns, 8, split, (dst, src), blocks);
    eprintln!(
        "{split}-block chunks (2 commands each): {chunks} copied in {:?}",
        start.elapsed()
    );
    let qs = aq.qpair_stats();
    assert_eq!((qs.unknown_cids, qs.malformed, qs.timeouts), (0, 0, 0));
    assert_eq!(aq.outstanding(), 0);
    assert_eq!(pool.available(), 256, "every buffer back in its pool");
}

struct NoWake;

impl Wake for NoWake {
    fn wake(self: Arc<Self>) {}
}

/// 64 reads started on a 32-command queue pair (32 in flight, 32 waiting)
/// and all dropped: the in-flight ones complete into their pool, the
/// waiting ones never reach the device; the slots reused by later reads
/// carry their own data.
#[test]
fn dropped_futures_give_every_buffer_back_and_reused_slots_carry_their_own_data() {
    let (vfio, ctrl, ns) = open();
    let bs = ns.block_size as usize;
    let pool = BufferPool::new(&vfio, 4096, 128, PageSize::Huge2M).unwrap();
    let aq = AsyncQueue::new(ctrl.create_qpair(DEPTH).unwrap());
    let blocks = (4096 / bs) as u32;
    let base = ns.blocks / 8;
    let lba = |i: u64| base + i * blocks as u64;
    // Known data at 64 chunks, written one by one.
    for i in 0..64 {
        let mut data = vec![0u8; 4096];
        pattern::fill(&mut data, bs, lba(i), 0xD0);
        let mut buf = pool.alloc().unwrap();
        buf.write(0, &data).unwrap();
        let (_, r) = block_on(aq.write(ns.id, lba(i), blocks, buf), || {
            aq.poll(8);
        });
        r.unwrap();
    }
    let waker = Waker::from(Arc::new(NoWake));
    let mut cx = Context::from_waker(&waker);
    let mut futs: Vec<_> = (0..64)
        .map(|i| aq.read(ns.id, lba(i), blocks, pool.alloc().unwrap()))
        .collect();
    for f in futs.iter_mut() {
        assert!(Pin::new(f).poll(&mut cx).is_pending());
    }
    assert_eq!((aq.outstanding(), aq.waiting()), (32, 32));
    aq.submit();
    drop(futs);
    assert_eq!(aq.waiting(), 0);
    assert_eq!(
        pool.available(),
        128 - 32,
        "the device may still write 32 of them"
    );
    let start = Instant::now();
    while aq.outstanding() > 0 {
        assert!(start.elapsed() < PATIENCE, "dropped reads never completed");
        aq.poll(64);
    }
    assert_eq!(pool.available(), 128, "every buffer back in its pool");
    let s = aq.stats();
    assert_eq!((s.abandoned, s.stale), (32, 0), "{s:?}");
    // The slots again, each read with its own data.
    let checked = Cell::new(0);
    let mut exec = LocalExecutor::new(64);
    for i in (0..64).rev() {
        let (aq, pool, checked) = (&aq, &pool, &checked);
        exec.spawn(async move {
            let mut buf = pool.alloc().unwrap();
            buf.fill(0xee);
            let (buf, r) = aq.read(ns.id, lba(i), blocks, buf).await;
            r.unwrap();
            let mut data = vec![0u8; 4096];
            buf.read(0, &mut data).unwrap();
            assert_eq!(pattern::check(&data, bs, lba(i), 0xD0), Ok(()), "chunk {i}");
            checked.set(checked.get() + 1);
        })
        .unwrap();
    }
    run(&mut exec, &aq);
    assert_eq!(checked.get(), 64);
    assert_eq!(pool.available(), 128);
}

/// A read the queue pair refuses resolves with its typed error and its
/// buffer at its first poll (the queue has room).
#[test]
fn refused_requests_resolve_with_typed_errors_and_their_buffer() {
    let (vfio, ctrl, ns) = open();
    let pool = BufferPool::new(&vfio, 4096, 4, PageSize::Huge2M).unwrap();
    let aq = AsyncQueue::new(ctrl.create_qpair(4).unwrap());
    let (buf, r) = block_on(aq.read(ns.id, ns.blocks, 1, pool.alloc().unwrap()), || {
        aq.poll(8);
    });
    assert!(
        matches!(r, Err(fastlane::nvme::NvmeError::LbaOutOfRange { .. })),
        "{r:?}"
    );
    drop(buf);
    let (buf, r) = block_on(aq.read(ns.id + 100, 0, 1, pool.alloc().unwrap()), || {
        aq.poll(8);
    });
    assert!(
        matches!(r, Err(fastlane::nvme::NvmeError::InvalidNamespace(_))),
        "{r:?}"
    );
    drop(buf);
    assert_eq!(pool.available(), 4);
    assert_eq!(aq.stats().submitted, 0);
}
