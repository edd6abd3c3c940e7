//! Property tests of the framework's pure logic: buffer pools and their
//! per-thread caches under random interleavings of every operation, on one
//! thread and across two, and IOVA placement against a brute-force model of
//! the aperture.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use fastlane_framework::iova::{IovaSpace, Range, IOVA_FLOOR};
use fastlane_framework::{BufferPool, DmaBuf, PageSize, PoolCache, PoolError};
use proptest::prelude::*;

// --------------------------------------------------------------- pool ----

/// One operation on a pool `A` (with a cache) by a thread that also holds a
/// second pool `B` to free into by mistake.
#[derive(Clone, Debug)]
enum PoolOp {
    Alloc,
    Free(usize),
    CacheAlloc,
    CacheFree(usize),
    BulkAlloc(usize),
    /// Free every `n`-th held buffer in one `free_bulk`, with a buffer of
    /// pool B mixed in.
    BulkFree(usize),
    /// Free a held buffer of A into B's pool or B's cache.
    WrongPool(usize, bool),
    /// Drop a held buffer without freeing it: it goes home by itself.
    Drop(usize),
    /// Drop the cache and make a new one of the given size.
    NewCache(usize),
    /// Hand a held buffer to the other thread (two-thread test only).
    Send(usize),
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        3 => Just(PoolOp::Alloc),
        3 => any::<usize>().prop_map(PoolOp::Free),
        4 => Just(PoolOp::CacheAlloc),
        4 => any::<usize>().prop_map(PoolOp::CacheFree),
        2 => (1usize..12).prop_map(PoolOp::BulkAlloc),
        2 => (1usize..4).prop_map(PoolOp::BulkFree),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, c)| PoolOp::WrongPool(i, c)),
        1 => any::<usize>().prop_map(PoolOp::Drop),
        1 => (0usize..40).prop_map(PoolOp::NewCache),
        2 => any::<usize>().prop_map(PoolOp::Send),
    ]
}

/// Who holds which buffer of pool A: one flag per buffer index, set on
/// allocation and cleared on free. Shared by threads without locks; a
/// buffer handed out twice finds its flag already set.
struct Ledger {
    held: Vec<AtomicBool>,
}

impl Ledger {
    fn new(n: u32) -> Self {
        Ledger {
            held: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }
    fn take(&self, b: &DmaBuf) {
        let was = self.held[b.index() as usize].swap(true, Ordering::SeqCst);
        assert!(!was, "buffer {} handed out while held", b.index());
    }
    fn give_back(&self, b: &DmaBuf) {
        let was = self.held[b.index() as usize].swap(false, Ordering::SeqCst);
        assert!(was, "buffer {} returned but not held", b.index());
    }
}

/// A held buffer and the owner stamp written into it.
struct Held {
    buf: DmaBuf,
    stamp: u64,
}

/// One thread's view: pool A with its cache, pool B, the buffers it holds.
struct Actor<'a> {
    a: &'a BufferPool,
    b: &'a BufferPool,
    cache: PoolCache,
    b_cache: PoolCache,
    held: Vec<Held>,
    ledger: &'a Ledger,
    owner: u64,
    stamps: u64,
}

