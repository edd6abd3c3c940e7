//! Shared by the examples: argument parsing and finding the NVMe controller
//! (or falling back to the QEMU test guest when this machine has none).

#![allow(dead_code)]

use std::collections::HashMap;
use std::process::Command;
use std::str::FromStr;

use fastlane::framework::pci::vfio_devices;

/// `--key value` and `--flag` arguments.
pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
    pub raw: Vec<String>,
}

impl Args {
    /// Parses `std::env::args`; `flags` lists the options that take no value.
    /// Prints `usage` and exits on `--help` or a malformed line.
    pub fn parse(usage: &str, flags: &[&str]) -> Args {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let mut a = Args {
            values: HashMap::new(),
            flags: Vec::new(),
            raw: raw.clone(),
        };
        let mut it = raw.into_iter();
        while let Some(k) = it.next() {
            if k == "-h" || k == "--help" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(name) = k.strip_prefix("--") else {
                fail(usage, &format!("unexpected argument {k:?}"));
            };
            if flags.contains(&name) {
                a.flags.push(name.to_string());
            } else {
                match it.next() {
                    Some(v) => {
                        a.values.insert(name.to_string(), v);
                    }
                    None => fail(usage, &format!("--{name} needs a value")),
                }
            }
        }
        a
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|s| s.as_str())
    }

    /// A typed value with a default; exits with a message if malformed.
    pub fn get<T: FromStr>(&self, usage: &str, name: &str, default: T) -> T {
        match self.values.get(name) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| fail(usage, &format!("--{name}: cannot parse {v:?}"))),
        }
    }

    /// Rejects options not in `known`.
    pub fn only(&self, usage: &str, known: &[&str]) {
        for k in self.values.keys().chain(self.flags.iter()) {
            if !known.contains(&k.as_str()) {
                fail(usage, &format!("unknown option --{k}"));
            }
        }
    }
}

pub fn fail(usage: &str, msg: &str) -> ! {
    eprintln!("error: {msg}\n\n{usage}");
    std::process::exit(2);
}

/// NVMe class code.
pub const NVME_CLASS: u32 = 0x01_08_02;

/// The device to use: `--device`, else `$FASTLANE_NVME`, else the first
/// NVMe controller bound to vfio-pci. `None` when there is none.
pub fn nvme_device(args: &Args) -> Option<String> {
    args.str("device")
        .map(str::to_string)
        .or_else(|| std::env::var("FASTLANE_NVME").ok())
        .or_else(|| vfio_devices(NVME_CLASS).first().map(|a| a.to_string()))
}

/// With no NVMe controller here, run the same example inside the QEMU test
/// guest (its emulated NVMe behind an emulated IOMMU) and exit with its code.
pub fn run_in_guest(example: &str, args: &Args) -> ! {
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
    let status = Command::new(script).arg(example).args(&args.raw).status();
    match status {
        Ok(s) => std::process::exit(s.code().unwrap_or(1)),
        Err(e) => {
            eprintln!("error: cannot run {script}: {e}");
            std::process::exit(1);
        }
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
        Ticker { start: now, tick: now, calls: 0, every: every.max(1), time }
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
            return Tick::Report { secs, at: (now - self.start).as_secs_f64() };
        }
        Tick::Quiet
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
