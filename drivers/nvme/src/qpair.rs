//! I/O queue pairs: one per thread, owned (`Send`, not shared). Commands are
//! written into the SQ as they are submitted and the doorbell is rung once
//! per batch ([`IoQueuePair::submit`] or the next [`IoQueuePair::poll`]).
//! Completions are found by phase tag and handed to a callback together
//! with the caller's tag and buffer: no allocation, lock or system call per
//! I/O. Each command slot owns one preallocated PRP list page.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use fastlane_framework::{DmaArray, DmaBuf, DmaDomain};

use crate::controller::{Admin, Inner, Namespace, PAGE_SIZE};
use crate::error::{NvmeError, Rejected, Result};
use crate::prp;
use crate::queue::CidTable;
use crate::ring::{Layout, Ring};
use crate::spec::{
    nvm_opcode, reg, Csts, DsmRange, QueuePriority, SubmissionEntry, DSM_MAX_RANGES,
};

/// Polls between two looks at the clock (and CSTS) while commands are
/// outstanding: keeps time and MMIO reads off the hot path.
const CLOCK_EVERY: u32 = 1 << 14;
/// A command is late once it has been outstanding for this many timeout
/// epochs (each half the I/O timeout long): between 1 and 1.5 timeouts.
const LATE_EPOCHS: u32 = 3;
/// Aborts sent per stall (controllers accept few: ACL is 0-based, often 3).
const MAX_ABORTS: usize = 4;

/// A finished command.
#[derive(Debug)]
pub struct Completion {
    /// The tag given at submission.
    pub tag: u64,
    /// The buffer given at submission, back to the caller.
    pub buf: Option<DmaBuf>,
    /// Success, or the NVMe status / reset / timeout that ended it.
    pub result: Result<()>,
}

/// Counters of one queue pair.
#[derive(Clone, Copy, Debug, Default)]
pub struct QpairStats {
    pub submitted: u64,
    pub completed: u64,
    /// Completions naming a command id that is not outstanding (never
    /// issued, or completed already). They finish nothing.
    pub unknown_cids: u64,
    /// Completions for another SQ or with an impossible SQ head. They
    /// finish nothing: the command they name stays outstanding.
    pub malformed: u64,
    pub timeouts: u64,
    pub aborts_sent: u64,
    pub resets_seen: u64,
    /// Doorbell register writes (fewer than batches with shadow doorbells).
    pub doorbell_writes: u64,
}

struct Slot {
    tag: u64,
    buf: Option<DmaBuf>,
    /// Timeout epoch at submission (or at the abort sent for it).
    epoch: u32,
    /// An abort was sent for it: late again means reset.
    aborted: bool,
}

/// An I/O submission/completion queue pair.
pub struct IoQueuePair {
    inner: Arc<Inner>,
    ring: Ring,
    qid: u16,
    depth: u16,
    generation: u64,
    slots: CidTable<Slot>,
    /// Commands ended by a reset or timeout, delivered by the next poll.
    orphans: Vec<(u64, Option<DmaBuf>, bool)>,
    namespaces: Vec<Namespace>,
    max_transfer: usize,
    /// Buffers must be mapped in this domain (the controller's container).
    domain: DmaDomain,
    /// Poll calls, to read the clock only every CLOCK_EVERY of them.
    polls: u32,
    /// Coarse clock for timeouts: bumped every half timeout.
    epoch: u32,
    epoch_started: Instant,
    stats: QpairStats,
}

