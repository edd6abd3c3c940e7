//! The device side of a split virtqueue (feature `sim`), for tests: takes
//! available chains, reads and writes their buffers, returns them through
//! the used ring, as a device would. Every access goes through the
//! framework's [`SimDma`], so the model reaches live unmapped regions
//! (IOVA == address) and nothing else; an address outside them panics with
//! the fault, failing the test that caused it.

use fastlane_framework::sim::SimDma;
use fastlane_framework::{DmaRegion, Iova, Mmio};

use super::packed::{PackedLayout, PackedQueue};
use super::pci::Notifier;
use super::spec::{
    avail, used, PvirtqDesc, PvirtqEventSuppress, VirtioNetHdr, VirtqDesc, VirtqUsedElem,
    NET_HDR_NUM_BUFFERS, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
};
use super::virtqueue::{QueueLayout, Virtqueue};

/// The device's view of one queue.
pub struct SimQueue {
    /// Bus address of the queue (its descriptor table).
    base: u64,
    layout: QueueLayout,
    last_avail: u16,
    used_idx: u16,
    dma: SimDma,
    /// Counts notifications: the notifier writes the queue index here.
    pub doorbell: Mmio,
}

/// Whether a notifier wrote its queue index (0x77 here) into `doorbell`
/// since the last call; clears it.
fn rang(doorbell: &Mmio) -> bool {
    let hit = doorbell.read16(0) == 0x77;
    doorbell.write16(0, 0);
    hit
}

/// A driver queue and its simulated device side, in a region of their own.
pub fn queue_pair<T>(size: u16) -> (Virtqueue<T>, SimQueue) {
    let layout = QueueLayout::new(size);
    let region =
        DmaRegion::new_unmapped(layout.total, fastlane_framework::PageSize::Small).unwrap();
    let doorbell = Mmio::simulated(8);
    let vq = Virtqueue::new(&region, 0, layout, Notifier::new(doorbell.clone(), 0, 0x77)).unwrap();
    (vq, SimQueue::new(region.iova_at(0), layout, doorbell))
}

impl SimQueue {
    /// The device side of a queue of `layout` at bus address `base`.
    pub fn new(base: Iova, layout: QueueLayout, doorbell: Mmio) -> SimQueue {
        SimQueue {
            base: base.get(),
            layout,
            last_avail: 0,
            used_idx: 0,
            dma: SimDma::new(),
            doorbell,
        }
    }

    fn at(&self, off: usize) -> u64 {
        assert!(off < self.layout.total);
        self.base + off as u64
    }

    /// Whether the driver notified since the last call (and clears it).
    pub fn notified(&self) -> bool {
        rang(&self.doorbell)
    }

    /// The avail flags word.
    pub fn avail_flags(&mut self) -> u16 {
        let a = self.at(self.layout.avail + avail::FLAGS);
        self.dma.read_obj(a).unwrap()
    }

    /// Sets or clears VIRTQ_USED_F_NO_NOTIFY.
    pub fn set_no_notify(&mut self, on: bool) {
        let v: u16 = if on { VIRTQ_USED_F_NO_NOTIFY } else { 0 };
        let a = self.at(self.layout.used + used::FLAGS);
        self.dma.write_obj(a, v).unwrap()
    }

    /// Chains the driver published and the device has not taken.
    pub fn avail_pending(&mut self) -> u16 {
        let a = self.at(self.layout.avail + avail::IDX);
        self.dma
            .load_u16_acquire(a)
            .unwrap()
            .wrapping_sub(self.last_avail)
    }

    /// Takes the next available chain: its head and descriptors.
    pub fn pop_avail(&mut self) -> Option<(u16, Vec<VirtqDesc>)> {
        if self.avail_pending() == 0 {
            return None;
        }
        let slot = (self.last_avail % self.layout.size) as usize;
        let head: u16 = self
            .dma
            .read_obj(self.at(self.layout.avail + avail::RING + 2 * slot))
            .unwrap();
        self.last_avail = self.last_avail.wrapping_add(1);
        let mut chain = Vec::new();
        let mut d = head;
        loop {
            assert!(d < self.layout.size, "descriptor {d} out of range");
            let desc: VirtqDesc = self.dma.read_obj(self.at(16 * d as usize)).unwrap();
            chain.push(desc);
            if desc.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            assert!(chain.len() <= self.layout.size as usize, "descriptor loop");
            d = desc.next;
        }
        Some((head, chain))
    }

