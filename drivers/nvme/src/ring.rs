//! One submission/completion queue pair in DMA memory: writes commands,
//! reads completions by phase tag, rings doorbells. Shared by the admin
//! queue and the I/O queues; pure index logic lives in `queue`.
//!
//! All queue memory is reached through framework [`DmaArray`]s carved out
//! of the queue's region: the SQ, the CQ, the caller's extra pages and the
//! queue's shadow doorbell slots. Every access is one bounds-checked
//! volatile load or store.

use std::mem::offset_of;
use std::sync::atomic::{fence, Ordering};

use fastlane_framework::{DmaArray, DmaRegion, Mmio, Reg32};

use crate::error::Result;
use crate::queue::{CqRing, SqRing};
use crate::spec::{cq_head_doorbell, sq_tail_doorbell, CompletionEntry, SubmissionEntry};

const SQE: usize = std::mem::size_of::<SubmissionEntry>();
const CQE: usize = std::mem::size_of::<CompletionEntry>();
/// Byte offset of the Phase Tag / Status word inside a completion entry.
const STATUS: usize = offset_of!(CompletionEntry, status);
/// Byte offset of a completion's second quadword (SQ head, SQ id, CID,
/// status), the part an I/O completion is made of.
const CQE_HI: usize = offset_of!(CompletionEntry, sq_head);
/// 64-bit words in one completion entry.
const CQE_WORDS: usize = CQE / 8;
/// 64-bit words in one submission entry.
pub(crate) const SQE_WORDS: usize = SQE / 8;

/// The second quadword of a completion entry, read in one load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CqWord(pub u64);

impl CqWord {
    #[inline(always)]
    pub fn sq_head(self) -> u16 {
        self.0 as u16
    }
    #[inline(always)]
    pub fn sq_id(self) -> u16 {
        (self.0 >> 16) as u16
    }
    #[inline(always)]
    pub fn cid(self) -> u16 {
        (self.0 >> 32) as u16
    }
    /// Phase Tag (bit 0) and Status Field (bits 15:1).
    #[inline(always)]
    pub fn status(self) -> u16 {
        (self.0 >> 48) as u16
    }
}
const _: () = assert!(CQE_HI == 8 && STATUS == 14);

/// Queue memory layout inside one region: SQ at 0, CQ at the next 4 KiB
/// boundary, then `extra` bytes for the caller (PRP list pages, identify data).
pub(crate) struct Layout {
    pub cq_off: usize,
    pub extra_off: usize,
    pub extra: usize,
    pub total: usize,
}

impl Layout {
    pub fn new(entries: u16, extra: usize) -> Layout {
        let page = 4096;
        let cq_off = (entries as usize * SQE).next_multiple_of(page);
        let extra_off = cq_off + (entries as usize * CQE).next_multiple_of(page);
        Layout {
            cq_off,
            extra_off,
            extra,
            total: extra_off + extra,
        }
    }
}

/// Shadow doorbells (Doorbell Buffer Config): the driver writes new values
/// into memory and touches the register only when the controller's EventIdx
/// says it is not looking at the shadow copy any more. Each array is the one
/// slot of this queue, carved out of the controller's doorbell buffer pages.
pub(crate) struct Shadow {
    pub sq_db: DmaArray<u32>,
    pub cq_db: DmaArray<u32>,
    pub sq_ei: DmaArray<u32>,
    pub cq_ei: DmaArray<u32>,
}

impl Shadow {
    /// Zeroes the slots, as for a newly created queue.
    fn clear(&self) {
        for a in [&self.sq_db, &self.cq_db, &self.sq_ei, &self.cq_ei] {
            a.write(0, 0);
        }
    }
}

/// NVMe's (and virtio's) "need event" test: did the update from `old` to
/// `new` step over `event`?
#[inline(always)]
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

pub(crate) struct Ring {
    /// The queue's region (kept to leak it if the device cannot be stopped).
    pub region: DmaRegion,
    pub sq: SqRing,
    pub cq: CqRing,
    /// The SQ Tail and CQ Head doorbell registers (checked once, when made).
    sq_db: Reg32,
    cq_db: Reg32,
    /// The SQ as 64-bit words, [`SQE_WORDS`] per entry: an entry is written
    /// as one run of word stores with one bounds check.
    sq_mem: DmaArray<u64>,
    /// The CQ as 64-bit words, two per entry (the second holds the phase).
    cq_mem: DmaArray<u64>,
    /// The caller's extra space, as 64-bit words (PRP lists, DSM ranges,
    /// identify data).
    pub extra: DmaArray<u64>,
    /// SQ entries written since the last doorbell.
    unrung: u16,
    shadow: Option<Shadow>,
    /// Values last published through the shadow buffer.
    shadow_sq: u16,
    shadow_cq: u16,
    /// The CQ head the device was last told (register or shadow slot).
    cq_released: u16,
    /// Register writes made (doorbells rung).
    pub mmio_writes: u64,
}

