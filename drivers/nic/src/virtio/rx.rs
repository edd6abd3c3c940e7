//! The receive queue (receiveq1, virtio spec §5.1.6.3, §5.1.6.4).
//!
//! Every buffer is posted as one device-writable descriptor that starts
//! [`NET_HDR_LEN`] bytes before [`RX_HEADROOM`]: the device writes its
//! `virtio_net_hdr` there and the frame right after it, so the frame starts
//! at `RX_HEADROOM` and becomes a [`Packet`] with that offset, no copy.
//!
//! With mergeable receive buffers (VIRTIO_NET_F_MRG_RXBUF, for an MTU
//! above 1500) each descriptor takes at most a header and [`MAX_FRAME`]
//! bytes, and a longer frame spans `num_buffers` used entries: the first
//! with the header (the frame's head, at `RX_HEADROOM` as above), the
//! others frame bytes only, from the descriptor's start. They become one
//! multi-buffer [`Packet`]. A frame the device describes wrongly (0 or
//! more buffers than the port's largest frame needs, a piece past its
//! descriptor or empty, the ring running out mid-frame) is dropped whole:
//! one `rx_errors`, every buffer back on the ring.
//!
//! With VIRTIO_NET_F_GUEST_CSUM (negotiated only when
//! [`crate::NicConfig::rx_checksum`] asks) the header's flags become the
//! packet's [`rx_status`]: DATA_VALID says the device checked the TCP/UDP
//! checksum; NEEDS_CSUM says the frame came from a local stack that left
//! its TCP/UDP checksum partial (and validated everything else): the
//! driver completes it in software, so the frame is right on our side
//! too. QEMU's virtio-net behind a hub (`-netdev hubport`, no vnet header
//! on the peer) offers neither checksum feature and writes flags 0; on a
//! tap with a vnet header the host kernel's flags come through.

use fastlane_framework::{DmaBuf, PoolCache};

use super::ring::Ring;
use super::spec::{
    VirtioNetHdr, NET_HDR_LEN, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
};
use super::virtqueue::Segment;
#[cfg(test)]
use crate::packet::PACKET_BUF_SIZE;
use crate::proto::{checksum_fold, ETHERTYPE_IPV4, ETH_HLEN, IPPROTO_UDP};
use crate::{rx_status, Packet, Stats, HEADROOM, MAX_FRAME};

/// Where a received frame starts in its buffer: the drivers' common
/// [`HEADROOM`]. What is in front of it holds the device's header, and
/// later a transmit header if the packet is sent on by a virtio port.
pub const RX_HEADROOM: usize = HEADROOM;
/// Where the device writes the header.
const HDR_AT: usize = RX_HEADROOM - NET_HDR_LEN;
/// Bytes a descriptor takes with mergeable buffers: a header and at most
/// [`MAX_FRAME`] frame bytes, so that a frame's first buffer is a
/// one-buffer [`Packet`] when the frame fits one.
const MERGEABLE_DESC_LEN: u32 = (NET_HDR_LEN + MAX_FRAME) as u32;

/// The frame length for `written` bytes of header and frame in a buffer of
/// `buf_len` bytes; None when it is no valid frame (shorter than the
/// header, longer than MAX_FRAME, or past the buffer).
pub fn frame_len(written: u32, buf_len: usize) -> Option<usize> {
    let frame = (written as usize).checked_sub(NET_HDR_LEN)?;
    (frame <= MAX_FRAME && HDR_AT + written as usize <= buf_len).then_some(frame)
}

/// Buffers a frame of up to `max_frame` bytes takes with mergeable
/// buffers: a header and [`MAX_FRAME`] bytes in each.
pub fn mergeable_buffers(max_frame: usize) -> usize {
    (NET_HDR_LEN + max_frame).div_ceil(MERGEABLE_DESC_LEN as usize)
}

/// How the receive queue reads what the device wrote, from the features
/// negotiated and the port's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxMode {
    /// VIRTIO_NET_F_MRG_RXBUF: frames span `num_buffers` buffers.
    pub mergeable: bool,
    /// VIRTIO_NET_F_GUEST_CSUM with `rx_checksum` asked: header flags
    /// become [`rx_status`] bits.
    pub checksum: bool,
    /// The longest frame the port takes (without FCS).
    pub max_frame: usize,
}

