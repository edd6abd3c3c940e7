//! Descriptor ring index arithmetic, without a device: ring sizes, the
//! receive tail rule and transmit reclaim in batches (82576 datasheet 7.1.3
//! and 7.2.3: the device owns descriptors from head up to, not including,
//! tail; software owns the rest).

use crate::{NicError, Result};

/// Smallest ring the driver builds (RDLEN/TDLEN must be a multiple of
/// 128 bytes, i.e. 8 descriptors; 16 leaves room for a burst).
pub const MIN_RING: u16 = 16;
/// Largest ring (the 82576 limit).
pub const MAX_RING: u16 = 4096;

/// Index arithmetic of a ring of a power-of-two number of descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    mask: u16,
}

impl Ring {
    /// A ring of `size` descriptors: `size` rounded up to a power of two,
    /// at least [`MIN_RING`]; more than [`MAX_RING`] is refused.
    pub fn new(size: u16) -> Result<Ring> {
        if size == 0 || size > MAX_RING {
            return Err(NicError::InvalidArgument(format!(
                "ring of {size} descriptors: 1..={MAX_RING} allowed"
            )));
        }
        let size = size.next_power_of_two().max(MIN_RING);
        Ok(Ring { mask: size - 1 })
    }

    /// Descriptors in the ring.
    #[inline(always)]
    pub const fn size(self) -> u16 {
        self.mask + 1
    }

    /// `i + n`, wrapped.
    #[inline(always)]
    pub const fn add(self, i: u16, n: u16) -> u16 {
        i.wrapping_add(n) & self.mask
    }

    /// Steps from `from` forward to `to`.
    #[inline(always)]
    pub const fn distance(self, from: u16, to: u16) -> u16 {
        to.wrapping_sub(from) & self.mask
    }
}

/// Receive side: the next slot to look at for a written-back descriptor.
///
/// All slots hold a buffer. The tail register is kept one behind `next`:
/// the slot just consumed (and refilled) is the one the device may not use
/// yet, so head never catches up with tail and the device owns at most
/// `size - 1` descriptors. Initially `next = 0`, tail = `size - 1`.
#[derive(Clone, Copy, Debug)]
pub struct RxIndex {
    ring: Ring,
    next: u16,
}

impl RxIndex {
    /// Receive indices of a ring of shape `ring`, starting at slot 0.
    pub const fn new(ring: Ring) -> RxIndex {
        RxIndex { ring, next: 0 }
    }

    /// The slot whose write-back to check next.
    #[inline(always)]
    pub const fn next(&self) -> u16 {
        self.next
    }

    /// Marks `next` consumed and refilled.
    #[cfg(test)]
    pub fn advance(&mut self) {
        self.next = self.ring.add(self.next, 1);
    }

    /// Marks every slot up to `next` consumed and refilled (a burst's
    /// worth of [`RxIndex::advance`]).
    #[inline(always)]
    pub fn set_next(&mut self, next: u16) {
        self.next = next & self.ring.mask;
    }

    /// The value for the tail register (RDT): the last consumed slot.
    #[inline(always)]
    pub const fn tail(&self) -> u16 {
        self.ring.add(self.next, self.ring.mask)
    }
}

/// Transmit side: `clean` is the oldest descriptor not yet reclaimed,
/// `tail` the next one to fill (the value of TDT). Descriptors in
/// `clean..tail` are in flight; one slot always stays empty so that a full
/// ring is not mistaken for an empty one.
#[derive(Clone, Copy, Debug)]
pub struct TxIndex {
    ring: Ring,
    clean: u16,
    tail: u16,
}

impl TxIndex {
    /// Transmit indices of a ring of shape `ring`, empty.
    pub const fn new(ring: Ring) -> TxIndex {
        TxIndex { ring, clean: 0, tail: 0 }
    }

    /// The ring shape.
    pub const fn ring(&self) -> Ring {
        self.ring
    }

    /// Oldest in-flight descriptor.
    #[inline(always)]
    pub const fn clean(&self) -> u16 {
        self.clean
    }

    /// Next descriptor to fill; what TDT is set to.
    #[inline(always)]
    pub const fn tail(&self) -> u16 {
        self.tail
    }

    /// Descriptors handed to the device and not reclaimed.
    #[inline(always)]
    pub const fn in_flight(&self) -> u16 {
        self.ring.distance(self.clean, self.tail)
    }

    /// Descriptors that can be filled now.
    #[inline(always)]
    pub const fn free(&self) -> u16 {
        self.ring.mask - self.in_flight()
    }

    /// Takes `n` descriptors starting at the returned slot; `None` (and no
    /// change) if fewer than `n` are free.
    #[inline(always)]
    pub fn reserve(&mut self, n: u16) -> Option<u16> {
        if n > self.free() {
            return None;
        }
        let first = self.tail;
        self.tail = self.ring.add(self.tail, n);
        Some(first)
    }

    /// The next reclaim batch: up to `batch` oldest in-flight descriptors,
    /// as `(last_slot, count)`. Descriptors complete in order, so when the
    /// last one shows DD the whole batch is done.
    #[inline(always)]
    pub fn reclaim_probe(&self, batch: u16) -> Option<(u16, u16)> {
        let count = self.in_flight().min(batch);
        (count > 0).then(|| (self.ring.add(self.clean, count - 1), count))
    }

