//! The transmit queue (transmitq1, virtio spec §5.1.6.2).
//!
//! Each frame goes out behind a zeroed `virtio_net_hdr` (no offloads). A
//! packet with at least [`NET_HDR_LEN`] bytes of headroom (one received on
//! a virtio port, say) gets the header written there and needs one
//! descriptor; any other takes two, the first pointing at one shared,
//! never-written zero header. Frames shorter than [`MIN_FRAME`] are padded
//! with zeros, as a NIC would. A buffer goes back to its pool when the
//! device returns its chain through the used ring.

use fastlane_framework::{DmaArray, DmaBuf, DmaDomain, Iova, PoolCache};

use super::ring::Ring;
use super::spec::NET_HDR_LEN;
use super::virtqueue::Segment;
use crate::{NicError, Packet, Result, Stats, MAX_FRAME, MIN_FRAME};

/// Shortest frame accepted for sending: an Ethernet header.
pub const MIN_TX_FRAME: usize = 14;

/// Whether a frame of `len` bytes can be sent: at most [`MAX_FRAME`], at
/// least an Ethernet header ([`MIN_TX_FRAME`]).
pub fn check_frame(len: usize) -> Result<()> {
    if len > MAX_FRAME {
        return Err(NicError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        });
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
    check_frame(p.len())?;
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

/// Descriptors a packet needs.
fn descs_for(p: &Packet) -> usize {
    if p.offset() >= NET_HDR_LEN {
        1
    } else {
        2
    }
}

/// What a transmit chain carries until the device is done with it.
pub struct TxToken {
    buf: DmaBuf,
    /// Bytes on the wire (after padding).
    len: u32,
}

pub struct TxQueue {
    vq: Ring<TxToken>,
    /// A zeroed header the device only reads; owned here, so nothing else
    /// writes it.
    zero_hdr: DmaArray<u8>,
    /// The IOMMU domain the device reaches: packets mapped elsewhere are
    /// refused.
    domain: DmaDomain,
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
        Ok(TxQueue {
            vq: vq.into(),
            zero_hdr,
            domain,
        })
    }

    /// What `burst` requires of a packet: [`check_packet`], in a buffer
    /// mapped in the device's domain.
    #[inline(always)]
    pub fn check(&self, p: &Packet) -> Result<()> {
        crate::check_domain(p, self.domain)?;
        check_packet(p)
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
            self.push(p);
        }
        self.vq.kick();
        n
    }

    /// Adds one checked packet (descriptors were counted by the caller).
    fn push(&mut self, p: Packet) {
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
        };
        let added = if off >= NET_HDR_LEN {
            let _ = buf.write(off - NET_HDR_LEN, &ZEROS[..NET_HDR_LEN]);
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

    /// Every buffer back (the device must be reset first).
    pub fn drain(&mut self) -> Vec<DmaBuf> {
        self.vq.drain().into_iter().map(|t| t.buf).collect()
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::sim::{queue_pair, SimQueue};
    use super::super::spec::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    use super::*;
    use crate::packet::PACKET_BUF_SIZE;
    use crate::PacketPool;
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
}
