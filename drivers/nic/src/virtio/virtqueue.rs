//! Split virtqueues (virtio spec §2.7): the descriptor table, the available
//! ring the driver writes and the used ring the device writes, in one DMA
//! region.
//!
//! [`RingState`] is the driver's bookkeeping without any DMA memory (free
//! descriptors, chain links, the token each in-flight chain carries, shadow
//! indices) and is unit-tested directly. [`Virtqueue`] puts it on the rings,
//! each part a framework [`DmaArray`] carved out of the queue's region
//! (bounds-checked volatile accesses, no `unsafe`): `idx` fields are stored
//! with release (publishing avail) and loaded with acquire (reading used)
//! ordering, with a full fence before deciding whether the device wants a
//! notification.

use std::sync::atomic::{fence, Ordering};

use fastlane_framework::{DmaArray, DmaRegion, Iova};

use super::pci::{Notifier, QueueAddrs};
use super::spec::{
    avail, used, VirtqDesc, VirtqUsedElem, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE, VIRTQ_MAX_SIZE, VIRTQ_USED_F_NO_NOTIFY,
};
use crate::{NicError, Result};

/// Longest descriptor chain the driver builds: a net header and the
/// buffers of a frame.
pub const MAX_CHAIN: usize = 1 + MAX_TX_BUFFERS;
/// Most buffers of one multi-buffer frame sent as a chain: a 9014-byte
/// frame takes 5 or 6 (see `Packet`), so 8 leave room.
pub const MAX_TX_BUFFERS: usize = 8;
/// Chains of up to this many descriptors (a frame in one buffer, with or
/// without a separate header) take the short path.
pub const SHORT_CHAIN: usize = 2;
/// `next` of a descriptor that ends its chain (shadow only).
const END: u16 = u16::MAX;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Bus address of the buffer.
    pub addr: Iova,
    /// Length in bytes.
    pub len: u32,
    /// Device write-only (receive) rather than device read-only (transmit).
    pub device_writes: bool,
}

/// Driver-side state of a split ring; knows nothing of DMA memory.
pub struct RingState<T> {
    size: u16,
    /// Free descriptor ids (a stack: recently freed ones are reused first).
    free: Vec<u16>,
    /// Chain links of in-flight descriptors.
    next: Box<[u16]>,
    /// Per head: the caller's token while its chain is in flight.
    tokens: Box<[Option<T>]>,
    /// Next `avail.idx` value (entries written so far).
    avail_idx: u16,
    /// Last `avail.idx` value shown to the device.
    published: u16,
    /// Used entries consumed so far.
    last_used: u16,
    /// Chains handed to the device and not yet returned.
    in_flight: u16,
}

impl<T> RingState<T> {
    /// State for a queue of `size` entries (a power of two, at most 32768).
    pub fn new(size: u16) -> Result<RingState<T>> {
        if !size.is_power_of_two() || size > VIRTQ_MAX_SIZE {
            return Err(NicError::InvalidArgument(format!(
                "virtqueue size {size}: must be a power of two up to {VIRTQ_MAX_SIZE}"
            )));
        }
        Ok(RingState {
            size,
            free: (0..size).rev().collect(),
            next: vec![END; size as usize].into(),
            tokens: (0..size).map(|_| None).collect(),
            avail_idx: 0,
            published: 0,
            last_used: 0,
            in_flight: 0,
        })
    }

    /// Entries of the queue.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Descriptors not in any chain.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// Chains the device holds.
    pub fn in_flight(&self) -> usize {
        self.in_flight as usize
    }

    /// Takes `n` (1..=MAX_CHAIN) free descriptors for a chain carrying
    /// `token` and links them; the ids come back in chain order (unused
    /// trailing ids are END). Without enough free descriptors the token
    /// is handed back.
    pub fn reserve(&mut self, n: usize, token: T) -> std::result::Result<[u16; MAX_CHAIN], T> {
        self.reserve_n(n, token)
    }

    /// [`RingState::reserve`] for chains of at most `N` descriptors: the
    /// common one- and two-descriptor chains keep a small array.
    #[inline(always)]
    pub fn reserve_n<const N: usize>(
        &mut self,
        n: usize,
        token: T,
    ) -> std::result::Result<[u16; N], T> {
        if n == 0 || n > N || self.free.len() < n {
            return Err(token);
        }
        let mut ids = [END; N];
        for id in ids.iter_mut().take(n) {
            // Cannot fail: checked above.
            *id = self.free.pop().unwrap_or(END);
        }
        for w in ids[..n].windows(2) {
            self.next[w[0] as usize] = w[1];
        }
        self.next[ids[n - 1] as usize] = END;
        self.tokens[ids[0] as usize] = Some(token);
        self.in_flight += 1;
        Ok(ids)
    }

