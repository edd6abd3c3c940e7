//! Shared by the examples: option value parsers ([`args`]), finding the
//! NVMe controller (or falling back to the QEMU test guest when this machine
//! has none), opening NIC ports, and the polling loops' clock.

#![allow(dead_code)]

pub mod args;
pub mod net;

use std::process::Command;

use fastlane::framework::pci::vfio_devices;
use fastlane::framework::{PciAddress, PoolCache, Vfio};
use fastlane::nic::{self, Nic, NicConfig, Packet, PacketPool};

/// An error the user can fix by changing the options (exit code 2, like
/// the option parser's own errors), found only once the device is open.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Exit code for an error of `run`: 2 for a [`UsageError`], else 1.
pub fn exit_code(e: &(dyn std::error::Error + 'static)) -> i32 {
    if e.is::<UsageError>() {
        2
    } else {
        1
    }
}

/// The command-line arguments as given (for re-running in the guest).
pub fn raw_args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// NVMe class code.
pub const NVME_CLASS: u32 = 0x01_08_02;

/// The device to use: `--device`, else `$FASTLANE_NVME`, else the first
/// NVMe controller bound to vfio-pci. `None` when there is none.
pub fn nvme_device(device: Option<PciAddress>) -> Option<String> {
    device
        .map(|a| a.to_string())
        .or_else(|| std::env::var("FASTLANE_NVME").ok())
        .or_else(|| vfio_devices(NVME_CLASS).first().map(|a| a.to_string()))
}

/// With no NVMe controller here, run the same example inside the QEMU test
/// guest (its emulated NVMe behind an emulated IOMMU) and exit with its code.
pub fn run_in_guest(example: &str, args: &[String]) -> ! {
    if std::env::var_os("FASTLANE_IN_GUEST").is_some() {
        eprintln!("error: no NVMe controller bound to vfio-pci in the guest");
        std::process::exit(1);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/vm/example.sh");
    eprintln!(
        "{example}: no NVMe controller is bound to vfio-pci on this machine;\n\
         running it in the QEMU test guest (emulated NVMe behind an emulated IOMMU) via vm/example.sh.\n\
         For a real device: `sudo ./hugepages.sh setup && sudo ./hugepages.sh bind <BDF>`, then --device <BDF>."
    );
    let status = Command::new(script).arg(example).args(args).status();
    match status {
        Ok(s) => std::process::exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("error: cannot run {script}: {e}");
            std::process::exit(1);
        }
    }
}

/// Opens the NIC at `addr` with the driver its PCI id calls for (igb or
/// virtio-net, through [`fastlane::nic::open`]).
pub fn open_port(
    vfio: &Vfio,
    addr: PciAddress,
    pool: &PacketPool,
    cfg: &NicConfig,
) -> nic::Result<Box<dyn Nic>> {
    nic::open(vfio, &addr.to_string(), pool, cfg)
}

/// Opens the NIC at `addr` with `queues` queue pairs, one [`Nic`] per
/// queue, queue 0 first, through [`fastlane::nic::open_multi`]: igb with
/// RSS over up to 8 queues, virtio-net with VIRTIO_NET_F_MQ and RSS (the
/// device must offer them for more than one).
pub fn open_queues(
    vfio: &Vfio,
    addr: PciAddress,
    pool: &PacketPool,
    cfg: &NicConfig,
    queues: u16,
) -> nic::Result<Vec<Box<dyn Nic>>> {
    let cfg = NicConfig {
        queues,
        ..cfg.clone()
    };
    nic::open_multi(vfio, &addr.to_string(), pool, &cfg)
}

/// The driver a device's PCI id calls for, read from sysfs (without
/// opening it); `None` when unknown.
pub fn pci_driver(addr: PciAddress) -> Option<nic::Driver> {
    let id = |f: &str| {
        let s = std::fs::read_to_string(addr.sysfs_path().join(f)).ok()?;
        u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
    };
    nic::Driver::for_id(id("vendor")?, id("device")?)
}

/// How long a service tool (udp_echo, l2fwd) runs, and its summary form.
#[derive(clap::Args)]
pub struct RunControl {
    /// Stop after this long
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true, value_parser = args::duration)]
    pub time: Option<std::time::Duration>,
    /// Stop when standard input reaches its end
    #[arg(long)]
    pub until_stdin_closes: bool,
    /// End with a JSON summary line
    #[arg(long)]
    pub json: bool,
}

impl RunControl {
    /// The flag the worker threads poll: set by [`RunControl::wait`] or
    /// when standard input closes (with `--until-stdin-closes`).
    pub fn stop_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        if self.until_stdin_closes {
            stdin_closed()
        } else {
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
        }
    }

    /// With `--time`: sleeps until it passed (or `stop` was set), then
    /// sets `stop`. Without: returns at once (the workers stop on `stop`).
    pub fn wait(&self, start: std::time::Instant, stop: &std::sync::atomic::AtomicBool) {
        use std::sync::atomic::Ordering;
        if let Some(t) = self.time {
            while start.elapsed() < t && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Set once standard input reaches its end (or fails): for tools a test
/// stops by closing their stdin, so that they still print their totals.
pub fn stdin_closed() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        f.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    flag
}

/// Gives the buffers of `pkts` back through `cache` (cheaper than dropping
/// them one by one into the shared pool); `pkts` is left empty.
pub fn recycle(cache: &mut PoolCache, pkts: &mut Vec<Packet>) {
    for p in pkts.drain(..) {
        let _ = cache.free(p.into_buf());
    }
}

/// The clock for polling loops: read only every `every` calls (in a guest a
/// clock read can cost more than a burst), it says when a once-a-second
/// report is due and when the run time is up.
pub struct Ticker {
    start: std::time::Instant,
    tick: std::time::Instant,
    calls: u32,
    every: u32,
    time: Option<std::time::Duration>,
}

/// What [`Ticker::poll`] found.
pub enum Tick {
    /// Nothing to do yet.
    Quiet,
    /// A second (or more) passed: `secs` since the last report, `at` since
    /// the start.
    Report { secs: f64, at: f64 },
    /// The run time is over.
    Done,
}

impl Ticker {
    /// `time`: how long the run lasts (`None`: until the caller stops).
    pub fn new(every: u32, time: Option<std::time::Duration>) -> Ticker {
        let now = std::time::Instant::now();
        Ticker {
            start: now,
            tick: now,
            calls: 0,
            every: every.max(1),
            time,
        }
    }

    /// Call once per loop round.
    #[inline]
    pub fn poll(&mut self) -> Tick {
        self.calls = self.calls.wrapping_add(1);
        if !self.calls.is_multiple_of(self.every) {
            return Tick::Quiet;
        }
        let now = std::time::Instant::now();
        if self.time.is_some_and(|t| now - self.start >= t) {
            return Tick::Done;
        }
        if now - self.tick >= std::time::Duration::from_secs(1) {
            let secs = (now - self.tick).as_secs_f64();
            self.tick = now;
            return Tick::Report {
                secs,
                at: (now - self.start).as_secs_f64(),
            };
        }
        Tick::Quiet
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
