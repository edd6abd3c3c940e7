//! I/O queue pairs: one per thread, owned (`Send`, not shared). Commands are
//! written into the SQ as they are submitted and the doorbell is rung once
//! per batch ([`IoQueuePair::submit`] or the next [`IoQueuePair::poll`]).
//! Completions are found by phase tag and handed to a callback together
//! with the caller's tag and buffer: no allocation, lock or system call per
//! I/O. Each command slot owns one preallocated PRP list page.
//!
//! Data buffers are described by one inline SGL Data Block descriptor when
//! the controller supports SGLs (a `DmaBuf` is one IOVA range, see
//! [`crate::controller::DataPointer`]), by PRPs otherwise. A read or write
//! larger than the controller's maximum transfer (MDTS) is split into
//! commands over sub-ranges of the one buffer and completes once, after all
//! of them (see [`IoQueuePair::read`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastlane_framework::{DmaArray, DmaBuf, DmaDomain, Interrupt, Removal};

use crate::controller::{Admin, DataPointer, Inner, Namespace, PAGE_SIZE};
use crate::error::{NvmeError, Rejected, RejectedMeta, Result};
use crate::metadata::MetadataLayout;
use crate::protection::{self, PiType, Protection};
use crate::prp;
use crate::queue::CidTable;
use crate::ring::{Layout, Ring};
use crate::spec::{
    nvm_opcode, reg, Csts, DsmRange, QueuePriority, SglSupport, Status, SubmissionEntry,
    CDW12_PRINFO_SHIFT, DSM_MAX_RANGES, PSDT_SGL_MPTR_CONTIG,
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
    /// The buffer given at submission, back to the caller (a separate
    /// metadata buffer comes back through [`IoQueuePair::take_meta`]).
    pub buf: Option<DmaBuf>,
    /// Success, or the NVMe status / reset / timeout that ended it.
    pub result: Result<()>,
}

/// Counters of one queue pair.
#[derive(Clone, Copy, Debug, Default)]
pub struct QpairStats {
    /// Commands submitted.
    pub submitted: u64,
    /// Commands completed (their callback ran).
    pub completed: u64,
    /// Completions naming a command id that is not outstanding (never
    /// issued, or completed already). They finish nothing.
    pub unknown_cids: u64,
    /// Completions for another SQ or with an impossible SQ head. They
    /// finish nothing: the command they name stays outstanding.
    pub malformed: u64,
    /// Commands that timed out.
    pub timeouts: u64,
    /// Abort commands sent for timed-out commands.
    pub aborts_sent: u64,
    /// Controller resets this queue pair went through.
    pub resets_seen: u64,
    /// Doorbell register writes (fewer than batches with shadow doorbells).
    pub doorbell_writes: u64,
}

/// Which doorbell goes first when a poll consumed completions and the
/// caller then submits: the CQ head write at the end of the poll, or the SQ
/// tail write of the next [`IoQueuePair::submit`] with the CQ head right
/// after it (the head write waits for the next `submit` or `poll`,
/// whichever comes first). SQ first lets the device start the next
/// command while the CQ head write is still under way (under QEMU an MMIO
/// exit of 8-13 us, measured by `benches/vm/nvme-trace-timeline.sh`); the
/// head then lags by one poll, so the default needs a CQ with room for two
/// rounds of commands in flight (`QueueSize::Spare` or `Maximum`), else it
/// is CQ first. Either way a polled pair writes the head only once it lags
/// by enough completions (half the CQ at most: 128 for the default queue of
/// depth 2 to 64), not after every poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorbellOrder {
    /// CQ head at the end of the poll that made it lag enough.
    CqFirst,
    /// CQ head after the next SQ tail (or at the next poll) once it lags
    /// enough.
    SqFirst,
}

/// How many consumed completions the CQ head doorbell may lag behind
/// before it is written: the device only needs the head to find room, so
/// a polled pair with spare CQ entries tells it once per batch of
/// completions instead of once per poll (one MMIO write per I/O at QD1
/// under QEMU, 8-13 us of exit). The device never finds the CQ full: it
/// counts lag + commands in flight (at most `depth - 1`) as occupied, and
/// with SQ first a head scheduled at `release_at - 1 + depth - 1` entries
/// of lag is written only after the next SQ tail; both stay within
/// `entries - 1`. Capped at half the queue. A pair with an interrupt
/// vector writes it every poll: QEMU, like INTx hardware, keeps raising
/// the vector while head != tail.
fn cq_release_at(entries: u16, depth: u16, order: DoorbellOrder, interrupts: bool) -> u16 {
    if interrupts {
        return 1;
    }
    let (e, d) = (u32::from(entries), u32::from(depth));
    let bound = match order {
        DoorbellOrder::CqFirst => (e + 1).saturating_sub(d),
        DoorbellOrder::SqFirst => (e + 2).saturating_sub(2 * d),
    };
    bound.min(e / 2).max(1) as u16
}

/// A command in flight. A request split into several commands has one
/// head (the first command: tag and buffer) and children that name it.
struct Slot {
    tag: u64,
    buf: Option<DmaBuf>,
    /// Timeout epoch at submission (or at the abort sent for it).
    epoch: u32,
    /// An abort was sent for it: late again means reset.
    aborted: bool,
    /// 0: a single command (or a head with nothing else to wait for),
    /// finished by its own completion. Otherwise see [`group`].
    group: u32,
    /// First error of a split request's commands (head only).
    error: Status,
}

/// [`Slot::group`] encoding for split requests.
mod group {
    /// A child: the head's command id is in the low 16 bits.
    pub const CHILD: u32 = 1 << 31;
    /// Head: its own completion arrived.
    pub const HEAD_DONE: u32 = 1 << 30;
    /// Head: a command of the request failed (in `Slot::error`).
    pub const FAILED: u32 = 1 << 29;
    /// Head: children not yet completed, in the low 16 bits.
    pub const PENDING: u32 = 0xFFFF;
    /// A read or write with metadata (never split): its metadata buffer
    /// and host check wait in `IoQueuePair::metas` / `checks`.
    pub const META: u32 = 1 << 28;
}

/// What the plain read/write path needs of a namespace it may use: data
/// bytes per block include interleaved metadata (extended LBA). Namespaces
/// with a separate metadata buffer are not here: a command without a
/// metadata pointer would send their metadata to address 0.
#[derive(Clone, Copy, Debug)]
struct RwNs {
    blocks: u64,
    /// Bytes per block in the data buffer.
    stride: usize,
    id: u32,
}

/// A read whose PI the driver checks when it completes.
#[derive(Clone, Copy, Debug)]
struct HostCheck {
    ns: Namespace,
    lba: u64,
    blocks: u32,
    pi: Protection,
}

/// A command ended by a reset or timeout: tag, buffers, timed out.
type Orphan = (u64, Option<DmaBuf>, Option<DmaBuf>, Ended);