    /// The available ring slot for the next head; advances the shadow idx.
    pub fn next_avail_slot(&mut self) -> usize {
        let slot = (self.avail_idx & (self.size - 1)) as usize;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        slot
    }

    /// The `avail.idx` to publish, if entries were added since last time.
    pub fn take_unpublished(&mut self) -> Option<u16> {
        (self.avail_idx != self.published).then(|| {
            self.published = self.avail_idx;
            self.avail_idx
        })
    }

    /// New used entries, given the device's `used.idx`. More than the
    /// chains in flight means the device is broken.
    pub fn used_pending(&self, used_idx: u16) -> Result<u16> {
        let n = used_idx.wrapping_sub(self.last_used);
        if n > self.in_flight {
            return Err(NicError::Malformed(
                "virtqueue used.idx ahead of the buffers in flight",
            ));
        }
        Ok(n)
    }

    /// The used ring slot of the next entry to consume.
    pub fn next_used_slot(&self) -> usize {
        (self.last_used & (self.size - 1)) as usize
    }

    /// Consumes the next used entry, whose head is `id`: frees its chain and
    /// returns its token. An id that is not an in-flight head is an error
    /// (the entry is skipped).
    pub fn complete(&mut self, id: u32) -> Result<T> {
        self.last_used = self.last_used.wrapping_add(1);
        let token = (id < self.size as u32)
            .then(|| self.tokens[id as usize].take())
            .flatten()
            .ok_or(NicError::Malformed(
                "virtqueue used entry names no buffer in flight",
            ))?;
        let mut d = id as u16;
        loop {
            let n = std::mem::replace(&mut self.next[d as usize], END);
            self.free.push(d);
            if n == END {
                break;
            }
            d = n;
        }
        self.in_flight -= 1;
        Ok(token)
    }

    /// Removes every token still in flight (after a device reset).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.in_flight = 0;
        self.tokens.iter_mut().filter_map(Option::take)
    }
}

/// Byte layout of one queue: descriptor table, then the available ring,
/// then the used ring on its own page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Entries of the queue.
    pub size: u16,
    /// Byte offset of the available ring.
    pub avail: usize,
    /// Byte offset of the used ring (page aligned).
    pub used: usize,
    /// Bytes of the whole queue, a multiple of 4 KiB.
    pub total: usize,
}

impl QueueLayout {
    /// The layout of a queue of `size` entries.
    pub fn new(size: u16) -> QueueLayout {
        let avail_off = 16 * size as usize;
        let used_off = (avail_off + avail::len(size)).next_multiple_of(4096);
        QueueLayout {
            size,
            avail: avail_off,
            used: used_off,
            total: (used_off + used::len(size)).next_multiple_of(4096),
        }
    }

    /// IOVAs of a queue laid out at `base` in `region`.
    pub fn addrs(&self, region: &DmaRegion, base: usize) -> QueueAddrs {
        QueueAddrs {
            desc: region.iova_at(base),
            driver: region.iova_at(base + self.avail),
            device: region.iova_at(base + self.used),
        }
    }
}

/// Index of `flags` and `idx` in the 16-bit words of a ring header.
const FLAGS: usize = 0;
const IDX: usize = 1;
/// 16-bit words before `ring[]` in the available ring.
const AVAIL_RING: usize = avail::RING / 2;

/// A split virtqueue in DMA memory; `T` is what each chain carries back
/// when the device returns it (a packet buffer, nothing for commands).
pub struct Virtqueue<T> {
    state: RingState<T>,
    /// The descriptor table.
    desc: DmaArray<VirtqDesc>,
    /// The available ring as 16-bit words: flags, idx, ring[size],
    /// used_event.
    avail: DmaArray<u16>,
    /// The used ring's flags and idx.
    used_hdr: DmaArray<u16>,
    /// The used ring's entries.
    used: DmaArray<VirtqUsedElem>,
    /// The used ring's trailing avail_event (unused without
    /// VIRTIO_F_EVENT_IDX, owned so nothing else is put there).
    _avail_event: DmaArray<u16>,
    notifier: Notifier,
    /// Used entries seen in `used.idx` and not consumed yet.
    pending: u16,
}

