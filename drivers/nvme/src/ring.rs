//! One submission/completion queue pair in DMA memory: writes commands,
//! reads completions by phase tag, rings doorbells. Shared by the admin
//! queue and the I/O queues; pure index logic lives in `queue`.

use std::sync::atomic::{fence, Ordering};

use fastlane_framework::{DmaRegion, Mmio};

use crate::error::Result;
use crate::queue::{CqRing, SqRing};
use crate::spec::{cq_head_doorbell, sq_tail_doorbell, CompletionEntry, SubmissionEntry};

const SQE: usize = std::mem::size_of::<SubmissionEntry>();
const CQE: usize = std::mem::size_of::<CompletionEntry>();

/// Queue memory layout inside one region: SQ at 0, CQ at the next 4 KiB
/// boundary, then `extra` bytes for the caller (PRP list pages, identify data).
pub(crate) struct Layout {
    pub cq_off: usize,
    pub extra_off: usize,
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
            total: extra_off + extra,
        }
    }
}

/// Shadow doorbells (Doorbell Buffer Config): the driver writes new values
/// into memory and touches the register only when the controller's EventIdx
/// says it is not looking at the shadow copy any more.
#[derive(Clone, Copy)]
pub(crate) struct Shadow {
    pub sq_db: *mut u32,
    pub cq_db: *mut u32,
    pub sq_ei: *const u32,
    pub cq_ei: *const u32,
}

/// NVMe's (and virtio's) "need event" test: did the update from `old` to
/// `new` step over `event`?
#[inline(always)]
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

pub(crate) struct Ring {
    pub region: DmaRegion,
    pub layout: Layout,
    pub sq: SqRing,
    pub cq: CqRing,
    regs: Mmio,
    sq_db: usize,
    cq_db: usize,
    sq_ptr: *mut SubmissionEntry,
    cq_ptr: *const CompletionEntry,
    /// SQ entries written since the last doorbell.
    unrung: u16,
    shadow: Option<Shadow>,
    /// Values last published through the shadow buffer.
    shadow_sq: u16,
    shadow_cq: u16,
    /// Register writes made (doorbells rung).
    pub mmio_writes: u64,
}

// SAFETY: the raw pointers point into `region`, which the Ring owns; a Ring
// is used by one thread at a time (owned by a queue pair or behind a mutex).
unsafe impl Send for Ring {}

impl Ring {
    pub fn new(
        region: DmaRegion,
        layout: Layout,
        entries: u16,
        qid: u16,
        dstrd: u8,
        regs: Mmio,
    ) -> Result<Ring> {
        let sq_ptr = region.as_ptr().cast::<SubmissionEntry>();
        // SAFETY: layout.cq_off < layout.total <= region.len() (checked by callers' allocation size).
        let cq_ptr = unsafe { region.as_ptr().add(layout.cq_off) }.cast::<CompletionEntry>();
        let ring = Ring {
            sq: SqRing::new(entries)?,
            cq: CqRing::new(entries)?,
            sq_db: sq_tail_doorbell(qid, dstrd),
            cq_db: cq_head_doorbell(qid, dstrd),
            region,
            layout,
            regs,
            sq_ptr,
            cq_ptr,
            unrung: 0,
            shadow: None,
            shadow_sq: 0,
            shadow_cq: 0,
            mmio_writes: 0,
        };
        ring.clear();
        Ok(ring)
    }

    /// Zeroes the queues so no stale phase tag looks new (after a reset).
    pub fn clear(&self) {
        let _ = self.region.fill(0, self.layout.extra_off, 0);
    }

    /// Resets indices and memory to the state of a newly created queue.
    pub fn reinit(&mut self) -> Result<()> {
        self.sq = SqRing::new(self.sq.size())?;
        self.cq = CqRing::new(self.cq.size())?;
        self.unrung = 0;
        self.shadow_sq = 0;
        self.shadow_cq = 0;
        self.clear();
        Ok(())
    }

    /// Uses shadow doorbells from now on (`None`: registers only).
    pub fn set_shadow(&mut self, shadow: Option<Shadow>) {
        self.shadow = shadow;
        self.shadow_sq = self.sq.tail();
        self.shadow_cq = self.cq.head();
    }

    /// Publishes a doorbell value through the shadow buffer; true when the
    /// register must be written too.
    #[inline]
    fn shadow_update(db: *mut u32, ei: *const u32, last: &mut u16, new: u16) -> bool {
        // SAFETY: db/ei point into the controller's doorbell buffer pages,
        // which outlive every ring (see controller::DoorbellBuffer).
        unsafe { db.write_volatile(new as u32) };
        // The shadow store must be visible before EventIdx is read.
        fence(Ordering::SeqCst);
        // SAFETY: as above.
        let event = unsafe { ei.read_volatile() } as u16;
        let old = std::mem::replace(last, new);
        need_event(event, new, old)
    }

    pub fn sq_iova(&self) -> u64 {
        self.region.iova_at(0).get()
    }

    pub fn cq_iova(&self) -> u64 {
        self.region.iova_at(self.layout.cq_off).get()
    }

    /// Writes `cmd` into the next SQ slot; false when the SQ is full.
    #[inline]
    pub fn push(&mut self, cmd: &SubmissionEntry) -> bool {
        let Some(slot) = self.sq.push_slot() else {
            return false;
        };
        // SAFETY: slot < entries, inside the SQ part of the region; the
        // device reads this slot only after the tail doorbell moves past it.
        unsafe { self.sq_ptr.add(slot as usize).write_volatile(*cmd) };
        self.unrung += 1;
        true
    }

    /// Rings the SQ tail doorbell if commands were written since last time.
    #[inline]
    pub fn ring_sq(&mut self) {
        if self.unrung != 0 {
            // Entries must be visible before the device sees the new tail.
            fence(Ordering::Release);
            let tail = self.sq.tail();
            self.unrung = 0;
            if let Some(sh) = self.shadow {
                if !Self::shadow_update(sh.sq_db, sh.sq_ei, &mut self.shadow_sq, tail) {
                    return;
                }
            }
            self.regs.write32(self.sq_db, tail as u32);
            self.mmio_writes += 1;
        }
    }

    /// The next new completion, consumed; the CQ doorbell is left to `ring_cq`.
    #[inline]
    pub fn pop(&mut self) -> Option<CompletionEntry> {
        let head = self.cq.head() as usize;
        // SAFETY: head < entries, inside the CQ part of the region. The
        // status word is read first; the rest only once its phase says the
        // device finished writing the entry.
        let status = unsafe { std::ptr::addr_of!((*self.cq_ptr.add(head)).status).read_volatile() };
        if !self.cq.is_new(status) {
            return None;
        }
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let entry = unsafe { self.cq_ptr.add(head).read_volatile() };
        self.cq.advance();
        Some(entry)
    }

    /// Tells the device how far completions were consumed.
    #[inline]
    pub fn ring_cq(&mut self) {
        let head = self.cq.head();
        if let Some(sh) = self.shadow {
            if !Self::shadow_update(sh.cq_db, sh.cq_ei, &mut self.shadow_cq, head) {
                return;
            }
        }
        self.regs.write32(self.cq_db, head as u32);
        self.mmio_writes += 1;
    }

    /// Pointer to the caller's extra space.
    pub fn extra_ptr(&self) -> *mut u8 {
        // SAFETY: extra_off <= region length.
        unsafe { self.region.as_ptr().add(self.layout.extra_off) }
    }

    pub fn extra_iova(&self) -> u64 {
        self.region.iova_at(self.layout.extra_off).get()
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
