//! Typed errors of the framework. Each variant says what went wrong and, where
//! the user can fix it, what to run.

use std::io;
use std::path::PathBuf;

use crate::pci::PciAddress;

/// Errors from memory, VFIO and device access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not enough free {page_size} hugepages for {bytes} bytes ({free} free): run `hugepages.sh setup`")]
    NoHugepages {
        page_size: crate::PageSize,
        bytes: usize,
        free: u64,
    },
    #[error("invalid PCI address {0:?}: expected DDDD:BB:DD.F, e.g. 0000:00:04.0")]
    BadPciAddress(String),
    #[error("PCI device {0} does not exist (see `hugepages.sh status`)")]
    NoSuchDevice(PciAddress),
    #[error("PCI device {addr} is bound to the kernel driver {driver}: run `hugepages.sh bind {addr}`")]
    BoundToKernel { addr: PciAddress, driver: String },
    #[error("PCI device {0} is not bound to vfio-pci: run `hugepages.sh bind {0}`")]
    NotBound(PciAddress),
    #[error("PCI device {0} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line)")]
    NoIommu(PciAddress),
    #[error("VFIO is not available ({0}): load vfio-pci with `hugepages.sh setup`")]
    NoVfio(#[source] io::Error),
    #[error("IOMMU group {group} of {addr} is not viable: bind every device of the group to vfio-pci")]
    GroupNotViable { addr: PciAddress, group: u32 },
    #[error("permission denied on {path}: run as root, or see README \"Running as an ordinary user\"")]
    PermissionDenied { path: PathBuf },
    #[error("PCI device {0} is busy: it is open already (a handle in this process, or another process holding its VFIO group)")]
    Busy(PciAddress),
    #[error("mapping {len:#x} bytes at IOVA {iova:#x} failed: locked-memory limit too small ({limit}); raise it with `ulimit -l unlimited` or /etc/security/limits.conf")]
    MemlockLimit { iova: u64, len: usize, limit: String },
    #[error("mapping {len:#x} bytes at IOVA {iova:#x} through the IOMMU failed: {source}")]
    DmaMap {
        iova: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("no free IOVA range of {0:#x} bytes in the IOMMU aperture")]
    IovaExhausted(usize),
    #[error("BAR{bar} of {addr} cannot be mapped: {why}")]
    Bar {
        addr: PciAddress,
        bar: u32,
        why: String,
    },
    #[error("VFIO call failed for {addr}: {source}")]
    Vfio {
        addr: PciAddress,
        #[source]
        source: vfio_ioctls::VfioError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
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
