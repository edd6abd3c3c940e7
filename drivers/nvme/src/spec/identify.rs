//! Identify data structures (base spec 5.17.2): controller, namespace,
//! active namespace list. Device-written: every accessor is total.
// Field and constant names are the specification's own, documented by the
// section named above; a doc line per field would only repeat them.
#![allow(missing_docs)]

use std::fmt;
use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

use super::{Version, IDENTIFY_DATA_SIZE};

/// Identify Controller data structure, CNS 01h (base spec 5.17.2.1). Fields
/// at their spec offsets; reserved ranges are split into array sizes
/// `bytemuck` implements `Pod` for.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    /// Serial Number, ASCII, space padded.
    pub sn: [u8; 20],
    /// Model Number, ASCII, space padded (40 bytes; see [`Self::model`]).
    pub mn: [[u8; 20]; 2],
    /// Firmware Revision, ASCII, space padded.
    pub fr: [u8; 8],
    pub rab: u8,
    pub ieee: [u8; 3],
    pub cmic: u8,
    /// Maximum Data Transfer Size, `2^MDTS` units of CAP.MPSMIN; 0 = none.
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub rtd3r: u32,
    pub rtd3e: u32,
    pub oaes: u32,
    pub ctratt: u32,
    pub rrls: u16,
    pub rsvd102: [u8; 9],
    pub cntrltype: u8,
    pub fguid: [u8; 16],
    /// Command Retry Delay Times 1..3, in 100 ms units.
    pub crdt: [u16; 3],
    pub rsvd134: [u8; 26],
    pub rsvd160: [u8; 96],
    /// Optional Admin Command Support.
    pub oacs: u16,
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    pub npss: u8,
    pub avscc: u8,
    pub apsta: u8,
    pub wctemp: u16,
    pub cctemp: u16,
    pub mtfa: u16,
    pub hmpre: u32,
    pub hmmin: u32,
    pub tnvmcap: [u8; 16],
    pub unvmcap: [u8; 16],
    pub rpmbs: u32,
    pub edstt: u16,
    pub dsto: u8,
    pub fwug: u8,
    pub kas: u16,
    pub hctma: u16,
    pub mntmt: u16,
    pub mxtmt: u16,
    pub sanicap: u32,
    pub rsvd332: [u8; 128],
    pub rsvd460: [u8; 32],
    pub rsvd492: [u8; 20],
    /// SQ entry size: required (3:0) and maximum (7:4), log2.
    pub sqes: u8,
    /// CQ entry size: required (3:0) and maximum (7:4), log2.
    pub cqes: u8,
    pub maxcmd: u16,
    /// Number of Namespaces (largest valid NSID).
    pub nn: u32,
    /// Optional NVM Command Support.
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    /// Volatile Write Cache (bit 0: present).
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    pub nvscc: u8,
    pub nwpc: u8,
    pub acwu: u16,
    pub rsvd534: [u8; 2],
    /// SGL Support.
    pub sgls: u32,
    pub mnan: u32,
    pub rsvd544: [u8; 128],
    pub rsvd672: [u8; 96],
    pub subnqn: [u8; 256],
    pub rsvd1024: [u8; 512],
    pub rsvd1536: [u8; 256],
    /// NVMe over Fabrics area (1792..2047).
    pub nvmof: [u8; 256],
    /// Power State Descriptors 0..31, 32 bytes each.
    pub psd: [[u8; 32]; 32],
    pub vs: [u8; 1024],
}
const _: () = assert!(size_of::<IdentifyController>() == IDENTIFY_DATA_SIZE);
const _: () = assert!(offset_of!(IdentifyController, mn) == 24);
const _: () = assert!(offset_of!(IdentifyController, fr) == 64);
const _: () = assert!(offset_of!(IdentifyController, mdts) == 77);
const _: () = assert!(offset_of!(IdentifyController, cntlid) == 78);
const _: () = assert!(offset_of!(IdentifyController, ver) == 80);
const _: () = assert!(offset_of!(IdentifyController, cntrltype) == 111);
const _: () = assert!(offset_of!(IdentifyController, crdt) == 128);
const _: () = assert!(offset_of!(IdentifyController, oacs) == 256);
const _: () = assert!(offset_of!(IdentifyController, tnvmcap) == 280);
const _: () = assert!(offset_of!(IdentifyController, sanicap) == 328);
const _: () = assert!(offset_of!(IdentifyController, sqes) == 512);
const _: () = assert!(offset_of!(IdentifyController, nn) == 516);
const _: () = assert!(offset_of!(IdentifyController, oncs) == 520);
const _: () = assert!(offset_of!(IdentifyController, vwc) == 525);
const _: () = assert!(offset_of!(IdentifyController, sgls) == 536);
const _: () = assert!(offset_of!(IdentifyController, subnqn) == 768);
const _: () = assert!(offset_of!(IdentifyController, nvmof) == 1792);
const _: () = assert!(offset_of!(IdentifyController, psd) == 2048);
const _: () = assert!(offset_of!(IdentifyController, vs) == 3072);