/// Why a command ended without its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// A controller reset.
    Reset,
    /// Its timeout (it was aborted, then the controller reset).
    Timeout,
    /// The controller was removed.
    Removed,
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
    orphans: Vec<Orphan>,
    namespaces: Vec<Namespace>,
    /// The namespaces plain reads and writes may use.
    rw_ns: Vec<RwNs>,
    /// Metadata buffers of commands in flight, by command id ([`group::META`]).
    metas: Vec<Option<DmaBuf>>,
    /// Driver-side PI checks of reads in flight, by command id.
    checks: Vec<Option<HostCheck>>,
    /// Metadata buffers of finished commands, with their tags, until
    /// [`IoQueuePair::take_meta`] (at most `capacity`, oldest dropped).
    finished_metas: Vec<(u64, DmaBuf)>,
    max_transfer: usize,
    /// How data buffers are described: SGL support level in use, or
    /// `SglSupport::None` for PRPs.
    sgl: SglSupport,
    /// [`Self::sgl`] as a mask: a data block at `addr` of `len` bytes
    /// (never 0) gets an SGL descriptor iff `(addr | len) & mask == 0`.
    sgl_mask: u64,
    /// Buffers must be mapped in this domain (the controller's container).
    domain: DmaDomain,
    /// Poll calls, to read the clock only every CLOCK_EVERY of them.
    polls: u32,
    /// Coarse clock for timeouts: bumped every half timeout.
    epoch: u32,
    epoch_started: Instant,
    stats: QpairStats,
    /// This pair's MSI-X vector, with [`crate::Options::interrupts`].
    irq: Option<Interrupt>,
    /// Set when the controller is being removed.
    removal: Removal,
    /// Completions consumed whose CQ head doorbell is still to write
    /// ([`DoorbellOrder::SqFirst`]).
    cq_unrung: bool,
    order: DoorbellOrder,
    /// [`cq_release_at`] for this pair and order.
    cq_release_at: u16,
}

impl IoQueuePair {
    pub(crate) fn create(inner: Arc<Inner>, depth: u16) -> Result<IoQueuePair> {
        let max = inner.cap.max_queue_entries().min(u16::MAX as u32) as u16;
        if depth < 2 || depth > max {
            return Err(NvmeError::InvalidArgument(format!(
                "queue depth {depth}: the controller allows 2..={max}"
            )));
        }
        let entries = inner.options.queue_size.entries(depth, max);
        // One list page per command slot (depth - 1 of them) and one spare.
        let layout = Layout::new(entries, depth as usize * PAGE_SIZE);
        let region = inner.mem.region(layout.total)?;
        let mut admin = inner.lock_admin();
        let qid = admin
            .take_qid()
            .ok_or(NvmeError::NoQueuesLeft(admin.granted()))?;
        let mut ring = match Ring::new(
            region,
            layout,
            entries,
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
        if let Err(e) = create_queues(&mut admin, &inner, &ring, qid, entries) {
            admin.release_qid(qid);
            return Err(e);
        }
        let generation = inner.generation.load(Ordering::Acquire);
        drop(admin);
        // In flight at most depth - 1, consumed and not yet released as
        // many again.
        let order = if u32::from(entries) >= 2 * u32::from(depth) {
            DoorbellOrder::SqFirst
        } else {
            DoorbellOrder::CqFirst
        };
        let irq = inner.interrupt_for(qid);
        Ok(IoQueuePair {
            rw_ns: rw_namespaces(&inner.namespaces),
            metas: (0..depth).map(|_| None).collect(),
            checks: vec![None; depth as usize],
            finished_metas: Vec::new(),
            namespaces: inner.namespaces.clone(),
            max_transfer: inner.info.max_transfer,
            sgl: sgl_mode(inner.info.sgl, inner.options.data_pointer),
            sgl_mask: sgl_mask(sgl_mode(inner.info.sgl, inner.options.data_pointer)),
            domain: inner.mem.domain(),
            removal: inner.removal.clone(),
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
            cq_unrung: false,
            order,
            cq_release_at: cq_release_at(entries, depth, order, irq.is_some()),
            irq,
        })
    }

    /// Chooses the doorbell order (default: see [`DoorbellOrder`]).
    /// Any lagging CQ head is written first: the lag the old order allowed
    /// may be more than the new one leaves room for.
    pub fn set_doorbell_order(&mut self, order: DoorbellOrder) {
        self.order = order;
        self.cq_release_at = cq_release_at(
            self.ring.cq.size(),
            self.depth,
            order,
            self.irq.is_some(),
        );
        if self.ring.cq_lag() != 0 {
            self.cq_unrung = true;
        }
        self.ring_cq_late();
    }

    /// Writes a CQ head doorbell left for later, if any.
    #[inline(always)]
    fn ring_cq_late(&mut self) {
        if self.cq_unrung {
            self.cq_unrung = false;
            // After a reset the head belongs to a queue that is gone.
            if !self.stale() {
                self.ring.ring_cq();
            }
        }
    }

    /// Queue id on the controller.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Commands that can be outstanding at once (depth - 1).
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Bytes one read or write command carries at most; above it a
    /// request is split ([`Self::read`]).
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// The namespaces this queue pair reads and writes.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// Sleeps until this pair's completion queue has something to poll or
    /// `timeout` passes (`None`: no limit); returns whether it has. For a
    /// thread that found nothing to do: it polls while busy and blocks here
    /// when idle (hybrid). Needs [`crate::Options::interrupts`], else
    /// [`NvmeError::InvalidArgument`]. Returns at once when a completion
    /// is already waiting; a completion that lands while it goes to sleep
    /// still wakes it (the signal is cleared before the queue is checked).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool> {
        let Some(irq) = &self.irq else {
            return Err(NvmeError::InvalidArgument(
                "waiting needs interrupts: open the controller with Options::interrupts".into(),
            ));
        };
        irq.clear();
        if self.ring.cq_ready() || !self.orphans.is_empty() || self.removal.is_removed() {
            // A removed controller's outstanding commands end at the next poll.
            return Ok(true);
        }
        if !irq.wait(timeout)? {
            return Ok(self.ring.cq_ready());
        }
        Ok(true)
    }

    /// Hybrid polling in one call: polls like [`Self::poll`]; once nothing
    /// has completed for `spin`, sleeps in [`Self::wait`] (at most
    /// `timeout`) before polling again. Returns the completions of this
    /// call (0 when the sleep timed out). Under load it never sleeps, so it
    /// moves as fast as polling; idle, it uses no CPU after `spin`.
    pub fn poll_or_sleep(
        &mut self,
        max: usize,
        spin: Duration,
        timeout: Option<Duration>,
        mut f: impl FnMut(Completion),
    ) -> Result<usize> {
        let idle_since = Instant::now();
        loop {
            let n = self.poll(max, &mut f);
            if n > 0 {
                return Ok(n);
            }
            if idle_since.elapsed() >= spin {
                if !self.wait(timeout)? {
                    return Ok(0);
                }
                return Ok(self.poll(max, &mut f));
            }
        }
    }

