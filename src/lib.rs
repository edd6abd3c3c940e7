//! fastlane: userspace polling-mode drivers on hugepage memory mapped once
//! through VFIO. This crate is what an application links; it re-exports the
//! framework and the drivers.
//!
//! - [`framework`]: DMA regions, buffer pools, VFIO devices, MMIO.
//! - [`nvme`]: the NVMe polling-mode driver.
//! - [`nic`]: NIC polling-mode drivers (igb, virtio-net).

pub use fastlane_framework as framework;
pub use fastlane_nvme as nvme;
pub use fastlane_nic as nic;
