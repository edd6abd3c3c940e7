//! One receive queue (82576 datasheet 7.1): advanced one-buffer descriptors,
//! every slot holding a pool buffer. A burst takes the written-back slots
//! in order, swaps a fresh buffer into each, and moves the tail once.

use std::sync::atomic::{fence, Ordering};

use fastlane_framework::{DmaBuf, Mmio, PoolCache};

use super::desc::{RxDescRead, RxStatus};
use super::dma::DescRing;
use super::regs::{self, dctl, srrctl};
use super::ring::{Ring, RxIndex};
use super::wait_for;
use crate::{NicError, Packet, Result, MAX_FRAME};

/// Receive thresholds: prefetch when 8 are free, write back each one.
const RXDCTL: u32 = dctl::enabled(8, 8, 1);

/// Driver-side receive counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct RxCounters {
    /// Frames handed to the caller, and their bytes.
    pub packets: u64,
    /// Bytes of those frames (without CRC).
    pub bytes: u64,
    /// Frames dropped for device-reported errors, frames spanning several
    /// descriptors, or lengths over [`MAX_FRAME`].
    pub errors: u64,
    /// Bursts cut short because the pool had no buffer for a refill.
    pub no_buffer: u64,
}

pub struct RxQueue {
    queue: usize,
    regs: Mmio,
    ring: DescRing<RxDescRead>,
    index: RxIndex,
    /// The buffer behind each descriptor, indexed like the ring.
    bufs: Box<[DmaBuf]>,
    /// Inside a multi-descriptor frame that is being dropped.
    discarding: bool,
    pub counters: RxCounters,
}

impl RxQueue {
    /// A queue over `ring`, every descriptor given a buffer from `cache`.
    pub fn new(queue: usize, regs: Mmio, ring: DescRing<RxDescRead>, cache: &mut PoolCache) -> Result<RxQueue> {
        let shape = Ring::new(ring.len())?;
        if shape.size() != ring.len() {
            return Err(NicError::InvalidArgument(format!("{} receive descriptors", ring.len())));
        }
        let mut bufs = Vec::with_capacity(ring.len() as usize);
        for i in 0..ring.len() {
            let buf = cache.alloc().map_err(|_| {
                NicError::InvalidArgument(format!(
                    "the packet pool ran out after {i} buffers: a receive ring of {} needs that many plus what is in flight",
                    ring.len()
                ))
            })?;
            if buf.len() < MAX_FRAME {
                // Receive bursts wrap frames up to MAX_FRAME long without
                // looking at the buffer again.
                return Err(NicError::InvalidArgument(format!(
                    "{}-byte buffers: a receive ring needs at least {MAX_FRAME}",
                    buf.len()
                )));
            }
            ring.write(i, RxDescRead::new(buf.iova().get()));
            bufs.push(buf);
        }
        Ok(RxQueue {
            queue,
            regs,
            ring,
            index: RxIndex::new(shape),
            bufs: bufs.into_boxed_slice(),
            discarding: false,
            counters: RxCounters::default(),
        })
    }

    /// Programs the queue registers and enables it (the receiver itself is
    /// enabled by RCTL afterwards, then [`RxQueue::start`]).
    pub fn configure(&self, buf_size: usize) -> Result<()> {
        let (r, n) = (&self.regs, self.queue);
        r.write32(regs::rxdctl(n), 0);
        let iova = self.ring.iova().get();
        r.write32(regs::rdbal(n), iova as u32);
        r.write32(regs::rdbah(n), (iova >> 32) as u32);
        r.write32(regs::rdlen(n), self.ring.bytes());
        let kib = (buf_size as u32 / 1024).min(srrctl::BSIZEPKT_MASK);
        r.write32(regs::srrctl(n), kib | srrctl::DESCTYPE_ADV_ONEBUF | srrctl::DROP_EN);
        r.write32(regs::rdh(n), 0);
        r.write32(regs::rdt(n), 0);
        r.write32(regs::rxdctl(n), RXDCTL);
        wait_for("receive queue enable", || r.read32(regs::rxdctl(n)) & dctl::ENABLE != 0)
    }

    /// Hands the device every descriptor but one.
    pub fn start(&self) {
        fence(Ordering::Release);
        self.regs.write32(regs::rdt(self.queue), self.index.tail() as u32);
    }