    /// Whether [`Self::wait`] can sleep: the pair has an interrupt vector.
    pub fn has_interrupt(&self) -> bool {
        self.irq.is_some()
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
    ///
    /// A transfer above the controller's maximum of one command
    /// ([`crate::ControllerInfo::max_transfer`], MDTS) is split into
    /// commands over consecutive sub-ranges of `buf` (the buffer is one
    /// IOVA range), all submitted at once: it needs as many free command
    /// slots (else [`NvmeError::QueueFull`]; at most [`Self::capacity`]
    /// commands, else [`NvmeError::TooLarge`]). It completes once, after
    /// every command of it completed, with the first error any of them
    /// had; the buffer comes back only then.
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

    /// Writes `blocks` blocks from `buf` at `lba` of namespace `nsid`
    /// (split like [`Self::read`] when above the maximum of one command).
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

    /// Reads `blocks` blocks at `lba` of namespace `nsid`, a namespace
    /// formatted with metadata, into `buf` (and `meta`), with the
    /// protection information handling `pi` asks for.
    ///
    /// The buffers' layout: with extended LBAs, `buf` holds each block's
    /// data followed by its metadata and `meta` is `None`; with a separate
    /// layout `buf` holds the data and `meta` the metadata of each block in
    /// turn (one contiguous buffer: the command's metadata pointer). With
    /// `pi.action` (PRACT) and 8 bytes of metadata no metadata is moved:
    /// `buf` holds data only and `meta` is `None`
    /// ([`crate::MetadataFormat::data_stride`] and
    /// [`crate::MetadataFormat::separate_stride`] give the sizes). The
    /// reference tag expected is the low 32 bits of `lba` (type 1). A
    /// controller check that fails ends the read with
    /// [`NvmeError::Protection`]; so does a failed check of the fields in
    /// `pi.verify`, which the driver makes itself once the data is in.
    ///
    /// Not split: more than [`Self::max_transfer`] bytes in `buf` is
    /// [`NvmeError::TooLarge`]. The data buffer comes back in the
    /// [`Completion`], the metadata buffer from [`Self::take_meta`] once
    /// the command has completed; both in the [`RejectedMeta`] of a
    /// refusal.
    #[allow(clippy::too_many_arguments)]
    pub fn read_with_meta(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DmaBuf,
        meta: Option<DmaBuf>,
        pi: Protection,
        tag: u64,
    ) -> Result<(), RejectedMeta> {
        self.rw_meta(nvm_opcode::READ, nsid, lba, blocks, (buf, meta), pi, tag)
    }

    /// Writes `blocks` blocks from `buf` (and `meta`) at `lba` of namespace
    /// `nsid` (layouts as in [`Self::read_with_meta`]). With `pi.action`
    /// the controller generates the protection information (application
    /// tag `pi.app_tag`, reference tag the low 32 bits of each LBA);
    /// without it the buffers carry it (build it with
    /// [`crate::protection::fill`]) and the controller checks `pi.check`.
    #[allow(clippy::too_many_arguments)]
    pub fn write_with_meta(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: DmaBuf,
        meta: Option<DmaBuf>,
        pi: Protection,
        tag: u64,
    ) -> Result<(), RejectedMeta> {
        self.rw_meta(nvm_opcode::WRITE, nsid, lba, blocks, (buf, meta), pi, tag)
    }

    /// How this queue pair describes data buffers from now on (the
    /// controller's [`crate::Options::data_pointer`] by default).
    /// [`DataPointer::Sgl`] on a controller without SGL support is
    /// [`NvmeError::InvalidArgument`].
    pub fn set_data_pointer(&mut self, mode: DataPointer) -> Result<()> {
        let support = self.inner.info.sgl;
        if mode == DataPointer::Sgl && support == SglSupport::None {
            return Err(NvmeError::InvalidArgument(
                "SGLs forced but the controller does not support them".into(),
            ));
        }
        self.sgl = sgl_mode(support, mode);
        self.sgl_mask = sgl_mask(self.sgl);
        Ok(())
    }

    /// Whether read and write commands carry an SGL descriptor (for
    /// buffers meeting the controller's SGL alignment) rather than PRPs.
    pub fn uses_sgl(&self) -> bool {
        self.sgl != SglSupport::None
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

    /// Rings the SQ doorbell for everything submitted since the last time,
    /// then the CQ head doorbell of the last poll ([`DoorbellOrder`]).
    #[inline]
    pub fn submit(&mut self) {
        self.ring.ring_sq();
        self.ring_cq_late();
    }

    /// Rings the doorbell if needed, then hands up to `max` completions to
    /// `f`. Returns how many it handed over.
    #[inline]
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(Completion)) -> usize {
        if self.inner.generation.load(Ordering::Relaxed) != self.generation {
            self.recover_logged();
        }
        let mut n = 0;
        if !self.orphans.is_empty() {
            n = self.deliver_orphans(max, &mut f);
        }
        self.ring.ring_sq();
        self.ring_cq_late();
        let mut consumed = false;
        while n < max {
            // An I/O completion is its second quadword (DW0/DW1 carry
            // nothing for the commands of this queue): one load.
            let Some(c) = self.ring.pop_word() else {
                break;
            };
            consumed = true;
            // Validate the whole entry before trusting any of it: a
            // malformed completion finishes nothing and hands nothing back;
            // the command it names stays outstanding (its timeout applies).
            if c.sq_id() != self.qid || self.ring.sq.check_head(c.sq_head()).is_err() {
                self.stats.malformed += 1;
                log::warn!(
                    "queue {}: malformed completion (sq_id {}, sq_head {}, cid {}, status {:#x})",
                    self.qid,
                    c.sq_id(),
                    c.sq_head(),
                    c.cid(),
                    c.status()
                );
                continue;
            }
            // A single command (group 0) is finished by its completion; the
            // commands of a split request go through `complete_part`. The
            // tag and buffer come out of the slot in place.
            let status = Status(c.status());
            match self
                .slots
                .complete_with(c.cid(), |s| (s.group == 0).then(|| (s.tag, s.buf.take())))
            {
                Ok(Some((tag, buf))) => {
                    self.ring.sq.set_checked_head(c.sq_head());
                    n += 1;
                    self.stats.completed += 1;
                    // Success built apart from the error: the usual
                    // completion carries no error bytes to move.
                    if status.is_success() {
                        f(Completion {
                            tag,
                            buf,
                            result: Ok(()),
                        });
                    } else {
                        f(Completion {
                            tag,
                            buf,
                            result: status_error(status),
                        });
                    }
                }
                Ok(None) => {
                    self.ring.sq.set_checked_head(c.sq_head());
                    if let Some(done) = self.complete_part(c.cid(), status) {
                        n += 1;
                        self.stats.completed += 1;
                        f(done);
                    }
                }
                Err(_) => {
                    self.stats.unknown_cids += 1;
                    log::warn!(
                        "queue {}: completion for cid {}, not in flight",
                        self.qid,
                        c.cid()
                    );
                }
            }
        }
        if consumed {
            // Below the release point the device still has room for
            // everything in flight.
            if self.ring.cq_lag() >= self.cq_release_at {
                if self.order == DoorbellOrder::SqFirst {
                    self.cq_unrung = true;
                } else {
                    self.ring.ring_cq();
                }
            }
        } else if self.removal.is_removed() {
            // Bus mastering is off and the device is going: nothing more
            // will complete. Everything ends with `Removed` (next poll).
            self.notice_removal();
        }
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(CLOCK_EVERY) && self.slots.in_flight() > 0 {
            self.check_timeouts();
        }
        n
    }

    #[cold]
    fn recover_logged(&mut self) {
        if let Err(e) = self.recover() {
            log::error!("queue {}: recreating after reset failed: {e}", self.qid);
        }
    }

    /// Hands commands ended by a reset or timeout to `f`, up to `max`.
    #[cold]
    fn deliver_orphans(&mut self, max: usize, f: &mut impl FnMut(Completion)) -> usize {
        let mut n = 0;
        while n < max {
            let Some((tag, buf, meta, ended)) = self.orphans.pop() else {
                break;
            };
            let result = Err(match ended {
                Ended::Timeout => NvmeError::Timeout {
                    what: "I/O command",
                    after: self.inner.options.io_timeout,
                },
                Ended::Reset => NvmeError::Reset,
                Ended::Removed => NvmeError::Removed,
            });
            if let Some(m) = meta {
                self.hand_back_meta(tag, m);
            }
            f(Completion { tag, buf, result });
            n += 1;
        }
        n
    }

    /// The completion of one command of a split request (`cid` is in
    /// flight and not a single command): a child retires and counts down
    /// its head; a head notes its own completion. The request finishes,
    /// with the first error of any of its commands, when the head and all
    /// children are done, never earlier. A repeated completion of a head
    /// that waits for children finishes nothing.
    #[cold]
    fn complete_part(&mut self, cid: u16, status: Status) -> Option<Completion> {
        let failed = !status.is_success();
        let head = {
            let slot = self.slots.get_mut(cid)?;
            if slot.group & group::CHILD != 0 {
                let head = (slot.group & group::PENDING) as u16;
                let _ = self.slots.complete(cid);
                head
            } else if slot.group & group::HEAD_DONE != 0 {
                self.stats.unknown_cids += 1;
                log::warn!("queue {}: repeated completion for cid {cid}", self.qid);
                return None;
            } else {
                slot.group |= group::HEAD_DONE;
                if failed && slot.group & group::FAILED == 0 {
                    slot.group |= group::FAILED;
                    slot.error = status;
                }
                cid
            }
        };
        let slot = self.slots.get_mut(head)?;
        if head != cid {
            slot.group -= 1;
            if failed && slot.group & group::FAILED == 0 {
                slot.group |= group::FAILED;
                slot.error = status;
            }
        }
        if slot.group & group::PENDING != 0 || slot.group & group::HEAD_DONE == 0 {
            return None;
        }
        let slot = self.slots.complete(head).ok()?;
        let mut result = if slot.group & group::FAILED != 0 {
            slot.error.result().map_err(NvmeError::from_status)
        } else {
            Ok(())
        };
        let mut meta = None;
        if slot.group & group::META != 0 {
            meta = self.metas.get_mut(head as usize).and_then(Option::take);
            let check = self.checks.get_mut(head as usize).and_then(Option::take);
            if let (Ok(()), Some(c), Some(buf)) = (&result, check, &slot.buf) {
                result = protection::verify(&c.ns, c.lba, c.blocks, buf, meta.as_ref(), &c.pi);
            }
        }
        if let Some(m) = meta {
            self.hand_back_meta(slot.tag, m);
        }
        Some(Completion {
            tag: slot.tag,
            buf: slot.buf,
            result,
        })
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

    /// Validates a read or write and submits it: one command, or a split
    /// request ([`Self::rw_split`]) above the maximum transfer.
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
        if self.stale() {
            if let Err(e) = self.refresh() {
                return Err(Rejected::new(e, Some(buf)));
            }
        }
        let ns = match self.rw_ns.first() {
            Some(ns) if ns.id == nsid => *ns,
            _ => match self.rw_namespace(nsid) {
                Ok(ns) => ns,
                Err(e) => return Err(Rejected::new(e, Some(buf))),
            },
        };
        // blocks * stride < 2^64: no overflow.
        let bytes = blocks as usize * ns.stride;
        // The domain check (foreign buffers are refused) and the IOVA in one.
        let data = match buf.iova_in(self.domain) {
            Some(iova)
                if blocks != 0
                    && lba
                        .checked_add(blocks as u64)
                        .is_some_and(|end| end <= ns.blocks)
                    && bytes <= buf.len() =>
            {
                iova.get()
            }
            _ => return Err(self.rw_refusal(ns, lba, blocks, bytes, buf)),
        };
        if bytes > self.max_transfer {
            return self.rw_split(opcode, ns, lba, blocks, buf, tag);
        }
        let slot = Slot {
            tag,
            buf: Some(buf),
            epoch: self.epoch,
            aborted: false,
            group: 0,
            error: Status(0),
        };
        let cid = match self.slots.try_alloc(slot) {
            Ok(cid) => cid,
            Err(slot) => return Err(Rejected::new(NvmeError::QueueFull, slot.buf)),
        };
        let dptr = match self.data_pointer(cid, data, bytes) {
            Ok(d) => d,
            Err(e) => return Err(self.unwind(Some(cid), e)),
        };
        let Some(sq_slot) = self.ring.sq.push_slot() else {
            return Err(self.unwind(Some(cid), NvmeError::QueueFull));
        };
        // bytes <= max_transfer <= 2 MiB: at most 4096 blocks, NLB fits.
        let words = rw_words(opcode, cid, nsid, lba, (blocks - 1) as u16, dptr);
        self.ring.write_sq_words(sq_slot, words);
        self.stats.submitted += 1;
        Ok(())
    }

    /// The data pointer of command slot `cid` for `bytes` at IOVA `data`:
    /// one SGL Data Block descriptor when SGLs are in use and the range
    /// meets their alignment, PRPs (in the slot's list page) otherwise.
    #[inline(always)]
    fn data_pointer(&self, cid: u16, data: u64, bytes: usize) -> Result<DataPtr> {
        // `self.sgl.fits(data, bytes)` in one test (bytes > 0).
        debug_assert_eq!(
            (data | bytes as u64) & self.sgl_mask == 0,
            self.sgl.fits(data, bytes)
        );
        if (data | bytes as u64) & self.sgl_mask == 0 {
            // SGL Data Block descriptor: address; length, reserved bytes
            // and identifier 00h (Data Block, Address) in the second half.
            return Ok(DataPtr {
                psdt: PSDT_SGL_MPTR_CONTIG,
                dptr: [data, bytes as u64],
            });
        }
        // cid < depth - 1, and the extra area holds depth pages.
        let base = cid as usize * WORDS_PER_PAGE;
        let list = &self.ring.extra;
        // The slot's own list page, which the device reads only after the
        // doorbell and no other command uses while this one is outstanding.
        let p = prp::build_4k(data, bytes, list.iova_of(base).get(), |i, v| {
            list.write(base + i, v)
        })?;
        Ok(DataPtr {
            psdt: 0,
            dptr: [p.prp1, p.prp2],
        })
    }

    /// The separate metadata buffer of the finished read or write with
    /// metadata tagged `tag` (after its [`Completion`] was handed out, a
    /// reset or timeout included). The queue pair keeps at most
    /// [`Self::capacity`] of them: past that the oldest goes back to its
    /// pool.
    pub fn take_meta(&mut self, tag: u64) -> Option<DmaBuf> {
        let i = self.finished_metas.iter().position(|(t, _)| *t == tag)?;
        Some(self.finished_metas.remove(i).1)
    }

    /// Keeps a finished command's metadata buffer for [`Self::take_meta`].
    #[cold]
    fn hand_back_meta(&mut self, tag: u64, meta: DmaBuf) {
        if self.finished_metas.len() >= self.slots.capacity() {
            log::warn!(
                "queue {}: metadata buffers not taken back (take_meta); the oldest returns to its pool",
                self.qid
            );
            self.finished_metas.remove(0);
        }
        self.finished_metas.push((tag, meta));
    }

    /// A plain read's or write's namespace other than the first: one
    /// without a separate metadata buffer.
    #[cold]
    fn rw_namespace(&self, nsid: u32) -> Result<RwNs> {
        if let Some(ns) = self.rw_ns.iter().find(|n| n.id == nsid) {
            return Ok(*ns);
        }
        self.namespace(nsid)?;
        Err(NvmeError::InvalidArgument(format!(
            "namespace {nsid} keeps metadata in a separate buffer: use read_with_meta / write_with_meta"
        )))
    }

    /// Submits a read or write with metadata and PI flags (never split).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn rw_meta(
        &mut self,
        opcode: u8,
        nsid: u32,
        lba: u64,
        blocks: u32,
        (buf, meta): (DmaBuf, Option<DmaBuf>),
        pi: Protection,
        tag: u64,
    ) -> Result<(), RejectedMeta> {
        let refuse = |error, buf, meta| RejectedMeta { error, buf, meta };
        if self.stale() {
            if let Err(e) = self.refresh() {
                return Err(refuse(e, Some(buf), meta));
            }
        }
        let (ns, data, bytes, mptr) =
            match self.meta_plan(opcode, nsid, lba, blocks, &buf, meta.as_ref(), &pi) {
                Ok(p) => p,
                Err(e) => return Err(refuse(e, Some(buf), meta)),
            };
        let slot = Slot {
            tag,
            buf: Some(buf),
            epoch: self.epoch,
            aborted: false,
            group: group::META,
            error: Status(0),
        };
        let cid = match self.slots.try_alloc(slot) {
            Ok(cid) => cid,
            Err(slot) => return Err(refuse(NvmeError::QueueFull, slot.buf, meta)),
        };
        let dptr = match self.data_pointer(cid, data, bytes) {
            Ok(d) => d,
            Err(e) => {
                let r = self.unwind(Some(cid), e);
                return Err(refuse(r.error, r.buf, meta));
            }
        };
        let Some(sq_slot) = self.ring.sq.push_slot() else {
            let r = self.unwind(Some(cid), NvmeError::QueueFull);
            return Err(refuse(r.error, r.buf, meta));
        };
        // cid < depth - 1: both tables have depth entries.
        self.metas[cid as usize] = meta;
        self.checks[cid as usize] = (!pi.verify.is_empty()).then_some(HostCheck {
            ns,
            lba,
            blocks,
            pi,
        });
        let mut words = rw_words(opcode, cid, nsid, lba, (blocks - 1) as u16, dptr);
        words[2] = mptr;
        words[6] |= (pi.prinfo() as u64) << CDW12_PRINFO_SHIFT;
        // CDW14: the initial reference tag (types 1 and 2: the LBA's low
        // 32 bits); CDW15: application tag and mask.
        let ilbrt = match ns.metadata.pi {
            Some(PiType::Type1 | PiType::Type2) => lba as u32,
            _ => 0,
        };
        words[7] = ilbrt as u64 | ((pi.app_tag as u64 | (pi.app_mask as u64) << 16) << 32);
        self.ring.write_sq_words(sq_slot, words);
        self.stats.submitted += 1;
        Ok(())
    }

