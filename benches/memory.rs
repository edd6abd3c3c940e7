//! Memory benchmarks: virtual-to-IOVA translation and buffer pool alloc/free.
//!
//! `translate`: the same 1024 random 2 KiB buffers of one region, translated
//! - `static_offset`: [`DmaBuf::iova`], pointer plus the region's constant
//!   offset (what fastlane does);
//! - `static_offset_iova_of`: [`DmaRegion::iova_of`] on the raw address (the
//!   same input the lookups below get: a bounds check and an add);
//! - `pagemap_fd_kept` / `pagemap_open_each`: what ixy does, one `pread` of
//!   the 8-byte `/proc/self/pagemap` entry per translation, with the file kept
//!   open or opened and closed each time. Without CAP_SYS_ADMIN the kernel
//!   reports PFN 0, so the result is wrong but the syscall (the cost) is the
//!   same; the bench prints which case it ran;
//! - `two_level_table`: an SPDK `mem_map`-style two-level table (see
//!   [`TwoLevelMap`]).
//!
//! `pool`: one buffer allocated and freed per operation through the shared
//! lock-free free list, through a [`PoolCache`], and 32 at a time through the
//! cache; the `_2t` variants measure one thread while a second thread runs the
//! same loop on the same pool.
//!
//! Criterion reports the times; after it, `cargo bench` also prints a
//! Markdown table of ratios timed in the same run (plain `Instant` loops,
//! median of 5), for the README. `cargo test --all-targets` runs every
//! benchmark once and skips the table.
//!
//! 2 MiB hugepages are used when the system has them, 4 KiB pages otherwise;
//! the bench prints which.
// criterion_group!/criterion_main! generate undocumented public items.
#![allow(missing_docs)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

mod common;

use common::benchmarking;
use criterion::{black_box, criterion_group, Criterion, Throughput};
use fastlane::framework::{BufferPool, DmaBuf, DmaRegion, PageSize, PoolCache};

/// Buffers translated per criterion iteration.
const ADDRS: usize = 1024;
/// Bytes per buffer, in both groups.
const BUF_SIZE: usize = 2048;
/// Buffers a thread's [`PoolCache`] holds.
const CACHE: usize = 256;
/// Buffers per bulk operation.
const BULK: usize = 32;

// ---------------------------------------------------------------------------
// Translation by /proc/self/pagemap, as ixy does it.

const PAGEMAP: &str = "/proc/self/pagemap";
/// pagemap has one entry per base page, hugepages included.
const BASE_PAGE: u64 = 4096;
/// Bits 0-54 of an entry: the page frame number (zero without CAP_SYS_ADMIN).
const PFN_MASK: u64 = (1 << 55) - 1;
/// Bit 63: the page is present.
const PRESENT: u64 = 1 << 63;

fn pagemap_entry(pagemap: &File, va: u64) -> u64 {
    let mut entry = [0u8; 8];
    pagemap
        .read_exact_at(&mut entry, va / BASE_PAGE * 8)
        .expect("pread of /proc/self/pagemap");
    u64::from_ne_bytes(entry)
}

#[inline]
fn pagemap_translate(pagemap: &File, va: u64) -> u64 {
    ((pagemap_entry(pagemap, va) & PFN_MASK) * BASE_PAGE) | (va % BASE_PAGE)
}

#[inline]
fn pagemap_translate_open(va: u64) -> u64 {
    let pagemap = File::open(PAGEMAP).expect("open /proc/self/pagemap");
    pagemap_translate(&pagemap, va)
}

// ---------------------------------------------------------------------------
// Translation by a two-level table, in the style of SPDK's mem_map.

/// Top level: one entry per 1 GiB of the 48-bit address space (VA bits 47..30).
const TOP_ENTRIES: usize = 1 << 18;
/// Second level: one entry per 2 MiB of a 1 GiB range (VA bits 29..21).
const LEAF_ENTRIES: usize = 512;
const CHUNK: u64 = 2 << 20;
const UNMAPPED: u64 = u64::MAX;

/// VA -> IOVA at 2 MiB granularity: a top table of 2^18 pointers, each null
/// or pointing to a lazily allocated leaf of 512 IOVAs, one per 2 MiB page.
/// A translation is two indexed loads plus the offset inside the 2 MiB page.
struct TwoLevelMap {
    top: Box<[Option<Box<Leaf>>; TOP_ENTRIES]>,
}

