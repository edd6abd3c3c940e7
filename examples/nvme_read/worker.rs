//! One queue pair's loop: keeps `depth` commands in flight, picks each
//! I/O's LBA and direction (timed: random or sequential within the queue's
//! share; exact: every `queues`-th I/O of the device's [`Plan`]), records
//! latency, and checks what verify reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use fastlane::framework::{BufferPool, DmaBuf, PageSize, Vfio};
use fastlane::nvme::qpair::DoorbellOrder;
use fastlane::nvme::{pattern, Controller, Namespace, NvmeError};
use hdrhistogram::Histogram;

use crate::plan::{self, Mismatches, Plan, Range};

/// What a queue pair does.
#[derive(Clone)]
pub struct Job {
    /// Commands in flight.
    pub depth: u16,
    /// The queue pair's size argument (see `main`).
    pub entries: u16,
    /// Bytes per I/O.
    pub io_size: usize,
    /// Check what reads return against the pattern.
    pub verify: bool,
    /// Pattern seed.
    pub seed: u64,
    /// How the LBAs are picked.
    pub source: Source,
    /// Doorbell order after a poll with completions (None: the driver's).
    pub doorbell_order: Option<DoorbellOrder>,
}

/// How a queue pair picks its I/Os.
#[derive(Clone, Copy)]
pub enum Source {
    /// Until stopped: slots `lo..hi` of `range`, random (with repeats) or
    /// in order, reads by `read_percent`.
    Timed {
        /// The device's range.
        range: Range,
        /// First slot of this queue's share.
        lo: u64,
        /// End of the share.
        hi: u64,
        /// Random slots (else sequential).
        random: bool,
        /// Percent reads.
        read_percent: u8,
    },
    /// I/Os `first, first + step, ...` of `plan`, then done.
    Exact {
        /// The device's plan.
        plan: Plan,
        /// This queue's first I/O number.
        first: u64,
        /// Queues of the device.
        step: u64,
    },
}

/// Live counters the progress line reads.
#[derive(Default)]
pub struct Counters {
    /// Completed I/Os.
    pub ios: AtomicU64,
}

/// A queue pair's result.
pub struct WorkerResult {
    /// Latency of every completed I/O, in ns.
    pub hist: Histogram<u64>,
    /// Completed I/Os.
    pub ios: u64,
    /// Of which reads.
    pub reads: u64,
    /// Failed I/Os.
    pub errors: u64,
    /// I/Os failed by a controller reset (redone in exact mode).
    pub resubmitted: u64,
    /// I/Os ended by the controller's removal (hot unplug); the run stops.
    pub removed: u64,
    /// Doorbell writes.
    pub doorbell_writes: u64,
    /// Verify classes.
    pub mismatches: Mismatches,
    /// When the last I/O completed.
    pub finished: Instant,
}

/// Picks the next I/O: `(lba, read, number)`.
struct Picker {
    source: Source,
    next: u64,
    rng: u64,
    /// Exact mode: I/Os a reset failed, to redo.
    redo: Vec<(u64, bool)>,
}

impl Picker {
    fn new(source: Source) -> Picker {
        let (next, rng) = match source {
            Source::Timed { lo, .. } => (0, 0x9E37_79B9_7F4A_7C15 ^ (lo + 1)),
            Source::Exact { first, .. } => (first, 0),
        };
        Picker {
            source,
            next,
            rng,
            redo: Vec::new(),
        }
    }

    /// Exact mode: every I/O picked and none to redo.
    fn finished(&self) -> bool {
        match self.source {
            Source::Timed { .. } => false,
            Source::Exact { plan, .. } => self.redo.is_empty() && self.next >= plan.total,
        }
    }

    fn pick(&mut self) -> Option<(u64, bool)> {
        if let Some(io) = self.redo.pop() {
            return Some(io);
        }
        match self.source {
            Source::Timed {
                range,
                lo,
                hi,
                random,
                read_percent,
            } => {
                let span = hi - lo;
                let n = self.next;
                self.next = self.next.wrapping_add(1);
                let slot = if random {
                    // xorshift64*
                    self.rng ^= self.rng >> 12;
                    self.rng ^= self.rng << 25;
                    self.rng ^= self.rng >> 27;
                    self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % span
                } else {
                    n % span
                };
                Some((range.lba(lo + slot), plan::is_read(n, read_percent)))
            }
            Source::Exact { plan, step, .. } => {
                if self.next >= plan.total {
                    return None;
                }
                let io = plan.io(self.next);
                // Past the end (or past u64) stops the next pick.
                self.next = self.next.saturating_add(step);
                Some((io.lba, io.read))
            }
        }
    }
}

