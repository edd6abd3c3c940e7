//! Queue bookkeeping without device access (NVMe base spec 3.3.1,
//! "Memory-based Transport Queue Model", and 4.6, "Completion Queue Entry"):
//! submission queue tail and head indices, completion queue head and Phase
//! Tag, and the command identifier table that maps a completion's CID back to
//! the caller's request.
//!
//! Everything the device reports (`sq_head`, `cid`) is validated: a
//! malformed completion is an error, never a panic or a wrong lookup.

use thiserror::Error;

use crate::spec::CompletionEntry;

/// A device-reported value that does not fit the queue state, or a bad
/// queue configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum QueueError {
    /// Queues hold at least 2 entries.
    #[error("queue size {size} is invalid (at least 2 entries)")]
    InvalidSize {
        /// The size asked for.
        size: u16,
    },
    /// A completion reported an SQ Head Pointer outside the entries
    /// submitted and not yet consumed.
    #[error(
        "completion reported sq_head {sq_head}, outside [{head}, {tail}] of a {size}-entry queue"
    )]
    InvalidSqHead {
        /// The SQ head the completion reported.
        sq_head: u16,
        /// The driver's SQ head.
        head: u16,
        /// The driver's SQ tail.
        tail: u16,
        /// Entries in the queue.
        size: u16,
    },
}

/// Submission queue ring: the host owns `tail` (written to the SQ Tail
/// Doorbell), the controller reports `head` in every completion's SQHD. The
/// queue is full when advancing the tail would make it equal the head, so a
/// queue of `size` entries holds at most `size - 1` commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqRing {
    tail: u16,
    head: u16,
    size: u16,
}

impl SqRing {
    /// An empty ring of `size` entries (2..=65535).
    pub fn new(size: u16) -> Result<Self, QueueError> {
        if size < 2 {
            return Err(QueueError::InvalidSize { size });
        }
        Ok(SqRing {
            tail: 0,
            head: 0,
            size,
        })
    }

    fn next(&self, i: u16) -> u16 {
        if i + 1 == self.size {
            0
        } else {
            i + 1
        }
    }

    /// Ring distance from `from` forward to `to`.
    fn distance(&self, from: u16, to: u16) -> u16 {
        if to >= from {
            to - from
        } else {
            self.size - from + to
        }
    }

    /// Claim the slot at the tail for a new command and advance the tail;
    /// `None` when the ring is full. Write the entry into the returned slot,
    /// then ring the doorbell with [`Self::tail`].
    pub fn push_slot(&mut self) -> Option<u16> {
        let next = self.next(self.tail);
        if next == self.head {
            return None;
        }
        let slot = self.tail;
        self.tail = next;
        Some(slot)
    }

    /// Record the SQ Head Pointer from a completion entry. It must lie
    /// between the last reported head and the tail (the controller cannot
    /// have consumed entries that were never submitted); otherwise the ring
    /// is left unchanged and an error returned.
    pub fn update_head(&mut self, sq_head: u16) -> Result<(), QueueError> {
        self.check_head(sq_head)?;
        self.head = sq_head;
        Ok(())
    }

    /// Records a head [`Self::check_head`] accepted, with no change to the
    /// ring in between.
    #[inline]
    pub(crate) fn set_checked_head(&mut self, sq_head: u16) {
        debug_assert!(self.check_head(sq_head).is_ok());
        self.head = sq_head;
    }

    /// Whether [`Self::update_head`] would accept `sq_head`, without
    /// changing the ring: for validating a whole completion before trusting
    /// any of it.
    #[inline]
    pub fn check_head(&self, sq_head: u16) -> Result<(), QueueError> {
        // The usual report: everything submitted was fetched.
        if sq_head == self.tail {
            return Ok(());
        }
        // Inside the circular range [head, tail] (which excludes sizes and
        // up when the range does not wrap, as tail < size).
        let inside = if self.head <= self.tail {
            sq_head >= self.head && sq_head <= self.tail
        } else {
            (sq_head >= self.head && sq_head < self.size) || sq_head <= self.tail
        };
        if !inside {
            return Err(QueueError::InvalidSqHead {
                sq_head,
                head: self.head,
                tail: self.tail,
                size: self.size,
            });
        }
        Ok(())
    }

