//! One transmit queue (82576 datasheet 7.2): one advanced data descriptor
//! per frame. Only a burst's last descriptor, and the last slot of each
//! block of [`RS_BLOCK`] ring slots, ask for a DD write-back (RS):
//! descriptors complete in order, so one DD covers the frames before it,
//! and the device makes one status write per burst of 32 instead of one per
//! frame. Finished descriptors are reclaimed before new frames are queued,
//! up to a block's end or, in a block not yet filled, up to the newest
//! descriptor (both report), and the tail is written once per burst.

use std::sync::atomic::{fence, Ordering};

use fastlane_framework::{DmaBuf, DmaDomain, Mmio, PoolCache};

use super::desc::{tx_done, TxDescRead};
use super::dma::DescRing;
use super::regs::{self, dctl};
use super::ring::{Ring, TxIndex};
use super::{check_frame, wait_for, MIN_TX_FRAME};
use crate::{NicError, Packet, Result, MAX_FRAME};

/// Transmit thresholds: prefetch at 8, host 1, write back each descriptor
/// that asks (RS) at once (WTHRESH 1, what the 82576 wants with DD polling).
const TXDCTL: u32 = dctl::enabled(8, 1, 1);
/// Ring slots per reclaim block (or the whole ring, if smaller): the last
/// slot of each block reports (RS), so reclaim never waits for a whole long
/// burst, and frees at most a block per DD check.
pub const RS_BLOCK: u16 = 32;

/// Driver-side transmit counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxCounters {
    /// Frames queued to the device, and their bytes.
    pub packets: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Frames the device reported sent (reclaimed).
    pub done: u64,
}

pub struct TxQueue {
    pub(super) queue: usize,
    pub(super) regs: Mmio,
    pub(super) ring: DescRing<TxDescRead>,
    pub(super) index: TxIndex,
    /// The buffer behind each in-flight descriptor.
    pub(super) bufs: Box<[Option<DmaBuf>]>,
    /// `min(RS_BLOCK, ring size) - 1`: a slot `s` with `s & block_mask ==
    /// block_mask` ends a block.
    block_mask: u16,
    /// The IOMMU domain the device reaches: packets mapped elsewhere are
    /// refused.
    domain: DmaDomain,
    pub counters: TxCounters,
}

impl TxQueue {
    /// A queue over `ring` whose device reaches memory of `domain`.
    pub fn new(queue: usize, regs: Mmio, ring: DescRing<TxDescRead>, domain: DmaDomain) -> Result<TxQueue> {
        let shape = Ring::new(ring.len())?;
        if shape.size() != ring.len() {
            return Err(NicError::InvalidArgument(format!("{} transmit descriptors", ring.len())));
        }
        Ok(TxQueue {
            queue,
            regs,
            bufs: (0..ring.len()).map(|_| None).collect(),
            block_mask: RS_BLOCK.min(shape.size()) - 1,
            ring,
            index: TxIndex::new(shape),
            domain,
            counters: TxCounters::default(),
        })
    }

    /// The domain the device reaches.
    pub fn domain(&self) -> DmaDomain {
        self.domain
    }

    /// What `burst` requires of a packet: a sendable frame in a buffer
    /// mapped in the device's domain.
    #[inline(always)]
    pub fn check(&self, pkt: &Packet) -> Result<()> {
        crate::check_domain(pkt, self.domain)?;
        check_frame(pkt)
    }

    /// Programs the queue registers and enables it (TCTL.EN comes after).
    pub fn configure(&self) -> Result<()> {
        let (r, n) = (&self.regs, self.queue);
        r.write32(regs::txdctl(n), 0);
        let iova = self.ring.iova().get();
        r.write32(regs::tdbal(n), iova as u32);
        r.write32(regs::tdbah(n), (iova >> 32) as u32);
        r.write32(regs::tdlen(n), self.ring.bytes());
        r.write32(regs::tdh(n), 0);
        r.write32(regs::tdt(n), 0);
        r.write32(regs::txdctl(n), TXDCTL);
        wait_for("transmit queue enable", || r.read32(regs::txdctl(n)) & dctl::ENABLE != 0)
    }

