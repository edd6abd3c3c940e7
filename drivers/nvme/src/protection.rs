//! End-to-end data protection (NVM Command Set spec, "End-to-end Data
//! Protection"; the 16-bit guard format): the 8-byte protection information
//! (PI) tuple in each block's metadata, the PRACT/PRCHK flags a read or
//! write carries ([`Protection`]), and the driver's own building
//! ([`fill`]) and checking ([`verify`]) of tuples, so data can be guarded
//! from the application's buffer to the medium and back.
//!
//! Guard: CRC-16 T10-DIF of the block's data (and of the metadata bytes
//! before the tuple, when the tuple is the last 8 bytes of a larger
//! metadata area). Application tag: opaque,
//! compared under a mask. Reference tag (types 1 and 2): the low 32 bits of
//! the block's LBA, so a block read from the wrong place is caught. An
//! application tag of FFFFh turns checking off for its block (types 1 and
//! 2), as the specification says.

use std::fmt;
use std::ops::BitOr;

use bytemuck::{Pod, Zeroable};
use crc::{Crc, CRC_16_T10_DIF};
use fastlane_framework::DmaBuf;

use crate::controller::Namespace;
use crate::error::{NvmeError, Result};
use crate::metadata::MetadataLayout;
use crate::spec::{PRCHK_APP, PRCHK_GUARD, PRCHK_REF, PRINFO_PRACT};

/// Bytes of one PI tuple.
pub const PI_TUPLE_SIZE: usize = 8;

/// The protection information of one block (16-bit guard format), fields
/// big-endian as on the medium.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PiTuple {
    /// Guard: CRC-16 T10-DIF of the block's data.
    pub guard: [u8; 2],
    /// Application Tag.
    pub app_tag: [u8; 2],
    /// Logical Block Reference Tag.
    pub ref_tag: [u8; 4],
}
const _: () = assert!(std::mem::size_of::<PiTuple>() == PI_TUPLE_SIZE);

impl PiTuple {
    /// A tuple from host-order values.
    pub const fn new(guard: u16, app_tag: u16, ref_tag: u32) -> Self {
        PiTuple {
            guard: guard.to_be_bytes(),
            app_tag: app_tag.to_be_bytes(),
            ref_tag: ref_tag.to_be_bytes(),
        }
    }
    /// The guard.
    pub const fn guard(&self) -> u16 {
        u16::from_be_bytes(self.guard)
    }
    /// The application tag.
    pub const fn app_tag(&self) -> u16 {
        u16::from_be_bytes(self.app_tag)
    }
    /// The reference tag.
    pub const fn ref_tag(&self) -> u32 {
        u32::from_be_bytes(self.ref_tag)
    }
}

/// Protection information type of a namespace (DPS bits 2:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PiType {
    /// Type 1: reference tag = low 32 bits of the LBA.
    Type1,
    /// Type 2: reference tag from the command, incremented per block (this
    /// driver starts it at the LBA, as for type 1).
    Type2,
    /// Type 3: the reference tag is not checked.
    Type3,
}

/// The CRC-16 T10-DIF guard of one block: its data, then the metadata
/// bytes that precede the tuple (none when the metadata is the tuple alone
/// or starts with it).
pub fn guard(data: &[u8], metadata_before_pi: &[u8]) -> u16 {
    const T10DIF: Crc<u16> = Crc::<u16>::new(&CRC_16_T10_DIF);
    let mut d = T10DIF.digest();
    d.update(data);
    d.update(metadata_before_pi);
    d.finalize()
}

/// PI fields to check (PRCHK): a set of [`PiCheck::GUARD`],
/// [`PiCheck::APP_TAG`], [`PiCheck::REF_TAG`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PiCheck(u8);

impl PiCheck {
    /// Nothing.
    pub const NONE: PiCheck = PiCheck(0);
    /// The guard.
    pub const GUARD: PiCheck = PiCheck(PRCHK_GUARD);
    /// The application tag (under the mask).
    pub const APP_TAG: PiCheck = PiCheck(PRCHK_APP);
    /// The reference tag.
    pub const REF_TAG: PiCheck = PiCheck(PRCHK_REF);
    /// All three.
    pub const ALL: PiCheck = PiCheck(PRCHK_GUARD | PRCHK_APP | PRCHK_REF);