    /// The value for the SQ Tail Doorbell.
    pub fn tail(&self) -> u16 {
        self.tail
    }
    /// The last head reported by the controller.
    pub fn head(&self) -> u16 {
        self.head
    }
    /// Entries in the ring.
    pub fn size(&self) -> u16 {
        self.size
    }
    /// Entries submitted and not yet reported consumed.
    pub fn len(&self) -> u16 {
        self.distance(self.head, self.tail)
    }
    /// No entries awaiting consumption.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }
    /// [`Self::push_slot`] would return `None`.
    pub fn is_full(&self) -> bool {
        self.next(self.tail) == self.head
    }
    /// Takes back the last `n` slots [`Self::push_slot`] handed out (their
    /// entries never reached the device: no doorbell was rung for them).
    pub fn retract(&mut self, n: u16) {
        debug_assert!(n <= self.len());
        self.tail = if self.tail >= n {
            self.tail - n
        } else {
            self.size - (n - self.tail)
        };
    }
    /// Slots [`Self::push_slot`] can still hand out.
    pub fn free_slots(&self) -> u16 {
        self.size - 1 - self.len()
    }
}

/// Completion queue ring: the host consumes entries at `head` while their
/// Phase Tag equals the expected `phase`. The expected phase starts at 1
/// (the queue memory is zeroed) and flips each time the head wraps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CqRing {
    head: u16,
    phase: bool,
    size: u16,
}

impl CqRing {
    /// A ring of `size` entries (2..=65535) over zeroed queue memory.
    pub fn new(size: u16) -> Result<Self, QueueError> {
        if size < 2 {
            return Err(QueueError::InvalidSize { size });
        }
        Ok(CqRing {
            head: 0,
            phase: true,
            size,
        })
    }

    /// Whether an entry whose status field (Phase Tag in bit 0) is `status`
    /// was posted in the current lap, i.e. is new.
    pub fn is_new(&self, status: u16) -> bool {
        (status & 1 != 0) == self.phase
    }

    /// [`Self::is_new`] for a whole entry.
    pub fn is_new_entry(&self, entry: &CompletionEntry) -> bool {
        self.is_new(entry.status)
    }

    /// Consume the entry at the head; flips the phase on wrap. Returns the
    /// new head, the value for the CQ Head Doorbell.
    pub fn advance(&mut self) -> u16 {
        self.head += 1;
        if self.head == self.size {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.head
    }

    /// Slot of the next entry to examine; the CQ Head Doorbell value.
    pub fn head(&self) -> u16 {
        self.head
    }
    /// The Phase Tag a new entry at the head carries.
    pub fn phase(&self) -> bool {
        self.phase
    }
    /// Entries in the ring.
    pub fn size(&self) -> u16 {
        self.size
    }
}

/// A completion named a command identifier that is not in flight: never
/// issued, or already completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("completion for command id {cid}, which is not in flight")]
pub struct UnknownCid {
    /// The command id reported.
    pub cid: u16,
}

/// Command identifier allocator with a token per command in flight.
///
/// Capacity is fixed at construction and nothing allocates afterwards. Free
/// identifiers are a stack: the most recently freed one is reused first, as
/// its slot (and its PRP list page) is still warm in the cache. A duplicate
/// completion for a reused id cannot be told apart from the real one by any
/// allocator; ids never issued or not in flight are always rejected. CID
/// 0xFFFF is never issued (the spec reserves it).
#[derive(Debug)]
pub struct CidTable<T> {
    slots: Vec<Option<T>>,
    free: FreeIds,
}

/// The stack of free command ids: a fixed array as large as the table, so
/// pushing never grows it (and the hot path makes no call).
#[derive(Debug)]
struct FreeIds {
    ids: Box<[u16]>,
    len: usize,
}

impl FreeIds {
    #[inline(always)]
    fn pop(&mut self) -> Option<u16> {
        let i = self.len.checked_sub(1)?;
        let id = *self.ids.get(i)?;
        self.len = i;
        Some(id)
    }

    /// Pushes a retired id; every id is pushed at most once per pop, so
    /// there is always room (an id beyond it would be dropped).
    #[inline(always)]
    fn push(&mut self, id: u16) {
        if let Some(slot) = self.ids.get_mut(self.len) {
            *slot = id;
            self.len += 1;
        }
    }
}

impl<T> CidTable<T> {
    /// A table issuing CIDs `0..capacity`. For an I/O queue pair the useful
    /// capacity is the SQ size minus one.
    pub fn new(capacity: u16) -> Self {
        let slots = (0..capacity).map(|_| None).collect();
        // Popped from the end: id 0 first.
        let free = FreeIds {
            ids: (0..capacity).rev().collect(),
            len: capacity as usize,
        };
        CidTable { slots, free }
    }

    /// Issue a CID for `token`; `None` when all are in flight.
    pub fn alloc(&mut self, token: T) -> Option<u16> {
        let cid = self.free.pop()?;
        self.slots[cid as usize] = Some(token);
        Some(cid)
    }

