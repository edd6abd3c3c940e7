//! Packets: a DMA buffer from a framework pool plus the frame length, and
//! where in the buffer the frame starts.
//!
//! A frame is `len` bytes at [`Packet::offset`] in its buffer; what lies in
//! front of it is headroom, what lies behind it tailroom. Packets the
//! drivers allocate, and those virtio-net receives (its device header sits
//! there), have [`HEADROOM`] bytes in front; igb receives at the buffer's
//! start. A header is prepended ([`Packet::prepend`]) or stripped
//! ([`Packet::trim_front`]) without moving the frame. The frame's bytes are read and written in
//! place ([`Packet::data`], [`Packet::data_mut`]); [`Packet::iova`],
//! [`Packet::to_vec`] and [`Packet::write`] all address the frame, not the
//! buffer. Transmit paths must use `Packet::iova()`, not the buffer's IOVA.
//!
//! A frame longer than one buffer (a jumbo frame, up to
//! [`MAX_JUMBO_FRAME`] bytes) is one packet of several buffers: the first
//! is the packet's own, the rest follow in order ([`Packet::segments_mut`],
//! [`Packet::segment_count`]). [`Packet::len`] is always the whole frame;
//! [`Packet::data`] and [`Packet::data_mut`] are the first buffer's part
//! (all of it for a one-buffer frame), where the headers are.
//! [`Packet::write`], [`Packet::to_vec`] and [`Packet::read`] cover the
//! whole frame.
//!
//! A view of a packet's bytes borrows the packet, so it ends before the
//! packet goes to `tx_burst` (which may hand it to the device):
//! ```compile_fail,E0499
//! # use fastlane_nic::{Nic, Packet};
//! fn send(port: &mut dyn Nic, pkts: &mut Vec<Packet>) {
//!     let hdr = pkts[0].data_mut();
//!     port.tx_burst(pkts);
//!     hdr[0] = 0xff; // the device may be reading the frame by now
//! }
//! ```
//! ```compile_fail,E0505
//! # use fastlane_nic::{Nic, Packet};
//! fn send(port: &mut dyn Nic, mut pkt: Packet) {
//!     let bytes = pkt.data();
//!     port.tx_burst(&mut vec![pkt]);
//!     assert_eq!(bytes[0], 0);
//! }
//! ```

use fastlane_framework::{BufferPool, DmaBuf, Iova, PageSize, PoolCache, Vfio};

use crate::{NicError, Result, MAX_FRAME, MAX_JUMBO_FRAME};

/// Bytes the drivers leave in front of the frames they allocate
/// ([`crate::Nic::alloc_packet`]) and virtio-net in front of those it
/// receives: room to prepend headers (a VLAN tag, a tunnel) in place. igb
/// receives at the buffer's start: the NIC may fill the whole 2 KiB.
pub const HEADROOM: usize = 128;
/// Bytes per packet buffer: one standard frame plus room. A power of two,
/// so that no buffer straddles a hugepage: QEMU's igb drops a transmit
/// buffer it cannot map in one piece through the IOMMU (with 2176-byte
/// buffers, one frame in 964 never left the port).
pub const PACKET_BUF_SIZE: usize = 2048;

/// A frame in a DMA buffer (or several: see the module's doc).
#[derive(Debug)]
pub struct Packet {
    buf: DmaBuf,
    /// Bytes of headroom before the frame (low 16 bits); the VLAN tag the
    /// receiving NIC stripped (high 16).
    off_tci: u32,
    /// Frame bytes, all buffers together (low 16 bits); the receiving
    /// NIC's [`rx_status`] flags (bits 16-30), 0 for a packet not received;
    /// [`MULTI`] (bit 31) set exactly when `more` is. Halves of two words,
    /// so that a burst that reports nothing builds a packet exactly as
    /// before: two 32-bit stores.
    len_flags: u32,
    /// The further buffers of a multi-buffer frame; `None` for the common
    /// one-buffer frame (one pointer, so that case stays small).
    more: Option<Box<Chain>>,
}

/// In `len_flags`: the frame has further buffers. Kept beside the length
/// so that a transmit path's length check also refuses multi-buffer frames
/// ([`Packet::len_or_multi`]) without a second test.
const MULTI: u32 = 1 << 31;

/// The buffers behind the first one of a multi-buffer frame.
#[derive(Debug)]
struct Chain {
    /// Frame bytes in the first buffer.
    head_len: u16,
    /// The other buffers, in frame order: one-buffer packets (never chains
    /// themselves), each with at least one byte.
    segs: Vec<Packet>,
}

// Small enough to move in a few stores: the buffer handle, offset, length,
// receive status and the chain pointer (receive bursts write one per frame
// into the caller's vector).
const _: () = assert!(std::mem::size_of::<Packet>() == 40);

/// A checksum verdict of the receiving NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxChecksum {
    /// Not checked: the NIC does not check this kind, or the frame has no
    /// such header (not IPv4, not TCP/UDP), or the packet was not received.
    NotChecked,
    /// Checked and right.
    Good,
    /// Checked and wrong: the frame arrived, the application decides.
    Bad,
}

