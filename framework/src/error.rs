//! Typed errors of the framework. Each variant says what went wrong and, where
//! the user can fix it, what to run.

use std::io;
use std::path::PathBuf;

use crate::pci::PciAddress;

/// Errors from memory, VFIO and device access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hugepage pool cannot back the region.
    #[error("not enough free {page_size} hugepages for {bytes} bytes ({free} free): run `hugepages.sh setup`")]
    NoHugepages {
        /// Page size asked for.
        page_size: crate::PageSize,
        /// Bytes asked for.
        bytes: usize,
        /// Pages of that size free now.
        free: u64,
    },
    /// The text is not a PCI address.
    #[error("invalid PCI address {0:?}: expected DDDD:BB:DD.F, e.g. 0000:00:04.0")]
    BadPciAddress(String),
    /// No PCI device at that address.
    #[error("PCI device {0} does not exist (see `hugepages.sh status`)")]
    NoSuchDevice(PciAddress),
    /// A kernel driver owns the device.
    #[error("PCI device {addr} is bound to the kernel driver {driver}: run `hugepages.sh bind {addr}`")]
    BoundToKernel {
        /// The device.
        addr: PciAddress,
        /// The kernel driver bound to it.
        driver: String,
    },
    /// No driver at all is bound to the device.
    #[error("PCI device {0} is not bound to vfio-pci: run `hugepages.sh bind {0}`")]
    NotBound(PciAddress),
    /// The device has no IOMMU group (IOMMU off).
    #[error("PCI device {0} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line)")]
    NoIommu(PciAddress),
    /// `/dev/vfio/vfio` cannot be opened.
    #[error("VFIO is not available ({0}): load vfio-pci with `hugepages.sh setup`")]
    NoVfio(#[source] io::Error),
    /// Another device of the IOMMU group is not on vfio-pci.
    #[error("IOMMU group {group} of {addr} is not viable: bind every device of the group to vfio-pci")]
    GroupNotViable {
        /// The device.
        addr: PciAddress,
        /// Its IOMMU group.
        group: u32,
    },
    /// The process may not open a VFIO file.
    #[error("permission denied on {path}: run as root, or see README \"Running as an ordinary user\"")]
    PermissionDenied {
        /// The file refused.
        path: PathBuf,
    },
    /// The device is open already, here or in another process.
    #[error("PCI device {0} is busy: it is open already (a handle in this process, or another process holding its VFIO group)")]
    Busy(PciAddress),
    /// RLIMIT_MEMLOCK cannot cover the mapping.
    #[error("mapping {len:#x} bytes at IOVA {iova:#x} failed: locked-memory limit too small ({limit}); raise it with `ulimit -l unlimited` or /etc/security/limits.conf")]
    MemlockLimit {
        /// Where the mapping was to go.
        iova: u64,
        /// Its length in bytes.
        len: usize,
        /// The current limit, as text.
        limit: String,
    },
    /// `VFIO_IOMMU_MAP_DMA` failed for another reason.
    #[error("mapping {len:#x} bytes at IOVA {iova:#x} through the IOMMU failed: {source}")]
    DmaMap {
        /// Where the mapping was to go.
        iova: u64,
        /// Its length in bytes.
        len: usize,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The aperture has no free range of that size.
    #[error("no free IOVA range of {0:#x} bytes in the IOMMU aperture")]
    IovaExhausted(usize),
    /// A BAR cannot be mapped into the process.
    #[error("BAR{bar} of {addr} cannot be mapped: {why}")]
    Bar {
        /// The device.
        addr: PciAddress,
        /// BAR index.
        bar: u32,
        /// What stood in the way.
        why: String,
    },
    /// Another VFIO call failed.
    #[error("VFIO call failed for {addr}: {source}")]
    Vfio {
        /// The device.
        addr: PciAddress,
        /// The VFIO error.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The device is being removed (hot unplug) or is gone: its handle
    /// was released so the kernel could finish removing it.
    #[error("PCI device {0} was removed")]
    Removed(PciAddress),
    /// This container let the device's IOMMU group go in a removal (or
    /// lost every device to one): a device coming back is opened in a new
    /// `Vfio`.
    #[error("PCI device {0}: its VFIO container released the device's group in a removal; open it in a new Vfio")]
    Released(PciAddress),
    /// The caller asked for something impossible.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result alias of the framework.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
