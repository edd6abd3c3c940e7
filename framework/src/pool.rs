//! Buffer pools: fixed-size DMA buffers carved from one region.
//!
//! The free list is a lock-free bounded queue (crossbeam `ArrayQueue`) of
//! buffer indices; a [`PoolCache`] gives one thread a local stash that it
//! refills and drains in bulk, as DPDK's per-lcore mempool caches do. Every
//! [`DmaBuf`] knows its IOVA (`pointer + region offset`). A buffer is an
//! owned handle: freeing consumes it, so a double free does not compile, and
//! a buffer handed to another pool's cache comes back as an error.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
#[cfg(loom)]
use loom::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
#[cfg(not(loom))]
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use crate::addr::{DmaDomain, Iova};
use crate::dma::Claim;
use crate::error::{Error, Result};
use crate::hugepage::PageSize;
use crate::region::DmaRegion;
use crate::vfio::Vfio;

static NEXT_POOL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Errors of pool operations.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every buffer is in use.
    #[error("buffer pool exhausted")]
    Empty,
    /// The buffer belongs to another pool; it is handed back untouched.
    #[error("buffer belongs to pool {found}, not pool {expected}")]
    WrongPool {
        /// Id of the pool asked to take it.
        expected: u64,
        /// Id of the pool it belongs to.
        found: u64,
        /// The buffer, handed back.
        buf: DmaBuf,
    },
}

/// A pool of equal-size DMA buffers. Cloning shares the pool.
#[derive(Clone)]
pub struct BufferPool {
    handle: Arc<PoolHandle>,
}

/// Buffers point at their pool without a reference count (no shared atomic
/// per allocation). The pool's memory is released when the last handle is
/// gone *and* every buffer is home, whichever happens last.
struct PoolHandle {
    inner: NonNull<PoolInner>,
}

// SAFETY: PoolInner is Sync; the handle only reads through the pointer.
unsafe impl Send for PoolHandle {}
// SAFETY: as above.
unsafe impl Sync for PoolHandle {}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        let (id, count, home) = {
            // SAFETY: the pool is alive: this handle counts as its owner
            // until `orphan` below.
            let inner = unsafe { self.inner.as_ref() };
            (inner.id, inner.count as usize, inner.free.len())
        };
        if home != count {
            log::warn!("buffer pool {id} dropped with some of {count} buffers out; freed when they return");
        }
        // SAFETY: as above; after `orphan` the pool is not touched unless
        // this handle was told to free it.
        if unsafe { self.inner.as_ref() }.life.orphan() {
            // SAFETY: nothing is out and no handle is left (Lifetime).
            unsafe { PoolInner::release(self.inner) };
        }
    }
}

struct PoolInner {
    id: u64,
    region: DmaRegion,
    base: NonNull<u8>,
    stride: usize,
    buf_size: usize,
    count: u32,
    free: ArrayQueue<u32>,
    /// Who frees the pool: the last handle, or the last buffer home.
    life: Lifetime,
    /// The whole region belongs to the pool's buffers: nobody carves it.
    _claim: Claim,
}

// SAFETY: base points into `region`, which the pool owns; buffers are handed
// out exclusively through the queue, so no two handles share a buffer.
unsafe impl Send for PoolInner {}
// SAFETY: as above; the queue and flags are the only shared mutable state.
unsafe impl Sync for PoolInner {}

impl PoolInner {
    /// Frees the pool.
    ///
    /// # Safety
    /// `ptr` came from `Box::leak` in [`BufferPool::build`], and
    /// [`Lifetime`] picked the caller as the one to free it.
    unsafe fn release(ptr: NonNull<PoolInner>) {
        // SAFETY: per the contract, nothing else refers to the pool.
        drop(unsafe { Box::from_raw(ptr.as_ptr()) });
    }

    /// Takes one index from the shared queue.
    #[inline]
    fn pop(&self) -> Option<u32> {
        let i = self.free.pop()?;
        self.life.taken(1);
        Some(i)
    }
}

/// The pool's lifetime protocol, without a reference count per buffer: one
/// word holds the number of indices outside the shared queue (in buffers or
/// thread caches) and an "orphaned" bit set by the last handle. Exactly one
/// party sees the word reach "orphaned, nothing out" and frees the pool; no
/// party touches the pool after its own update unless it is that one.
/// `lifetime_model` (loom) checks every interleaving.
pub(crate) struct Lifetime(AtomicU64);

