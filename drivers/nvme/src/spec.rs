//! NVMe specification definitions, each declared once: controller registers
//! (NVMe base spec 2.0, section 3.1 "Controller Registers"), submission and
//! completion queue entries (section 4.2 and 4.6), the admin and NVM commands
//! this driver issues (section 5 and the NVM Command Set spec), the Identify
//! data structures (figures "Identify Controller Data Structure" and
//! "Identify Namespace Data Structure, NVM Command Set") and the completion
//! status field (section 4.6.1).
//!
//! All structures are little-endian on the wire and are declared with native
//! integers, so the crate only builds for little-endian targets. Identify data
//! is written by the device: every accessor here is total over arbitrary
//! bytes and reports nonsense as `None` instead of panicking.

use std::fmt;
use std::mem::{offset_of, size_of};
use std::time::Duration;

use bytemuck::{Pod, Zeroable};

#[cfg(target_endian = "big")]
compile_error!("fastlane-nvme declares NVMe structures with native integers: little-endian only");

/// Controller register offsets in BAR0 (base spec 3.1.4, "Controller
/// Properties").
pub mod reg {
    /// Controller Capabilities, 64 bit.
    pub const CAP: usize = 0x00;
    /// Version, 32 bit.
    pub const VS: usize = 0x08;
    /// Interrupt Mask Set, 32 bit.
    pub const INTMS: usize = 0x0C;
    /// Interrupt Mask Clear, 32 bit.
    pub const INTMC: usize = 0x10;
    /// Controller Configuration, 32 bit.
    pub const CC: usize = 0x14;
    /// Controller Status, 32 bit.
    pub const CSTS: usize = 0x1C;
    /// NVM Subsystem Reset, 32 bit.
    pub const NSSR: usize = 0x20;
    /// Admin Queue Attributes, 32 bit.
    pub const AQA: usize = 0x24;
    /// Admin Submission Queue Base Address, 64 bit.
    pub const ASQ: usize = 0x28;
    /// Admin Completion Queue Base Address, 64 bit.
    pub const ACQ: usize = 0x30;
    /// First doorbell (SQ 0 Tail Doorbell).
    pub const DOORBELL_BASE: usize = 0x1000;
}

/// Offset of the Submission Queue `qid` Tail Doorbell (`SQyTDBL`):
/// `0x1000 + (2 * qid) * (4 << CAP.DSTRD)`.
pub const fn sq_tail_doorbell(qid: u16, dstrd: u8) -> usize {
    reg::DOORBELL_BASE + (2 * qid as usize) * (4usize << (dstrd & 0xF))
}

/// Offset of the Completion Queue `qid` Head Doorbell (`CQyHDBL`):
/// `0x1000 + (2 * qid + 1) * (4 << CAP.DSTRD)`.
pub const fn cq_head_doorbell(qid: u16, dstrd: u8) -> usize {
    reg::DOORBELL_BASE + (2 * qid as usize + 1) * (4usize << (dstrd & 0xF))
}

const fn bits64(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1 << width) - 1)
}

const fn bits32(v: u32, lo: u32, width: u32) -> u32 {
    (v >> lo) & ((1 << width) - 1)
}

