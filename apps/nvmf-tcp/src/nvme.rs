//! The NVMe structures a fabrics target exchanges with a host. The
//! submission and completion queue entries, SGL descriptor, opcodes and
//! feature ids are the NVMe driver's (`fastlane_nvme::spec`: the same bytes
//! on a PCIe queue and in a capsule). This module adds what only a fabrics
//! controller needs: accessors for the fields a host fills (the SGL in
//! DPTR, FCTYPE), the two admin opcodes a PCIe host never sends the
//! driver, the SGL identifiers an NVMe/TCP host uses (transport spec 3.5
//! "Data Transfer"), the status codes the target returns, and the Fabrics
//! command types, properties and Connect data (NVMe over Fabrics: "Fabrics
//! Command", "Connect").

use bytemuck::{Pod, Zeroable};
pub use fastlane_nvme::spec::{
    feature, nvm_opcode as io_opcode, CompletionEntry as Cqe, SglDescriptor, SubmissionEntry as Sqe,
};

/// Admin opcodes: the driver's, and the two only a fabrics controller
/// receives.
pub mod admin_opcode {
    pub use fastlane_nvme::spec::admin_opcode::*;
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics commands (FCTYPE in byte 4).
    pub const FABRICS: u8 = 0x7F;
}

/// The fields of a command a target reads beyond the driver's accessors
/// (`opcode()`, `cid()`, `psdt()`).
pub trait CommandFields {
    /// FUSE and PSDT (byte 1).
    fn flags(&self) -> u8;
    /// DPTR as SGL1, one SGL descriptor.
    fn sgl(&self) -> SglDescriptor;
    /// FCTYPE of a Fabrics command (byte 4).
    fn fctype(&self) -> u8;
    /// Starting LBA of a read/write command (CDW10-11).
    fn slba(&self) -> u64;
    /// Number of logical blocks (NLB is 0's based, CDW12 bits 15:0).
    fn nlb(&self) -> u32;
    /// Whether the data pointer is an SGL (PSDT 01b or 10b).
    fn psdt_sgl(&self) -> bool;
}

impl CommandFields for Sqe {
    fn flags(&self) -> u8 {
        (self.cdw0 >> 8) as u8
    }
    fn sgl(&self) -> SglDescriptor {
        SglDescriptor::from_dptr(self.prp1, self.prp2)
    }
    fn fctype(&self) -> u8 {
        (self.nsid & 0xFF) as u8
    }
    fn slba(&self) -> u64 {
        self.cdw10 as u64 | (self.cdw11 as u64) << 32
    }
    fn nlb(&self) -> u32 {
        (self.cdw12 & 0xFFFF) + 1
    }
    fn psdt_sgl(&self) -> bool {
        self.psdt() != 0
    }
}

/// SGL identifiers a TCP host uses.
pub mod sgl_id {
    /// Data Block, subtype Offset: data in the capsule at `addr` (ICDOFF).
    pub const IN_CAPSULE: u8 = 0x01;
    /// Transport SGL Data Block, transport-specific subtype A: data moves
    /// in C2HData / R2T + H2CData PDUs.
    pub const TRANSPORT: u8 = 0x5A;
    /// Transport data block with no data (the kernel's "null" SGL).
    pub const TRANSPORT_NULL: u8 = 0x50;
}

