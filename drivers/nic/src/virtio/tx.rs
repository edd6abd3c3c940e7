//! The transmit queue (transmitq1, virtio spec §5.1.6.2).
//!
//! Each frame goes out behind a `virtio_net_hdr`, zeroed unless a checksum
//! is left to the device. A packet with at least [`NET_HDR_LEN`] bytes of
//! headroom (one received on a virtio port, say) gets the header written
//! there and needs one descriptor for header and frame; any other takes
//! two, the first pointing at one shared, never-written zero header. A
//! multi-buffer frame (jumbo, up to the port's MTU) takes one more
//! descriptor per further buffer, at most [`MAX_TX_BUFFERS`] buffers in
//! all, on split and packed rings alike. Frames shorter than [`MIN_FRAME`]
//! are padded with zeros, as a NIC would. A frame's buffers go back to
//! their pool when the device returns its chain through the used ring.
//!
//! Checksum offload (VIRTIO_NET_F_CSUM, [`TxQueue::burst_offload`]): the
//! TCP/UDP checksum is left to the device through the header (NEEDS_CSUM,
//! `csum_start`, `csum_offset`; the field seeded with the pseudo-header
//! sum by [`offload::prepare`]); virtio has no IPv4 header checksum or
//! VLAN insertion, so those are done in software, as is the TCP/UDP
//! checksum of a frame without headroom for its own header.

use fastlane_framework::{DmaArray, DmaBuf, DmaDomain, Iova, PoolCache};

use super::ring::Ring;
use super::spec::{VirtioNetHdr, NET_HDR_LEN, VIRTIO_NET_HDR_F_NEEDS_CSUM};
use super::virtqueue::{Segment, MAX_CHAIN, MAX_TX_BUFFERS};
use crate::offload::{self, TxOffload, L4, VLAN_HLEN};
use crate::{NicError, Packet, Result, Stats, MAX_FRAME, MIN_FRAME};

/// Shortest frame accepted for sending: an Ethernet header.
pub const MIN_TX_FRAME: usize = 14;

/// A header asking nothing of the device.
const ZERO_HDR: [u8; NET_HDR_LEN] = [0; NET_HDR_LEN];

/// Whether a frame of `len` bytes can be sent: at most [`MAX_FRAME`], at
/// least an Ethernet header ([`MIN_TX_FRAME`]).
pub fn check_frame(len: usize) -> Result<()> {
    check_len(len, MAX_FRAME)
}

/// [`check_frame`] for a port whose longest frame is `max`.
#[inline(always)]
fn check_len(len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(NicError::FrameTooLarge { len, max });
    }
    if len < MIN_TX_FRAME {
        return Err(NicError::FrameTooShort {
            len,
            min: MIN_TX_FRAME,
        });
    }
    Ok(())
}

/// [`check_frame`], plus room in the buffer to pad a short frame.
pub fn check_packet(p: &Packet) -> Result<()> {
    check_packet_max(p, MAX_FRAME)
}

/// [`check_packet`] on a port whose longest frame is `max` (a jumbo
/// port: multi-buffer frames of at most [`MAX_TX_BUFFERS`] buffers and at
/// least [`MIN_FRAME`] bytes, which need no padding).
#[inline(always)]
pub(crate) fn check_packet_max(p: &Packet, max: usize) -> Result<()> {
    check_len(p.len(), max)?;
    if p.is_multi() {
        return check_multi(p);
    }
    if p.offset() + p.len().max(MIN_FRAME) > p.buf().len() {
        return Err(NicError::InvalidArgument(format!(
            "no room to pad a {}-byte frame at offset {} of a {}-byte buffer",
            p.len(),
            p.offset(),
            p.buf().len()
        )));
    }
    Ok(())
}

#[inline(never)]
fn check_multi(p: &Packet) -> Result<()> {
    if p.segment_count() > MAX_TX_BUFFERS {
        return Err(NicError::InvalidArgument(format!(
            "a frame over {} buffers: virtio-net sends at most {MAX_TX_BUFFERS} per frame",
            p.segment_count()
        )));
    }
    if p.len() < MIN_FRAME {
        return Err(NicError::InvalidArgument(format!(
            "a {}-byte frame over several buffers (not padded: at least {MIN_FRAME} bytes)",
            p.len()
        )));
    }
    Ok(())
}