/// Controller Capabilities register (CAP, offset 0x00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// MQES: Maximum Queue Entries Supported, 0-based.
    pub const fn mqes(self) -> u16 {
        bits64(self.0, 0, 16) as u16
    }
    /// Largest I/O queue size in entries (`MQES + 1`).
    pub const fn max_queue_entries(self) -> u32 {
        self.mqes() as u32 + 1
    }
    /// CQR: Contiguous Queues Required.
    pub const fn cqr(self) -> bool {
        bits64(self.0, 16, 1) != 0
    }
    /// AMS: Arbitration Mechanism Supported (bit 0 WRR, bit 1 vendor).
    pub const fn ams(self) -> u8 {
        bits64(self.0, 17, 2) as u8
    }
    /// TO: worst-case time for CSTS.RDY to follow CC.EN, in 500 ms units.
    pub const fn to(self) -> u8 {
        bits64(self.0, 24, 8) as u8
    }
    /// CAP.TO as a duration.
    pub const fn timeout(self) -> Duration {
        Duration::from_millis(self.to() as u64 * 500)
    }
    /// DSTRD: Doorbell Stride; doorbells are `4 << DSTRD` bytes apart.
    pub const fn dstrd(self) -> u8 {
        bits64(self.0, 32, 4) as u8
    }
    /// Distance between doorbell registers in bytes.
    pub const fn doorbell_stride(self) -> usize {
        4 << self.dstrd()
    }
    /// NSSRS: NVM Subsystem Reset Supported.
    pub const fn nssrs(self) -> bool {
        bits64(self.0, 36, 1) != 0
    }
    /// CSS: Command Sets Supported (bit 0 NVM, bit 6 I/O command sets,
    /// bit 7 admin only).
    pub const fn css(self) -> u8 {
        bits64(self.0, 37, 8) as u8
    }
    /// CSS bit 0: the NVM command set is supported.
    pub const fn supports_nvm_command_set(self) -> bool {
        self.css() & 1 != 0
    }
    /// MPSMIN: minimum memory page size is `2 ^ (12 + MPSMIN)`.
    pub const fn mpsmin(self) -> u8 {
        bits64(self.0, 48, 4) as u8
    }
    /// MPSMAX: maximum memory page size is `2 ^ (12 + MPSMAX)`.
    pub const fn mpsmax(self) -> u8 {
        bits64(self.0, 52, 4) as u8
    }
    /// Minimum memory page size in bytes.
    pub const fn min_page_size(self) -> usize {
        1 << (12 + self.mpsmin() as u32)
    }
    /// Maximum memory page size in bytes.
    pub const fn max_page_size(self) -> usize {
        1 << (12 + self.mpsmax() as u32)
    }
}

/// Version register (VS) and Identify Controller VER field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32);

impl Version {
    /// MJR: major version.
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// MNR: minor version.
    pub const fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// TER: tertiary version.
    pub const fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.tertiary())
    }
}

/// CC.SHN: Shutdown Notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Shutdown {
    /// No notification, no effect.
    None = 0b00,
    /// Normal shutdown notification.
    Normal = 0b01,
    /// Abrupt shutdown notification.
    Abrupt = 0b10,
}

/// Controller Configuration register (CC, offset 0x14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// CC.EN: Enable.
    pub const EN: u32 = 1 << 0;
    const CSS_SHIFT: u32 = 4;
    const MPS_SHIFT: u32 = 7;
    const AMS_SHIFT: u32 = 11;
    const SHN_SHIFT: u32 = 14;
    const IOSQES_SHIFT: u32 = 16;
    const IOCQES_SHIFT: u32 = 20;
    /// IOSQES value for 64-byte submission entries (`2^6`).
    pub const IOSQES_64: u8 = 6;
    /// IOCQES value for 16-byte completion entries (`2^4`).
    pub const IOCQES_16: u8 = 4;

    /// The configuration this driver enables a controller with: NVM
    /// command set (CSS 0), round robin arbitration (AMS 0), memory page size
    /// `2 ^ (12 + mps)`, 64-byte SQ and 16-byte CQ entries, EN clear.
    pub const fn nvm(mps: u8) -> Cc {
        Cc(0)
            .with_css(0)
            .with_mps(mps)
            .with_ams(0)
            .with_iosqes(Self::IOSQES_64)
            .with_iocqes(Self::IOCQES_16)
    }

    const fn with_field(self, shift: u32, width: u32, v: u32) -> Cc {
        let mask = ((1 << width) - 1) << shift;
        Cc((self.0 & !mask) | ((v << shift) & mask))
    }
    /// Set or clear CC.EN.
    pub const fn with_en(self, en: bool) -> Cc {
        self.with_field(0, 1, en as u32)
    }
    /// Set CC.CSS (I/O Command Set Selected, 3 bits).
    pub const fn with_css(self, css: u8) -> Cc {
        self.with_field(Self::CSS_SHIFT, 3, css as u32)
    }
    /// Set CC.MPS (memory page size `2 ^ (12 + MPS)`, 4 bits).
    pub const fn with_mps(self, mps: u8) -> Cc {
        self.with_field(Self::MPS_SHIFT, 4, mps as u32)
    }
    /// Set CC.AMS (Arbitration Mechanism Selected, 3 bits).
    pub const fn with_ams(self, ams: u8) -> Cc {
        self.with_field(Self::AMS_SHIFT, 3, ams as u32)
    }
    /// Set CC.SHN.
    pub const fn with_shn(self, shn: Shutdown) -> Cc {
        self.with_field(Self::SHN_SHIFT, 2, shn as u32)
    }
    /// Set CC.IOSQES (log2 of the I/O submission entry size).
    pub const fn with_iosqes(self, v: u8) -> Cc {
        self.with_field(Self::IOSQES_SHIFT, 4, v as u32)
    }
    /// Set CC.IOCQES (log2 of the I/O completion entry size).
    pub const fn with_iocqes(self, v: u8) -> Cc {
        self.with_field(Self::IOCQES_SHIFT, 4, v as u32)
    }
    /// CC.EN.
    pub const fn en(self) -> bool {
        self.0 & Self::EN != 0
    }
    /// CC.CSS.
    pub const fn css(self) -> u8 {
        bits32(self.0, Self::CSS_SHIFT, 3) as u8
    }
    /// CC.MPS.
    pub const fn mps(self) -> u8 {
        bits32(self.0, Self::MPS_SHIFT, 4) as u8
    }
    /// CC.AMS.
    pub const fn ams(self) -> u8 {
        bits32(self.0, Self::AMS_SHIFT, 3) as u8
    }
    /// CC.SHN raw value.
    pub const fn shn(self) -> u8 {
        bits32(self.0, Self::SHN_SHIFT, 2) as u8
    }
    /// CC.IOSQES.
    pub const fn iosqes(self) -> u8 {
        bits32(self.0, Self::IOSQES_SHIFT, 4) as u8
    }
    /// CC.IOCQES.
    pub const fn iocqes(self) -> u8 {
        bits32(self.0, Self::IOCQES_SHIFT, 4) as u8
    }
}

