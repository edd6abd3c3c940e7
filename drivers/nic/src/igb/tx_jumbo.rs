//! Transmit of frames longer than one buffer (jumbo frames, 82576
//! datasheet 7.2.1.1): one data descriptor per buffer of a multi-buffer
//! [`Packet`], end of packet on the last, the frame's length in each.
//! Every one asks for status (RS), as offload frames' data descriptors do,
//! so reclaim finds a reported descriptor wherever its batch ends. Kept
//! apart from the plain burst, which takes one-buffer frames only.

use std::sync::atomic::{fence, Ordering};

use fastlane_framework::PoolCache;

use super::desc::TxDescRead;
use super::regs;
use super::tx::TxQueue;
use super::tx_offload::{context, data_bits};
use super::MIN_TX_FRAME;
use crate::offload::{self, TxOffload};
use crate::{NicError, Packet, Result, MAX_FRAME};

/// Most buffers one frame may span: a 9014-byte frame in 2 KiB buffers
/// takes 5; a chain of many small pieces is refused rather than allowed to
/// take a ring's worth of descriptors (or wait for room it never gets).
pub const MAX_TX_SEGMENTS: usize = 16;

/// Whether `p` is for [`TxQueue::burst_jumbo`] rather than the plain burst:
/// several buffers, or one holding more than a standard frame.
#[inline]
pub fn is_jumbo(p: &Packet) -> bool {
    p.is_multi() || p.len() > MAX_FRAME
}

impl TxQueue {
    /// What [`TxQueue::burst_jumbo`] requires of a frame: every buffer
    /// mapped in the device's domain, [`MIN_TX_FRAME`]..=`max_frame`
    /// bytes, at most [`MAX_TX_SEGMENTS`] buffers.
    pub fn check_jumbo(&self, p: &Packet, max_frame: usize) -> Result<()> {
        match p.len() {
            len if len > max_frame => return Err(NicError::FrameTooLarge { len, max: max_frame }),
            len if len < MIN_TX_FRAME => return Err(NicError::FrameTooShort { len, min: MIN_TX_FRAME }),
            _ => {}
        }
        if p.segment_count() > MAX_TX_SEGMENTS {
            return Err(NicError::InvalidArgument(format!(
                "a frame over {} buffers (at most {MAX_TX_SEGMENTS})",
                p.segment_count()
            )));
        }
        if std::iter::once(p.buf()).chain(p.further_bufs()).any(|b| b.domain() != self.domain()) {
            return Err(NicError::ForeignBuffer);
        }
        Ok(())
    }