/// Descriptors a packet needs (it holds a checked packet, so at most
/// [`MAX_CHAIN`]).
#[inline(always)]
fn descs_for(p: &Packet) -> usize {
    let first = if p.offset() >= NET_HDR_LEN { 1 } else { 2 };
    if p.is_multi() {
        first + p.segment_count() - 1
    } else {
        first
    }
}

/// What a transmit chain carries until the device is done with it.
pub struct TxToken {
    buf: DmaBuf,
    /// Bytes on the wire (after padding).
    len: u32,
    /// For a multi-buffer frame, 1 + the index of its further buffers in
    /// [`TxQueue::chains`]; 0 otherwise (in the padding after `len`, so the
    /// token of a one-buffer frame stays as small as before).
    more: u32,
}

pub struct TxQueue {
    vq: Ring<TxToken>,
    /// A zeroed header the device only reads; owned here, so nothing else
    /// writes it.
    zero_hdr: DmaArray<u8>,
    /// The IOMMU domain the device reaches: packets mapped elsewhere are
    /// refused.
    domain: DmaDomain,
    /// The longest frame sent ([`crate::NicConfig::max_frame`]).
    max_frame: usize,
    /// Descriptors of the ring: a longer chain could never go.
    ring_size: usize,
    /// The headers of an offload burst's frames, in order (reused).
    hdrs: Vec<[u8; NET_HDR_LEN]>,
    /// The further buffers of multi-buffer frames in flight (at most one
    /// entry per chain in flight), and the free entries.
    chains: Vec<Vec<DmaBuf>>,
    free_chains: Vec<u32>,
}

impl TxQueue {
    /// `zero_hdr`: at least [`NET_HDR_LEN`] bytes, zeroed here; `domain`:
    /// where the device reaches memory.
    pub fn new(
        vq: impl Into<Ring<TxToken>>,
        zero_hdr: DmaArray<u8>,
        domain: DmaDomain,
    ) -> Result<TxQueue> {
        if zero_hdr.len() < NET_HDR_LEN {
            return Err(NicError::InvalidArgument(format!(
                "a transmit header of {} bytes",
                zero_hdr.len()
            )));
        }
        zero_hdr.fill(0);
        let vq: Ring<TxToken> = vq.into();
        Ok(TxQueue {
            ring_size: vq.free_descs(),
            vq,
            zero_hdr,
            domain,
            max_frame: MAX_FRAME,
            hdrs: Vec::new(),
            chains: Vec::new(),
            free_chains: Vec::new(),
        })
    }

    /// Sends frames of up to `max_frame` bytes (a jumbo port).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// What `burst` requires of a packet: [`check_packet`] (for the port's
    /// largest frame), every buffer mapped in the device's domain.
    #[inline(always)]
    pub fn check(&self, p: &Packet) -> Result<()> {
        crate::check_domain(p, self.domain)?;
        check_packet_max(p, self.max_frame)?;
        if p.is_multi() {
            return self.check_chain(p);
        }
        Ok(())
    }

    /// The part of `check` only a multi-buffer frame needs.
    #[inline(never)]
    fn check_chain(&self, p: &Packet) -> Result<()> {
        if p.further_bufs().any(|b| b.domain() != self.domain) {
            return Err(NicError::ForeignBuffer);
        }
        if descs_for(p) > self.ring_size {
            return Err(NicError::InvalidArgument(format!(
                "a frame of {} descriptors on a ring of {}",
                descs_for(p),
                self.ring_size
            )));
        }
        Ok(())
    }

    /// Packets the device holds.
    pub fn in_flight(&self) -> usize {
        self.vq.in_flight()
    }

    /// Takes back what the device has sent: buffers to the pool, counters up.
    pub fn reclaim(&mut self, cache: &mut PoolCache, stats: &mut Stats) -> usize {
        let mut n = 0;
        // Ends: each entry returns one chain in flight.
        loop {
            match self.vq.pop_used() {
                Ok(Some((t, _))) => {
                    stats.tx_packets += 1;
                    stats.tx_bytes += t.len as u64;
                    super::release(cache, t.buf);
                    if t.more != 0 {
                        self.release_chain(t.more, cache);
                    }
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    log::error!("virtio-net transmit queue: {e}");
                    stats.tx_errors += 1;
                    break;
                }
            }
        }
        n
    }

