//! virtio-net driver: modern virtio-pci (virtio 1.x) with split virtqueues,
//! polled, through VFIO; one queue pair, or several with RSS.
//!
//! - `spec`: the virtio structures, registers and bits, declared once;
//! - `pci`: the PCI transport (capabilities, common configuration,
//!   notifications, device configuration);
//! - `virtqueue`: split rings in DMA memory, with the pure ring bookkeeping
//!   unit-tested on its own;
//! - `packed`: packed rings (VIRTIO_F_RING_PACKED), the same way;
//! - `rx`, `tx`, `ctrl`: the receive (mergeable buffers for jumbo frames,
//!   checksum flags), transmit (multi-buffer chains, checksum offload) and
//!   control queues;
//! - `rss`: the RSS setup of a multi-queue port and its queue prediction;
//! - `net`: [`VirtioNet`], device bring-up and the [`crate::Nic`] interface
//!   on each queue pair;
//! - `cost`: the bursts' instructions per packet against the model, for
//!   callgrind (tests only).
//!
//! The device must reach memory through the IOMMU (VIRTIO_F_ACCESS_PLATFORM;
//! in QEMU `-device virtio-net-pci,...,iommu_platform=on`), since every
//! address the driver hands it is an IOVA.

mod cost;
mod ctrl;
mod net;
pub mod packed;
pub mod pci;
mod ring;
pub mod rss;
mod rx;
#[cfg(feature = "sim")]
pub mod sim;
pub mod spec;
mod tx;
pub mod virtqueue;

use fastlane_framework::{DmaBuf, PoolCache};

pub use net::{negotiate, negotiate_for, negotiate_queues, negotiate_with, queue_size, VirtioNet};
pub use rss::RssSetup;
pub use rx::RX_HEADROOM;
pub use tx::{check_frame, check_packet, MIN_TX_FRAME};

/// Gives a buffer back: to the port's cache when it is from that pool,
/// otherwise to its own pool.
fn release(cache: &mut PoolCache, buf: DmaBuf) {
    cache.free_all(std::iter::once(buf));
}
