//! The results, per device and in total: one structure printed either as
//! text or (`--json`) as one JSON object carrying the same facts. The
//! top-level fields are the totals, named as before multi-device runs, so
//! scripts reading `ios`, `iops`, `errors`, `mismatches` keep working.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::plan::{Class, Mismatches};
use crate::worker::WorkerResult;
use crate::{Cli, Device, Workload};
use fastlane::nvme::Options;

/// Latency percentiles in µs.
#[derive(Serialize)]
pub struct Latency {
    avg: f64,
    p50: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        // µs with two decimals, as the text shows them.
        let us = |ns: f64| (ns / 10.0).round() / 100.0;
        Latency {
            avg: us(h.mean()),
            p50: us(h.value_at_quantile(0.5) as f64),
            p99: us(h.value_at_quantile(0.99) as f64),
            p99_9: us(h.value_at_quantile(0.999) as f64),
            max: us(h.max() as f64),
        }
    }
}

/// One mismatch class: count and the lowest LBAs.
#[derive(Serialize)]
pub struct ClassReport {
    count: u64,
    first: Vec<Entry>,
}

/// A listed mismatching block.
#[derive(Serialize)]
pub struct Entry {
    lba: u64,
    /// Misplaced: the LBA the header names.
    #[serde(skip_serializing_if = "Option::is_none")]
    holds: Option<u64>,
    /// Corrupt: the first differing byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

/// The verify classes.
#[derive(Serialize)]
pub struct VerifyReport {
    absent: ClassReport,
    misplaced: ClassReport,
    corrupt: ClassReport,
}

impl VerifyReport {
    fn of(m: &Mismatches) -> VerifyReport {
        let class = |c: &Class, f: fn(u64, u64) -> Entry| ClassReport {
            count: c.count,
            first: c.first.iter().map(|&(l, d)| f(l, d)).collect(),
        };
        VerifyReport {
            absent: class(&m.absent, |lba, _| Entry {
                lba,
                holds: None,
                offset: None,
            }),
            misplaced: class(&m.misplaced, |lba, d| Entry {
                lba,
                holds: Some(d),
                offset: None,
            }),
            corrupt: class(&m.corrupt, |lba, d| Entry {
                lba,
                holds: None,
                offset: Some(d),
            }),
        }
    }
}

/// The counts shared by a device's line and the total.
#[derive(Serialize)]
pub struct Counts {
    ios: u64,
    reads: u64,
    writes: u64,
    seconds: f64,
    iops: f64,
    mib_per_s: f64,
    lat_us: Latency,
    errors: u64,
    mismatches: u64,
    resubmitted: u64,
    /// I/Os ended by the controller's removal (the run stopped there).
    removed: u64,
    doorbell_writes_per_io: f64,
}

impl Counts {
    fn of(
        rs: &[&WorkerResult],
        seconds: f64,
        io_size: usize,
    ) -> Result<(Counts, Mismatches), Box<dyn std::error::Error>> {
        let mut hist = Histogram::<u64>::new(3)?;
        let mut m = Mismatches::default();
        let (mut ios, mut reads, mut errors, mut resubmitted, mut doorbells) = (0, 0, 0, 0, 0);
        let mut removed = 0;
        for r in rs {
            hist.add(&r.hist)?;
            m.merge(&r.mismatches);
            ios += r.ios;
            reads += r.reads;
            errors += r.errors;
            resubmitted += r.resubmitted;
            removed += r.removed;
            doorbells += r.doorbell_writes;
        }
        let iops = ios as f64 / seconds.max(1e-9);
        let c = Counts {
            ios,
            reads,
            writes: ios - reads,
            seconds: (seconds * 1000.0).round() / 1000.0,
            iops: (iops * 10.0).round() / 10.0,
            mib_per_s: (iops * io_size as f64 / (1 << 20) as f64 * 100.0).round() / 100.0,
            lat_us: Latency::of(&hist),
            errors,
            mismatches: m.total(),
            resubmitted,
            removed,
            doorbell_writes_per_io: (doorbells as f64 / ios.max(1) as f64 * 1000.0).round()
                / 1000.0,
        };
        Ok((c, m))
    }
}

/// Seconds from `start` until the last of `rs` finished (not until the
/// main thread noticed).
fn until_last<'a>(rs: impl Iterator<Item = &'a WorkerResult>, start: Instant) -> f64 {
    rs.map(|r| r.finished.duration_since(start).as_secs_f64())
        .fold(0.0, f64::max)
}