    /// Returns chain `id` with `len` bytes written.
    pub fn push_used(&mut self, id: u32, len: u32) {
        let slot = (self.used_idx % self.layout.size) as usize;
        let e = self.at(self.layout.used + used::RING + 8 * slot);
        self.dma.write_obj(e, VirtqUsedElem { id, len }).unwrap();
        self.used_idx = self.used_idx.wrapping_add(1);
        let idx = self.at(self.layout.used + used::IDX);
        self.dma.store_u16_release(idx, self.used_idx).unwrap();
    }

    /// Bytes of a buffer the device reads.
    pub fn read_buf(&mut self, d: &VirtqDesc) -> Vec<u8> {
        let mut v = vec![0u8; d.len as usize];
        self.dma
            .read(d.addr, &mut v)
            .unwrap_or_else(|e| panic!("{e}"));
        v
    }

    /// What the device sends for a transmit chain: every descriptor's
    /// bytes in chain order (net header first), checked device-readable.
    pub fn read_chain(&mut self, chain: &[VirtqDesc]) -> Vec<u8> {
        chain_bytes(
            &mut self.dma,
            chain.iter().map(|d| (d.addr, d.len, d.flags)),
        )
    }

    /// Receives `frame` behind `hdr` as a device with mergeable receive
    /// buffers does (virtio spec §5.1.6.4): fills posted buffers in turn,
    /// the header (with `num_buffers` set to the count, unless
    /// `hdr.num_buffers` is non-zero: then as given, for hostile tests)
    /// in the first, and returns them used in one batch, one entry each
    /// with the bytes written in it. Returns the buffers taken; the first
    /// `publish` entries only are made visible (None: all), for a chain
    /// the ring cuts.
    pub fn receive_mergeable(
        &mut self,
        hdr: VirtioNetHdr,
        frame: &[u8],
        publish: Option<usize>,
    ) -> usize {
        let mut dma = SimDma::new();
        let used = fill_mergeable(&mut dma, hdr, frame, || {
            let (head, chain) = self.pop_avail()?;
            Some((head, chain[0].addr, chain[0].len))
        });
        let taken = used.len();
        for &(head, len) in used.iter().take(publish.unwrap_or(taken)) {
            self.push_used(head as u32, len);
        }
        taken
    }

    /// Writes `data` into a device-writable buffer.
    pub fn write_buf(&mut self, d: &VirtqDesc, data: &[u8]) {
        assert!(
            data.len() <= d.len as usize,
            "{} bytes into a {}-byte buffer",
            data.len(),
            d.len
        );
        self.dma
            .write(d.addr, data)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Writes `hdr` and `frame` into the buffers `next` hands out (id,
/// address, length), in turn, as a device with mergeable receive buffers
/// does; sets `num_buffers` unless `hdr` has one. Returns (id, bytes
/// written) per buffer.
fn fill_mergeable(
    dma: &mut SimDma,
    hdr: VirtioNetHdr,
    frame: &[u8],
    mut next: impl FnMut() -> Option<(u16, u64, u32)>,
) -> Vec<(u16, u32)> {
    let mut bytes = bytemuck::bytes_of(&hdr).to_vec();
    bytes.extend_from_slice(frame);
    let (mut used, mut first) = (Vec::new(), None);
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (id, addr, len) = next().expect("not enough buffers posted");
        let n = rest.len().min(len as usize);
        dma.write(addr, &rest[..n])
            .unwrap_or_else(|e| panic!("{e}"));
        first.get_or_insert(addr);
        used.push((id, n as u32));
        rest = &rest[n..];
    }
    if let (0, Some(addr)) = (hdr.num_buffers, first) {
        let count = (used.len() as u16).to_le_bytes();
        dma.write(addr + NET_HDR_NUM_BUFFERS as u64, &count)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    used
}

/// The bytes of the buffers (address, length, flags) of a transmit chain,
/// in order; each must be device-readable.
fn chain_bytes(dma: &mut SimDma, descs: impl Iterator<Item = (u64, u32, u16)>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (addr, len, flags) in descs {
        assert_eq!(
            flags & VIRTQ_DESC_F_WRITE,
            0,
            "a transmit buffer the device may write"
        );
        let at = bytes.len();
        bytes.resize(at + len as usize, 0);
        dma.read(addr, &mut bytes[at..])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    bytes
}

/// An IPv4/UDP frame (10.0.0.1:7 to 10.0.0.2:9) carrying `payload` bytes
/// of [`pattern`], both checksums right, for tests.
pub fn udp_frame(payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    crate::proto::build_udp(
        &mut f,
        [2; 6],
        [4; 6],
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        7,
        9,
        &pattern(payload, 5),
    )
    .unwrap();
    f
}

/// Frame bytes of `len` that differ from one seed to another, for tests.
pub fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + seed) as u8).collect()
}

/// The device's view of one packed queue (§2.8): takes available chains in
/// ring order and writes used descriptors in ring order, each side with its
/// own wrap counter.
pub struct SimPacked {
    base: u64,
    layout: PackedLayout,
    /// Next slot to look at for an available descriptor, and its lap.
    next_avail: u16,
    avail_wrap: bool,
    /// Next slot to write a used descriptor in, and its lap.
    next_used: u16,
    used_wrap: bool,
    dma: SimDma,
    /// Counts notifications: the notifier writes the queue index here.
    pub doorbell: Mmio,
}

/// A driver packed queue and its simulated device side, in a region of
/// their own.
pub fn packed_pair<T>(size: u16) -> (PackedQueue<T>, SimPacked) {
    let layout = PackedLayout::new(size);
    let region =
        DmaRegion::new_unmapped(layout.total, fastlane_framework::PageSize::Small).unwrap();
    let doorbell = Mmio::simulated(8);
    let q = PackedQueue::new(&region, 0, layout, Notifier::new(doorbell.clone(), 0, 0x77)).unwrap();
    let dev = SimPacked {
        base: region.iova_at(0).get(),
        layout,
        next_avail: 0,
        avail_wrap: true,
        next_used: 0,
        used_wrap: true,
        dma: SimDma::new(),
        doorbell,
    };
    (q, dev)
}

impl SimPacked {
    fn slot(&self, i: u16) -> u64 {
        assert!(i < self.layout.size);
        self.base + 16 * i as u64
    }

