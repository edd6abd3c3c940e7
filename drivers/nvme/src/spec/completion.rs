//! Completion queue entries and the status field (base spec 4.6).
// Field and constant names are the specification's own, documented by the
// section named above; a doc line per field would only repeat them.
#![allow(missing_docs)]

use std::fmt;
use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

/// Completion Queue Entry, 16 bytes (base spec 4.6, "Completion Queue
/// Entry").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CompletionEntry {
    /// DW0: command specific result.
    pub dw0: u32,
    /// DW1: command specific.
    pub dw1: u32,
    /// SQHD: SQ Head Pointer.
    pub sq_head: u16,
    /// SQID: SQ Identifier.
    pub sq_id: u16,
    /// CID: Command Identifier.
    pub cid: u16,
    /// Phase Tag (bit 0) and Status Field (bits 15:1).
    pub status: u16,
}
const _: () = assert!(size_of::<CompletionEntry>() == 16);
const _: () = assert!(offset_of!(CompletionEntry, sq_head) == 8);
const _: () = assert!(offset_of!(CompletionEntry, cid) == 12);

impl CompletionEntry {
    /// Phase Tag and Status Field, decoded.
    pub const fn status(&self) -> Status {
        Status(self.status)
    }
    /// The Phase Tag.
    pub const fn phase(&self) -> bool {
        self.status & 1 != 0
    }
}

/// Set Features / Get Features – Number of Queues, DW0 of the completion:
/// the queues the controller allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumQueues {
    /// I/O submission queues allocated (NSQA + 1).
    pub sq_count: u32,
    /// I/O completion queues allocated (NCQA + 1).
    pub cq_count: u32,
}

impl NumQueues {
    /// Decode completion DW0.
    pub const fn from_dw0(dw0: u32) -> Self {
        NumQueues {
            sq_count: (dw0 & 0xFFFF) + 1,
            cq_count: (dw0 >> 16) + 1,
        }
    }
}

/// Status Code Type values.
pub mod sct {
    pub const GENERIC: u8 = 0x0;
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    pub const MEDIA_DATA_INTEGRITY: u8 = 0x2;
    pub const PATH_RELATED: u8 = 0x3;
    pub const VENDOR_SPECIFIC: u8 = 0x7;
}

/// SCT 2 (Media and Data Integrity Errors) status codes of a failed
/// end-to-end check.
pub mod integrity_sc {
    pub const GUARD_CHECK: u8 = 0x82;
    pub const APP_TAG_CHECK: u8 = 0x83;
    pub const REF_TAG_CHECK: u8 = 0x84;
}

/// The 16-bit Phase Tag + Status Field of a completion (base spec 4.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// P: Phase Tag.
    pub const fn phase(self) -> bool {
        self.0 & 1 != 0
    }
    /// SC: Status Code.
    pub const fn sc(self) -> u8 {
        (self.0 >> 1) as u8
    }
    /// SCT: Status Code Type.
    pub const fn sct(self) -> u8 {
        ((self.0 >> 9) & 0x7) as u8
    }
    /// CRD: Command Retry Delay (index into CRDT1..3, 0 = none).
    pub const fn crd(self) -> u8 {
        ((self.0 >> 12) & 0x3) as u8
    }
    /// M: More (information in the Error Information log page).
    pub const fn more(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// DNR: Do Not Retry.
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 15) != 0
    }
    /// SCT 0, SC 0: Successful Completion.
    #[inline(always)]
    pub const fn is_success(self) -> bool {
        // SC is bits 8:1, SCT bits 11:9 of the status word: one mask.
        self.0 & 0x0FFE == 0
    }
    /// `Ok` on success, otherwise the decoded error.
    #[inline(always)]
    pub const fn result(self) -> Result<(), NvmeStatus> {
        if self.is_success() {
            Ok(())
        } else {
            Err(NvmeStatus {
                sct: self.sct(),
                sc: self.sc(),
                crd: self.crd(),
                more: self.more(),
                dnr: self.dnr(),
            })
        }
    }
}

/// A command the controller completed with an error status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmeStatus {
    /// Status Code Type.
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Command Retry Delay.
    pub crd: u8,
    /// More information in the Error Information log.
    pub more: bool,
    /// Do Not Retry: the same command would fail again.
    pub dnr: bool,
}

