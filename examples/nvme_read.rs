//! NVMe I/O benchmark in the manner of `spdk_nvme_perf`: one thread and one
//! queue pair per `--queues`, each keeping `--queue-depth` commands in
//! flight for `--time` seconds, latency in an HDR histogram.
//!
//! `cargo run --release --example nvme_read -- --queue-depth 32 --io-size 4096`
//!
//! Without a controller bound to vfio-pci it runs in the QEMU test guest.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Args;
use fastlane::framework::{BufferPool, DmaBuf, PageSize, Vfio};
use fastlane::nvme::{pattern, Controller, Namespace, NvmeError, Options};
use hdrhistogram::Histogram;

const USAGE: &str = "usage: nvme_read [options]

  --device BDF          NVMe controller bound to vfio-pci (default: $FASTLANE_NVME,
                        else the first NVMe bound to vfio-pci, else the QEMU guest)
  --nsid N              namespace (default 1)
  --queue-depth N       commands in flight per queue (default 32)
  --io-size BYTES       bytes per command, a multiple of the block size (default 4096)
  --pattern rand|seq    access pattern (default rand)
  --workload read|write|verify
                        read: plain reads; write: writes the verification pattern;
                        verify: reads and checks the pattern a write run left (default read)
  --time SECONDS        run time (default 10)
  --queues N            queue pairs, one thread each (default 1)
  --blocks N            limit the LBA range to the first N blocks (default: all)
  --seed N              pattern seed for write/verify (default 1)
  --shadow-doorbells    use shadow doorbells (Doorbell Buffer Config) when supported
  --json                print the result as one JSON object
  --quiet               no progress line

The write pattern (fastlane_nvme::pattern): every block starts with its LBA
and the seed (little endian u64 each), then bytes derived from both.";

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Read,
    Write,
    Verify,
}

#[derive(Clone)]
struct Config {
    depth: u16,
    io_size: usize,
    random: bool,
    workload: Workload,
    time: Duration,
    queues: u16,
    blocks: u64,
    seed: u64,
}

#[derive(Default)]
struct Counters {
    ios: AtomicU64,
    errors: AtomicU64,
    mismatches: AtomicU64,
    resubmitted: AtomicU64,
}

struct WorkerResult {
    hist: Histogram<u64>,
    ios: u64,
    doorbell_writes: u64,
}