    /// Validates a read or write with metadata: the namespace, the data
    /// IOVA and bytes, and the metadata pointer (0 when none is moved).
    #[allow(clippy::too_many_arguments)]
    fn meta_plan(
        &self,
        opcode: u8,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf,
        meta: Option<&DmaBuf>,
        pi: &Protection,
    ) -> Result<(Namespace, u64, usize, u64)> {
        let (_, ns) = self.check_range(nsid, lba, blocks)?;
        let f = ns.metadata;
        let invalid = |why: String| Err(NvmeError::InvalidArgument(why));
        if (pi.prinfo() != 0 || !pi.verify.is_empty()) && f.pi.is_none() {
            return invalid(format!("namespace {nsid} has no protection information"));
        }
        if !pi.verify.is_empty() && (opcode != nvm_opcode::READ || !f.transferred(pi.action)) {
            return invalid(
                "the driver checks PI it receives: a read that moves the metadata".into(),
            );
        }
        let too_big = || NvmeError::TooLarge {
            bytes: usize::MAX,
            max: self.max_transfer,
        };
        let bytes = (blocks as usize)
            .checked_mul(f.data_stride(ns.block_size, pi.action))
            .ok_or_else(too_big)?;
        let data = buf
            .iova_in(self.domain)
            .ok_or(NvmeError::ForeignBuffer)?
            .get();
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
        let per = f.separate_stride(pi.action);
        let mptr = match (per, meta) {
            (0, None) => 0,
            (0, Some(_)) => {
                return invalid(format!(
                    "namespace {nsid} moves no separate metadata here: pass None"
                ))
            }
            (_, None) => {
                return invalid(format!(
                    "namespace {nsid} keeps metadata in a separate buffer: pass one"
                ))
            }
            (per, Some(m)) => {
                let iova = m
                    .iova_in(self.domain)
                    .ok_or(NvmeError::ForeignBuffer)?
                    .get();
                let need = blocks as usize * per;
                if need > m.len() {
                    return Err(NvmeError::BufferTooSmall {
                        need,
                        have: m.len(),
                    });
                }
                if iova & 0x3 != 0 {
                    return invalid("the metadata buffer must be dword aligned".into());
                }
                iova
            }
        };
        Ok((ns, data, bytes, mptr))
    }