    /// Frames queued and not yet reclaimed.
    pub fn in_flight(&self) -> usize {
        self.index.in_flight() as usize
    }

    /// Returns the buffers of finished descriptors to the pool, a block (or
    /// what is in flight of the last block) at a time; returns how many.
    #[inline]
    pub fn reclaim(&mut self, cache: &mut PoolCache) -> usize {
        self.reclaim_with(cache, free_slots)
    }

    /// [`TxQueue::reclaim`] returning buffers through `free`. The plain
    /// burst's `free_slots` has that one caller: a second one (the offload
    /// burst) costs the plain path instructions per packet.
    #[inline(always)]
    pub(super) fn reclaim_with(&mut self, cache: &mut PoolCache, free: fn(&mut PoolCache, &mut [Option<DmaBuf>])) -> usize {
        let mut total = 0;
        // Up to the end of the oldest descriptor's block, or the newest
        // descriptor if that comes first: both report (a plain burst's
        // last and block ends have RS, an offload burst's data
        // descriptors all have it).
        let mask = self.block_mask;
        while let Some((mut last, mut count)) = self.index.reclaim_probe(mask - (self.index.clean() & mask) + 1) {
            if self.bufs[last as usize].is_none() {
                // A context descriptor (no buffer, no status written
                // back): its frame's data descriptor, queued with it,
                // reports for both.
                if count == self.index.in_flight() {
                    break;
                }
                last = self.index.ring().add(last, 1);
                count += 1;
            }
            if !tx_done(self.ring.status_qword(last)) {
                break;
            }
            // The batch may wrap: two contiguous parts of the ring.
            let (first, count) = (self.index.clean() as usize, count as usize);
            let run = count.min(self.bufs.len() - first);
            free(cache, &mut self.bufs[first..first + run]);
            if run < count {
                free(cache, &mut self.bufs[..count - run]);
            }
            self.index.complete(count as u16);
            total += count;
        }
        self.counters.done += total as u64;
        total
    }

    /// Reclaims, then queues frames from the front of `pkts` while there is
    /// room and they pass [`TxQueue::check`] (a foreign buffer or a bad
    /// frame stops the burst and stays first); writes the tail once.
    /// Returns how many it took.
    ///
    /// One pass checks the packets (domain and length) and counts those
    /// that go; then, a contiguous part of the ring at a time, their
    /// descriptors are written without RS with one bounds check (into
    /// slots software owns until the tail moves), the few that report
    /// (block ends and the last, see [`RS_BLOCK`]) rewritten with RS, and
    /// their buffers moved into the slots.
    #[inline]
    pub fn burst(&mut self, cache: &mut PoolCache, pkts: &mut Vec<Packet>) -> usize {
        self.reclaim(cache);
        let room = (self.index.free() as usize).min(pkts.len());
        let domain = self.domain;
        // Buffers of the port's own pool are recognised by one pointer
        // compare, and their IOVA is the pointer plus the cache's offset;
        // other pools' (mapped in the same container) take the long way.
        let mut others = false;
        let n = pkts[..room]
            .iter()
            .take_while(|p| {
                // Multi-buffer frames fail the length test too.
                let len_ok = (MIN_TX_FRAME as u32..=MAX_FRAME as u32).contains(&p.len_or_multi());
                if cache.owns(p.buf()) {
                    return len_ok;
                }
                others = true;
                p.buf().domain() == domain && len_ok
            })
            .count();
        if n == 0 {
            return 0;
        }
        let first = self.index.tail() as usize;
        let run = n.min(self.bufs.len() - first);
        let (a, b) = pkts[..n].split_at(run);
        let mut bytes = 0;
        let offset = cache.iova_offset();
        let mut desc = |p: &Packet| {
            bytes += p.len() as u64;
            let iova = if others {
                p.iova().get()
            } else {
                (p.buf().as_ptr() as u64).wrapping_add(offset) + p.offset() as u64
            };
            TxDescRead::frame_unreported(iova, p.len() as u16)
        };
        // Both parts lie inside the ring (first < size, run <= size - first,
        // n - run < size): neither write is refused, and if one were, the
        // tail would not move.
        let written = self.ring.write_mapped(first, a, &mut desc) && (b.is_empty() || self.ring.write_mapped(0, b, &mut desc));
        if !written || self.index.reserve(n as u16).is_none() {
            return 0;
        }
        self.report(first, &pkts[..n]);
        let mut taken = pkts.drain(..n);
        fill_slots(&mut self.bufs[first..first + run], &mut taken);
        if run < n {
            fill_slots(&mut self.bufs[..n - run], &mut taken);
        }
        drop(taken);
        self.counters.packets += n as u64;
        self.counters.bytes += bytes;
        // Descriptors must be in memory before the device sees the tail.
        fence(Ordering::Release);
        self.regs.write32(regs::tdt(self.queue), self.index.tail() as u32);
        n
    }