impl Lifetime {
    const ORPHANED: u64 = 1;
    const ONE: u64 = 2;

    pub(crate) fn new() -> Lifetime {
        Lifetime(AtomicU64::new(0))
    }

    /// `n` indices left the queue. Callers hold a handle, so the pool lives.
    #[inline]
    pub(crate) fn taken(&self, n: u64) {
        self.0.fetch_add(n * Self::ONE, Ordering::Relaxed);
    }

    /// `n` indices are back in the queue; true: the caller frees the pool.
    #[inline]
    #[must_use]
    pub(crate) fn returned(&self, n: u64) -> bool {
        self.0.fetch_sub(n * Self::ONE, Ordering::AcqRel) == (n * Self::ONE) | Self::ORPHANED
    }

    /// The last handle is gone; true: nothing is out, the caller frees.
    #[must_use]
    pub(crate) fn orphan(&self) -> bool {
        self.0.fetch_or(Self::ORPHANED, Ordering::AcqRel) == 0
    }
}

impl BufferPool {
    #[inline(always)]
    fn inner(&self) -> &PoolInner {
        // SAFETY: the handle keeps the pool alive (see PoolHandle).
        unsafe { self.handle.inner.as_ref() }
    }

    /// `count` buffers of `buf_size` bytes in a new region of `page_size`
    /// pages, mapped into `vfio`'s container. Buffers of 4 KiB and more are
    /// 4 KiB aligned (one NVMe PRP page each); smaller ones 64-byte aligned.
    pub fn new(vfio: &Vfio, buf_size: usize, count: u32, page_size: PageSize) -> Result<BufferPool> {
        let (stride, total) = layout(buf_size, count)?;
        let region = vfio.alloc_region(total, page_size)?;
        Self::build(region, buf_size, stride, count)
    }

    /// Like [`BufferPool::new`] on memory no IOMMU maps (simulated devices).
    pub fn new_unmapped(buf_size: usize, count: u32, page_size: PageSize) -> Result<BufferPool> {
        let (stride, total) = layout(buf_size, count)?;
        let region = DmaRegion::new_unmapped(total, page_size)?;
        Self::build(region, buf_size, stride, count)
    }

    fn build(region: DmaRegion, buf_size: usize, stride: usize, count: u32) -> Result<BufferPool> {
        let free = ArrayQueue::new(count as usize);
        for i in 0..count {
            let _ = free.push(i);
        }
        let base = NonNull::new(region.as_ptr())
            .ok_or_else(|| Error::InvalidArgument("null region".into()))?;
        let claim = Claim::new(&region, 0, region.len())?;
        let inner = Box::new(PoolInner {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            region,
            base,
            stride,
            buf_size,
            count,
            free,
            life: Lifetime::new(),
            _claim: claim,
        });
        Ok(BufferPool {
            handle: Arc::new(PoolHandle {
                inner: NonNull::from(Box::leak(inner)),
            }),
        })
    }

