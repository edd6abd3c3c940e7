//! The receive queue (receiveq1, virtio spec §5.1.6.3, §5.1.6.4).
//!
//! Every buffer is posted as one device-writable descriptor that starts
//! [`NET_HDR_LEN`] bytes before [`RX_HEADROOM`]: the device writes its
//! `virtio_net_hdr` there and the frame right after it, so the frame starts
//! at `RX_HEADROOM` and becomes a [`Packet`] with that offset, no copy. The
//! header carries nothing we asked for (no offloads are negotiated).

use fastlane_framework::{DmaBuf, PoolCache};

use super::ring::Ring;
use super::spec::NET_HDR_LEN;
use super::virtqueue::Segment;
use crate::{Packet, Stats, HEADROOM, MAX_FRAME};

/// Where a received frame starts in its buffer: the drivers' common
/// [`HEADROOM`]. What is in front of it holds the device's header, and
/// later a transmit header if the packet is sent on by a virtio port.
pub const RX_HEADROOM: usize = HEADROOM;
/// Where the device writes the header.
const HDR_AT: usize = RX_HEADROOM - NET_HDR_LEN;

/// The frame length for `written` bytes of header and frame in a buffer of
/// `buf_len` bytes; None when it is no valid frame (shorter than the
/// header, longer than MAX_FRAME, or past the buffer).
pub fn frame_len(written: u32, buf_len: usize) -> Option<usize> {
    let frame = (written as usize).checked_sub(NET_HDR_LEN)?;
    (frame <= MAX_FRAME && HDR_AT + written as usize <= buf_len).then_some(frame)
}

pub struct RxQueue {
    vq: Ring<DmaBuf>,
}

impl RxQueue {
    pub fn new(vq: impl Into<Ring<DmaBuf>>) -> RxQueue {
        RxQueue { vq: vq.into() }
    }

    /// Buffers the device holds.
    pub fn posted(&self) -> usize {
        self.vq.in_flight()
    }

    fn post(&mut self, buf: DmaBuf, cache: &mut PoolCache) {
        let seg = Segment {
            addr: buf.iova().add(HDR_AT as u64),
            len: (buf.len() - HDR_AT) as u32,
            device_writes: true,
        };
        if let Err(buf) = self.vq.add(&[seg], buf) {
            super::release(cache, buf);
        }
    }

    /// Posts buffers from `cache` until the ring is full or the pool is dry,
    /// then tells the device (once). Returns how many it posted. The stash
    /// is filled once for the whole refill (`ensure`), then each buffer is
    /// a `take`, with no refill call in the loop.
    pub fn refill(&mut self, cache: &mut PoolCache) -> usize {
        let mut n = 0;
        cache.ensure(self.vq.free_descs());
        while self.vq.free_descs() > 0 {
            let Some(buf) = cache.take() else { break };
            self.post(buf, cache);
            n += 1;
        }
        self.vq.kick();
        n
    }

    /// Up to `max` received frames appended to `out`; refills the ring.
    pub fn burst(
        &mut self,
        out: &mut Vec<Packet>,
        max: usize,
        cache: &mut PoolCache,
        stats: &mut Stats,
    ) -> usize {
        let mut got = 0;
        // Bounded by `max`; a broken ring costs one error per burst.
        for _ in 0..max {
            match self.vq.pop_used() {
                Ok(Some((buf, written))) => match frame_len(written, buf.len()) {
                    Some(len) => match Packet::with_offset(buf, RX_HEADROOM, len) {
                        Ok(p) => {
                            stats.rx_packets += 1;
                            stats.rx_bytes += len as u64;
                            out.push(p);
                            got += 1;
                        }
                        Err(_) => stats.rx_errors += 1,
                    },
                    None => {
                        // Oversized or truncated: count it, reuse the buffer.
                        stats.rx_errors += 1;
                        self.post(buf, cache);
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    log::error!("virtio-net receive queue: {e}");
                    stats.rx_errors += 1;
                    break;
                }
            }
        }
        self.refill(cache);
        got
    }

    /// Every buffer back (the device must be reset first).
    pub fn drain(&mut self) -> Vec<DmaBuf> {
        self.vq.drain()
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::sim::{queue_pair, SimQueue};
    use super::super::spec::{VirtioNetHdr, VIRTQ_DESC_F_WRITE};
    use super::*;
    use crate::PacketPool;

    fn setup(size: u16, buffers: u32) -> (RxQueue, SimQueue, PacketPool, PoolCache) {
        let (vq, dev) = queue_pair(size);
        let pool = PacketPool::new_unmapped(buffers).unwrap();
        let cache = pool.cache(16);
        (RxQueue::new(vq), dev, pool, cache)
    }

    /// The device receives `frame` into the next posted buffer.
    fn deliver(dev: &mut SimQueue, frame: &[u8]) {
        let (head, chain) = dev.pop_avail().expect("no buffer posted");
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].flags, VIRTQ_DESC_F_WRITE);
        let mut bytes = bytemuck::bytes_of(&VirtioNetHdr {
            num_buffers: 1,
            ..Default::default()
        })
        .to_vec();
        bytes.extend_from_slice(frame);
        dev.write_buf(&chain[0], &bytes);
        dev.push_used(head as u32, bytes.len() as u32);
    }