impl IoQueuePair {
    pub(crate) fn create(inner: Arc<Inner>, depth: u16) -> Result<IoQueuePair> {
        let max = inner.cap.max_queue_entries().min(u16::MAX as u32) as u16;
        if depth < 2 || depth > max {
            return Err(NvmeError::InvalidArgument(format!(
                "queue depth {depth}: the controller allows 2..={max}"
            )));
        }
        let layout = Layout::new(depth, depth as usize * PAGE_SIZE);
        let region = inner.mem.region(layout.total)?;
        let mut admin = inner.lock_admin();
        let qid = admin
            .take_qid()
            .ok_or(NvmeError::NoQueuesLeft(admin.granted()))?;
        let mut ring = match Ring::new(
            region,
            layout,
            depth,
            qid,
            inner.cap.dstrd(),
            inner.regs.clone(),
        ) {
            Ok(r) => r,
            Err(e) => {
                admin.release_qid(qid);
                return Err(e);
            }
        };
        // Shadow slots are zeroed before the queues exist.
        ring.set_shadow(inner.shadow_for(qid));
        if let Err(e) = create_queues(&mut admin, &inner, &ring, qid, depth) {
            admin.release_qid(qid);
            return Err(e);
        }
        let generation = inner.generation.load(Ordering::Acquire);
        drop(admin);
        Ok(IoQueuePair {
            namespaces: inner.namespaces.clone(),
            max_transfer: inner.info.max_transfer,
            domain: inner.mem.domain(),
            inner,
            ring,
            qid,
            depth,
            generation,
            slots: CidTable::new(depth - 1),
            orphans: Vec::with_capacity(depth as usize),
            polls: 0,
            epoch: 0,
            epoch_started: Instant::now(),
            stats: QpairStats::default(),
        })
    }