impl Default for RxMode {
    fn default() -> RxMode {
        RxMode {
            mergeable: false,
            checksum: false,
            max_frame: MAX_FRAME,
        }
    }
}

/// A frame dropped while it was read: why (for the log).
type Dropped = &'static str;

pub struct RxQueue {
    vq: Ring<DmaBuf>,
    /// Bytes of each posted descriptor (header included): the buffers all
    /// come from the port's pool, of one size.
    desc_len: u32,
    /// Whether frames need more than the one-buffer path (mergeable
    /// buffers, checksum flags): one predictable branch per burst.
    extended: bool,
    mode: RxMode,
    /// Most buffers one frame may take.
    max_bufs: usize,
    /// The pieces of the frame being read (kept to reuse the allocation).
    pieces: Vec<(DmaBuf, u32)>,
}

impl RxQueue {
    /// A queue of one-buffer frames without checksum flags, for buffers
    /// of [`PACKET_BUF_SIZE`] (tests).
    #[cfg(test)]
    pub fn new(vq: impl Into<Ring<DmaBuf>>) -> RxQueue {
        RxQueue::with_mode(vq, RxMode::default(), PACKET_BUF_SIZE)
    }

    /// A queue reading frames as `mode` says, into buffers of `buf_size`
    /// bytes (at least `RX_HEADROOM` + [`MAX_FRAME`], checked at open).
    pub fn with_mode(vq: impl Into<Ring<DmaBuf>>, mode: RxMode, buf_size: usize) -> RxQueue {
        let max_bufs = match mode.mergeable {
            true => mergeable_buffers(mode.max_frame),
            false => 1,
        };
        RxQueue {
            vq: vq.into(),
            desc_len: match mode.mergeable {
                true => MERGEABLE_DESC_LEN,
                false => buf_size.saturating_sub(HDR_AT).min(u32::MAX as usize) as u32,
            },
            extended: mode.mergeable || mode.checksum,
            mode,
            max_bufs,
            pieces: Vec::with_capacity(max_bufs),
        }
    }

    /// Buffers the device holds.
    pub fn posted(&self) -> usize {
        self.vq.in_flight()
    }

    /// Bytes the device may write into `buf` (header included): what was
    /// posted, never past the buffer.
    #[inline(always)]
    fn desc_len(&self, buf: &DmaBuf) -> u32 {
        self.desc_len.min(buf.len().saturating_sub(HDR_AT) as u32)
    }

    fn post(&mut self, buf: DmaBuf, cache: &mut PoolCache) {
        let seg = Segment {
            addr: buf.iova().add(HDR_AT as u64),
            len: self.desc_len,
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
    #[inline(always)]
    pub fn burst(
        &mut self,
        out: &mut Vec<Packet>,
        max: usize,
        cache: &mut PoolCache,
        stats: &mut Stats,
    ) -> usize {
        match self.extended {
            false => self.burst_plain(out, max, cache, stats),
            true => self.burst_extended(out, max, cache, stats),
        }
    }

    /// The next used buffer and the bytes written in it, if any; a bad used
    /// entry is one error (and ends the caller's burst).
    #[inline(always)]
    fn next_used(&mut self, stats: &mut Stats) -> Option<(DmaBuf, u32)> {
        match self.vq.pop_used() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-net receive queue: {e}");
                stats.rx_errors += 1;
                None
            }
        }
    }

    /// [`RxQueue::burst`] of one-buffer frames, the header not read.
    #[inline(never)]
    fn burst_plain(
        &mut self,
        out: &mut Vec<Packet>,
        max: usize,
        cache: &mut PoolCache,
        stats: &mut Stats,
    ) -> usize {
        let mut got = 0;
        // Bounded by `max`; a broken ring costs one error per burst.
        for _ in 0..max {
            let Some((buf, written)) = self.next_used(stats) else {
                break;
            };
            match frame_len(written, buf.len()) {
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
            }
        }
        self.refill(cache);
        got
    }

