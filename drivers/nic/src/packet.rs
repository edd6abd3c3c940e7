//! Packets: a DMA buffer from a framework pool plus the frame length, and
//! where in the buffer the frame starts.
//!
//! The frame usually starts at the buffer's first byte. A driver may leave
//! headroom in front of it instead (virtio-net receives a device header
//! there), so a frame is `len` bytes at [`Packet::offset`]; [`Packet::iova`],
//! [`Packet::to_vec`] and [`Packet::write`] all address the frame, not the
//! buffer. Transmit paths must use `Packet::iova()`, not the buffer's IOVA.

use fastlane_framework::{BufferPool, DmaBuf, Iova, PageSize, PoolCache, Vfio};

use crate::{NicError, Result, MAX_FRAME};

/// Bytes per packet buffer: one standard frame plus room, 64-byte aligned.
pub const PACKET_BUF_SIZE: usize = 2048;

/// A frame in a DMA buffer.
#[derive(Debug)]
pub struct Packet {
    buf: DmaBuf,
    /// Bytes of headroom before the frame.
    offset: u32,
    /// Frame bytes (at most [`MAX_FRAME`]).
    len: u32,
}

// Small enough to move in two 16-byte stores: the buffer handle, offset and
// length (receive bursts write one per frame into the caller's vector).
const _: () = assert!(std::mem::size_of::<Packet>() == 32);

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
        // Headroom past 4 GiB would need a buffer that large.
        let Ok(offset) = u32::try_from(offset) else {
            return Err(NicError::InvalidArgument(format!("frame offset {offset}")));
        };
        Ok(Packet { buf, offset, len: len as u32 })
    }

    /// A received frame of `len` bytes at the start of `buf`, without the
    /// checks of [`Packet::new`]: for receive paths that checked `len`
    /// against [`MAX_FRAME`] and whose buffers hold at least that much
    /// (the igb queue checks its pool's buffer size once, at creation).
    #[inline(always)]
    pub(crate) fn received(buf: DmaBuf, len: u16) -> Packet {
        debug_assert!(len as usize <= MAX_FRAME.min(buf.len()));
        Packet { buf, offset: 0, len: u32::from(len) }
    }

    /// Headroom: where the frame starts in the buffer.
    #[inline]
    pub fn offset(&self) -> usize {
        self.offset as usize
    }

    /// Frame length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for a zero-length frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the frame length (must fit the buffer and MAX_FRAME).
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.buf.len() - self.offset() || len > MAX_FRAME {
            return Err(NicError::FrameTooLarge { len, max: MAX_FRAME });
        }
        self.len = len as u32;
        Ok(())
    }

    /// Device address of the frame's first byte.
    #[inline]
    pub fn iova(&self) -> Iova {
        self.buf.iova().add(u64::from(self.offset))
    }

    /// The underlying buffer.
    pub fn buf(&self) -> &DmaBuf {
        &self.buf
    }

    /// Mutable access to the buffer (to write frame contents; the frame
    /// starts at [`Packet::offset`] in it).
    pub fn buf_mut(&mut self) -> &mut DmaBuf {
        &mut self.buf
    }

    /// Takes the buffer back.
    pub fn into_buf(self) -> DmaBuf {
        self.buf
    }

    /// Copies the frame out.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        // Cannot fail: offset + len <= buf.len() by construction.
        let _ = self.buf.read(self.offset(), &mut v);
        v
    }

    /// Replaces the frame with `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.len() > MAX_FRAME {
            return Err(NicError::FrameTooLarge { len: data.len(), max: MAX_FRAME });
        }
        self.buf.write(self.offset(), data)?;
        self.len = data.len() as u32;
        Ok(())
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
            offset: 0,
            len: 0,
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
        assert!(matches!(deep.set_len(PACKET_BUF_SIZE - 999), Err(NicError::FrameTooLarge { .. })));
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
}
