//! Copies an LBA range to another with many async tasks sharing one NVMe
//! queue pair, then checks the copy: writes the verification pattern over
//! the source range, copies it chunk by chunk (each task: `read(..).await`
//! into its buffer, `write(..).await` of the same buffer: no memory copy),
//! reads the destination back into poisoned buffers and checks every block
//! against the pattern of the block it was copied from.
//!
//! `cargo run --release --example async_copy -- --tasks 256 --queue-depth 32`
//!
//! Without a controller bound to vfio-pci it runs in the QEMU test guest.

mod common;

use std::cell::{Cell, RefCell};
use std::time::Instant;

use clap::Parser;
use common::{args, UsageError};
use fastlane::framework::{BufferPool, PageSize, PciAddress, Vfio};
use fastlane::nvme::{
    pattern, AsyncQueue, Controller, LocalExecutor, Namespace, NvmeError, Options,
};

/// Copies --blocks blocks from --src-lba to --dst-lba with --tasks async
/// tasks on one queue pair, after writing a pattern over the source, and
/// verifies the destination.
#[derive(Parser)]
#[command(name = "async_copy")]
struct Cli {
    /// NVMe controller bound to vfio-pci (default: $FASTLANE_NVME, else the
    /// first NVMe bound to vfio-pci, else the QEMU guest)
    #[arg(long, value_name = "BDF", value_parser = args::pci_address)]
    device: Option<PciAddress>,
    /// Namespace
    #[arg(long, value_name = "N", default_value = "1", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u32>(s, 1, u32::MAX.into()))]
    nsid: u32,
    /// Tasks copying at once (each owns one buffer)
    #[arg(long, value_name = "N", default_value = "256", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u32>(s, 1, 4096))]
    tasks: u32,
    /// Commands in flight on the queue pair; more tasks wait for a slot
    #[arg(long, value_name = "N", default_value = "32", allow_hyphen_values = true,
          value_parser = args::queue_depth)]
    queue_depth: u16,
    /// Bytes per command, a multiple of the block size
    #[arg(long, value_name = "BYTES", default_value = "4096", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<usize>(s, 1, 1 << 30))]
    io_size: usize,
    /// Blocks to copy
    #[arg(long, value_name = "N", default_value = "16384", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 1, u64::MAX))]
    blocks: u64,
    /// First block of the source range
    #[arg(long, value_name = "LBA", default_value = "0", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 0, u64::MAX))]
    src_lba: u64,
    /// First block of the destination range (default: right after the source)
    #[arg(long, value_name = "LBA", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 0, u64::MAX))]
    dst_lba: Option<u64>,
    /// Pattern seed
    #[arg(long, value_name = "N", default_value = "1", allow_hyphen_values = true,
          value_parser = |s: &str| args::int_in::<u64>(s, 0, u64::MAX))]
    seed: u64,
}

/// The ranges and sizes, checked against the namespace.
#[derive(Clone, Copy)]
struct Plan {
    nsid: u32,
    bs: usize,
    /// Blocks per command.
    chunk: u64,
    src: u64,
    dst: u64,
    blocks: u64,
    seed: u64,
}

impl Plan {
    fn new(cli: &Cli, ns: Namespace) -> Result<Plan, UsageError> {
        let bs = ns.block_size as usize;
        if !cli.io_size.is_multiple_of(bs) {
            return Err(UsageError(format!(
                "--io-size must be a multiple of the {bs}-byte block size"
            )));
        }
        let chunk = (cli.io_size / bs) as u64;
        let dst = match cli.dst_lba {
            Some(d) => d,
            None => cli
                .src_lba
                .checked_add(cli.blocks)
                .ok_or_else(|| UsageError("--src-lba + --blocks overflows".into()))?,
        };
        for (name, first) in [("source", cli.src_lba), ("destination", dst)] {
            if first
                .checked_add(cli.blocks)
                .is_none_or(|end| end > ns.blocks)
            {
                return Err(UsageError(format!(
                    "the {name} range {first}..{first}+{} lies outside namespace {} of {} blocks",
                    cli.blocks, ns.id, ns.blocks
                )));
            }
        }
        if cli.src_lba < dst + cli.blocks && dst < cli.src_lba + cli.blocks {
            return Err(UsageError(
                "the source and destination ranges overlap".into(),
            ));
        }
        Ok(Plan {
            nsid: ns.id,
            bs,
            chunk,
            src: cli.src_lba,
            dst,
            blocks: cli.blocks,
            seed: cli.seed,
        })
    }

    /// Chunks of the range (the last may be shorter).
    fn chunks(&self) -> u64 {
        self.blocks.div_ceil(self.chunk)
    }

    /// Offset and length in blocks of chunk `i`.
    fn chunk(&self, i: u64) -> (u64, u32) {
        let off = i * self.chunk;
        // At most --io-size / block size (< 2^30): fits.
        (off, (self.blocks - off).min(self.chunk) as u32)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// The pattern over the source.
    Fill,
    /// Source to destination.
    Copy,
    /// The destination read back and checked.
    Verify,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Fill => "write pattern",
            Phase::Copy => "copy",
            Phase::Verify => "read + verify",
        }
    }
}

/// What the tasks of one phase share.
struct Shared {
    next: Cell<u64>,
    ios: Cell<u64>,
    error: RefCell<Option<String>>,
    /// Blocks that did not match, and the first few of them.
    bad_blocks: Cell<u64>,
    first_bad: RefCell<Vec<(u64, usize)>>,
}

fn main() {
    let cli = Cli::parse();
    let Some(dev) = common::nvme_device(cli.device) else {
        common::run_in_guest("async_copy", &common::raw_args());
    };
    match run(&dev, &cli) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(common::exit_code(&*e));
        }
    }
}