struct Leaf([u64; LEAF_ENTRIES]);

impl TwoLevelMap {
    fn new() -> TwoLevelMap {
        let top: Vec<Option<Box<Leaf>>> = (0..TOP_ENTRIES).map(|_| None).collect();
        let top = top
            .into_boxed_slice()
            .try_into()
            .ok()
            .expect("TOP_ENTRIES entries");
        TwoLevelMap { top }
    }

    /// Records that `[va, va + len)` is at `va + offset` (wrapping), for
    /// every 2 MiB page the range touches.
    fn map(&mut self, va: u64, len: u64, offset: u64) {
        let mut chunk = va & !(CHUNK - 1);
        while chunk < va + len {
            let leaf = self.top[(chunk >> 30) as usize % TOP_ENTRIES]
                .get_or_insert_with(|| Box::new(Leaf([UNMAPPED; LEAF_ENTRIES])));
            leaf.0[(chunk >> 21) as usize % LEAF_ENTRIES] = chunk.wrapping_add(offset);
            chunk += CHUNK;
        }
    }

    #[inline]
    fn translate(&self, va: u64) -> Option<u64> {
        if va >> 48 != 0 {
            return None;
        }
        let leaf = self.top[(va >> 30) as usize % TOP_ENTRIES].as_deref()?;
        let base = leaf.0[(va >> 21) as usize % LEAF_ENTRIES];
        (base != UNMAPPED).then_some(base.wrapping_add(va % CHUNK))
    }
}

// ---------------------------------------------------------------------------
// Fixtures.

/// 2 MiB pages if the system has them, else 4 KiB; decided (and printed) once.
fn page_size() -> PageSize {
    static CHOICE: OnceLock<PageSize> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let choice = match DmaRegion::new_unmapped(2 << 20, PageSize::Huge2M) {
            Ok(_) => PageSize::Huge2M,
            Err(e) => {
                eprintln!("memory bench: no 2 MiB hugepages ({e}); using 4 KiB pages");
                PageSize::Small
            }
        };
        eprintln!("memory bench: regions use {choice} pages");
        choice
    })
}

fn new_pool(count: u32) -> BufferPool {
    BufferPool::new_unmapped(BUF_SIZE, count, page_size()).expect("buffer pool")
}

/// xorshift64: enough randomness to scatter buffers, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What every translation variant works on.
struct Translation {
    /// `ADDRS` buffers picked at random from a pool twice that size.
    bufs: Vec<DmaBuf>,
    /// Their addresses, in the same order.
    vas: Vec<u64>,
    region: DmaRegion,
    table: TwoLevelMap,
    pagemap: File,
    /// Whether pagemap showed real frame numbers (it does only as root).
    pfn_visible: bool,
    _pool: BufferPool,
}

