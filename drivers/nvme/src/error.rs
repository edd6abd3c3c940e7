//! Typed errors of the NVMe driver. Device status codes stay typed
//! ([`NvmeStatus`]); nothing the device or the caller sends becomes a panic.

use std::time::Duration;

use fastlane_framework::DmaBuf;

use crate::protection::{PiChecker, PiError, PiField};
use crate::prp::PrpError;
use crate::queue::QueueError;
use crate::spec::{integrity_sc, sct, NvmeStatus};

/// Errors of the NVMe driver.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// A framework error (VFIO, memory, device access).
    #[error(transparent)]
    Framework(#[from] fastlane_framework::Error),
    /// The device is not an NVMe controller.
    #[error("{addr} is not an NVMe controller (class code {class:06x}, expected 010802)")]
    NotNvme {
        /// The device.
        addr: String,
        /// Its class code.
        class: u32,
    },
    /// CAP.CSS lacks the NVM command set.
    #[error("the controller does not support the NVM command set")]
    NoNvmCommandSet,
    /// The device completed the command with an error status.
    #[error("command failed: {0}")]
    Status(#[from] NvmeStatus),
    /// The device did not answer in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// CSTS.CFS is set.
    #[error("controller fatal status (CSTS.CFS); reset the controller")]
    ControllerFatal,
    /// The controller was removed (hot unplug) or vanished: outstanding
    /// commands end with it, new ones are refused with it.
    #[error("the controller was removed")]
    Removed,
    /// A reset ended the command before it completed.
    #[error("the controller was reset; the command was not completed")]
    Reset,
    /// No free slot in the queue pair.
    #[error("queue full: poll completions, then submit again")]
    QueueFull,
    /// No active namespace with that id.
    #[error("namespace {0} does not exist")]
    InvalidNamespace(u32),
    /// The blocks lie outside the namespace.
    #[error("blocks {lba}..{lba}+{blocks} outside the namespace of {capacity} blocks")]
    LbaOutOfRange {
        /// First block asked for.
        lba: u64,
        /// Blocks asked for.
        blocks: u32,
        /// Blocks in the namespace.
        capacity: u64,
    },
    /// The buffer cannot hold the transfer.
    #[error("the transfer needs {need} bytes but the buffer has {have}")]
    BufferTooSmall {
        /// Bytes the transfer needs.
        need: usize,
        /// Bytes in the buffer.
        have: usize,
    },
    /// The transfer needs more commands than the queue pair holds.
    #[error(
        "transfer of {bytes} bytes exceeds the controller's maximum of {max} (MDTS); split it"
    )]
    TooLarge {
        /// Bytes asked for.
        bytes: usize,
        /// The largest the queue pair can carry.
        max: usize,
    },
    /// The caller asked for something impossible.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A PRP list could not be built.
    #[error("PRP: {0}")]
    Prp(#[from] PrpError),
    /// Queue bookkeeping refused the operation.
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    /// Every I/O queue the controller granted is in use.
    #[error("no I/O queue left: the controller granted {0}")]
    NoQueuesLeft(u16),
    /// The buffer belongs to another VFIO container, or to none.
    #[error("the buffer is not mapped in this controller's VFIO container (allocate it from a pool of the same Vfio)")]
    ForeignBuffer,
    /// A protection information check failed, at the controller (SCT 2h,
    /// SC 82h..84h) or in the driver.
    #[error("end-to-end protection: {0}")]
    Protection(#[from] PiError),
    /// The device wrote something impossible.
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
    /// The protection information check that failed, if this is one.
    pub fn protection(&self) -> Option<&PiError> {
        match self {
            NvmeError::Protection(e) => Some(e),
            _ => None,
        }
    }

    /// The error of a failed command's status: an end-to-end check error
    /// (SCT 2h, SC 82h..84h) becomes [`NvmeError::Protection`], anything
    /// else [`NvmeError::Status`].
    #[cold]
    pub fn from_status(s: NvmeStatus) -> Self {
        let field = match (s.sct, s.sc) {
            (sct::MEDIA_DATA_INTEGRITY, integrity_sc::GUARD_CHECK) => PiField::Guard,
            (sct::MEDIA_DATA_INTEGRITY, integrity_sc::APP_TAG_CHECK) => PiField::AppTag,
            (sct::MEDIA_DATA_INTEGRITY, integrity_sc::REF_TAG_CHECK) => PiField::RefTag,
            _ => return NvmeError::Status(s),
        };
        NvmeError::Protection(PiError {
            field,
            by: PiChecker::Controller,
            lba: None,
            mismatch: None,
        })
    }

    /// The controller was removed ([`NvmeError::Removed`], or the
    /// framework's `Removed` from a device access).
    pub fn is_removed(&self) -> bool {
        matches!(
            self,
            NvmeError::Removed | NvmeError::Framework(fastlane_framework::Error::Removed(_))
        )
    }

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
    /// Why it was refused.
    #[source]
    pub error: NvmeError,
    /// The buffer, back with the caller.
    pub buf: Option<DmaBuf>,
}

impl Rejected {
    pub(crate) fn new(error: NvmeError, buf: Option<DmaBuf>) -> Self {
        Rejected { error, buf }
    }
}

/// A read or write with metadata the queue pair did not take: the error
/// and both buffers, handed back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RejectedMeta {
    /// Why it was refused.
    #[source]
    pub error: NvmeError,
    /// The data buffer.
    pub buf: Option<DmaBuf>,
    /// The separate metadata buffer, if one was given.
    pub meta: Option<DmaBuf>,
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

    #[test]
    fn integrity_statuses_become_protection_errors() {
        let st = |sct, sc| NvmeStatus {
            sct,
            sc,
            crd: 0,
            more: false,
            dnr: true,
        };
        for (sc, field) in [
            (0x82, PiField::Guard),
            (0x83, PiField::AppTag),
            (0x84, PiField::RefTag),
        ] {
            match NvmeError::from_status(st(2, sc)) {
                NvmeError::Protection(e) => {
                    assert_eq!((e.field, e.by), (field, PiChecker::Controller))
                }
                e => panic!("{e}"),
            }
        }
        // Neighbours stay plain statuses.
        for (t, c) in [(2, 0x81), (2, 0x85), (0, 0x82), (1, 0x84)] {
            assert!(matches!(
                NvmeError::from_status(st(t, c)),
                NvmeError::Status(_)
            ));
        }
    }
}
