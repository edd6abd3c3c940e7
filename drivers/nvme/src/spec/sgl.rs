//! Scatter Gather Lists (NVMe base spec 4.1.2, "Scatter Gather List (SGL)",
//! and the Identify Controller field SGLS): the driver uses one form only,
//! a single SGL Data Block descriptor carried inline in the command's data
//! pointer (CDW0.PSDT = 01b), which describes one contiguous IOVA range.
// Field and constant names are the specification's own, documented by the
// section named above; a doc line per field would only repeat them.
#![allow(missing_docs)]

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

/// CDW0.PSDT (bits 15:14) = 01b: SGLs are used for the data transfer and
/// MPTR, if used, is the address of a contiguous metadata buffer. The data
/// pointer (DPTR, dwords 6..9) holds the first SGL descriptor.
pub const PSDT_SGL_MPTR_CONTIG: u32 = 0b01 << 14;
/// CDW0.PSDT mask.
pub const PSDT_MASK: u32 = 0b11 << 14;

/// SGL Descriptor Type (bits 7:4 of the SGL Identifier): Data Block.
pub const SGL_TYPE_DATA_BLOCK: u8 = 0x0;
/// SGL Descriptor Sub Type (bits 3:0): Address (the address field is an
/// address, not an offset).
pub const SGL_SUBTYPE_ADDRESS: u8 = 0x0;

/// Identify Controller SGLS bits 1:0 ("SGL Support").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SglSupport {
    /// 00b: SGLs are not supported for the NVM command set.
    None,
    /// 01b: supported, no alignment or granularity requirement.
    Any,
    /// 10b: supported with dword alignment and granularity: every data
    /// block's address and length must be multiples of 4.
    DwordAligned,
}

impl SglSupport {
    /// Decodes SGLS (bytes 539:536 of Identify Controller). The reserved
    /// value 11b reads as no support.
    pub const fn from_sgls(sgls: u32) -> SglSupport {
        match sgls & 0b11 {
            0b01 => SglSupport::Any,
            0b10 => SglSupport::DwordAligned,
            _ => SglSupport::None,
        }
    }

    /// Whether a data block at `addr` of `len` bytes meets the alignment
    /// this support level asks for (always false without support).
    #[inline(always)]
    pub const fn fits(self, addr: u64, len: usize) -> bool {
        match self {
            SglSupport::None => false,
            SglSupport::Any => true,
            SglSupport::DwordAligned => (addr | len as u64) & 0b11 == 0,
        }
    }
}

/// SGL descriptor, 16 bytes (base spec figure "Generic SGL Descriptor
/// Format"). As a Data Block: address, length, three reserved bytes, and
/// the SGL Identifier (type in bits 7:4, sub type in bits 3:0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SglDescriptor {
    pub address: u64,
    pub length: u32,
    pub reserved: [u8; 3],
    pub identifier: u8,
}
const _: () = assert!(size_of::<SglDescriptor>() == 16);
const _: () = assert!(offset_of!(SglDescriptor, length) == 8);
const _: () = assert!(offset_of!(SglDescriptor, identifier) == 15);

impl SglDescriptor {
    /// A Data Block descriptor (type 0h, sub type 0h Address) of `length`
    /// bytes at `address`.
    pub const fn data_block(address: u64, length: u32) -> Self {
        SglDescriptor {
            address,
            length,
            reserved: [0; 3],
            identifier: (SGL_TYPE_DATA_BLOCK << 4) | SGL_SUBTYPE_ADDRESS,
        }
    }

    /// The descriptor as the two 64-bit halves of a command's DPTR (the
    /// `prp1` and `prp2` fields of [`crate::spec::SubmissionEntry`]).
    pub const fn to_dptr(self) -> (u64, u64) {
        (
            self.address,
            self.length as u64
                | (self.reserved[0] as u64) << 32
                | (self.reserved[1] as u64) << 40
                | (self.reserved[2] as u64) << 48
                | (self.identifier as u64) << 56,
        )
    }

    /// The descriptor a command's DPTR holds.
    pub const fn from_dptr(dptr1: u64, dptr2: u64) -> Self {
        SglDescriptor {
            address: dptr1,
            length: dptr2 as u32,
            reserved: [
                (dptr2 >> 32) as u8,
                (dptr2 >> 40) as u8,
                (dptr2 >> 48) as u8,
            ],
            identifier: (dptr2 >> 56) as u8,
        }
    }

    /// Descriptor type (SGL Identifier bits 7:4).
    pub const fn kind(&self) -> u8 {
        self.identifier >> 4
    }
    /// Descriptor sub type (SGL Identifier bits 3:0).
    pub const fn subtype(&self) -> u8 {
        self.identifier & 0xF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_block_layout_matches_the_spec() {
        let d = SglDescriptor::data_block(0x1234_5678_9abc_def0, 0x2_0000);
        let bytes = bytemuck::bytes_of(&d);
        assert_eq!(&bytes[..8], &0x1234_5678_9abc_def0u64.to_le_bytes());
        assert_eq!(&bytes[8..12], &0x2_0000u32.to_le_bytes());
        assert_eq!(
            &bytes[12..16],
            &[0, 0, 0, 0],
            "reserved, then identifier 00h"
        );
        let (d1, d2) = d.to_dptr();
        let words: [u64; 2] = bytemuck::cast(d);
        assert_eq!([d1, d2], words, "DPTR halves are the descriptor's bytes");
        assert_eq!(SglDescriptor::from_dptr(d1, d2), d);
        let odd = SglDescriptor::from_dptr(1, 0x2A11_2233_0000_0010);
        assert_eq!((odd.kind(), odd.subtype(), odd.length), (2, 0xA, 16));
        assert_eq!(odd.reserved, [0x33, 0x22, 0x11]);
        assert_eq!(odd.to_dptr(), (1, 0x2A11_2233_0000_0010));
    }

    #[test]
    fn sgls_support_levels() {
        assert_eq!(SglSupport::from_sgls(0), SglSupport::None);
        assert_eq!(SglSupport::from_sgls(0x0010_0001), SglSupport::Any);
        assert_eq!(SglSupport::from_sgls(0b10), SglSupport::DwordAligned);
        assert_eq!(SglSupport::from_sgls(0b11), SglSupport::None, "reserved");
        assert!(SglSupport::Any.fits(0x1001, 3));
        assert!(SglSupport::DwordAligned.fits(0x1004, 512));
        assert!(!SglSupport::DwordAligned.fits(0x1002, 512));
        assert!(!SglSupport::DwordAligned.fits(0x1000, 510));
        assert!(!SglSupport::None.fits(0x1000, 4096));
    }
}