    /// A unique id, carried by every buffer of this pool.
    pub fn id(&self) -> u64 {
        self.inner().id
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> usize {
        self.inner().buf_size
    }

    /// Buffers in the pool.
    pub fn capacity(&self) -> u32 {
        self.inner().count
    }

    /// Buffers in the shared free list (not counting thread caches).
    pub fn available(&self) -> usize {
        self.inner().free.len()
    }

    /// The region the buffers live in.
    pub fn region(&self) -> &DmaRegion {
        &self.inner().region
    }

    /// One buffer from the shared free list.
    pub fn alloc(&self) -> Result<DmaBuf, PoolError> {
        self.inner().pop().map(|i| self.make(i)).ok_or(PoolError::Empty)
    }

    /// Returns a buffer; a buffer of another pool comes back in the error.
    pub fn free(&self, buf: DmaBuf) -> Result<(), PoolError> {
        self.check_owner(buf)?;
        Ok(())
    }

    /// A per-thread cache holding up to `size` buffers locally.
    pub fn cache(&self, size: usize) -> PoolCache {
        let size = size.clamp(2, (self.inner().count as usize).max(2));
        PoolCache {
            pool: self.clone(),
            local: Vec::with_capacity(size),
            size,
        }
    }

    fn check_owner(&self, buf: DmaBuf) -> Result<DmaBuf, PoolError> {
        if buf.pool == self.handle.inner {
            Ok(buf)
        } else {
            Err(PoolError::WrongPool {
                expected: self.inner().id,
                found: buf.inner().id,
                buf,
            })
        }
    }

    #[inline]
    fn make(&self, index: u32) -> DmaBuf {
        // SAFETY: index < count, so the buffer lies inside the region (see layout).
        let ptr = unsafe { self.inner().base.add(index as usize * self.inner().stride) };
        DmaBuf {
            pool: self.handle.inner,
            index,
            ptr,
        }
    }
}

fn layout(buf_size: usize, count: u32) -> Result<(usize, usize)> {
    if buf_size == 0 || count == 0 {
        return Err(Error::InvalidArgument(format!(
            "pool of {count} buffers of {buf_size} bytes"
        )));
    }
    let align = if buf_size >= 4096 { 4096 } else { 64 };
    let stride = buf_size
        .checked_next_multiple_of(align)
        .ok_or_else(|| Error::InvalidArgument(format!("buffer size {buf_size}")))?;
    let total = stride
        .checked_mul(count as usize)
        .ok_or_else(|| Error::InvalidArgument(format!("{count} buffers of {stride} bytes")))?;
    Ok((stride, total))
}

/// A DMA buffer on loan from a pool; goes back to it when dropped.
pub struct DmaBuf {
    pool: NonNull<PoolInner>,
    index: u32,
    ptr: NonNull<u8>,
}

// SAFETY: the handle owns its buffer exclusively (see PoolInner).
unsafe impl Send for DmaBuf {}
// SAFETY: shared handles only read through raw copies.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    #[inline(always)]
    fn inner(&self) -> &PoolInner {
        // SAFETY: a pool outlives its buffers (see PoolHandle).
        unsafe { self.pool.as_ref() }
    }

    /// Device address of the first byte: pointer plus the region's offset.
    #[inline(always)]
    pub fn iova(&self) -> Iova {
        Iova((self.ptr.as_ptr() as u64).wrapping_add(self.inner().region.iova_offset()))
    }

    /// The IOMMU domain the buffer's memory is mapped in.
    #[inline(always)]
    pub fn domain(&self) -> DmaDomain {
        self.inner().region.domain()
    }

    /// The buffer's IOVA if it is mapped in `domain`, else `None`: the
    /// check a driver makes before handing the address to its device, with
    /// the region's domain and offset read through one pointer chain.
    #[inline(always)]
    pub fn iova_in(&self, domain: DmaDomain) -> Option<Iova> {
        let region = &self.inner().region;
        if region.domain() != domain {
            return None;
        }
        Some(Iova((self.ptr.as_ptr() as u64).wrapping_add(region.iova_offset())))
    }