    /// Whether the driver notified since the last call (and clears it).
    pub fn notified(&self) -> bool {
        rang(&self.doorbell)
    }

    /// The driver's event suppression flags.
    pub fn driver_flags(&mut self) -> u16 {
        let e: PvirtqEventSuppress = self
            .dma
            .read_obj(self.base + self.layout.driver as u64)
            .unwrap();
        e.flags
    }

    /// Sets the device's event suppression flags.
    pub fn set_device_flags(&mut self, flags: u16) {
        let at = self.base + self.layout.device as u64;
        self.dma
            .write_obj(at, PvirtqEventSuppress { off_wrap: 0, flags })
            .unwrap();
    }

    /// Takes the next available chain: its buffer id (of the last
    /// descriptor) and descriptors.
    pub fn pop_avail(&mut self) -> Option<(u16, Vec<PvirtqDesc>)> {
        let mut chain = Vec::new();
        let (mut slot, mut wrap) = (self.next_avail, self.avail_wrap);
        loop {
            let d: PvirtqDesc = self.dma.read_obj(self.slot(slot)).unwrap();
            let avail = d.flags & VIRTQ_DESC_F_AVAIL != 0;
            let used = d.flags & VIRTQ_DESC_F_USED != 0;
            if avail != wrap || used == wrap {
                assert!(
                    chain.is_empty(),
                    "a chain ends in a descriptor that is not available"
                );
                return None;
            }
            chain.push(d);
            slot += 1;
            if slot == self.layout.size {
                slot = 0;
                wrap = !wrap;
            }
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            assert!(chain.len() <= self.layout.size as usize, "descriptor loop");
        }
        (self.next_avail, self.avail_wrap) = (slot, wrap);
        Some((chain.last()?.id, chain))
    }

    /// Writes `d` as it is at the next used slot, without advancing: for
    /// tests of what a broken device may write.
    pub fn write_raw(&mut self, d: PvirtqDesc) {
        let at = self.slot(self.next_used);
        self.dma.write_obj(at, d).unwrap();
    }

    /// Returns buffer `id`, a chain of `descs` descriptors, with `len` bytes
    /// written: one used descriptor, then past the chain's slots.
    pub fn push_used(&mut self, id: u16, len: u32, descs: u16) {
        let flags = if self.used_wrap {
            VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
        } else {
            0
        };
        self.write_raw(PvirtqDesc {
            addr: 0,
            len,
            id,
            flags,
        });
        let next = self.next_used as u32 + descs as u32;
        if next >= self.layout.size as u32 {
            self.used_wrap = !self.used_wrap;
        }
        self.next_used = (next % self.layout.size as u32) as u16;
    }

    /// [`SimQueue::receive_mergeable`] on a packed ring: each buffer a
    /// chain of one descriptor, returned used in ring order.
    pub fn receive_mergeable(&mut self, hdr: VirtioNetHdr, frame: &[u8]) -> usize {
        let mut dma = SimDma::new();
        let used = fill_mergeable(&mut dma, hdr, frame, || {
            let (id, chain) = self.pop_avail()?;
            Some((id, chain[0].addr, chain[0].len))
        });
        for &(id, len) in &used {
            self.push_used(id, len, 1);
        }
        used.len()
    }