    /// Receives up to `max` frames into `out`; returns how many.
    ///
    /// Per frame: one status load, one fresh buffer from `cache` written
    /// into the slot, the old one pushed as a [`Packet`]; per burst: one
    /// reservation in `out`, the counters and one RDT write. Frames the
    /// device marks bad (an error bit, no EOP, a length over [`MAX_FRAME`])
    /// leave through [`RxQueue::drop_piece`], off the common path.
    #[inline]
    pub fn burst(&mut self, cache: &mut PoolCache, out: &mut Vec<Packet>, max: usize) -> usize {
        // The device owns fewer descriptors than the ring has: no burst
        // delivers more, so this reservation is the burst's only one.
        out.reserve(max.min(self.bufs.len()));
        let mut index = self.index;
        let mut received = 0;
        let mut bytes = 0;
        // Every buffer comes from the port's one pool, in one region: one
        // IOVA offset (DmaBuf::iova is the pointer plus it) serves them all.
        let b = &self.bufs[0];
        let offset = b.iova().get().wrapping_sub(b.as_ptr() as u64);
        while received < max {
            let slot = index.next();
            let st = RxStatus::from_qword(self.ring.status_qword(slot));
            if !st.done_and_good() || self.discarding {
                if !st.done() {
                    break;
                }
                // The rest of the write-back is read only after DD was seen.
                fence(Ordering::Acquire);
                self.drop_piece(slot, st);
                index.advance();
                continue;
            }
            // The frame is read only after DD was seen.
            fence(Ordering::Acquire);
            let Ok(fresh) = cache.alloc() else {
                // Leave the frame in the ring rather than leave a hole.
                self.counters.no_buffer += 1;
                break;
            };
            self.ring.write(slot, RxDescRead::new((fresh.as_ptr() as u64).wrapping_add(offset)));
            let buf = std::mem::replace(&mut self.bufs[slot as usize], fresh);
            index.advance();
            // `done_and_good` bounds the length by MAX_FRAME, and `new`
            // checked that the pool's buffers hold that much.
            out.push(Packet::received(buf, st.length));
            received += 1;
            bytes += u64::from(st.length);
        }
        self.counters.packets += received as u64;
        self.counters.bytes += bytes;
        if index.next() != self.index.next() {
            self.index = index;
            fence(Ordering::Release);
            self.regs.write32(regs::rdt(self.queue), self.index.tail() as u32);
        }
        received
    }

    /// Drops a frame (or this piece of one) the device marked bad, or a
    /// piece of a frame being dropped, and gives the same buffer back to
    /// the device in `slot`.
    #[cold]
    #[inline(never)]
    fn drop_piece(&mut self, slot: u16, st: RxStatus) {
        self.discarding = !st.end_of_packet();
        self.counters.errors += u64::from(st.end_of_packet());
        let iova = self.bufs[slot as usize].iova().get();
        self.ring.write(slot, RxDescRead::new(iova));
    }

    /// Turns the queue off (before a reset).
    pub fn disable(&self) {
        self.regs.write32(regs::rxdctl(self.queue), 0);
    }