/// CSTS.SHST: Shutdown Status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownStatus {
    /// Normal operation, no shutdown requested.
    Normal,
    /// Shutdown processing occurring.
    Occurring,
    /// Shutdown processing complete.
    Complete,
    /// Reserved value 11b.
    Reserved,
}

/// Controller Status register (CSTS, offset 0x1C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Csts(pub u32);

impl Csts {
    /// CSTS.RDY: Ready.
    pub const RDY: u32 = 1 << 0;
    /// CSTS.CFS: Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;

    /// CSTS.RDY.
    pub const fn rdy(self) -> bool {
        self.0 & Self::RDY != 0
    }
    /// CSTS.CFS.
    pub const fn cfs(self) -> bool {
        self.0 & Self::CFS != 0
    }
    /// CSTS.SHST.
    pub const fn shst(self) -> ShutdownStatus {
        match bits32(self.0, 2, 2) {
            0 => ShutdownStatus::Normal,
            1 => ShutdownStatus::Occurring,
            2 => ShutdownStatus::Complete,
            _ => ShutdownStatus::Reserved,
        }
    }
    /// CSTS.NSSRO: NVM Subsystem Reset Occurred.
    pub const fn nssro(self) -> bool {
        bits32(self.0, 4, 1) != 0
    }
    /// True when the register reads all ones: the device is gone (surprise
    /// removal, failed PCIe link) rather than reporting real status.
    pub const fn is_all_ones(self) -> bool {
        self.0 == u32::MAX
    }
}

/// Largest admin queue (AQA.ASQS / AQA.ACQS are 12-bit, 0-based).
pub const MAX_ADMIN_QUEUE_ENTRIES: u16 = 4096;

/// AQA register value for admin queues of `asq_entries` and `acq_entries`
/// entries (each 2..=4096); `None` when out of range.
pub const fn aqa(asq_entries: u16, acq_entries: u16) -> Option<u32> {
    if asq_entries < 2
        || acq_entries < 2
        || asq_entries > MAX_ADMIN_QUEUE_ENTRIES
        || acq_entries > MAX_ADMIN_QUEUE_ENTRIES
    {
        return None;
    }
    Some(((acq_entries as u32 - 1) << 16) | (asq_entries as u32 - 1))
}

/// Admin command opcodes (base spec 5, "Admin Command Set").
pub mod admin_opcode {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7C;
}

/// NVM command set I/O opcodes (NVM Command Set spec 3).
pub mod nvm_opcode {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Identify CNS values (base spec 5.17, "Identify command").
pub mod cns {
    /// Identify Namespace data structure for NSID.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller data structure.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list: up to 1024 NSIDs greater than NSID.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
}

/// Feature Identifiers (base spec 5.27.1, "Set Features").
pub mod feature {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
}

/// Get Features SEL (Select) field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FeatureSelect {
    Current = 0b000,
    Default = 0b001,
    Saved = 0b010,
    SupportedCapabilities = 0b011,
}