impl<T> Virtqueue<T> {
    /// Puts a queue of `layout` at `base` of `region` (zeroing it) and asks
    /// the device for no interrupts. Call before DRIVER_OK. The queue owns
    /// its bytes: a range overlapping memory already carved is refused.
    pub fn new(
        region: &DmaRegion,
        base: usize,
        layout: QueueLayout,
        notifier: Notifier,
    ) -> Result<Virtqueue<T>> {
        let size = layout.size as usize;
        let used_ring = base + layout.used + used::RING;
        let vq = Virtqueue {
            state: RingState::new(layout.size)?,
            desc: region.carve(base, size)?,
            avail: region.carve(base + layout.avail, AVAIL_RING + size + 1)?,
            used_hdr: region.carve(base + layout.used, 2)?,
            used: region.carve(used_ring, size)?,
            _avail_event: region.carve(used_ring + 8 * size, 1)?,
            notifier,
            pending: 0,
        };
        vq.desc.fill(VirtqDesc::default());
        vq.avail.fill(0);
        vq.used_hdr.fill(0);
        vq.used.fill(VirtqUsedElem::default());
        vq._avail_event.fill(0);
        // The device reads the flags only after DRIVER_OK.
        vq.avail.write(FLAGS, VIRTQ_AVAIL_F_NO_INTERRUPT);
        Ok(vq)
    }

    /// Entries of the queue.
    pub fn size(&self) -> u16 {
        self.state.size()
    }

    /// Descriptors not in any chain.
    pub fn free_descs(&self) -> usize {
        self.state.free_descs()
    }

