//! One transmit queue (82576 datasheet 7.2): one advanced data descriptor
//! per frame, each asking for a DD write-back. Finished descriptors are
//! reclaimed in batches (the DD bit of a batch's last descriptor covers the
//! whole batch) before new frames are queued, and the tail is written once
//! per burst.

use std::sync::atomic::{fence, Ordering};

use fastlane_framework::{DmaBuf, DmaDomain, Mmio, PoolCache};

use super::desc::{tx_done, TxDescRead};
use super::dma::DescRing;
use super::regs::{self, dctl};
use super::ring::{Ring, TxIndex};
use super::{check_frame, wait_for, MIN_TX_FRAME};
use crate::{NicError, Packet, Result, MAX_FRAME};

/// Transmit thresholds: prefetch at 8, host 1, write back each descriptor
/// (WTHRESH 1, what the 82576 wants with DD polling).
const TXDCTL: u32 = dctl::enabled(8, 1, 1);
/// Descriptors reclaimed per DD check.
pub const RECLAIM_BATCH: u16 = 32;

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
    queue: usize,
    regs: Mmio,
    ring: DescRing<TxDescRead>,
    index: TxIndex,
    /// The buffer behind each in-flight descriptor.
    bufs: Box<[Option<DmaBuf>]>,
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

    /// Returns the buffers of finished descriptors to the pool, a batch at a
    /// time; returns how many.
    #[inline]
    pub fn reclaim(&mut self, cache: &mut PoolCache) -> usize {
        let mut total = 0;
        while let Some((last, count)) = self.index.reclaim_probe(RECLAIM_BATCH) {
            if !tx_done(self.ring.status_qword(last)) {
                break;
            }
            // The batch may wrap: two contiguous parts of the ring.
            let (first, count) = (self.index.clean() as usize, count as usize);
            let run = count.min(self.bufs.len() - first);
            free_slots(cache, &mut self.bufs[first..first + run]);
            if run < count {
                free_slots(cache, &mut self.bufs[..count - run]);
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
    /// descriptors are written with one bounds check (into slots software
    /// owns until the tail moves) and their buffers moved into the slots.
    #[inline]
    pub fn burst(&mut self, cache: &mut PoolCache, pkts: &mut Vec<Packet>) -> usize {
        self.reclaim(cache);
        let room = (self.index.free() as usize).min(pkts.len());
        let domain = self.domain;
        let n = pkts[..room]
            .iter()
            .take_while(|p| p.buf().domain() == domain && (MIN_TX_FRAME..=MAX_FRAME).contains(&p.len()))
            .count();
        if n == 0 {
            return 0;
        }
        let first = self.index.tail() as usize;
        let run = n.min(self.bufs.len() - first);
        let (a, b) = pkts[..n].split_at(run);
        let mut bytes = 0;
        let mut desc = |p: &Packet| {
            bytes += p.len() as u64;
            TxDescRead::frame(p.iova().get(), p.len() as u16)
        };
        // Both parts lie inside the ring (first < size, run <= size - first,
        // n - run < size): neither write is refused, and if one were, the
        // tail would not move.
        let written = self.ring.write_run(first, run, |k| desc(&a[k]))
            && (b.is_empty() || self.ring.write_run(0, b.len(), |k| desc(&b[k])));
        if !written || self.index.reserve(n as u16).is_none() {
            return 0;
        }
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
        let buf = pkt.into_buf();
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
mod tests {
    use super::*;
    use crate::igb::desc::{tx, TxDescWb};
    use crate::igb::dma::FakeDevice;
    use crate::{alloc_packet, PacketPool};
    use fastlane_framework::{DmaRegion, PageSize};

    /// Plays the device: "sends" up to `limit` descriptors, recording the
    /// frames, and writes DD back.
    fn run(dev: &mut FakeDevice, sent: &mut Vec<Vec<u8>>, limit: usize) {
        for _ in 0..limit {
            let Some(d) = dev.next::<TxDescRead>() else {
                return;
            };
            assert_ne!(d.cmd_type_len() & tx::DCMD_RS, 0);
            let len = (d.cmd_type_len() & 0xffff) as usize;
            let mut data = vec![0u8; len];
            dev.dma.read(d.buffer_addr, &mut data).expect("a live buffer");
            sent.push(data);
            dev.write_back(TxDescWb { status: tx::STA_DD, ..Default::default() });
        }
    }

    fn setup(size: u16, pool_bufs: u32) -> (TxQueue, FakeDevice, PacketPool, PoolCache) {
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
}
