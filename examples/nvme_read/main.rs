//! NVMe I/O benchmark in the manner of `spdk_nvme_perf`: one thread and one
//! queue pair per `--queues` on each `--device`, each keeping
//! `--queue-depth` commands in flight for `--time` seconds, or for an exact
//! number of I/Os (`--count`, `--passes`); latency in an HDR histogram.
//!
//! `cargo run --release --example nvme_read -- --queue-depth 32 --io-size 4096`
//!
//! Without a controller bound to vfio-pci it runs in the QEMU test guest.

#[path = "../common/mod.rs"]
mod common;
mod plan;
mod report;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use common::{args, UsageError};
use fastlane::framework::{PciAddress, Vfio};
use fastlane::nvme::qpair::DoorbellOrder;
use fastlane::nvme::spec::SglSupport;
use fastlane::nvme::{Controller, DataPointer, Namespace, Options, QueueSize};

use plan::{Order, Plan, Range};
use worker::{Counters, Job, Source, WorkerResult};

/// NVMe I/O benchmark: per queue pair (one thread each), keeps
/// --queue-depth commands in flight for --time seconds (or for exactly
/// --count I/Os, or --passes over the range) and prints IOPS, MiB/s and
/// latency percentiles.
#[derive(Parser)]
#[command(
    name = "nvme_read",
    after_help = "The write pattern (fastlane_nvme::pattern): every block starts with its LBA\n\
                  and the seed (little endian u64 each), then bytes derived from both.\n\
                  Verify sorts each mismatching block: absent (no header of this seed: never\n\
                  written with it), misplaced (the header names another LBA), corrupt (header\n\
                  right, data wrong), and lists the lowest LBAs of each.\n\
                  The range is --blocks from --start-lba, cut into whole I/Os of --io-size;\n\
                  blocks after the last whole I/O (the tail) are not touched, and the\n\
                  output says how many.\n\
                  Exit status: 0 done, 1 errors or verify mismatches, 2 usage, 3 a controller\n\
                  was removed (hot unplug) during the run: the report covers what completed."
)]
struct Cli {
    /// NVMe controller(s) bound to vfio-pci, comma-separated; each runs
    /// --queues threads of its own (default: $FASTLANE_NVME, else the
    /// first NVMe bound to vfio-pci, else the QEMU guest)
    #[arg(long, value_name = "BDF[,BDF...]", value_parser = plan::devices)]
    device: Option<plan::Devices>,
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
    /// Access pattern: rand (timed runs: random slots; --count/--passes: a
    /// seeded permutation of the range per pass) or seq
    #[arg(long, value_enum, default_value = "rand")]
    pattern: Pattern,
    /// read: plain reads; write: writes the verification pattern; verify:
    /// reads and checks the pattern a write run left
    #[arg(long, value_enum, default_value = "read")]
    workload: Workload,
    /// Percent of I/Os that are reads, the rest writes of the pattern (like
    /// spdk_nvme_perf -M; default 100, 0 for --workload write); with verify,
    /// the reads are checked
    #[arg(long, value_name = "P", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u8>(s, 0, 100))]
    read_percent: Option<u8>,
    /// Run time in seconds
    #[arg(long, value_name = "SECONDS", default_value = "10", allow_hyphen_values = true,
          value_parser = args::duration, conflicts_with_all = ["count", "passes"])]
    time: Duration,
    /// Exactly N I/Os per device, then stop (instead of --time)
    #[arg(long, value_name = "N", allow_hyphen_values = true, conflicts_with = "passes",
          value_parser = |s: &str| args::int_in::<u64>(s, 1, u64::MAX))]
    count: Option<u64>,
    /// Cover the range exactly N times per device, then stop (instead of
    /// --time): every whole I/O of the range once per pass
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 1, u64::MAX))]
    passes: Option<u64>,
    /// Queue pairs per device, one thread each
    #[arg(long, value_name = "N", default_value = "1", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u16>(s, 1, u16::MAX.into()))]
    queues: u16,
    /// First LBA of the range
    #[arg(long, value_name = "LBA", default_value = "0", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 0, u64::MAX))]
    start_lba: u64,
    /// Blocks in the range from --start-lba (0: up to the namespace's end)
    #[arg(long, value_name = "N", default_value = "0", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 0, u64::MAX))]
    blocks: u64,
    /// Pattern seed for write/verify (and the shuffle of --pattern rand with
    /// --count/--passes)
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
    /// Doorbell order after a poll that found completions: sq-first (the
    /// next submission's SQ tail, then the CQ head), cq-first (the CQ head
    /// at the end of the poll), or auto (the driver's default: sq-first
    /// unless --queue-size leaves the completion queue no room for it)
    #[arg(long, value_enum, default_value = "auto")]
    doorbell_order: DoorbellOrderArg,
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
enum DoorbellOrderArg {
    Auto,
    SqFirst,
    CqFirst,
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

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::Verify => "verify",
        }
    }
}