    /// Gives RS to the descriptors of the burst `pkts`, queued from slot
    /// `first`, that end a block, and to its last. Per burst, not per
    /// frame: those few are written again whole rather than a test added
    /// to every frame's.
    #[inline(always)]
    fn report(&mut self, first: usize, pkts: &[Packet]) {
        let Some(last) = pkts.len().checked_sub(1) else {
            return;
        };
        let mask = usize::from(self.block_mask);
        // The burst's first block end, then one a block apart.
        let mut k = mask - (first & mask);
        while k < last {
            self.report_one(first, k, &pkts[k]);
            k += mask + 1;
        }
        self.report_one(first, last, &pkts[last]);
    }

    /// Rewrites the descriptor of `p`, the `k`th of a burst queued from
    /// slot `first`, with RS.
    #[inline(always)]
    fn report_one(&self, first: usize, k: usize, p: &Packet) {
        // k < burst length <= ring size: the offset fits a slot index.
        let slot = self.index.ring().add(first as u16, k as u16);
        self.ring.write(slot, TxDescRead::frame_unreported(p.iova().get(), p.len() as u16).reported());
    }

    /// Descriptor `slot` as the driver wrote it (for tests).
    #[cfg(test)]
    pub fn ring_read(&self, slot: u16) -> TxDescRead {
        self.ring.read(slot)
    }

    /// Turns the queue off (before a reset).
    pub fn disable(&self) {
        self.regs.write32(regs::txdctl(self.queue), 0);
    }

    /// Never returns the buffers or the ring: for a device that could not
    /// be stopped.
    pub fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.bufs));
        self.ring.leak();
    }
}

/// Gives the buffers of finished slots back to the cache (a buffer of
/// another pool goes home to its own pool). Not inlined: alone, the loop
/// keeps its state in registers.
#[inline(never)]
fn free_slots(cache: &mut PoolCache, slots: &mut [Option<DmaBuf>]) {
    cache.free_slots(slots);
}

/// Moves the buffers of the packets `pkts` yields into `slots`, as many as
/// both have. Not inlined, as `free_slots`.
#[inline(never)]
fn fill_slots(slots: &mut [Option<DmaBuf>], pkts: &mut std::vec::Drain<'_, Packet>) {
    for (slot, pkt) in slots.iter_mut().zip(pkts) {
        // `burst` took one-buffer frames only.
        let buf = pkt.into_single_buf();
        // Reclaimed slots are empty: storing into one drops nothing (and
        // keeps the drop call, with its spills, out of the loop).
        if slot.is_none() {
            *slot = Some(buf);
        } else {
            replace_slot(slot, buf);
        }
    }
}

/// Stores `buf` into a slot that still holds a buffer (which goes back to
/// its pool); never happens, slots are emptied when reclaimed.
#[cold]
#[inline(never)]
fn replace_slot(slot: &mut Option<DmaBuf>, buf: DmaBuf) {
    *slot = Some(buf);
}

#[cfg(all(test, feature = "sim"))]
pub(super) mod tests {
    use super::*;
    use crate::igb::desc::{tx, TxContextDesc, TxDescWb};
    use crate::offload::{TxOffload, L4};
    use crate::igb::dma::FakeDevice;
    use crate::{alloc_packet, PacketPool};
    use fastlane_framework::{DmaRegion, PageSize};