/// Receive status flags of [`Packet`] ([`Packet::rx_status`]), the same
/// for every driver: what the NIC checked and found.
pub mod rx_status {
    /// A VLAN tag was stripped ([`crate::Packet::rx_vlan`]).
    pub const VLAN: u16 = 1 << 0;
    /// The layer-4 header is UDP.
    pub const UDP: u16 = 1 << 1;
    /// The TCP or UDP checksum was checked.
    pub const L4_CHECKED: u16 = 1 << 2;
    /// The IPv4 header checksum was checked.
    pub const IP_CHECKED: u16 = 1 << 3;
    /// The TCP or UDP checksum is wrong.
    pub const L4_BAD: u16 = 1 << 4;
    /// The IPv4 header checksum is wrong.
    pub const IP_BAD: u16 = 1 << 5;
}

impl Packet {
    /// Wraps `buf` as a frame of `len` bytes.
    pub fn new(buf: DmaBuf, len: usize) -> Result<Packet> {
        Packet::with_offset(buf, 0, len)
    }

    /// Wraps `buf` as a frame of `len` bytes starting `offset` bytes into it.
    #[inline]
    pub fn with_offset(buf: DmaBuf, offset: usize, len: usize) -> Result<Packet> {
        if offset > buf.len() {
            return Err(NicError::InvalidArgument(format!(
                "frame offset {offset} outside a {}-byte buffer",
                buf.len()
            )));
        }
        let max = MAX_FRAME.min(buf.len() - offset);
        if len > max {
            return Err(NicError::FrameTooLarge { len, max });
        }
        // Headroom is a few hundred bytes; 64 KiB of it is a mistake.
        let Ok(offset) = u16::try_from(offset) else {
            return Err(NicError::InvalidArgument(format!(
                "frame offset {offset} (at most {})",
                u16::MAX
            )));
        };
        Ok(Packet {
            buf,
            off_tci: u32::from(offset),
            len_flags: len as u32,
            more: None,
        })
    }

    /// A received frame of `len` bytes at the start of `buf`,
    /// without the checks of [`Packet::new`]: for receive paths that
    /// checked `len` against [`MAX_FRAME`] and whose buffers hold
    /// [`MAX_FRAME`] (the igb queue checks its pool's buffer size
    /// once, at creation). Should a length slip through anyway, the byte
    /// accessors see an empty frame rather than bytes past the buffer.
    /// `flags`: [`rx_status`] bits; `tci`: the stripped VLAN tag.
    #[inline(always)]
    pub(crate) fn received(buf: DmaBuf, len: u16, flags: u16, tci: u16) -> Packet {
        debug_assert!(len as usize <= buf.len() && len as usize <= MAX_FRAME);
        Packet {
            buf,
            off_tci: u32::from(tci) << 16,
            len_flags: u32::from(len) | u32::from(flags) << 16,
            more: None,
        }
    }

    /// A piece of a multi-buffer frame as the device wrote it: `len`
    /// bytes at the start of `buf` (at most the buffer, checked).
    pub(crate) fn piece(buf: DmaBuf, len: usize) -> Result<Packet> {
        if len > buf.len() {
            return Err(NicError::Malformed("a frame piece longer than its buffer"));
        }
        Ok(Packet {
            buf,
            off_tci: 0,
            len_flags: len as u32,
            more: None,
        })
    }

    /// Sets the receive status and stripped VLAN tag of a frame a receive
    /// path assembled from several buffers.
    pub(crate) fn set_rx_status_and_tag(&mut self, flags: u16, tci: u16) {
        self.set_rx_status(flags);
        self.off_tci = self.off_tci & 0xffff | u32::from(tci) << 16;
    }

    /// Appends `seg`'s bytes to the frame as a further buffer: how receive
    /// paths assemble a frame the device spread over several buffers, and
    /// how applications build one longer than a buffer. `seg` must be a
    /// one-buffer packet with at least one byte, and the frame stays within
    /// [`MAX_JUMBO_FRAME`]; otherwise `seg` is handed back with the error
    /// and the packet is as it was.
    pub fn push_segment(&mut self, seg: Packet) -> std::result::Result<(), (Packet, NicError)> {
        if seg.more.is_some() || seg.is_empty() {
            return Err((
                seg,
                NicError::InvalidArgument("a segment is one non-empty buffer".into()),
            ));
        }
        let len = self.len() + seg.len();
        if len > MAX_JUMBO_FRAME {
            return Err((
                seg,
                NicError::FrameTooLarge {
                    len,
                    max: MAX_JUMBO_FRAME,
                },
            ));
        }
        let head_len = self.seg_len() as u16;
        self.more
            .get_or_insert_with(|| {
                Box::new(Chain {
                    head_len,
                    segs: Vec::new(),
                })
            })
            .segs
            .push(seg);
        self.set_len_bits(len);
        self.len_flags |= MULTI;
        Ok(())
    }

    /// Buffers behind the frame: 1, or more for a multi-buffer frame.
    #[inline]
    pub fn segment_count(&self) -> usize {
        1 + self.more.as_ref().map_or(0, |c| c.segs.len())
    }

    /// Whether the frame spans several buffers.
    #[inline(always)]
    pub fn is_multi(&self) -> bool {
        self.more.is_some()
    }

