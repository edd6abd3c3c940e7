//! One receive queue (82576 datasheet 7.1): advanced one-buffer descriptors,
//! every slot holding a pool buffer. A burst takes the written-back slots
//! in order, swaps a fresh buffer into each, and moves the tail once. The
//! device may fill a whole 2 KiB buffer, so frames start at its first byte
//! (no headroom: strip a header with `trim_front` to make room for one).
//!
//! A port opened with a jumbo MTU lets the device spread a long frame over
//! several descriptors (RCTL.LPE); those pieces leave the common path and
//! are assembled into one multi-buffer [`Packet`] ([`RxQueue::piece`]),
//! across bursts if the device is still writing the frame.

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
/// Refilled slots handed back to the device per RDT write, at most (a
/// quarter of the ring when that is less). A tail write is an MMIO exit
/// under a hypervisor and a posted PCIe write on hardware; the device
/// keeps at least three quarters of the ring meanwhile. DPDK's igb PMD
/// holds back as many (it writes once more than its `rx_free_thresh`, 32,
/// are held: every second burst of 32).
const RDT_BATCH: u16 = 64;
/// Bytes the device may write per buffer (SRRCTL.BSIZEPKT, in KiB): a
/// buffer must hold that much.
pub const RX_BUF_BYTES: usize = 2048;
// A buffer that holds what the device may write holds any frame delivered.
const _: () = assert!(RX_BUF_BYTES >= MAX_FRAME);

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