    /// Plays the device: "sends" up to `limit` descriptors, recording the
    /// frames, and writes DD back only where RS asks for it (as the 82576
    /// and QEMU's igb do); returns each sent descriptor's RS.
    fn run(dev: &mut FakeDevice, sent: &mut Vec<Vec<u8>>, limit: usize) -> Vec<bool> {
        let mut rs = Vec::new();
        for _ in 0..limit {
            let Some(d) = dev.next::<TxDescRead>() else {
                break;
            };
            let len = (d.cmd_type_len() & 0xffff) as usize;
            let mut data = vec![0u8; len];
            dev.dma.read(d.buffer_addr, &mut data).expect("a live buffer");
            sent.push(data);
            if d.is_reported() {
                dev.write_back(TxDescWb { status: tx::STA_DD, ..Default::default() });
            } else {
                dev.write_back(d); // consumed, nothing written
            }
            rs.push(d.is_reported());
        }
        rs
    }

    pub(in crate::igb) fn setup(size: u16, pool_bufs: u32) -> (TxQueue, FakeDevice, PacketPool, PoolCache) {
        let pool = PacketPool::new_unmapped(pool_bufs).unwrap();
        let cache = pool.cache(16);
        let region = DmaRegion::new_unmapped(4096 * 4, PageSize::Small).unwrap();
        let regs = Mmio::simulated(regs::REGS_LEN);
        let ring = DescRing::new(&region, 0, size).unwrap();
        let q = TxQueue::new(0, regs.clone(), ring, DmaDomain::UNMAPPED).unwrap();
        q.configure().unwrap();
        let dev = FakeDevice::new(region.iova_at(0), regs, size, regs::tdt(0));
        (q, dev, pool, cache)
    }

    fn packets(pool: &PacketPool, range: std::ops::Range<u32>) -> Vec<Packet> {
        range
            .map(|i| {
                let mut p = alloc_packet(pool.pool(), 0).unwrap();
                let mut f = vec![0u8; 60 + (i as usize % 100)];
                f[..4].copy_from_slice(&i.to_le_bytes());
                p.write(&f).unwrap();
                p
            })
            .collect()
    }

    fn seq(frame: &[u8]) -> u32 {
        u32::from_le_bytes(frame[..4].try_into().unwrap())
    }

    #[test]
    fn a_burst_larger_than_the_ring_goes_out_in_parts_without_loss() {
        let mut sent = Vec::new();
        let (mut q, mut dev, pool, mut cache) = setup(16, 256);
        let mut pkts = packets(&pool, 0..100);
        let mut rounds = 0;
        while !pkts.is_empty() {
            let before = pkts.len();
            let n = q.burst(&mut cache, &mut pkts);
            assert_eq!(before - pkts.len(), n);
            assert!(n <= 15);
            run(&mut dev, &mut sent, 7); // a slow device: the ring fills up
            rounds += 1;
            assert!(rounds < 1000);
        }
        run(&mut dev, &mut sent, usize::MAX);
        q.burst(&mut cache, &mut pkts); // reclaims
        assert_eq!(q.in_flight(), 0);
        let seqs: Vec<u32> = sent.iter().map(|f| seq(f)).collect();
        assert_eq!(seqs, (0..100).collect::<Vec<_>>());
        assert_eq!((q.counters.packets, q.counters.done), (100, 100));
        drop(cache);
        assert_eq!(pool.pool().available(), 256, "every buffer went home");
    }

    #[test]
    fn the_tail_is_written_once_per_burst_and_stops_at_a_bad_frame() {
        let (mut q, dev, pool, mut cache) = setup(16, 64);
        let mut pkts = packets(&pool, 0..5);
        let mut short = alloc_packet(pool.pool(), 0).unwrap();
        short.set_len(10).unwrap();
        pkts.insert(2, short);
        assert_eq!(q.burst(&mut cache, &mut pkts), 2);
        assert_eq!(dev.regs.read32(regs::tdt(0)), 2);
        assert_eq!(pkts.len(), 4);
        assert_eq!(pkts[0].len(), 10, "the bad frame stays at the front");
        assert_eq!(q.burst(&mut cache, &mut pkts), 0);
        pkts.remove(0);
        assert_eq!(q.burst(&mut cache, &mut pkts), 3);
        assert_eq!(dev.regs.read32(regs::tdt(0)), 5);
    }