impl Translation {
    fn new() -> Translation {
        let pool = new_pool(2 * ADDRS as u32);
        let mut all: Vec<DmaBuf> = std::iter::from_fn(|| pool.alloc().ok()).collect();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for i in (1..all.len()).rev() {
            all.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        all.truncate(ADDRS);
        let bufs = all;
        let vas: Vec<u64> = bufs.iter().map(|b| b.as_ptr() as u64).collect();
        let region = pool.region().clone();

        let mut table = TwoLevelMap::new();
        table.map(
            region.as_ptr() as u64,
            region.len() as u64,
            region.iova_offset(),
        );
        for (b, &va) in bufs.iter().zip(&vas) {
            assert_eq!(table.translate(va), Some(b.iova().get()));
            assert_eq!(region.iova_of(va as *const u8), Some(b.iova()));
        }

        let pagemap = File::open(PAGEMAP).expect("open /proc/self/pagemap");
        let entry = pagemap_entry(&pagemap, vas[0]);
        assert_ne!(entry & PRESENT, 0, "region pages are populated");
        let pfn_visible = entry & PFN_MASK != 0;
        eprintln!(
            "memory bench: pagemap PFNs {}",
            if pfn_visible {
                "visible (running privileged)"
            } else {
                "read as 0 (unprivileged); translations are wrong but cost the same pread"
            }
        );
        Translation {
            bufs,
            vas,
            region,
            table,
            pagemap,
            pfn_visible,
            _pool: pool,
        }
    }

    fn static_offset(&self) {
        for b in &self.bufs {
            black_box(b.iova());
        }
    }

    fn static_offset_iova_of(&self) {
        for &va in &self.vas {
            black_box(self.region.iova_of(black_box(va) as *const u8));
        }
    }

    fn two_level_table(&self) {
        for &va in &self.vas {
            black_box(self.table.translate(black_box(va)));
        }
    }

    fn pagemap_fd_kept(&self) {
        for &va in &self.vas {
            black_box(pagemap_translate(&self.pagemap, black_box(va)));
        }
    }

    fn pagemap_open_each(&self) {
        for &va in &self.vas {
            black_box(pagemap_translate_open(black_box(va)));
        }
    }
}

// ---------------------------------------------------------------------------
// Pool operations, one buffer (or one bulk) each.

#[inline]
fn alloc_free_shared(pool: &BufferPool) {
    let buf = pool.alloc().expect("pool exhausted");
    drop(black_box(buf));
}

#[inline]
fn alloc_free_cache(cache: &mut PoolCache) {
    let buf = cache.alloc().expect("pool exhausted");
    cache.free(black_box(buf)).expect("own buffer");
}

#[inline]
fn alloc_free_bulk(cache: &mut PoolCache, bufs: &mut Vec<DmaBuf>) {
    cache.alloc_bulk(BULK, bufs).expect("pool exhausted");
    cache.free_bulk(black_box(bufs));
}

#[derive(Clone, Copy)]
enum Path {
    Shared,
    Cache,
}

/// Runs `measure` while a second thread allocates and frees on `pool` the
/// same way, from before `measure` starts until it returns.
fn with_second_thread<R>(pool: &BufferPool, path: Path, measure: impl FnOnce() -> R) -> R {
    let stop = AtomicBool::new(false);
    let started = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut cache = pool.cache(CACHE);
            started.wait();
            while !stop.load(Ordering::Relaxed) {
                match path {
                    Path::Shared => alloc_free_shared(pool),
                    Path::Cache => alloc_free_cache(&mut cache),
                }
            }
        });
        started.wait();
        let result = measure();
        stop.store(true, Ordering::Relaxed);
        result
    })
}

// ---------------------------------------------------------------------------
// Criterion groups.

fn translate(c: &mut Criterion) {
    let t = Translation::new();
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(ADDRS as u64));
    g.bench_function("static_offset", |b| b.iter(|| t.static_offset()));
    g.bench_function("static_offset_iova_of", |b| {
        b.iter(|| t.static_offset_iova_of())
    });
    g.bench_function("two_level_table", |b| b.iter(|| t.two_level_table()));
    g.bench_function("pagemap_fd_kept", |b| b.iter(|| t.pagemap_fd_kept()));
    g.bench_function("pagemap_open_each", |b| b.iter(|| t.pagemap_open_each()));
    g.finish();
}

