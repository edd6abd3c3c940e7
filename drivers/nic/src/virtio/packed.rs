//! Packed virtqueues (virtio spec §2.8, VIRTIO_F_RING_PACKED): one ring of
//! descriptors that the driver writes available and the device overwrites
//! used, in ring order, each side keeping a wrap counter that flips every
//! lap; an event suppression structure per side (driver area, device area).
//!
//! [`PackedState`] is the driver's bookkeeping without DMA memory (slots,
//! wrap counters, buffer ids and their chain lengths) and is unit-tested on
//! its own. [`PackedQueue`] puts it on a ring carved out of a DMA region,
//! with the same interface as the split [`super::virtqueue::Virtqueue`]
//! (add, kick, used entries one at a time). A chain's head flags are
//! written last, after a release fence, so the device never sees a chain
//! half written.
//!
//! A device that writes nonsense finishes nothing: a used descriptor whose
//! flags do not carry the expected wrap counter is not used yet; one naming
//! a buffer id out of range or not in flight is an error and the queue
//! stops there (a reset gets every buffer back).

use std::sync::atomic::{fence, Ordering};

use fastlane_framework::{DmaArray, DmaRegion};

use super::pci::{Notifier, QueueAddrs};
use super::spec::{
    PvirtqDesc, PvirtqEventSuppress, PVIRTQ_DESC_FLAGS, PVIRTQ_DESC_ID, PVIRTQ_DESC_LEN,
    RING_EVENT_FLAGS_DISABLE, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE, VIRTQ_MAX_SIZE,
};
use super::virtqueue::{Segment, MAX_CHAIN, SHORT_CHAIN};
use crate::{NicError, Result};

/// The AVAIL/USED bits that make a descriptor available in a lap whose
/// driver wrap counter is `wrap`.
pub fn avail_flags(wrap: bool) -> u16 {
    if wrap {
        VIRTQ_DESC_F_AVAIL
    } else {
        VIRTQ_DESC_F_USED
    }
}

/// Whether `flags` mark a descriptor used in a lap whose used wrap counter
/// is `wrap`: AVAIL and USED both equal to it.
pub fn is_used(flags: u16, wrap: bool) -> bool {
    let avail = flags & VIRTQ_DESC_F_AVAIL != 0;
    let used = flags & VIRTQ_DESC_F_USED != 0;
    avail == used && used == wrap
}

/// Driver-side state of a packed ring; knows nothing of DMA memory.
pub struct PackedState<T> {
    size: u16,
    /// Next slot to make available, and the driver ring wrap counter.
    next_avail: u16,
    avail_wrap: bool,
    /// Next slot the device writes used, and the used wrap counter.
    last_used: u16,
    used_wrap: bool,
    /// Slots not holding an in-flight descriptor.
    free_slots: u16,
    /// Buffer ids not in flight.
    free_ids: Vec<u16>,
    /// Per in-flight id: descriptors of its chain.
    chain: Box<[u16]>,
    /// Per id: the caller's token while in flight.
    tokens: Box<[Option<T>]>,
    in_flight: u16,
    /// Chains made available since the last kick.
    unkicked: bool,
}

/// Where one chain goes: its buffer id, and per descriptor its slot and
/// the wrap counter of that slot's lap (a chain may cross the ring's end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement<const N: usize = MAX_CHAIN> {
    /// Buffer id, written in every descriptor of the chain.
    pub id: u16,
    /// (slot, wrap counter) per descriptor, in chain order.
    pub slots: [(u16, bool); N],
}

impl<T> PackedState<T> {
    /// State for a ring of `size` entries (1 to 32768).
    pub fn new(size: u16) -> Result<PackedState<T>> {
        if size == 0 || size > VIRTQ_MAX_SIZE {
            return Err(NicError::InvalidArgument(format!(
                "packed virtqueue size {size}: must be 1 to {VIRTQ_MAX_SIZE}"
            )));
        }
        Ok(PackedState {
            size,
            next_avail: 0,
            avail_wrap: true,
            last_used: 0,
            used_wrap: true,
            free_slots: size,
            free_ids: (0..size).rev().collect(),
            chain: vec![0; size as usize].into(),
            tokens: (0..size).map(|_| None).collect(),
            in_flight: 0,
            unkicked: false,
        })
    }