    /// Frame bytes in the first buffer (all of them for a one-buffer frame).
    #[inline]
    pub fn seg_len(&self) -> usize {
        match &self.more {
            None => self.len(),
            Some(c) => usize::from(c.head_len),
        }
    }

    /// Each buffer's part of the frame, in order, written in place.
    pub fn segments_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        let (off, head) = (self.offset(), self.seg_len());
        let Packet { buf, more, .. } = self;
        let first = buf
            .as_mut_slice()
            .get_mut(off..off.saturating_add(head))
            .unwrap_or_default();
        let rest = more.iter_mut().flat_map(|c| c.segs.iter_mut()).map(|p| p.data_mut());
        std::iter::once(first).chain(rest)
    }

    /// Splits off the further buffers of a multi-buffer frame (the packet
    /// keeps its first buffer's part), for transmit paths that give each
    /// buffer its own descriptor.
    pub(crate) fn split_segments(&mut self) -> Vec<Packet> {
        match self.more.take() {
            None => Vec::new(),
            Some(c) => {
                self.set_len_bits(usize::from(c.head_len));
                self.len_flags &= !MULTI;
                c.segs
            }
        }
    }

    /// The receiving NIC's verdict on the IPv4 header checksum.
    pub fn rx_ip_checksum(&self) -> RxChecksum {
        verdict(self.rx_status(), rx_status::IP_CHECKED, rx_status::IP_BAD)
    }

    /// The receiving NIC's verdict on the TCP or UDP checksum.
    pub fn rx_l4_checksum(&self) -> RxChecksum {
        verdict(self.rx_status(), rx_status::L4_CHECKED, rx_status::L4_BAD)
    }

    /// The VLAN tag (TCI: priority, DEI, VLAN id) the NIC stripped from
    /// the frame, if it did (VLAN offloads on, a tagged frame).
    pub fn rx_vlan(&self) -> Option<u16> {
        (self.rx_status() & rx_status::VLAN != 0).then_some((self.off_tci >> 16) as u16)
    }

    /// The [`rx_status`] flags (0 for a packet not received, or received
    /// by a port not asked to report them: [`crate::NicConfig::rx_checksum`]).
    pub fn rx_status(&self) -> u16 {
        (self.len_flags >> 16) as u16 & !(MULTI >> 16) as u16
    }

    /// The buffers of a multi-buffer frame after the first, in frame
    /// order (none for a one-buffer frame): for transmit paths that check
    /// each one (its DMA domain) before giving it to a device.
    pub(crate) fn further_bufs(&self) -> impl Iterator<Item = &DmaBuf> {
        self.more.iter().flat_map(|c| c.segs.iter()).map(|p| &p.buf)
    }

    /// Sets the [`rx_status`] flags of a received packet, keeping its
    /// offset and length: for virtio-net, which receives frames at an
    /// offset ([`Packet::received`] builds them at the buffer's start) and
    /// learns their checksum status from its net header.
    #[inline]
    pub(crate) fn set_rx_status(&mut self, flags: u16) {
        self.len_flags = self.len_flags & (0xffff | MULTI) | u32::from(flags & 0x7fff) << 16;
    }

    /// Sets the headroom, keeping the tag half.
    #[inline(always)]
    fn set_offset(&mut self, offset: usize) {
        self.off_tci = self.off_tci & 0xffff_0000 | offset as u32 & 0xffff;
    }

    /// Sets the length, keeping the flags half.
    #[inline(always)]
    fn set_len_bits(&mut self, len: usize) {
        self.len_flags = self.len_flags & 0xffff_0000 | len as u32 & 0xffff;
    }

    /// Headroom: where the frame starts in the buffer.
    #[inline]
    pub fn offset(&self) -> usize {
        self.off_tci as u16 as usize
    }

    /// Bytes in front of the frame: what [`Packet::prepend`] can take.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.offset()
    }

    /// Bytes of the (last) buffer behind the frame: what
    /// [`Packet::append`] can take (while the frame stays within
    /// [`MAX_FRAME`], or [`MAX_JUMBO_FRAME`] over several buffers).
    #[inline]
    pub fn tailroom(&self) -> usize {
        match self.more.as_ref().and_then(|c| c.segs.last()) {
            None => self.buf.len().saturating_sub(self.offset() + self.len()),
            Some(last) => last.tailroom(),
        }
    }

    /// The frame's bytes, read in place (no copy).
    ///
    /// `&mut self` although it only reads: the packet's `&DmaBuf` could be
    /// lent to a device while a shared view lived (see
    /// [`DmaBuf::as_slice`]). The view borrows the packet, so it ends
    /// before the packet can go to `tx_burst` (see the module's examples).
    #[inline]
    pub fn data(&mut self) -> &[u8] {
        let (off, len) = (self.offset(), self.seg_len());
        // offset + len <= buf.len() holds by construction; were it broken,
        // the frame would read as empty, never past the buffer.
        self.buf
            .as_slice()
            .get(off..off.saturating_add(len))
            .unwrap_or_default()
    }

    /// The frame's bytes, written in place (no copy): rewrite addresses,
    /// fill in headers, all without leaving the DMA buffer.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.bytes_mut(self.offset(), self.seg_len())
    }

    /// `n` bytes of the buffer at `from` (empty if that is not inside it).
    #[inline(always)]
    fn bytes_mut(&mut self, from: usize, n: usize) -> &mut [u8] {
        // As in `data`.
        self.buf
            .as_mut_slice()
            .get_mut(from..from.saturating_add(n))
            .unwrap_or_default()
    }

    /// The longest frame this packet may grow to: [`MAX_FRAME`] in one
    /// buffer, [`MAX_JUMBO_FRAME`] over several.
    #[inline]
    fn limit(&self) -> usize {
        if self.is_multi() {
            MAX_JUMBO_FRAME
        } else {
            MAX_FRAME
        }
    }

    /// Records the first buffer's part of a multi-buffer frame after a
    /// change at its front (the caller checked the total).
    fn set_head_len(&mut self, head: usize) {
        if let Some(c) = &mut self.more {
            c.head_len = head as u16;
        }
    }

    /// Grows the frame by `n` bytes at the front, taken from the headroom,
    /// and returns them (their old contents) for the caller to fill: a
    /// header in front of the frame without moving it.
    pub fn prepend(&mut self, n: usize) -> Result<&mut [u8]> {
        if n > self.headroom() {
            return Err(NicError::NoRoom {
                what: "prepend",
                want: n,
                room: self.headroom(),
            });
        }
        let len = self.len() + n;
        if len > self.limit() {
            return Err(NicError::FrameTooLarge { len, max: self.limit() });
        }
        let head = self.seg_len() + n;
        self.set_offset(self.offset() - n);
        self.set_len_bits(len);
        self.set_head_len(head);
        Ok(self.bytes_mut(self.offset(), n))
    }

    /// Grows the frame by `n` bytes at the back, taken from the tailroom
    /// (of the last buffer), and returns them (their old contents) for the
    /// caller to fill.
    pub fn append(&mut self, n: usize) -> Result<&mut [u8]> {
        if n > self.tailroom() {
            return Err(NicError::NoRoom {
                what: "append",
                want: n,
                room: self.tailroom(),
            });
        }
        let len = self.len() + n;
        if len > self.limit() {
            return Err(NicError::FrameTooLarge { len, max: self.limit() });
        }
        self.set_len_bits(len);
        if !self.is_multi() {
            let at = self.offset() + len - n;
            return Ok(self.bytes_mut(at, n));
        }
        match self.more.as_mut().and_then(|c| c.segs.last_mut()) {
            // A chain always has a last buffer (push_segment).
            None => Ok(&mut []),
            Some(last) => {
                let at = last.offset() + last.len();
                last.set_len_bits(last.len() + n);
                Ok(last.bytes_mut(at, n))
            }
        }
    }

    /// Removes `n` bytes from the front of the frame (a header stripped;
    /// they become headroom). In a multi-buffer frame, only from the first
    /// buffer's part.
    pub fn trim_front(&mut self, n: usize) -> Result<()> {
        if n > self.seg_len() {
            return Err(NicError::NoRoom {
                what: "trim_front",
                want: n,
                room: self.seg_len(),
            });
        }
        if self.offset() + n > usize::from(u16::MAX) {
            return Err(NicError::NoRoom {
                what: "trim_front (headroom past 64 KiB)",
                want: n,
                room: 0,
            });
        }
        let head = self.seg_len() - n;
        self.set_offset(self.offset() + n);
        self.set_len_bits(self.len() - n);
        self.set_head_len(head);
        Ok(())
    }

    /// Removes `n` bytes from the back of the frame (padding or a trailer;
    /// they become tailroom). In a multi-buffer frame, only from the last
    /// buffer's part, which keeps at least one byte.
    pub fn trim_back(&mut self, n: usize) -> Result<()> {
        let len = self.len();
        match self.more.as_mut().and_then(|c| c.segs.last_mut()) {
            None if n > len => Err(NicError::NoRoom {
                what: "trim_back",
                want: n,
                room: len,
            }),
            None => {
                self.set_len_bits(len - n);
                Ok(())
            }
            Some(last) if n >= last.len() => Err(NicError::NoRoom {
                what: "trim_back (last buffer)",
                want: n,
                room: last.len().saturating_sub(1),
            }),
            Some(last) => {
                last.set_len_bits(last.len() - n);
                self.set_len_bits(len - n);
                Ok(())
            }
        }
    }

    /// The frame length, or a number above every length (bit 31 set) for
    /// a multi-buffer frame: one test for "a one-buffer frame of these
    /// bytes" on a transmit path.
    #[inline(always)]
    pub(crate) fn len_or_multi(&self) -> u32 {
        self.len_flags & (MULTI | 0xffff)
    }

    /// Frame length in bytes (every buffer of a multi-buffer frame).
    #[inline]
    pub fn len(&self) -> usize {
        self.len_flags as u16 as usize
    }

    /// True for a zero-length frame.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the length of a one-buffer frame (must fit the buffer and
    /// MAX_FRAME); a multi-buffer frame is reshaped with [`Packet::write`],
    /// [`Packet::append`] and [`Packet::trim_back`] instead.
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if self.is_multi() {
            return Err(NicError::InvalidArgument("set_len on a multi-buffer frame".into()));
        }
        if len > self.buf.len() - self.offset() || len > MAX_FRAME {
            return Err(NicError::FrameTooLarge { len, max: MAX_FRAME });
        }
        self.set_len_bits(len);
        Ok(())
    }

    /// Device address of the frame's first byte.
    #[inline]
    pub fn iova(&self) -> Iova {
        self.buf.iova().add(self.offset() as u64)
    }

    /// The underlying (first) buffer.
    pub fn buf(&self) -> &DmaBuf {
        &self.buf
    }

    /// Mutable access to the (first) buffer (to write frame contents; the
    /// frame starts at [`Packet::offset`] in it).
    pub fn buf_mut(&mut self) -> &mut DmaBuf {
        &mut self.buf
    }

    /// Takes the (first) buffer back; the other buffers of a multi-buffer
    /// frame go back to their pool.
    #[inline(always)]
    pub fn into_buf(self) -> DmaBuf {
        let Packet { buf, more, .. } = self;
        // Out of line: transmit and recycle loops call this per packet, and
        // the chain's drop glue inlined there costs them every time.
        if let Some(chain) = more {
            drop_chain(chain);
        }
        buf
    }

    /// [`Packet::into_buf`] for a packet known to be one buffer (checked
    /// with [`Packet::is_multi`]): nothing to drop but the handle, so a
    /// transmit loop keeps its state in registers. Were it a chain after
    /// all, the further buffers would be leaked, never reused.
    #[inline(always)]
    pub(crate) fn into_single_buf(self) -> DmaBuf {
        let Packet { buf, more, .. } = self;
        debug_assert!(more.is_none());
        std::mem::forget(more);
        buf
    }

    /// Copies the frame out (every buffer's part).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        // Cannot fail: offset + len <= buf.len() by construction.
        let _ = self.buf.read(self.offset(), &mut v[..self.seg_len()]);
        let mut at = self.seg_len();
        for seg in self.more.iter().flat_map(|c| c.segs.iter()) {
            let _ = seg.buf.read(seg.offset(), &mut v[at..at + seg.len()]);
            at += seg.len();
        }
        v
    }

    /// Replaces the frame with `data`. A one-buffer packet takes up to
    /// [`MAX_FRAME`] bytes, or as many as its buffer holds past the
    /// headroom (a jumbo port's frame may fit one). A frame longer than the
    /// first buffer holds continues in the packet's further buffers, each
    /// filled from its frame offset to its end; buffers it does not need go
    /// back to their pool. Refused (the packet unchanged) when `data` is
    /// longer than that, or than the buffers hold.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if !self.is_multi() {
            // A jumbo port's frame may fit one buffer (the port checks its
            // MTU when sending); a standard frame always does.
            let max = (self.buf.len() - self.offset()).clamp(MAX_FRAME, MAX_JUMBO_FRAME);
            if data.len() > max {
                return Err(NicError::FrameTooLarge { len: data.len(), max });
            }
            self.buf.write(self.offset(), data)?;
            self.set_len_bits(data.len());
            return Ok(());
        }
        let room = |p: &Packet| p.buf.len() - p.offset();
        let capacity = room(self) + self.more.iter().flat_map(|c| c.segs.iter()).map(room).sum::<usize>();
        if data.len() > MAX_JUMBO_FRAME || data.len() > capacity {
            return Err(NicError::FrameTooLarge {
                len: data.len(),
                max: capacity.min(MAX_JUMBO_FRAME),
            });
        }
        let head = data.len().min(room(self));
        self.buf.write(self.offset(), &data[..head])?;
        let mut rest = &data[head..];
        if let Some(c) = &mut self.more {
            c.head_len = head as u16;
            let mut used = 0;
            for seg in &mut c.segs {
                if rest.is_empty() {
                    break;
                }
                let n = rest.len().min(room(seg));
                seg.buf.write(seg.offset(), &rest[..n])?;
                seg.set_len_bits(n);
                rest = &rest[n..];
                used += 1;
            }
            c.segs.truncate(used);
            if used == 0 {
                self.more = None;
                self.len_flags &= !MULTI;
            }
        }
        self.set_len_bits(data.len());
        Ok(())
    }

    /// Reads `out.len()` frame bytes from frame offset `at` (across
    /// buffers); refused when that runs past the frame.
    pub fn read(&self, at: usize, out: &mut [u8]) -> Result<()> {
        let end = at.checked_add(out.len()).filter(|&e| e <= self.len());
        if end.is_none() {
            return Err(NicError::NoRoom {
                what: "read",
                want: out.len(),
                room: self.len().saturating_sub(at),
            });
        }
        let (mut skip, mut done) = (at, 0);
        let first = (&self.buf, self.offset(), self.seg_len());
        let rest = self
            .more
            .iter()
            .flat_map(|c| c.segs.iter())
            .map(|s| (&s.buf, s.offset(), s.len()));
        for (buf, off, len) in std::iter::once(first).chain(rest) {
            if done == out.len() {
                break;
            }
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min(out.len() - done);
            buf.read(off + skip, &mut out[done..done + n])?;
            done += n;
            skip = 0;
        }
        Ok(())
    }
}