/// What became of a descriptor off the common receive path.
enum Piece {
    /// Part of a frame still being assembled.
    Kept,
    /// The last piece: a frame of this many bytes went to the caller.
    Frame(usize),
    /// Dropped (counted when its frame ends); the buffer stays in the slot.
    Dropped,
    /// No buffer to put in the slot: left for the next burst.
    NoBuffer,
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
    /// The pieces so far of a multi-descriptor frame (jumbo ports).
    pending: Option<Packet>,
    /// Longest frame delivered; above [`MAX_FRAME`] the device may spread
    /// frames over several descriptors and they are assembled.
    max_frame: usize,
    /// Keep each frame's checksum verdicts and VLAN tag ([`RxQueue::report`]).
    report: bool,
    /// Slots consumed and refilled since the last RDT write.
    held: u16,
    /// Write RDT once `held` reaches this ([`RDT_BATCH`] or a quarter of the ring).
    release_at: u16,
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
            if buf.len() < RX_BUF_BYTES {
                // The device writes up to RX_BUF_BYTES past the headroom,
                // and bursts wrap frames up to MAX_FRAME long without
                // looking at the buffer again.
                return Err(NicError::InvalidArgument(format!(
                    "{}-byte buffers: a receive ring needs at least {}",
                    buf.len(),
                    RX_BUF_BYTES
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
            pending: None,
            max_frame: MAX_FRAME,
            report: false,
            held: 0,
            release_at: RDT_BATCH.min(shape.size() / 4),
            counters: RxCounters::default(),
        })
    }

    /// Programs the queue registers and enables it (the receiver itself is
    /// enabled by RCTL afterwards, then [`RxQueue::start`]).
    pub fn configure(&self) -> Result<()> {
        let buf_size = RX_BUF_BYTES;
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
    /// Per burst: one refill of `cache` (for the whole burst), one
    /// reservation in `out`, the pool's IOVA offset, the counters, and an
    /// RDT write once [`RDT_BATCH`] refilled slots are held. Per part of
    /// the ring between wrap points: one bounds check for the status reads
    /// and one for the descriptor writes. Per
    /// frame: one status load and test, one buffer from the stash swapped
    /// into the slot, the old one pushed as a [`Packet`], one descriptor
    /// store. Frames the device marks bad (an error bit, no EOP, a length
    /// over [`MAX_FRAME`]) leave through [`RxQueue::drop_piece`], off the
    /// common path. At most `size - 1` slots are looked at per burst,
    /// whatever the device writes.
    #[inline]
    pub fn burst(&mut self, cache: &mut PoolCache, out: &mut Vec<Packet>, max: usize) -> usize {
        if self.report {
            return self.burst_reporting(cache, out, max);
        }
        self.burst_with::<false>(cache, out, max)
    }

    /// [`RxQueue::burst`] keeping each frame's checksum verdicts and
    /// stripped VLAN tag in its [`Packet`] (a few instructions per frame,
    /// so only when the port was asked to).
    #[inline(never)]
    fn burst_reporting(&mut self, cache: &mut PoolCache, out: &mut Vec<Packet>, max: usize) -> usize {
        self.burst_with::<true>(cache, out, max)
    }

    /// The receive loop; `REPORT`: keep the write-back's status.
    #[inline(always)]
    fn burst_with<const REPORT: bool>(&mut self, cache: &mut PoolCache, out: &mut Vec<Packet>, max: usize) -> usize {
        let size = self.bufs.len();
        // The device owns fewer descriptors than the ring has: no burst
        // delivers more.
        let want = max.min(size - 1);
        let have = cache.ensure(want);
        let mut left = want.min(have);
        out.reserve(left);
        // Every buffer comes from the port's one pool, in one region: one
        // IOVA offset (DmaBuf::iova is the pointer plus it) serves them
        // all; the device writes the frame after the headroom.
        let offset = cache.iova_offset();
        let mut pos = self.index.next() as usize;
        let mut slots = size - 1;
        let mut received = 0;
        let mut bytes = 0;
        while left > 0 && slots > 0 {
            let mut stop = None;
            if !self.discarding && self.pending.is_none() {
                let run = left.min(slots).min(size - pos);
                let bufs = &mut self.bufs[pos..pos + run];
                let took = self.ring.status_run(pos, run, |k, q| {
                    let st = RxStatus::from_qword(q);
                    if !st.done_and_good() {
                        stop = Some(st);
                        return false;
                    }
                    // `ensure` put `left` buffers in the stash.
                    let Some(fresh) = cache.take() else {
                        return false;
                    };
                    let buf = std::mem::replace(&mut bufs[k], fresh);
                    // `done_and_good` bounds the length by MAX_FRAME, and
                    // `new` checked that the pool's buffers hold that much
                    // after the headroom.
                    let (flags, tci) = if REPORT { RxStatus::packet_status(q) } else { (0, 0) };
                    out.push(Packet::received(buf, st.length, flags, tci));
                    bytes += u64::from(st.length);
                    true
                });
                // The frames are read only after their DD was seen.
                fence(Ordering::Acquire);
                // The slots get their fresh buffers (the run was checked
                // by `status_run`, so this writes them all).
                let bufs = &self.bufs[pos..pos + took];
                self.ring.write_run(pos, took, |k| RxDescRead::new((bufs[k].as_ptr() as u64).wrapping_add(offset)));
                received += took;
                left -= took;
                slots -= took;
                pos += took;
                if pos == size {
                    pos = 0;
                }
                if took == run {
                    continue;
                }
                if stop.is_none() {
                    // The stash ran dry after all (`ensure` said otherwise).
                    break;
                }
            }
            // A bad descriptor, a piece of a multi-descriptor frame (kept
            // on a jumbo port, dropped otherwise), or not done.
            let st = match stop {
                Some(st) => st,
                None => RxStatus::from_qword(self.ring.status_qword(pos as u16)),
            };
            if !st.done() {
                break;
            }
            fence(Ordering::Acquire);
            match self.piece::<REPORT>(pos as u16, cache, out) {
                Piece::NoBuffer => break,
                Piece::Frame(n) => {
                    received += 1;
                    left -= 1;
                    bytes += n as u64;
                }
                Piece::Kept | Piece::Dropped => {}
            }
            slots -= 1;
            pos += 1;
            if pos == size {
                pos = 0;
            }
        }
        if left == 0 && have < want && slots > 0 {
            // Short of buffers: a frame left in the ring rather than a hole.
            self.no_buffer(pos);
        }
        self.counters.packets += received as u64;
        self.counters.bytes += bytes;
        // `slots` started at size - 1 and lost one per slot consumed.
        let consumed = (size - 1 - slots) as u16;
        if consumed > 0 {
            self.index.set_next(pos as u16);
            self.held += consumed;
            if self.held >= self.release_at {
                self.held = 0;
                fence(Ordering::Release);
                self.regs.write32(regs::rdt(self.queue), self.index.tail() as u32);
            }
        }
        received
    }

    /// Counts a burst cut short by the pool when a frame was waiting.
    #[cold]
    #[inline(never)]
    fn no_buffer(&mut self, pos: usize) {
        if RxStatus::from_qword(self.ring.status_qword(pos as u16)).done() {
            self.counters.no_buffer += 1;
        }
    }

    /// A written-back descriptor off the common path: on a jumbo port a
    /// piece of a multi-descriptor frame is kept (its slot gets a fresh
    /// buffer) and the frame delivered at its last piece; anything else,
    /// or a frame that breaks a limit (a piece longer than its buffer, an
    /// empty piece, the whole longer than the port's maximum), is dropped
    /// and counted once, every buffer kept.
    #[cold]
    #[inline(never)]
    fn piece<const REPORT: bool>(&mut self, slot: u16, cache: &mut PoolCache, out: &mut Vec<Packet>) -> Piece {
        // Done (the caller saw DD and fenced): the device no longer writes it.
        let q = self.ring.status_qword(slot);
        let st = RxStatus::from_qword(q);
        let len = usize::from(st.length);
        let sane = len > 0 && len <= RX_BUF_BYTES && !st.frame_error();
        if self.max_frame <= MAX_FRAME || self.discarding || !sane {
            // A frame being assembled goes with it (counted once, by
            // drop_piece at its last piece).
            self.pending = None;
            self.drop_piece(slot, st);
            return Piece::Dropped;
        }
        let Ok(fresh) = cache.alloc() else {
            self.counters.no_buffer += 1;
            return Piece::NoBuffer;
        };
        let buf = std::mem::replace(&mut self.bufs[slot as usize], fresh);
        self.ring.write(slot, RxDescRead::new(self.bufs[slot as usize].iova().get()));
        let Ok(piece) = Packet::piece(buf, len) else {
            // `sane` bounded the length by the buffer.
            return Piece::Dropped;
        };
        let too_long = match self.pending.as_mut() {
            None => {
                self.pending = Some(piece);
                false
            }
            Some(frame) => frame.push_segment(piece).is_err(),
        };
        if too_long || self.pending.as_ref().is_some_and(|f| f.len() > self.max_frame) {
            // The rest of the frame is dropped as it comes.
            self.pending = None;
            self.discarding = !st.end_of_packet();
            self.counters.errors += u64::from(st.end_of_packet());
            return Piece::Dropped;
        }
        if !st.end_of_packet() {
            return Piece::Kept;
        }
        let Some(mut frame) = self.pending.take() else {
            return Piece::Dropped;
        };
        if REPORT {
            let (flags, tci) = RxStatus::packet_status(q);
            frame.set_rx_status_and_tag(flags, tci);
        }
        let n = frame.len();
        out.push(frame);
        Piece::Frame(n)
    }

    /// Frames longer than [`MAX_FRAME`] (up to `max_frame`) arrive over
    /// several descriptors and are assembled; the port sets RCTL.LPE and
    /// RLPML to match.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.max(MAX_FRAME);
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

    /// Whether bursts keep each frame's receive status in its packet.
    pub fn report(&mut self, on: bool) {
        self.report = on;
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
        q.configure().unwrap();
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
            assert_eq!(p.offset(), 0);
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

    /// Checksum verdicts and stripped tags reach the packets when the
    /// queue reports them, and nothing does when it does not.
    #[test]
    fn receive_status_is_reported_only_when_asked() {
        use crate::{rx_status, RxChecksum};
        let (mut q, mut dev, _pool, mut cache) = setup(16, 64);
        let good = rx::DD | rx::EOP;
        let plan = [
            (good | rx::IPCS | rx::L4I | rx::UDPCS, 0),
            (good | rx::IPCS | rx::IPE, 0),
            (good | rx::IPCS | rx::L4I | rx::L4E, 0),
            (good | rx::VP | rx::IPCS, 0x2064),
            (good, 0),
        ];
        let mut out = Vec::new();
        for report in [true, false] {
            q.report(report);
            for (st, vlan) in plan {
                let d = dev.next::<RxDescRead>().unwrap();
                dev.dma.write(d.pkt_addr, &frame(1, 60)).unwrap();
                dev.write_back(RxDescWb { status_error: st, length: 60, vlan, ..Default::default() });
            }
            out.clear();
            assert_eq!(q.burst(&mut cache, &mut out, 32), plan.len());
            let seen: Vec<_> = out.iter().map(|p| (p.rx_ip_checksum(), p.rx_l4_checksum(), p.rx_vlan())).collect();
            let (n, g, b) = (RxChecksum::NotChecked, RxChecksum::Good, RxChecksum::Bad);
            if report {
                assert_eq!(seen, [(g, g, None), (b, n, None), (g, b, None), (g, n, Some(0x2064)), (n, n, None)]);
                assert_eq!(out[0].rx_status(), rx_status::IP_CHECKED | rx_status::L4_CHECKED | rx_status::UDP);
            } else {
                assert!(seen.iter().all(|&v| v == (n, n, None)), "{seen:?}");
            }
            assert!(out.iter().all(|p| p.len() == 60 && p.offset() == 0 && p.to_vec() == frame(1, 60)));
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

    /// Delivers `frame` as the device does on a jumbo port: 2 KiB pieces,
    /// EOP on the last; `last` is ORed into the last piece's status.
    fn deliver_pieces(dev: &mut FakeDevice, frame: &[u8], last: u32) {
        let pieces: Vec<&[u8]> = frame.chunks(RX_BUF_BYTES).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let st = if i + 1 == pieces.len() { rx::DD | rx::EOP | last } else { rx::DD };
            assert!(deliver(dev, piece, st));
        }
    }

    #[test]
    fn a_jumbo_port_assembles_multi_descriptor_frames_into_one_packet() {
        let (mut q, mut dev, pool, mut cache) = setup(32, 96);
        q.set_max_frame(9018);
        let sizes = [60, 9014, 2048, 2049, 1600, 4096 + 1, 100];
        for (i, &n) in sizes.iter().enumerate() {
            deliver_pieces(&mut dev, &frame(i as u8, n), 0);
        }
        let mut out = Vec::new();
        let mut got = 0;
        while got < sizes.len() {
            let n = q.burst(&mut cache, &mut out, 3);
            assert!(n > 0, "every frame arrives");
            got += n;
        }
        for (i, p) in out.iter().enumerate() {
            assert_eq!(p.len(), sizes[i]);
            assert_eq!(p.segment_count(), sizes[i].div_ceil(RX_BUF_BYTES));
            assert_eq!(p.to_vec(), frame(i as u8, sizes[i]), "frame {i} byte-exact");
        }
        assert_eq!((q.counters.packets, q.counters.errors), (sizes.len() as u64, 0));
        // Every buffer is in a packet, a slot, or the cache/pool.
        let held: usize = out.iter().map(|p| p.segment_count()).sum();
        assert_eq!(pool.pool().available() + cache.cached() + q.bufs.len() + held, 96);
        out.clear();
        assert_eq!(pool.pool().available() + cache.cached() + q.bufs.len(), 96);
    }

    #[test]
    fn a_frame_the_device_is_still_writing_waits_for_its_last_piece() {
        let (mut q, mut dev, _pool, mut cache) = setup(16, 64);
        q.set_max_frame(9018);
        let f = frame(7, 5000);
        assert!(deliver(&mut dev, &f[..2048], rx::DD));
        let mut out = Vec::new();
        assert_eq!(q.burst(&mut cache, &mut out, 8), 0, "half a frame is not a frame");
        assert!(deliver(&mut dev, &f[2048..4096], rx::DD));
        assert_eq!(q.burst(&mut cache, &mut out, 8), 0);
        assert!(deliver(&mut dev, &f[4096..], rx::DD | rx::EOP));
        assert!(deliver(&mut dev, &frame(9, 64), rx::DD | rx::EOP));
        assert_eq!(q.burst(&mut cache, &mut out, 8), 2);
        assert_eq!((out[0].to_vec(), out[1].to_vec()), (f, frame(9, 64)));
    }

    #[test]
    fn hostile_pieces_drop_their_frame_once_and_keep_every_buffer() {
        let (mut q, mut dev, pool, mut cache) = setup(32, 96);
        q.set_max_frame(6000);
        let err = 1 << 31; // RXE
        // Too long for the port (7000 > 6000); an error bit on the last
        // piece; an error in the middle; an empty middle piece; a piece
        // longer than its buffer; then a good frame.
        deliver_pieces(&mut dev, &frame(1, 7000), 0);
        deliver_pieces(&mut dev, &frame(2, 5000), err);
        assert!(deliver(&mut dev, &frame(3, 2048), rx::DD));
        assert!(deliver(&mut dev, &frame(3, 2048), rx::DD | err));
        assert!(deliver(&mut dev, &frame(3, 100), rx::DD | rx::EOP));
        assert!(deliver(&mut dev, &frame(4, 2048), rx::DD));
        assert!(deliver(&mut dev, &[], rx::DD));
        assert!(deliver(&mut dev, &frame(4, 10), rx::DD | rx::EOP));
        let mut out = Vec::new();
        while q.burst(&mut cache, &mut out, 32) > 0 {}
        assert!(out.is_empty(), "no bad frame comes out: {:?}", out.iter().map(|p| (p.len(), p.segment_count())).collect::<Vec<_>>());
        assert_eq!(q.counters.errors, 4);
        // A write-back claiming more than a buffer holds.
        let d = dev.next::<RxDescRead>().unwrap();
        dev.dma.write(d.pkt_addr, &frame(5, 64)).unwrap();
        dev.write_back(RxDescWb { status_error: rx::DD | rx::EOP, length: 4000, ..Default::default() });
        deliver_pieces(&mut dev, &frame(6, 3000), 0);
        while q.burst(&mut cache, &mut out, 32) > 0 {}
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to_vec(), frame(6, 3000));
        assert_eq!(q.counters.errors, 5);
        out.clear();
        assert_eq!(pool.pool().available() + cache.cached() + q.bufs.len(), 96, "no buffer lost");
    }

    #[test]
    fn a_standard_port_still_drops_multi_descriptor_frames() {
        let (mut q, mut dev, _pool, mut cache) = setup(16, 64);
        deliver_pieces(&mut dev, &frame(1, 3000), 0);
        assert!(deliver(&mut dev, &frame(2, 60), rx::DD | rx::EOP));
        let mut out = Vec::new();
        assert_eq!(q.burst(&mut cache, &mut out, 8), 1);
        assert_eq!((out[0].to_vec(), q.counters.errors), (frame(2, 60), 1));
    }

    #[test]
    fn bad_descriptors_in_the_middle_of_a_run_and_across_the_wrap() {
        let (mut q, mut dev, pool, mut cache) = setup(16, 64);
        let mut out = Vec::new();
        // Move the ring's start to slot 12, so that the next 15 wrap.
        for s in 0..12u8 {
            deliver(&mut dev, &frame(s, 60), rx::DD | rx::EOP);
        }
        assert_eq!(q.burst(&mut cache, &mut out, 32), 12);
        out.clear();
        let good = rx::DD | rx::EOP;
        let plan = [
            (1, good),
            (2, good | (1 << 24)), // CRC error in the middle of a run
            (3, good),
            (4, rx::DD), // a frame in three pieces, across the wrap
            (5, rx::DD),
            (6, good),
            (7, good),
            (8, good),
        ];
        for (s, st) in plan {
            assert!(deliver(&mut dev, &frame(s, 70), st));
        }
        let mut long = frame(9, 70);
        long.resize(MAX_FRAME + 1, 0); // longer than any frame
        assert!(deliver(&mut dev, &long, good));
        assert!(deliver(&mut dev, &frame(10, 70), good));
        assert_eq!(q.burst(&mut cache, &mut out, 32), 5);
        let seqs: Vec<u8> = out.iter().map(|p| p.to_vec()[0]).collect();
        assert_eq!(seqs, [1, 3, 7, 8, 10]);
        assert_eq!(q.counters.errors, 3, "CRC, the split frame, the long one");
        assert_eq!(dev.regs.read32(regs::rdt(0)), 5, "10 slots consumed from 12");
        // Every slot got a buffer back, none handed out twice.
        let mut iovas: Vec<u64> = (0..16).map(|i| q.ring.read(i).pkt_addr).collect();
        iovas.extend(out.iter().map(|p| p.iova().get()));
        iovas.sort_unstable();
        iovas.dedup();
        assert_eq!(iovas.len(), 16 + 5);
        drop((out, q, cache));
        assert_eq!(pool.pool().available(), 64);
    }

    #[test]
    fn a_device_writing_done_everywhere_cannot_keep_a_burst_going() {
        let (mut q, _dev, _pool, mut cache) = setup(16, 64);
        // Written-back descriptors with a frame error in every slot, also
        // those the device does not own: each burst looks at 15 at most.
        let bad = RxDescWb { status_error: rx::DD | rx::EOP | (1 << 24), length: 60, ..Default::default() };
        let mut out = Vec::new();
        for round in 1..=3 {
            for i in 0..16 {
                q.ring.write(i, bytemuck::cast(bad));
            }
            assert_eq!(q.burst(&mut cache, &mut out, 64), 0);
            assert_eq!(q.counters.errors, 15 * round);
        }
        assert!(out.is_empty());
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

    /// RDT moves once per 64 refilled slots on a large ring (a quarter of
    /// a small one), and the device never runs short: a trickle of one
    /// frame per burst and full rings both go round the ring in order.
    #[test]
    fn the_tail_is_written_once_per_batch_and_the_device_never_starves() {
        let (mut q, mut dev, _pool, mut cache) = setup(512, 600);
        assert_eq!(dev.regs.read32(regs::rdt(0)), 511);
        let mut out = Vec::new();
        let mut seq = 0u8;
        let mut writes = 0;
        let mut last = dev.regs.read32(regs::rdt(0));
        // Bursts of 32: the tail moves every second burst.
        for burst in 1..=40 {
            for _ in 0..32 {
                assert!(deliver(&mut dev, &frame(seq, 60), rx::DD | rx::EOP), "burst {burst}: the device has room");
                seq = seq.wrapping_add(1);
            }
            out.clear();
            assert_eq!(q.burst(&mut cache, &mut out, 32), 32);
            let rdt = dev.regs.read32(regs::rdt(0));
            if burst % 2 == 0 {
                assert_eq!(rdt, (burst * 32 + 511) % 512, "burst {burst}");
                writes += 1;
            } else {
                assert_eq!(rdt, last, "burst {burst}: held back");
            }
            last = rdt;
            let first = seq.wrapping_sub(32);
            assert!(out.iter().enumerate().all(|(k, p)| p.to_vec() == frame(first.wrapping_add(k as u8), 60)));
        }
        assert_eq!(writes, 20);
        // The device fills everything it was given (at least 448 slots),
        // and bursts of one frame take them back in order.
        let mut given = 0;
        while deliver(&mut dev, &frame(seq.wrapping_add(given as u8), 60), rx::DD | rx::EOP) {
            given += 1;
        }
        assert!((448..=511).contains(&given), "{given}");
        for k in 0..given {
            out.clear();
            assert_eq!(q.burst(&mut cache, &mut out, 1), 1);
            assert_eq!(out[0].to_vec(), frame(seq.wrapping_add(k as u8), 60));
        }
        // All but fewer than 64 of them are the device's again.
        let mut again = 0;
        while deliver(&mut dev, &frame(0xee, 60), rx::DD | rx::EOP) {
            again += 1;
        }
        assert!(again > given - 64 && again <= given, "{again} of {given}");
        // A 16-slot ring hands back every 4.
        let (mut q, mut dev, _pool, mut cache) = setup(16, 64);
        for s in 0..3u8 {
            deliver(&mut dev, &frame(s, 60), rx::DD | rx::EOP);
            assert_eq!(q.burst(&mut cache, &mut out, 1), 1);
            assert_eq!(dev.regs.read32(regs::rdt(0)), 15);
        }
        deliver(&mut dev, &frame(3, 60), rx::DD | rx::EOP);
        assert_eq!(q.burst(&mut cache, &mut out, 1), 1);
        assert_eq!(dev.regs.read32(regs::rdt(0)), 3);
    }
}