    /// [`RxQueue::burst`] with mergeable buffers or checksum flags: frames
    /// over several used entries, the header read.
    #[inline(never)]
    fn burst_extended(
        &mut self,
        out: &mut Vec<Packet>,
        max: usize,
        cache: &mut PoolCache,
        stats: &mut Stats,
    ) -> usize {
        let mut got = 0;
        // Bounded by `max` frames, each by `max_bufs` (or the buffers in
        // flight) used entries.
        for _ in 0..max {
            let Some((buf, written)) = self.next_used(stats) else {
                break;
            };
            let (frame, cut) = self.read_frame(buf, written);
            match frame {
                Ok(p) => {
                    stats.rx_packets += 1;
                    stats.rx_bytes += p.len() as u64;
                    out.push(p);
                    got += 1;
                }
                Err(why) => {
                    log::debug!("virtio-net receive queue: frame dropped: {why}");
                    stats.rx_errors += 1;
                    while let Some((b, _)) = self.pieces.pop() {
                        self.post(b, cache);
                    }
                }
            }
            if cut {
                break;
            }
        }
        self.refill(cache);
        got
    }

    /// Reads the frame whose first used entry is `buf` with `written`
    /// bytes, taking its further entries from the ring. On error every
    /// buffer of the frame is left in `self.pieces` (to post again); the
    /// flag says the ring ended or broke mid-frame (the burst stops).
    fn read_frame(&mut self, buf: DmaBuf, written: u32) -> (Result<Packet, Dropped>, bool) {
        self.pieces.clear();
        let first_ok = written as usize >= NET_HDR_LEN && written <= self.desc_len(&buf);
        let mut hdr = VirtioNetHdr::default();
        // Inside the buffer: it was posted from HDR_AT.
        let _ = buf.read(HDR_AT, bytemuck::bytes_of_mut(&mut hdr));
        self.pieces.push((buf, written));
        if !first_ok {
            return (
                Err("a first buffer shorter than the header or past its descriptor"),
                false,
            );
        }
        let nb = match self.mode.mergeable {
            true => usize::from(hdr.num_buffers),
            false => 1,
        };
        if nb == 0 || nb - 1 > self.vq.in_flight() {
            // Which entries would be this frame's is unknowable: only this
            // buffer is dropped.
            return (Err("num_buffers 0 or more than the buffers posted"), false);
        }
        let mut why = None;
        if nb > self.max_bufs {
            why = Some("a frame over more buffers than the port's largest frame needs");
        }
        let mut total = written as usize - NET_HDR_LEN;
        for _ in 1..nb {
            match self.vq.pop_used() {
                Ok(Some((b, w))) => {
                    if w == 0 || w > self.desc_len(&b) {
                        why = why.or(Some("an empty piece or one past its descriptor"));
                    }
                    total += w as usize;
                    self.pieces.push((b, w));
                }
                Ok(None) => return (Err("the ring ran out in the middle of a frame"), true),
                Err(e) => {
                    log::error!("virtio-net receive queue: {e}");
                    return (Err("a bad used entry in the middle of a frame"), true);
                }
            }
        }
        if let Some(why) = why {
            return (Err(why), false);
        }
        if total > self.mode.max_frame {
            return (Err("a frame longer than the port's largest"), false);
        }
        if total > MAX_FRAME && nb == 1 {
            return (Err("a one-buffer frame longer than MAX_FRAME"), false);
        }
        (self.build(hdr, total), false)
    }