    /// First byte, for raw access.
    #[inline(always)]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Usable bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.inner().buf_size
    }

    /// Never true: pools refuse zero-sized buffers.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Index of the buffer in its pool.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Id of the owning pool.
    pub fn pool_id(&self) -> u64 {
        self.inner().id
    }

    /// The buffer's bytes, read in place (no copy).
    ///
    /// It takes `&mut self` although it only reads: a shared `&DmaBuf`
    /// may be lent to a device for a synchronous command that writes it
    /// (NVMe `Controller::admin_command_buf`), so only an exclusive borrow
    /// proves that no device writes these bytes while the slice lives.
    ///
    /// The slice borrows the handle: it cannot outlive it, nor live while
    /// the handle is moved (to a queue, a driver, a pool) or lent.
    /// ```compile_fail,E0505
    /// # use fastlane_framework::{BufferPool, PageSize};
    /// let pool = BufferPool::new_unmapped(64, 4, PageSize::Small).unwrap();
    /// let mut buf = pool.alloc().unwrap();
    /// let bytes = buf.as_slice();
    /// pool.free(buf).unwrap(); // the handle goes: the slice must not stay
    /// assert_eq!(bytes[0], 0);
    /// ```
    /// ```compile_fail,E0502
    /// # use fastlane_framework::{BufferPool, DmaBuf, PageSize};
    /// let pool = BufferPool::new_unmapped(64, 4, PageSize::Small).unwrap();
    /// let mut buf = pool.alloc().unwrap();
    /// let bytes = buf.as_slice();
    /// let lent: &DmaBuf = &buf; // as to a device for a command
    /// assert_eq!((bytes[0], lent.len()), (0, 64));
    /// ```
    #[inline(always)]
    pub fn as_slice(&mut self) -> &[u8] {
        // SAFETY: [ptr, ptr + len) is this buffer, inside the pool's
        // region, which outlives every buffer (PoolHandle, Lifetime); the
        // memory is initialised (zeroed at mmap, then written by DMA or
        // through handles). The handle owns the buffer exclusively (the pool
        // hands each index out once, claims its whole region so no DmaArray
        // overlaps it, and a driver takes the handle for as long as its
        // device may touch the buffer, giving it back only when the device
        // is done), and `&mut self` excludes every other borrow of it, a
        // shared one lent to a device included, for the slice's lifetime.
        // As with `read`/`write`, this rests on the drivers' ownership
        // rule; a device aimed at the buffer behind the driver's back
        // (raw BAR writes through `PciDevice::map_bar`, or a `sim` model's
        // `SimDma`) is outside it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    /// The buffer's bytes, written in place (no copy); see
    /// [`DmaBuf::as_slice`] for why this is sound and what the borrow
    /// forbids.
    /// ```compile_fail,E0505
    /// # use fastlane_framework::{BufferPool, PageSize};
    /// let pool = BufferPool::new_unmapped(64, 4, PageSize::Small).unwrap();
    /// let mut buf = pool.alloc().unwrap();
    /// let bytes = buf.as_mut_slice();
    /// let moved = buf; // handed on (to a driver, say): the slice must end
    /// bytes[0] = 1;
    /// # drop(moved);
    /// ```
    #[inline(always)]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`: this handle's own bytes, no other
        // borrow of the handle and no device access while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }

    /// Copies `data` in at `offset`.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: in bounds; raw copy into memory this handle owns.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// Copies bytes at `offset` out into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len())?;
        // SAFETY: in bounds; raw copy out of memory this handle owns.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Sets the whole buffer to `byte`.
    pub fn fill(&mut self, byte: u8) {
        // SAFETY: exactly the buffer's bytes.
        unsafe { std::ptr::write_bytes(self.as_ptr(), byte, self.len()) };
    }

    /// Reads up to `len` bytes from `fd` (a socket, a file) straight into
    /// the buffer at `offset`: one `read(2)`, no copy through a Rust slice,
    /// so a network target moves data between the wire and the memory the
    /// device reads. Returns the bytes read, like `read(2)`.
    pub fn read_from_fd(&mut self, offset: usize, len: usize, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.check(offset, len).map_err(io::Error::other)?;
        // SAFETY: [offset, offset + len) is inside the buffer this handle
        // owns exclusively (&mut self); the kernel writes at most len bytes
        // there, and no Rust reference to the memory exists.
        let n = unsafe { libc::read(fd.as_raw_fd(), self.as_ptr().add(offset).cast(), len) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes `head` and then `len` bytes of the buffer at `offset` to `fd`
    /// in one `writev(2)` (a PDU header and its data, without copying the
    /// data). Returns the bytes written, which may be fewer than asked.
    pub fn write_to_fd(&self, head: &[u8], offset: usize, len: usize, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.check(offset, len).map_err(io::Error::other)?;
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                // Inside the buffer (checked above); the kernel only reads.
                iov_base: self.as_ptr().wrapping_add(offset).cast(),
                iov_len: len,
            },
        ];
        // SAFETY: both iovecs describe live memory of their lengths (the
        // slice, and the checked range of the buffer this handle owns);
        // writev only reads them.
        let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "{len} bytes at offset {offset} outside a {}-byte buffer",
                self.len()
            ))),
        }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        let inner = self.inner();
        // Cannot fail: the queue holds every index and each is out once.
        let _ = inner.free.push(self.index);
        // After `returned` the pool may be gone, unless this buffer frees it.
        if inner.life.returned(1) {
            // SAFETY: chosen by the lifetime protocol; nothing else is left.
            unsafe { PoolInner::release(self.pool) };
        }
    }
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmaBuf(pool {}, #{}, {})", self.inner().id, self.index, self.iova())
    }
}

/// A thread's cache in front of a pool. Not shared: each thread makes its own.
pub struct PoolCache {
    pool: BufferPool,
    local: Vec<u32>,
    size: usize,
}

impl PoolCache {
    /// One buffer, refilling half the cache from the pool when empty.
    #[inline]
    pub fn alloc(&mut self) -> Result<DmaBuf, PoolError> {
        if self.local.is_empty() {
            self.refill(self.size / 2);
        }
        let i = self.local.pop().ok_or(PoolError::Empty)?;
        Ok(self.pool.make(i))
    }