fn main() {
    let args = Args::parse(USAGE, &["json", "quiet", "shadow-doorbells"]);
    args.only(
        USAGE,
        &["device", "nsid", "queue-depth", "io-size", "pattern", "workload", "time", "queues", "blocks", "seed", "json", "quiet", "shadow-doorbells"],
    );
    let Some(dev) = common::nvme_device(&args) else {
        common::run_in_guest("nvme_read", &args);
    };
    let workload = match args.str("workload").unwrap_or("read") {
        "read" => Workload::Read,
        "write" => Workload::Write,
        "verify" => Workload::Verify,
        w => common::fail(USAGE, &format!("--workload {w:?}: read, write or verify")),
    };
    let random = match args.str("pattern").unwrap_or("rand") {
        "rand" => true,
        "seq" => false,
        p => common::fail(USAGE, &format!("--pattern {p:?}: rand or seq")),
    };
    let cfg = Config {
        depth: args.get(USAGE, "queue-depth", 32u16),
        io_size: args.get(USAGE, "io-size", 4096usize),
        random,
        workload,
        time: Duration::from_secs_f64(args.get(USAGE, "time", 10.0f64)),
        queues: args.get(USAGE, "queues", 1u16),
        blocks: args.get(USAGE, "blocks", 0u64),
        seed: args.get(USAGE, "seed", 1u64),
    };
    let nsid = args.get(USAGE, "nsid", 1u32);
    match run(&dev, nsid, cfg, args.flag("shadow-doorbells"), args.flag("json"), args.flag("quiet")) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn run(dev: &str, nsid: u32, mut cfg: Config, shadow: bool, json: bool, quiet: bool) -> Result<bool, Box<dyn std::error::Error>> {
    if cfg.depth == 0 || cfg.queues == 0 {
        return Err("--queue-depth and --queues must be at least 1".into());
    }
    let vfio = Vfio::new()?;
    let opts = Options {
        io_queues: cfg.queues,
        shadow_doorbells: shadow,
        ..Options::default()
    };
    let ctrl = Arc::new(Controller::open(&vfio, dev, opts)?);
    let ns = ctrl.namespace(nsid)?;
    let bs = ns.block_size as usize;
    if cfg.io_size == 0 || !cfg.io_size.is_multiple_of(bs) {
        return Err(format!("--io-size must be a multiple of the {bs}-byte block size").into());
    }
    if cfg.io_size > ctrl.info().max_transfer {
        return Err(format!("--io-size above the controller's {} byte maximum (MDTS)", ctrl.info().max_transfer).into());
    }
    if cfg.queues > ctrl.info().io_queues {
        return Err(format!("--queues {}: the controller granted {}", cfg.queues, ctrl.info().io_queues).into());
    }
    if cfg.blocks == 0 || cfg.blocks > ns.blocks {
        cfg.blocks = ns.blocks;
    }
    let io_blocks = (cfg.io_size / bs) as u64;
    let slots_per_queue = cfg.blocks / io_blocks / cfg.queues as u64;
    if slots_per_queue < cfg.depth as u64 {
        return Err("LBA range too small for this many commands in flight".into());
    }
    if !json {
        println!(
            "{} {} ({}), namespace {}: {} blocks of {} bytes",
            dev, ctrl.info().model, ctrl.info().serial, ns.id, ns.blocks, bs
        );
        println!(
            "{} {} bytes, queue depth {}, {} queue(s), {:.0} s",
            match cfg.workload { Workload::Read => "read", Workload::Write => "write", Workload::Verify => "verify" },
            cfg.io_size, cfg.depth, cfg.queues, cfg.time.as_secs_f64()
        );
    }
    let counters: Arc<Vec<Counters>> = Arc::new((0..cfg.queues).map(|_| Counters::default()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..cfg.queues)
        .map(|q| {
            let (vfio, ctrl, cfg, counters, stop) = (vfio.clone(), ctrl.clone(), cfg.clone(), counters.clone(), stop.clone());
            std::thread::spawn(move || -> Result<WorkerResult, String> {
                let first = q as u64 * slots_per_queue;
                worker(&vfio, &ctrl, ns, &cfg, first, slots_per_queue, &counters[q as usize], &stop)
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut last = (start, 0u64);
    while start.elapsed() < cfg.time && !workers.iter().all(|w| w.is_finished()) {
        std::thread::sleep(Duration::from_millis(100).min(cfg.time.saturating_sub(start.elapsed())));
        if !quiet && last.0.elapsed() >= Duration::from_secs(1) {
            let ios: u64 = counters.iter().map(|c| c.ios.load(Ordering::Relaxed)).sum();
            let dt = last.0.elapsed().as_secs_f64();
            let iops = (ios - last.1) as f64 / dt;
            eprintln!(
                "[{:5.1} s] {:>10.0} IOPS {:>9.2} MiB/s",
                start.elapsed().as_secs_f64(),
                iops,
                iops * cfg.io_size as f64 / (1 << 20) as f64
            );
            last = (Instant::now(), ios);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3)?;
    let mut ios = 0;
    let mut doorbells = 0;
    for w in workers {
        let r = w.join().map_err(|_| "worker panicked")??;
        hist.add(&r.hist)?;
        ios += r.ios;
        doorbells += r.doorbell_writes;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let errors: u64 = counters.iter().map(|c| c.errors.load(Ordering::Relaxed)).sum();
    let mismatches: u64 = counters.iter().map(|c| c.mismatches.load(Ordering::Relaxed)).sum();
    let resubmitted: u64 = counters.iter().map(|c| c.resubmitted.load(Ordering::Relaxed)).sum();
    let iops = ios as f64 / elapsed;
    let mibs = iops * cfg.io_size as f64 / (1 << 20) as f64;
    let us = |ns: u64| ns as f64 / 1000.0;
    if json {
        println!(
            "{{\"device\":\"{dev}\",\"io_size\":{},\"queue_depth\":{},\"queues\":{},\"ios\":{ios},\"seconds\":{elapsed:.3},\"iops\":{iops:.1},\"mib_per_s\":{mibs:.2},\"lat_us\":{{\"avg\":{:.2},\"p50\":{:.2},\"p99\":{:.2},\"p99_9\":{:.2},\"max\":{:.2}}},\"errors\":{errors},\"mismatches\":{mismatches},\"resubmitted\":{resubmitted},\"doorbell_writes_per_io\":{:.3}}}",
            cfg.io_size, cfg.depth, cfg.queues,
            hist.mean() / 1000.0, us(hist.value_at_quantile(0.5)), us(hist.value_at_quantile(0.99)),
            us(hist.value_at_quantile(0.999)), us(hist.max()),
            doorbells as f64 / ios.max(1) as f64
        );
    } else {
        println!("{:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}", "IOPS", "MiB/s", "avg us", "p50 us", "p99 us", "p99.9 us", "max us");
        println!(
            "{iops:>12.0} {mibs:>12.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            hist.mean() / 1000.0, us(hist.value_at_quantile(0.5)), us(hist.value_at_quantile(0.99)),
            us(hist.value_at_quantile(0.999)), us(hist.max())
        );
        println!(
            "{ios} I/Os in {elapsed:.2} s, {errors} errors, {mismatches} verify mismatches, {resubmitted} resubmitted after reset, {:.2} doorbell writes per I/O",
            doorbells as f64 / ios.max(1) as f64
        );
    }
    Ok(errors == 0 && mismatches == 0 && ios > 0)
}

/// Picks LBAs: random io-aligned slots or sequential, within the queue's range.
struct Lbas {
    first: u64,
    slots: u64,
    io_blocks: u64,
    random: bool,
    next: u64,
    rng: u64,
}

impl Lbas {
    fn next(&mut self) -> u64 {
        let slot = if self.random {
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % self.slots
        } else {
            let s = self.next;
            self.next = (self.next + 1) % self.slots;
            s
        };
        (self.first + slot) * self.io_blocks
    }
}

#[allow(clippy::too_many_arguments)]
fn worker(
    vfio: &Vfio,
    ctrl: &Controller,
    ns: Namespace,
    cfg: &Config,
    first_slot: u64,
    slots: u64,
    counters: &Counters,
    stop: &AtomicBool,
) -> Result<WorkerResult, Box<dyn std::error::Error>> {
    let bs = ns.block_size as usize;
    let io_blocks = (cfg.io_size / bs) as u32;
    let depth = cfg.depth as usize;
    let pool = BufferPool::new(vfio, cfg.io_size, cfg.depth as u32, PageSize::Huge2M)?;
    let qdepth = (cfg.depth + 1).max(2);
    let mut qp = ctrl.create_qpair(qdepth)?;
    let mut lbas = Lbas {
        first: first_slot,
        slots,
        io_blocks: io_blocks as u64,
        random: cfg.random,
        next: 0,
        rng: 0x9E37_79B9_7F4A_7C15 ^ (first_slot + 1),
    };
    let mut hist = Histogram::<u64>::new(3)?;
    let mut started = vec![Instant::now(); depth];
    let mut slot_lba = vec![0u64; depth];
    let mut scratch = vec![0u8; cfg.io_size];
    let mut ready: Vec<(usize, DmaBuf)> = Vec::with_capacity(depth);
    for i in 0..depth {
        ready.push((i, pool.alloc()?));
    }
    let mut ios = 0u64;
    let mut stopping = false;
    let mut done: Vec<(usize, DmaBuf, Result<(), NvmeError>, Instant)> = Vec::with_capacity(depth);
    loop {
        if !stopping {
            for (tag, mut buf) in ready.drain(..) {
                let lba = lbas.next();
                slot_lba[tag] = lba;
                if cfg.workload == Workload::Write {
                    pattern::fill(&mut scratch, bs, lba, cfg.seed);
                    buf.write(0, &scratch)?;
                }
                started[tag] = Instant::now();
                let r = match cfg.workload {
                    Workload::Write => qp.write(ns.id, lba, io_blocks, buf, tag as u64),
                    _ => qp.read(ns.id, lba, io_blocks, buf, tag as u64),
                };
                if let Err(rej) = r {
                    return Err(format!("submit: {}", rej.error).into());
                }
            }
            qp.submit();
        }
        qp.poll(depth, |c| {
            let buf = c.buf.expect("read/write completions carry their buffer");
            done.push((c.tag as usize, buf, c.result, Instant::now()));
        });
        let n_done = done.len() as u64;
        for (tag, buf, result, at) in done.drain(..) {
            match result {
                Ok(()) => {
                    let _ = hist.record(at.duration_since(started[tag]).as_nanos() as u64);
                    ios += 1;
                    if cfg.workload == Workload::Verify {
                        buf.read(0, &mut scratch)?;
                        if let Err((lba, off)) = pattern::check(&scratch, bs, slot_lba[tag], cfg.seed) {
                            if counters.mismatches.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("verify: block {lba} differs at byte {off}");
                            }
                        }
                    }
                }
                Err(NvmeError::Reset) => {
                    counters.resubmitted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if counters.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("I/O at LBA {} failed: {e}", slot_lba[tag]);
                    }
                }
            }
            ready.push((tag, buf));
        }
        if n_done > 0 {
            counters.ios.store(ios, Ordering::Relaxed);
        }
        if !stopping && stop.load(Ordering::Relaxed) {
            stopping = true;
        }
        if stopping && qp.outstanding() == 0 {
            break;
        }
    }
    Ok(WorkerResult {
        hist,
        ios,
        doorbell_writes: qp.stats().doorbell_writes,
    })
}
