//! Submission queue entries and the admin and NVM commands the driver issues
//! (base spec 4.2, 5; NVM command set spec).
// Field and constant names are the specification's own, documented by the
// section named above; a doc line per field would only repeat them.
#![allow(missing_docs)]

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

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
    /// Namespace Attachment: its data names controllers to attach.
    pub const NAMESPACE_ATTACHMENT: u8 = 0x15;
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
    /// Error Recovery (time limited error recovery).
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Interrupt Vector Configuration.
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    /// Autonomous Power State Transition (table in the data buffer).
    pub const AUTONOMOUS_POWER_STATE: u8 = 0x0C;
    /// Host Memory Buffer: CDW12..15 carry the descriptor list's address.
    pub const HOST_MEMORY_BUFFER: u8 = 0x0D;
    /// Timestamp (8 bytes in the data buffer).
    pub const TIMESTAMP: u8 = 0x0E;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
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
/// Read/Write CDW12 bits 29:26: PRINFO (NVM Command Set spec, "Protection
/// Information Field"), at this shift: PRACT (bit 3) and PRCHK (bits 2:0).
pub const CDW12_PRINFO_SHIFT: u32 = 26;
/// PRINFO bit 3: Protection Information Action (insert on write, strip on
/// read).
pub const PRINFO_PRACT: u8 = 1 << 3;
/// PRINFO bit 2: check the Guard field.
pub const PRCHK_GUARD: u8 = 1 << 2;
/// PRINFO bit 1: check the Application Tag field.
pub const PRCHK_APP: u8 = 1 << 1;
/// PRINFO bit 0: check the Logical Block Reference Tag field.
pub const PRCHK_REF: u8 = 1 << 0;
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
/// Entry"). The data pointer is two PRP entries (CDW0.PSDT = 00b) or one
/// inline SGL descriptor ([`SubmissionEntry::with_sgl`], PSDT = 01b).
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

    /// Carry `desc` inline as the command's data pointer (DPTR) and set
    /// CDW0.PSDT to 01b (SGLs, contiguous metadata buffer). Admin commands
    /// must keep PRPs (base spec: PSDT is reserved for them over PCIe).
    pub const fn with_sgl(mut self, desc: super::SglDescriptor) -> Self {
        let (d1, d2) = desc.to_dptr();
        self.cdw0 = (self.cdw0 & !super::PSDT_MASK) | super::PSDT_SGL_MPTR_CONTIG;
        self.prp1 = d1;
        self.prp2 = d2;
        self
    }
    /// CDW0.PSDT (0: PRPs, 1: SGL with contiguous metadata, 2: SGL with an
    /// SGL metadata descriptor).
    pub const fn psdt(&self) -> u8 {
        ((self.cdw0 & super::PSDT_MASK) >> 14) as u8
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
    /// Namespace Attachment (base spec 5.23): attach `nsid` to (or detach
    /// it from) the controllers of the Controller List in the data page.
    pub const fn namespace_attachment(nsid: u32, detach: bool) -> Self {
        let mut e = Self::new(admin_opcode::NAMESPACE_ATTACHMENT, nsid);
        e.cdw10 = detach as u32; // SEL: 0h attach, 1h detach
        e
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
    /// This Create I/O Completion Queue command with interrupts enabled
    /// (IEN=1) on MSI-X vector `vector` (IV).
    pub const fn with_interrupt_vector(mut self, vector: u16) -> Self {
        self.cdw11 = (self.cdw11 & 0xffff) | 0b10 | (vector as u32) << 16;
        self
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
    /// Get Log Page `lid` for `nsid`: `dwords` dwords (at least 1) from
    /// byte offset 0. Data pointers are left to the caller.
    pub const fn get_log_page(lid: u8, nsid: u32, dwords: u32) -> Self {
        let numd = dwords.saturating_sub(1);
        let mut e = Self::new(admin_opcode::GET_LOG_PAGE, nsid);
        e.cdw10 = ((numd & 0xFFFF) << 16) | lid as u32;
        e.cdw11 = numd >> 16;
        e
    }
    /// Get Log Page: the number of dwords asked for (NUMDL, NUMDU, 1-based).
    pub const fn log_page_dwords(&self) -> u64 {
        (((self.cdw11 & 0xFFFF) as u64) << 16 | (self.cdw10 >> 16) as u64) + 1
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
    /// A read or write (`opcode`) of `nlb + 1` blocks at `slba` with
    /// command id `cid`, data pointer left 0: the I/O path's constructor.
    #[inline(always)]
    pub const fn rw_command(opcode: u8, cid: u16, nsid: u32, slba: u64, nlb: u16) -> Self {
        let mut e = Self::rw(opcode, nsid, slba, nlb, 0, 0);
        e.cdw0 = opcode as u32 | (cid as u32) << 16;
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