    /// Why a read or write was refused, with its buffer.
    #[cold]
    fn rw_refusal(&self, ns: RwNs, lba: u64, blocks: u32, bytes: usize, buf: DmaBuf) -> Rejected {
        let e = if blocks == 0 {
            NvmeError::InvalidArgument("0 blocks: a read or write moves at least one".into())
        } else if lba
            .checked_add(blocks as u64)
            .is_none_or(|end| end > ns.blocks)
        {
            NvmeError::LbaOutOfRange {
                lba,
                blocks,
                capacity: ns.blocks,
            }
        } else if buf.domain() != self.domain {
            NvmeError::ForeignBuffer
        } else {
            NvmeError::BufferTooSmall {
                need: bytes,
                have: buf.len(),
            }
        };
        Rejected::new(e, Some(buf))
    }

    /// A read or write above the maximum transfer of one command: split
    /// into commands of `max_transfer` bytes (whole blocks) over
    /// consecutive sub-ranges of `buf`, all or none submitted. The first is
    /// the head (tag and buffer), the others are children naming it.
    #[cold]
    fn rw_split(
        &mut self,
        opcode: u8,
        ns: RwNs,
        lba: u64,
        blocks: u32,
        buf: DmaBuf,
        tag: u64,
    ) -> Result<(), Rejected> {
        let bs = ns.stride;
        let chunk_blocks = (self.max_transfer / bs).max(1);
        let parts = (blocks as usize).div_ceil(chunk_blocks);
        if parts > self.slots.capacity() || parts > PENDING_MAX {
            let max = self.slots.capacity().min(PENDING_MAX) * chunk_blocks * bs;
            return Err(Rejected::new(
                NvmeError::TooLarge {
                    bytes: blocks as usize * bs,
                    max,
                },
                Some(buf),
            ));
        }
        if parts > self.slots.free() || parts > self.ring.sq.free_slots() as usize {
            return Err(Rejected::new(NvmeError::QueueFull, Some(buf)));
        }
        let data = buf.iova().get();
        let head = Slot {
            tag,
            buf: Some(buf),
            epoch: self.epoch,
            aborted: false,
            group: (parts - 1) as u32,
            error: Status(0),
        };
        let head_cid = match self.slots.try_alloc(head) {
            Ok(cid) => cid,
            Err(slot) => return Err(Rejected::new(NvmeError::QueueFull, slot.buf)),
        };
        let mut cids = Vec::with_capacity(parts);
        cids.push(head_cid);
        for i in 0..parts {
            let cid = if i == 0 {
                head_cid
            } else {
                let child = Slot {
                    tag,
                    buf: None,
                    epoch: self.epoch,
                    aborted: false,
                    group: group::CHILD | head_cid as u32,
                    error: Status(0),
                };
                match self.slots.try_alloc(child) {
                    Ok(cid) => {
                        cids.push(cid);
                        cid
                    }
                    Err(_) => return Err(self.unwind_split(&cids, i, NvmeError::QueueFull)),
                }
            };
            let first = i * chunk_blocks;
            let n = chunk_blocks.min(blocks as usize - first);
            let at = data.wrapping_add((first * bs) as u64);
            let dptr = match self.data_pointer(cid, at, n * bs) {
                Ok(d) => d,
                Err(e) => return Err(self.unwind_split(&cids, i, e)),
            };
            let Some(sq_slot) = self.ring.sq.push_slot() else {
                return Err(self.unwind_split(&cids, i, NvmeError::QueueFull));
            };
            let words = rw_words(opcode, cid, ns.id, lba + first as u64, (n - 1) as u16, dptr);
            self.ring.write_sq_words(sq_slot, words);
        }
        self.stats.submitted += parts as u64;
        Ok(())
    }