    /// Whether every field of `other` is in `self`.
    pub const fn contains(self, other: PiCheck) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether no field is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The PRCHK bits.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

impl BitOr for PiCheck {
    type Output = PiCheck;
    fn bitor(self, rhs: PiCheck) -> PiCheck {
        PiCheck(self.0 | rhs.0)
    }
}

/// What a read or write asks of protection information.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protection {
    /// PRACT: the controller generates the PI on a write and strips it on a
    /// read (with 8 bytes of metadata nothing but data is transferred).
    pub action: bool,
    /// PRCHK: the fields the controller checks.
    pub check: PiCheck,
    /// Application tag (LBAT / ELBAT): written with PRACT, compared under
    /// `app_mask` when checked.
    pub app_tag: u16,
    /// Application tag mask (LBATM / ELBATM).
    pub app_mask: u16,
    /// Fields the driver itself checks when a read completes successfully
    /// (see [`verify`]); a mismatch ends it with
    /// [`NvmeError::Protection`].
    pub verify: PiCheck,
}

impl Protection {
    /// No PI action or checks (metadata moves as it is).
    pub const NONE: Protection = Protection {
        action: false,
        check: PiCheck::NONE,
        app_tag: 0,
        app_mask: 0,
        verify: PiCheck::NONE,
    };

    /// The controller generates (write) or strips (read) the PI and checks
    /// `check`.
    pub const fn by_controller(check: PiCheck) -> Protection {
        Protection {
            action: true,
            check,
            ..Protection::NONE
        }
    }

    /// The host supplies the PI (see [`fill`]) and the controller checks
    /// `check`.
    pub const fn by_host(check: PiCheck) -> Protection {
        Protection {
            check,
            ..Protection::NONE
        }
    }

    /// With application tag `tag` compared under `mask`.
    pub const fn with_app_tag(mut self, tag: u16, mask: u16) -> Protection {
        self.app_tag = tag;
        self.app_mask = mask;
        self
    }

    /// With the driver checking `fields` of each block once a read
    /// completes.
    pub const fn verified(mut self, fields: PiCheck) -> Protection {
        self.verify = fields;
        self
    }

    /// The PRINFO field (PRACT and PRCHK).
    pub const fn prinfo(&self) -> u8 {
        (if self.action { PRINFO_PRACT } else { 0 }) | self.check.0
    }
}

/// A PI field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PiField {
    /// The guard (CRC of the data).
    Guard,
    /// The application tag.
    AppTag,
    /// The reference tag.
    RefTag,
}

/// Who found a PI mismatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PiChecker {
    /// The controller (SCT 2h, SC 82h..84h).
    Controller,
    /// The driver ([`verify`]).
    Driver,
}

/// A protection information check failed: the data or its tags were
/// corrupted (or the block is not the one asked for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PiError {
    /// The field that did not match.
    pub field: PiField,
    /// Who checked.
    pub by: PiChecker,
    /// The block, when known (the driver's checks).
    pub lba: Option<u64>,
    /// Expected and found values, when known (the driver's checks).
    pub mismatch: Option<(u32, u32)>,
}

impl fmt::Display for PiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = match self.field {
            PiField::Guard => "guard",
            PiField::AppTag => "application tag",
            PiField::RefTag => "reference tag",
        };
        let by = match self.by {
            PiChecker::Controller => "controller",
            PiChecker::Driver => "driver",
        };
        write!(f, "{field} check failed ({by})")?;
        if let Some(lba) = self.lba {
            write!(f, " at LBA {lba}")?;
        }
        if let Some((want, got)) = self.mismatch {
            write!(f, ": expected {want:#x}, found {got:#x}")?;
        }
        Ok(())
    }
}

/// Where the blocks and tuples of a transfer lie in its buffers (PI moved,
/// PRACT clear).
struct Geometry {
    block: usize,
    /// Bytes per block in the data buffer.
    stride: usize,
    /// Metadata bytes per block.
    ms: usize,
    pi_offset: usize,
    extended: bool,
}

