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

use clap::{Parser, ValueEnum};
use common::{args, UsageError};
use fastlane::framework::{BufferPool, DmaBuf, PageSize, PciAddress, Vfio};
use fastlane::nvme::spec::SglSupport;
use fastlane::nvme::{pattern, Controller, DataPointer, Namespace, NvmeError, Options, QueueSize};
use hdrhistogram::Histogram;

/// NVMe I/O benchmark: per queue pair (one thread each), keeps
/// --queue-depth commands in flight for --time seconds and prints IOPS,
/// MiB/s and latency percentiles.
#[derive(Parser)]
#[command(
    name = "nvme_read",
    after_help = "The write pattern (fastlane_nvme::pattern): every block starts with its LBA\n\
                  and the seed (little endian u64 each), then bytes derived from both."
)]
struct Cli {
    /// NVMe controller bound to vfio-pci (default: $FASTLANE_NVME, else the
    /// first NVMe bound to vfio-pci, else the QEMU guest)
    #[arg(long, value_name = "BDF", value_parser = args::pci_address)]
    device: Option<PciAddress>,
    /// Namespace
    #[arg(long, value_name = "N", default_value = "1", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u32>(s, 1, u32::MAX.into()))]
    nsid: u32,
    /// Commands in flight per queue (at most the controller's CAP.MQES)
    #[arg(long, value_name = "N", default_value = "32", allow_hyphen_values = true,
          value_parser = args::queue_depth)]
    queue_depth: u16,
    /// Bytes per command, a multiple of the block size
    #[arg(long, value_name = "BYTES", default_value = "4096", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<usize>(s, 1, u32::MAX.into()))]
    io_size: usize,
    /// Access pattern
    #[arg(long, value_enum, default_value = "rand")]
    pattern: Pattern,
    /// read: plain reads; write: writes the verification pattern; verify:
    /// reads and checks the pattern a write run left
    #[arg(long, value_enum, default_value = "read")]
    workload: Workload,
    /// Run time in seconds
    #[arg(long, value_name = "SECONDS", default_value = "10", allow_hyphen_values = true,
          value_parser = args::duration)]
    time: Duration,
    /// Queue pairs, one thread each
    #[arg(long, value_name = "N", default_value = "1", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u16>(s, 1, u16::MAX.into()))]
    queues: u16,
    /// Limit the LBA range to the first N blocks (0: all)
    #[arg(long, value_name = "N", default_value = "0", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 0, u64::MAX))]
    blocks: u64,
    /// Pattern seed for write/verify
    #[arg(long, value_name = "N", default_value = "1", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 0, u64::MAX))]
    seed: u64,
    /// Use shadow doorbells (Doorbell Buffer Config) when supported
    #[arg(long)]
    shadow_doorbells: bool,
    /// Data pointer of reads and writes: auto (one inline SGL descriptor when
    /// the controller supports SGLs, else PRPs), prp, or sgl
    #[arg(long, value_enum, default_value = "auto")]
    data_mode: DataMode,
    /// Entries of each I/O queue: spare (max(2 x depth, 256), at most the
    /// controller's maximum: the completion queue never fills), minimal
    /// (depth + 1), or maximum (CAP.MQES + 1)
    #[arg(long, value_enum, default_value = "spare")]
    queue_size: QueueSizeArg,
    /// Print the result as one JSON object
    #[arg(long)]
    json: bool,
    /// No progress line
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Pattern {
    Rand,
    Seq,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum DataMode {
    Auto,
    Prp,
    Sgl,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum QueueSizeArg {
    Spare,
    Minimal,
    Maximum,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Workload {
    Read,
    Write,
    Verify,
}

#[derive(Clone)]
struct Config {
    /// Commands in flight per queue.
    depth: u16,
    /// The queue pair's depth argument: commands in flight (depth times the
    /// commands of one I/O) + 1, checked against the controller.
    entries: u16,
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
    // Every option is checked here, before looking for a device (or
    // starting the guest).
    let cli = Cli::parse();
    let Some(dev) = common::nvme_device(cli.device) else {
        common::run_in_guest("nvme_read", &common::raw_args());
    };
    let cfg = Config {
        depth: cli.queue_depth,
        entries: 0,
        io_size: cli.io_size,
        random: cli.pattern == Pattern::Rand,
        workload: cli.workload,
        time: cli.time,
        queues: cli.queues,
        blocks: cli.blocks,
        seed: cli.seed,
    };
    let opts = Options {
        io_queues: cli.queues,
        shadow_doorbells: cli.shadow_doorbells,
        data_pointer: match cli.data_mode {
            DataMode::Auto => DataPointer::Auto,
            DataMode::Prp => DataPointer::Prp,
            DataMode::Sgl => DataPointer::Sgl,
        },
        queue_size: match cli.queue_size {
            QueueSizeArg::Spare => QueueSize::Spare,
            QueueSizeArg::Minimal => QueueSize::Minimal,
            QueueSizeArg::Maximum => QueueSize::Maximum,
        },
        ..Options::default()
    };
    match run(&dev, cli.nsid, cfg, opts, cli.json, cli.quiet) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(common::exit_code(&*e));
        }
    }
}

fn run(dev: &str, nsid: u32, mut cfg: Config, opts: Options, json: bool, quiet: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let (shadow, data_mode, queue_size) = (opts.shadow_doorbells, opts.data_pointer, opts.queue_size);
    let ctrl = Arc::new(Controller::open(&vfio, dev, opts)?);
    let ns = ctrl.namespace(nsid)?;
    let bs = ns.block_size as usize;
    if cfg.io_size == 0 || !cfg.io_size.is_multiple_of(bs) {
        return Err(UsageError(format!("--io-size must be a multiple of the {bs}-byte block size")).into());
    }
    // Above MDTS the driver splits an I/O into commands of at most MDTS.
    let per_io = cfg.io_size.div_ceil(ctrl.info().max_transfer);
    let commands = u16::try_from(per_io * usize::from(cfg.depth))
        .map_err(|_| UsageError("--queue-depth x commands per I/O above 65534".into()))?;
    cfg.entries = args::queue_entries(commands, ctrl.info().max_queue_entries).map_err(UsageError)?;
    if cfg.queues > ctrl.info().io_queues {
        return Err(UsageError(format!("--queues {}: the controller granted {}", cfg.queues, ctrl.info().io_queues)).into());
    }
    if cfg.blocks == 0 || cfg.blocks > ns.blocks {
        cfg.blocks = ns.blocks;
    }
    let io_blocks = (cfg.io_size / bs) as u64;
    let slots_per_queue = cfg.blocks / io_blocks / u64::from(cfg.queues);
    if slots_per_queue < u64::from(cfg.depth) {
        return Err(UsageError("LBA range too small for this many commands in flight".into()).into());
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
        let sgl = data_mode != DataPointer::Prp && ctrl.info().sgl != SglSupport::None;
        println!(
            "data pointer {} (controller SGL support {:?}), {} command(s) per I/O, queues of {} entries ({queue_size:?}), shadow doorbells {}",
            if sgl { "SGL" } else { "PRP" },
            ctrl.info().sgl,
            per_io,
            queue_size.entries(cfg.entries, ctrl.info().max_queue_entries.min(65535) as u16),
            if shadow { "on" } else { "off" }
        );
    }
    let counters: Arc<Vec<Counters>> = Arc::new((0..cfg.queues).map(|_| Counters::default()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..cfg.queues)
        .map(|q| {
            let (vfio, ctrl, cfg, counters, stop) = (vfio.clone(), ctrl.clone(), cfg.clone(), counters.clone(), stop.clone());
            std::thread::spawn(move || -> Result<WorkerResult, String> {
                let first = u64::from(q) * slots_per_queue;
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
    let sgl = data_mode != DataPointer::Prp && ctrl.info().sgl != SglSupport::None;
    let entries = queue_size.entries(cfg.entries, ctrl.info().max_queue_entries.min(65535) as u16);
    let errors: u64 = counters.iter().map(|c| c.errors.load(Ordering::Relaxed)).sum();
    let mismatches: u64 = counters.iter().map(|c| c.mismatches.load(Ordering::Relaxed)).sum();
    let resubmitted: u64 = counters.iter().map(|c| c.resubmitted.load(Ordering::Relaxed)).sum();
    let iops = ios as f64 / elapsed;
    let mibs = iops * cfg.io_size as f64 / (1 << 20) as f64;
    let us = |ns: u64| ns as f64 / 1000.0;
    if json {
        println!(
            "{{\"device\":\"{dev}\",\"io_size\":{},\"queue_depth\":{},\"queues\":{},\"ios\":{ios},\"seconds\":{elapsed:.3},\"iops\":{iops:.1},\"mib_per_s\":{mibs:.2},\"lat_us\":{{\"avg\":{:.2},\"p50\":{:.2},\"p99\":{:.2},\"p99_9\":{:.2},\"max\":{:.2}}},\"errors\":{errors},\"mismatches\":{mismatches},\"resubmitted\":{resubmitted},\"doorbell_writes_per_io\":{:.3},\"commands_per_io\":{per_io},\"sgl\":{sgl},\"queue_entries\":{entries}}}",
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
    let io_blocks = u32::try_from(cfg.io_size / bs)?;
    let depth = usize::from(cfg.depth);
    let pool = BufferPool::new(vfio, cfg.io_size, u32::from(cfg.depth), PageSize::Huge2M)?;
    let mut qp = ctrl.create_qpair(cfg.entries)?;
    let mut lbas = Lbas {
        first: first_slot,
        slots,
        io_blocks: u64::from(io_blocks),
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