    /// [`SimQueue::read_chain`] on a packed ring.
    pub fn read_chain(&mut self, chain: &[PvirtqDesc]) -> Vec<u8> {
        chain_bytes(
            &mut self.dma,
            chain.iter().map(|d| (d.addr, d.len, d.flags)),
        )
    }

    /// Bytes of a buffer the device reads.
    pub fn read_buf(&mut self, d: &PvirtqDesc) -> Vec<u8> {
        let mut v = vec![0u8; d.len as usize];
        self.dma
            .read(d.addr, &mut v)
            .unwrap_or_else(|e| panic!("{e}"));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::VIRTQ_AVAIL_F_NO_INTERRUPT;
    use super::super::virtqueue::Segment;
    use super::*;

    #[test]
    fn chains_travel_through_the_rings_and_back() {
        let (mut vq, mut dev) = queue_pair::<u32>(4);
        assert_eq!(dev.avail_flags(), VIRTQ_AVAIL_F_NO_INTERRUPT);
        let seg = |a: u64, len, w| Segment {
            addr: Iova(a),
            len,
            device_writes: w,
        };
        vq.add(&[seg(0x1000, 12, false), seg(0x2000, 60, false)], 7)
            .unwrap();
        vq.add(&[seg(0x3000, 2048, true)], 8).unwrap();
        // Nothing visible before the kick.
        assert_eq!(dev.avail_pending(), 0);
        assert!(vq.kick());
        assert!(dev.notified());
        assert!(!vq.kick(), "a kick with nothing new does not notify");

        let (h1, c1) = dev.pop_avail().unwrap();
        assert_eq!(c1.len(), 2);
        assert_eq!(
            (c1[0].addr, c1[0].len, c1[0].flags),
            (0x1000, 12, VIRTQ_DESC_F_NEXT)
        );
        assert_eq!((c1[1].addr, c1[1].len, c1[1].flags), (0x2000, 60, 0));
        let (h2, c2) = dev.pop_avail().unwrap();
        assert_eq!(
            (c2[0].addr, c2[0].len, c2[0].flags),
            (0x3000, 2048, VIRTQ_DESC_F_WRITE)
        );
        assert!(dev.pop_avail().is_none());

        dev.push_used(h2 as u32, 100);
        assert_eq!(vq.used_pending().unwrap(), 1);
        assert_eq!(vq.pop_used().unwrap(), (8, 100));
        dev.push_used(h1 as u32, 0);
        assert_eq!(vq.pop_used().unwrap(), (7, 0));
        assert_eq!((vq.free_descs(), vq.in_flight()), (4, 0));
    }

    #[test]
    fn no_notify_from_the_device_suppresses_the_doorbell() {
        let (mut vq, mut dev) = queue_pair::<()>(8);
        dev.set_no_notify(true);
        vq.add(
            &[Segment {
                addr: Iova(0x1000),
                len: 1,
                device_writes: false,
            }],
            (),
        )
        .unwrap();
        assert!(!vq.kick());
        assert!(!dev.notified());
        assert_eq!(dev.pop_avail().unwrap().1.len(), 1);
        dev.set_no_notify(false);
        vq.add(
            &[Segment {
                addr: Iova(0x1000),
                len: 1,
                device_writes: false,
            }],
            (),
        )
        .unwrap();
        assert!(vq.kick());
        assert!(dev.notified());
    }

    #[test]
    fn a_full_ring_refuses_and_recovers_across_many_wraps() {
        let (mut vq, mut dev) = queue_pair::<usize>(8);
        let seg = Segment {
            addr: Iova(0x1000),
            len: 64,
            device_writes: true,
        };
        let mut next_token = 0usize;
        let mut expect = std::collections::VecDeque::new();
        for _round in 0..20_000 {
            while vq.add(&[seg], next_token).is_ok() {
                expect.push_back(next_token);
                next_token += 1;
            }
            assert_eq!(vq.free_descs(), 0);
            vq.kick();
            // The device returns all but one, in order.
            for _ in 0..7 {
                let (h, _) = dev.pop_avail().unwrap();
                dev.push_used(h as u32, 64);
            }
            assert_eq!(vq.used_pending().unwrap(), 7);
            for _ in 0..7 {
                assert_eq!(vq.pop_used().unwrap().0, expect.pop_front().unwrap());
            }
        }
        assert!(next_token > 65536 * 2, "indices wrapped several times");
    }
}