/// One device's report.
#[derive(Serialize)]
pub struct DeviceReport {
    device: String,
    model: String,
    serial: String,
    nsid: u32,
    ns_blocks: u64,
    block_size: u32,
    start_lba: u64,
    blocks: u64,
    io_blocks: u64,
    ios_per_pass: u64,
    /// Blocks after the last whole I/O, not covered.
    tail_blocks: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tail_first_lba: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    planned_ios: Option<u64>,
    #[serde(flatten)]
    counts: Counts,
    commands_per_io: usize,
    data_pointer: &'static str,
    controller_sgl: String,
    queue_entries: u16,
    verify: VerifyReport,
    #[serde(skip)]
    mismatches: Mismatches,
}

/// The whole run: totals first (as the single-device report always had
/// them), then each device.
#[derive(Serialize)]
pub struct Report {
    device: String,
    io_size: usize,
    queue_depth: u16,
    queues: u16,
    #[serde(flatten)]
    counts: Counts,
    commands_per_io: usize,
    sgl: bool,
    queue_entries: u16,
    workload: &'static str,
    pattern: &'static str,
    order: &'static str,
    read_percent: u8,
    seed: u64,
    shadow_doorbells: bool,
    queue_size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    passes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_s: Option<f64>,
    verify: VerifyReport,
    devices: Vec<DeviceReport>,
    #[serde(skip)]
    verifying: bool,
    #[serde(skip)]
    mismatches: Mismatches,
}

impl Report {
    /// Sums the workers' results (`per_dev[i]`: device `i`'s queues).
    pub fn new(
        cli: &Cli,
        devs: &[Device],
        per_dev: &[Vec<WorkerResult>],
        start: Instant,
        read_percent: u8,
    ) -> Result<Report, Box<dyn std::error::Error>> {
        let mut devices = Vec::new();
        for (d, rs) in devs.iter().zip(per_dev) {
            let secs = until_last(rs.iter(), start);
            let (counts, m) = Counts::of(&rs.iter().collect::<Vec<_>>(), secs, cli.io_size)?;
            let info = d.ctrl.info();
            devices.push(DeviceReport {
                device: d.addr.clone(),
                model: info.model.clone(),
                serial: info.serial.clone(),
                nsid: d.ns.id,
                ns_blocks: d.ns.blocks,
                block_size: d.ns.block_size,
                start_lba: d.range.start,
                blocks: d.range.blocks,
                io_blocks: d.range.io_blocks,
                ios_per_pass: d.range.slots(),
                tail_blocks: d.range.tail(),
                tail_first_lba: (d.range.tail() > 0).then(|| d.range.tail_start()),
                planned_ios: d.total,
                counts,
                commands_per_io: d.per_io,
                data_pointer: if d.sgl { "SGL" } else { "PRP" },
                controller_sgl: format!("{:?}", info.sgl),
                queue_entries: d.queue_entries,
                verify: VerifyReport::of(&m),
                mismatches: m,
            });
        }
        let all: Vec<&WorkerResult> = per_dev.iter().flatten().collect();
        let (counts, m) = Counts::of(&all, until_last(all.iter().copied(), start), cli.io_size)?;
        let first = devs.first();
        Ok(Report {
            device: devs
                .iter()
                .map(|d| d.addr.as_str())
                .collect::<Vec<_>>()
                .join(","),
            io_size: cli.io_size,
            queue_depth: cli.queue_depth,
            queues: cli.queues,
            counts,
            commands_per_io: first.map_or(0, |d| d.per_io),
            sgl: first.is_some_and(|d| d.sgl),
            queue_entries: first.map_or(0, |d| d.queue_entries),
            workload: cli.workload.name(),
            pattern: if cli.pattern == crate::Pattern::Rand {
                "rand"
            } else {
                "seq"
            },
            order: order(cli),
            read_percent,
            seed: cli.seed,
            shadow_doorbells: cli.shadow_doorbells,
            queue_size: format!("{:?}", crate::queue_size(cli.queue_size)),
            count: cli.count,
            passes: cli.passes,
            time_s: (cli.count.is_none() && cli.passes.is_none()).then_some(cli.time.as_secs_f64()),
            verify: VerifyReport::of(&m),
            devices,
            verifying: cli.workload == Workload::Verify,
            mismatches: m,
        })
    }

    /// Whether a controller was removed during the run.
    pub fn removed(&self) -> bool {
        self.counts.removed > 0
    }