    /// Queues jumbo frames ([`is_jumbo`]) from the front of `pkts` while
    /// the ring has room for all of a frame's descriptors; stops at a
    /// frame that is not one, or that [`TxQueue::check_jumbo`] or
    /// [`offload::prepare`] refuses (it stays first, unchanged). With
    /// `off`, a context descriptor goes before each frame and its first
    /// data descriptor asks for the offloads (as [`TxQueue::burst_offload`]
    /// does for one-buffer frames). Writes the tail once. Not the fast
    /// path: a frame at a time.
    #[inline(never)]
    pub fn burst_jumbo(
        &mut self,
        cache: &mut PoolCache,
        pkts: &mut Vec<Packet>,
        max_frame: usize,
        off: Option<&TxOffload>,
    ) -> usize {
        self.reclaim_with(cache, |c, slots| c.free_slots(slots));
        let (mut n, mut bytes) = (0usize, 0u64);
        let (vlan, cmd, popts) = off.map_or((0, 0, 0), data_bits);
        while let Some(p) = pkts.first_mut() {
            if !is_jumbo(p) || self.check_jumbo(p, max_frame).is_err() {
                break;
            }
            // segment_count <= MAX_TX_SEGMENTS, checked.
            let descs = p.segment_count() as u16 + u16::from(off.is_some());
            if self.index.free() < descs {
                break;
            }
            let ctx = match off {
                None => None,
                Some(o) => match offload::prepare(p, o) {
                    Ok(l) => Some(context(o, l, vlan)),
                    Err(_) => break,
                },
            };
            let Some(mut slot) = self.index.reserve(descs) else {
                break;
            };
            let ring = self.index.ring();
            if let Some(ctx) = ctx {
                // A context slot holds no buffer (reclaim steps past it).
                self.ring.write(slot, ctx);
                slot = ring.add(slot, 1);
            }
            let mut head = pkts.remove(0);
            // check_jumbo bounded it by max_frame <= MAX_JUMBO_FRAME.
            let total = head.len() as u16;
            let rest = head.split_segments();
            let last = rest.len();
            for (k, seg) in std::iter::once(head).chain(rest).enumerate() {
                let mut d = TxDescRead::piece(seg.iova().get(), seg.len() as u16, total, k == last);
                if k == 0 {
                    d = d.with_options(cmd, popts);
                }
                // The slot is software's until the tail moves past it.
                self.ring.write(slot, d);
                // Reclaimed slots are empty; a segment is one buffer.
                self.bufs[slot as usize] = Some(seg.into_single_buf());
                slot = ring.add(slot, 1);
            }
            bytes += u64::from(total);
            n += 1;
        }
        if n == 0 {
            return 0;
        }
        self.counters.packets += n as u64;
        self.counters.bytes += bytes;
        fence(Ordering::Release);
        self.regs.write32(regs::tdt(self.queue), self.index.tail() as u32);
        n
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::igb::desc::{tx, TxDescWb};
    use crate::igb::dma::FakeDevice;
    use crate::igb::tx::tests::setup;
    use crate::offload::L4;
    use crate::{PacketPool, HEADROOM, MAX_JUMBO_FRAME};

    /// Plays the device: gathers each frame's pieces up to EOP (skipping
    /// context descriptors), checks every data descriptor asks for status
    /// and carries the frame's length, writes DD back.
    fn frames(dev: &mut FakeDevice) -> Vec<(Vec<u8>, u32)> {
        let (mut out, mut cur, mut opts) = (Vec::new(), Vec::new(), None);
        while let Some(d) = dev.next::<TxDescRead>() {
            let cmd = d.cmd_type_len();
            if cmd & tx::DTYP_CTXT == tx::DTYP_CTXT && cmd & tx::DTYP_DATA != tx::DTYP_DATA {
                dev.write_back(d);
                continue;
            }
            let len = (cmd & 0xffff) as usize;
            let mut piece = vec![0u8; len];
            dev.dma.read(d.buffer_addr, &mut piece).expect("a live buffer");
            cur.extend_from_slice(&piece);
            assert!(d.is_reported(), "every piece reports");
            opts.get_or_insert(d.olinfo_status() & 0x3fff);
            if cmd & tx::DCMD_EOP != 0 {
                assert_eq!((d.olinfo_status() >> tx::PAYLEN_SHIFT) as usize, cur.len(), "PAYLEN is the frame");
                out.push((std::mem::take(&mut cur), opts.take().unwrap_or(0)));
            }
            dev.write_back(TxDescWb { status: tx::STA_DD, ..Default::default() });
        }
        out
    }

    fn frame(seq: u32, len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + seq as usize) as u8).collect();
        f[..4].copy_from_slice(&seq.to_le_bytes());
        f
    }

    fn jumbo(pool: &PacketPool, seq: u32, len: usize) -> Packet {
        let alloc = || pool.pool().alloc().map_err(NicError::from);
        let mut p = crate::packet::alloc_frame(alloc, HEADROOM, len, MAX_JUMBO_FRAME).unwrap();
        p.write(&frame(seq, len)).unwrap();
        p
    }

    #[test]
    fn jumbo_frames_go_out_one_descriptor_per_buffer_byte_exact() {
        let (mut q, mut dev, pool, mut cache) = setup(32, 64);
        let sizes = [9014usize, 1515, 2048, 4097, 1920, 9014];
        let mut pkts: Vec<Packet> = sizes.iter().enumerate().map(|(i, &n)| jumbo(&pool, i as u32, n)).collect();
        // Two standard frames after them stay for the plain burst.
        pkts.extend((0..2).map(|i| {
            let mut p = pool.alloc().unwrap();
            p.write(&frame(100 + i, 60)).unwrap();
            p
        }));
        assert_eq!(q.burst_jumbo(&mut cache, &mut pkts, 9014, None), 6);
        assert_eq!(pkts.len(), 2, "standard frames are not this path's");
        let got = frames(&mut dev);
        for (i, (f, _)) in got.iter().enumerate() {
            assert_eq!(f, &frame(i as u32, sizes[i]), "frame {i}");
        }
        // Reclaim gives back every buffer of every frame.
        drop(pkts);
        q.reclaim(&mut cache);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(pool.pool().available() + cache.cached(), 64);
    }

    #[test]
    fn a_frame_waits_for_room_for_all_its_buffers() {
        let (mut q, mut dev, pool, mut cache) = setup(16, 64);
        let mut pkts: Vec<Packet> = (0..4).map(|i| jumbo(&pool, i, 9014)).collect();
        // 15 free slots: three 5-buffer frames fit, the fourth does not.
        assert_eq!(q.burst_jumbo(&mut cache, &mut pkts, 9014, None), 3);
        assert_eq!((pkts.len(), pkts[0].segment_count()), (1, 5), "left whole");
        let got = frames(&mut dev);
        assert_eq!(got.len(), 3);
        assert_eq!(q.burst_jumbo(&mut cache, &mut pkts, 9014, None), 1);
        assert_eq!(frames(&mut dev)[0].0, frame(3, 9014));
    }

    #[test]
    fn hostile_frames_stop_the_burst_and_stay_first() {
        let (mut q, mut dev, pool, mut cache) = setup(64, 64);
        let other = PacketPool::new_unmapped(8).unwrap();
        let tail = |n| {
            let mut b = pool.pool().alloc().unwrap();
            b.write(0, &vec![9u8; n]).unwrap();
            Packet::piece(b, n).unwrap()
        };
        // Longer than the port's MTU allows.
        let mut pkts = vec![jumbo(&pool, 1, 9014)];
        assert_eq!(q.burst_jumbo(&mut cache, &mut pkts, 4000, None), 0);
        assert!(matches!(q.check_jumbo(&pkts[0], 4000), Err(NicError::FrameTooLarge { .. })));
        // Buffers of two pools in one frame are fine in one domain (a
        // buffer of another container behind the first is refused: guest
        // test guest_hostile_nic; unmapped pools share one domain here).
        let mut p = jumbo(&other, 2, 3000);
        let seg = tail(10);
        p.push_segment(seg).map_err(|(_, e)| e).unwrap();
        assert!(q.check_jumbo(&p, 9014).is_ok());
        // Too many buffers for one frame.
        let mut many = Packet::with_offset(pool.pool().alloc().unwrap(), 0, 100).unwrap();
        for _ in 0..MAX_TX_SEGMENTS {
            many.push_segment(tail(1)).map_err(|(_, e)| e).unwrap();
        }
        let mut pkts = vec![many];
        assert_eq!(q.burst_jumbo(&mut cache, &mut pkts, 9014, None), 0);
        assert!(matches!(q.check_jumbo(&pkts[0], 9014), Err(NicError::InvalidArgument(_))));
        assert!(frames(&mut dev).is_empty(), "the device saw nothing");
    }

    #[test]
    fn offloaded_jumbo_frames_carry_a_context_and_the_options_on_their_first_piece() {
        let (mut q, mut dev, pool, mut cache) = setup(64, 64);
        let off = TxOffload { ip_checksum: true, l4_checksum: Some(L4::Udp), vlan: None };
        let payload = vec![5u8; 8000];
        let mut f = Vec::new();
        crate::proto::build_udp(&mut f, [2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], 7, 9, &payload).unwrap();
        let alloc = || pool.pool().alloc().map_err(NicError::from);
        let mut p = crate::packet::alloc_frame(alloc, HEADROOM, f.len(), MAX_JUMBO_FRAME).unwrap();
        p.write(&f).unwrap();
        let mut pkts = vec![p];
        assert_eq!(q.burst_jumbo(&mut cache, &mut pkts, 9014, Some(&off)), 1);
        let got = frames(&mut dev);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1 >> 8 & 3, 3, "IXSM and TXSM on the first piece");
        // What the NIC starts from: the IP checksum zeroed, the UDP one
        // seeded with the pseudo-header sum; the payload as written.
        assert_eq!(&got[0].0[24..26], &[0, 0]);
        assert_eq!(&got[0].0[42..], &payload[..]);
    }
}