    /// Descriptors free for new chains.
    pub fn free_descs(&self) -> usize {
        self.free_slots as usize
    }

    /// Chains the device holds.
    pub fn in_flight(&self) -> usize {
        self.in_flight as usize
    }

    /// Takes `n` (1..=MAX_CHAIN) slots and a buffer id for a chain carrying
    /// `token`; without room the token is handed back.
    pub fn reserve(&mut self, n: usize, token: T) -> std::result::Result<Placement, T> {
        self.reserve_n(n, token)
    }

    /// [`PackedState::reserve`] for chains of at most `N` descriptors: the
    /// common short chains keep a small array.
    #[inline(always)]
    pub fn reserve_n<const N: usize>(
        &mut self,
        n: usize,
        token: T,
    ) -> std::result::Result<Placement<N>, T> {
        if n == 0 || n > N || (self.free_slots as usize) < n {
            return Err(token);
        }
        let Some(id) = self.free_ids.pop() else {
            return Err(token);
        };
        let mut slots = [(0, false); N];
        for s in slots.iter_mut().take(n) {
            *s = (self.next_avail, self.avail_wrap);
            self.next_avail += 1;
            if self.next_avail == self.size {
                self.next_avail = 0;
                self.avail_wrap = !self.avail_wrap;
            }
        }
        self.free_slots -= n as u16;
        self.chain[id as usize] = n as u16;
        self.tokens[id as usize] = Some(token);
        self.in_flight += 1;
        self.unkicked = true;
        Ok(Placement { id, slots })
    }

    /// The slot the next used descriptor lands in, and its wrap counter;
    /// None when nothing is in flight (a used descriptor then is not
    /// looked at).
    pub fn next_used(&self) -> Option<(u16, bool)> {
        (self.in_flight > 0).then_some((self.last_used, self.used_wrap))
    }

    /// Consumes the used descriptor at [`PackedState::next_used`], naming
    /// buffer `id`: frees its chain's slots and id, returns its token. An
    /// id out of range or not in flight is an error and consumes nothing.
    pub fn complete(&mut self, id: u16) -> Result<T> {
        let token = (id < self.size)
            .then(|| self.tokens[id as usize].take())
            .flatten()
            .ok_or(NicError::Malformed(
                "packed virtqueue used descriptor names no buffer in flight",
            ))?;
        let n = self.chain[id as usize];
        let next = self.last_used as u32 + n as u32;
        if next >= self.size as u32 {
            self.used_wrap = !self.used_wrap;
        }
        self.last_used = (next % self.size as u32) as u16;
        self.free_slots += n;
        self.free_ids.push(id);
        self.in_flight -= 1;
        Ok(token)
    }

    /// Whether chains were added since the last call (and clears it).
    pub fn take_unkicked(&mut self) -> bool {
        std::mem::take(&mut self.unkicked)
    }

    /// Removes every token still in flight (after a device reset).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.in_flight = 0;
        self.tokens.iter_mut().filter_map(Option::take)
    }
}

/// Byte layout of one packed queue: the ring, then the driver and device
/// event suppression structures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedLayout {
    /// Entries of the ring.
    pub size: u16,
    /// Byte offset of the driver area.
    pub driver: usize,
    /// Byte offset of the device area.
    pub device: usize,
    /// Bytes of the whole queue, a multiple of 4 KiB.
    pub total: usize,
}

impl PackedLayout {
    /// The layout of a ring of `size` entries.
    pub fn new(size: u16) -> PackedLayout {
        let driver = 16 * size as usize;
        PackedLayout {
            size,
            driver,
            device: driver + 4,
            total: (driver + 8).next_multiple_of(4096),
        }
    }