    /// Undoes a split submission: the `written` commands go back out of
    /// the SQ (not rung), every command id in `cids` is retired, the head's
    /// buffer comes back.
    #[cold]
    fn unwind_split(&mut self, cids: &[u16], written: usize, e: NvmeError) -> Rejected {
        self.ring.retract(written as u16);
        let mut buf = None;
        for &cid in cids {
            if let Ok(slot) = self.slots.complete(cid) {
                buf = buf.or(slot.buf);
            }
        }
        Rejected::new(e, buf)
    }

    /// Takes a command slot, lets `fill` use the slot's page, writes the
    /// command into the SQ: for commands without a data buffer.
    fn push(
        &mut self,
        mut cmd: SubmissionEntry,
        buf: Option<DmaBuf>,
        tag: u64,
        fill: impl FnOnce(SlotPage<'_>) -> Result<(u64, u64)>,
    ) -> Result<(), Rejected> {
        if self.stale() {
            if let Err(e) = self.refresh() {
                return Err(Rejected::new(e, buf));
            }
        }
        let slot = Slot {
            tag,
            buf,
            epoch: self.epoch,
            aborted: false,
            group: 0,
            error: Status(0),
        };
        let cid = match self.slots.try_alloc(slot) {
            Ok(cid) => cid,
            Err(slot) => return Err(Rejected::new(NvmeError::QueueFull, slot.buf)),
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
        let csts = self.inner.regs.read32(reg::CSTS);
        if csts == u32::MAX && !self.removal.is_removed() {
            // All ones: the controller left the bus without notice (a
            // surprise removal the kernel has not reported yet).
            log::error!(
                "queue {}: controller registers read all ones: removed",
                self.qid
            );
            self.end_outstanding(true);
            return;
        }
        if self.removal.is_removed() {
            return;
        }
        if Csts(csts).cfs() {
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
        let inner = self.inner.clone();
        let mut admin = inner.lock_admin();
        let generation = inner.generation.load(Ordering::Acquire);
        self.end_outstanding(false);
        self.stats.resets_seen += 1;
        self.epoch_started = Instant::now();
        // Zeroes the queues and this pair's shadow slots (which it keeps).
        self.cq_unrung = false;
        self.ring.reinit()?;
        let entries = self.ring.sq.size();
        create_queues(&mut admin, &inner, &self.ring, self.qid, entries)?;
        self.generation = generation;
        Ok(())
    }
}

impl IoQueuePair {
    /// A reset or a noticed removal happened since this pair last looked
    /// (a removal bumps the generation when a poll notices it, so the
    /// submission path keeps its one check).
    #[inline(always)]
    fn stale(&self) -> bool {
        self.inner.generation.load(Ordering::Relaxed) != self.generation
    }

    /// A poll found nothing and the controller is being removed: end
    /// everything outstanding, and make every queue pair of the controller
    /// stale so their next submission is refused.
    #[cold]
    fn notice_removal(&mut self) {
        if !self.inner.removal_noticed.swap(true, Ordering::AcqRel) {
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.end_outstanding(true);
    }

    /// After [`Self::stale`]: a removed controller ends every outstanding
    /// command (next poll) and refuses the submission; a reset one
    /// recovers.
    #[cold]
    fn refresh(&mut self) -> Result<()> {
        if self.removal.is_removed() {
            self.end_outstanding(true);
            return Err(NvmeError::Removed);
        }
        self.recover()
    }

    /// Hands every outstanding command back as an orphan for the next
    /// poll: removed, timed out (aborted for lateness) or reset.
    fn end_outstanding(&mut self, removed: bool) {
        for (cid, slot) in self.slots.drain() {
            let meta = self.metas.get_mut(cid as usize).and_then(Option::take);
            if let Some(c) = self.checks.get_mut(cid as usize) {
                *c = None;
            }
            let ended = match (removed, slot.aborted) {
                (true, _) => Ended::Removed,
                (false, true) => Ended::Timeout,
                (false, false) => Ended::Reset,
            };
            self.orphans.push((slot.tag, slot.buf, meta, ended));
        }
    }
}

// A queue pair moves to the thread that drives it.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<IoQueuePair>();
};

/// Most commands one split request can have (children are counted in 16
/// bits of the head's slot).
const PENDING_MAX: usize = group::PENDING as usize + 1;

/// The namespaces plain reads and writes may use (see [`RwNs`]).
fn rw_namespaces(all: &[Namespace]) -> Vec<RwNs> {
    all.iter()
        .filter(|n| n.metadata.layout != MetadataLayout::Separate)
        .map(|n| RwNs {
            id: n.id,
            blocks: n.blocks,
            stride: n.metadata.data_stride(n.block_size, false),
        })
        .collect()
}

/// The alignment mask of [`IoQueuePair::sgl_mask`] for `sgl`: all ones
/// without SGLs (nothing fits: a transfer is never 0 bytes).
fn sgl_mask(sgl: SglSupport) -> u64 {
    match sgl {
        SglSupport::None => u64::MAX,
        SglSupport::Any => 0,
        SglSupport::DwordAligned => 0b11,
    }
}

/// The SGL support level a queue pair uses for `mode` on a controller with
/// `support` (`None`: PRPs).
fn sgl_mode(support: SglSupport, mode: DataPointer) -> SglSupport {
    match mode {
        DataPointer::Prp => SglSupport::None,
        DataPointer::Auto | DataPointer::Sgl => support,
    }
}

/// A failed command's status as the error a completion carries.
#[cold]
#[inline(never)]
fn status_error(status: Status) -> Result<()> {
    status.result().map_err(NvmeError::from_status)
}

/// A read or write's data pointer: PSDT bits for CDW0 and the two words
/// of DPTR (PRP1/PRP2, or one SGL descriptor).
#[derive(Clone, Copy, Debug)]
struct DataPtr {
    psdt: u32,
    dptr: [u64; 2],
}

/// The whole submission entry of a read or write (`opcode`, command id
/// `cid`, `nlb + 1` blocks at `slba`), as the eight words written into the
/// SQ slot: the layout of [`SubmissionEntry::rw_command`] with the data
/// pointer in place, every other field zero.
#[inline(always)]
fn rw_words(opcode: u8, cid: u16, nsid: u32, slba: u64, nlb: u16, d: DataPtr) -> [u64; 8] {
    let cdw0 = opcode as u32 | d.psdt | (cid as u32) << 16;
    [
        cdw0 as u64 | (nsid as u64) << 32,
        0, // CDW2, CDW3
        0, // MPTR
        d.dptr[0],
        d.dptr[1],
        slba,       // CDW10, CDW11
        nlb as u64, // CDW12, CDW13
        0,          // CDW14, CDW15
    ]
}

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
    let mut cq = SubmissionEntry::create_io_cq(qid, depth, ring.cq_iova());
    if let Some(irq) = inner.interrupt_for(qid) {
        cq = cq.with_interrupt_vector(irq.vector());
    }
    admin.execute(&inner.regs, inner.cap, cq)?;
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
        // A removed controller has no queues to delete (and no DMA).
        let current = self.inner.generation.load(Ordering::Acquire) == self.generation
            && !self.removal.is_removed();
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
                for meta in self.metas.drain(..) {
                    std::mem::forget(meta);
                }
                self.ring.leak_memory();
                // Its queue id (and shadow slots) stay taken too.
                return;
            }
        }
        admin.release_qid(self.qid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words written into the SQ are exactly the entry the spec
    /// constructors build: SGL and PRP data pointers, reads and writes, with
    /// the high bits of every field set.
    #[test]
    fn rw_words_match_the_submission_entry() {
        let cases = [
            (
                nvm_opcode::READ,
                0u16,
                1u32,
                0u64,
                0u16,
                PSDT_SGL_MPTR_CONTIG,
                [0x1000, 4096],
            ),
            (
                nvm_opcode::WRITE,
                0xFFFE,
                u32::MAX,
                u64::MAX,
                u16::MAX,
                0,
                [u64::MAX, 0xdead_beef_0000],
            ),
            (nvm_opcode::READ, 62, 7, 0x1_2345_6789, 3, 0, [0x20_0000, 0]),
        ];
        for (opcode, cid, nsid, slba, nlb, psdt, dptr) in cases {
            let mut e = SubmissionEntry::rw_command(opcode, cid, nsid, slba, nlb);
            e.cdw0 |= psdt;
            e.prp1 = dptr[0];
            e.prp2 = dptr[1];
            let want: [u64; 8] = bytemuck::cast(e);
            let got = rw_words(opcode, cid, nsid, slba, nlb, DataPtr { psdt, dptr });
            assert_eq!(got, want, "opcode {opcode} cid {cid}");
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod doorbell_order_tests {
    use super::{cq_release_at, DoorbellOrder};
    use crate::sim::{SimConfig, SimController};
    use crate::{Controller, Options, QueueSize};
    use fastlane_framework::{BufferPool, PageSize};

    /// The driver's doorbell writes (SQ + CQ) so far.
    fn writes(qp: &super::IoQueuePair) -> u64 {
        qp.stats().doorbell_writes
    }

    /// A model (CAP.MQES `mqes`, 0-based) in synchronous mode and a pair
    /// of `depth` on it.
    fn open_with(
        options: Options,
        mqes: u16,
        depth: u16,
    ) -> (SimController, Controller, super::IoQueuePair, BufferPool) {
        let (mut sim, mmio) = SimController::start(SimConfig {
            mqes,
            ..SimConfig::default()
        });
        let ctrl = Controller::with_registers(mmio, options).unwrap();
        let pool = BufferPool::new_unmapped(4096, 64, PageSize::Small).unwrap();
        let qp = ctrl.create_qpair(depth).unwrap();
        sim.set_synchronous(true);
        (sim, ctrl, qp, pool)
    }

    /// A 4-deep pair; the controller allows 1024 entries.
    fn open(options: Options) -> (SimController, Controller, super::IoQueuePair, BufferPool) {
        open_with(options, 1023, 4)
    }

    /// A 4-deep pair with 8 queue entries (the controller's maximum):
    /// the CQ head is released every 2 completions SQ first, every 4 CQ
    /// first.
    fn open_small() -> (SimController, Controller, super::IoQueuePair, BufferPool) {
        open_with(Options::default(), 7, 4)
    }

    /// One read submitted, executed by the model and polled back.
    fn one_read(sim: &mut SimController, qp: &mut super::IoQueuePair, pool: &BufferPool) {
        qp.read(1, 0, 1, pool.alloc().unwrap(), 1)
            .map_err(|r| r.error)
            .unwrap();
        qp.submit();
        assert!(sim.process());
        assert_eq!(qp.poll(4, |c| assert!(c.result.is_ok())), 1);
    }

    /// The release points: at most half the queue, and never more lag
    /// than leaves room for every command in flight (depth - 1): CQ first
    /// the lag stays below `release_at`; SQ first one more poll's worth
    /// (depth - 1) can stand while the next commands go out. A pair with
    /// an interrupt vector releases every completion.
    #[test]
    fn the_release_point_leaves_room_for_every_command_in_flight() {
        use DoorbellOrder::{CqFirst, SqFirst};
        assert_eq!(cq_release_at(256, 2, SqFirst, false), 128);
        assert_eq!(cq_release_at(256, 33, SqFirst, false), 128);
        assert_eq!(cq_release_at(256, 128, SqFirst, false), 2);
        assert_eq!(cq_release_at(8, 4, SqFirst, false), 2);
        assert_eq!(cq_release_at(8, 4, CqFirst, false), 4);
        assert_eq!(cq_release_at(4, 4, CqFirst, false), 1);
        assert_eq!(cq_release_at(2048, 2, SqFirst, true), 1);
        for e in 2u16..=300 {
            for d in 2..=e {
                for order in [CqFirst, SqFirst] {
                    let t = cq_release_at(e, d, order, false);
                    assert!(t >= 1 && t <= (e / 2).max(1), "{e} {d} {order:?}");
                    let worst_lag = match order {
                        CqFirst => t - 1,
                        SqFirst => t - 1 + (d - 1),
                    };
                    let sound = match order {
                        CqFirst => true,
                        SqFirst => e >= 2 * d,
                    };
                    if sound {
                        assert!(worst_lag + (d - 1) < e, "{e} {d} {order:?}: {t}");
                    }
                }
            }
        }
    }

    /// SqFirst: the head waits until it lags by `release_at` (2 here),
    /// then goes out after the next SQ tail; a poll with nothing
    /// submitted in between writes the late head itself. CqFirst writes
    /// it at the end of the poll that reached its point (4). Data and
    /// tags stay right.
    #[test]
    fn sq_first_writes_the_cq_head_with_the_next_submission() {
        let (mut sim, _ctrl, mut qp, pool) = open_small();
        qp.set_doorbell_order(DoorbellOrder::SqFirst);
        let mut tags = Vec::new();
        let done = |qp: &mut super::IoQueuePair, tags: &mut Vec<u64>| {
            qp.poll(4, |c| {
                assert!(c.result.is_ok() && c.buf.is_some());
                tags.push(c.tag);
            })
        };
        let read = |qp: &mut super::IoQueuePair, tag: u64| {
            qp.read(1, 8 * tag, 1, pool.alloc().unwrap(), tag)
                .map_err(|r| r.error)
                .unwrap();
            qp.submit();
        };
        read(&mut qp, 1);
        assert_eq!(writes(&qp), 1, "SQ tail");
        assert!(sim.process());
        assert_eq!(done(&mut qp, &mut tags), 1);
        read(&mut qp, 2);
        assert_eq!(writes(&qp), 2, "one completion of lag: no head yet");
        assert!(sim.process());
        assert_eq!(done(&mut qp, &mut tags), 1);
        assert_eq!(writes(&qp), 2, "the head waits for the next submission");
        read(&mut qp, 3);
        assert_eq!(writes(&qp), 4, "SQ tail, then the late CQ head");
        let cq_seen = sim.stats().cq_doorbell_writes;
        assert!(sim.process());
        assert_eq!(sim.stats().cq_doorbell_writes, cq_seen + 1, "the model saw the head move");
        assert_eq!(done(&mut qp, &mut tags), 1);
        read(&mut qp, 4);
        assert!(sim.process());
        assert_eq!(done(&mut qp, &mut tags), 1);
        assert_eq!(writes(&qp), 5);
        // No submission: the next poll writes the late head, once.
        assert_eq!(done(&mut qp, &mut tags), 0);
        assert_eq!(writes(&qp), 6);
        assert_eq!(done(&mut qp, &mut tags), 0);
        qp.submit();
        assert_eq!(writes(&qp), 6, "nothing left to write");
        // One completion of lag, then a change of order: the head goes
        // out at once (the new order's room is counted from 0).
        read(&mut qp, 9);
        assert!(sim.process());
        assert_eq!(done(&mut qp, &mut tags), 1);
        assert_eq!(writes(&qp), 7);
        qp.set_doorbell_order(DoorbellOrder::CqFirst);
        assert_eq!(writes(&qp), 8, "the lag released when the order changes");
        // CqFirst: the head at the end of the poll that reached 4.
        for tag in 5..=8 {
            read(&mut qp, tag);
            assert!(sim.process());
            assert_eq!(done(&mut qp, &mut tags), 1);
        }
        assert_eq!(writes(&qp), 13, "four SQ tails, one CQ head");
        qp.submit();
        assert_eq!(writes(&qp), 13);
        assert_eq!(tags, [1, 2, 3, 4, 9, 5, 6, 7, 8]);
        assert_eq!(qp.outstanding(), 0);
        assert_eq!(sim.stats().cq_full_waits, 0);
        sim.set_synchronous(false); // the queues' deletion needs the model's thread
    }

    /// Hostile timing for a lagging head: every depth, queue size and
    /// order the driver allows, batches of random size, polls that take
    /// only some of what is there. The model must never find the CQ
    /// full with a command to fetch, every read completes once, and the
    /// head is written about once per `release_at` completions.
    #[test]
    fn the_device_never_finds_the_cq_full_while_the_head_lags() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for (mqes, depth, size) in [
            (1023, 2, QueueSize::Spare),
            (1023, 33, QueueSize::Spare),
            (1023, 64, QueueSize::Spare),
            (63, 33, QueueSize::Spare),
            (63, 17, QueueSize::Maximum),
            (7, 4, QueueSize::Spare),
            (15, 8, QueueSize::Minimal),
            (15, 3, QueueSize::Minimal),
        ] {
            for order in [DoorbellOrder::CqFirst, DoorbellOrder::SqFirst] {
                let entries = size.entries(depth, mqes + 1);
                if order == DoorbellOrder::SqFirst && entries < 2 * depth {
                    continue; // not a choice the driver makes for such a queue
                }
                let (mut sim, _ctrl, mut qp, pool) = open_with(
                    Options {
                        queue_size: size,
                        ..Options::default()
                    },
                    mqes,
                    depth,
                );
                qp.set_doorbell_order(order);
                // The admin queue's heads (creating the pair) are not counted.
                let heads_before = sim.stats().cq_doorbell_writes;
                let release_at = cq_release_at(entries, depth, order, false);
                let what = format!("{entries} entries, depth {depth}, {order:?}");
                let total = 1500u64;
                let (mut sent, mut seen) = (0u64, vec![false; total as usize]);
                let mut got = 0u64;
                while got < total {
                    let room = qp.capacity() - qp.outstanding();
                    let n = next(room as u64 + 1).min(total - sent);
                    for _ in 0..n {
                        qp.read(1, sent % 1000, 1, pool.alloc().unwrap(), sent)
                            .map_err(|r| r.error)
                            .unwrap();
                        sent += 1;
                    }
                    qp.submit();
                    sim.process();
                    let max = 1 + next(depth as u64) as usize;
                    qp.poll(max, |c| {
                        assert!(c.result.is_ok(), "{what}");
                        let t = c.tag as usize;
                        assert!(!seen[t], "{what}: tag {t} twice");
                        seen[t] = true;
                        got += 1;
                    });
                }
                let st = sim.stats();
                assert_eq!(st.cq_full_waits, 0, "{what}: the model found the CQ full");
                let heads = st.cq_doorbell_writes - heads_before;
                assert!(
                    heads <= total / u64::from(release_at) + 1,
                    "{what}: {heads} head writes, release at {release_at}"
                );
                assert!(
                    heads + 1 >= total / (u64::from(release_at) + u64::from(depth)),
                    "{what}: only {heads} head writes"
                );
                // Deleting the queues needs the model's own thread.
                sim.set_synchronous(false);
            }
        }
    }

    /// The default: SQ first with spare queue entries, CQ first when the
    /// CQ has no room for a head that lags by one poll (`Minimal`).
    #[test]
    fn the_default_order_follows_the_queue_size() {
        for (size, late) in [(QueueSize::Spare, true), (QueueSize::Minimal, false)] {
            let (mut sim, _ctrl, mut qp, pool) = open(Options {
                queue_size: size,
                ..Options::default()
            });
            one_read(&mut sim, &mut qp, &pool);
            assert_eq!(writes(&qp), if late { 1 } else { 2 }, "{size:?}");
            sim.set_synchronous(false);
        }
    }

    /// A late CQ head is dropped, not written, when a controller reset
    /// comes between the poll and the submission (it belongs to a queue
    /// that is gone); the recreated pair keeps working.
    #[test]
    fn a_reset_drops_the_late_cq_head() {
        let (mut sim, ctrl, mut qp, pool) = open_small();
        qp.set_doorbell_order(DoorbellOrder::SqFirst);
        one_read(&mut sim, &mut qp, &pool);
        one_read(&mut sim, &mut qp, &pool);
        assert_eq!(writes(&qp), 2, "two SQ tails, the head is late");
        let before = writes(&qp);
        sim.set_synchronous(false); // the reset's admin commands need the model's thread
        ctrl.reset().unwrap();
        qp.submit();
        assert_eq!(writes(&qp), before, "no head written for the old queue");
        let mut got = Vec::new();
        qp.read(1, 8, 1, pool.alloc().unwrap(), 2)
            .map_err(|r| r.error)
            .unwrap();
        qp.submit();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "no completion after the reset"
            );
            qp.poll(4, |c| got.push((c.tag, c.result.is_ok())));
        }
        assert_eq!(got, [(2, true)]);
    }
}
