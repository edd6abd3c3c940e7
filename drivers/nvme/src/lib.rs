#![forbid(unsafe_code)]
//! NVMe polling-mode driver for the fastlane userspace driver framework.
//!
//! `spec` declares every NVMe register and structure once, `queue` holds the
//! pure submission/completion ring and command-id logic, `prp` builds PRP
//! entries and lists from IOVAs, `ring` puts a queue pair in DMA memory,
//! `controller` brings the device up and owns the admin queue, `qpair` is
//! the per-thread I/O path, `metadata` and `protection` describe per-block
//! metadata and end-to-end protection information, `aio` puts async/await
//! on it and `executor` runs the tasks of one thread. `sim` (cargo feature
//! `sim`) is an in-process controller model for tests and benchmarks.
//!
//! The crate has no `unsafe` code: every access to memory the device shares
//! goes through the framework's [`fastlane_framework::DmaArray`], and the
//! only way to hand the device an address the driver did not fill in
//! itself is [`Controller::admin_command_raw`], which takes an
//! [`fastlane_framework::UncheckedDma`] promise.
//!
//! ```no_run
//! use fastlane_framework::{BufferPool, PageSize, Vfio};
//! use fastlane_nvme::{Controller, Options};
//! let vfio = Vfio::new()?;
//! let ctrl = Controller::open(&vfio, "0000:00:04.0", Options::default())?;
//! let ns = ctrl.namespaces()[0];
//! let pool = BufferPool::new(&vfio, 4096, 64, PageSize::Huge2M)?;
//! let mut qp = ctrl.create_qpair(64)?;
//! qp.read(ns.id, 0, 4096 / ns.block_size, pool.alloc()?, 7).map_err(|r| r.error)?;
//! qp.submit();
//! let mut done = 0;
//! while done == 0 {
//!     done += qp.poll(16, |c| assert!(c.result.is_ok() && c.tag == 7));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod aio;
pub mod controller;
pub mod error;
pub mod executor;
pub mod metadata;
pub mod pattern;
pub mod protection;
pub mod prp;
pub mod qpair;
pub mod queue;
mod ring;
#[cfg(feature = "sim")]
pub mod sim;
pub mod spec;

pub use aio::{AioStats, AsyncQueue, Io};
pub use controller::{
    Controller, ControllerInfo, DataPointer, Namespace, Options, QueueSize, MAX_COMMAND_BYTES,
};
pub use error::{NvmeError, Rejected, RejectedMeta, Result};
pub use executor::{block_on, ExecutorFull, LocalExecutor};
pub use metadata::{MetadataFormat, MetadataLayout};
pub use protection::{PiCheck, PiChecker, PiError, PiField, PiTuple, PiType, Protection};
pub use qpair::{Completion, IoQueuePair, QpairStats};