    /// IOVAs of a queue laid out at `base` in `region`.
    pub fn addrs(&self, region: &DmaRegion, base: usize) -> QueueAddrs {
        QueueAddrs {
            desc: region.iova_at(base),
            driver: region.iova_at(base + self.driver),
            device: region.iova_at(base + self.device),
        }
    }
}

/// A packed virtqueue in DMA memory; `T` is what each chain carries back.
pub struct PackedQueue<T> {
    state: PackedState<T>,
    ring: DmaArray<PvirtqDesc>,
    /// Written by the driver: no interrupts wanted.
    driver_evt: DmaArray<PvirtqEventSuppress>,
    /// Written by the device: whether it wants notifications.
    device_evt: DmaArray<PvirtqEventSuppress>,
    notifier: Notifier,
}

impl<T> PackedQueue<T> {
    /// Puts a queue of `layout` at `base` of `region` (zeroing it) and asks
    /// the device for no interrupts. Call before DRIVER_OK.
    pub fn new(
        region: &DmaRegion,
        base: usize,
        layout: PackedLayout,
        notifier: Notifier,
    ) -> Result<PackedQueue<T>> {
        let q = PackedQueue {
            state: PackedState::new(layout.size)?,
            ring: region.carve(base, layout.size as usize)?,
            driver_evt: region.carve(base + layout.driver, 1)?,
            device_evt: region.carve(base + layout.device, 1)?,
            notifier,
        };
        // All-zero flags are neither available nor, with a used wrap
        // counter of 1, used.
        q.ring.fill(PvirtqDesc::default());
        q.device_evt.fill(PvirtqEventSuppress::default());
        q.driver_evt.write(
            0,
            PvirtqEventSuppress {
                off_wrap: 0,
                flags: RING_EVENT_FLAGS_DISABLE,
            },
        );
        Ok(q)
    }

    /// Descriptors free for new chains.
    pub fn free_descs(&self) -> usize {
        self.state.free_descs()
    }