impl Geometry {
    fn new(ns: &Namespace, blocks: u32, data: &DmaBuf, meta: Option<&DmaBuf>) -> Result<Self> {
        let f = ns.metadata;
        if f.pi.is_none() {
            return Err(NvmeError::InvalidArgument(format!(
                "namespace {} has no protection information",
                ns.id
            )));
        }
        let g = Geometry {
            block: ns.block_size as usize,
            stride: f.data_stride(ns.block_size, false),
            ms: f.size as usize,
            pi_offset: f.pi_offset(),
            extended: f.layout == MetadataLayout::Extended,
        };
        let need = |per: usize, have: usize| match (blocks as usize).checked_mul(per) {
            Some(need) if need <= have => Ok(()),
            need => Err(NvmeError::BufferTooSmall {
                need: need.unwrap_or(usize::MAX),
                have,
            }),
        };
        need(g.stride, data.len())?;
        if !g.extended {
            let Some(meta) = meta else {
                return Err(NvmeError::InvalidArgument(format!(
                    "namespace {} keeps metadata in a separate buffer: pass one",
                    ns.id
                )));
            };
            need(g.ms, meta.len())?;
        }
        Ok(g)
    }

    /// Block `i`'s guard: its data and the metadata before its tuple, read
    /// into `scratch` (block size plus metadata size bytes).
    fn guard_of(
        &self,
        i: usize,
        data: &DmaBuf,
        meta: Option<&DmaBuf>,
        scratch: &mut [u8],
    ) -> Result<u16> {
        let (block, md) = scratch.split_at_mut(self.block);
        let md = &mut md[..self.pi_offset];
        data.read(i * self.stride, block)?;
        match meta {
            Some(m) if !self.extended => m.read(i * self.ms, md)?,
            _ => data.read(i * self.stride + self.block, md)?,
        }
        Ok(guard(block, md))
    }

    /// Offset of block `i`'s tuple (in the data buffer when extended, else
    /// in the metadata buffer).
    fn tuple_at(&self, i: usize) -> usize {
        if self.extended {
            i * self.stride + self.block + self.pi_offset
        } else {
            i * self.ms + self.pi_offset
        }
    }
}

/// Builds the PI of `blocks` blocks at `lba` of `ns` for a write without
/// PRACT: the guard of each block's data in `data`, `app_tag`, and the
/// reference tag (low 32 bits of the block's LBA), stored in each block's
/// metadata (interleaved in `data`, or in `meta` for a separate layout).
/// The buffers have the layout a transfer without PRACT has.
pub fn fill(
    ns: &Namespace,
    lba: u64,
    blocks: u32,
    data: &mut DmaBuf,
    mut meta: Option<&mut DmaBuf>,
    app_tag: u16,
) -> Result<()> {
    let g = Geometry::new(ns, blocks, data, meta.as_deref())?;
    let mut scratch = vec![0u8; g.block + g.ms];
    for i in 0..blocks as usize {
        let crc = g.guard_of(i, data, meta.as_deref(), &mut scratch)?;
        let t = PiTuple::new(crc, app_tag, lba.wrapping_add(i as u64) as u32);
        let at = g.tuple_at(i);
        match meta.as_deref_mut() {
            Some(m) if !g.extended => m.write(at, bytemuck::bytes_of(&t))?,
            _ => data.write(at, bytemuck::bytes_of(&t))?,
        }
    }
    Ok(())
}

/// The PI tuple of block `i` (0-based within the transfer) of buffers laid
/// out as a transfer without PRACT.
pub fn tuple(
    ns: &Namespace,
    blocks: u32,
    i: u32,
    data: &DmaBuf,
    meta: Option<&DmaBuf>,
) -> Result<PiTuple> {
    let g = Geometry::new(ns, blocks, data, meta)?;
    if i >= blocks {
        return Err(NvmeError::InvalidArgument(format!(
            "block {i} of a {blocks}-block transfer"
        )));
    }
    let mut t = [0u8; PI_TUPLE_SIZE];
    match meta {
        Some(m) if !g.extended => m.read(g.tuple_at(i as usize), &mut t)?,
        _ => data.read(g.tuple_at(i as usize), &mut t)?,
    }
    Ok(bytemuck::cast(t))
}