    /// Queue id on the controller.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Commands that can be outstanding at once (depth - 1).
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.slots.in_flight() + self.orphans.len()
    }

    /// Counters.
    pub fn stats(&self) -> QpairStats {
        QpairStats {
            doorbell_writes: self.ring.mmio_writes,
            ..self.stats
        }
    }

    /// Reads `blocks` blocks at `lba` of namespace `nsid` into `buf`.
    #[inline]
    pub fn read(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(nvm_opcode::READ, nsid, lba, blocks, buf, tag)
    }

    /// Writes `blocks` blocks from `buf` at `lba` of namespace `nsid`.
    #[inline]
    pub fn write(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        self.rw(nvm_opcode::WRITE, nsid, lba, blocks, buf, tag)
    }

    /// Flush (volatile write cache to media).
    pub fn flush(&mut self, nsid: u32, tag: u64) -> Result<(), Rejected> {
        self.namespace(nsid).map_err(|e| Rejected::new(e, None))?;
        self.push(SubmissionEntry::flush(nsid), None, tag, |_| Ok((0, 0)))
    }

    /// Write Zeroes over `blocks` blocks at `lba`.
    pub fn write_zeroes(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        tag: u64,
    ) -> Result<(), Rejected> {
        let (nlb, _) = self
            .check_range(nsid, lba, blocks)
            .map_err(|e| Rejected::new(e, None))?;
        self.push(
            SubmissionEntry::write_zeroes(nsid, lba, nlb, false),
            None,
            tag,
            |_| Ok((0, 0)),
        )
    }

    /// Dataset Management, deallocate (trim) each `(lba, blocks)` range.
    pub fn deallocate(
        &mut self,
        nsid: u32,
        ranges: &[(u64, u32)],
        tag: u64,
    ) -> Result<(), Rejected> {
        let bad = |e| Rejected::new(e, None);
        if ranges.is_empty() || ranges.len() > DSM_MAX_RANGES {
            return Err(bad(NvmeError::InvalidArgument(format!(
                "{} ranges: 1..={DSM_MAX_RANGES} allowed",
                ranges.len()
            ))));
        }
        for &(lba, blocks) in ranges {
            self.check_range(nsid, lba, blocks).map_err(bad)?;
        }
        let nr = (ranges.len() - 1) as u8;
        self.push(
            SubmissionEntry::deallocate(nsid, 0, nr),
            None,
            tag,
            |page| {
                // The slot's PRP page carries the range list: 256 ranges of
                // 16 bytes at most, two words each, fit its 4 KiB.
                for (i, &(lba, blocks)) in ranges.iter().enumerate() {
                    let [lo, hi]: [u64; 2] = bytemuck::cast(DsmRange::new(lba, blocks));
                    page.put(2 * i, lo);
                    page.put(2 * i + 1, hi);
                }
                Ok((page.iova, 0))
            },
        )
    }

    /// Rings the SQ doorbell for everything submitted since the last time.
    #[inline]
    pub fn submit(&mut self) {
        self.ring.ring_sq();
    }

    /// Rings the doorbell if needed, then hands up to `max` completions to
    /// `f`. Returns how many it handed over.
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(Completion)) -> usize {
        if self.inner.generation.load(Ordering::Relaxed) != self.generation {
            if let Err(e) = self.recover() {
                log::error!("queue {}: recreating after reset failed: {e}", self.qid);
            }
        }
        let mut n = 0;
        while n < max {
            let Some((tag, buf, timed_out)) = self.orphans.pop() else {
                break;
            };
            let result = Err(if timed_out {
                NvmeError::Timeout {
                    what: "I/O command",
                    after: self.inner.options.io_timeout,
                }
            } else {
                NvmeError::Reset
            });
            f(Completion { tag, buf, result });
            n += 1;
        }
        self.ring.ring_sq();
        let mut consumed = 0;
        while n < max {
            let Some(c) = self.ring.pop() else {
                break;
            };
            consumed += 1;
            // Validate the whole entry before trusting any of it: a
            // malformed completion finishes nothing and hands nothing back;
            // the command it names stays outstanding (its timeout applies).
            if c.sq_id != self.qid || self.ring.sq.check_head(c.sq_head).is_err() {
                self.stats.malformed += 1;
                log::warn!("queue {}: malformed completion {c:?}", self.qid);
                continue;
            }
            let Ok(slot) = self.slots.complete(c.cid) else {
                self.stats.unknown_cids += 1;
                log::warn!("queue {}: completion for cid {}, not in flight", self.qid, c.cid);
                continue;
            };
            self.ring.sq.set_checked_head(c.sq_head);
            n += 1;
            self.stats.completed += 1;
            f(Completion {
                tag: slot.tag,
                buf: slot.buf,
                result: c.status().result().map_err(NvmeError::Status),
            });
        }
        if consumed > 0 {
            self.ring.ring_cq();
        }
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(CLOCK_EVERY) && self.slots.in_flight() > 0 {
            self.check_timeouts();
        }
        n
    }

    /// The namespace `nsid`; the first one is checked first (usually the one).
    #[inline]
    fn namespace(&self, nsid: u32) -> Result<Namespace> {
        match self.namespaces.first() {
            Some(ns) if ns.id == nsid => Ok(*ns),
            _ => self
                .namespaces
                .iter()
                .find(|n| n.id == nsid)
                .copied()
                .ok_or(NvmeError::InvalidNamespace(nsid)),
        }
    }

    /// Validates a block range; returns the 0-based NLB and the namespace.
    #[inline]
    fn check_range(&self, nsid: u32, lba: u64, blocks: u32) -> Result<(u16, Namespace)> {
        let ns = self.namespace(nsid)?;
        if blocks == 0 || blocks > 1 << 16 {
            return Err(NvmeError::InvalidArgument(format!(
                "{blocks} blocks: 1..=65536 per command"
            )));
        }
        if lba
            .checked_add(blocks as u64)
            .is_none_or(|end| end > ns.blocks)
        {
            return Err(NvmeError::LbaOutOfRange {
                lba,
                blocks,
                capacity: ns.blocks,
            });
        }
        Ok(((blocks - 1) as u16, ns))
    }

    #[inline]
    fn rw(
        &mut self,
        opcode: u8,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        let checked = self.check_range(nsid, lba, blocks).and_then(|(nlb, ns)| {
            if buf.domain() != self.domain {
                return Err(NvmeError::ForeignBuffer);
            }
            let bytes = blocks as usize * ns.block_size as usize;
            if bytes > buf.len() {
                return Err(NvmeError::BufferTooSmall {
                    need: bytes,
                    have: buf.len(),
                });
            }
            if bytes > self.max_transfer {
                return Err(NvmeError::TooLarge {
                    bytes,
                    max: self.max_transfer,
                });
            }
            Ok((nlb, bytes))
        });
        let (nlb, bytes) = match checked {
            Ok(v) => v,
            Err(e) => return Err(Rejected::new(e, Some(buf))),
        };
        let data = buf.iova().get();
        let mut cmd = SubmissionEntry::read(nsid, lba, nlb, 0, 0);
        cmd.cdw0 = (cmd.cdw0 & !0xff) | opcode as u32;
        self.push(cmd, Some(buf), tag, |page| {
            // The slot's own list page, which the device reads only after
            // the doorbell and no other command uses while it is outstanding.
            let p = prp::build_into(data, bytes, PAGE_SIZE, page.iova, WORDS_PER_PAGE, |i, v| {
                page.put(i, v)
            })?;
            Ok((p.prp1, p.prp2))
        })
    }

    /// Takes a command slot, lets `fill` use the slot's page, writes the
    /// command into the SQ.
    #[inline]
    fn push(
        &mut self,
        mut cmd: SubmissionEntry,
        buf: Option<DmaBuf>,
        tag: u64,
        fill: impl FnOnce(SlotPage<'_>) -> Result<(u64, u64)>,
    ) -> Result<(), Rejected> {
        if self.inner.generation.load(Ordering::Relaxed) != self.generation {
            if let Err(e) = self.recover() {
                return Err(Rejected::new(e, buf));
            }
        }
        if self.slots.is_full() {
            return Err(Rejected::new(NvmeError::QueueFull, buf));
        }
        let slot = Slot {
            tag,
            buf,
            epoch: self.epoch,
            aborted: false,
        };
        let Some(cid) = self.slots.alloc(slot) else {
            return Err(Rejected::new(NvmeError::QueueFull, None));
        };
        // cid < depth - 1, and the extra area holds depth pages.
        let base = cid as usize * WORDS_PER_PAGE;
        let page = SlotPage {
            list: &self.ring.extra,
            base,
            iova: self.ring.extra.iova_of(base).get(),
        };
        match fill(page) {
            Ok((prp1, prp2)) => {
                cmd.prp1 = prp1;
                cmd.prp2 = prp2;
            }
            Err(e) => return Err(self.unwind(Some(cid), e)),
        }
        cmd.set_cid(cid);
        if !self.ring.push(&cmd) {
            return Err(self.unwind(Some(cid), NvmeError::QueueFull));
        }
        self.stats.submitted += 1;
        Ok(())
    }

    /// Gives a slot back after a failed submission, with its buffer.
    fn unwind(&mut self, cid: Option<u16>, e: NvmeError) -> Rejected {
        let buf = cid
            .and_then(|c| self.slots.complete(c).ok())
            .and_then(|s| s.buf);
        Rejected::new(e, buf)
    }

    /// Runs every CLOCK_EVERY polls while commands are outstanding: looks
    /// at CSTS.CFS (reset), and every half timeout ends an epoch, in which
    /// late commands get an Abort, and commands late again after their
    /// abort get a controller reset. A command whose completion is lost is
    /// caught even while others keep completing.
    #[cold]
    fn check_timeouts(&mut self) {
        if Csts(self.inner.regs.read32(reg::CSTS)).cfs() {
            log::error!("queue {}: controller fatal status, resetting", self.qid);
            self.reset_controller();
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.epoch_started) < self.inner.options.io_timeout / 2 {
            return;
        }
        self.epoch = self.epoch.wrapping_add(1);
        self.epoch_started = now;
        let (epoch, qid) = (self.epoch, self.qid);
        let mut to_abort = [0u16; MAX_ABORTS];
        let mut n_abort = 0;
        let mut reset = false;
        for cid in 0..self.depth {
            let Some(slot) = self.slots.get_mut(cid) else {
                continue;
            };
            if epoch.wrapping_sub(slot.epoch) < LATE_EPOCHS {
                continue;
            }
            if slot.aborted {
                reset = true;
            } else if n_abort < MAX_ABORTS {
                slot.aborted = true;
                slot.epoch = epoch;
                to_abort[n_abort] = cid;
                n_abort += 1;
            }
        }
        if n_abort > 0 {
            self.stats.timeouts += n_abort as u64;
            let mut admin = self.inner.lock_admin();
            for &cid in &to_abort[..n_abort] {
                self.stats.aborts_sent += 1;
                let abort = SubmissionEntry::abort(qid, cid);
                let r = admin.execute(&self.inner.regs, self.inner.cap, abort);
                log::warn!("queue {qid}: command {cid} timed out, abort: {r:?}");
            }
        }
        if reset {
            log::error!("queue {qid}: commands still outstanding after abort, resetting");
            self.reset_controller();
        }
    }

    #[cold]
    fn reset_controller(&mut self) {
        if let Err(e) = self
            .inner
            .reset_if(self.generation)
            .and_then(|_| self.recover())
        {
            log::error!("queue {}: reset failed: {e}", self.qid);
        }
    }

    /// After a controller reset: hand every outstanding command back (as
    /// orphans for the next poll) and create this pair's queues again.
    #[cold]
    fn recover(&mut self) -> Result<()> {
        let mut admin = self.inner.lock_admin();
        let generation = self.inner.generation.load(Ordering::Acquire);
        for (_, slot) in self.slots.drain() {
            // Commands that were aborted for lateness end as timeouts.
            self.orphans.push((slot.tag, slot.buf, slot.aborted));
        }
        self.stats.resets_seen += 1;
        self.epoch_started = Instant::now();
        // Zeroes the queues and this pair's shadow slots (which it keeps).
        self.ring.reinit()?;
        create_queues(&mut admin, &self.inner, &self.ring, self.qid, self.depth)?;
        self.generation = generation;
        Ok(())
    }
}