    #[test]
    fn frames_arrive_without_the_header_at_the_headroom() {
        let (mut rx, mut dev, _pool, mut cache) = setup(8, 64);
        let mut stats = Stats::default();
        assert_eq!(rx.refill(&mut cache), 8);
        assert!(dev.notified());
        let frames: Vec<Vec<u8>> = [60usize, 61, 1000, MAX_FRAME]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b + i) as u8).collect())
            .collect();
        for f in &frames {
            deliver(&mut dev, f);
        }
        let mut out = Vec::new();
        assert_eq!(rx.burst(&mut out, 3, &mut cache, &mut stats), 3);
        assert_eq!(rx.burst(&mut out, 32, &mut cache, &mut stats), 1);
        assert_eq!(rx.burst(&mut out, 32, &mut cache, &mut stats), 0);
        for (p, f) in out.iter().zip(&frames) {
            assert_eq!(p.offset(), RX_HEADROOM);
            assert_eq!(&p.to_vec(), f);
            assert_eq!(p.iova(), p.buf().iova().add(RX_HEADROOM as u64));
        }
        assert_eq!(stats.rx_packets, 4);
        assert_eq!(
            stats.rx_bytes,
            frames.iter().map(|f| f.len() as u64).sum::<u64>()
        );
        assert_eq!(rx.posted(), 8, "consumed buffers were replaced");
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors_and_their_buffers_reused() {
        let (mut rx, mut dev, pool, mut cache) = setup(4, 4);
        let mut stats = Stats::default();
        rx.refill(&mut cache);
        deliver(&mut dev, &vec![0xab; MAX_FRAME + 1]);
        let (head, _) = dev.pop_avail().unwrap();
        dev.push_used(head as u32, 5); // shorter than the header
        deliver(&mut dev, &[7u8; 64]);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 1);
        assert_eq!(out[0].to_vec(), [7u8; 64]);
        assert_eq!(
            (stats.rx_errors, stats.rx_packets, stats.rx_bytes),
            (2, 1, 64)
        );
        // The pool had only four buffers: the two bad ones went back on the ring.
        assert_eq!(rx.posted(), 3);
        drop(out);
        rx.refill(&mut cache);
        assert_eq!(rx.posted(), 4);
        drop(cache);
        drop(rx);
        assert_eq!(pool.pool().available(), 4);
    }

    #[test]
    fn a_dry_pool_leaves_the_ring_short_until_buffers_return() {
        let (mut rx, mut dev, _pool, mut cache) = setup(8, 3);
        let mut stats = Stats::default();
        assert_eq!(rx.refill(&mut cache), 3);
        for _ in 0..3 {
            deliver(&mut dev, &[1u8; 60]);
        }
        let mut out = Vec::new();
        assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 3);
        assert_eq!(rx.posted(), 0);
        for p in out.drain(..) {
            cache.free(p.into_buf()).unwrap();
        }
        assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 0);
        assert_eq!(rx.posted(), 3);
    }

    #[test]
    fn bad_used_entries_finish_nothing() {
        let (mut rx, mut dev, pool, mut cache) = setup(4, 8);
        let mut stats = Stats::default();
        rx.refill(&mut cache);
        let (head, chain) = dev.pop_avail().unwrap();
        // Ids out of range, a descriptor that is no head in flight, and a
        // length past the end of the buffer the device was given.
        dev.push_used(4, 60 + NET_HDR_LEN as u32);
        dev.push_used(u32::MAX, 60 + NET_HDR_LEN as u32);
        dev.push_used(head as u32, chain[0].len + 1);
        let mut out = Vec::new();
        // A bad entry ends its burst (one error each): three bursts.
        for _ in 0..3 {
            assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 0);
        }
        assert_eq!((stats.rx_errors, stats.rx_packets), (3, 0));
        // The over-long one's buffer went back to the device; the bogus ids
        // took nothing away from it.
        assert_eq!(rx.posted(), 4);
        // used.idx running past what is in flight finishes nothing either.
        for _ in 0..9 {
            dev.push_used(0, 100);
        }
        assert_eq!(rx.burst(&mut out, 32, &mut cache, &mut stats), 0);
        assert_eq!((stats.rx_errors, rx.posted()), (4, 4));
        drop(out);
        drop(cache);
        drop(rx);
        assert_eq!(pool.pool().available(), 8, "every buffer home");
    }

    /// Times `BURSTS` receive bursts of `BURST` frames on `rx`: `deliver`
    /// (the model, untimed) returns that many buffers used, then `burst`
    /// takes them and refills the ring (timed). Nanoseconds per frame.
    fn time_bursts(rx: &mut RxQueue, cache: &mut PoolCache, mut deliver: impl FnMut()) -> f64 {
        const BURST: usize = 32;
        const BURSTS: usize = 20_000;
        let (mut stats, mut out) = (Stats::default(), Vec::with_capacity(BURST));
        rx.refill(cache);
        let mut timed = std::time::Duration::ZERO;
        for _ in 0..BURSTS {
            deliver();
            let t = std::time::Instant::now();
            assert_eq!(rx.burst(&mut out, BURST, cache, &mut stats), BURST);
            cache.free_all(out.drain(..).map(Packet::into_buf));
            timed += t.elapsed();
        }
        timed.as_nanos() as f64 / (BURST * BURSTS) as f64
    }

    /// Driver cost of receiving on split against packed rings, rounds
    /// interleaved; prints the medians and their ratio, asserts nothing
    /// about time. `cargo test -p fastlane-nic --release --lib --
    /// --ignored --nocapture driver_cost`
    #[test]
    #[ignore]
    fn driver_cost_split_vs_packed() {
        use super::super::sim::packed_pair;
        let pool = PacketPool::new_unmapped(1024).unwrap();
        let written = NET_HDR_LEN as u32 + 60;
        let mut ns = [Vec::new(), Vec::new()];
        for round in 0..10 {
            let mut cache = pool.cache(256);
            let packed = round % 2 == 1;
            let t = if packed {
                let (q, mut dev) = packed_pair(256);
                time_bursts(&mut RxQueue::new(q), &mut cache, || {
                    for _ in 0..32 {
                        let (id, chain) = dev.pop_avail().unwrap();
                        dev.push_used(id, written, chain.len() as u16);
                    }
                })
            } else {
                let (q, mut dev) = queue_pair(256);
                time_bursts(&mut RxQueue::new(q), &mut cache, || {
                    for _ in 0..32 {
                        let (head, _) = dev.pop_avail().unwrap();
                        dev.push_used(head as u32, written);
                    }
                })
            };
            ns[packed as usize].push(t);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (split, packed) = (median(&mut ns[0]), median(&mut ns[1]));
        println!(
            "rx_burst of 32, driver only: split {split:.1} ns/frame, packed {packed:.1} ns/frame, packed/split {:.2}",
            packed / split
        );
    }

    #[test]
    fn frame_length_bounds() {
        assert_eq!(frame_len(12, 2048), Some(0));
        assert_eq!(frame_len(11, 2048), None);
        assert_eq!(
            frame_len((NET_HDR_LEN + MAX_FRAME) as u32, 2048),
            Some(MAX_FRAME)
        );
        assert_eq!(frame_len((NET_HDR_LEN + MAX_FRAME + 1) as u32, 2048), None);
        assert_eq!(frame_len(1000, HDR_AT + 999), None);
    }
}