fn queue_size(q: QueueSizeArg) -> QueueSize {
    match q {
        QueueSizeArg::Spare => QueueSize::Spare,
        QueueSizeArg::Minimal => QueueSize::Minimal,
        QueueSizeArg::Maximum => QueueSize::Maximum,
    }
}

/// One controller of the run, open and planned.
struct Device {
    addr: String,
    ctrl: Arc<Controller>,
    ns: Namespace,
    range: Range,
    /// I/Os in all (exact runs).
    total: Option<u64>,
    /// Commands per I/O (more than one above MDTS).
    per_io: usize,
    /// The queue pair's size argument: commands in flight + 1, checked
    /// against the controller.
    entries: u16,
    /// Reads and writes carry an SGL (else PRPs).
    sgl: bool,
    /// Entries of each I/O queue as created (`--queue-size`).
    queue_entries: u16,
}

fn main() {
    // Every option is checked here, before looking for a device (or
    // starting the guest).
    let cli = Cli::parse();
    let devs: Vec<String> = match &cli.device {
        Some(d) => d.0.iter().map(PciAddress::to_string).collect(),
        None => match common::nvme_device(None) {
            Some(d) => vec![d],
            None => common::run_in_guest("nvme_read", &common::raw_args()),
        },
    };
    let opts = Options {
        io_queues: cli.queues,
        shadow_doorbells: cli.shadow_doorbells,
        data_pointer: match cli.data_mode {
            DataMode::Auto => DataPointer::Auto,
            DataMode::Prp => DataPointer::Prp,
            DataMode::Sgl => DataPointer::Sgl,
        },
        queue_size: queue_size(cli.queue_size),
        ..Options::default()
    };
    match run(&cli, &devs, opts) {
        Ok(Outcome::Ok) => {}
        Ok(Outcome::Failed) => std::process::exit(1),
        Ok(Outcome::Removed) => std::process::exit(EXIT_REMOVED),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(common::exit_code(&*e));
        }
    }
}

/// Opens `addr` and checks the options against it.
fn open(
    vfio: &Vfio,
    addr: &str,
    cli: &Cli,
    opts: &Options,
) -> Result<Device, Box<dyn std::error::Error>> {
    let ctrl = Arc::new(Controller::open(vfio, addr, opts.clone())?);
    let ns = ctrl.namespace(cli.nsid)?;
    let bs = ns.block_size as usize;
    let usage =
        |m: String| -> Box<dyn std::error::Error> { UsageError(format!("{addr}: {m}")).into() };
    if !cli.io_size.is_multiple_of(bs) {
        return Err(usage(format!(
            "--io-size must be a multiple of the {bs}-byte block size"
        )));
    }
    // Above MDTS the driver splits an I/O into commands of at most MDTS.
    let per_io = cli.io_size.div_ceil(ctrl.info().max_transfer);
    let commands = per_io
        .checked_mul(usize::from(cli.queue_depth))
        .and_then(|c| u16::try_from(c).ok())
        .ok_or_else(|| usage("--queue-depth x commands per I/O above 65534".into()))?;
    let entries = args::queue_entries(commands, ctrl.info().max_queue_entries).map_err(usage)?;
    if cli.queues > ctrl.info().io_queues {
        return Err(usage(format!(
            "--queues {}: the controller granted {}",
            cli.queues,
            ctrl.info().io_queues
        )));
    }
    let range = Range::new(
        ns.blocks,
        cli.start_lba,
        cli.blocks,
        (cli.io_size / bs) as u64,
    )
    .map_err(usage)?;
    let total = plan::total_ios(cli.count, cli.passes, range.slots()).map_err(usage)?;
    if total.is_none() && range.slots() < u64::from(cli.queues) {
        return Err(usage(format!(
            "the range holds {} I/O(s) of {} bytes, fewer than --queues {}",
            range.slots(),
            cli.io_size,
            cli.queues
        )));
    }
    let sgl = opts.data_pointer != DataPointer::Prp && ctrl.info().sgl != SglSupport::None;
    let queue_entries = opts
        .queue_size
        .entries(entries, ctrl.info().max_queue_entries.min(65535) as u16);
    Ok(Device {
        addr: addr.to_string(),
        ctrl,
        ns,
        range,
        total,
        per_io,
        entries,
        sgl,
        queue_entries,
    })
}