    /// Queues packets from the front of `pkts` while descriptors last and
    /// stops at the first one [`TxQueue::check`] refuses (a foreign buffer
    /// or a bad frame), which stays at the front. The new chains are
    /// published and the device notified before returning.
    pub fn burst(
        &mut self,
        pkts: &mut Vec<Packet>,
        cache: &mut PoolCache,
        stats: &mut Stats,
    ) -> usize {
        self.reclaim(cache, stats);
        let mut free = self.vq.free_descs();
        let mut n = 0;
        for p in pkts.iter() {
            let need = descs_for(p);
            if need > free || self.check(p).is_err() {
                break;
            }
            free -= need;
            n += 1;
        }
        for p in pkts.drain(..n) {
            self.push(p, &ZERO_HDR);
        }
        self.vq.kick();
        n
    }

    /// [`TxQueue::burst`] with `off` done on every frame: the TCP/UDP
    /// checksum by the device when `device_csum` (VIRTIO_NET_F_CSUM
    /// negotiated), the IPv4 checksum and VLAN tag in software. Stops at a
    /// frame `check` or [`offload::prepare`] refuses, which stays first
    /// and unchanged.
    #[inline(never)]
    pub fn burst_offload(
        &mut self,
        pkts: &mut Vec<Packet>,
        off: &TxOffload,
        device_csum: bool,
        cache: &mut PoolCache,
        stats: &mut Stats,
    ) -> usize {
        self.reclaim(cache, stats);
        let mut free = self.vq.free_descs();
        let mut hdrs = std::mem::take(&mut self.hdrs);
        hdrs.clear();
        for p in pkts.iter_mut() {
            match self.offload_one(p, off, device_csum, free) {
                Some((need, hdr)) => {
                    free -= need;
                    hdrs.push(hdr);
                }
                None => break,
            }
        }
        let n = hdrs.len();
        for (p, hdr) in pkts.drain(..n).zip(&hdrs) {
            self.push(p, hdr);
        }
        self.hdrs = hdrs;
        self.vq.kick();
        n
    }

