//! Typed errors of the NVMe driver. Device status codes stay typed
//! ([`NvmeStatus`]); nothing the device or the caller sends becomes a panic.

use std::time::Duration;

use fastlane_framework::DmaBuf;

use crate::prp::PrpError;
use crate::queue::QueueError;
use crate::spec::NvmeStatus;

/// Errors of the NVMe driver.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error(transparent)]
    Framework(#[from] fastlane_framework::Error),
    #[error("{addr} is not an NVMe controller (class code {class:06x}, expected 010802)")]
    NotNvme { addr: String, class: u32 },
    #[error("the controller does not support the NVM command set")]
    NoNvmCommandSet,
    #[error("command failed: {0}")]
    Status(#[from] NvmeStatus),
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("controller fatal status (CSTS.CFS); reset the controller")]
    ControllerFatal,
    #[error("the controller was reset; the command was not completed")]
    Reset,
    #[error("queue full: poll completions, then submit again")]
    QueueFull,
    #[error("namespace {0} does not exist")]
    InvalidNamespace(u32),
    #[error("blocks {lba}..{lba}+{blocks} outside the namespace of {capacity} blocks")]
    LbaOutOfRange {
        lba: u64,
        blocks: u32,
        capacity: u64,
    },
    #[error("the transfer needs {need} bytes but the buffer has {have}")]
    BufferTooSmall { need: usize, have: usize },
    #[error(
        "transfer of {bytes} bytes exceeds the controller's maximum of {max} (MDTS); split it"
    )]
    TooLarge { bytes: usize, max: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("PRP: {0}")]
    Prp(#[from] PrpError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("no I/O queue left: the controller granted {0}")]
    NoQueuesLeft(u16),
    #[error("the buffer is not mapped in this controller's VFIO container (allocate it from a pool of the same Vfio)")]
    ForeignBuffer,
    #[error("malformed data from the device: {0}")]
    Malformed(&'static str),
    /// The safe admin API refused a command it cannot vouch for: one that
    /// may carry a device address the driver did not fill in itself (a
    /// metadata pointer, a Host Memory Buffer descriptor list, queue bases)
    /// or that changes queues the driver owns. Such commands go through
    /// `Controller::admin_command_raw` with an `UncheckedDma` promise.
    #[error("admin command {opcode:#04x} refused by the safe API: {why}")]
    UnsafeCommand {
        /// The command's opcode.
        opcode: u8,
        /// What made it unsafe.
        why: &'static str,
    },
}

impl NvmeError {
    /// The device is open already in this container (or held by another
    /// process): the framework's `Busy`.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            NvmeError::Framework(fastlane_framework::Error::Busy(_))
        )
    }
}

/// A submission the queue pair did not take: the error and the buffer,
/// handed back so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    #[source]
    pub error: NvmeError,
    pub buf: Option<DmaBuf>,
}

impl Rejected {
    pub(crate) fn new(error: NvmeError, buf: Option<DmaBuf>) -> Self {
        Rejected { error, buf }
    }
}

/// Result alias of the driver.
pub type Result<T, E = NvmeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_passes_through_recognisably() {
        let addr = "00:04.0".parse().unwrap();
        let e = NvmeError::from(fastlane_framework::Error::Busy(addr));
        assert!(e.is_busy());
        assert!(e.to_string().contains("busy"), "{e}");
        assert!(e.to_string().contains("0000:00:04.0"), "{e}");
        assert!(!NvmeError::QueueFull.is_busy());
    }
}
