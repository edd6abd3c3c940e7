//! Controller registers (base spec 3.1): offsets, doorbells, CAP, VS, CC, CSTS, AQA.

use std::fmt;
use std::time::Duration;

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
