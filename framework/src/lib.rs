//! The fastlane framework: what every polling-mode driver stands on.
//!
//! - [`DmaRegion`]: hugepage memory mapped through the IOMMU once, with a
//!   constant IOVA offset (zero when identity mapping fits the aperture),
//!   for as long as the region lives, whatever devices come and go.
//! - [`DmaArray`]: typed, bounds-checked volatile arrays carved out of a
//!   region (rings, descriptors, PRP lists); the only way drivers touch
//!   memory a device shares, so drivers need no `unsafe`.
//! - [`BufferPool`] / [`DmaBuf`]: fixed-size DMA buffers that carry their IOVA.
//! - [`Vfio`] / [`PciDevice`] / [`Mmio`]: devices through VFIO, config space,
//!   bus mastering, BARs as volatile register blocks.
//! - [`MsixVectors`] / [`Interrupt`]: MSI-X vectors as eventfds, for
//!   threads that sleep when idle instead of spinning.
//!
//! ```no_run
//! use fastlane_framework::{Vfio, BufferPool, PageSize};
//! let vfio = Vfio::new()?;
//! let dev = vfio.open("0000:00:04.0")?;
//! dev.enable_dma()?;
//! let bar0 = dev.map_bar(0)?;
//! let pool = BufferPool::new(&vfio, 4096, 1024, PageSize::Huge2M)?;
//! let buf = pool.alloc()?;
//! println!("version {:#x}, buffer at {}", bar0.read32(0x08), buf.iova());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A buffer cannot be freed twice: freeing consumes the handle.
//! ```compile_fail
//! # use fastlane_framework::{BufferPool, PageSize};
//! let pool = BufferPool::new_unmapped(64, 4, PageSize::Small).unwrap();
//! let buf = pool.alloc().unwrap();
//! pool.free(buf).unwrap();
//! pool.free(buf).unwrap();
//! ```
//!
//! A region has no byte access: bytes belong to an array or a buffer.
//! ```compile_fail
//! # use fastlane_framework::{DmaRegion, PageSize};
//! let r = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
//! r.write(0, b"not mine").unwrap();
//! ```
//!
//! An array is written by one thread at a time: it cannot be shared.
//! ```compile_fail
//! # use fastlane_framework::{DmaRegion, PageSize};
//! let r = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
//! let a = r.carve::<u64>(0, 8).unwrap();
//! std::thread::scope(|s| { s.spawn(|| a.write(0, 1)); a.write(0, 2); });
//! ```
//!
//! Raw device addresses need a promise made in `unsafe` code.
//! ```compile_fail
//! let token = fastlane_framework::UncheckedDma::promise();
//! ```

pub mod addr;
pub mod dma;
pub mod error;
pub mod hugepage;
pub mod iova;
pub mod irq;
pub mod mmio;
pub mod pci;
pub mod pool;
pub mod region;
pub mod removal;
#[cfg(feature = "sim")]
pub mod sim;
pub mod vfio;

pub use addr::{DmaDomain, Iova, UncheckedDma};
pub use dma::{Claim, DmaArray};
pub use error::{Error, Result};
pub use hugepage::PageSize;
pub use irq::{Interrupt, MsixVectors};
pub use mmio::{Mmio, Reg32};
pub use pci::{PciAddress, PciDevice};
pub use pool::{BufferPool, DmaBuf, PoolCache, PoolError};
pub use region::DmaRegion;
pub use removal::Removal;
pub use vfio::Vfio;