    /// The packet of the pieces in `self.pieces` (checked by `read_frame`),
    /// its checksum status from `hdr`. A bad checksum request leaves the
    /// pieces there; an error after the checks (none is expected) drops
    /// the buffers to their pool.
    fn build(&mut self, hdr: VirtioNetHdr, total: usize) -> Result<Packet, Dropped> {
        if self.mode.checksum && hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            let (start, off) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
            if start.checked_add(off).is_none_or(|f| f + 2 > total) {
                return Err("NEEDS_CSUM with csum_start/csum_offset outside the frame");
            }
        }
        let checksum = self.mode.checksum;
        // Buffers not taken on an error below go back to their pool.
        let mut pieces = self.pieces.drain(..);
        let Some((first, w0)) = pieces.next() else {
            return Err("no buffer");
        };
        // Checked: the header fits, the head is at most MAX_FRAME. (Not
        // `Packet::with_offset`: a second caller of it here makes the
        // compiler stop inlining it into the one-buffer burst, 40
        // instructions per frame there.)
        let mut p =
            Packet::piece(first, HDR_AT + w0 as usize).map_err(|_| "a head past its buffer")?;
        p.trim_front(RX_HEADROOM)
            .map_err(|_| "a head shorter than the header")?;
        for (b, w) in pieces.by_ref() {
            let mut seg =
                Packet::piece(b, HDR_AT + w as usize).map_err(|_| "a piece past its buffer")?;
            seg.trim_front(HDR_AT)
                .map_err(|_| "a piece shorter than its offset")?;
            p.push_segment(seg)
                .map_err(|_| "a frame the packet cannot hold")?;
        }
        if checksum {
            let flags = checksum_status(&mut p, &hdr);
            p.set_rx_status(flags);
        }
        Ok(p)
    }

    /// Every buffer back (the device must be reset first).
    pub fn drain(&mut self) -> Vec<DmaBuf> {
        self.vq.drain()
    }
}

/// The [`rx_status`] bits for a frame whose header has `hdr.flags`: a
/// NEEDS_CSUM frame gets its checksum completed here (the caller checked
/// that `csum_start + csum_offset + 2` is inside the frame).
fn checksum_status(p: &mut Packet, hdr: &VirtioNetHdr) -> u16 {
    let udp = is_ipv4_udp(p) as u16 * rx_status::UDP;
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let start = usize::from(hdr.csum_start);
        let at = start + usize::from(hdr.csum_offset);
        let mut c = checksum_fold(sum_from(p, start));
        if c == 0 && udp != 0 {
            c = 0xffff;
        }
        write_at(p, at, c.to_be_bytes());
        // §5.1.6.4.1: the checksums before it were validated too.
        return udp | rx_status::L4_CHECKED | rx_status::IP_CHECKED;
    }
    if hdr.flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 {
        // One level of checksums validated: the TCP/UDP one.
        return udp | rx_status::L4_CHECKED;
    }
    0
}

/// Whether the frame is untagged IPv4 carrying UDP.
fn is_ipv4_udp(p: &mut Packet) -> bool {
    let f = p.data();
    f.len() > ETH_HLEN + 9
        && f[12..14] == ETHERTYPE_IPV4.to_be_bytes()
        && f[ETH_HLEN + 9] == IPPROTO_UDP
}

/// The ones' complement sum (unfolded) of the frame's bytes from `start`
/// to its end, across its buffers (a buffer may end on an odd byte).
fn sum_from(p: &mut Packet, start: usize) -> u64 {
    let (mut sum, mut at, mut odd) = (0u64, 0usize, false);
    for seg in p.segments_mut() {
        let skip = start.saturating_sub(at).min(seg.len());
        at += seg.len();
        for &b in &seg[skip..] {
            sum += if odd { u64::from(b) } else { u64::from(b) << 8 };
            odd = !odd;
        }
    }
    sum
}