/// Create I/O Submission Queue QPRIO, used only with weighted round robin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum QueuePriority {
    Urgent = 0b00,
    High = 0b01,
    Medium = 0b10,
    Low = 0b11,
}

/// Read/Write/Write Zeroes CDW12 bit 30: Force Unit Access.
pub const CDW12_FUA: u32 = 1 << 30;
/// Read/Write/Write Zeroes CDW12 bit 31: Limited Retry.
pub const CDW12_LR: u32 = 1 << 31;
/// Write Zeroes CDW12 bit 25: Deallocate.
pub const CDW12_DEAC: u32 = 1 << 25;
/// Dataset Management CDW11 bit 0: Integral Dataset for Read.
pub const DSM_IDR: u32 = 1 << 0;
/// Dataset Management CDW11 bit 1: Integral Dataset for Write.
pub const DSM_IDW: u32 = 1 << 1;
/// Dataset Management CDW11 bit 2: Attribute – Deallocate.
pub const DSM_AD: u32 = 1 << 2;
/// Most ranges one Dataset Management command carries (NR is 8-bit 0-based).
pub const DSM_MAX_RANGES: usize = 256;
/// Size of every Identify data structure.
pub const IDENTIFY_DATA_SIZE: usize = 4096;

/// Submission Queue Entry, 64 bytes (base spec 4.2, "Submission Queue
/// Entry"). PRP data pointer only (CDW0.PSDT = 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SubmissionEntry {
    /// CDW0: opcode (7:0), FUSE (9:8), PSDT (15:14), CID (31:16).
    pub cdw0: u32,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    /// Metadata Pointer.
    pub mptr: u64,
    /// Data Pointer, PRP Entry 1.
    pub prp1: u64,
    /// Data Pointer, PRP Entry 2 (or PRP List pointer).
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}
const _: () = assert!(size_of::<SubmissionEntry>() == 64);
const _: () = assert!(offset_of!(SubmissionEntry, mptr) == 16);
const _: () = assert!(offset_of!(SubmissionEntry, prp1) == 24);
const _: () = assert!(offset_of!(SubmissionEntry, cdw10) == 40);

impl SubmissionEntry {
    /// An entry with the given opcode and NSID, CID 0, everything else zero.
    pub const fn new(opcode: u8, nsid: u32) -> Self {
        SubmissionEntry {
            cdw0: opcode as u32,
            nsid,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            prp1: 0,
            prp2: 0,
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        }
    }