/// A packet for a frame of `len` bytes (at most `max`) from `alloc`: the
/// first buffer from `headroom` on, then whole buffers, as many as needed.
/// Frames of up to [`MAX_FRAME`] take one buffer, as
/// [`Packet::with_offset`] does.
pub(crate) fn alloc_frame(
    mut alloc: impl FnMut() -> Result<DmaBuf>,
    headroom: usize,
    len: usize,
    max: usize,
) -> Result<Packet> {
    if len > max.min(MAX_JUMBO_FRAME) {
        return Err(NicError::FrameTooLarge {
            len,
            max: max.min(MAX_JUMBO_FRAME),
        });
    }
    let first = alloc()?;
    let room = first.len().saturating_sub(headroom);
    if len <= room.min(MAX_FRAME) {
        return Packet::with_offset(first, headroom, len);
    }
    let mut pkt = Packet::with_offset(first, headroom, room.min(MAX_FRAME))?;
    while pkt.len() < len {
        let buf = alloc()?;
        let n = buf.len().min(len - pkt.len());
        let seg = Packet::piece(buf, n)?;
        pkt.push_segment(seg).map_err(|(_, e)| e)?;
    }
    Ok(pkt)
}

/// Returns the further buffers of a multi-buffer frame to their pool.
#[cold]
#[inline(never)]
fn drop_chain(chain: Box<Chain>) {
    drop(chain);
}