impl NvmeStatus {
    /// The spec's name for this status, when it is one this crate knows.
    pub const fn name(&self) -> Option<&'static str> {
        Some(match (self.sct, self.sc) {
            (sct::GENERIC, sc) => match sc {
                0x00 => "Successful Completion",
                0x01 => "Invalid Command Opcode",
                0x02 => "Invalid Field in Command",
                0x03 => "Command ID Conflict",
                0x04 => "Data Transfer Error",
                0x05 => "Commands Aborted due to Power Loss Notification",
                0x06 => "Internal Error",
                0x07 => "Command Abort Requested",
                0x08 => "Command Aborted due to SQ Deletion",
                0x09 => "Command Aborted due to Failed Fused Command",
                0x0A => "Command Aborted due to Missing Fused Command",
                0x0B => "Invalid Namespace or Format",
                0x0C => "Command Sequence Error",
                0x0D => "Invalid SGL Segment Descriptor",
                0x0E => "Invalid Number of SGL Descriptors",
                0x0F => "Data SGL Length Invalid",
                0x10 => "Metadata SGL Length Invalid",
                0x11 => "SGL Descriptor Type Invalid",
                0x12 => "Invalid Use of Controller Memory Buffer",
                0x13 => "PRP Offset Invalid",
                0x14 => "Atomic Write Unit Exceeded",
                0x15 => "Operation Denied",
                0x16 => "SGL Offset Invalid",
                0x18 => "Host Identifier Inconsistent Format",
                0x19 => "Keep Alive Timer Expired",
                0x1A => "Keep Alive Timeout Invalid",
                0x1B => "Command Aborted due to Preempt and Abort",
                0x1C => "Sanitize Failed",
                0x1D => "Sanitize In Progress",
                0x1E => "SGL Data Block Granularity Invalid",
                0x1F => "Command Not Supported for Queue in CMB",
                0x20 => "Namespace is Write Protected",
                0x21 => "Command Interrupted",
                0x22 => "Transient Transport Error",
                0x80 => "LBA Out of Range",
                0x81 => "Capacity Exceeded",
                0x82 => "Namespace Not Ready",
                0x83 => "Reservation Conflict",
                0x84 => "Format In Progress",
                _ => return None,
            },
            (sct::COMMAND_SPECIFIC, sc) => match sc {
                0x00 => "Completion Queue Invalid",
                0x01 => "Invalid Queue Identifier",
                0x02 => "Invalid Queue Size",
                0x03 => "Abort Command Limit Exceeded",
                0x05 => "Asynchronous Event Request Limit Exceeded",
                0x06 => "Invalid Firmware Slot",
                0x07 => "Invalid Firmware Image",
                0x08 => "Invalid Interrupt Vector",
                0x09 => "Invalid Log Page",
                0x0A => "Invalid Format",
                0x0C => "Invalid Queue Deletion",
                0x0D => "Feature Identifier Not Saveable",
                0x0E => "Feature Not Changeable",
                0x0F => "Feature Not Namespace Specific",
                0x80 => "Conflicting Attributes",
                0x81 => "Invalid Protection Information",
                0x82 => "Attempted Write to Read Only Range",
                _ => return None,
            },
            (sct::MEDIA_DATA_INTEGRITY, sc) => match sc {
                0x80 => "Write Fault",
                0x81 => "Unrecovered Read Error",
                0x82 => "End-to-end Guard Check Error",
                0x83 => "End-to-end Application Tag Check Error",
                0x84 => "End-to-end Reference Tag Check Error",
                0x85 => "Compare Failure",
                0x86 => "Access Denied",
                0x87 => "Deallocated or Unwritten Logical Block",
                _ => return None,
            },
            (sct::PATH_RELATED, sc) => match sc {
                0x00 => "Internal Path Error",
                0x01 => "Asymmetric Access Persistent Loss",
                0x02 => "Asymmetric Access Inaccessible",
                0x03 => "Asymmetric Access Transition",
                0x60 => "Controller Pathing Error",
                0x70 => "Host Pathing Error",
                0x71 => "Command Aborted By Host",
                _ => return None,
            },
            _ => return None,
        })
    }
}

impl fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name)?,
            None if self.sct == sct::VENDOR_SPECIFIC => f.write_str("Vendor Specific status")?,
            None => f.write_str("Unknown status")?,
        }
        write!(f, " (SCT {:#x}, SC {:#04x}", self.sct, self.sc)?;
        if self.dnr {
            f.write_str(", DNR")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for NvmeStatus {}
