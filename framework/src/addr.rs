//! Address newtypes: a device address (IOVA) cannot be mixed up with a
//! process pointer by accident.

use std::fmt;

/// An I/O virtual address: what a device puts on the bus for DMA. For memory
/// from a [`crate::DmaRegion`] it is the pointer plus the region's constant
/// offset (zero when the region is identity mapped).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Iova(pub u64);

impl Iova {
    /// The raw bus address, as written into descriptors and commands.
    #[inline(always)]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The address `n` bytes further.
    #[inline(always)]
    pub const fn add(self, n: u64) -> Iova {
        Iova(self.0.wrapping_add(n))
    }
}

impl fmt::Debug for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iova({:#x})", self.0)
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Which IOMMU address space a buffer is mapped in: one per VFIO container.
/// A device can only reach buffers of its own container's domain, so drivers
/// compare domains before handing an IOVA to a device (a buffer of another
/// container has an IOVA that means something else, or nothing, here).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DmaDomain(pub(crate) usize);

impl DmaDomain {
    /// Memory no IOMMU maps (in-process device models): IOVA == VA.
    pub const UNMAPPED: DmaDomain = DmaDomain(0);
}

/// A caller's promise, made in `unsafe` code, that device addresses it
/// wrote by hand (a raw NVMe admin command's pointers, say) point only at
/// memory the device may read or write for that command, and that this
/// memory stays untouched until the command completes. Driver APIs that
/// pass such addresses through unchecked take one, so safe code cannot.
#[derive(Debug)]
pub struct UncheckedDma(());

impl UncheckedDma {
    /// Makes the promise.
    ///
    /// # Safety
    /// Every device address the caller passes along with this token must
    /// meet the promise above; the framework cannot check it.
    pub unsafe fn promise() -> UncheckedDma {
        UncheckedDma(())
    }
}