    #[test]
    fn a_burst_across_the_wrap_stops_at_a_bad_frame() {
        let mut sent = Vec::new();
        let (mut q, mut dev, pool, mut cache) = setup(16, 64);
        let mut pkts = packets(&pool, 0..12);
        assert_eq!(q.burst(&mut cache, &mut pkts), 12);
        run(&mut dev, &mut sent, usize::MAX);
        // Tail at 12: four slots before the wrap, then 0, 1, ...
        let mut pkts = packets(&pool, 100..108);
        let mut long = alloc_packet(pool.pool(), 0).unwrap();
        long.set_len(MAX_FRAME).unwrap();
        pkts.insert(5, long);
        let mut short = alloc_packet(pool.pool(), 0).unwrap();
        short.set_len(MIN_TX_FRAME - 1).unwrap();
        pkts.insert(6, short);
        let iovas: Vec<u64> = pkts.iter().map(|p| p.iova().get()).collect();
        assert_eq!(q.burst(&mut cache, &mut pkts), 6, "stops at the short frame");
        assert_eq!(dev.regs.read32(regs::tdt(0)), 2);
        assert_eq!(pkts.len(), 4);
        assert_eq!(pkts[0].len(), MIN_TX_FRAME - 1, "the bad frame stays first");
        for (k, slot) in [12u16, 13, 14, 15, 0, 1].into_iter().enumerate() {
            let d = q.ring.read(slot);
            assert_eq!(d.buffer_addr, iovas[k], "slot {slot}");
            let len = if k == 5 { MAX_FRAME } else { 60 + (100 + k) % 100 };
            assert_eq!(d.cmd_type_len() & 0xffff, len as u32, "slot {slot}");
        }
        run(&mut dev, &mut sent, usize::MAX);
        assert_eq!(sent.len(), 18);
        let seqs: Vec<u32> = sent[12..17].iter().map(|f| seq(f)).collect();
        assert_eq!(seqs, [100, 101, 102, 103, 104]);
        pkts.remove(0);
        assert_eq!(q.burst(&mut cache, &mut pkts), 3);
        run(&mut dev, &mut sent, usize::MAX);
        q.reclaim(&mut cache);
        assert_eq!(q.in_flight(), 0);
        drop(cache);
        assert_eq!(pool.pool().available(), 64, "every buffer went home");
    }

    #[test]
    fn reclaim_waits_for_the_whole_batch() {
        let mut sent = Vec::new();
        let (mut q, mut dev, pool, mut cache) = setup(64, 128);
        let mut pkts = packets(&pool, 0..40);
        assert_eq!(q.burst(&mut cache, &mut pkts), 40);
        run(&mut dev, &mut sent, 20);
        assert_eq!(q.reclaim(&mut cache), 0, "first batch of 32 not done");
        run(&mut dev, &mut sent, 12);
        assert_eq!(q.reclaim(&mut cache), 32);
        run(&mut dev, &mut sent, usize::MAX);
        assert_eq!(q.reclaim(&mut cache), 8);
        assert_eq!(q.in_flight(), 0);
    }