    /// Exactly `n` buffers appended to `out`, or none and `Empty`.
    pub fn alloc_bulk(&mut self, n: usize, out: &mut Vec<DmaBuf>) -> Result<(), PoolError> {
        if self.local.len() < n {
            self.refill(n - self.local.len() + self.size / 2);
        }
        if self.local.len() < n {
            return Err(PoolError::Empty);
        }
        let from = self.local.len() - n;
        out.extend(self.local.drain(from..).map(|i| self.pool.make(i)));
        Ok(())
    }

    /// At least `n` buffers in the stash if the pool has them (refilling
    /// from the shared queue when short); returns how many are there. A
    /// receive loop calls it once per burst, then [`PoolCache::take`].
    #[inline]
    pub fn ensure(&mut self, n: usize) -> usize {
        if self.local.len() < n {
            self.refill(n - self.local.len() + self.size / 2);
        }
        self.local.len()
    }

    /// One buffer from the stash, never refilling (see [`PoolCache::ensure`]).
    #[inline(always)]
    pub fn take(&mut self) -> Option<DmaBuf> {
        let i = self.local.pop()?;
        Some(self.pool.make(i))
    }

    /// `iova - va` of every buffer of the pool: a driver reads it once per
    /// burst instead of per buffer.
    #[inline(always)]
    pub fn iova_offset(&self) -> u64 {
        self.pool.inner().region.iova_offset()
    }

    /// The pool's id (as [`DmaBuf::pool_id`]).
    pub fn pool_id(&self) -> u64 {
        self.pool.id()
    }

    /// Whether `buf` is a buffer of this cache's pool: one pointer
    /// compare, for per-packet fast paths (such a buffer's IOVA is its
    /// pointer plus [`PoolCache::iova_offset`], without reaching its pool).
    #[inline(always)]
    pub fn owns(&self, buf: &DmaBuf) -> bool {
        buf.pool == self.pool.handle.inner
    }

    /// Returns every buffer `bufs` yields: this pool's into the stash,
    /// another pool's home to that pool, without an
    /// error value. For reclaiming a run of transmitted buffers; the stash
    /// never grows past its size (it spills half, as [`PoolCache::free`]).
    #[inline]
    pub fn free_all(&mut self, bufs: impl Iterator<Item = DmaBuf>) {
        let mine = self.pool.handle.inner;
        for buf in bufs {
            if buf.pool == mine {
                if self.local.len() >= self.size {
                    self.spill(self.size / 2);
                }
                self.local.push(buf.index);
                // In the stash now; its drop would push it to the queue.
                std::mem::forget(buf);
            } else {
                drop(buf);
            }
        }
    }

    /// Empties `slots`, returning each buffer in them: this pool's into the
    /// stash, another pool's home to that pool. The transmit-reclaim form
    /// of [`PoolCache::free_all`]: the room in the stash is worked out once
    /// per run instead of once per buffer, which keeps the loop to a few
    /// instructions per buffer.
    #[inline]
    pub fn free_slots(&mut self, slots: &mut [Option<DmaBuf>]) {
        let mine = self.pool.handle.inner;
        let mut rest = slots;
        while !rest.is_empty() {
            let room = self.size.saturating_sub(self.local.len());
            if room == 0 {
                self.spill(self.size / 2);
                continue;
            }
            let n = room.min(rest.len());
            let (now, later) = std::mem::take(&mut rest).split_at_mut(n);
            self.local.extend(now.iter_mut().filter_map(|slot| match slot.take() {
                Some(buf) if buf.pool == mine => {
                    let index = buf.index;
                    // In the stash now; its drop would push it to the queue.
                    std::mem::forget(buf);
                    Some(index)
                }
                other => {
                    drop(other);
                    None
                }
            }));
            rest = later;
        }
    }

    /// Returns a buffer to the local stash (spilling half when full).
    #[inline]
    pub fn free(&mut self, buf: DmaBuf) -> Result<(), PoolError> {
        let buf = self.pool.check_owner(buf)?;
        if self.local.len() >= self.size {
            self.spill(self.size / 2);
        }
        self.local.push(buf.index);
        // The index is in the stash now; skip the drop that would push it
        // to the shared queue (a buffer holds no reference count).
        std::mem::forget(buf);
        Ok(())
    }