/// Checks the fields `pi.verify` names of the PI of `blocks` blocks at
/// `lba` in buffers laid out as a transfer without PRACT: the guard against
/// the data, the application tag against `pi.app_tag` under `pi.app_mask`,
/// the reference tag
/// against the low 32 bits of each LBA (types 1 and 2). A block whose
/// application tag is FFFFh is skipped (types 1 and 2; type 3 also needs
/// the reference tag FFFFFFFFh). The first mismatch is
/// [`NvmeError::Protection`] naming the field and the LBA.
pub fn verify(
    ns: &Namespace,
    lba: u64,
    blocks: u32,
    data: &DmaBuf,
    meta: Option<&DmaBuf>,
    pi: &Protection,
) -> Result<()> {
    let (fields, app_tag, app_mask) = (pi.verify, pi.app_tag, pi.app_mask);
    let g = Geometry::new(ns, blocks, data, meta)?;
    let kind = ns.metadata.pi;
    let mut scratch = vec![0u8; g.block + g.ms];
    for i in 0..blocks as usize {
        let mut raw = [0u8; PI_TUPLE_SIZE];
        match meta {
            Some(m) if !g.extended => m.read(g.tuple_at(i), &mut raw)?,
            _ => data.read(g.tuple_at(i), &mut raw)?,
        }
        let t: PiTuple = bytemuck::cast(raw);
        let escaped = match kind {
            Some(PiType::Type3) => t.app_tag() == 0xFFFF && t.ref_tag() == u32::MAX,
            _ => t.app_tag() == 0xFFFF,
        };
        if escaped {
            continue;
        }
        let at = lba.wrapping_add(i as u64);
        let fail = |field, want: u32, got: u32| {
            Err(NvmeError::Protection(PiError {
                field,
                by: PiChecker::Driver,
                lba: Some(at),
                mismatch: Some((want, got)),
            }))
        };
        if fields.contains(PiCheck::GUARD) {
            let want = g.guard_of(i, data, meta, &mut scratch)?;
            if t.guard() != want {
                return fail(PiField::Guard, want as u32, t.guard() as u32);
            }
        }
        if fields.contains(PiCheck::APP_TAG) && (t.app_tag() ^ app_tag) & app_mask != 0 {
            return fail(PiField::AppTag, app_tag as u32, t.app_tag() as u32);
        }
        if fields.contains(PiCheck::REF_TAG)
            && kind != Some(PiType::Type3)
            && t.ref_tag() != at as u32
        {
            return fail(PiField::RefTag, at as u32, t.ref_tag());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_is_crc16_t10dif() {
        // The catalogue's check value: "123456789" gives D0DBh.
        assert_eq!(guard(b"123456789", &[]), 0xD0DB);
        // Split anywhere between data and metadata: the same CRC.
        assert_eq!(guard(b"12345", b"6789"), 0xD0DB);
        assert_eq!(guard(&[0u8; 512], &[]), 0);
        assert_ne!(guard(&[1u8; 512], &[]), guard(&[2u8; 512], &[]));
    }

    #[test]
    fn tuple_is_big_endian() {
        let t = PiTuple::new(0x1234, 0x5678, 0x9abc_def0);
        assert_eq!(
            bytemuck::bytes_of(&t),
            [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0]
        );
        assert_eq!(
            (t.guard(), t.app_tag(), t.ref_tag()),
            (0x1234, 0x5678, 0x9abc_def0)
        );
    }

    #[test]
    fn prinfo_bits() {
        assert_eq!(Protection::NONE.prinfo(), 0);
        assert_eq!(Protection::by_controller(PiCheck::ALL).prinfo(), 0b1111);
        assert_eq!(Protection::by_host(PiCheck::GUARD).prinfo(), 0b0100);
        assert_eq!(
            Protection::by_host(PiCheck::APP_TAG | PiCheck::REF_TAG).prinfo(),
            0b0011
        );
        assert!(PiCheck::ALL.contains(PiCheck::REF_TAG));
        assert!(!PiCheck::GUARD.contains(PiCheck::ALL));
    }
}