    /// Which descriptors ask for a status write-back: a burst's last and
    /// the last slot of each 32-slot block, across the ring's wrap;
    /// nothing else.
    #[test]
    fn only_a_bursts_last_and_block_ends_report() {
        let mut sent = Vec::new();
        let (mut q, mut dev, pool, mut cache) = setup(128, 256);
        let mut pkts = packets(&pool, 0..5);
        assert_eq!(q.burst(&mut cache, &mut pkts), 5);
        let rs = run(&mut dev, &mut sent, usize::MAX);
        assert_eq!(rs, [false, false, false, false, true]);
        // 70 frames in slots 5..75: block ends 31 and 63, the last 74.
        let mut pkts = packets(&pool, 0..70);
        assert_eq!(q.burst(&mut cache, &mut pkts), 70);
        let rs = run(&mut dev, &mut sent, usize::MAX);
        let at: Vec<usize> = rs.iter().enumerate().filter(|(_, r)| **r).map(|(k, _)| 5 + k).collect();
        assert_eq!(at, [31, 63, 74]);
        assert_eq!(q.reclaim(&mut cache), 70, "the first five went with the second burst");
        // 60 frames across the wrap, slots 75..128 and 0..7.
        let mut pkts = packets(&pool, 0..60);
        assert_eq!(q.burst(&mut cache, &mut pkts), 60);
        let reported: Vec<u16> = (0..128u16).filter(|&s| q.ring_read(s).is_reported()).collect();
        assert_eq!(reported, [6, 95, 127]);
        // Reclaim a block at a time: the block 64..96 is done at 95.
        run(&mut dev, &mut sent, 21);
        assert_eq!(q.reclaim(&mut cache), 21);
        run(&mut dev, &mut sent, 31);
        assert_eq!(q.reclaim(&mut cache), 0, "127 is not done yet");
        let rs = run(&mut dev, &mut sent, usize::MAX);
        assert_eq!(rs.iter().filter(|r| **r).count(), 2, "127 and 6");
        assert_eq!(q.reclaim(&mut cache), 39);
        assert_eq!(q.in_flight(), 0);
        drop(cache);
        assert_eq!(pool.pool().available(), 256, "every buffer went home");
    }

    /// Nothing is reclaimed before the reported descriptor shows DD, not
    /// even when a device writes DD over a descriptor that did not ask.
    #[test]
    fn reclaim_waits_for_the_reported_descriptor() {
        let mut sent = Vec::new();
        let (mut q, mut dev, pool, mut cache) = setup(64, 128);
        let mut pkts = packets(&pool, 0..10);
        assert_eq!(q.burst(&mut cache, &mut pkts), 10);
        run(&mut dev, &mut sent, 9);
        assert_eq!(q.reclaim(&mut cache), 0, "nine sent, the tenth reports");
        // A stray DD on an unreported slot frees nothing.
        dev.dma.write_obj(q.ring.iova().get() + 3 * 16, TxDescWb { status: tx::STA_DD, ..Default::default() }).unwrap();
        assert_eq!(q.reclaim(&mut cache), 0);
        assert_eq!(q.in_flight(), 10);
        run(&mut dev, &mut sent, 1);
        assert_eq!(q.reclaim(&mut cache), 10);
        assert_eq!(sent.len(), 10);
        drop(cache);
        assert_eq!(pool.pool().available(), 128);
    }

    /// Plain bursts (one report each) and offload bursts (every frame
    /// reports) interleaved: everything is reclaimed, in order, each
    /// buffer once.
    #[test]
    fn plain_and_offload_bursts_interleaved_are_reclaimed_in_order() {
        let (mut q, mut dev, pool, mut cache) = setup(64, 128);
        let off = TxOffload { ip_checksum: true, ..TxOffload::default() };
        let mut p1 = packets(&pool, 0..3);
        assert_eq!(q.burst(&mut cache, &mut p1), 3);
        let mut o = vec![udp_packet(&pool, 1, 60), udp_packet(&pool, 2, 60)];
        assert_eq!(q.burst_offload(&mut cache, &mut o, &off), 2);
        let mut p2 = packets(&pool, 3..6);
        assert_eq!(q.burst(&mut cache, &mut p2), 3);
        assert_eq!(q.in_flight(), 10);
        let mut sent = Vec::new();
        assert_eq!(run(&mut dev, &mut sent, 3), [false, false, true]);
        assert_eq!(run_offload(&mut dev, 2).len(), 2);
        assert_eq!(q.reclaim(&mut cache), 0, "the newest descriptor, 9, is not done");
        assert_eq!(run(&mut dev, &mut sent, usize::MAX), [false, false, true]);
        assert_eq!(q.reclaim(&mut cache), 10);
        assert_eq!(q.in_flight(), 0);
        // Offload frames alone: reclaimed through their own reports.
        let mut o = vec![udp_packet(&pool, 3, 60)];
        assert_eq!(q.burst_offload(&mut cache, &mut o, &off), 1);
        run_offload(&mut dev, 1);
        assert_eq!(q.reclaim(&mut cache), 2);
        drop(cache);
        assert_eq!(pool.pool().available(), 128, "every buffer went home once");
    }