    /// Success: I/O done, no errors, no mismatches.
    pub fn ok(&self) -> bool {
        self.counts.errors == 0 && self.counts.mismatches == 0 && self.counts.ios > 0
    }

    /// The text report.
    pub fn print_text(&self) {
        let multi = self.devices.len() > 1;
        let head = [
            "IOPS", "MiB/s", "avg us", "p50 us", "p99 us", "p99.9 us", "max us",
        ];
        let row = |c: &Counts| {
            let l = &c.lat_us;
            format!(
                "{:>12.0} {:>12.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                c.iops, c.mib_per_s, l.avg, l.p50, l.p99, l.p99_9, l.max
            )
        };
        let head = format!(
            "{:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
            head[0], head[1], head[2], head[3], head[4], head[5], head[6]
        );
        if multi {
            println!("{:<14}{head}", "device");
            for d in &self.devices {
                println!("{:<14}{}", d.device, row(&d.counts));
            }
            println!("{:<14}{}", "total", row(&self.counts));
        } else {
            println!("{head}");
            println!("{}", row(&self.counts));
        }
        let summary = |who: &str, c: &Counts, planned: Option<u64>, m: &Mismatches| {
            let planned = planned.map_or(String::new(), |p| format!(" of {p} planned"));
            println!(
                "{who}{} I/Os{planned} ({} reads, {} writes) in {:.2} s, {} errors, {} verify mismatches, \
                 {} resubmitted after reset, {:.2} doorbell writes per I/O",
                c.ios, c.reads, c.writes, c.seconds, c.errors, c.mismatches, c.resubmitted, c.doorbell_writes_per_io
            );
            if c.removed > 0 {
                println!(
                    "{who}controller removed during the run: {} I/Os ended with it; the figures above cover the {} completed before",
                    c.removed, c.ios
                );
            }
            if self.verifying {
                println!(
                    "{who}verify: {} blocks mismatched: {} absent, {} misplaced, {} corrupt",
                    m.total(),
                    m.absent.count,
                    m.misplaced.count,
                    m.corrupt.count
                );
                for line in m.describe() {
                    println!("{line}");
                }
            }
        };
        if multi {
            for d in &self.devices {
                summary(
                    &format!("{}: ", d.device),
                    &d.counts,
                    d.planned_ios,
                    &d.mismatches,
                );
            }
            let planned = self
                .devices
                .iter()
                .map(|d| d.planned_ios)
                .sum::<Option<u64>>();
            summary("total: ", &self.counts, planned, &self.mismatches);
        } else if let Some(d) = self.devices.first() {
            summary("", &self.counts, d.planned_ios, &self.mismatches);
        }
    }
}

/// The I/O order: sequential, random (timed runs, slots may repeat) or
/// shuffled (exact runs, each slot once per pass).
fn order(cli: &Cli) -> &'static str {
    match (cli.pattern, cli.count.is_some() || cli.passes.is_some()) {
        (crate::Pattern::Seq, _) => "sequential",
        (crate::Pattern::Rand, true) => "shuffled",
        (crate::Pattern::Rand, false) => "random",
    }
}

/// The lines printed before the run for device `d`.
pub fn print_device_header(cli: &Cli, d: &Device, read_percent: u8, opts: &Options) {
    let info = d.ctrl.info();
    println!(
        "{} {} ({}), namespace {}: {} blocks of {} bytes",
        d.addr, info.model, info.serial, d.ns.id, d.ns.blocks, d.ns.block_size
    );
    let amount = match (cli.count, cli.passes, d.total) {
        (Some(c), _, _) => format!("exactly {c} I/Os"),
        (None, Some(p), Some(t)) => format!("{p} pass(es), {t} I/Os"),
        _ => format!("{:.0} s", cli.time.as_secs_f64()),
    };
    let order = match order(cli) {
        "shuffled" => "shuffled (a seeded permutation per pass)",
        o => o,
    };
    println!(
        "{} {} bytes, queue depth {}, {} queue(s), {amount}, {order}, {read_percent}% reads",
        cli.workload.name(),
        cli.io_size,
        cli.queue_depth,
        cli.queues
    );
    println!("{}", d.range.describe());
    println!(
        "data pointer {} (controller SGL support {:?}), {} command(s) per I/O, queues of {} entries ({:?}), shadow doorbells {}",
        if d.sgl { "SGL" } else { "PRP" },
        info.sgl,
        d.per_io,
        d.queue_entries,
        opts.queue_size,
        if opts.shadow_doorbells { "on" } else { "off" }
    );
}