    /// Prepares `p` for `off` if it is to go with `free` descriptors left:
    /// the descriptors it takes and its header; None (the frame as it was)
    /// when it does not go.
    fn offload_one(
        &self,
        p: &mut Packet,
        off: &TxOffload,
        device_csum: bool,
        free: usize,
    ) -> Option<(usize, [u8; NET_HDR_LEN])> {
        self.check(p).ok()?;
        let vlan = if off.vlan.is_some() { VLAN_HLEN } else { 0 };
        if p.headroom() < vlan || p.len() + vlan > self.max_frame {
            return None;
        }
        // Where the header goes after a tag is inserted: descriptors and
        // whether the device can have its own header with the checksum.
        let room = p.headroom() - vlan;
        let need = descs_for(p) + usize::from(p.offset() >= NET_HDR_LEN && room < NET_HDR_LEN);
        if need > free {
            return None;
        }
        let layout = offload::prepare(p, off).ok()?;
        let device_l4 = off
            .l4_checksum
            .filter(|_| device_csum && room >= NET_HDR_LEN);
        let soft = TxOffload {
            l4_checksum: off.l4_checksum.filter(|_| device_l4.is_none()),
            ..*off
        };
        // Only the tag can fail here, and its room was checked.
        offload::apply_in_software(p, &soft, layout).ok()?;
        let Some(l4) = device_l4 else {
            return Some((need, ZERO_HDR));
        };
        let csum_start = layout.l2_len + vlan + layout.l3_len;
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: csum_start as u16,
            csum_offset: match l4 {
                L4::Udp => 6,
                L4::Tcp => 16,
            },
            ..Default::default()
        };
        let mut bytes = ZERO_HDR;
        bytes.copy_from_slice(bytemuck::bytes_of(&hdr));
        Some((need, bytes))
    }

    /// Adds one checked packet behind `hdr` (descriptors were counted by
    /// the caller; a non-zero `hdr` only for a packet with headroom for
    /// it).
    #[inline(always)]
    fn push(&mut self, p: Packet, hdr: &[u8; NET_HDR_LEN]) {
        if p.is_multi() {
            return self.push_multi(p, hdr);
        }
        const ZEROS: [u8; MIN_FRAME] = [0; MIN_FRAME];
        let (off, len) = (p.offset(), p.len());
        let wire = len.max(MIN_FRAME);
        let frame = p.iova();
        let mut buf = p.into_buf();
        // Both writes are inside the buffer (check_packet) and cannot fail.
        if wire > len {
            let _ = buf.write(off + len, &ZEROS[..wire - len]);
        }
        let token = |buf| TxToken {
            buf,
            len: wire as u32,
            more: 0,
        };
        let added = if off >= NET_HDR_LEN {
            let _ = buf.write(off - NET_HDR_LEN, hdr);
            let seg = Segment {
                addr: Iova(frame.get() - NET_HDR_LEN as u64),
                len: (NET_HDR_LEN + wire) as u32,
                device_writes: false,
            };
            self.vq.add(&[seg], token(buf))
        } else {
            let hdr = Segment {
                addr: self.zero_hdr.iova(),
                len: NET_HDR_LEN as u32,
                device_writes: false,
            };
            let data = Segment {
                addr: frame,
                len: wire as u32,
                device_writes: false,
            };
            self.vq.add(&[hdr, data], token(buf))
        };
        // Cannot happen: the caller counted the descriptors. Should it, the
        // buffer goes back to its pool rather than leak.
        debug_assert!(added.is_ok());
    }

    /// [`TxQueue::push`] of a multi-buffer frame: one chain, the header
    /// (in the headroom or the shared zero one), then one descriptor per
    /// buffer.
    #[inline(never)]
    fn push_multi(&mut self, mut p: Packet, hdr: &[u8; NET_HDR_LEN]) {
        let total = p.len();
        let rest = p.split_segments();
        let (off, head) = (p.offset(), p.len());
        let frame = p.iova();
        let mut buf = p.into_buf();
        let ro = |addr, len| Segment {
            addr,
            len: len as u32,
            device_writes: false,
        };
        let mut segs = [ro(frame, 0); MAX_CHAIN];
        let mut k = 0;
        if off >= NET_HDR_LEN {
            // Inside the buffer: the headroom holds it.
            let _ = buf.write(off - NET_HDR_LEN, hdr);
            segs[0] = ro(Iova(frame.get() - NET_HDR_LEN as u64), NET_HDR_LEN + head);
            k = 1;
        } else {
            segs[0] = ro(self.zero_hdr.iova(), NET_HDR_LEN);
            segs[1] = ro(frame, head);
            k += 2;
        }
        // At most MAX_TX_BUFFERS - 1 further buffers (check_multi).
        for (slot, s) in segs[k..].iter_mut().zip(&rest) {
            *slot = ro(s.iova(), s.len());
            k += 1;
        }
        let bufs = rest.into_iter().map(Packet::into_buf);
        let slot = match self.free_chains.pop() {
            Some(i) => {
                self.chains[i as usize].extend(bufs);
                i
            }
            None => {
                self.chains.push(bufs.collect());
                (self.chains.len() - 1) as u32
            }
        };
        let token = TxToken {
            buf,
            len: total as u32,
            more: slot + 1,
        };
        let added = self.vq.add(&segs[..k], token);
        debug_assert!(added.is_ok());
    }

    /// The further buffers of a sent multi-buffer frame back to the pool.
    #[inline(never)]
    fn release_chain(&mut self, more: u32, cache: &mut PoolCache) {
        let i = more - 1;
        if let Some(bufs) = self.chains.get_mut(i as usize) {
            cache.free_all(bufs.drain(..));
            self.free_chains.push(i);
        }
    }

    /// Every buffer back (the device must be reset first).
    pub fn drain(&mut self) -> Vec<DmaBuf> {
        let mut out: Vec<DmaBuf> = self.vq.drain().into_iter().map(|t| t.buf).collect();
        for c in &mut self.chains {
            out.append(c);
        }
        self.free_chains = (0..self.chains.len() as u32).collect();
        out
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::sim::{pattern, queue_pair, SimQueue};
    use super::super::spec::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use super::*;
    use crate::packet::PACKET_BUF_SIZE;
    use crate::PacketPool;
    use crate::HEADROOM;
    use fastlane_framework::DmaRegion;

    struct Rig {
        tx: TxQueue,
        dev: SimQueue,
        pool: PacketPool,
        cache: PoolCache,
        stats: Stats,
        hdr_region: DmaRegion,
    }

    fn rig(size: u16, buffers: u32) -> Rig {
        let (vq, dev) = queue_pair(size);
        let hdr_region =
            DmaRegion::new_unmapped(4096, fastlane_framework::PageSize::Small).unwrap();
        let hdr = hdr_region.carve::<u8>(0, 64).unwrap();
        let pool = PacketPool::new_unmapped(buffers).unwrap();
        let cache = pool.cache(8);
        Rig {
            tx: TxQueue::new(vq, hdr, DmaDomain::UNMAPPED).unwrap(),
            dev,
            pool,
            cache,
            stats: Stats::default(),
            hdr_region,
        }
    }

    fn packet(pool: &PacketPool, offset: usize, frame: &[u8]) -> Packet {
        let mut p = Packet::with_offset(pool.pool().alloc().unwrap(), offset, 0).unwrap();
        p.write(frame).unwrap();
        p
    }

    /// What the device sends for the next chain: header bytes and frame.
    fn transmit(dev: &mut SimQueue) -> (u16, Vec<u8>, Vec<u8>) {
        let (head, chain) = dev.pop_avail().unwrap();
        let mut bytes = Vec::new();
        for d in &chain {
            assert_eq!(
                d.flags & VIRTQ_DESC_F_WRITE,
                0,
                "transmit buffers are device read-only"
            );
            bytes.extend(dev.read_buf(d));
        }
        let frame = bytes.split_off(NET_HDR_LEN);
        (head, bytes, frame)
    }

    #[test]
    fn frames_go_out_behind_a_zero_header_with_or_without_headroom() {
        let mut r = rig(8, 16);
        let a: Vec<u8> = (0..100u8).collect();
        let b: Vec<u8> = (0..1514).map(|i| (i * 7) as u8).collect();
        let mut pkts = vec![packet(&r.pool, 0, &a), packet(&r.pool, 64, &b)];
        // Dirty headroom must not leak into the header.
        pkts[1].buf_mut().write(52, &[0xff; 12]).unwrap();
        assert_eq!(r.tx.burst(&mut pkts, &mut r.cache, &mut r.stats), 2);
        assert!(pkts.is_empty());
        assert!(r.dev.notified());
        assert_eq!(r.tx.in_flight(), 2);
        assert_eq!(
            r.tx.vq.free_descs(),
            8 - 3,
            "two descriptors without headroom, one with"
        );

        let (h1, hdr1, f1) = transmit(&mut r.dev);
        let (h2, hdr2, f2) = transmit(&mut r.dev);
        assert_eq!((hdr1, f1), (vec![0; 12], a));
        assert_eq!((hdr2, f2), (vec![0; 12], b));
        // Nothing counted until the device is done.
        assert_eq!(r.stats.tx_packets, 0);
        r.dev.push_used(h2 as u32, 0);
        r.dev.push_used(h1 as u32, 0);
        assert_eq!(r.tx.reclaim(&mut r.cache, &mut r.stats), 2);
        assert_eq!((r.stats.tx_packets, r.stats.tx_bytes), (2, 1614));
        assert_eq!(r.tx.in_flight(), 0);
        drop(r.cache);
        assert_eq!(r.pool.pool().available(), 16);
        let mut z = [1u8; 12];
        r.tx.zero_hdr.copy_to(0, &mut z).unwrap();
        assert_eq!(z, [0; 12]);
    }

    #[test]
    fn short_frames_are_padded_to_the_ethernet_minimum() {
        let mut r = rig(8, 4);
        let mut p = packet(&r.pool, 0, &[0xee; 80]);
        p.set_len(20).unwrap(); // bytes 20.. are stale 0xee
        let mut pkts = vec![p];
        r.tx.burst(&mut pkts, &mut r.cache, &mut r.stats);
        let (head, _, frame) = transmit(&mut r.dev);
        assert_eq!(frame.len(), MIN_FRAME);
        assert_eq!(&frame[..20], &[0xee; 20]);
        assert_eq!(&frame[20..], &[0; MIN_FRAME - 20]);
        r.dev.push_used(head as u32, 0);
        r.tx.reclaim(&mut r.cache, &mut r.stats);
        assert_eq!(r.stats.tx_bytes, MIN_FRAME as u64);
    }

    #[test]
    fn a_full_ring_takes_part_of_a_burst_and_the_rest_stays() {
        let mut r = rig(4, 16);
        let mut pkts: Vec<Packet> = (0..5).map(|i| packet(&r.pool, 0, &[i as u8; 60])).collect();
        assert_eq!(r.tx.burst(&mut pkts, &mut r.cache, &mut r.stats), 2);
        assert_eq!(pkts.len(), 3);
        assert_eq!(pkts[0].to_vec(), [2u8; 60], "the unsent keep their order");
        assert_eq!(r.tx.burst(&mut pkts, &mut r.cache, &mut r.stats), 0);
        // The device finishes one: room for one more.
        let (h, _, f) = transmit(&mut r.dev);
        assert_eq!(f, [0u8; 60]);
        r.dev.push_used(h as u32, 0);
        assert_eq!(r.tx.burst(&mut pkts, &mut r.cache, &mut r.stats), 1);
        assert_eq!(pkts.len(), 2);
        assert_eq!(r.stats.tx_packets, 1);
    }

    #[test]
    fn an_invalid_frame_stops_the_burst_and_stays_at_the_front() {
        let mut r = rig(8, 8);
        let mut pkts = vec![
            packet(&r.pool, 0, &[1; 60]),
            packet(&r.pool, 0, &[2; 10]),
            packet(&r.pool, 0, &[3; 60]),
        ];
        assert_eq!(r.tx.burst(&mut pkts, &mut r.cache, &mut r.stats), 1);
        assert_eq!(pkts.len(), 2);
        assert!(matches!(
            check_packet(&pkts[0]),
            Err(NicError::FrameTooShort { len: 10, min: 14 })
        ));
        assert!(matches!(
            check_frame(MAX_FRAME + 1),
            Err(NicError::FrameTooLarge {
                len: 1515,
                max: 1514
            })
        ));
        assert!(check_frame(MAX_FRAME).is_ok() && check_frame(MIN_TX_FRAME).is_ok());
        // No room to pad at the very end of the buffer.
        let p = packet(&r.pool, PACKET_BUF_SIZE - 20, &[4; 20]);
        assert!(matches!(
            check_packet(&p),
            Err(NicError::InvalidArgument(_))
        ));
    }

    #[test]
    fn two_descriptor_chains_link_header_to_frame() {
        let mut r = rig(8, 4);
        let mut pkts = vec![packet(&r.pool, 0, &[9; 64])];
        r.tx.burst(&mut pkts, &mut r.cache, &mut r.stats);
        let (_, chain) = r.dev.pop_avail().unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].flags, VIRTQ_DESC_F_NEXT);
        assert_eq!(chain[0].addr, r.hdr_region.iova_at(0).get());
        assert_eq!(chain[1].flags, 0);
        assert_eq!(chain[1].len, 64);
    }

    /// A multi-buffer packet of `frame` (more than MAX_FRAME bytes) from
    /// `pool`: the first buffer from `offset`, then whole buffers.
    fn jumbo(pool: &PacketPool, offset: usize, frame: &[u8]) -> Packet {
        let mut p = Packet::with_offset(pool.pool().alloc().unwrap(), offset, 1).unwrap();
        let mut room = PACKET_BUF_SIZE - offset;
        while room < frame.len() {
            let seg = Packet::with_offset(pool.pool().alloc().unwrap(), 0, 1).unwrap();
            p.push_segment(seg).map_err(|(_, e)| e).unwrap();
            room += PACKET_BUF_SIZE;
        }
        p.write(frame).unwrap();
        assert!(p.is_multi());
        p
    }

    #[test]
    fn a_multi_buffer_frame_goes_out_as_one_chain() {
        let mut r = rig(32, 32);
        r.tx.set_max_frame(crate::MAX_JUMBO_FRAME);
        let (a, b) = (pattern(9014, 1), pattern(5000, 2));
        let mut pkts = vec![jumbo(&r.pool, HEADROOM, &a), jumbo(&r.pool, 0, &b)];
        let segs: Vec<usize> = pkts.iter().map(Packet::segment_count).collect();
        assert_eq!(segs, [5, 3]);
        assert_eq!(r.pool.pool().available(), 32 - 8);
        assert_eq!(r.tx.burst(&mut pkts, &mut r.cache, &mut r.stats), 2);
        // Header in the headroom: one descriptor per buffer; without: one
        // more for the shared zero header.
        assert_eq!(r.tx.vq.free_descs(), 32 - 5 - 4);
        for (want, descs) in [(&a, 5usize), (&b, 4)] {
            let (head, chain) = r.dev.pop_avail().unwrap();
            assert_eq!(chain.len(), descs);
            assert!(chain[..descs - 1]
                .iter()
                .all(|d| d.flags == VIRTQ_DESC_F_NEXT));
            assert_eq!(chain[descs - 1].flags, 0);
            let mut bytes = r.dev.read_chain(&chain);
            let frame = bytes.split_off(NET_HDR_LEN);
            assert_eq!((bytes, &frame), (vec![0; NET_HDR_LEN], want));
            r.dev.push_used(head as u32, 0);
        }
        assert_eq!(r.tx.reclaim(&mut r.cache, &mut r.stats), 2);
        assert_eq!((r.stats.tx_packets, r.stats.tx_bytes), (2, 14014));
        drop(r.cache);
        assert_eq!(
            r.pool.pool().available(),
            32,
            "every buffer of both frames home"
        );
    }

    #[test]
    fn a_multi_buffer_frame_goes_out_on_a_packed_ring() {
        use super::super::sim::packed_pair;
        let (q, mut dev) = packed_pair(16);
        let region = DmaRegion::new_unmapped(4096, fastlane_framework::PageSize::Small).unwrap();
        let mut tx =
            TxQueue::new(q, region.carve::<u8>(0, 64).unwrap(), DmaDomain::UNMAPPED).unwrap();
        tx.set_max_frame(crate::MAX_JUMBO_FRAME);
        let pool = PacketPool::new_unmapped(16).unwrap();
        let (mut cache, mut stats) = (pool.cache(8), Stats::default());
        let a = pattern(7000, 3);
        // Twice around the ring: chains cross its end.
        for _ in 0..6 {
            let mut pkts = vec![jumbo(&pool, HEADROOM, &a)];
            assert_eq!(tx.burst(&mut pkts, &mut cache, &mut stats), 1);
            let (id, chain) = dev.pop_avail().unwrap();
            assert_eq!(chain.len(), 4);
            assert_eq!(dev.read_chain(&chain)[NET_HDR_LEN..], a[..]);
            dev.push_used(id, 0, chain.len() as u16);
        }
        tx.reclaim(&mut cache, &mut stats);
        assert_eq!(stats.tx_packets, 6);
        drop(cache);
        assert_eq!(pool.pool().available(), 16);
    }

    #[test]
    fn multi_buffer_frames_the_port_cannot_send_are_refused() {
        let mut r = rig(8, 32);
        let big = jumbo(&r.pool, HEADROOM, &pattern(3000, 4));
        // A standard port: too long.
        assert!(matches!(
            r.tx.check(&big),
            Err(NicError::FrameTooLarge {
                len: 3000,
                max: 1514
            })
        ));
        r.tx.set_max_frame(crate::MAX_JUMBO_FRAME);
        assert!(r.tx.check(&big).is_ok());
        // Over more buffers than a chain takes (9 small ones).
        let mut many = Packet::with_offset(r.pool.pool().alloc().unwrap(), HEADROOM, 100).unwrap();
        for _ in 0..MAX_TX_BUFFERS {
            let seg = Packet::with_offset(r.pool.pool().alloc().unwrap(), 0, 100).unwrap();
            many.push_segment(seg).map_err(|(_, e)| e).unwrap();
        }
        assert!(matches!(
            r.tx.check(&many),
            Err(NicError::InvalidArgument(_))
        ));
        // Shorter than 60 bytes over two buffers: no padding across them.
        let mut short = Packet::with_offset(r.pool.pool().alloc().unwrap(), HEADROOM, 20).unwrap();
        let seg = Packet::with_offset(r.pool.pool().alloc().unwrap(), 0, 20).unwrap();
        short.push_segment(seg).map_err(|(_, e)| e).unwrap();
        assert!(matches!(
            r.tx.check(&short),
            Err(NicError::InvalidArgument(_))
        ));
        // A chain longer than the ring of 8: never, not "full".
        let mut long = Packet::with_offset(r.pool.pool().alloc().unwrap(), 0, 100).unwrap();
        for _ in 0..7 {
            let seg = Packet::with_offset(r.pool.pool().alloc().unwrap(), 0, 100).unwrap();
            long.push_segment(seg).map_err(|(_, e)| e).unwrap();
        }
        assert!(matches!(
            r.tx.check(&long),
            Err(NicError::InvalidArgument(_))
        ));
        // The burst stops at the first of them; nothing is lost.
        let mut pkts = vec![big, many, short, long];
        assert_eq!(r.tx.burst(&mut pkts, &mut r.cache, &mut r.stats), 1);
        assert_eq!(pkts.len(), 3);
        drop(pkts);
        let (h, _) = r.dev.pop_avail().unwrap();
        r.dev.push_used(h as u32, 0);
        r.tx.reclaim(&mut r.cache, &mut r.stats);
        drop(r.cache);
        assert_eq!(r.pool.pool().available(), 32);
    }

    /// An IPv4/UDP frame of `payload` bytes with both checksums zeroed.
    fn udp(payload: usize) -> Vec<u8> {
        use crate::proto::{IPV4_OFFSET, UDP_OFFSET};
        let mut f = super::super::sim::udp_frame(payload);
        f[IPV4_OFFSET + 10..IPV4_OFFSET + 12].fill(0);
        f[UDP_OFFSET + 6..UDP_OFFSET + 8].fill(0);
        f
    }

    /// What a device does with a NEEDS_CSUM header: the checksum from
    /// csum_start to the end, stored at csum_start + csum_offset.
    fn device_finishes(hdr: &[u8], frame: &mut [u8]) {
        use crate::proto::{checksum_add, checksum_fold};
        let h: VirtioNetHdr = bytemuck::pod_read_unaligned(hdr);
        if h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            let (start, at) = (
                h.csum_start as usize,
                (h.csum_start + h.csum_offset) as usize,
            );
            let c = checksum_fold(checksum_add(0, &frame[start..]));
            frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }

    #[test]
    fn checksum_offload_leaves_tcp_udp_to_the_device_and_does_the_rest() {
        use crate::proto::{parse_udp_frame, ETHERTYPE_IPV4};
        let mut r = rig(64, 64);
        r.tx.set_max_frame(crate::MAX_JUMBO_FRAME);
        let off = TxOffload {
            ip_checksum: true,
            l4_checksum: Some(L4::Udp),
            vlan: None,
        };
        let tagged = TxOffload {
            vlan: Some(0x2064),
            ..off
        };
        let cases: [(&TxOffload, bool, usize, usize, u8, u16); 5] = [
            // (offload, device_csum, offset, payload, header flags, csum_start)
            (&off, true, HEADROOM, 100, VIRTIO_NET_HDR_F_NEEDS_CSUM, 34),
            (
                &tagged,
                true,
                HEADROOM,
                100,
                VIRTIO_NET_HDR_F_NEEDS_CSUM,
                38,
            ),
            // No room for a header of its own: in software.
            (&off, true, 0, 100, 0, 0),
            (&off, false, HEADROOM, 100, 0, 0),
            // A jumbo datagram, summed by the device across buffers.
            (&off, true, HEADROOM, 8972, VIRTIO_NET_HDR_F_NEEDS_CSUM, 34),
        ];
        for &(o, device, offset, payload, flags, start) in &cases {
            let f = udp(payload);
            let p = match f.len() > MAX_FRAME {
                true => jumbo(&r.pool, offset, &f),
                false => packet(&r.pool, offset, &f),
            };
            let mut pkts = vec![p];
            assert_eq!(
                r.tx.burst_offload(&mut pkts, o, device, &mut r.cache, &mut r.stats),
                1
            );
            let (head, chain) = r.dev.pop_avail().unwrap();
            let mut bytes = r.dev.read_chain(&chain);
            let mut frame = bytes.split_off(NET_HDR_LEN);
            let h: VirtioNetHdr = bytemuck::pod_read_unaligned(&bytes);
            assert_eq!(
                (h.flags, h.csum_start),
                (flags, start),
                "{o:?} {device} {offset}"
            );
            assert_eq!(h.csum_offset, if flags != 0 { 6 } else { 0 });
            device_finishes(&bytes, &mut frame);
            if o.vlan.is_some() {
                assert_eq!(frame[12..16], [0x81, 0, 0x20, 0x64]);
                frame.drain(12..16);
            }
            assert_eq!(frame[12..14], ETHERTYPE_IPV4.to_be_bytes());
            let ok = parse_udp_frame(&frame);
            assert!(ok.is_ok(), "{ok:?}: {o:?} {device} {offset} {payload}");
            assert_eq!(frame.len(), f.len());
            r.dev.push_used(head as u32, 0);
        }
        // A frame the offload does not fit (not IPv4) stays first, unchanged.
        let arp = vec![0x11u8; 60];
        let mut pkts = vec![packet(&r.pool, HEADROOM, &arp)];
        assert_eq!(
            r.tx.burst_offload(&mut pkts, &tagged, true, &mut r.cache, &mut r.stats),
            0
        );
        assert_eq!(pkts[0].to_vec(), arp);
        drop(pkts);
        r.tx.reclaim(&mut r.cache, &mut r.stats);
        assert_eq!(r.stats.tx_packets, cases.len() as u64);
        drop(r.cache);
        assert_eq!(r.pool.pool().available(), 64);
    }
}