    /// Gives `count` descriptors back (after their buffers were freed).
    #[inline(always)]
    pub fn complete(&mut self, count: u16) {
        debug_assert!(count <= self.in_flight());
        self.clean = self.ring.add(self.clean, count.min(self.in_flight()));
    }

    /// How many descriptors a head register value (TDH: the next descriptor
    /// the device will fetch) says are done; `None` for a head outside the
    /// in-flight range, which a sane device never reports.
    #[inline(always)]
    pub fn done_by_head(&self, head: u16) -> Option<u16> {
        let done = self.ring.distance(self.clean, head);
        (head <= self.ring.mask && done <= self.in_flight()).then_some(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_a_power_of_two_within_limits() {
        assert_eq!(Ring::new(512).unwrap().size(), 512);
        assert_eq!(Ring::new(500).unwrap().size(), 512);
        assert_eq!(Ring::new(1).unwrap().size(), MIN_RING);
        assert_eq!(Ring::new(4096).unwrap().size(), 4096);
        assert!(Ring::new(0).is_err());
        assert!(Ring::new(4097).is_err());
    }

    #[test]
    fn arithmetic_wraps() {
        let r = Ring::new(16).unwrap();
        assert_eq!(r.add(15, 1), 0);
        assert_eq!(r.add(10, 22), 0);
        assert_eq!(r.distance(14, 2), 4);
        assert_eq!(r.distance(3, 3), 0);
    }

    #[test]
    fn rx_tail_trails_next_by_one() {
        let mut rx = RxIndex::new(Ring::new(16).unwrap());
        assert_eq!((rx.next(), rx.tail()), (0, 15));
        for i in 0..40u16 {
            assert_eq!(rx.next(), i % 16);
            rx.advance();
            assert_eq!(rx.tail(), i % 16);
        }
    }

    #[test]
    fn tx_keeps_one_slot_empty_and_partially_accepts() {
        let mut tx = TxIndex::new(Ring::new(16).unwrap());
        assert_eq!((tx.free(), tx.in_flight()), (15, 0));
        assert_eq!(tx.reserve(16), None);
        assert_eq!(tx.reserve(10), Some(0));
        assert_eq!(tx.reserve(6), None, "only 5 left");
        assert_eq!(tx.reserve(5), Some(10));
        assert_eq!((tx.free(), tx.in_flight(), tx.tail()), (0, 15, 15));
        assert_eq!(tx.reserve(1), None);
    }

    #[test]
    fn tx_reclaims_in_batches_across_the_wrap() {
        let mut tx = TxIndex::new(Ring::new(16).unwrap());
        tx.reserve(12).unwrap();
        assert_eq!(tx.reclaim_probe(8), Some((7, 8)));
        tx.complete(8);
        assert_eq!(tx.reclaim_probe(8), Some((11, 4)), "a short last batch");
        tx.complete(4);
        assert_eq!(tx.reclaim_probe(8), None);
        // clean = tail = 12: the next fill wraps.
        assert_eq!(tx.reserve(10), Some(12));
        assert_eq!(tx.tail(), 6);
        assert_eq!(tx.reclaim_probe(8), Some((3, 8)));
        tx.complete(8);
        assert_eq!((tx.clean(), tx.in_flight(), tx.free()), (4, 2, 13));
    }

    #[test]
    fn tx_head_register_accounting() {
        let mut tx = TxIndex::new(Ring::new(16).unwrap());
        tx.reserve(14).unwrap();
        tx.complete(10);
        tx.reserve(6).unwrap(); // clean 10, tail 4: in flight 10..16, 0..4
        assert_eq!(tx.done_by_head(10), Some(0));
        assert_eq!(tx.done_by_head(15), Some(5));
        assert_eq!(tx.done_by_head(2), Some(8));
        assert_eq!(tx.done_by_head(4), Some(10), "everything sent");
        assert_eq!(tx.done_by_head(7), None, "not in flight");
        assert_eq!(tx.done_by_head(99), None);
    }

    #[test]
    fn a_long_random_walk_never_loses_a_slot() {
        // Push and reclaim pseudo-random amounts; every slot handed out is
        // reclaimed exactly once, in order.
        let mut tx = TxIndex::new(Ring::new(64).unwrap());
        let mut owner = [None::<u64>; 64];
        let (mut next_id, mut expect_id) = (0u64, 0u64);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 20) as u16;
            if x & 1 == 0 {
                let n = n.min(tx.free());
                let first = tx.reserve(n).unwrap();
                for k in 0..n {
                    let s = tx.ring().add(first, k) as usize;
                    assert!(owner[s].is_none(), "slot {s} reused while in flight");
                    owner[s] = Some(next_id);
                    next_id += 1;
                }
            } else if let Some((_, count)) = tx.reclaim_probe(n.max(1)) {
                for k in 0..count {
                    let s = tx.ring().add(tx.clean(), k) as usize;
                    assert_eq!(owner[s].take(), Some(expect_id));
                    expect_id += 1;
                }
                tx.complete(count);
            }
            assert_eq!(tx.free() + tx.in_flight(), 63);
        }
        assert_eq!(next_id - expect_id, tx.in_flight() as u64);
    }
}