/// The reads' share, by option or workload.
fn read_percent(cli: &Cli) -> u8 {
    cli.read_percent
        .unwrap_or(if cli.workload == Workload::Write {
            0
        } else {
            100
        })
}

fn run(cli: &Cli, addrs: &[String], opts: Options) -> Result<Outcome, Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let mut devs = Vec::with_capacity(addrs.len());
    for a in addrs {
        devs.push(open(&vfio, a, cli, &opts)?);
    }
    let read_percent = read_percent(cli);
    let exact = cli.count.is_some() || cli.passes.is_some();
    if !cli.json {
        for d in &devs {
            report::print_device_header(cli, d, read_percent, &opts);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // Per device, per queue: the thread and its counters.
    let mut threads = Vec::new();
    let mut all_counters = Vec::new();
    for (di, d) in devs.iter().enumerate() {
        for q in 0..cli.queues {
            let source = match d.total {
                Some(total) => Source::Exact {
                    plan: Plan {
                        range: d.range,
                        order: if cli.pattern == Pattern::Rand {
                            Order::Shuffled
                        } else {
                            Order::Sequential
                        },
                        seed: cli.seed,
                        total,
                        read_percent,
                    },
                    first: u64::from(q),
                    step: u64::from(cli.queues),
                },
                None => {
                    let (lo, hi) =
                        plan::share(d.range.slots(), u64::from(cli.queues), u64::from(q));
                    Source::Timed {
                        range: d.range,
                        lo,
                        hi,
                        random: cli.pattern == Pattern::Rand,
                        read_percent,
                    }
                }
            };
            let job = Job {
                depth: cli.queue_depth,
                entries: d.entries,
                io_size: cli.io_size,
                verify: cli.workload == Workload::Verify,
                seed: cli.seed,
                source,
                doorbell_order: match cli.doorbell_order {
                    DoorbellOrderArg::Auto => None,
                    DoorbellOrderArg::SqFirst => Some(DoorbellOrder::SqFirst),
                    DoorbellOrderArg::CqFirst => Some(DoorbellOrder::CqFirst),
                },
            };
            let counters = Arc::new(Counters::default());
            all_counters.push(counters.clone());
            let (vfio, ctrl, ns, stop) = (vfio.clone(), d.ctrl.clone(), d.ns, stop.clone());
            let h = std::thread::spawn(move || -> Result<WorkerResult, String> {
                worker::run(&vfio, &ctrl, ns, &job, &counters, &stop).map_err(|e| e.to_string())
            });
            threads.push((di, h));
        }
    }
    let mut last = (start, 0u64);
    let tick = Duration::from_millis(100);
    while (exact || start.elapsed() < cli.time) && !threads.iter().all(|(_, h)| h.is_finished()) {
        let wait = if exact {
            tick
        } else {
            tick.min(cli.time.saturating_sub(start.elapsed()))
        };
        std::thread::sleep(wait);
        if !cli.quiet && last.0.elapsed() >= Duration::from_secs(1) {
            let ios: u64 = all_counters
                .iter()
                .map(|c| c.ios.load(Ordering::Relaxed))
                .sum();
            let dt = last.0.elapsed().as_secs_f64();
            let iops = (ios - last.1) as f64 / dt;
            eprintln!(
                "[{:5.1} s] {:>10.0} IOPS {:>9.2} MiB/s",
                start.elapsed().as_secs_f64(),
                iops,
                iops * cli.io_size as f64 / (1 << 20) as f64
            );
            last = (Instant::now(), ios);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut per_dev: Vec<Vec<WorkerResult>> = devs.iter().map(|_| Vec::new()).collect();
    let mut failed = None;
    for (di, h) in threads {
        match h.join() {
            Ok(Ok(r)) => per_dev[di].push(r),
            Ok(Err(e)) => failed = Some(format!("{}: {e}", devs[di].addr)),
            Err(_) => failed = Some(format!("{}: worker panicked", devs[di].addr)),
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    let rep = report::Report::new(cli, &devs, &per_dev, start, read_percent)?;
    if cli.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        rep.print_text();
    }
    Ok(if rep.removed() {
        Outcome::Removed
    } else if rep.ok() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

/// Exit status when a controller was removed (hot unplug) during the run:
/// the report covers what completed before.
const EXIT_REMOVED: i32 = 3;

/// How a run ended.
enum Outcome {
    /// I/O done, no errors, no mismatches.
    Ok,
    /// Errors or verify mismatches (exit 1).
    Failed,
    /// A controller was removed during the run ([`EXIT_REMOVED`]).
    Removed,
}
