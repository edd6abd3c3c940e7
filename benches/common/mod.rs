//! Shared by the benches: a cheap tick counter calibrated against
//! `Instant`, the median of five runs, and telling a real `cargo bench` run
//! from the single quick pass `cargo test` makes.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A cheap monotonic tick: the TSC on x86_64, `Instant` nanoseconds elsewhere.
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86_64.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Nanoseconds per tick, and ticks a back-to-back pair of `ticks()` costs.
pub fn tick_calibration() -> (f64, f64) {
    static CAL: OnceLock<(f64, f64)> = OnceLock::new();
    *CAL.get_or_init(|| {
        let (t0, i0) = (ticks(), Instant::now());
        while i0.elapsed() < Duration::from_millis(100) {
            std::hint::spin_loop();
        }
        let (t1, ns) = (ticks(), i0.elapsed().as_nanos() as f64);
        let ns_per_tick = ns / (t1 - t0) as f64;
        let n = 1_000_000u64;
        let mut sum = 0u64;
        for _ in 0..n {
            let a = ticks();
            let b = ticks();
            sum += b - a;
        }
        (ns_per_tick, sum as f64 / n as f64)
    })
}

/// Nanoseconds in `ticks` measured over `brackets` timer pairs.
pub fn ticks_to_ns(ticks: u64, brackets: u64) -> f64 {
    let (ns_per_tick, pair) = tick_calibration();
    (ticks as f64 - pair * brackets as f64).max(0.0) * ns_per_tick
}

/// Median of 5 runs of `f`.
pub fn median5(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..5).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[2]
}

/// Whether this is a real `cargo bench` run (not `cargo test`, `--list`...).
pub fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list") && !args.iter().any(|a| a.starts_with("--profile-time"))
}