// A queue pair moves to the thread that drives it.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<IoQueuePair>();
};

/// 64-bit words in one 4 KiB slot page.
const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;

/// A command slot's preallocated 4 KiB page (PRP list or DSM ranges): words
/// `base..base + WORDS_PER_PAGE` of the ring's extra area.
struct SlotPage<'a> {
    list: &'a DmaArray<u64>,
    base: usize,
    iova: u64,
}

impl SlotPage<'_> {
    /// Stores word `i` of the page.
    #[inline(always)]
    fn put(&self, i: usize, v: u64) {
        debug_assert!(i < WORDS_PER_PAGE);
        self.list.write(self.base + i, v);
    }
}

fn create_queues(
    admin: &mut Admin,
    inner: &Inner,
    ring: &Ring,
    qid: u16,
    depth: u16,
) -> Result<()> {
    admin.execute(
        &inner.regs,
        inner.cap,
        SubmissionEntry::create_io_cq(qid, depth, ring.cq_iova()),
    )?;
    let sq = SubmissionEntry::create_io_sq(qid, depth, ring.sq_iova(), qid, QueuePriority::Medium);
    if let Err(e) = admin.execute(&inner.regs, inner.cap, sq) {
        let _ = admin.execute(&inner.regs, inner.cap, SubmissionEntry::delete_io_cq(qid));
        return Err(e);
    }
    Ok(())
}

impl Drop for IoQueuePair {
    fn drop(&mut self) {
        let mut admin = self.inner.lock_admin();
        let current = self.inner.generation.load(Ordering::Acquire) == self.generation;
        if current {
            let (r, c) = (&self.inner.regs, self.inner.cap);
            let ok = admin
                .execute(r, c, SubmissionEntry::delete_io_sq(self.qid))
                .is_ok()
                & admin
                    .execute(r, c, SubmissionEntry::delete_io_cq(self.qid))
                    .is_ok();
            if !ok {
                // The device may still own these buffers and queues: leak
                // them rather than let it write into reused memory.
                log::error!("queue {}: delete failed; leaking its memory", self.qid);
                for (_, slot) in self.slots.drain() {
                    std::mem::forget(slot.buf);
                }
                self.ring.leak_memory();
                // Its queue id (and shadow slots) stay taken too.
                return;
            }
        }
        admin.release_qid(self.qid);
    }
}