    /// CDW0.OPC.
    pub const fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }
    /// CDW0.CID.
    pub const fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }
    /// Set CDW0.CID; done by the queue at submission time.
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = (self.cdw0 & 0xFFFF) | ((cid as u32) << 16);
    }
    /// Set both data pointers.
    pub const fn with_prp(mut self, prp1: u64, prp2: u64) -> Self {
        self.prp1 = prp1;
        self.prp2 = prp2;
        self
    }

    /// Identify with the given CNS. `data` is the IOVA of a 4096-byte
    /// buffer that must not cross a memory page boundary (page aligned).
    pub const fn identify(cns: u8, nsid: u32, data: u64) -> Self {
        let mut e = Self::new(admin_opcode::IDENTIFY, nsid).with_prp(data, 0);
        e.cdw10 = cns as u32;
        e
    }
    /// Identify Controller (CNS 01h).
    pub const fn identify_controller(data: u64) -> Self {
        Self::identify(cns::CONTROLLER, 0, data)
    }
    /// Identify Namespace (CNS 00h) for `nsid`.
    pub const fn identify_namespace(nsid: u32, data: u64) -> Self {
        Self::identify(cns::NAMESPACE, nsid, data)
    }
    /// Active Namespace ID list (CNS 02h): active NSIDs greater than
    /// `start_nsid`, ascending; parse with [`active_ns_ids`].
    pub const fn identify_active_ns_list(start_nsid: u32, data: u64) -> Self {
        Self::identify(cns::ACTIVE_NS_LIST, start_nsid, data)
    }

    /// Create I/O Completion Queue: physically contiguous (PC=1), interrupts
    /// disabled (IEN=0). `entries` is the queue size (2..=MQES+1); it is
    /// encoded 0-based.
    pub const fn create_io_cq(qid: u16, entries: u16, base: u64) -> Self {
        let mut e = Self::new(admin_opcode::CREATE_IO_CQ, 0).with_prp(base, 0);
        e.cdw10 = ((entries.saturating_sub(1) as u32) << 16) | qid as u32;
        e.cdw11 = 1; // PC=1, IEN=0, IV=0
        e
    }
    /// Create I/O Submission Queue bound to completion queue `cqid`,
    /// physically contiguous (PC=1). `entries` is encoded 0-based.
    pub const fn create_io_sq(
        qid: u16,
        entries: u16,
        base: u64,
        cqid: u16,
        priority: QueuePriority,
    ) -> Self {
        let mut e = Self::new(admin_opcode::CREATE_IO_SQ, 0).with_prp(base, 0);
        e.cdw10 = ((entries.saturating_sub(1) as u32) << 16) | qid as u32;
        e.cdw11 = ((cqid as u32) << 16) | ((priority as u32) << 1) | 1;
        e
    }
    /// Delete I/O Submission Queue.
    pub const fn delete_io_sq(qid: u16) -> Self {
        let mut e = Self::new(admin_opcode::DELETE_IO_SQ, 0);
        e.cdw10 = qid as u32;
        e
    }
    /// Delete I/O Completion Queue (delete its SQs first).
    pub const fn delete_io_cq(qid: u16) -> Self {
        let mut e = Self::new(admin_opcode::DELETE_IO_CQ, 0);
        e.cdw10 = qid as u32;
        e
    }
    /// Set Features with FID and CDW11; `save` sets SV.
    pub const fn set_features(fid: u8, cdw11: u32, save: bool) -> Self {
        let mut e = Self::new(admin_opcode::SET_FEATURES, 0);
        e.cdw10 = ((save as u32) << 31) | fid as u32;
        e.cdw11 = cdw11;
        e
    }
    /// Set Features – Number of Queues (FID 07h) requesting `sq_count` I/O
    /// submission and `cq_count` I/O completion queues (each 1..=65535,
    /// encoded 0-based). The grant is in DW0, see [`NumQueues`].
    pub const fn set_num_queues(sq_count: u16, cq_count: u16) -> Self {
        let nsqr = sq_count.saturating_sub(1) as u32;
        let ncqr = cq_count.saturating_sub(1) as u32;
        Self::set_features(feature::NUMBER_OF_QUEUES, (ncqr << 16) | nsqr, false)
    }
    /// Get Features with FID, SEL and CDW11.
    pub const fn get_features(fid: u8, sel: FeatureSelect, cdw11: u32) -> Self {
        let mut e = Self::new(admin_opcode::GET_FEATURES, 0);
        e.cdw10 = ((sel as u32) << 8) | fid as u32;
        e.cdw11 = cdw11;
        e
    }
    /// Abort the command `cid` submitted on submission queue `sqid`.
    pub const fn abort(sqid: u16, cid: u16) -> Self {
        let mut e = Self::new(admin_opcode::ABORT, 0);
        e.cdw10 = ((cid as u32) << 16) | sqid as u32;
        e
    }
    /// Doorbell Buffer Config: PRP1 = shadow doorbell buffer, PRP2 =
    /// EventIdx buffer, each one page-aligned memory page.
    pub const fn doorbell_buffer_config(shadow_doorbells: u64, eventidx: u64) -> Self {
        Self::new(admin_opcode::DOORBELL_BUFFER_CONFIG, 0).with_prp(shadow_doorbells, eventidx)
    }

    const fn rw(opcode: u8, nsid: u32, slba: u64, nlb: u16, prp1: u64, prp2: u64) -> Self {
        let mut e = Self::new(opcode, nsid).with_prp(prp1, prp2);
        e.cdw10 = slba as u32;
        e.cdw11 = (slba >> 32) as u32;
        e.cdw12 = nlb as u32;
        e
    }
    /// Read `nlb + 1` logical blocks (NLB is 0-based) from `slba`.
    pub const fn read(nsid: u32, slba: u64, nlb: u16, prp1: u64, prp2: u64) -> Self {
        Self::rw(nvm_opcode::READ, nsid, slba, nlb, prp1, prp2)
    }
    /// Write `nlb + 1` logical blocks (NLB is 0-based) at `slba`.
    pub const fn write(nsid: u32, slba: u64, nlb: u16, prp1: u64, prp2: u64) -> Self {
        Self::rw(nvm_opcode::WRITE, nsid, slba, nlb, prp1, prp2)
    }
    /// Flush the volatile write cache of `nsid` (0xFFFF_FFFF: all).
    pub const fn flush(nsid: u32) -> Self {
        Self::new(nvm_opcode::FLUSH, nsid)
    }
    /// Write Zeroes to `nlb + 1` blocks at `slba`; `deallocate` sets DEAC.
    pub const fn write_zeroes(nsid: u32, slba: u64, nlb: u16, deallocate: bool) -> Self {
        let mut e = Self::rw(nvm_opcode::WRITE_ZEROES, nsid, slba, nlb, 0, 0);
        if deallocate {
            e.cdw12 |= CDW12_DEAC;
        }
        e
    }
    /// Dataset Management over `nr + 1` [`DsmRange`]s (NR is 0-based, up
    /// to 256 ranges) at `ranges`, which must not cross a page boundary;
    /// `attributes` is a combination of [`DSM_AD`], [`DSM_IDW`], [`DSM_IDR`].
    pub const fn dataset_management(nsid: u32, ranges: u64, nr: u8, attributes: u32) -> Self {
        let mut e = Self::new(nvm_opcode::DATASET_MANAGEMENT, nsid).with_prp(ranges, 0);
        e.cdw10 = nr as u32;
        e.cdw11 = attributes;
        e
    }
    /// Dataset Management with AD (deallocate, "trim").
    pub const fn deallocate(nsid: u32, ranges: u64, nr: u8) -> Self {
        Self::dataset_management(nsid, ranges, nr, DSM_AD)
    }
}