fn pool(c: &mut Criterion) {
    let pool = new_pool(8 * CACHE as u32);
    let mut g = c.benchmark_group("pool");
    g.throughput(Throughput::Elements(1));
    g.bench_function("alloc_free_shared", |b| b.iter(|| alloc_free_shared(&pool)));
    g.bench_function("alloc_free_cache", |b| {
        let mut cache = pool.cache(CACHE);
        b.iter(|| alloc_free_cache(&mut cache))
    });
    with_second_thread(&pool, Path::Shared, || {
        g.bench_function("alloc_free_shared_2t", |b| {
            b.iter(|| alloc_free_shared(&pool))
        });
    });
    with_second_thread(&pool, Path::Cache, || {
        g.bench_function("alloc_free_cache_2t", |b| {
            let mut cache = pool.cache(CACHE);
            b.iter(|| alloc_free_cache(&mut cache))
        });
    });
    g.throughput(Throughput::Elements(BULK as u64));
    g.bench_function("alloc_free_bulk32", |b| {
        let mut cache = pool.cache(CACHE);
        let mut bufs = Vec::with_capacity(BULK);
        b.iter(|| alloc_free_bulk(&mut cache, &mut bufs))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = translate, pool
}

// ---------------------------------------------------------------------------
// The ratio table: each variant timed with a plain loop, median of 5 runs.

/// Median over 5 runs of the time per operation, in nanoseconds, of `calls`
/// calls of `f`, each doing `ops` operations.
fn ns_per_op(calls: u64, ops: u64, mut f: impl FnMut()) -> f64 {
    for _ in 0..calls.div_ceil(10) {
        f();
    }
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_nanos() as f64 / (calls * ops) as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

fn print_table(title: &str, unit: &str, baseline: &str, rows: &[(&str, f64)]) {
    let base = rows
        .iter()
        .find(|r| r.0 == baseline)
        .expect("baseline row")
        .1;
    println!("| {title} | {unit} | vs `{baseline}` |");
    println!("|---|---:|---:|");
    for (name, ns) in rows {
        println!("| `{name}` | {ns:.2} | {:.1}x |", ns / base);
    }
    println!();
}

fn ratio(rows: &[(&str, f64)], a: &str, b: &str) -> String {
    let get = |n: &str| rows.iter().find(|r| r.0 == n).expect("row").1;
    format!("ratio {a}/{b} = {:.1}x", get(a) / get(b))
}

fn ratio_table() {
    const N: u64 = 2_000_000;
    let t = Translation::new();
    let per_call = ADDRS as u64;
    let translate = [
        (
            "static_offset",
            ns_per_op(N / per_call, per_call, || t.static_offset()),
        ),
        (
            "static_offset_iova_of",
            ns_per_op(N / per_call, per_call, || t.static_offset_iova_of()),
        ),
        (
            "two_level_table",
            ns_per_op(N / per_call, per_call, || t.two_level_table()),
        ),
        (
            "pagemap_fd_kept",
            ns_per_op(100, per_call, || t.pagemap_fd_kept()),
        ),
        (
            "pagemap_open_each",
            ns_per_op(20, per_call, || t.pagemap_open_each()),
        ),
    ];

    let pool = new_pool(8 * CACHE as u32);
    let mut cache = pool.cache(CACHE);
    let mut bufs = Vec::with_capacity(BULK);
    let shared_1t = ns_per_op(N, 1, || alloc_free_shared(&pool));
    let cache_1t = ns_per_op(N, 1, || alloc_free_cache(&mut cache));
    let bulk = ns_per_op(N / BULK as u64, BULK as u64, || {
        alloc_free_bulk(&mut cache, &mut bufs)
    });
    drop(cache);
    let shared_2t = with_second_thread(&pool, Path::Shared, || {
        ns_per_op(N, 1, || alloc_free_shared(&pool))
    });
    let cache_2t = with_second_thread(&pool, Path::Cache, || {
        let mut cache = pool.cache(CACHE);
        ns_per_op(N, 1, || alloc_free_cache(&mut cache))
    });
    let pool_rows = [
        ("alloc_free_shared", shared_1t),
        ("alloc_free_cache", cache_1t),
        ("alloc_free_bulk32", bulk),
        ("alloc_free_shared_2t", shared_2t),
        ("alloc_free_cache_2t", cache_2t),
    ];

    println!();
    println!(
        "Ratios measured in this run ({} pages, pagemap PFNs {}; {} CPUs):",
        page_size(),
        if t.pfn_visible {
            "visible"
        } else {
            "zero, unprivileged"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!();
    print_table("translation", "ns/translation", "static_offset", &translate);
    print_table(
        "pool operation",
        "ns/buffer (alloc+free)",
        "alloc_free_cache",
        &pool_rows,
    );
    for line in [
        ratio(&translate, "pagemap_fd_kept", "static_offset"),
        ratio(&translate, "pagemap_open_each", "static_offset"),
        ratio(&translate, "two_level_table", "static_offset"),
        ratio(&translate, "pagemap_fd_kept", "two_level_table"),
        ratio(&pool_rows, "alloc_free_shared", "alloc_free_cache"),
        ratio(&pool_rows, "alloc_free_cache", "alloc_free_bulk32"),
        ratio(&pool_rows, "alloc_free_shared_2t", "alloc_free_shared"),
        ratio(&pool_rows, "alloc_free_cache_2t", "alloc_free_cache"),
    ] {
        println!("- {line}");
    }
}


fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if benchmarking() {
        ratio_table();
    }
}