impl Ring {
    pub fn new(
        region: DmaRegion,
        layout: Layout,
        entries: u16,
        qid: u16,
        dstrd: u8,
        regs: Mmio,
    ) -> Result<Ring> {
        let n = entries as usize;
        // Checked once here; every doorbell write goes to these registers.
        let (Some(sq_db), Some(cq_db)) = (
            regs.reg32(sq_tail_doorbell(qid, dstrd)),
            regs.reg32(cq_head_doorbell(qid, dstrd)),
        ) else {
            return Err(crate::NvmeError::Malformed(
                "BAR0 too small for this queue's doorbells",
            ));
        };
        let ring = Ring {
            sq: SqRing::new(entries)?,
            cq: CqRing::new(entries)?,
            sq_db,
            cq_db,
            sq_mem: region.carve(0, n * SQE_WORDS)?,
            cq_mem: region.carve(layout.cq_off, n * CQE_WORDS)?,
            extra: region.carve(layout.extra_off, layout.extra / 8)?,
            region,
            unrung: 0,
            shadow: None,
            shadow_sq: 0,
            shadow_cq: 0,
            cq_released: 0,
            mmio_writes: 0,
        };
        ring.clear();
        Ok(ring)
    }

    /// Zeroes the queues so no stale phase tag looks new (after a reset).
    pub fn clear(&self) {
        self.sq_mem.fill(0);
        self.cq_mem.fill(0);
        if let Some(sh) = &self.shadow {
            sh.clear();
        }
    }

    /// Resets indices and memory to the state of a newly created queue.
    pub fn reinit(&mut self) -> Result<()> {
        self.sq = SqRing::new(self.sq.size())?;
        self.cq = CqRing::new(self.cq.size())?;
        self.unrung = 0;
        self.shadow_sq = 0;
        self.shadow_cq = 0;
        self.cq_released = 0;
        self.clear();
        Ok(())
    }

    /// Uses shadow doorbells from now on (`None`: registers only). The
    /// slots are zeroed: call before the queues are created.
    pub fn set_shadow(&mut self, shadow: Option<Shadow>) {
        if let Some(sh) = &shadow {
            sh.clear();
        }
        self.shadow = shadow;
        self.shadow_sq = self.sq.tail();
        self.shadow_cq = self.cq.head();
    }

    /// Publishes a doorbell value through the shadow buffer; true when the
    /// register must be written too.
    #[inline]
    fn shadow_update(db: &DmaArray<u32>, ei: &DmaArray<u32>, last: &mut u16, new: u16) -> bool {
        db.write(0, new as u32);
        // The shadow store must be visible before EventIdx is read.
        fence(Ordering::SeqCst);
        let event = ei.read(0) as u16;
        let old = std::mem::replace(last, new);
        need_event(event, new, old)
    }

    pub fn sq_iova(&self) -> u64 {
        self.sq_mem.iova().get()
    }

    pub fn cq_iova(&self) -> u64 {
        self.cq_mem.iova().get()
    }

    /// Writes `cmd` into the next SQ slot; false when the SQ is full.
    #[inline]
    pub fn push(&mut self, cmd: &SubmissionEntry) -> bool {
        let Some(slot) = self.sq.push_slot() else {
            return false;
        };
        self.write_sq(slot, cmd);
        true
    }

    /// Writes `cmd` into SQ slot `slot`, which [`SqRing::push_slot`] handed
    /// out.
    #[inline(always)]
    pub fn write_sq(&mut self, slot: u16, cmd: &SubmissionEntry) {
        self.write_sq_words(slot, bytemuck::cast(*cmd));
    }

    /// Writes the entry `words` (all of it: nothing of an older command
    /// stays) into SQ slot `slot`, which [`SqRing::push_slot`] handed out:
    /// eight word stores, one bounds check.
    #[inline(always)]
    pub fn write_sq_words(&mut self, slot: u16, words: [u64; SQE_WORDS]) {
        // The device reads this slot only after the tail doorbell moves
        // past it. `slot` < entries (push_slot), so the run is in bounds;
        // were it not, nothing would be written and the doorbell would
        // expose a zeroed or older entry, which the CID table rejects.
        let r = self
            .sq_mem
            .write_run(slot as usize * SQE_WORDS, SQE_WORDS, |k| words[k]);
        debug_assert!(r.is_ok());
        self.unrung += 1;
    }