    /// Never returns the buffers or the ring: for a device that could not
    /// be stopped.
    pub fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.bufs));
        self.ring.leak();
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::igb::desc::{rx, RxDescWb};
    use crate::igb::dma::FakeDevice;
    use crate::PacketPool;
    use fastlane_framework::{DmaRegion, PageSize};

    /// Plays the device: writes `frame` into the next buffer the ring
    /// names and writes DD back; false when the device owns no descriptor.
    fn deliver(dev: &mut FakeDevice, frame: &[u8], status: u32) -> bool {
        let Some(d) = dev.next::<RxDescRead>() else {
            return false;
        };
        // Unmapped memory: the IOVA is the address.
        dev.dma.write(d.pkt_addr, frame).expect("a live pool buffer");
        dev.write_back(RxDescWb { status_error: status, length: frame.len() as u16, ..Default::default() });
        true
    }

    fn setup(size: u16, pool_bufs: u32) -> (RxQueue, FakeDevice, PacketPool, PoolCache) {
        let pool = PacketPool::new_unmapped(pool_bufs).unwrap();
        let mut cache = pool.cache(8);
        let region = DmaRegion::new_unmapped(4096 * 4, PageSize::Small).unwrap();
        let regs = Mmio::simulated(regs::REGS_LEN);
        let ring = DescRing::new(&region, 0, size).unwrap();
        let q = RxQueue::new(0, regs.clone(), ring, &mut cache).unwrap();
        q.configure(2048).unwrap();
        q.start();
        (q, FakeDevice::new(region.iova_at(0), regs, size, regs::rdt(0)), pool, cache)
    }

    fn frame(seq: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seq.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn frames_come_out_in_order_and_the_tail_follows() {
        let (mut q, mut dev, _pool, mut cache) = setup(16, 64);
        let srrctl = dev.regs.read32(regs::srrctl(0));
        assert_eq!(srrctl & srrctl::BSIZEPKT_MASK, 2, "2 KiB buffers");
        assert_ne!(srrctl & srrctl::DESCTYPE_ADV_ONEBUF, 0);
        assert_eq!(dev.regs.read32(regs::rdt(0)), 15);
        for s in 0..10u8 {
            assert!(deliver(&mut dev, &frame(s, 60 + s as usize), rx::DD | rx::EOP));
        }
        let mut out = Vec::new();
        assert_eq!(q.burst(&mut cache, &mut out, 4), 4);
        assert_eq!(dev.regs.read32(regs::rdt(0)), 3);
        for (slot, p) in out.iter().enumerate() {
            // Refilled with another buffer, handed back to the device.
            let d = q.ring.read(slot as u16);
            assert_eq!(d.hdr_addr, 0);
            assert_ne!(d.pkt_addr, p.iova().get());
            assert_eq!(d.pkt_addr, q.bufs[slot].iova().get());
        }
        assert_eq!(q.burst(&mut cache, &mut out, 32), 6);
        assert_eq!(q.burst(&mut cache, &mut out, 32), 0);
        for (s, p) in out.iter().enumerate() {
            assert_eq!(p.to_vec(), frame(s as u8, 60 + s));
        }
        assert_eq!(dev.regs.read32(regs::rdt(0)), 9);
        assert_eq!((q.counters.packets, q.counters.bytes), (10, (60..70).sum()));
        // The device can go round the ring several times.
        for round in 0..5u8 {
            for s in 0..15u8 {
                assert!(deliver(&mut dev, &frame(round ^ s, 100), rx::DD | rx::EOP));
            }
            assert!(!deliver(&mut dev, &frame(0, 60), rx::DD | rx::EOP), "ring full: 15 of 16");
            out.clear();
            assert_eq!(q.burst(&mut cache, &mut out, 64), 15);
            for (s, p) in out.iter().enumerate() {
                assert_eq!(p.to_vec(), frame(round ^ s as u8, 100));
            }
        }
    }

    #[test]
    fn errors_and_split_frames_are_dropped_and_their_buffers_reused() {
        let (mut q, mut dev, _pool, mut cache) = setup(16, 64);
        deliver(&mut dev, &frame(1, 64), rx::DD | rx::EOP | (1 << 24)); // CRC error
        deliver(&mut dev, &frame(2, 64), rx::DD); // first piece of a long frame
        deliver(&mut dev, &frame(3, 64), rx::DD | rx::EOP); // its last piece
        deliver(&mut dev, &frame(4, 64), rx::DD | rx::EOP);
        let mut out = Vec::new();
        assert_eq!(q.burst(&mut cache, &mut out, 32), 1);
        assert_eq!(out[0].to_vec(), frame(4, 64));
        assert_eq!(q.counters.errors, 2);
        assert_eq!(dev.regs.read32(regs::rdt(0)), 3);
    }

    #[test]
    fn an_empty_pool_stops_the_burst_without_leaving_a_hole() {
        // 16 buffers in the ring, 4 spare.
        let (mut q, mut dev, pool, mut cache) = setup(16, 20);
        for s in 0..8u8 {
            deliver(&mut dev, &frame(s, 60), rx::DD | rx::EOP);
        }
        let mut out = Vec::new();
        assert_eq!(q.burst(&mut cache, &mut out, 32), 4);
        assert_eq!(q.counters.no_buffer, 1);
        assert_eq!(dev.regs.read32(regs::rdt(0)), 3);
        // Give buffers back: the rest follow, in order.
        for p in out.drain(..) {
            cache.free(p.into_buf()).unwrap();
        }
        assert_eq!(q.burst(&mut cache, &mut out, 32), 4);
        for (s, p) in out.iter().enumerate() {
            assert_eq!(p.to_vec(), frame(s as u8 + 4, 60));
        }
        drop(out);
        drop(q);
        drop(cache);
        assert_eq!(pool.pool().available(), 20);
    }

    #[test]
    fn a_pool_smaller_than_the_ring_is_refused() {
        let pool = PacketPool::new_unmapped(8).unwrap();
        let mut cache = pool.cache(8);
        let region = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        let ring = DescRing::new(&region, 0, 16).unwrap();
        let e = RxQueue::new(0, Mmio::simulated(regs::REGS_LEN), ring, &mut cache).err().unwrap();
        assert!(e.to_string().contains("ran out after 8"), "{e}");
    }

    #[test]
    fn buffers_shorter_than_a_frame_are_refused() {
        // Bursts wrap frames of up to MAX_FRAME bytes without looking at
        // the buffer again: the ring's pool must hold that much.
        let pool = fastlane_framework::BufferPool::new_unmapped(1024, 32, PageSize::Small).unwrap();
        let mut cache = pool.cache(32);
        let region = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        let ring = DescRing::new(&region, 0, 16).unwrap();
        let e = RxQueue::new(0, Mmio::simulated(regs::REGS_LEN), ring, &mut cache).err().unwrap();
        assert!(e.to_string().contains("1024-byte buffers"), "{e}");
    }
}