impl Actor<'_> {
    /// Takes ownership of a fresh buffer: nobody else may have it.
    fn adopt(&mut self, mut buf: DmaBuf) {
        assert_eq!(buf.pool_id(), self.a.id());
        self.ledger.take(&buf);
        self.stamps += 1;
        let stamp = self.owner << 32 | self.stamps;
        buf.write(0, &stamp.to_le_bytes()).unwrap();
        self.held.push(Held { buf, stamp });
    }

    /// Gives up a held buffer after checking nobody wrote over our stamp.
    fn release(&mut self, i: usize) -> Option<DmaBuf> {
        if self.held.is_empty() {
            return None;
        }
        let Held { buf, stamp } = self.held.swap_remove(i % self.held.len());
        check_stamp(&buf, stamp);
        self.ledger.give_back(&buf);
        Some(buf)
    }

    fn step(&mut self, op: &PoolOp, out: Option<&mpsc::Sender<(DmaBuf, u64)>>) {
        let cap = self.a.capacity() as usize;
        match *op {
            PoolOp::Alloc => {
                let avail = self.a.available();
                match self.a.alloc() {
                    Ok(b) => self.adopt(b),
                    Err(PoolError::Empty) => assert!(out.is_some() || avail == 0),
                    Err(e) => panic!("alloc: {e}"),
                }
            }
            PoolOp::CacheAlloc => {
                let before = self.cache.cached() + self.a.available();
                match self.cache.alloc() {
                    Ok(b) => self.adopt(b),
                    Err(PoolError::Empty) => assert!(out.is_some() || before == 0),
                    Err(e) => panic!("cache alloc: {e}"),
                }
            }
            PoolOp::BulkAlloc(n) => {
                let before = self.cache.cached() + self.a.available();
                let mut v = Vec::new();
                match self.cache.alloc_bulk(n, &mut v) {
                    Ok(()) => {
                        assert_eq!(v.len(), n, "bulk alloc is exactly n");
                        v.into_iter().for_each(|b| self.adopt(b));
                    }
                    Err(PoolError::Empty) => {
                        assert!(v.is_empty(), "failed bulk alloc handed out buffers");
                        assert!(out.is_some() || before < n);
                    }
                    Err(e) => panic!("bulk alloc: {e}"),
                }
            }
            PoolOp::Free(i) => {
                if let Some(b) = self.release(i) {
                    self.a.free(b).unwrap();
                }
            }
            PoolOp::CacheFree(i) => {
                if let Some(b) = self.release(i) {
                    self.cache.free(b).unwrap();
                    assert!(self.cache.cached() <= cap);
                }
            }
            PoolOp::BulkFree(every) => {
                let mut v = Vec::new();
                // Descending, so swap_remove only moves buffers already passed.
                for i in (0..self.held.len()).rev().filter(|i| i % every == 0) {
                    v.extend(self.release(i));
                }
                let stranger = self.b.alloc().ok();
                let stranger_id = stranger.as_ref().map(|s| s.index());
                v.extend(stranger);
                self.cache.free_bulk(&mut v);
                // Only the other pool's buffer is left, untouched.
                assert_eq!(v.iter().map(|b| (b.pool_id(), b.index())).collect::<Vec<_>>(),
                    stranger_id.map(|i| (self.b.id(), i)).into_iter().collect::<Vec<_>>());
                v.into_iter().for_each(|s| self.b.free(s).unwrap());
            }
            PoolOp::WrongPool(i, into_cache) => {
                let Some(b) = self.release(i) else { return };
                let index = b.index();
                let (b_avail, b_cached) = (self.b.available(), self.b_cache.cached());
                let res = if into_cache { self.b_cache.free(b) } else { self.b.free(b) };
                match res {
                    Err(PoolError::WrongPool { expected, found, buf }) => {
                        assert_eq!((expected, found), (self.b.id(), self.a.id()));
                        assert_eq!(buf.index(), index, "a different buffer came back");
                        // (B is shared when two threads run: its count is theirs too.)
                        if out.is_none() {
                            assert_eq!((self.b.available(), self.b_cache.cached()), (b_avail, b_cached));
                        }
                        // Still ours: take it back.
                        self.ledger.take(&buf);
                        let stamp = u64::from_le_bytes(read8(&buf));
                        self.held.push(Held { buf, stamp });
                    }
                    other => panic!("free into the wrong pool: {other:?}"),
                }
            }
            PoolOp::Drop(i) => drop(self.release(i)),
            PoolOp::NewCache(size) => {
                let size = size.max(1);
                self.cache = self.a.cache(size);
                assert_eq!(self.cache.cached(), 0);
            }
            PoolOp::Send(i) => {
                if let Some(tx) = out {
                    if !self.held.is_empty() {
                        let Held { buf, stamp } = self.held.swap_remove(i % self.held.len());
                        // Ownership moves with the message; the ledger flag stays set.
                        tx.send((buf, stamp)).unwrap();
                    }
                }
            }
        }
    }

    /// Adopts a buffer another thread sent, checking its stamp on the way.
    fn receive(&mut self, buf: DmaBuf, stamp: u64) {
        check_stamp(&buf, stamp);
        self.held.push(Held { buf, stamp });
    }
}

fn read8(b: &DmaBuf) -> [u8; 8] {
    let mut x = [0u8; 8];
    b.read(0, &mut x).unwrap();
    x
}

fn check_stamp(b: &DmaBuf, stamp: u64) {
    assert_eq!(
        u64::from_le_bytes(read8(b)),
        stamp,
        "buffer {} was written by another owner",
        b.index()
    );
}