/// Runs one queue pair until `stop` (timed) or its share of the plan is
/// done (exact).
pub fn run(
    vfio: &Vfio,
    ctrl: &Controller,
    ns: Namespace,
    job: &Job,
    counters: &Counters,
    stop: &AtomicBool,
) -> Result<WorkerResult, Box<dyn std::error::Error>> {
    let bs = ns.block_size as usize;
    let io_blocks = u32::try_from(job.io_size / bs)?;
    let depth = usize::from(job.depth);
    let pool = BufferPool::new(vfio, job.io_size, u32::from(job.depth), PageSize::Huge2M)?;
    let mut qp = ctrl.create_qpair(job.entries)?;
    if let Some(order) = job.doorbell_order {
        qp.set_doorbell_order(order);
    }
    let mut picker = Picker::new(job.source);
    let mut started = vec![Instant::now(); depth];
    let mut slot_io = vec![(0u64, true); depth];
    let mut scratch = vec![0u8; job.io_size];
    let mut ready: Vec<(usize, DmaBuf)> = Vec::with_capacity(depth);
    // Buffers with nothing left to do (exact runs); swapped with `ready`
    // so that neither vector is reallocated per round.
    let mut idle: Vec<(usize, DmaBuf)> = Vec::with_capacity(depth);
    for i in 0..depth {
        ready.push((i, pool.alloc()?));
    }
    let mut r = WorkerResult {
        hist: Histogram::new(3)?,
        ios: 0,
        reads: 0,
        errors: 0,
        resubmitted: 0,
        removed: 0,
        doorbell_writes: 0,
        mismatches: Mismatches::default(),
        finished: Instant::now(),
    };
    let mut stopping = false;
    let mut done: Vec<(usize, DmaBuf, Result<(), NvmeError>, Instant)> = Vec::with_capacity(depth);
    loop {
        if !stopping {
            for (tag, mut buf) in ready.drain(..) {
                let Some((lba, read)) = picker.pick() else {
                    idle.push((tag, buf));
                    continue;
                };
                slot_io[tag] = (lba, read);
                if !read {
                    pattern::fill(&mut scratch, bs, lba, job.seed);
                    buf.write(0, &scratch)?;
                }
                started[tag] = Instant::now();
                let sub = if read {
                    qp.read(ns.id, lba, io_blocks, buf, tag as u64)
                } else {
                    qp.write(ns.id, lba, io_blocks, buf, tag as u64)
                };
                if let Err(rej) = sub {
                    if !rej.error.is_removed() {
                        return Err(format!("submit: {}", rej.error).into());
                    }
                    // Unplugged: stop here and report what completed.
                    r.removed += 1;
                    stopping = true;
                    if let Some(buf) = rej.buf {
                        idle.push((tag, buf));
                    }
                }
            }
            std::mem::swap(&mut ready, &mut idle);
            qp.submit();
        }
        qp.poll(depth, |c| {
            if let Some(buf) = c.buf {
                done.push((c.tag as usize, buf, c.result, Instant::now()));
            }
        });
        let n_done = done.len();
        for (tag, buf, result, at) in done.drain(..) {
            let (lba, read) = slot_io[tag];
            match result {
                Ok(()) => {
                    let _ = r
                        .hist
                        .record(at.duration_since(started[tag]).as_nanos() as u64);
                    r.ios += 1;
                    if read {
                        r.reads += 1;
                        if job.verify {
                            buf.read(0, &mut scratch)?;
                            r.mismatches.check(&scratch, bs, lba, job.seed);
                        }
                    }
                }
                Err(NvmeError::Reset) => {
                    r.resubmitted += 1;
                    if matches!(job.source, Source::Exact { .. }) {
                        picker.redo.push((lba, read));
                    }
                }
                Err(e) if e.is_removed() => {
                    r.removed += 1;
                    stopping = true;
                }
                Err(e) => {
                    if r.errors < 5 {
                        eprintln!("I/O at LBA {lba} failed: {e}");
                    }
                    r.errors += 1;
                }
            }
            ready.push((tag, buf));
        }
        if n_done > 0 {
            counters.ios.store(r.ios, Ordering::Relaxed);
        }
        if !stopping && stop.load(Ordering::Relaxed) {
            stopping = true;
        }
        // Exact mode: nothing left to pick and nothing in flight.
        if (stopping || picker.finished()) && qp.outstanding() == 0 {
            break;
        }
    }
    r.doorbell_writes = qp.stats().doorbell_writes;
    r.finished = Instant::now();
    Ok(r)
}