    /// Chains the device holds.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight()
    }

    /// Writes a chain of `segs` carrying `token` and puts its head in the
    /// available ring; the device sees it after [`Virtqueue::kick`]. Without
    /// enough free descriptors the token comes back.
    #[inline(always)]
    pub fn add(&mut self, segs: &[Segment], token: T) -> std::result::Result<(), T> {
        if segs.len() <= SHORT_CHAIN {
            self.add_n::<SHORT_CHAIN>(segs, token)
        } else {
            self.add_n::<MAX_CHAIN>(segs, token)
        }
    }

    #[inline(always)]
    fn add_n<const N: usize>(&mut self, segs: &[Segment], token: T) -> std::result::Result<(), T> {
        let ids = self.state.reserve_n::<N>(segs.len(), token)?;
        for (i, s) in segs.iter().enumerate() {
            let more = i + 1 < segs.len();
            let d = VirtqDesc {
                addr: s.addr.get(),
                len: s.len,
                flags: if s.device_writes {
                    VIRTQ_DESC_F_WRITE
                } else {
                    0
                } | if more { VIRTQ_DESC_F_NEXT } else { 0 },
                next: if more { ids[i + 1] } else { 0 },
            };
            // A free descriptor: the device does not read it.
            self.desc.write(ids[i] as usize, d);
        }
        // The device reads the slot only once avail.idx covers it.
        let slot = self.state.next_avail_slot();
        self.avail.write(AVAIL_RING + slot, ids[0]);
        Ok(())
    }

    /// Publishes the chains added since last time and notifies the device
    /// unless it asked not to be (VIRTQ_USED_F_NO_NOTIFY). Returns whether
    /// it notified. Meant once per burst.
    #[inline]
    pub fn kick(&mut self) -> bool {
        let Some(idx) = self.state.take_unpublished() else {
            return false;
        };
        // Release: descriptors and ring entries before the index.
        self.avail.store_release(IDX, idx);
        // The index store must be visible before the flags are read, or the
        // device could go idle in between without being told (§2.7.10).
        fence(Ordering::SeqCst);
        if self.used_hdr.read(FLAGS) & VIRTQ_USED_F_NO_NOTIFY != 0 {
            return false;
        }
        self.notifier.notify();
        true
    }

    /// Used entries waiting to be consumed.
    #[inline]
    pub fn used_pending(&self) -> Result<u16> {
        self.state.used_pending(self.used_hdr.load_acquire(IDX))
    }

    /// Consumes one used entry (call at most `used_pending` times): its
    /// token and the bytes the device wrote.
    #[inline]
    pub fn pop_used(&mut self) -> Result<(T, u32)> {
        // used_pending's acquire load ordered this read after the device's
        // write of the entry.
        let e = self.used.read(self.state.next_used_slot());
        Ok((self.state.complete(e.id)?, e.len))
    }

    /// The next used entry, if any: [`Virtqueue::pop_used`] behind one
    /// acquire load of `used.idx` per batch of entries it shows.
    #[inline(always)]
    pub fn next_used(&mut self) -> Result<Option<(T, u32)>> {
        if self.pending == 0 {
            self.pending = self.used_pending()?;
            if self.pending == 0 {
                return Ok(None);
            }
        }
        self.pending -= 1;
        self.pop_used().map(Some)
    }

    /// Takes every token back; only after the device was reset.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.pending = 0;
        self.state.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_be_powers_of_two() {
        for bad in [0, 3, 100, 65535] {
            assert!(RingState::<()>::new(bad).is_err(), "{bad}");
        }
        for good in [1, 2, 256, 32768] {
            assert_eq!(
                RingState::<()>::new(good).unwrap().free_descs(),
                good as usize
            );
        }
    }

    #[test]
    fn chains_take_and_return_their_descriptors() {
        let mut r = RingState::new(4).unwrap();
        let a = r.reserve(2, 'a').unwrap();
        let b = r.reserve(1, 'b').unwrap();
        assert_eq!(r.free_descs(), 1);
        assert_eq!(r.in_flight(), 2);
        assert_eq!(r.reserve(2, 'c'), Err('c'));
        assert_eq!(r.next[a[0] as usize], a[1]);
        assert_eq!((r.next[a[1] as usize], b[1]), (END, END));
        // Returned in another order than added.
        assert_eq!(r.complete(b[0] as u32).unwrap(), 'b');
        assert_eq!(r.complete(a[0] as u32).unwrap(), 'a');
        assert_eq!((r.free_descs(), r.in_flight()), (4, 0));
        let mut all: Vec<u16> = r.free.clone();
        all.sort();
        assert_eq!(all, [0, 1, 2, 3]);
        assert!(r.reserve(0, 'x').is_err() && r.reserve(MAX_CHAIN + 1, 'x').is_err());
    }

    #[test]
    fn device_errors_are_caught_not_trusted() {
        let mut r = RingState::new(8).unwrap();
        let a = r.reserve(2, 1).unwrap();
        // Not a head, out of range, and a second completion of the same head.
        assert!(matches!(
            r.complete(a[1] as u32),
            Err(NicError::Malformed(_))
        ));
        assert!(matches!(r.complete(99), Err(NicError::Malformed(_))));
        assert_eq!(r.complete(a[0] as u32).unwrap(), 1);
        assert!(matches!(
            r.complete(a[0] as u32),
            Err(NicError::Malformed(_))
        ));
        assert_eq!(r.free_descs(), 8);
        // used.idx may run ahead only by what is in flight.
        r.reserve(1, 2).unwrap();
        let base = r.last_used;
        assert_eq!(r.used_pending(base).unwrap(), 0);
        assert_eq!(r.used_pending(base.wrapping_add(1)).unwrap(), 1);
        assert!(r.used_pending(base.wrapping_add(2)).is_err());
    }

    #[test]
    fn indices_wrap_at_u16_and_slots_wrap_at_the_size() {
        let mut r = RingState::new(4).unwrap();
        r.avail_idx = u16::MAX - 1;
        r.published = u16::MAX - 1;
        r.last_used = u16::MAX - 1;
        let mut slots = Vec::new();
        for t in 0..4 {
            r.reserve(1, t).unwrap();
            slots.push(r.next_avail_slot());
        }
        assert_eq!(slots, [2, 3, 0, 1]);
        assert_eq!(r.take_unpublished(), Some(2));
        assert_eq!(r.take_unpublished(), None);
        // The device consumed all four: used.idx wrapped to 2.
        assert_eq!(r.used_pending(2).unwrap(), 4);
        let mut used_slots = Vec::new();
        for _ in 0..4 {
            used_slots.push(r.next_used_slot());
            let id = r.tokens.iter().position(Option::is_some).unwrap();
            r.complete(id as u32).unwrap();
        }
        assert_eq!(used_slots, [2, 3, 0, 1]);
        assert_eq!(r.used_pending(2).unwrap(), 0);
    }

    #[test]
    fn drain_returns_every_token_once() {
        let mut r = RingState::new(8).unwrap();
        for t in 0..3 {
            r.reserve(2, t).unwrap();
        }
        let mut got: Vec<i32> = r.drain().collect();
        got.sort();
        assert_eq!(got, [0, 1, 2]);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.drain().count(), 0);
    }

    #[test]
    fn layout_keeps_the_parts_apart_and_aligned() {
        let l = QueueLayout::new(256);
        assert_eq!((l.avail, l.used, l.total), (4096, 8192, 12288));
        let s = QueueLayout::new(1);
        assert_eq!((s.avail, s.used, s.total), (16, 4096, 8192));
        let big = QueueLayout::new(VIRTQ_MAX_SIZE);
        assert!(big.avail + avail::len(big.size) <= big.used);
        assert!(big.used + used::len(big.size) <= big.total);
    }
}
