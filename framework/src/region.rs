//! DMA regions: hugepage memory that a device reaches through the IOMMU.
//!
//! A region is mapped through VFIO exactly once, when it is created (or when
//! the first device is opened, for a region made before any device). Its
//! IOVA is then `pointer + offset` with one constant offset for the whole
//! region, so no lookup is ever needed on the data path.
//!
//! The memory is shared with devices, so it is only touched through raw
//! pointers (volatile or `copy_nonoverlapping`), never through Rust
//! references: a device may write it at any time. A region offers no byte
//! access of its own: bytes are reached through their owner, a
//! [`crate::DmaArray`] carved from the region or a [`crate::DmaBuf`] of a
//! pool built on it, and two owners never share a byte.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use memmap2::MmapMut;

use crate::addr::{DmaDomain, Iova};
use crate::dma::Claims;
use crate::error::{Error, Result};
use crate::hugepage::{self, PageSize};
use crate::vfio::Shared;

/// Live unmapped regions, for the simulated devices' address checks.
pub(crate) static UNMAPPED: Mutex<Vec<Weak<RegionInner>>> = Mutex::new(Vec::new());

/// A contiguous range of DMA-able memory. Cloning shares the same memory.
#[derive(Clone)]
pub struct DmaRegion {
    pub(crate) inner: Arc<RegionInner>,
}

pub(crate) struct RegionInner {
    ptr: NonNull<u8>,
    len: usize,
    page_size: PageSize,
    /// `iova - va`, wrapping. Zero until mapped (and for unmapped regions).
    offset: AtomicU64,
    /// Where it is mapped, once it is.
    pub(crate) iova: OnceLock<u64>,
    /// The container's domain once mapped; UNMAPPED (0) before.
    domain: AtomicUsize,
    /// The container it is (or will be) mapped into.
    vfio: Option<Arc<Shared>>,
    /// Byte ranges owned by arrays and pools carved from the region.
    pub(crate) claims: Claims,
    /// Owns the mapping; never dereferenced (see the module doc).
    _map: MmapMut,
}

// SAFETY: the region is plain memory addressed through raw pointers; all
// access goes through volatile/copy operations whose synchronisation is the
// caller's protocol with the device (doorbells, descriptor ownership bits).
unsafe impl Send for RegionInner {}
// SAFETY: as above; the only interior mutability is atomics and a OnceLock.
unsafe impl Sync for RegionInner {}

impl DmaRegion {
    /// Allocates `len` bytes (rounded up to whole pages) that no IOMMU maps:
    /// its IOVA equals its address. For in-process simulated devices and
    /// tests; real devices need [`crate::Vfio::alloc_region`].
    pub fn new_unmapped(len: usize, page_size: PageSize) -> Result<DmaRegion> {
        Self::allocate(len, page_size, None)
    }

    pub(crate) fn allocate(
        len: usize,
        page_size: PageSize,
        vfio: Option<Arc<Shared>>,
    ) -> Result<DmaRegion> {
        let unmapped = vfio.is_none();
        let len = page_size
            .round_up(len)
            .ok_or_else(|| Error::InvalidArgument(format!("region of {len} bytes")))?;
        let mut map = hugepage::map(len, page_size)?;
        let ptr = NonNull::new(map.as_mut_ptr())
            .ok_or_else(|| Error::InvalidArgument("mmap returned null".into()))?;
        // SAFETY: ptr/len describe the mapping we own. MADV_DONTFORK keeps a
        // fork from turning the pages the device holds into copy-on-write
        // pages. Failure only loses that protection, so it is logged.
        let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTFORK) };
        if rc != 0 {
            log::warn!("madvise(MADV_DONTFORK): {}", std::io::Error::last_os_error());
        }
        Ok(DmaRegion {
            inner: Arc::new(RegionInner {
                ptr,
                len,
                page_size,
                offset: AtomicU64::new(0),
                iova: OnceLock::new(),
                domain: AtomicUsize::new(0),
                vfio,
                claims: Claims::default(),
                _map: map,
            }),
        }
        .registered(unmapped))
    }

    /// Unmapped regions are what in-process device models reach by address
    /// (IOVA == VA); the registry lets them check an address first.
    fn registered(self, unmapped: bool) -> DmaRegion {
        if unmapped {
            let mut list = UNMAPPED.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&self.inner));
        }
        self
    }

    /// First byte of the region.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.ptr.as_ptr()
    }

    /// Length in bytes (whole pages).
    #[inline]
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Never true: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The page size backing the region.
    pub fn page_size(&self) -> PageSize {
        self.inner.page_size
    }

    /// `iova - va` for this region (wrapping); zero when identity mapped.
    #[inline]
    pub fn iova_offset(&self) -> u64 {
        self.inner.offset.load(Ordering::Relaxed)
    }

    /// The IOMMU domain the region is mapped in ([`DmaDomain::UNMAPPED`]
    /// until it is mapped, and for unmapped regions).
    #[inline(always)]
    pub fn domain(&self) -> DmaDomain {
        DmaDomain(self.inner.domain.load(Ordering::Acquire))
    }

    /// Whether the region is mapped through an IOMMU yet.
    pub fn is_mapped(&self) -> bool {
        self.inner.iova.get().is_some()
    }

    /// Whether its IOVA equals its virtual address.
    pub fn is_identity(&self) -> bool {
        self.iova_offset() == 0
    }

    /// IOVA of the byte at `offset` into the region: a single add.
    #[inline(always)]
    pub fn iova_at(&self, offset: usize) -> Iova {
        debug_assert!(offset <= self.inner.len);
        Iova((self.as_ptr() as u64 + offset as u64).wrapping_add(self.iova_offset()))
    }

    /// IOVA of an arbitrary pointer, if it lies inside this region.
    pub fn iova_of(&self, ptr: *const u8) -> Option<Iova> {
        let off = (ptr as usize).checked_sub(self.as_ptr() as usize)?;
        (off < self.inner.len).then(|| self.iova_at(off))
    }
}

impl RegionInner {
    pub(crate) fn va(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn align(&self) -> u64 {
        self.page_size.bytes() as u64
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Records the IOVA chosen for the region; called once by the container.
    pub(crate) fn set_iova(&self, iova: u64) {
        self.offset.store(iova.wrapping_sub(self.va()), Ordering::Relaxed);
        let _ = self.iova.set(iova);
        let domain = self.vfio.as_ref().map_or(0, |v| Arc::as_ptr(v) as usize);
        self.domain.store(domain, Ordering::Release);
    }
}

impl Drop for RegionInner {
    fn drop(&mut self) {
        // Unmap from the IOMMU before the memory goes back to the system, so
        // a device still pointing here faults instead of writing freed pages.
        if let (Some(vfio), Some(&iova)) = (&self.vfio, self.iova.get()) {
            vfio.unmap(iova, self.len, self.va());
        }
    }
}

impl std::fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaRegion")
            .field("va", &self.as_ptr())
            .field("len", &self.len())
            .field("page_size", &self.page_size())
            .field("iova", &self.inner.iova.get().map(|i| Iova(*i)))
            .finish()
    }
}