/// OACS bit 8: Doorbell Buffer Config supported.
pub const OACS_DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;
/// ONCS bit 2: Dataset Management supported.
pub const ONCS_DSM: u16 = 1 << 2;
/// ONCS bit 3: Write Zeroes supported.
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;

/// Trim the space (and NUL) padding of an ASCII identify field; bytes
/// outside printable ASCII become `?`.
fn ascii_field(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    let start = bytes[..end].iter().position(|&b| b != b' ').unwrap_or(end);
    bytes[start..end]
        .iter()
        .map(|&b| {
            if (0x20..0x7F).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Read a `T` from the first `size_of::<T>()` bytes, any alignment.
fn read_pod<T: Pod>(bytes: &[u8]) -> Option<T> {
    bytes
        .get(..size_of::<T>())
        .map(bytemuck::pod_read_unaligned)
}

impl IdentifyController {
    /// Copy out of a device-written buffer; `None` if shorter than 4096.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        read_pod(bytes)
    }
    /// Serial Number, trimmed.
    pub fn serial(&self) -> String {
        ascii_field(&self.sn)
    }
    /// Model Number, trimmed.
    pub fn model(&self) -> String {
        ascii_field(self.mn.as_flattened())
    }
    /// Firmware Revision, trimmed.
    pub fn firmware(&self) -> String {
        ascii_field(&self.fr)
    }
    /// VER field (0 on controllers older than NVMe 1.2).
    pub const fn version(&self) -> Version {
        Version(self.ver)
    }
    /// Maximum data transfer size in bytes given CAP.MPSMIN's page size;
    /// `None` when MDTS is 0 (no limit) or the limit overflows `usize`.
    pub fn mdts_bytes(&self, min_page_size: usize) -> Option<usize> {
        if self.mdts == 0 {
            return None;
        }
        1usize
            .checked_shl(self.mdts as u32)?
            .checked_mul(min_page_size)
    }
    /// SGL support for the NVM command set (SGLS bits 1:0).
    pub const fn sgl_support(&self) -> super::SglSupport {
        super::SglSupport::from_sgls(self.sgls)
    }
    /// Doorbell Buffer Config admin command supported (OACS bit 8).
    pub const fn supports_doorbell_buffer_config(&self) -> bool {
        self.oacs & OACS_DOORBELL_BUFFER_CONFIG != 0
    }
    /// Dataset Management supported (ONCS bit 2).
    pub const fn supports_dsm(&self) -> bool {
        self.oncs & ONCS_DSM != 0
    }
    /// Write Zeroes supported (ONCS bit 3).
    pub const fn supports_write_zeroes(&self) -> bool {
        self.oncs & ONCS_WRITE_ZEROES != 0
    }
    /// A volatile write cache is present (VWC bit 0): Flush is meaningful.
    pub const fn has_volatile_write_cache(&self) -> bool {
        self.vwc & 1 != 0
    }
}

impl fmt::Debug for IdentifyController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyController")
            .field("vid", &format_args!("{:#06x}", self.vid))
            .field("sn", &self.serial())
            .field("mn", &self.model())
            .field("fr", &self.firmware())
            .field("ver", &self.version().to_string())
            .field("mdts", &self.mdts)
            .field("cntlid", &self.cntlid)
            .field("oacs", &format_args!("{:#x}", self.oacs))
            .field("nn", &self.nn)
            .field("oncs", &format_args!("{:#x}", self.oncs))
            .field("vwc", &self.vwc)
            .finish_non_exhaustive()
    }
}

/// LBA Format data structure (NVM Command Set spec, "LBA Format Data
/// Structure"), 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LbaFormat {
    /// MS: metadata bytes per LBA.
    pub ms: u16,
    /// LBADS: LBA data size, `2^LBADS` bytes; 0 means not supported.
    pub lbads: u8,
    /// RP: Relative Performance (bits 1:0; upper bits reserved).
    pub rp: u8,
}
const _: () = assert!(size_of::<LbaFormat>() == 4);

impl LbaFormat {
    /// Data size in bytes; `None` unless LBADS is in 9..=31 (512 B..2 GiB).
    pub const fn data_size(&self) -> Option<u32> {
        if self.lbads >= 9 && self.lbads <= 31 {
            Some(1 << self.lbads)
        } else {
            None
        }
    }
    /// RP with reserved bits masked off (0 best .. 3 degraded).
    pub const fn relative_performance(&self) -> u8 {
        self.rp & 0x3
    }
}