/// A completion status: Status Code Type and Status Code, DNR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Status {
    pub const SUCCESS: Status = Status {
        sct: 0,
        sc: 0,
        dnr: false,
    };
    pub const INVALID_OPCODE: Status = Status::generic(0x01);
    pub const INVALID_FIELD: Status = Status::generic(0x02);
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const INTERNAL: Status = Status::generic(0x06);
    pub const ABORT_SQ_DELETION: Status = Status {
        sct: 0,
        sc: 0x08,
        dnr: false,
    };
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0B);
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0C);
    pub const SGL_DATA_LENGTH_INVALID: Status = Status::generic(0x0F);
    pub const SGL_TYPE_INVALID: Status = Status::generic(0x11);
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
    pub const INVALID_LOG_PAGE: Status = Status::specific(0x09);
    pub const AER_LIMIT_EXCEEDED: Status = Status::specific(0x05);
    pub const FEATURE_NOT_SAVEABLE: Status = Status::specific(0x0D);
    /// Fabrics: Connect Incompatible Format.
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::specific(0x80);
    /// Fabrics: Connect Controller Busy.
    pub const CONNECT_CONTROLLER_BUSY: Status = Status::specific(0x81);
    /// Fabrics: Connect Invalid Parameters.
    pub const CONNECT_INVALID_PARAMETERS: Status = Status::specific(0x82);
    /// Fabrics: Connect Invalid Host.
    pub const CONNECT_INVALID_HOST: Status = Status::specific(0x84);

    const fn generic(sc: u8) -> Status {
        Status {
            sct: 0,
            sc,
            dnr: true,
        }
    }
    const fn specific(sc: u8) -> Status {
        Status {
            sct: 1,
            sc,
            dnr: true,
        }
    }

    /// The CQE status field (phase 0).
    pub fn field(self) -> u16 {
        ((self.sc as u16) << 1) | ((self.sct as u16 & 7) << 9) | ((self.dnr as u16) << 15)
    }

    /// Decodes a CQE status field (with the driver's decoder).
    pub fn from_field(f: u16) -> Status {
        let s = fastlane_nvme::spec::Status(f);
        Status {
            sc: s.sc(),
            sct: s.sct(),
            dnr: s.dnr(),
        }
    }

    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }
}

/// Fabrics command types.
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
}

/// Controller properties (registers) by offset.
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
}

/// Connect command data (1024 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub rsvd: [u8; 238],
    pub subnqn: [u8; 256],
    pub hostnqn: [u8; 256],
    pub rsvd2: [u8; 256],
}
const _: () = assert!(size_of::<ConnectData>() == 1024);

/// Offset of SUBNQN in the Connect data (for Invalid Parameters).
pub const CONNECT_SUBNQN_OFFSET: u16 = 256;
/// Offset of HOSTNQN in the Connect data.
pub const CONNECT_HOSTNQN_OFFSET: u16 = 512;
/// Offset of CNTLID in the Connect data.
pub const CONNECT_CNTLID_OFFSET: u16 = 16;

/// An NQN field (NUL-padded) as a string; None when not UTF-8.
pub fn nqn_str(field: &[u8]) -> Option<&str> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).ok()
}

/// Copies `s` into a NUL-padded NQN field (cut at the field size - 1).
pub fn put_str(field: &mut [u8], s: &str, pad: u8) {
    field.fill(pad);
    let n = s
        .len()
        .min(field.len().saturating_sub(if pad == 0 { 1 } else { 0 }));
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_field_round_trip() {
        let s = Status::CONNECT_INVALID_PARAMETERS;
        assert_eq!(s.field(), 0x82 << 1 | 1 << 9 | 1 << 15);
        assert_eq!(Status::from_field(s.field()), s);
        assert!(Status::from_field(0).is_success());
    }

    #[test]
    fn sqe_fields() {
        let mut s = Sqe::zeroed();
        s.nsid = 0x01;
        s.cdw10 = 5;
        s.cdw11 = 1;
        s.cdw12 = 7;
        assert_eq!((s.fctype(), s.slba(), s.nlb()), (1, (1 << 32) + 5, 8));
        // Byte 1 PSDT 01b, SGL1 at bytes 24..40 as a host writes them.
        let mut b = [0u8; 64];
        b[1] = 0x40;
        b[24..32].copy_from_slice(&0x1234u64.to_le_bytes());
        b[32..36].copy_from_slice(&4096u32.to_le_bytes());
        b[39] = sgl_id::TRANSPORT;
        let s: Sqe = bytemuck::pod_read_unaligned(&b);
        assert!(s.psdt_sgl() && s.flags() == 0x40);
        let g = s.sgl();
        assert_eq!(
            (g.address, g.length, g.identifier),
            (0x1234, 4096, sgl_id::TRANSPORT)
        );
    }

    #[test]
    fn nqn_fields() {
        let mut f = [0u8; 256];
        put_str(&mut f, "nqn.x", 0);
        assert_eq!(nqn_str(&f), Some("nqn.x"));
        put_str(&mut f, &"a".repeat(300), 0);
        assert_eq!(nqn_str(&f).unwrap().len(), 255);
    }
}