    /// [`Self::alloc`] that hands the token back when all ids are in flight.
    #[inline]
    pub fn try_alloc(&mut self, token: T) -> Result<u16, T> {
        let Some(cid) = self.free.pop() else {
            return Err(token);
        };
        // cid < capacity == slots.len(): the table issued it, so the slot
        // exists (no panic path, which would keep the token on the stack
        // for unwinding).
        match self.slots.get_mut(cid as usize) {
            Some(slot) => {
                *slot = Some(token);
                Ok(cid)
            }
            None => Err(token),
        }
    }

    /// Looks at the token of in-flight `cid` with `retire`; when it says
    /// so, retires `cid` and returns `Ok(Some(token))`, otherwise the
    /// command stays in flight (`Ok(None)`). Errors if `cid` is not in
    /// flight. One lookup for both.
    #[inline]
    pub fn complete_if(
        &mut self,
        cid: u16,
        retire: impl FnOnce(&mut T) -> bool,
    ) -> Result<Option<T>, UnknownCid> {
        let slot = self.slots.get_mut(cid as usize).ok_or(UnknownCid { cid })?;
        let token = slot.as_mut().ok_or(UnknownCid { cid })?;
        if !retire(token) {
            return Ok(None);
        }
        let token = slot.take();
        self.free.push(cid);
        Ok(token)
    }

    /// Lets `take` look at the token of in-flight `cid`; when it returns
    /// `Some`, retires `cid` (what `take` left of the token is dropped)
    /// and returns that, otherwise the command stays in flight
    /// (`Ok(None)`). Errors if `cid` is not in flight. For taking a part
    /// of the token out in place, without moving all of it.
    #[inline(always)]
    pub fn complete_with<R>(
        &mut self,
        cid: u16,
        take: impl FnOnce(&mut T) -> Option<R>,
    ) -> Result<Option<R>, UnknownCid> {
        let slot = self.slots.get_mut(cid as usize).ok_or(UnknownCid { cid })?;
        let token = slot.as_mut().ok_or(UnknownCid { cid })?;
        let Some(r) = take(token) else {
            return Ok(None);
        };
        *slot = None;
        self.free.push(cid);
        Ok(Some(r))
    }

    /// Ids [`Self::alloc`] can still issue.
    pub fn free(&self) -> usize {
        self.free.len
    }

    /// Retire `cid` and return its token; errors if `cid` is not in flight.
    pub fn complete(&mut self, cid: u16) -> Result<T, UnknownCid> {
        let token = self
            .slots
            .get_mut(cid as usize)
            .and_then(Option::take)
            .ok_or(UnknownCid { cid })?;
        self.free.push(cid);
        Ok(token)
    }

    /// The token of an in-flight `cid`.
    pub fn get(&self, cid: u16) -> Option<&T> {
        self.slots.get(cid as usize)?.as_ref()
    }

    /// The token of an in-flight `cid`, mutable.
    pub fn get_mut(&mut self, cid: u16) -> Option<&mut T> {
        self.slots.get_mut(cid as usize)?.as_mut()
    }