fn verdict(status: u16, checked: u16, bad: u16) -> RxChecksum {
    match (status & checked != 0, status & bad != 0) {
        (false, _) => RxChecksum::NotChecked,
        (true, false) => RxChecksum::Good,
        (true, true) => RxChecksum::Bad,
    }
}

/// A pool of packet buffers mapped into a VFIO container.
#[derive(Clone)]
pub struct PacketPool {
    pool: BufferPool,
}

impl PacketPool {
    /// `count` buffers of [`PACKET_BUF_SIZE`] bytes on 2 MiB hugepages.
    pub fn new(vfio: &Vfio, count: u32) -> Result<PacketPool> {
        Ok(PacketPool {
            pool: BufferPool::new(vfio, PACKET_BUF_SIZE, count, PageSize::Huge2M)?,
        })
    }

    /// Same on unmapped memory (in-process device models).
    pub fn new_unmapped(count: u32) -> Result<PacketPool> {
        Ok(PacketPool {
            pool: BufferPool::new_unmapped(PACKET_BUF_SIZE, count, PageSize::Small)?,
        })
    }

    /// The buffer pool behind it.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// A per-thread cache in front of the pool.
    pub fn cache(&self, size: usize) -> PoolCache {
        self.pool.cache(size)
    }

    /// One empty packet (length 0).
    pub fn alloc(&self) -> Result<Packet> {
        Ok(Packet {
            buf: self.pool.alloc()?,
            off_tci: 0,
            len_flags: 0,
            more: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_with_headroom_is_addressed_from_its_offset() {
        let pool = PacketPool::new_unmapped(2).unwrap();
        let buf = pool.pool().alloc().unwrap();
        let base = buf.iova();
        let mut p = Packet::with_offset(buf, 64, 0).unwrap();
        p.write(b"frame").unwrap();
        assert_eq!((p.offset(), p.len(), p.iova()), (64, 5, base.add(64)));
        assert_eq!(p.to_vec(), b"frame");
        let mut raw = [0u8; 5];
        p.buf().read(64, &mut raw).unwrap();
        assert_eq!(&raw, b"frame");
        assert!(p.set_len(MAX_FRAME).is_ok());
        let deep = Packet::with_offset(p.into_buf(), 1000, 0);
        let mut deep = deep.unwrap();
        assert!(deep.set_len(PACKET_BUF_SIZE - 1000).is_ok());
        assert!(matches!(
            deep.set_len(PACKET_BUF_SIZE - 999),
            Err(NicError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn bytes_are_read_and_written_in_place() {
        let pool = PacketPool::new_unmapped(2).unwrap();
        let mut p = Packet::with_offset(pool.pool().alloc().unwrap(), HEADROOM, 0).unwrap();
        p.write(b"0123456789abcdef").unwrap();
        assert_eq!(p.data(), b"0123456789abcdef");
        p.data_mut()[..6].copy_from_slice(b"ZZZZZZ");
        assert_eq!(p.to_vec(), b"ZZZZZZ6789abcdef");
        // Exactly the frame: the bytes around it are not in the view.
        let mut raw = [0u8; 18];
        p.buf().read(HEADROOM - 1, &mut raw).unwrap();
        assert_eq!(&raw[1..17], p.data());
        assert_eq!(p.data().len(), 16);
        let mut empty = pool.alloc().unwrap();
        assert!(empty.data().is_empty() && empty.data_mut().is_empty());
    }

    #[test]
    fn prepend_and_trim_move_the_frame_edges_not_the_bytes() {
        let pool = PacketPool::new_unmapped(2).unwrap();
        let mut p = Packet::with_offset(pool.pool().alloc().unwrap(), HEADROOM, 0).unwrap();
        p.write(&[7; 60]).unwrap();
        let iova = p.iova();
        assert_eq!(
            (p.headroom(), p.tailroom()),
            (HEADROOM, PACKET_BUF_SIZE - HEADROOM - 60)
        );
        // A VLAN-sized header in front.
        p.prepend(4).unwrap().copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            (p.headroom(), p.len(), p.iova()),
            (HEADROOM - 4, 64, Iova(iova.get() - 4))
        );
        assert_eq!(&p.data()[..5], &[1, 2, 3, 4, 7]);
        p.trim_front(4).unwrap();
        assert_eq!((p.iova(), p.data()), (iova, &[7u8; 60][..]));
        p.append(3).unwrap().copy_from_slice(b"end");
        assert_eq!(&p.data()[57..], b"\x07\x07\x07end");
        p.trim_back(3).unwrap();
        assert_eq!(p.to_vec(), [7; 60]);
        // The whole headroom, then nothing more.
        assert_eq!(p.prepend(HEADROOM).unwrap().len(), HEADROOM);
        assert_eq!((p.headroom(), p.iova()), (0, p.buf().iova()));
        assert!(matches!(
            p.prepend(1),
            Err(NicError::NoRoom {
                what: "prepend",
                want: 1,
                room: 0
            })
        ));
        p.trim_front(HEADROOM).unwrap();
        assert_eq!(p.to_vec(), [7; 60], "the frame never moved");
    }

    #[test]
    fn hostile_sizes_leave_the_packet_as_it_was() {
        let pool = PacketPool::new_unmapped(2).unwrap();
        let mut p = Packet::with_offset(pool.pool().alloc().unwrap(), HEADROOM, 100).unwrap();
        let before = (p.offset(), p.len());
        for n in [101, 1000, usize::MAX] {
            assert!(
                matches!(
                    p.trim_front(n),
                    Err(NicError::NoRoom {
                        what: "trim_front",
                        room: 100,
                        ..
                    })
                ),
                "{n}"
            );
            assert!(
                matches!(
                    p.trim_back(n),
                    Err(NicError::NoRoom {
                        what: "trim_back",
                        room: 100,
                        ..
                    })
                ),
                "{n}"
            );
        }
        for n in [HEADROOM + 1, usize::MAX] {
            assert!(
                matches!(p.prepend(n), Err(NicError::NoRoom { what: "prepend", .. })),
                "{n}"
            );
        }
        let tail = p.tailroom();
        for n in [tail + 1, usize::MAX] {
            assert!(
                matches!(p.append(n), Err(NicError::NoRoom { what: "append", .. })),
                "{n}"
            );
        }
        assert_eq!((p.offset(), p.len()), before);
        // Room in the buffer, but a frame over MAX_FRAME: refused too.
        assert!(matches!(
            p.append(MAX_FRAME - 99),
            Err(NicError::FrameTooLarge { len: 1515, .. })
        ));
        p.set_len(MAX_FRAME).unwrap();
        assert!(matches!(p.prepend(1), Err(NicError::FrameTooLarge { len: 1515, .. })));
        assert_eq!((p.offset(), p.len()), (HEADROOM, MAX_FRAME));
        // Trimming everything is an empty frame, not an error.
        p.trim_back(MAX_FRAME).unwrap();
        assert!(p.is_empty() && p.data().is_empty());
        assert_eq!(p.tailroom(), PACKET_BUF_SIZE - HEADROOM);
    }

    #[test]
    fn offsets_and_lengths_outside_the_buffer_are_refused() {
        let pool = PacketPool::new_unmapped(2).unwrap();
        let b = pool.pool().alloc().unwrap();
        assert!(matches!(
            Packet::with_offset(b, PACKET_BUF_SIZE + 1, 0),
            Err(NicError::InvalidArgument(_))
        ));
        let b = pool.pool().alloc().unwrap();
        assert!(matches!(
            Packet::with_offset(b, PACKET_BUF_SIZE - 100, 101),
            Err(NicError::FrameTooLarge { len: 101, max: 100 })
        ));
        let b = pool.pool().alloc().unwrap();
        assert!(matches!(
            Packet::new(b, MAX_FRAME + 1),
            Err(NicError::FrameTooLarge { .. })
        ));
    }

    fn jumbo(pool: &PacketPool, len: usize) -> Packet {
        let alloc = || pool.pool().alloc().map_err(NicError::from);
        alloc_frame(alloc, HEADROOM, len, MAX_JUMBO_FRAME).unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_jumbo_frame_is_one_packet_over_several_buffers() {
        let pool = PacketPool::new_unmapped(16).unwrap();
        let mut p = jumbo(&pool, MAX_JUMBO_FRAME);
        // 1514 in the first buffer (after the headroom), then whole buffers.
        assert_eq!(
            (p.len(), p.seg_len(), p.segment_count()),
            (MAX_JUMBO_FRAME, MAX_FRAME, 5)
        );
        assert_eq!(pool.pool().available(), 16 - 5);
        let bytes = pattern(MAX_JUMBO_FRAME);
        p.write(&bytes).unwrap();
        // The first buffer is filled to its end now; fewer buffers needed.
        assert_eq!((p.seg_len(), p.segment_count()), (PACKET_BUF_SIZE - HEADROOM, 5));
        assert_eq!(p.to_vec(), bytes);
        let lens: Vec<usize> = p.segments_mut().map(|s| s.len()).collect();
        assert_eq!(lens.iter().sum::<usize>(), MAX_JUMBO_FRAME);
        assert_eq!(p.data().len(), lens[0], "data() is the first buffer's part");
        let mut mid = [0u8; 3000];
        p.read(1900, &mut mid).unwrap();
        assert_eq!(&mid[..], &bytes[1900..4900], "a read across three buffers");
        assert!(matches!(
            p.read(MAX_JUMBO_FRAME - 2, &mut [0; 3]),
            Err(NicError::NoRoom { .. })
        ));
        assert!(matches!(p.read(usize::MAX, &mut [0; 3]), Err(NicError::NoRoom { .. })));
        // A shorter frame gives back the buffers it no longer needs.
        p.write(&bytes[..3000]).unwrap();
        assert_eq!(
            (p.len(), p.segment_count(), p.to_vec()),
            (3000, 2, bytes[..3000].to_vec())
        );
        assert_eq!(pool.pool().available(), 16 - 2);
        drop(p);
        assert_eq!(pool.pool().available(), 16, "every buffer of a chain goes home");
    }

    #[test]
    fn headers_and_trailers_of_a_jumbo_frame_move_at_its_ends() {
        let pool = PacketPool::new_unmapped(8).unwrap();
        let mut p = jumbo(&pool, 5000);
        let bytes = pattern(5000);
        p.write(&bytes).unwrap();
        let head = p.seg_len();
        p.prepend(4).unwrap().copy_from_slice(&[9, 9, 9, 9]);
        assert_eq!(
            (p.len(), p.seg_len(), &p.data()[..5]),
            (5004, head + 4, &[9, 9, 9, 9, bytes[0]][..])
        );
        p.trim_front(4).unwrap();
        assert_eq!(p.to_vec(), bytes);
        p.append(2).unwrap().copy_from_slice(b"ok");
        assert_eq!((p.len(), &p.to_vec()[5000..]), (5002, &b"ok"[..]));
        p.trim_back(2).unwrap();
        assert_eq!(p.to_vec(), bytes);
        // trim_front stays in the first buffer; trim_back in the last one
        // (which keeps a byte); set_len is for one-buffer frames.
        assert!(matches!(p.trim_front(head + 1), Err(NicError::NoRoom { .. })));
        let last = 5000 - head - (PACKET_BUF_SIZE);
        assert!(matches!(p.trim_back(last), Err(NicError::NoRoom { .. })));
        assert!(matches!(p.set_len(100), Err(NicError::InvalidArgument(_))));
        assert_eq!(p.to_vec(), bytes, "refusals change nothing");
    }

    #[test]
    fn segments_that_break_the_frame_are_handed_back() {
        let pool = PacketPool::new_unmapped(16).unwrap();
        let mut p = Packet::with_offset(pool.pool().alloc().unwrap(), 0, 100).unwrap();
        let empty = Packet::piece(pool.pool().alloc().unwrap(), 0).unwrap();
        let (back, e) = p.push_segment(empty).unwrap_err();
        assert!(back.is_empty() && matches!(e, NicError::InvalidArgument(_)));
        let mut chain = jumbo(&pool, 3000);
        let (back, _) = p.push_segment(std::mem::replace(&mut chain, back)).unwrap_err();
        assert_eq!(back.segment_count(), 2, "a chain is not a segment");
        drop(chain);
        // Past MAX_JUMBO_FRAME: refused, the frame keeps its length.
        let mut big = jumbo(&pool, MAX_JUMBO_FRAME - 10);
        let seg = Packet::piece(pool.pool().alloc().unwrap(), 11).unwrap();
        assert!(
            matches!(big.push_segment(seg), Err((_, NicError::FrameTooLarge { len, .. })) if len == MAX_JUMBO_FRAME + 1)
        );
        assert_eq!(big.len(), MAX_JUMBO_FRAME - 10);
        assert!(matches!(
            Packet::piece(pool.pool().alloc().unwrap(), PACKET_BUF_SIZE + 1),
            Err(NicError::Malformed(_))
        ));
        let bytes = pattern(MAX_JUMBO_FRAME + 1);
        assert!(matches!(big.write(&bytes), Err(NicError::FrameTooLarge { .. })));
        let alloc = || pool.pool().alloc().map_err(NicError::from);
        assert!(matches!(
            alloc_frame(alloc, HEADROOM, 3000, MAX_FRAME),
            Err(NicError::FrameTooLarge { max: MAX_FRAME, .. })
        ));
        // Splitting for a transmit path: the head keeps its part.
        let mut p = jumbo(&pool, 2500);
        let rest = p.split_segments();
        assert_eq!(
            (p.len(), p.is_multi(), rest.len(), rest[0].len()),
            (MAX_FRAME, false, 1, 2500 - MAX_FRAME)
        );
    }
}