fn run(dev: &str, cli: &Cli) -> Result<bool, Box<dyn std::error::Error>> {
    let vfio = Vfio::new()?;
    let ctrl = Controller::open(&vfio, dev, Options::default())?;
    let ns = ctrl.namespace(cli.nsid)?;
    let plan = Plan::new(cli, ns)?;
    let entries =
        args::queue_entries(cli.queue_depth, ctrl.info().max_queue_entries).map_err(UsageError)?;
    let pool = BufferPool::new(&vfio, cli.io_size, cli.tasks, PageSize::Huge2M)?;
    let aq = AsyncQueue::new(ctrl.create_qpair(entries)?);
    println!(
        "async_copy: {} blocks of {} bytes from LBA {} to LBA {}, {} tasks on one queue pair of {} commands, {} bytes per command",
        plan.blocks,
        plan.bs,
        plan.src,
        plan.dst,
        cli.tasks,
        aq.capacity(),
        cli.io_size
    );
    for phase in [Phase::Fill, Phase::Copy, Phase::Verify] {
        let shared = Shared {
            next: Cell::new(0),
            ios: Cell::new(0),
            error: RefCell::new(None),
            bad_blocks: Cell::new(0),
            first_bad: RefCell::new(Vec::new()),
        };
        let start = Instant::now();
        let waited = aq.stats().waited;
        let mut exec = LocalExecutor::new(cli.tasks as usize);
        for _ in 0..cli.tasks {
            exec.spawn(task(&aq, &pool, plan, phase, &shared))?;
        }
        exec.run(|| {
            aq.poll(64);
        });
        let secs = start.elapsed().as_secs_f64();
        let ios = shared.ios.get();
        let mib = (plan.blocks as f64 * plan.bs as f64) / (1 << 20) as f64;
        println!(
            "{:>14}: {ios} I/Os, {mib:.1} MiB in {secs:.3} s ({:.0} IOPS, {:.1} MiB/s), {} requests waited for a free command slot",
            phase.name(),
            ios as f64 / secs,
            mib / secs,
            aq.stats().waited - waited
        );
        if let Some(e) = shared.error.take() {
            eprintln!("error: {e}");
            return Ok(false);
        }
        if phase == Phase::Verify {
            let bad = shared.bad_blocks.get();
            if bad > 0 {
                println!("verify: {bad} of {} blocks differ from their source's pattern; first (LBA, byte offset):", plan.blocks);
                for (lba, off) in shared.first_bad.borrow().iter() {
                    println!("  {lba} at byte {off}");
                }
                return Ok(false);
            }
            println!("verify: all {} blocks at LBA {}.. hold the pattern of their source blocks at LBA {}..", plan.blocks, plan.dst, plan.src);
        }
    }
    Ok(true)
}

/// One task of `phase`: takes chunks until none is left.
async fn task(aq: &AsyncQueue, pool: &BufferPool, plan: Plan, phase: Phase, shared: &Shared) {
    let mut buf = match pool.alloc() {
        Ok(b) => b,
        Err(e) => {
            shared.error.replace(Some(format!("buffer: {e}")));
            return;
        }
    };
    let mut data = vec![0u8; plan.chunk as usize * plan.bs];
    loop {
        let i = shared.next.get();
        if i >= plan.chunks() || shared.error.borrow().is_some() {
            return;
        }
        shared.next.set(i + 1);
        let (off, n) = plan.chunk(i);
        let bytes = n as usize * plan.bs;
        let (b, r) = match phase {
            Phase::Fill => {
                pattern::fill(&mut data[..bytes], plan.bs, plan.src + off, plan.seed);
                if let Err(e) = buf.write(0, &data[..bytes]) {
                    shared.error.replace(Some(format!("buffer: {e}")));
                    return;
                }
                aq.write(plan.nsid, plan.src + off, n, buf).await
            }
            Phase::Copy => {
                let (b, r) = aq.read(plan.nsid, plan.src + off, n, buf).await;
                if r.is_err() {
                    (b, r)
                } else {
                    aq.write(plan.nsid, plan.dst + off, n, b).await
                }
            }
            Phase::Verify => {
                // Poisoned: what is checked came from the device.
                buf.fill(0xee);
                aq.read(plan.nsid, plan.dst + off, n, buf).await
            }
        };
        buf = b;
        shared
            .ios
            .set(shared.ios.get() + if phase == Phase::Copy { 2 } else { 1 });
        if let Err(e) = r {
            let what = |e: NvmeError| format!("{} of blocks {off}..+{n}: {e}", phase.name());
            shared.error.replace(Some(what(e)));
            return;
        }
        if phase == Phase::Verify {
            check(&buf, &mut data[..bytes], plan, off, shared);
        }
    }
}

/// Checks the blocks of chunk `off` read from the destination against the
/// pattern of the source blocks they were copied from.
fn check(
    buf: &fastlane::framework::DmaBuf,
    data: &mut [u8],
    plan: Plan,
    off: u64,
    shared: &Shared,
) {
    if let Err(e) = buf.read(0, data) {
        shared.error.replace(Some(format!("buffer: {e}")));
        return;
    }
    for (k, block) in data.chunks(plan.bs).enumerate() {
        if let Err(at) = pattern::check_block(block, plan.src + off + k as u64, plan.seed) {
            shared.bad_blocks.set(shared.bad_blocks.get() + 1);
            let mut first = shared.first_bad.borrow_mut();
            if first.len() < 8 {
                first.push((plan.dst + off + k as u64, at));
            }
        }
    }
}