    /// Commands in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len
    }
    /// Number of CIDs this table issues.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
    /// No command in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight() == 0
    }
    /// [`Self::alloc`] would return `None`.
    pub fn is_full(&self) -> bool {
        self.free.len == 0
    }

    /// Retire every command in flight (controller reset, queue deletion),
    /// yielding `(cid, token)` pairs. CIDs not yet yielded stay in flight if
    /// the iterator is dropped early.
    pub fn drain(&mut self) -> impl Iterator<Item = (u16, T)> + '_ {
        let free = &mut self.free;
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(move |(cid, slot)| {
                let token = slot.take()?;
                // cid < capacity <= u16::MAX by construction.
                let cid = cid as u16;
                free.push(cid);
                Some((cid, token))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sq_full_empty_and_wrap() {
        assert_eq!(SqRing::new(1), Err(QueueError::InvalidSize { size: 1 }));
        let mut sq = SqRing::new(4).unwrap();
        assert!(sq.is_empty());
        assert_eq!(sq.free_slots(), 3);
        assert_eq!(
            (sq.push_slot(), sq.push_slot(), sq.push_slot()),
            (Some(0), Some(1), Some(2))
        );
        assert!(sq.is_full());
        assert_eq!(sq.push_slot(), None);
        assert_eq!(sq.tail(), 3);
        assert_eq!(sq.len(), 3);

        sq.update_head(2).unwrap();
        assert_eq!(sq.free_slots(), 2);
        assert_eq!(
            (sq.push_slot(), sq.push_slot(), sq.push_slot()),
            (Some(3), Some(0), None)
        );
        assert_eq!(sq.tail(), 1);
        assert_eq!(sq.len(), 3);
        sq.update_head(1).unwrap(); // wrapped head
        assert!(sq.is_empty());

        // Many laps: the slot sequence is 0,1,2,3,0,... and never overruns.
        let mut sq = SqRing::new(8).unwrap();
        for i in 0..100u32 {
            assert_eq!(sq.push_slot(), Some((i % 8) as u16));
            sq.update_head(sq.tail()).unwrap();
        }
    }

    #[test]
    fn sq_invalid_head() {
        let mut sq = SqRing::new(8).unwrap();
        for _ in 0..3 {
            sq.push_slot();
        }
        // Out of range.
        assert!(matches!(
            sq.update_head(8),
            Err(QueueError::InvalidSqHead { sq_head: 8, .. })
        ));
        assert!(sq.update_head(u16::MAX).is_err());
        // In range but beyond the tail: never submitted.
        assert!(sq.update_head(4).is_err());
        assert!(sq.update_head(7).is_err());
        assert_eq!((sq.head(), sq.tail()), (0, 3));
        // Repeating the current head and moving up to the tail are fine.
        sq.update_head(0).unwrap();
        sq.update_head(2).unwrap();
        sq.update_head(3).unwrap();
        // Going backwards is not.
        assert!(sq.update_head(2).is_err());
        assert_eq!(sq.head(), 3);
    }

    #[test]
    fn check_head_accepts_exactly_the_circular_range() {
        for size in 2..8u16 {
            for head in 0..size {
                for len in 0..size {
                    let tail = (head + len) % size;
                    let sq = SqRing { tail, head, size };
                    for sq_head in (0..size + 3).chain([u16::MAX]) {
                        let want = sq_head < size && (sq_head + size - head) % size <= len;
                        assert_eq!(
                            sq.check_head(sq_head).is_ok(),
                            want,
                            "size {size} head {head} tail {tail} sq_head {sq_head}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cq_phase_flips_over_laps() {
        assert!(CqRing::new(0).is_err());
        let size = 4u16;
        let mut cq = CqRing::new(size).unwrap();
        // Zeroed memory: phase 0 entries are old in the first lap.
        assert!(!cq.is_new(0));
        assert!(cq.is_new(1));
        for lap in 0..5u32 {
            let phase = lap % 2 == 0;
            for slot in 0..size {
                assert_eq!((cq.head(), cq.phase()), (slot, phase));
                assert!(cq.is_new(phase as u16 | 0xFFFE));
                assert!(!cq.is_new(!phase as u16));
                let next = cq.advance();
                assert_eq!(next, (slot + 1) % size);
            }
            assert_eq!(cq.phase(), !phase);
        }
        // After an odd number of laps the expected phase is 0 again.
        assert!(!cq.phase());
        let old = CompletionEntry {
            status: 1,
            ..Default::default()
        };
        let new = CompletionEntry {
            status: 0,
            ..Default::default()
        };
        assert!(!cq.is_new_entry(&old));
        assert!(cq.is_new_entry(&new));
    }

    #[test]
    fn cid_table_alloc_complete() {
        let mut t = CidTable::new(3);
        assert!(t.is_empty());
        let a = t.alloc("a").unwrap();
        let b = t.alloc("b").unwrap();
        let c = t.alloc("c").unwrap();
        assert!(t.is_full());
        assert_eq!(t.alloc("d"), None);
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.complete(b), Ok("b"));
        // Duplicate completion.
        assert_eq!(t.complete(b), Err(UnknownCid { cid: b }));
        // Never issued, and out of range.
        assert_eq!(t.complete(3), Err(UnknownCid { cid: 3 }));
        assert_eq!(t.complete(u16::MAX), Err(UnknownCid { cid: u16::MAX }));
        assert_eq!(t.get(u16::MAX), None);
        // LIFO reuse: the id freed last comes back first.
        let d = t.alloc("d").unwrap();
        assert_eq!(d, b);
        assert_eq!(t.complete(a), Ok("a"));
        assert_eq!(t.complete(c), Ok("c"));
        let e = t.alloc("e").unwrap();
        assert_eq!(e, c);
        assert_eq!(t.in_flight(), 2);

        let mut drained: Vec<_> = t.drain().collect();
        drained.sort();
        assert_eq!(drained, [(b, "d"), (c, "e")]);
        assert!(t.is_empty());
        assert_eq!(t.capacity(), 3);
        assert_eq!(t.complete(c), Err(UnknownCid { cid: c }));
        for _ in 0..3 {
            assert!(t.alloc("x").is_some());
        }
    }

    #[test]
    fn cid_table_fresh_is_unknown() {
        let mut t: CidTable<u32> = CidTable::new(0);
        assert_eq!(t.alloc(1), None);
        assert_eq!(t.complete(0), Err(UnknownCid { cid: 0 }));
        let mut t: CidTable<u32> = CidTable::new(16);
        for cid in 0..=20 {
            assert_eq!(t.complete(cid), Err(UnknownCid { cid }));
        }
    }
}