    /// An IPv4/UDP frame of `len` bytes (checksums zero) with seq `i`.
    fn udp_packet(pool: &PacketPool, i: u8, len: usize) -> Packet {
        let mut f = vec![0u8; len];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, i]);
        f[30..34].copy_from_slice(&[10, 0, 0, 99]);
        f[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
        f[42] = i;
        let mut p = alloc_packet(pool.pool(), 0).unwrap();
        p.write(&f).unwrap();
        p
    }

    /// Plays the device for offload bursts: a context descriptor is taken
    /// without a write-back, a data descriptor gets DD; returns
    /// (context, data) pairs.
    fn run_offload(dev: &mut FakeDevice, limit: usize) -> Vec<(TxContextDesc, TxDescRead)> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(c) = dev.next::<TxContextDesc>() else { break };
            assert_eq!(c.type_tucmd_mlhl & (0xf << 20), tx::DTYP_CTXT, "a context first");
            dev.write_back(c); // consumed, nothing written back
            let d = dev.next::<TxDescRead>().expect("its data descriptor, queued with it");
            assert_eq!(d.cmd_type_len() & (0xf << 20), tx::DTYP_DATA);
            dev.write_back(TxDescWb { status: tx::STA_DD, ..Default::default() });
            out.push((c, d));
        }
        out
    }

    #[test]
    fn offload_bursts_put_a_context_before_each_frame_and_reclaim_past_it() {
        let (mut q, mut dev, pool, mut cache) = setup(16, 64);
        let off = TxOffload { ip_checksum: true, l4_checksum: Some(L4::Udp), vlan: Some(0x0064) };
        // 15 free slots: 7 frames of two descriptors each.
        let mut pkts: Vec<Packet> = (0..10).map(|i| udp_packet(&pool, i, 60 + i as usize)).collect();
        let iovas: Vec<u64> = pkts.iter().map(|p| p.iova().get()).collect();
        assert_eq!(q.burst_offload(&mut cache, &mut pkts, &off), 7);
        assert_eq!((pkts.len(), q.in_flight()), (3, 14));
        assert_eq!(dev.regs.read32(regs::tdt(0)), 14);
        let sent = run_offload(&mut dev, 5);
        for (k, (c, d)) in sent.iter().enumerate() {
            assert_eq!(c.vlan_macip_lens, 20 | 14 << tx::MACLEN_SHIFT | 0x64 << tx::VLAN_SHIFT);
            assert_eq!(c.type_tucmd_mlhl, tx::DTYP_CTXT | tx::DCMD_DEXT | tx::TUCMD_IPV4, "IPv4, UDP");
            assert_eq!(d.buffer_addr, iovas[k]);
            assert_eq!(d.cmd_type_len() & 0xffff, 60 + k as u32);
            assert_ne!(d.cmd_type_len() & tx::DCMD_VLE, 0);
            assert_eq!(d.olinfo_status() & (tx::POPTS_IXSM | tx::POPTS_TXSM), tx::POPTS_IXSM | tx::POPTS_TXSM);
        }
        assert_eq!(q.reclaim(&mut cache), 0, "the batch's last frame is not done yet");
        run_offload(&mut dev, usize::MAX);
        assert_eq!(q.burst_offload(&mut cache, &mut pkts, &off), 3);
        run_offload(&mut dev, usize::MAX);
        q.reclaim(&mut cache);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.counters.packets, 10);
        drop(cache);
        assert_eq!(pool.pool().available(), 64, "every buffer went home");
    }

    /// A reclaim batch that ends on a context slot (no write-back ever
    /// comes there) takes its frame's data descriptor too.
    #[test]
    fn a_batch_ending_on_a_context_slot_is_reclaimed_with_its_frame() {
        let (mut q, mut dev, pool, mut cache) = setup(64, 128);
        let mut plain = packets(&pool, 0..1);
        assert_eq!(q.burst(&mut cache, &mut plain), 1);
        let off = TxOffload { ip_checksum: true, ..TxOffload::default() };
        let mut pkts: Vec<Packet> = (0..20).map(|i| udp_packet(&pool, i, 60)).collect();
        assert_eq!(q.burst_offload(&mut cache, &mut pkts, &off), 20);
        assert_eq!(q.in_flight(), 41);
        // Slot 0: the plain frame; then (context, data) pairs: slot 31,
        // the first batch's last, is a context.
        let d = dev.next::<TxDescRead>().unwrap();
        assert_eq!(d.cmd_type_len() & (0xf << 20), tx::DTYP_DATA);
        dev.write_back(TxDescWb { status: tx::STA_DD, ..Default::default() });
        assert_eq!(run_offload(&mut dev, usize::MAX).len(), 20);
        assert_eq!(q.reclaim(&mut cache), 41);
        assert_eq!(q.in_flight(), 0);
        drop(cache);
        assert_eq!(pool.pool().available(), 128);
    }

    #[test]
    fn a_frame_the_offload_does_not_fit_stops_the_burst_unchanged() {
        let (mut q, _dev, pool, mut cache) = setup(16, 64);
        let off = TxOffload { l4_checksum: Some(L4::Tcp), ..TxOffload::default() };
        let mut tcp = udp_packet(&pool, 1, 80);
        tcp.data_mut()[23] = 6;
        let udp = udp_packet(&pool, 2, 80);
        let before = udp.to_vec();
        let mut pkts = vec![tcp, udp];
        assert_eq!(q.burst_offload(&mut cache, &mut pkts, &off), 1);
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].to_vec(), before, "refused, not touched");
        let d = q.ring.read(0);
        assert_eq!(bytemuck::cast::<_, TxContextDesc>(d).type_tucmd_mlhl, tx::DTYP_CTXT | tx::DCMD_DEXT | tx::TUCMD_IPV4 | tx::TUCMD_L4T_TCP);
    }

    #[test]
    fn buffers_of_another_pool_go_back_to_that_pool() {
        let mut sent = Vec::new();
        let (mut q, mut dev, pool, mut cache) = setup(16, 32);
        let other = PacketPool::new_unmapped(8).unwrap();
        let mut pkts = packets(&other, 0..8);
        assert_eq!(q.burst(&mut cache, &mut pkts), 8);
        assert_eq!(other.pool().available(), 0);
        run(&mut dev, &mut sent, usize::MAX);
        q.reclaim(&mut cache);
        assert_eq!(other.pool().available(), 8);
        assert_eq!(pool.pool().available(), 32);
    }

    /// Own-pool packets take the short IOVA path, other pools' the long
    /// one: in one burst, at several frame offsets, the device reads each
    /// frame's own bytes. A multi-buffer frame is not for this path: it
    /// stops the burst and stays first.
    #[test]
    fn own_and_other_pool_frames_in_one_burst_are_read_from_the_right_bytes() {
        let mut sent = Vec::new();
        let (mut q, mut dev, pool, mut cache) = setup(32, 32);
        let other = PacketPool::new_unmapped(8).unwrap();
        let mut pkts: Vec<Packet> = (0..12u32)
            .map(|i| {
                let from = if i % 3 == 1 { other.pool() } else { pool.pool() };
                let mut p = Packet::with_offset(from.alloc().unwrap(), (i as usize * 37) % 300, 0).unwrap();
                let mut f = vec![i as u8; 60 + i as usize];
                f[..4].copy_from_slice(&i.to_le_bytes());
                p.write(&f).unwrap();
                p
            })
            .collect();
        assert_eq!(q.burst(&mut cache, &mut pkts), 12);
        run(&mut dev, &mut sent, usize::MAX);
        for (i, f) in sent.iter().enumerate() {
            assert_eq!((seq(f), f.len(), f[5]), (i as u32, 60 + i, i as u8));
        }
        let mut big = Packet::with_offset(pool.pool().alloc().unwrap(), 0, 100).unwrap();
        let seg = Packet::piece(pool.pool().alloc().unwrap(), 100).unwrap();
        big.push_segment(seg).map_err(|(_, e)| e).unwrap();
        let mut pkts = vec![big];
        pkts.extend(packets(&pool, 0..2));
        assert_eq!(q.burst(&mut cache, &mut pkts), 0, "a 200-byte frame over two buffers");
        assert_eq!((pkts.len(), pkts[0].segment_count()), (3, 2));
    }
}