/// Identify Namespace data structure, CNS 00h, NVM Command Set.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct IdentifyNamespace {
    /// Namespace Size in logical blocks.
    pub nsze: u64,
    /// Namespace Capacity in logical blocks.
    pub ncap: u64,
    /// Namespace Utilization in logical blocks.
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA Formats, 0-based.
    pub nlbaf: u8,
    /// Formatted LBA Size: format index (3:0 low, 6:5 high), metadata at
    /// end of LBA (bit 4).
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub dlfeat: u8,
    pub nawun: u16,
    pub nawupf: u16,
    pub nacwu: u16,
    pub nabsn: u16,
    pub nabo: u16,
    pub nabspf: u16,
    pub noiob: u16,
    pub nvmcap: [u8; 16],
    pub npwg: u16,
    pub npwa: u16,
    pub npdg: u16,
    pub npda: u16,
    pub nows: u16,
    pub mssrl: u16,
    pub mcl: u32,
    pub msrc: u8,
    pub rsvd81: [u8; 11],
    pub anagrpid: u32,
    pub rsvd96: [u8; 3],
    pub nsattr: u8,
    pub nvmsetid: u16,
    pub endgid: u16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// LBA Format 0..63 support.
    pub lbaf: [LbaFormat; 64],
    pub rsvd384: [u8; 2048],
    pub rsvd2432: [u8; 512],
    pub rsvd2944: [u8; 128],
    pub vs: [u8; 1024],
}
const _: () = assert!(size_of::<IdentifyNamespace>() == IDENTIFY_DATA_SIZE);
const _: () = assert!(offset_of!(IdentifyNamespace, nsfeat) == 24);
const _: () = assert!(offset_of!(IdentifyNamespace, flbas) == 26);
const _: () = assert!(offset_of!(IdentifyNamespace, nvmcap) == 48);
const _: () = assert!(offset_of!(IdentifyNamespace, mcl) == 76);
const _: () = assert!(offset_of!(IdentifyNamespace, anagrpid) == 92);
const _: () = assert!(offset_of!(IdentifyNamespace, nsattr) == 99);
const _: () = assert!(offset_of!(IdentifyNamespace, nguid) == 104);
const _: () = assert!(offset_of!(IdentifyNamespace, eui64) == 120);
const _: () = assert!(offset_of!(IdentifyNamespace, lbaf) == 128);
const _: () = assert!(offset_of!(IdentifyNamespace, vs) == 3072);

impl IdentifyNamespace {
    /// Copy out of a device-written buffer; `None` if shorter than 4096.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        read_pod(bytes)
    }
    /// Index of the formatted LBA format: FLBAS bits 3:0, plus bits 6:5 as
    /// index bits 5:4 (they are zero when NLBAF < 16).
    pub const fn lba_format_index(&self) -> u8 {
        (self.flbas & 0xF) | (((self.flbas >> 5) & 0x3) << 4)
    }
    /// The LBA format in use; `None` if the index exceeds NLBAF.
    pub fn lba_format(&self) -> Option<LbaFormat> {
        let idx = self.lba_format_index();
        if idx > self.nlbaf {
            return None;
        }
        self.lbaf.get(idx as usize).copied()
    }
    /// Logical block size in bytes of the formatted LBA format; `None` on
    /// an invalid index or LBADS.
    pub fn lba_size(&self) -> Option<u32> {
        self.lba_format()?.data_size()
    }
    /// Metadata bytes per block of the formatted LBA format.
    pub fn metadata_size(&self) -> Option<u16> {
        self.lba_format().map(|f| f.ms)
    }
    /// FLBAS bit 4: metadata is transferred at the end of each LBA.
    pub const fn metadata_extended(&self) -> bool {
        self.flbas & (1 << 4) != 0
    }
    /// DPS bits 2:0: Protection Information Type (0 = not enabled, 1..=3).
    pub const fn pi_type(&self) -> u8 {
        self.dps & 0x7
    }
    /// DPS bit 3: the protection information is the first 8 bytes of the
    /// metadata (else the last 8).
    pub const fn pi_first(&self) -> bool {
        self.dps & (1 << 3) != 0
    }
}

impl fmt::Debug for IdentifyNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyNamespace")
            .field("nsze", &self.nsze)
            .field("ncap", &self.ncap)
            .field("nuse", &self.nuse)
            .field("nlbaf", &self.nlbaf)
            .field("flbas", &format_args!("{:#x}", self.flbas))
            .field("lba_size", &self.lba_size())
            .finish_non_exhaustive()
    }
}

/// NSIDs of an Active Namespace ID list (CNS 02h): little-endian u32s,
/// ascending, terminated by the first zero entry.
pub fn active_ns_ids(data: &[u8]) -> impl Iterator<Item = u32> + '_ {
    data.chunks_exact(4)
        .take(IDENTIFY_DATA_SIZE / 4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&id| id != 0)
}