fn pools(count: u32, buf_size: usize) -> (BufferPool, BufferPool) {
    (
        BufferPool::new_unmapped(buf_size, count, PageSize::Small).unwrap(),
        BufferPool::new_unmapped(64, 4, PageSize::Small).unwrap(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// One thread, every operation: no buffer is held twice, sizes add up
    /// after each step, and everything is home at the end.
    #[test]
    fn pool_single_thread_interleavings(
        count in 1u32..48,
        buf_size in prop_oneof![Just(64usize), Just(2048), Just(4096), 8usize..5000],
        cache_size in 0usize..40,
        ops in prop::collection::vec(pool_op(), 1..200),
    ) {
        let (a, b) = pools(count, buf_size);
        let ledger = Ledger::new(count);
        let mut actor = Actor {
            a: &a,
            b: &b,
            cache: a.cache(cache_size),
            b_cache: b.cache(4),
            held: Vec::new(),
            ledger: &ledger,
            owner: 1,
            stamps: 0,
        };
        for op in &ops {
            actor.step(op, None);
            let accounted = actor.held.len() + actor.cache.cached() + a.available();
            prop_assert_eq!(accounted, count as usize, "a buffer went missing or appeared");
            prop_assert!(actor.held.iter().all(|h| h.buf.len() == buf_size));
            prop_assert_eq!(b.available() + actor.b_cache.cached(), 4);
        }
        let ptrs: HashSet<_> = actor.held.iter().map(|h| h.buf.as_ptr() as usize).collect();
        prop_assert_eq!(ptrs.len(), actor.held.len());
        drop(actor);
        prop_assert_eq!(a.available(), count as usize);
        prop_assert_eq!(b.available(), 4);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Two threads on one pool, each with its own cache, handing buffers to
    /// each other: no buffer is ever held by two owners, and every buffer is
    /// home once both threads are done and their caches dropped.
    #[test]
    fn pool_two_threads_interleavings(
        count in 2u32..64,
        ops in [prop::collection::vec(pool_op(), 1..300), prop::collection::vec(pool_op(), 1..300)],
        cache_sizes in [2usize..20, 2usize..20],
    ) {
        let (a, b) = pools(count, 256);
        let ledger = Ledger::new(count);
        let (tx0, rx1) = mpsc::channel();
        let (tx1, rx0) = mpsc::channel();
        let channels = [(tx0, rx0), (tx1, rx1)];
        std::thread::scope(|s| {
            for (t, ((tx, rx), ops)) in channels.into_iter().zip(&ops).enumerate() {
                let (a, b, ledger) = (&a, &b, &ledger);
                let cache_size = cache_sizes[t];
                s.spawn(move || {
                    let mut actor = Actor {
                        a,
                        b,
                        cache: a.cache(cache_size),
                        b_cache: b.cache(2),
                        held: Vec::new(),
                        ledger,
                        owner: t as u64 + 1,
                        stamps: 0,
                    };
                    for op in ops {
                        actor.step(op, Some(&tx));
                        while let Ok((buf, stamp)) = rx.try_recv() {
                            actor.receive(buf, stamp);
                        }
                    }
                    drop(tx);
                    // Whatever the other thread still sends after finishing.
                    for (buf, stamp) in rx {
                        actor.receive(buf, stamp);
                    }
                    for i in (0..actor.held.len()).rev() {
                        let buf = actor.release(i).unwrap();
                        if i % 2 == 0 { actor.cache.free(buf).unwrap() } else { drop(buf) }
                    }
                });
            }
        });
        prop_assert_eq!(a.available(), count as usize);
        prop_assert_eq!(b.available(), 4);
        prop_assert!(ledger.held.iter().all(|f| !f.load(Ordering::SeqCst)));
    }
}

/// A pool handle dropped first is freed by the last buffer to come home,
/// from another thread.
#[test]
fn pool_outlived_by_buffers_on_another_thread() {
    let (a, _) = pools(8, 128);
    let mut cache = a.cache(4);
    let bufs: Vec<_> = (0..6).map(|_| cache.alloc().unwrap()).collect();
    drop(cache);
    drop(a);
    let t = std::thread::spawn(move || {
        for mut b in bufs {
            b.fill(0xAB);
        }
    });
    t.join().unwrap();
}

// --------------------------------------------------------------- IOVA ----

const PAGE: u64 = 4096;

/// Disjoint valid ranges around [`IOVA_FLOOR`] (plus, sometimes, low memory
/// below it), page or byte granular, sorted or not.
fn valid_ranges() -> impl Strategy<Value = Vec<Range>> {
    (
        prop::collection::btree_set(0u64..600, 2..10),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(0u64..PAGE, 10),
    )
        .prop_map(|(points, low, byte_granular, jitter)| {
            // Points in pages from 64 pages below the floor.
            let base = IOVA_FLOOR - 64 * PAGE;
            let pts: Vec<u64> = points
                .iter()
                .enumerate()
                .map(|(i, p)| base + p * PAGE + if byte_granular { jitter[i % 10] } else { 0 })
                .collect();
            let mut v: Vec<Range> = pts
                .chunks_exact(2)
                .filter(|c| c[0] < c[1])
                .map(|c| Range { start: c[0], end: c[1] })
                .collect();
            if low {
                v.push(Range { start: 0x10_0000, end: 0x20_0000 });
            }
            v.reverse(); // IovaSpace sorts them itself
            v
        })
}

#[derive(Clone, Debug)]
enum IovaOp {
    /// Place `len` bytes of a region at `va` with alignment `1 << align`.
    Place { va: u64, len: u64, align: u32 },
    /// Release the `i`-th placed region.
    Release(usize),
}

fn iova_op() -> impl Strategy<Value = IovaOp> {
    let va = prop_oneof![
        // Inside or near the valid ranges: identity may work.
        3 => (0u64..700).prop_map(|p| IOVA_FLOOR - 64 * PAGE + p * PAGE),
        1 => (0u64..0x30_0000).prop_map(|b| b & !7),
        // A typical mmap address, far outside any aperture here.
        2 => (0u64..1 << 20).prop_map(|p| 0x7f00_0000_0000 + p * PAGE),
    ];
    let len = prop_oneof![
        3 => (1u64..64).prop_map(|p| p * PAGE),
        1 => 1u64..300_000,
    ];
    prop_oneof![
        4 => (va, len, prop_oneof![Just(12u32), Just(16), Just(21), 0u32..23])
            .prop_map(|(va, len, align)| IovaOp::Place { va, len, align }),
        1 => any::<usize>().prop_map(IovaOp::Release),
    ]
}

fn inside(valid: &[Range], r: &Range) -> bool {
    valid.iter().any(|v| v.start <= r.start && r.end <= v.end)
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.start < b.end && b.start < a.end
}

/// The lowest `align`-aligned IOVA at or above the floor where `len` bytes
/// fit inside one valid range and clear of `used`, by trying every one.
fn brute_lowest(valid: &[Range], used: &[Range], len: u64, align: u64) -> Option<u64> {
    let mut best: Option<u64> = None;
    for v in valid {
        let mut c = v.start.max(IOVA_FLOOR).next_multiple_of(align);
        while c + len <= v.end {
            let r = Range { start: c, end: c + len };
            if !used.iter().any(|u| overlaps(u, &r)) {
                best = Some(best.map_or(c, |b| b.min(c)));
                break;
            }
            c += align;
        }
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Placements never overlap, lie inside a valid range, are identity
    /// exactly when the region's own addresses are valid and free, and are
    /// otherwise the lowest free aligned IOVA above the floor.
    #[test]
    fn iova_placements_against_brute_force(
        valid in valid_ranges(),
        ops in prop::collection::vec(iova_op(), 1..40),
    ) {
        let mut space = IovaSpace::new(valid.clone());
        prop_assert!(space.valid().windows(2).all(|w| w[0].start <= w[1].start));
        let mut placed: Vec<Range> = Vec::new();
        for op in ops {
            match op {
                IovaOp::Place { va, len, align } => {
                    let align = 1u64 << align;
                    let want = Range { start: va, end: va + len };
                    let identity_ok = inside(&valid, &want) && !placed.iter().any(|u| overlaps(u, &want));
                    let lowest = brute_lowest(&valid, &placed, len, align);
                    let got = space.place(va, len, align);
                    match got {
                        Some(iova) => {
                            let r = Range { start: iova, end: iova + len };
                            prop_assert!(inside(&valid, &r), "{:#x} outside the valid ranges", iova);
                            prop_assert!(!placed.iter().any(|u| overlaps(u, &r)), "{:#x} overlaps", iova);
                            prop_assert_eq!(iova == va, identity_ok, "identity iff possible");
                            if !identity_ok {
                                prop_assert_eq!(iova % align, 0);
                                prop_assert!(iova >= IOVA_FLOOR);
                                prop_assert_eq!(Some(iova), lowest, "not the lowest free IOVA");
                            }
                            placed.push(r);
                        }
                        None => {
                            prop_assert!(!identity_ok, "identity was possible");
                            prop_assert_eq!(lowest, None, "a free IOVA was there");
                        }
                    }
                }
                IovaOp::Release(i) => {
                    if !placed.is_empty() {
                        let r = placed.swap_remove(i % placed.len());
                        space.release(r.start, r.end - r.start);
                    }
                }
            }
        }
    }

    /// Whatever the IOMMU reports and whatever is asked (power-of-two
    /// alignments, as documented): an answer, never a panic or a hang, and
    /// an answer inside the valid ranges.
    #[test]
    fn iova_place_never_panics(
        valid in prop::collection::vec((any::<u64>(), any::<u64>()), 0..6),
        reqs in prop::collection::vec((any::<u64>(), any::<u64>(), 0u32..64), 1..20),
    ) {
        let valid: Vec<Range> = valid.into_iter().map(|(start, end)| Range { start, end }).collect();
        let mut space = IovaSpace::new(valid.clone());
        for (va, len, align) in reqs {
            let len = len >> (va % 64); // many sizes, small ones too
            if let Some(iova) = space.place(va, len, 1 << align) {
                let end = iova.checked_add(len);
                prop_assert!(end.is_some());
                prop_assert!(valid.iter().any(|v| v.start <= iova && end.unwrap() <= v.end));
            }
        }
    }
}