    /// Returns every buffer of `bufs`; buffers of other pools are left in it.
    pub fn free_bulk(&mut self, bufs: &mut Vec<DmaBuf>) {
        let mut i = 0;
        while i < bufs.len() {
            if bufs[i].pool == self.pool.handle.inner {
                let b = bufs.swap_remove(i);
                // Cannot fail: ownership checked just above.
                let _ = self.free(b);
            } else {
                i += 1;
            }
        }
    }

    /// Buffers held in this cache.
    pub fn cached(&self) -> usize {
        self.local.len()
    }

    fn refill(&mut self, n: usize) {
        let inner = self.pool.inner();
        let mut got = 0;
        while got < n {
            match inner.free.pop() {
                Some(i) => self.local.push(i),
                None => break,
            }
            got += 1;
        }
        inner.life.taken(got as u64);
    }

    fn spill(&mut self, n: usize) {
        let inner = self.pool.inner();
        let mut put = 0;
        for _ in 0..n.min(self.local.len()) {
            if let Some(i) = self.local.pop() {
                let _ = inner.free.push(i);
                put += 1;
            }
        }
        // The cache holds a handle, so this is never the last owner.
        let last = inner.life.returned(put);
        debug_assert!(!last, "a cache outlived every handle of its pool");
    }
}