    /// Takes back the last `n` commands written and not yet rung.
    pub fn retract(&mut self, n: u16) {
        let n = n.min(self.unrung);
        self.sq.retract(n);
        self.unrung -= n;
    }

    /// Rings the SQ tail doorbell if commands were written since last time.
    #[inline]
    pub fn ring_sq(&mut self) {
        if self.unrung != 0 {
            // Entries must be visible before the device sees the new tail.
            fence(Ordering::Release);
            let tail = self.sq.tail();
            self.unrung = 0;
            if let Some(sh) = &self.shadow {
                if !Self::shadow_update(&sh.sq_db, &sh.sq_ei, &mut self.shadow_sq, tail) {
                    return;
                }
            }
            self.sq_db.write(tail as u32);
            self.mmio_writes += 1;
        }
    }

    /// Whether a new completion waits at the head (nothing consumed).
    pub fn cq_ready(&self) -> bool {
        let hi = self.cq_mem.read(self.cq.head() as usize * CQE_WORDS + 1);
        self.cq.is_new(CqWord(hi).status())
    }

    /// The next new completion, consumed; the CQ doorbell is left to `ring_cq`.
    #[inline]
    pub fn pop(&mut self) -> Option<CompletionEntry> {
        let head = self.cq.head() as usize * CQE_WORDS;
        // The word with the status first; the rest only once its phase
        // says the device finished writing the entry.
        let hi = self.cq_mem.read(head + 1);
        if !self.cq.is_new(CqWord(hi).status()) {
            return None;
        }
        fence(Ordering::Acquire);
        let lo = self.cq_mem.read(head);
        self.cq.advance();
        Some(bytemuck::cast([lo, hi]))
    }

    /// The second quadword (SQ head, SQ id, CID, status) of the next new
    /// completion, consumed; the CQ doorbell is left to `ring_cq`. One
    /// load: the phase tag and the fields it vouches for come from the same
    /// single-copy-atomic 8-byte read, so they belong to one entry (the
    /// device makes an entry's fields visible no later than its phase).
    #[inline(always)]
    pub fn pop_word(&mut self) -> Option<CqWord> {
        let w = CqWord(self.cq_mem.read(self.cq.head() as usize * CQE_WORDS + 1));
        if !self.cq.is_new(w.status()) {
            return None;
        }
        // What the device wrote before the entry (read data) is seen after.
        fence(Ordering::Acquire);
        self.cq.advance();
        Some(w)
    }

    /// Completions consumed since the device was last told the head: the
    /// entries it still counts as occupied beside those it has yet to post.
    #[inline(always)]
    pub fn cq_lag(&self) -> u16 {
        let (head, size) = (self.cq.head(), self.cq.size());
        if head >= self.cq_released {
            head - self.cq_released
        } else {
            head + size - self.cq_released
        }
    }

    /// Tells the device how far completions were consumed.
    #[inline]
    pub fn ring_cq(&mut self) {
        let head = self.cq.head();
        self.cq_released = head;
        if let Some(sh) = &self.shadow {
            if !Self::shadow_update(&sh.cq_db, &sh.cq_ei, &mut self.shadow_cq, head) {
                return;
            }
        }
        self.cq_db.write(head as u32);
        self.mmio_writes += 1;
    }

    /// Keeps the queue memory and shadow slots mapped and owned for the
    /// rest of the process: for queues the device may still use.
    pub fn leak_memory(&mut self) {
        std::mem::forget(self.region.clone());
        if let Some(sh) = self.shadow.take() {
            std::mem::forget(sh);
        }
    }

    pub fn extra_iova(&self) -> u64 {
        self.extra.iova().get()
    }
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn need_event_fires_when_the_update_passes_event_idx() {
        assert!(need_event(5, 6, 5), "event 5 stepped over by 5 -> 6");
        assert!(need_event(5, 9, 3));
        assert!(!need_event(9, 9, 3), "event not reached yet");
        assert!(!need_event(2, 9, 3), "event behind the old value");
        assert!(need_event(u16::MAX, 1, u16::MAX - 1), "wrap-around");
        assert!(!need_event(5, 5, 5), "no change");
    }
}