/// Dataset Management range, 16 bytes (NVM Command Set spec, "Dataset
/// Management – Range Definition").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DsmRange {
    /// Context Attributes.
    pub context_attributes: u32,
    /// Length in logical blocks (1-based, unlike NLB).
    pub length: u32,
    /// Starting LBA.
    pub slba: u64,
}
const _: () = assert!(size_of::<DsmRange>() == 16);

impl DsmRange {
    /// A range of `length` blocks at `slba` with no context attributes.
    pub const fn new(slba: u64, length: u32) -> Self {
        DsmRange {
            context_attributes: 0,
            length,
            slba,
        }
    }
}

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
    pub const fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }
    /// `Ok` on success, otherwise the decoded error.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_fields() {
        // MQES 1023, CQR, TO 0x14, DSTRD 1, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = Cap(0x3FF | 1 << 16 | 0x14 << 24 | 1 << 32 | 1 << 37 | 4 << 52);
        assert_eq!(cap.mqes(), 1023);
        assert_eq!(cap.max_queue_entries(), 1024);
        assert!(cap.cqr());
        assert_eq!(cap.timeout(), Duration::from_secs(10));
        assert_eq!(cap.doorbell_stride(), 8);
        assert!(cap.supports_nvm_command_set());
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.max_page_size(), 65536);
        assert_eq!(Cap(u64::MAX).max_page_size(), 1 << 27);

        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(3, 1), 0x1000 + 6 * 8);
        assert_eq!(cq_head_doorbell(3, 1), 0x1000 + 7 * 8);

        let cc = Cc::nvm(0).with_en(true);
        assert_eq!(cc.0, 0x0046_0001);
        assert_eq!(
            (cc.iosqes(), cc.iocqes(), cc.mps(), cc.en()),
            (6, 4, 0, true)
        );
        let cc = cc.with_shn(Shutdown::Normal).with_en(false);
        assert_eq!(cc.shn(), 1);
        assert!(!cc.en());

        assert_eq!(Csts(0b1001).shst(), ShutdownStatus::Complete);
        assert!(Csts(0b1001).rdy() && !Csts(0b1001).cfs());
        assert!(Csts(u32::MAX).is_all_ones());
        assert_eq!(aqa(32, 64), Some(63 << 16 | 31));
        assert_eq!(aqa(1, 64), None);
        assert_eq!(aqa(4097, 64), None);
        assert_eq!(Version(0x0001_0400).to_string(), "1.4.0");
    }

    #[test]
    fn command_encoding() {
        let mut e = SubmissionEntry::read(1, 0x1_2345_6789, 7, 0x1000, 0x2000);
        e.set_cid(0xBEEF);
        let bytes: &[u8] = bytemuck::bytes_of(&e);
        assert_eq!(bytes[0], 0x02);
        assert_eq!(&bytes[2..4], &[0xEF, 0xBE]);
        assert_eq!(&bytes[4..8], &[1, 0, 0, 0]);
        assert_eq!(&bytes[24..32], &0x1000u64.to_le_bytes());
        assert_eq!(&bytes[32..40], &0x2000u64.to_le_bytes());
        assert_eq!(&bytes[40..48], &0x1_2345_6789u64.to_le_bytes());
        assert_eq!(&bytes[48..52], &[7, 0, 0, 0]);
        assert_eq!((e.opcode(), e.cid()), (0x02, 0xBEEF));

        let cq = SubmissionEntry::create_io_cq(3, 256, 0xA000);
        assert_eq!(
            (cq.opcode(), cq.cdw10, cq.cdw11, cq.prp1),
            (0x05, 255 << 16 | 3, 1, 0xA000)
        );
        let sq = SubmissionEntry::create_io_sq(3, 256, 0xB000, 3, QueuePriority::Medium);
        assert_eq!(
            (sq.opcode(), sq.cdw10, sq.cdw11),
            (0x01, 255 << 16 | 3, 3 << 16 | 2 << 1 | 1)
        );
        assert_eq!(SubmissionEntry::delete_io_sq(5).cdw10, 5);
        assert_eq!(SubmissionEntry::delete_io_cq(5).opcode(), 0x04);
        let nq = SubmissionEntry::set_num_queues(4, 2);
        assert_eq!((nq.opcode(), nq.cdw10, nq.cdw11), (0x09, 0x07, 1 << 16 | 3));
        assert_eq!(
            NumQueues::from_dw0(0x0003_0007),
            NumQueues {
                sq_count: 8,
                cq_count: 4
            }
        );
        let gf =
            SubmissionEntry::get_features(feature::VOLATILE_WRITE_CACHE, FeatureSelect::Saved, 0);
        assert_eq!((gf.opcode(), gf.cdw10), (0x0A, 2 << 8 | 6));
        let ab = SubmissionEntry::abort(2, 77);
        assert_eq!((ab.opcode(), ab.cdw10), (0x08, 77 << 16 | 2));
        let id = SubmissionEntry::identify_namespace(1, 0x5000);
        assert_eq!(
            (id.opcode(), id.nsid, id.cdw10, id.prp1),
            (0x06, 1, 0, 0x5000)
        );
        assert_eq!(SubmissionEntry::identify_controller(0).cdw10, 1);
        assert_eq!(SubmissionEntry::identify_active_ns_list(0, 0).cdw10, 2);
        let db = SubmissionEntry::doorbell_buffer_config(0x1000, 0x2000);
        assert_eq!((db.opcode(), db.prp1, db.prp2), (0x7C, 0x1000, 0x2000));
        let wz = SubmissionEntry::write_zeroes(1, 10, 3, true);
        assert_eq!(
            (wz.opcode(), wz.cdw10, wz.cdw12),
            (0x08, 10, 3 | CDW12_DEAC)
        );
        let dsm = SubmissionEntry::deallocate(1, 0x3000, 255);
        assert_eq!(
            (dsm.opcode(), dsm.cdw10, dsm.cdw11, dsm.prp1),
            (0x09, 255, DSM_AD, 0x3000)
        );
        assert_eq!(SubmissionEntry::flush(1).opcode(), 0x00);
        assert_eq!(SubmissionEntry::write(1, 0, 0, 0, 0).opcode(), 0x01);

        let r = DsmRange::new(0x10, 8);
        assert_eq!(bytemuck::bytes_of(&r)[4..8], [8, 0, 0, 0]);
        assert_eq!(bytemuck::bytes_of(&r)[8], 0x10);
    }

    #[test]
    fn status_decoding() {
        let raw: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 9, 0, 0, 0];
        let mut cqe: CompletionEntry = bytemuck::pod_read_unaligned(&raw);
        assert_eq!((cqe.dw0, cqe.sq_head, cqe.sq_id, cqe.cid), (1, 5, 1, 9));
        assert!(!cqe.phase());
        assert_eq!(cqe.status().result(), Ok(()));

        // Phase 1, SCT 0, SC 0x80 (LBA Out of Range), DNR.
        cqe.status = 1 | 0x80 << 1 | 1 << 15;
        let s = cqe.status();
        assert!(s.phase() && s.dnr() && !s.more() && !s.is_success());
        let err = s.result().unwrap_err();
        assert_eq!((err.sct, err.sc), (0, 0x80));
        assert_eq!(err.to_string(), "LBA Out of Range (SCT 0x0, SC 0x80, DNR)");

        // SCT 1, SC 1: Invalid Queue Identifier; CRD 2, More.
        let s = Status(1 << 1 | 1 << 9 | 2 << 12 | 1 << 14);
        assert_eq!((s.sct(), s.sc(), s.crd(), s.more()), (1, 1, 2, true));
        assert_eq!(
            s.result().unwrap_err().name(),
            Some("Invalid Queue Identifier")
        );
        assert!(Status(1 | 2 << 12).is_success());

        // Every raw value decodes and formats without panicking.
        for raw in 0..=u16::MAX {
            if let Err(e) = Status(raw).result() {
                assert!(!e.to_string().is_empty());
            }
        }
        assert!(Status(0x17 << 1)
            .result()
            .unwrap_err()
            .to_string()
            .starts_with("Unknown"));
    }

    fn controller_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        b[4..24].copy_from_slice(b"deadbeef            ");
        b[24..64].copy_from_slice(b"QEMU NVMe Ctrl                          ");
        b[64..72].copy_from_slice(b"8.2.0   ");
        b[77] = 7;
        b[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes());
        b[256..258].copy_from_slice(&0x0100u16.to_le_bytes());
        b[516..520].copy_from_slice(&256u32.to_le_bytes());
        b[520..522].copy_from_slice(&0x000Cu16.to_le_bytes());
        b[525] = 1;
        b
    }

    #[test]
    fn identify_controller() {
        let id = IdentifyController::from_bytes(&controller_bytes()).unwrap();
        assert_eq!(id.vid, 0x1b36);
        assert_eq!(id.serial(), "deadbeef");
        assert_eq!(id.model(), "QEMU NVMe Ctrl");
        assert_eq!(id.firmware(), "8.2.0");
        assert_eq!(id.version(), Version(0x0001_0400));
        assert_eq!(id.nn, 256);
        assert_eq!(id.mdts_bytes(4096), Some(512 * 1024));
        assert!(id.supports_doorbell_buffer_config());
        assert!(id.supports_dsm() && id.supports_write_zeroes());
        assert!(id.has_volatile_write_cache());
        assert!(format!("{id:?}").contains("QEMU NVMe Ctrl"));
        assert!(IdentifyController::from_bytes(&[0; 4095]).is_none());

        let mut odd = IdentifyController::from_bytes(&[0xFF; 4096]).unwrap();
        assert_eq!(odd.serial(), "?".repeat(20));
        assert_eq!(odd.mdts_bytes(4096), None);
        odd.mdts = 0;
        assert_eq!(odd.mdts_bytes(4096), None);
        odd.sn = [b' '; 20];
        assert_eq!(odd.serial(), "");
    }

    #[test]
    fn identify_namespace() {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&1000u64.to_le_bytes());
        b[25] = 1; // two formats
        b[26] = 1; // format 1 in use
        b[128..132].copy_from_slice(&[0, 0, 9, 0]); // 512 B
        b[132..136].copy_from_slice(&[8, 0, 12, 0x81]); // 4 KiB + 8 B metadata
        let mut ns = IdentifyNamespace::from_bytes(&b).unwrap();
        assert_eq!(ns.nsze, 1000);
        assert_eq!(ns.lba_size(), Some(4096));
        assert_eq!(ns.metadata_size(), Some(8));
        assert_eq!(ns.lba_format().unwrap().relative_performance(), 1);
        ns.flbas = 0;
        assert_eq!(ns.lba_size(), Some(512));
        ns.flbas = 2; // beyond NLBAF
        assert_eq!(ns.lba_size(), None);
        ns.flbas = 0x60 | 0xF; // index 63
        ns.nlbaf = 63;
        assert_eq!(ns.lba_format_index(), 63);
        assert_eq!(ns.lba_size(), None); // LBADS 0: unsupported
        ns.lbaf[63].lbads = 200;
        assert_eq!(ns.lba_size(), None);
        ns.lbaf[63].lbads = 13;
        assert_eq!(ns.lba_size(), Some(8192));

        // No byte content panics.
        for fill in [0x00u8, 0x5A, 0xFF] {
            let ns = IdentifyNamespace::from_bytes(&[fill; 4096]).unwrap();
            let _ = (ns.lba_size(), ns.metadata_size(), format!("{ns:?}"));
        }
    }

    #[test]
    fn ns_list() {
        let mut b = vec![0u8; 4096];
        for (i, id) in [1u32, 2, 7].iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
        }
        assert_eq!(active_ns_ids(&b).collect::<Vec<_>>(), [1, 2, 7]);
        assert_eq!(active_ns_ids(&[0xFF; 4096]).count(), 1024);
        assert_eq!(active_ns_ids(&[1, 0, 0]).count(), 0);
    }
}