impl Drop for PoolCache {
    fn drop(&mut self) {
        self.spill(self.local.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(n: u32) -> BufferPool {
        BufferPool::new_unmapped(2048, n, PageSize::Small).unwrap()
    }

    #[test]
    fn buffers_are_distinct_aligned_and_carry_their_iova() {
        let p = pool(64);
        let bufs: Vec<_> = (0..64).map(|_| p.alloc().unwrap()).collect();
        let ptrs: HashSet<_> = bufs.iter().map(|b| b.as_ptr() as usize).collect();
        assert_eq!(ptrs.len(), 64);
        for b in &bufs {
            assert_eq!(b.as_ptr() as usize % 64, 0);
            assert_eq!(b.iova().get(), b.as_ptr() as u64 + p.region().iova_offset());
        }
        assert!(matches!(p.alloc(), Err(PoolError::Empty)));
        drop(bufs);
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn wrong_pool_is_refused_and_buffer_returned() {
        let (a, b) = (pool(4), pool(4));
        let mut cache = b.cache(4);
        let buf = a.alloc().unwrap();
        match cache.free(buf) {
            Err(PoolError::WrongPool { buf, expected, found }) => {
                assert_eq!((expected, found), (b.id(), a.id()));
                a.free(buf).unwrap();
            }
            other => panic!("expected WrongPool, got {other:?}"),
        }
        assert_eq!(a.available(), 4);
        assert_eq!(b.available(), 4);
    }

    #[test]
    fn cache_bulk_is_all_or_nothing_and_returns_everything() {
        let p = pool(40);
        let mut c = p.cache(16);
        let mut v = Vec::new();
        c.alloc_bulk(32, &mut v).unwrap();
        assert_eq!(v.len(), 32);
        assert!(matches!(c.alloc_bulk(9, &mut v), Err(PoolError::Empty)));
        assert_eq!(v.len(), 32);
        c.free_bulk(&mut v);
        assert!(v.is_empty());
        drop(c);
        assert_eq!(p.available(), 40);
    }

    #[test]
    fn data_round_trips_and_bounds_are_checked() {
        let p = pool(2);
        let mut b = p.alloc().unwrap();
        b.write(2040, b"12345678").unwrap();
        let mut out = [0u8; 8];
        b.read(2040, &mut out).unwrap();
        assert_eq!(&out, b"12345678");
        assert!(b.write(2041, b"12345678").is_err());
        assert!(b.read(usize::MAX, &mut out).is_err());
    }

    #[test]
    fn slices_are_the_buffers_own_bytes() {
        let p = pool(3);
        let (mut a, mut b) = (p.alloc().unwrap(), p.alloc().unwrap());
        a.fill(0xaa);
        b.fill(0xbb);
        assert_eq!(a.as_slice().len(), 2048);
        assert!(a.as_slice().iter().all(|&x| x == 0xaa), "nothing of a neighbour");
        a.as_mut_slice()[2047] = 1;
        a.as_mut_slice()[..4].copy_from_slice(b"head");
        let mut out = [0u8; 4];
        a.read(0, &mut out).unwrap();
        assert_eq!(&out, b"head");
        a.read(2044, &mut out).unwrap();
        assert_eq!(out, [0xaa, 0xaa, 0xaa, 1]);
        b.write(10, b"xy").unwrap();
        assert_eq!(&b.as_slice()[9..13], &[0xbb, b'x', b'y', 0xbb]);
        assert!(b.as_slice().iter().filter(|&&x| x != 0xbb).count() == 2, "a's writes stayed in a");
        // The compile-fail examples of `as_slice`, in the order that compiles.
        let bytes = a.as_slice();
        assert_eq!(bytes[0], b'h');
        let lent: &DmaBuf = &a;
        assert_eq!(lent.len(), 2048);
        p.free(a).unwrap();
    }

    #[test]
    fn threads_share_a_pool_without_losing_buffers() {
        let p = pool(256);
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut c = p.cache(32);
                    let mut held = Vec::new();
                    for i in 0..20_000u32 {
                        if (i * 7 + t) % 3 != 0 {
                            if let Ok(mut b) = c.alloc() {
                                b.write(0, &i.to_le_bytes()).unwrap();
                                held.push((b, i));
                            }
                        } else if let Some((b, v)) = held.pop() {
                            let mut x = [0; 4];
                            b.read(0, &mut x).unwrap();
                            assert_eq!(u32::from_le_bytes(x), v, "buffer shared by two owners");
                            c.free(b).unwrap();
                        }
                        if held.len() > 40 {
                            held.clear();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(p.available(), 256);
    }

    #[test]
    fn pool_memory_is_released_by_whichever_goes_last() {
        let p = pool(4);
        let region = p.region().clone();
        let b = p.cache(4).alloc().unwrap();
        drop(p);
        // The buffer outlives every handle and still works.
        let mut b = b;
        b.write(0, b"late").unwrap();
        drop(b);
        // The pool let go of its region: only our clone is left.
        assert_eq!(std::sync::Arc::strong_count(&region.inner), 1);
    }

    /// The last handle and the last buffer dropping on two threads at once:
    /// AddressSanitizer found the old protocol reading a freed pool here.
    #[test]
    fn last_handle_and_last_buffer_drop_concurrently() {
        for _ in 0..2000 {
            let p = pool(2);
            let (a, b) = (p.alloc().unwrap(), p.cache(2).alloc().unwrap());
            let go = std::sync::Arc::new(std::sync::Barrier::new(2));
            let g = go.clone();
            let t = std::thread::spawn(move || {
                g.wait();
                drop(a);
            });
            go.wait();
            drop(p);
            drop(b);
            t.join().unwrap();
        }
    }

    #[test]
    fn a_pools_region_cannot_be_carved() {
        let p = pool(4);
        assert!(p.region().carve::<u8>(0, 1).is_err());
        assert!(p.region().carve::<u64>(p.region().len() - 8, 1).is_err());
    }

    #[test]
    fn buffers_move_bytes_to_and_from_sockets_without_a_slice() {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let p = pool(2);
        let mut b = p.alloc().unwrap();
        let (mut a, c) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(b"payload!").unwrap();
        assert_eq!(b.read_from_fd(100, 8, c.as_fd()).unwrap(), 8);
        let mut out = [0u8; 8];
        b.read(100, &mut out).unwrap();
        assert_eq!(&out, b"payload!");
        assert_eq!(b.write_to_fd(b"hdr:", 100, 8, c.as_fd()).unwrap(), 12);
        let mut got = [0u8; 12];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hdr:payload!");
        assert!(b.read_from_fd(2040, 9, c.as_fd()).is_err(), "past the end");
        assert!(b.write_to_fd(b"", usize::MAX, 2, c.as_fd()).is_err(), "offset overflow");
    }

    #[test]
    fn ensure_take_and_free_all_keep_every_buffer() {
        let (p, q) = (pool(64), pool(4));
        let mut c = p.cache(16);
        assert!(c.ensure(10) >= 10);
        let mut v: Vec<DmaBuf> = (0..10).map(|_| c.take().unwrap()).collect();
        assert!(v.iter().all(|b| b.pool_id() == c.pool_id()));
        assert_eq!(v[0].iova().get(), v[0].as_ptr() as u64 + c.iova_offset());
        v.push(q.alloc().unwrap()); // a stranger goes home, not into c
        c.free_all(v.drain(..));
        assert_eq!(q.available(), 4);
        let mut all = Vec::new();
        while c.ensure(1) > 0 {
            all.push(c.take().unwrap());
        }
        assert_eq!(all.len(), 64, "every buffer reachable again");
        assert!(c.take().is_none());
        c.free_all(all.into_iter());
        drop(c);
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn free_slots_empties_every_slot_and_sends_strangers_home() {
        let (p, q) = (pool(100), pool(4));
        let mut c = p.cache(8); // 100 buffers through a stash of 8: spills many times
        let mut slots: Vec<Option<DmaBuf>> = (0..100).map(|_| Some(p.alloc().unwrap())).collect();
        slots[3] = None;
        slots[50] = Some(q.alloc().unwrap());
        let mine = p.alloc().unwrap(); // slots 3 and 50 lost theirs: 98 of p in slots
        assert_eq!(p.available(), 1);
        c.free_slots(&mut slots);
        assert!(slots.iter().all(Option::is_none));
        assert_eq!(q.available(), 4, "the stranger went home");
        assert!(c.cached() <= 8, "the stash never outgrows its size");
        drop((mine, c));
        assert_eq!(p.available(), 100);
        let mut c = p.cache(8);
        c.free_slots(&mut []);
        assert_eq!(c.cached(), 0);
    }

    #[test]
    fn iova_in_checks_the_domain() {
        let p = pool(2);
        let b = p.alloc().unwrap();
        assert_eq!(b.iova_in(DmaDomain::UNMAPPED), Some(b.iova()));
        assert_eq!(b.iova_in(DmaDomain(12345)), None);
    }

    #[test]
    fn zero_sizes_are_rejected() {
        assert!(BufferPool::new_unmapped(0, 4, PageSize::Small).is_err());
        assert!(BufferPool::new_unmapped(64, 0, PageSize::Small).is_err());
        assert!(BufferPool::new_unmapped(usize::MAX / 2, 4, PageSize::Small).is_err());
    }
}

/// Every interleaving of the lifetime protocol (loom): the last handle and
/// the last buffers dropping on different threads free the pool exactly
/// once, and nobody touches it afterwards. Run with
/// `RUSTFLAGS="--cfg loom" cargo test -p fastlane-framework --release --lib lifetime_model`.
#[cfg(all(test, loom))]
mod lifetime_model {
    use super::Lifetime;
    use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use loom::sync::Arc;

    /// The pool's memory: accesses after the free are what ASan once caught.
    struct Pool {
        life: Lifetime,
        freed: AtomicUsize,
    }

    impl Pool {
        fn touch(&self) {
            assert_eq!(self.freed.load(SeqCst), 0, "pool used after it was freed");
        }
        fn free(&self) {
            assert_eq!(self.freed.fetch_add(1, SeqCst), 0, "pool freed twice");
        }
    }

    fn buffer_drop(p: &Pool) {
        p.touch(); // the push of the index back into the queue
        if p.life.returned(1) {
            p.free();
        }
    }

    fn handle_drop(p: &Pool) {
        p.touch(); // the handle's look at the queue length
        if p.life.orphan() {
            p.free();
        }
    }

    #[test]
    fn last_handle_and_two_buffers_on_three_threads() {
        loom::model(|| {
            let p = Arc::new(Pool { life: Lifetime::new(), freed: AtomicUsize::new(0) });
            p.life.taken(2);
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let p = p.clone();
                    loom::thread::spawn(move || buffer_drop(&p))
                })
                .collect();
            handle_drop(&p);
            for t in ts {
                t.join().unwrap();
            }
            assert_eq!(p.freed.load(SeqCst), 1, "pool leaked");
        });
    }

    #[test]
    fn cache_spill_while_a_buffer_drops_elsewhere() {
        loom::model(|| {
            let p = Arc::new(Pool { life: Lifetime::new(), freed: AtomicUsize::new(0) });
            p.life.taken(3); // two in a cache, one in a buffer
            let q = p.clone();
            let b = loom::thread::spawn(move || buffer_drop(&q));
            // The cache (holding a handle) spills, then the handle drops.
            p.touch();
            assert!(!p.life.returned(2), "a cache's spill freed the pool");
            handle_drop(&p);
            b.join().unwrap();
            assert_eq!(p.freed.load(SeqCst), 1, "pool leaked");
        });
    }
}