    /// Chains the device holds.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight()
    }

    /// Writes a chain of `segs` carrying `token`; the device may take it at
    /// once, and is told by [`PackedQueue::kick`]. Without room the token
    /// comes back.
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
        let p = self.state.reserve_n::<N>(segs.len(), token)?;
        let mut head_flags = 0;
        for (i, (s, &(slot, wrap))) in segs.iter().zip(&p.slots).enumerate() {
            let flags = if s.device_writes {
                VIRTQ_DESC_F_WRITE
            } else {
                0
            } | if i + 1 < segs.len() {
                VIRTQ_DESC_F_NEXT
            } else {
                0
            } | avail_flags(wrap);
            let d = PvirtqDesc {
                addr: s.addr.get(),
                len: s.len,
                id: p.id,
                // The head stays unavailable until its flags go in last.
                flags: if i == 0 { 0 } else { flags },
            };
            if i == 0 {
                head_flags = flags;
            }
            // A free slot: the device does not read it.
            self.ring.write(slot as usize, d);
        }
        // Release: the chain's descriptors before the head's flags. (On
        // x86 stores are not reordered; the fence keeps the compiler from
        // doing it.)
        fence(Ordering::Release);
        self.ring
            .write_field(p.slots[0].0 as usize, PVIRTQ_DESC_FLAGS, head_flags);
        Ok(())
    }

    /// Notifies the device of the chains added since last time, unless it
    /// asked not to be (RING_EVENT_FLAGS_DISABLE). Returns whether it did.
    #[inline]
    pub fn kick(&mut self) -> bool {
        if !self.state.take_unkicked() {
            return false;
        }
        // The head flags must be visible before the device's flags are read.
        fence(Ordering::SeqCst);
        if self.device_evt.read_field::<u16>(0, 2) == RING_EVENT_FLAGS_DISABLE {
            return false;
        }
        self.notifier.notify();
        true
    }

    /// The next used chain, if the device has returned one: its token and
    /// the bytes it wrote. A used descriptor naming no buffer in flight is
    /// an error, and stays where it is.
    #[inline]
    pub fn pop_used(&mut self) -> Result<Option<(T, u32)>> {
        let Some((slot, wrap)) = self.state.next_used() else {
            return Ok(None);
        };
        let flags: u16 = self.ring.read_field(slot as usize, PVIRTQ_DESC_FLAGS);
        if !is_used(flags, wrap) {
            return Ok(None);
        }
        // Acquire: id and len after the flags that publish them.
        fence(Ordering::Acquire);
        let id: u16 = self.ring.read_field(slot as usize, PVIRTQ_DESC_ID);
        let len: u32 = self.ring.read_field(slot as usize, PVIRTQ_DESC_LEN);
        Ok(Some((self.state.complete(id)?, len)))
    }

    /// Takes every token back; only after the device was reset.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.state.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_encode_the_wrap_counters() {
        assert_eq!(avail_flags(true), VIRTQ_DESC_F_AVAIL);
        assert_eq!(avail_flags(false), VIRTQ_DESC_F_USED);
        let both = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;
        assert!(is_used(both, true) && !is_used(both, false));
        assert!(is_used(0, false) && !is_used(0, true));
        // Available (AVAIL != USED) is never used, in either lap.
        for f in [VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED] {
            assert!(!is_used(f, true) && !is_used(f, false));
        }
    }

    #[test]
    fn chains_take_slots_in_ring_order_and_flip_the_wrap_counter() {
        let mut s = PackedState::new(3).unwrap();
        let a = s.reserve(2, 'a').unwrap();
        assert_eq!(&a.slots[..2], &[(0, true), (1, true)]);
        let b = s.reserve(1, 'b').unwrap();
        assert_eq!(b.slots[0], (2, true));
        assert_eq!(s.reserve(1, 'c'), Err('c'), "ring full");
        // Out of order: b's used descriptor lands in slot 0, a's in slot 1.
        assert_eq!(s.next_used(), Some((0, true)));
        assert_eq!(s.complete(b.id).unwrap(), 'b');
        assert_eq!(s.next_used(), Some((1, true)));
        assert_eq!(s.complete(a.id).unwrap(), 'a');
        // 1 + 2 slots: the used side wrapped to slot 0 of lap 2.
        assert_eq!((s.last_used, s.used_wrap, s.free_descs()), (0, false, 3));
        assert_eq!(s.next_used(), None, "nothing in flight: nothing looked at");
        // A chain across the end of the ring: its second slot is in lap 2.
        let c = s.reserve(1, 'c').unwrap();
        assert_eq!(c.slots[0], (0, false));
        let d = s.reserve(2, 'd').unwrap();
        assert_eq!(&d.slots[..2], &[(1, false), (2, false)]);
        assert!(s.take_unkicked() && !s.take_unkicked());
        let mut left: Vec<char> = s.drain().collect();
        left.sort();
        assert_eq!(left, ['c', 'd']);
    }

    #[test]
    fn bad_ids_finish_nothing() {
        let mut s = PackedState::new(4).unwrap();
        let a = s.reserve(1, 1).unwrap();
        for bad in [4, 99, u16::MAX, a.id.wrapping_add(1)] {
            assert!(
                matches!(s.complete(bad), Err(NicError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            (s.in_flight(), s.free_descs(), s.next_used()),
            (1, 3, Some((0, true)))
        );
        assert_eq!(s.complete(a.id).unwrap(), 1);
        assert!(s.complete(a.id).is_err(), "twice");
        assert!(PackedState::<()>::new(0).is_err());
        assert!(PackedState::<()>::new(VIRTQ_MAX_SIZE).is_ok());
    }
}

#[cfg(all(test, feature = "sim"))]
mod model_tests {
    use super::super::sim::packed_pair;
    use super::*;
    use fastlane_framework::Iova;

    fn seg(addr: u64, len: u32, device_writes: bool) -> Segment {
        Segment {
            addr: Iova(addr),
            len,
            device_writes,
        }
    }

    #[test]
    fn chains_travel_the_ring_over_many_laps_out_of_order() {
        let (mut q, mut dev) = packed_pair::<u32>(5);
        assert_eq!(
            dev.driver_flags(),
            RING_EVENT_FLAGS_DISABLE,
            "no interrupts wanted"
        );
        let mut next = 0u32;
        for _round in 0..2000 {
            // A two-descriptor chain, then one-descriptor chains until full:
            // with 5 slots the chains keep crossing the end of the ring.
            q.add(&[seg(0x1000, 12, false), seg(0x2000, 60, false)], next)
                .unwrap();
            let mut added = vec![(next, 2u16)];
            next += 1;
            while q.add(&[seg(0x3000 + next as u64, 64, true)], next).is_ok() {
                added.push((next, 1));
                next += 1;
            }
            assert_eq!(q.free_descs(), 0);
            assert!(q.kick() && dev.notified());
            let mut taken = Vec::new();
            while let Some((id, chain)) = dev.pop_avail() {
                taken.push((id, chain.len() as u16));
            }
            assert_eq!(taken.len(), added.len());
            assert_eq!(taken[0].1, 2);
            // The device returns them last first.
            for &(id, n) in taken.iter().rev() {
                dev.push_used(id, 7, n);
            }
            let mut got = Vec::new();
            while let Some((t, len)) = q.pop_used().unwrap() {
                assert_eq!(len, 7);
                got.push(t);
            }
            let mut want: Vec<u32> = added.iter().map(|a| a.0).collect();
            want.reverse();
            assert_eq!(got, want);
            assert_eq!((q.free_descs(), q.in_flight()), (5, 0));
        }
        assert!(next > 6000);
    }

    #[test]
    fn a_broken_device_finishes_nothing() {
        let (mut q, mut dev) = packed_pair::<u32>(4);
        q.add(&[seg(0x1000, 2048, true)], 1).unwrap();
        q.add(&[seg(0x2000, 2048, true)], 2).unwrap();
        q.kick();
        let (id1, _) = dev.pop_avail().unwrap();
        let (id2, _) = dev.pop_avail().unwrap();
        let both = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;
        // Wrong wrap counter (lap 2's used flags in lap 1), and flags that
        // say available rather than used: nothing is used yet.
        for flags in [0, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED] {
            dev.write_raw(PvirtqDesc {
                addr: 0,
                len: 60,
                id: id1,
                flags,
            });
            assert!(q.pop_used().unwrap().is_none(), "flags {flags:#x}");
        }
        // Used flags with ids out of range or not in flight: an error each
        // time, nothing finished.
        for id in [4, 3, u16::MAX] {
            dev.write_raw(PvirtqDesc {
                addr: 0,
                len: 60,
                id,
                flags: both,
            });
            assert!(
                matches!(q.pop_used(), Err(NicError::Malformed(_))),
                "id {id}"
            );
            assert_eq!(q.in_flight(), 2);
        }
        // A length past the buffer is passed on as it is: the receive queue
        // checks it against the buffer (rx.rs).
        dev.push_used(id2, u32::MAX, 1);
        assert_eq!(q.pop_used().unwrap(), Some((2, u32::MAX)));
        dev.push_used(id1, 60, 1);
        assert_eq!(q.pop_used().unwrap(), Some((1, 60)));
        // Nothing in flight: a used descriptor is not even looked at.
        dev.write_raw(PvirtqDesc {
            addr: 0,
            len: 60,
            id: id1,
            flags: 0,
        });
        assert_eq!(q.pop_used().unwrap(), None);
        assert_eq!(q.free_descs(), 4);
    }

    #[test]
    fn the_device_can_turn_notifications_off() {
        let (mut q, mut dev) = packed_pair::<()>(8);
        dev.set_device_flags(RING_EVENT_FLAGS_DISABLE);
        q.add(&[seg(0x1000, 1, false)], ()).unwrap();
        assert!(!q.kick() && !dev.notified());
        assert_eq!(dev.pop_avail().unwrap().1.len(), 1);
        dev.set_device_flags(super::super::spec::RING_EVENT_FLAGS_ENABLE);
        q.add(&[seg(0x1000, 1, false)], ()).unwrap();
        assert!(q.kick() && dev.notified());
        assert!(!q.kick(), "nothing new");
    }
}
