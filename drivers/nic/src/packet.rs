//! Packets: a DMA buffer from a framework pool plus the frame length.

use fastlane_framework::{BufferPool, DmaBuf, Iova, PageSize, PoolCache, Vfio};

use crate::{NicError, Result, MAX_FRAME};

/// Bytes per packet buffer: one standard frame plus room, 64-byte aligned.
pub const PACKET_BUF_SIZE: usize = 2048;

/// A frame in a DMA buffer.
#[derive(Debug)]
pub struct Packet {
    buf: DmaBuf,
    len: usize,
}

impl Packet {
    /// Wraps `buf` as a frame of `len` bytes.
    pub fn new(buf: DmaBuf, len: usize) -> Result<Packet> {
        if len > buf.len() || len > MAX_FRAME {
            return Err(NicError::FrameTooLarge {
                len,
                max: MAX_FRAME.min(buf.len()),
            });
        }
        Ok(Packet { buf, len })
    }

    /// Frame length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the frame length (must fit the buffer and MAX_FRAME).
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.buf.len() || len > MAX_FRAME {
            return Err(NicError::FrameTooLarge { len, max: MAX_FRAME });
        }
        self.len = len;
        Ok(())
    }

    /// Device address of the frame's first byte.
    #[inline]
    pub fn iova(&self) -> Iova {
        self.buf.iova()
    }

    /// The underlying buffer.
    pub fn buf(&self) -> &DmaBuf {
        &self.buf
    }

    /// Mutable access to the buffer (to write frame contents).
    pub fn buf_mut(&mut self) -> &mut DmaBuf {
        &mut self.buf
    }

    /// Takes the buffer back.
    pub fn into_buf(self) -> DmaBuf {
        self.buf
    }

    /// Copies the frame out.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        // Cannot fail: len <= buf.len() by construction.
        let _ = self.buf.read(0, &mut v);
        v
    }

    /// Replaces the frame with `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.len() > MAX_FRAME {
            return Err(NicError::FrameTooLarge { len: data.len(), max: MAX_FRAME });
        }
        self.buf.write(0, data)?;
        self.len = data.len();
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
            len: 0,
        })
    }
}