/// Writes `bytes` at frame offset `at`, across buffers (checked by the
/// caller to be inside the frame).
fn write_at(p: &mut Packet, at: usize, bytes: [u8; 2]) {
    let mut pos = 0usize;
    for seg in p.segments_mut() {
        let end = pos + seg.len();
        let (lo, hi) = (at.max(pos), (at + 2).min(end));
        if lo < hi {
            seg[lo - pos..hi - pos].copy_from_slice(&bytes[lo - at..hi - at]);
        }
        pos = end;
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::sim::{pattern, queue_pair, SimQueue};
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

    /// A queue with `mode`, its device side, a pool of `buffers`.
    fn setup_mode(
        size: u16,
        buffers: u32,
        mode: RxMode,
    ) -> (RxQueue, SimQueue, PacketPool, PoolCache) {
        let (vq, dev) = queue_pair(size);
        let pool = PacketPool::new_unmapped(buffers).unwrap();
        let cache = pool.cache(16);
        (
            RxQueue::with_mode(vq, mode, PACKET_BUF_SIZE),
            dev,
            pool,
            cache,
        )
    }

    const JUMBO: RxMode = RxMode {
        mergeable: true,
        checksum: false,
        max_frame: crate::MAX_JUMBO_FRAME,
    };

    /// Everything in `out` and the queue back: the pool whole again.
    fn all_home(out: Vec<Packet>, rx: RxQueue, cache: PoolCache, pool: &PacketPool, n: u32) {
        drop(out);
        drop(cache);
        drop(rx);
        assert_eq!(pool.pool().available(), n as usize, "every buffer home");
    }

    #[test]
    fn mergeable_frames_arrive_as_one_packet_over_several_buffers() {
        let (mut rx, mut dev, pool, mut cache) = setup_mode(64, 128, JUMBO);
        let mut stats = Stats::default();
        rx.refill(&mut cache);
        // Every descriptor takes a header and at most MAX_FRAME bytes.
        let (head, chain) = (0..1).map(|_| dev.pop_avail().unwrap()).next().unwrap();
        assert_eq!(chain[0].len as usize, NET_HDR_LEN + MAX_FRAME);
        dev.write_buf(
            &chain[0],
            bytemuck::bytes_of(&VirtioNetHdr {
                num_buffers: 1,
                ..Default::default()
            }),
        );
        dev.push_used(head as u32, NET_HDR_LEN as u32 + 60); // stale bytes: fine
        let sizes = [1514usize, 1515, 3000, 3052, 9013, 9014];
        let frames: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, i))
            .collect();
        let mut bufs = Vec::new();
        for f in &frames {
            bufs.push(dev.receive_mergeable(VirtioNetHdr::default(), f, None));
        }
        // 1526 bytes per buffer, the header in the first.
        assert_eq!(bufs, [1, 2, 2, 3, 6, 6]);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&mut out, 32, &mut cache, &mut stats), 7);
        assert_eq!(out[0].len(), 60);
        for ((p, f), n) in out[1..].iter_mut().zip(&frames).zip(bufs) {
            assert_eq!(p.len(), f.len());
            assert_eq!(&p.to_vec(), f, "{} bytes", f.len());
            assert_eq!((p.segment_count(), p.is_multi()), (n, n > 1));
            assert_eq!(p.offset(), RX_HEADROOM, "the head keeps its headroom");
            assert_eq!(p.seg_len(), f.len().min(MAX_FRAME));
            assert_eq!(p.rx_status(), 0);
        }
        assert_eq!((stats.rx_packets, stats.rx_errors), (7, 0));
        assert_eq!(stats.rx_bytes, 60 + sizes.iter().sum::<usize>() as u64);
        assert_eq!(rx.posted(), 64, "the ring was refilled");
        all_home(out, rx, cache, &pool, 128);
    }

    #[test]
    fn mergeable_frames_on_a_packed_ring() {
        use super::super::sim::packed_pair;
        let (q, mut dev) = packed_pair(32);
        let pool = PacketPool::new_unmapped(64).unwrap();
        let mut cache = pool.cache(16);
        let mut rx = RxQueue::with_mode(q, JUMBO, PACKET_BUF_SIZE);
        let mut stats = Stats::default();
        rx.refill(&mut cache);
        let f = pattern(9014, 3);
        assert_eq!(dev.receive_mergeable(VirtioNetHdr::default(), &f), 6);
        let g = pattern(100, 4);
        assert_eq!(dev.receive_mergeable(VirtioNetHdr::default(), &g), 1);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 2);
        assert_eq!((out[0].to_vec(), out[0].segment_count()), (f, 6));
        assert_eq!(out[1].to_vec(), g);
        all_home(out, rx, cache, &pool, 64);
    }

    /// One hostile delivery: the frame is dropped with one error, every
    /// buffer goes back to the device, and the next honest frame arrives.
    fn hostile(deliver: impl FnOnce(&mut SimQueue), mode: RxMode, burst_stops: bool) {
        let (mut rx, mut dev, pool, mut cache) = setup_mode(16, 16, mode);
        let mut stats = Stats::default();
        rx.refill(&mut cache);
        assert_eq!(rx.posted(), 16);
        deliver(&mut dev);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 0);
        assert_eq!((stats.rx_errors, stats.rx_packets), (1, 0));
        assert_eq!(rx.posted(), 16, "no buffer lost");
        if burst_stops {
            // What is left of the cut frame arrives as nonsense: errors only.
            while rx.burst(&mut out, 8, &mut cache, &mut stats) > 0 {}
            assert!(out.is_empty());
        }
        let good = pattern(mode.max_frame.min(4000), 9);
        dev.receive_mergeable(VirtioNetHdr::default(), &good, None);
        assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 1);
        assert_eq!(out[0].to_vec(), good);
        all_home(out, rx, cache, &pool, 16);
    }

    fn with_num_buffers(n: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            num_buffers: n,
            ..Default::default()
        }
    }

    #[test]
    fn num_buffers_zero_or_beyond_the_ring_drops_only_that_buffer() {
        for n in [0u16, 17, 1000, u16::MAX] {
            hostile(
                |dev| {
                    // One buffer used, its header claiming `n` (0 is
                    // rewritten by the model, so write it raw).
                    let (head, chain) = dev.pop_avail().unwrap();
                    let mut b = bytemuck::bytes_of(&with_num_buffers(n)).to_vec();
                    b.extend_from_slice(&[1; 60]);
                    dev.write_buf(&chain[0], &b);
                    dev.push_used(head as u32, b.len() as u32);
                },
                JUMBO,
                false,
            );
        }
    }

    #[test]
    fn a_frame_longer_than_the_port_takes_is_dropped_whole() {
        let small = RxMode {
            max_frame: 3000,
            ..JUMBO
        };
        // Over more buffers than 3000 bytes need (6 > 2), and within the
        // buffers but over 3000 bytes.
        hostile(
            |dev| {
                dev.receive_mergeable(VirtioNetHdr::default(), &[2; 9014], None);
            },
            small,
            false,
        );
        hostile(
            |dev| {
                dev.receive_mergeable(VirtioNetHdr::default(), &[2; 3001], None);
            },
            small,
            false,
        );
    }

    #[test]
    fn pieces_past_their_descriptor_or_empty_drop_the_frame() {
        for (second, third) in [
            (0u32, 100u32),
            (100, 0),
            (NET_HDR_LEN as u32 + MAX_FRAME as u32 + 1, 100),
            (100, u32::MAX),
        ] {
            hostile(
                |dev| {
                    let taken: Vec<_> = (0..3).map(|_| dev.pop_avail().unwrap()).collect();
                    // The first buffer's header says 3 (stale frame bytes).
                    dev.write_buf(&taken[0].1[0], bytemuck::bytes_of(&with_num_buffers(3)));
                    for (&(head, _), len) in taken.iter().zip([1000, second, third]) {
                        dev.push_used(head as u32, len);
                    }
                },
                JUMBO,
                false,
            );
        }
    }

    #[test]
    fn a_frame_cut_by_an_empty_ring_is_dropped() {
        hostile(
            |dev| {
                // Three buffers taken, two published.
                assert_eq!(
                    dev.receive_mergeable(VirtioNetHdr::default(), &[3; 4000], Some(2)),
                    3
                );
            },
            JUMBO,
            true,
        );
    }

    /// A UDP/IPv4 frame of `payload` bytes from a local stack that left the
    /// UDP checksum partial (the pseudo-header sum), and its header.
    fn partial_udp(payload: usize) -> (Vec<u8>, VirtioNetHdr) {
        use crate::proto::{pseudo_header_sum, UDP_OFFSET};
        let mut f = super::super::sim::udp_frame(payload);
        let udp_len = (payload + 8) as u16;
        let seed = !checksum_fold(pseudo_header_sum(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            IPPROTO_UDP,
            udp_len,
        ));
        f[UDP_OFFSET + 6..UDP_OFFSET + 8].copy_from_slice(&seed.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: UDP_OFFSET as u16,
            csum_offset: 6,
            ..Default::default()
        };
        (f, hdr)
    }

    #[test]
    fn checksum_flags_become_verdicts_and_partial_checksums_are_completed() {
        use crate::proto::parse_udp_frame;
        use crate::RxChecksum::{Good, NotChecked};
        let mode = RxMode {
            checksum: true,
            ..JUMBO
        };
        let (mut rx, mut dev, pool, mut cache) = setup_mode(32, 64, mode);
        let mut stats = Stats::default();
        rx.refill(&mut cache);
        // The frame with its checksum completed: what the driver must turn
        // the partial one into.
        let (mut good, _) = partial_udp(100);
        {
            use crate::proto::{udp_checksum, UDP_OFFSET};
            good[UDP_OFFSET + 6..UDP_OFFSET + 8].fill(0);
            let c = udp_checksum([10, 0, 0, 1], [10, 0, 0, 2], &good[UDP_OFFSET..]).unwrap();
            good[UDP_OFFSET + 6..UDP_OFFSET + 8].copy_from_slice(&c.to_be_bytes());
        }
        let full = good.clone();
        let valid = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            ..Default::default()
        };
        dev.receive_mergeable(valid, &good, None);
        dev.receive_mergeable(VirtioNetHdr::default(), &good, None);
        let (partial, hdr) = partial_udp(100);
        dev.receive_mergeable(hdr, &partial, None);
        // A jumbo one, its checksum summed across six buffers.
        let (partial_jumbo, hdr_jumbo) = partial_udp(8972);
        assert_eq!(partial_jumbo.len(), 9014);
        dev.receive_mergeable(hdr_jumbo, &partial_jumbo, None);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 4);
        assert_eq!(
            (out[0].rx_l4_checksum(), out[0].rx_ip_checksum()),
            (Good, NotChecked)
        );
        assert_ne!(out[0].rx_status() & rx_status::UDP, 0);
        assert_eq!(
            (out[1].rx_l4_checksum(), out[1].rx_status()),
            (NotChecked, 0)
        );
        assert_eq!(
            (out[2].rx_l4_checksum(), out[2].rx_ip_checksum()),
            (Good, Good)
        );
        assert_eq!(out[2].to_vec(), full, "the partial checksum completed");
        assert!(parse_udp_frame(&out[2].to_vec()).is_ok());
        assert_eq!(out[3].segment_count(), 6);
        assert!(
            parse_udp_frame(&out[3].to_vec()).is_ok(),
            "completed across buffers"
        );
        assert_eq!(out[3].rx_l4_checksum(), Good);
        // csum_start/csum_offset outside the frame: dropped, counted.
        for (start, off) in [(9000u16, 100u16), (u16::MAX, u16::MAX), (60, 0)] {
            let bad = VirtioNetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                csum_start: start,
                csum_offset: off,
                ..Default::default()
            };
            dev.receive_mergeable(bad, &[0; 61], None);
        }
        assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 0);
        assert_eq!((stats.rx_errors, stats.rx_packets), (3, 4));
        all_home(out, rx, cache, &pool, 64);
    }

    #[test]
    fn without_the_checksum_mode_header_flags_are_not_reported() {
        let (mut rx, mut dev, pool, mut cache) = setup(8, 16);
        let mut stats = Stats::default();
        rx.refill(&mut cache);
        let (partial, hdr) = partial_udp(50);
        let (head, chain) = dev.pop_avail().unwrap();
        let mut b = bytemuck::bytes_of(&hdr).to_vec();
        b.extend_from_slice(&partial);
        dev.write_buf(&chain[0], &b);
        dev.push_used(head as u32, b.len() as u32);
        let mut out = Vec::new();
        assert_eq!(rx.burst(&mut out, 8, &mut cache, &mut stats), 1);
        assert_eq!((out[0].rx_status(), out[0].to_vec()), (0, partial));
        all_home(out, rx, cache, &pool, 16);
    }

    #[test]
    fn buffers_per_frame() {
        assert_eq!(mergeable_buffers(MAX_FRAME), 1);
        assert_eq!(mergeable_buffers(MAX_FRAME + 1), 2);
        assert_eq!(mergeable_buffers(crate::MAX_JUMBO_FRAME), 6);
    }
}
