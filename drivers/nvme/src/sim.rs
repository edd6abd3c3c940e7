//! An in-process NVMe controller model: host-side tests and benchmarks run
//! the real driver against it instead of hardware.
//!
//! The model follows the memory-based transport of the NVMe base spec
//! (3.1 "Controller Registers", 3.3.1 "Memory-based Transport Queue Model",
//! 4.1.1 "Physical Region Page Entry and List", 4.6 "Completion Queue
//! Entry") and a small part of the admin and NVM command sets. It runs on
//! its own thread, polls CC and every doorbell of a
//! [`Mmio::simulated`] register block it shares with the driver, fetches
//! submission entries straight from queue memory and posts completions with
//! the right Phase Tag, honouring the CQ Head Doorbell.
//!
//! # Memory
//! The model reaches driver memory only through
//! [`fastlane_framework::sim::SimDma`], the way a device reaches it through
//! an IOMMU: every address the driver programs (ASQ/ACQ, queue bases, PRPs,
//! doorbell buffers) must lie inside a live
//! [`fastlane_framework::DmaRegion::new_unmapped`] region (IOVA == VA).
//! Anything else is a [`SimFault`]: a data transfer that faults ends the
//! command with Data Transfer Error, a queue entry that cannot be fetched
//! sets CSTS.CFS, a completion or doorbell-buffer access that faults is
//! logged and counted ([`SimStats::dma_faults`]). Malformed values (sizes,
//! queue ids, misaligned or null PRPs, ranges) become error statuses; the
//! model never panics on what the driver sends and never touches memory
//! outside the driver's regions.
//!
//! The module is compiled with the crate feature `sim` only, so it is not
//! part of applications' binaries.
//!
//! Status codes the model returns always carry DNR: it is deterministic,
//! so a retry would fail the same way.

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytemuck::Zeroable;
use fastlane_framework::sim::{SimDma, SimFault};
use fastlane_framework::Mmio;

use crate::protection::{guard, PiTuple, PI_TUPLE_SIZE};
use crate::spec::{
    admin_opcode, cns, cq_head_doorbell, feature, nvm_opcode, reg, sq_tail_doorbell, Cc,
    CompletionEntry, Csts, DsmRange, IdentifyController, IdentifyNamespace, SglDescriptor,
    SglSupport, SubmissionEntry, CDW12_PRINFO_SHIFT, DSM_AD, IDENTIFY_DATA_SIZE,
    OACS_DOORBELL_BUFFER_CONFIG, ONCS_DSM, ONCS_WRITE_ZEROES, PRCHK_APP, PRCHK_GUARD, PRCHK_REF,
    PRINFO_PRACT, SGL_SUBTYPE_ADDRESS, SGL_TYPE_DATA_BLOCK,
};

/// What the simulated controller and its one namespace look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Namespace 1 size in logical blocks.
    pub namespace_blocks: u64,
    /// Logical block size in bytes: a power of two, 512..=65536.
    pub lba_size: u32,
    /// Identify Controller MDTS: `2^mdts` pages of 4 KiB (CAP.MPSMIN);
    /// 0 = no limit.
    pub mdts: u8,
    /// I/O submission and completion queues the controller has (each),
    /// at least 1.
    pub max_queues: u16,
    /// CAP.MQES, 0-based (at least 1).
    pub mqes: u16,
    /// Keep written data (sparse, 64 KiB chunks). When false, reads return
    /// zeroes and writes are discarded: for benchmarks.
    pub store_data: bool,
    /// Identify Controller SGLS: bits 1:0 = 01b SGLs for NVM commands,
    /// any alignment (as QEMU's controller), 10b dword alignment and
    /// granularity, 00b none. The model takes one inline SGL Data Block
    /// descriptor (PSDT 01b) per read or write; segments are refused (SGL
    /// Descriptor Type Invalid).
    pub sgls: u32,
    /// Namespaces formatted with metadata, NSID 2, 3, ... in this order
    /// (reads, writes and flush only; see [`SimMetaNamespace`]).
    pub metadata_namespaces: Vec<SimMetaNamespace>,
}

/// A namespace of the model formatted with per-block metadata and,
/// optionally, protection information (16-bit guard), as QEMU's `nvme-ns`
/// with `ms`, `mset`, `pi` and `pil`. Reads and writes honour PRACT (insert
/// on write, strip on read when the metadata is the 8-byte tuple alone) and
/// PRCHK (guard over the data and the metadata before the tuple,
/// application tag under LBATM, reference tag from CDW14,
/// incremented per block for types 1 and 2), failing with SCT 2h SC
/// 82h/83h/84h; a type 1 read or write checking the reference tag whose
/// CDW14 is not the LBA's low 32 bits is Invalid Protection Information.
/// Blocks never written read as zeroes with metadata of all FFh (checks
/// skip them, as the application tag is FFFFh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimMetaNamespace {
    /// Size in logical blocks.
    pub blocks: u64,
    /// Data bytes per block: a power of two, 512..=65536.
    pub lba_size: u32,
    /// Metadata bytes per block (MS), at least 8 with PI.
    pub ms: u16,
    /// Extended LBA (FLBAS bit 4): metadata after each block's data;
    /// otherwise in the buffer the Metadata Pointer names.
    pub extended: bool,
    /// Protection information type 0 (none) ..= 3 (DPS bits 2:0).
    pub pi_type: u8,
    /// The tuple is the first 8 bytes of the metadata (DPS bit 3).
    pub pi_first: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            namespace_blocks: 1 << 20,
            lba_size: 512,
            mdts: 5,
            max_queues: 8,
            mqes: 1023,
            store_data: true,
            sgls: 0,
            metadata_namespaces: Vec::new(),
        }
    }
}

/// What the model has seen, for tests and benchmark sanity checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimStats {
    /// Admin commands executed (including failed ones), by opcode.
    pub admin: [u64; 256],
    /// I/O commands executed (including failed ones), by opcode.
    pub io: [u64; 256],
    /// SQ Tail Doorbell register value changes observed. Two writes between
    /// two polls of the model count once, as does rewriting a value.
    pub sq_doorbell_writes: u64,
    /// CQ Head Doorbell register value changes observed (same caveat).
    pub cq_doorbell_writes: u64,
    /// Shadow doorbell value changes observed (Doorbell Buffer Config).
    pub shadow_doorbell_updates: u64,
    /// Completions swallowed by [`SimController::drop_next_completions`].
    pub dropped_completions: u64,
    /// Completions sent with a wrong CID by [`SimController::corrupt_next_cid`].
    pub corrupted_completions: u64,
    /// Raw entries posted by [`SimController::inject_completion`].
    pub injected_completions: u64,
    /// Completions held back by [`SimController::hold_completions`] and
    /// not yet posted.
    pub held_completions: u64,
    /// Accesses to driver memory outside every live region ([`SimFault`]s).
    pub dma_faults: u64,
    /// Read and write commands whose data pointer was PRPs.
    pub prp_commands: u64,
    /// Read and write commands whose data pointer was an SGL descriptor.
    pub sgl_commands: u64,
    /// Times the model had a command to fetch and found its completion
    /// queue full (a head doorbell it waited for): never, from a driver
    /// that keeps room for what it has in flight.
    pub cq_full_waits: u64,
}

impl SimStats {
    /// I/O commands of all opcodes.
    pub fn io_total(&self) -> u64 {
        self.io.iter().sum()
    }
    /// Admin commands of all opcodes.
    pub fn admin_total(&self) -> u64 {
        self.admin.iter().sum()
    }
    /// SQ tail and CQ head register doorbell changes together.
    pub fn doorbell_writes(&self) -> u64 {
        self.sq_doorbell_writes + self.cq_doorbell_writes
    }
}

/// State shared between the handle and the model thread.
struct Shared {
    stop: AtomicBool,
    /// CSTS.CFS is set; the model processes nothing until CC.EN goes 1 -> 0.
    fatal: AtomicBool,
    /// Serialises read-modify-write of CSTS between handle and model.
    csts_lock: Mutex<()>,
    drop_next: AtomicU32,
    corrupt_next: AtomicBool,
    admin: [AtomicU64; 256],
    io: [AtomicU64; 256],
    sq_doorbells: AtomicU64,
    cq_doorbells: AtomicU64,
    shadow_updates: AtomicU64,
    dropped: AtomicU64,
    corrupted: AtomicU64,
    /// Raw completion entries to post, with their CQ id.
    inject: Mutex<Vec<(u16, CompletionEntry)>>,
    inject_pending: AtomicBool,
    injected: AtomicU64,
    /// I/O completions are held back while set.
    hold: AtomicBool,
    held: AtomicU64,
    faults: AtomicU64,
    prp: AtomicU64,
    sgl: AtomicU64,
    cq_full: AtomicU64,
}

/// Single-writer counter increment: only the model thread counts.
#[inline(always)]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// The running model. Dropping it stops and joins the model thread.
///
/// The model runs on its own thread, or, after
/// [`SimController::set_synchronous`]`(true)`, on the caller's: then
/// nothing happens until the caller runs [`SimController::process`]
/// (between submitting and polling), so a benchmark counts the driver's
/// work without a second core writing the same cache lines.
pub struct SimController {
    shared: Arc<Shared>,
    mmio: Mmio,
    thread: Option<JoinHandle<Model>>,
    /// The model while it runs synchronously.
    model: Option<Box<Model>>,
}

impl SimController {
    /// Starts the model on its own thread; returns it and the register
    /// block (BAR0: at least 0x2000 bytes, doorbell stride 4) to hand to
    /// the driver, e.g. [`crate::Controller::with_registers`]. CAP and VS
    /// are valid on return; CSTS.RDY follows CC.EN asynchronously (poll it,
    /// as with hardware). The model reaches only live unmapped regions (see
    /// "Memory" above).
    ///
    /// # Panics
    /// If `cfg.lba_size` (or a metadata namespace's) is not a power of two
    /// in 512..=65536, a metadata namespace has PI without 8 bytes of
    /// metadata or a PI type above 3, or the thread cannot be spawned.
    pub fn start(cfg: SimConfig) -> (SimController, Mmio) {
        assert!(
            cfg.lba_size.is_power_of_two() && (512..=65536).contains(&cfg.lba_size),
            "SimConfig::lba_size {} is not a power of two in 512..=65536",
            cfg.lba_size
        );
        for ns in &cfg.metadata_namespaces {
            assert!(
                ns.lba_size.is_power_of_two()
                    && (512..=65536).contains(&ns.lba_size)
                    && ns.pi_type <= 3
                    && (ns.pi_type == 0 || ns.ms as usize >= PI_TUPLE_SIZE),
                "impossible metadata namespace {ns:?}"
            );
        }
        let cfg = SimConfig {
            max_queues: cfg.max_queues.max(1),
            mqes: cfg.mqes.max(1),
            ..cfg
        };
        let doorbells = 2 * (cfg.max_queues as usize + 1) * 4;
        let mmio = Mmio::simulated((reg::DOORBELL_BASE + doorbells).max(0x2000));
        mmio.write64(reg::CAP, cap(&cfg));
        mmio.write32(reg::VS, VERSION);
        mmio.write32(reg::CSTS, 0);

        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            fatal: AtomicBool::new(false),
            csts_lock: Mutex::new(()),
            drop_next: AtomicU32::new(0),
            corrupt_next: AtomicBool::new(false),
            admin: std::array::from_fn(|_| AtomicU64::new(0)),
            io: std::array::from_fn(|_| AtomicU64::new(0)),
            sq_doorbells: AtomicU64::new(0),
            cq_doorbells: AtomicU64::new(0),
            shadow_updates: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            corrupted: AtomicU64::new(0),
            inject: Mutex::new(Vec::new()),
            inject_pending: AtomicBool::new(false),
            injected: AtomicU64::new(0),
            hold: AtomicBool::new(false),
            held: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            prp: AtomicU64::new(0),
            sgl: AtomicU64::new(0),
            cq_full: AtomicU64::new(0),
        });
        let model = Model::new(cfg, mmio.clone(), shared.clone());
        let ctrl = SimController {
            shared,
            mmio: mmio.clone(),
            thread: Some(spawn(model)),
            model: None,
        };
        (ctrl, mmio)
    }

    /// `true`: stops the model thread; from now on the model runs only
    /// inside [`Self::process`], on the caller's thread. Anything that
    /// waits for the device (admin commands: queue creation and deletion,
    /// reset, shutdown) hangs until its timeout in this mode, so switch
    /// back (`false`, which restarts the thread) before those.
    ///
    /// # Panics
    /// If the model thread panicked.
    pub fn set_synchronous(&mut self, on: bool) {
        if on {
            if let Some(t) = self.thread.take() {
                self.shared.stop.store(true, Ordering::SeqCst);
                let model = t.join().expect("the NVMe model thread panicked");
                self.shared.stop.store(false, Ordering::SeqCst);
                self.model = Some(Box::new(model));
            }
        } else if let Some(model) = self.model.take() {
            self.thread = Some(spawn(*model));
        }
    }

    /// One pass of the model over CC and every queue (synchronous mode):
    /// fetches and executes what the SQs hold and posts completions.
    /// Returns whether any queue had work; false when the model runs on
    /// its own thread.
    #[inline(never)]
    pub fn process(&mut self) -> bool {
        self.model.as_mut().is_some_and(|m| m.poll())
    }

    /// Sets CSTS.CFS now. The model executes nothing more until the driver
    /// writes CC.EN 1 -> 0, which drops all queues and clears CFS and RDY.
    pub fn set_fatal(&self) {
        let _g = self
            .shared
            .csts_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.shared.fatal.store(true, Ordering::SeqCst);
        let csts = self.mmio.read32(reg::CSTS);
        self.mmio.write32(reg::CSTS, csts | Csts::CFS);
    }

    /// The next `n` I/O commands (added to any still pending) are executed
    /// but get no completion entry: the driver sees them time out.
    pub fn drop_next_completions(&self, n: u32) {
        let _ = self
            .shared
            .drop_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_add(n))
            });
    }

    /// The next I/O completion carries `cid ^ 0x8000` instead of the
    /// command's CID (the command itself then never completes).
    pub fn corrupt_next_cid(&self) {
        self.shared.corrupt_next.store(true, Ordering::SeqCst);
    }

    /// Posts `entry` on completion queue `cqid` as it is, except for the
    /// Phase Tag, which the model sets to the queue's current phase: for
    /// tests of malformed completions (wrong SQ id, impossible SQ head,
    /// unknown or repeated command ids). Posted by the model thread once
    /// the queue exists and has room; [`SimStats::injected_completions`]
    /// counts the posted ones.
    pub fn inject_completion(&self, cqid: u16, entry: CompletionEntry) {
        let mut q = self.shared.inject.lock().unwrap_or_else(|e| e.into_inner());
        q.push((cqid, entry));
        self.shared.inject_pending.store(true, Ordering::SeqCst);
    }

    /// While `hold` is true, I/O commands are executed but their
    /// completions are held back; set it false to post them, in order.
    pub fn hold_completions(&self, hold: bool) {
        self.shared.hold.store(hold, Ordering::SeqCst);
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        let s = &self.shared;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            admin: std::array::from_fn(|i| load(&s.admin[i])),
            io: std::array::from_fn(|i| load(&s.io[i])),
            sq_doorbell_writes: load(&s.sq_doorbells),
            cq_doorbell_writes: load(&s.cq_doorbells),
            shadow_doorbell_updates: load(&s.shadow_updates),
            dropped_completions: load(&s.dropped),
            corrupted_completions: load(&s.corrupted),
            injected_completions: load(&s.injected),
            held_completions: load(&s.held),
            dma_faults: load(&s.faults),
            prp_commands: load(&s.prp),
            sgl_commands: load(&s.sgl),
            cq_full_waits: load(&s.cq_full),
        }
    }
}

impl Drop for SimController {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the NVMe model thread panicked");
            }
        }
    }
}

fn spawn(model: Model) -> JoinHandle<Model> {
    thread::Builder::new()
        .name("nvme-sim".into())
        .spawn(move || model.run())
        .expect("spawning the NVMe model thread")
}

/// VS: NVMe 1.4.0.
const VERSION: u32 = 0x0001_0400;
/// CAP.TO in 500 ms units.
const CAP_TO: u64 = 1;
/// CAP.MPSMAX: pages up to 64 KiB.
const MPSMAX: u8 = 4;
/// CSTS.SHST = 10b, shutdown processing complete.
const CSTS_SHST_COMPLETE: u32 = 0b10 << 2;
const CSTS_SHST_MASK: u32 = 0b11 << 2;
/// Identify Controller AERL (0-based): outstanding Asynchronous Event
/// Requests the model holds.
const AERL: u8 = 3;
/// Idle time after which the model thread sleeps between polls.
const DEEP_IDLE: Duration = Duration::from_millis(50);
/// Unit of the sparse data store.
const CHUNK: usize = 64 << 10;

fn cap(cfg: &SimConfig) -> u64 {
    cfg.mqes as u64          // MQES
        | 1 << 16            // CQR
        | CAP_TO << 24       // TO
        | 1 << 37            // CSS: NVM command set
        | (MPSMAX as u64) << 52 // MPSMIN 0, MPSMAX
}

/// Status Field values (base spec 4.6.1.2), SCT in bits 10:8, SC in 7:0.
mod status {
    pub const INVALID_OPCODE: u16 = 0x001;
    pub const INVALID_FIELD: u16 = 0x002;
    pub const DATA_TRANSFER_ERROR: u16 = 0x004;
    pub const INVALID_NAMESPACE: u16 = 0x00B;
    pub const DATA_SGL_LENGTH_INVALID: u16 = 0x00F;
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u16 = 0x011;
    pub const PRP_OFFSET_INVALID: u16 = 0x013;
    pub const SGL_DATA_BLOCK_GRANULARITY_INVALID: u16 = 0x01E;
    pub const LBA_OUT_OF_RANGE: u16 = 0x080;
    pub const CQ_INVALID: u16 = 0x100;
    pub const INVALID_QID: u16 = 0x101;
    pub const INVALID_QUEUE_SIZE: u16 = 0x102;
    pub const AER_LIMIT_EXCEEDED: u16 = 0x105;
    pub const INVALID_LOG_PAGE: u16 = 0x109;
    pub const INVALID_QUEUE_DELETION: u16 = 0x10C;
    pub const FEATURE_NOT_SAVEABLE: u16 = 0x10D;
    pub const INVALID_PROT_INFO: u16 = 0x181;
    use crate::spec::{integrity_sc, sct};
    const fn integrity(sc: u8) -> u16 {
        (sct::MEDIA_DATA_INTEGRITY as u16) << 8 | sc as u16
    }
    pub const GUARD_CHECK: u16 = integrity(integrity_sc::GUARD_CHECK);
    pub const APP_TAG_CHECK: u16 = integrity(integrity_sc::APP_TAG_CHECK);
    pub const REF_TAG_CHECK: u16 = integrity(integrity_sc::REF_TAG_CHECK);

    /// The 15-bit Status Field (without Phase Tag) of an error, with DNR.
    pub const fn field(s: u16) -> u16 {
        (1 << 15) | (((s >> 8) & 0x7) << 9) | ((s & 0xFF) << 1)
    }
}

/// Counts and logs a model access to driver memory that faulted.
fn dma_fault(shared: &Shared, what: &str, f: SimFault) {
    let n = shared.faults.fetch_add(1, Ordering::Relaxed);
    if n < 16 {
        log::error!("sim: {what}: {f}");
    }
}

/// A shadow doorbell at `addr`, counted when it changed since `last`; the
/// queue's `current` value when the read faults.
fn read_shadow(dma: &mut SimDma, shared: &Shared, addr: u64, last: &mut u32, current: u32) -> u32 {
    match dma.read_obj::<u32>(addr) {
        Ok(v) => {
            if v != *last {
                *last = v;
                bump(&shared.shadow_updates);
            }
            v
        }
        Err(f) => {
            dma_fault(shared, "shadow doorbell", f);
            current
        }
    }
}

/// How a command ends: DW0 on success, a status (see [`status`]) on error,
/// or no completion at all (a held Asynchronous Event Request).
enum Outcome {
    Done(u32),
    Error(u16),
    Held,
}

type CmdResult<T> = Result<T, u16>;

#[derive(Clone, Copy, Debug)]
struct Sq {
    base: u64,
    size: u32,
    head: u32,
    tail: u32,
    cqid: u16,
    /// Tail comes from the shadow doorbell buffer.
    shadow: bool,
    last_db: u32,
    last_shadow: u32,
}

#[derive(Clone, Copy, Debug)]
struct Cq {
    base: u64,
    size: u32,
    tail: u32,
    head: u32,
    phase: bool,
    shadow: bool,
    sqs: u16,
    last_db: u32,
    last_shadow: u32,
}

/// Namespace data: sparse 64 KiB chunks, or nothing at all.
struct Store {
    keep: bool,
    chunks: HashMap<u64, Box<[u8]>>,
}

/// The controller state, owned by the model thread.
struct Model {
    cfg: SimConfig,
    mmio: Mmio,
    shared: Arc<Shared>,
    last_cc: u32,
    /// CC.EN was accepted and CSTS.RDY set.
    ready: bool,
    page_size: usize,
    sqs: Vec<Option<Sq>>,
    cqs: Vec<Option<Cq>>,
    /// Existing SQ ids, admin first: the polling order.
    active_sqs: Vec<u16>,
    active_cqs: Vec<u16>,
    /// Number of Queues granted (1-based): SQs, CQs.
    granted: (u16, u16),
    features: [u32; 256],
    /// Shadow doorbell and EventIdx buffers (Doorbell Buffer Config).
    dbbuf: Option<(u64, u64)>,
    held_aers: u8,
    store: Store,
    /// Blocks (data, then metadata) of the metadata namespaces, by LBA.
    meta_stores: Vec<HashMap<u64, Box<[u8]>>>,
    /// Host memory segments of the current command's data (PRP walk).
    segs: Vec<(u64, usize)>,
    scratch: Vec<u8>,
    /// The model's only access to driver memory.
    dma: SimDma,
    /// Held I/O completions: CQ id and entry (without Phase Tag).
    held: Vec<(u16, CompletionEntry)>,
}

impl Model {
    fn new(cfg: SimConfig, mmio: Mmio, shared: Arc<Shared>) -> Model {
        let meta_stores = vec![HashMap::new(); cfg.metadata_namespaces.len()];
        let n = cfg.max_queues as usize + 1;
        let store = Store {
            keep: cfg.store_data,
            chunks: HashMap::new(),
        };
        let mut m = Model {
            cfg,
            mmio,
            shared,
            last_cc: 0,
            ready: false,
            page_size: 4096,
            sqs: vec![None; n],
            cqs: vec![None; n],
            active_sqs: Vec::with_capacity(n),
            active_cqs: Vec::with_capacity(n),
            granted: (0, 0),
            features: [0; 256],
            dbbuf: None,
            held_aers: 0,
            meta_stores,
            store,
            segs: Vec::with_capacity(64),
            scratch: vec![0; IDENTIFY_DATA_SIZE],
            dma: SimDma::new(),
            held: Vec::new(),
        };
        m.reset_queues();
        m
    }

    /// Polls until stopped: spins while there is work or was recently,
    /// then yields, and after [`DEEP_IDLE`] without work sleeps 50 us per
    /// pass so an idle model (a test waiting for a timeout) does not burn
    /// a core; the first command after that waits up to about 100 us.
    fn run(mut self) -> Model {
        let mut idle: u32 = 0;
        let mut idle_since = Instant::now();
        let mut deep = false;
        while !self.shared.stop.load(Ordering::Relaxed) {
            if self.poll() {
                (idle, deep) = (0, false);
                continue;
            }
            idle = idle.saturating_add(1);
            if idle < 1024 {
                std::hint::spin_loop();
            } else if deep {
                thread::sleep(Duration::from_micros(50));
            } else {
                if idle == 1024 {
                    idle_since = Instant::now();
                } else if idle.is_multiple_of(64) {
                    deep = idle_since.elapsed() > DEEP_IDLE;
                }
                thread::yield_now();
            }
        }
        self
    }

    /// One pass over CC and every queue; true if any queue had work.
    fn poll(&mut self) -> bool {
        let cc = self.mmio.read32(reg::CC);
        if cc != self.last_cc {
            self.on_cc(cc);
        }
        if !self.ready || self.shared.fatal.load(Ordering::Relaxed) {
            return false;
        }
        for i in 0..self.active_cqs.len() {
            let qid = self.active_cqs[i];
            self.refresh_cq_head(qid);
        }
        let mut busy = self.post_extra();
        let mut i = 0;
        // Admin commands may create or delete queues: re-check the length.
        while i < self.active_sqs.len() {
            busy |= self.service_sq(self.active_sqs[i]);
            i += 1;
        }
        busy
    }

    fn update_csts(&self, f: impl FnOnce(u32) -> u32) {
        let _g = self
            .shared
            .csts_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let csts = self.mmio.read32(reg::CSTS);
        self.mmio.write32(reg::CSTS, f(csts));
    }

    /// CC changed (base spec 3.5 "Controller Initialization", 3.6
    /// "Shutdown").
    fn on_cc(&mut self, cc: u32) {
        let (old, new) = (Cc(self.last_cc), Cc(cc));
        self.last_cc = cc;
        if old.en() && !new.en() {
            self.reset_queues();
            self.ready = false;
            let _g = self
                .shared
                .csts_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.fatal.store(false, Ordering::SeqCst);
            let csts = self.mmio.read32(reg::CSTS);
            self.mmio
                .write32(reg::CSTS, csts & !(Csts::RDY | Csts::CFS));
        } else if !old.en() && new.en() && !self.shared.fatal.load(Ordering::SeqCst) {
            self.enable(new);
        }
        if new.shn() != 0 && old.shn() == 0 {
            self.update_csts(|c| (c & !CSTS_SHST_MASK) | CSTS_SHST_COMPLETE);
        } else if new.shn() == 0 && old.shn() != 0 {
            self.update_csts(|c| c & !CSTS_SHST_MASK);
        }
    }

    /// CC.EN 0 -> 1: set up the admin queues, or fail with CFS on an
    /// invalid configuration.
    fn enable(&mut self, cc: Cc) {
        let aqa = self.mmio.read32(reg::AQA);
        let asq = self.mmio.read64(reg::ASQ);
        let acq = self.mmio.read64(reg::ACQ);
        let page_size = 4096usize << cc.mps().min(15);
        let mask = page_size as u64 - 1;
        let asqs = (aqa & 0xFFF) + 1;
        let acqs = (aqa >> 16 & 0xFFF) + 1;
        let valid = cc.mps() <= MPSMAX
            && cc.css() == 0
            && asqs >= 2
            && acqs >= 2
            && asq != 0
            && acq != 0
            && asq & mask == 0
            && acq & mask == 0;
        if !valid {
            log::warn!(
                "sim: invalid controller configuration CC {:#x} AQA {aqa:#x} ASQ {asq:#x} ACQ {acq:#x}",
                cc.0
            );
            self.set_fatal();
            return;
        }
        self.page_size = page_size;
        self.cqs[0] = Some(Cq::new(acq, acqs, false));
        self.sqs[0] = Some(Sq::new(asq, asqs, 0, false));
        if let Some(cq) = self.cqs[0].as_mut() {
            cq.sqs = 1;
        }
        self.active_sqs.push(0);
        self.active_cqs.push(0);
        self.ready = true;
        self.update_csts(|c| c | Csts::RDY);
    }

    /// Controller reset: no queues, doorbells 0, default features. Media
    /// is kept.
    fn reset_queues(&mut self) {
        // The driver does not ring doorbells while it waits for RDY to
        // clear, so the model may reset them like hardware would.
        for off in (reg::DOORBELL_BASE..self.mmio.len()).step_by(4) {
            self.mmio.write32(off, 0);
        }
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        self.active_sqs.clear();
        self.active_cqs.clear();
        self.granted = (self.cfg.max_queues, self.cfg.max_queues);
        self.features = [0; 256];
        self.features[feature::VOLATILE_WRITE_CACHE as usize] = 1;
        self.dbbuf = None;
        self.held_aers = 0;
    }

    // ---- doorbells -------------------------------------------------------

    /// Latest valid SQ tail (register, or shadow buffer for I/O queues set
    /// up after Doorbell Buffer Config); counts doorbell changes.
    fn refresh_sq_tail(&mut self, qid: u16) -> Option<Sq> {
        let db = self.mmio.read32(sq_tail_doorbell(qid, 0));
        let shadow_base = self.dbbuf.map(|(s, _)| s);
        let sq = self.sqs.get_mut(qid as usize)?.as_mut()?;
        if db != sq.last_db {
            sq.last_db = db;
            bump(&self.shared.sq_doorbells);
        }
        let value = match (sq.shadow, shadow_base) {
            (true, Some(base)) => read_shadow(
                &mut self.dma,
                &self.shared,
                base + 8 * qid as u64,
                &mut sq.last_shadow,
                sq.tail,
            ),
            _ => db,
        };
        // An invalid value is ignored (the spec's asynchronous event for an
        // invalid doorbell write is not modelled).
        if value < sq.size {
            sq.tail = value;
        }
        Some(*sq)
    }

    fn refresh_cq_head(&mut self, qid: u16) {
        let db = self.mmio.read32(cq_head_doorbell(qid, 0));
        let shadow_base = self.dbbuf.map(|(s, _)| s);
        let Some(Some(cq)) = self.cqs.get_mut(qid as usize) else {
            return;
        };
        if db != cq.last_db {
            cq.last_db = db;
            bump(&self.shared.cq_doorbells);
        }
        let value = match (cq.shadow, shadow_base) {
            (true, Some(base)) => read_shadow(
                &mut self.dma,
                &self.shared,
                base + 8 * qid as u64 + 4,
                &mut cq.last_shadow,
                cq.head,
            ),
            _ => db,
        };
        if value < cq.size {
            cq.head = value;
        }
    }

    /// Writes EventIdx for a shadowed doorbell: the value the model has
    /// caught up with.
    fn write_event_idx(&mut self, index: u64, value: u32) {
        if let Some((_, eventidx)) = self.dbbuf {
            if let Err(f) = self.dma.write_obj(eventidx + 4 * index, value) {
                dma_fault(&self.shared, "EventIdx", f);
            }
        }
    }

    fn cq_has_room(&mut self, cqid: u16) -> bool {
        let full = |cq: &Cq| (cq.tail + 1) % cq.size == cq.head;
        match self.cqs.get(cqid as usize) {
            Some(Some(cq)) if !full(cq) => return true,
            Some(Some(_)) => {}
            _ => return false,
        }
        self.refresh_cq_head(cqid);
        matches!(self.cqs.get(cqid as usize), Some(Some(cq)) if !full(cq))
    }

    // ---- queues ----------------------------------------------------------

    /// Executes what SQ `qid` holds; true if it had work (including work
    /// blocked on a full CQ).
    fn service_sq(&mut self, qid: u16) -> bool {
        let Some(sq) = self.refresh_sq_tail(qid) else {
            return false;
        };
        if sq.head == sq.tail {
            return false;
        }
        // Pairs with the driver's release fence before its doorbell write:
        // entries written before the doorbell are visible now.
        fence(Ordering::Acquire);
        loop {
            if self.shared.fatal.load(Ordering::Relaxed) {
                return true;
            }
            let Some(sq) = self.sqs[qid as usize].as_mut() else {
                return true;
            };
            if sq.head == sq.tail {
                break;
            }
            let (base, head, cqid) = (sq.base, sq.head, sq.cqid);
            if !self.cq_has_room(cqid) {
                bump(&self.shared.cq_full);
                return true;
            }
            let Some(sq) = self.sqs[qid as usize].as_mut() else {
                return true;
            };
            sq.head = (head + 1) % sq.size;
            let sq_head = sq.head;
            let entry = match self
                .dma
                .read_obj::<SubmissionEntry>(base + head as u64 * 64)
            {
                Ok(e) => e,
                Err(f) => {
                    // A controller that cannot fetch its queue is broken:
                    // fatal status, nothing more until a reset.
                    dma_fault(&self.shared, "submission queue entry", f);
                    self.set_fatal();
                    return true;
                }
            };
            let outcome = if qid == 0 {
                bump(&self.shared.admin[entry.opcode() as usize]);
                self.admin(&entry)
            } else {
                bump(&self.shared.io[entry.opcode() as usize]);
                self.io(&entry)
            };
            let (dw0, status) = match outcome {
                Outcome::Done(dw0) => (dw0, 0),
                Outcome::Error(s) => (0, status::field(s)),
                Outcome::Held => continue,
            };
            let mut cid = entry.cid();
            if qid != 0 {
                if self.shared.hold.load(Ordering::Relaxed) {
                    self.held
                        .push((cqid, cqe(dw0, sq_head as u16, qid, entry.cid(), status)));
                    bump(&self.shared.held);
                    continue;
                }
                if self.take_drop() {
                    bump(&self.shared.dropped);
                    continue;
                }
                if self.shared.corrupt_next.load(Ordering::Relaxed)
                    && self.shared.corrupt_next.swap(false, Ordering::SeqCst)
                {
                    bump(&self.shared.corrupted);
                    cid ^= 0x8000;
                }
            }
            self.post(cqid, dw0, sq_head as u16, qid, cid, status);
        }
        if let Some(sq) = self.sqs[qid as usize] {
            if sq.shadow {
                self.write_event_idx(2 * qid as u64, sq.tail);
            }
        }
        true
    }

    fn take_drop(&self) -> bool {
        let d = &self.shared.drop_next;
        d.load(Ordering::Relaxed) != 0
            && d.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                .is_ok()
    }

    /// Sets CSTS.CFS from the model thread.
    fn set_fatal(&self) {
        self.shared.fatal.store(true, Ordering::SeqCst);
        self.update_csts(|c| c | Csts::CFS);
    }

    /// Posts injected entries, and held ones once the hold is off; true if
    /// any was posted.
    fn post_extra(&mut self) -> bool {
        let mut posted = false;
        if !self.held.is_empty() && !self.shared.hold.load(Ordering::Relaxed) {
            let held = std::mem::take(&mut self.held);
            for (i, &(cqid, e)) in held.iter().enumerate() {
                if !self.cq_has_room(cqid) {
                    self.held.extend_from_slice(&held[i..]);
                    break;
                }
                self.post_entry(cqid, e);
                self.shared.held.fetch_sub(1, Ordering::Relaxed);
                posted = true;
            }
        }
        if self.shared.inject_pending.load(Ordering::Relaxed) {
            let shared = self.shared.clone();
            let mut q = shared.inject.lock().unwrap_or_else(|e| e.into_inner());
            let mut i = 0;
            while i < q.len() {
                let (cqid, e) = q[i];
                if !matches!(self.cqs.get(cqid as usize), Some(Some(_))) {
                    i += 1;
                    continue;
                }
                if !self.cq_has_room(cqid) {
                    break;
                }
                q.remove(i);
                self.post_entry(cqid, e);
                bump(&self.shared.injected);
                posted = true;
            }
            self.shared
                .inject_pending
                .store(!q.is_empty(), Ordering::SeqCst);
        }
        posted
    }

    /// Posts a completion entry; the caller made sure the CQ has room.
    fn post(&mut self, cqid: u16, dw0: u32, sq_head: u16, sq_id: u16, cid: u16, status: u16) {
        self.post_entry(cqid, cqe(dw0, sq_head, sq_id, cid, status));
    }

    /// Posts `entry` with the queue's Phase Tag; the caller made sure the
    /// CQ has room. Everything but the Phase Tag word is written first, so
    /// the driver never sees a new phase with stale contents.
    fn post_entry(&mut self, cqid: u16, mut entry: CompletionEntry) {
        let Some(Some(cq)) = self.cqs.get_mut(cqid as usize) else {
            return;
        };
        entry.status = (entry.status & !1) | cq.phase as u16;
        let words: [u32; 4] = bytemuck::cast(entry);
        let at = cq.base + cq.tail as u64 * 16;
        let written = self
            .dma
            .write_obj(at, [words[0], words[1], words[2]])
            .and_then(|()| {
                fence(Ordering::Release);
                self.dma.write_obj(at + 12, words[3])
            });
        if let Err(f) = written {
            dma_fault(&self.shared, "completion queue entry", f);
        }
        cq.tail += 1;
        if cq.tail == cq.size {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
        if cq.shadow {
            let head = cq.head;
            self.write_event_idx(2 * cqid as u64 + 1, head);
        }
    }

    // ---- admin commands (base spec 5) -------------------------------------

    fn admin(&mut self, e: &SubmissionEntry) -> Outcome {
        if e.cdw0 >> 8 & 0xFF != 0 {
            // FUSE or PSDT (SGLs): not supported.
            return Outcome::Error(status::INVALID_FIELD);
        }
        let r = match e.opcode() {
            admin_opcode::IDENTIFY => self.identify(e),
            admin_opcode::CREATE_IO_CQ => self.create_cq(e),
            admin_opcode::CREATE_IO_SQ => self.create_sq(e),
            admin_opcode::DELETE_IO_SQ => self.delete_sq(e),
            admin_opcode::DELETE_IO_CQ => self.delete_cq(e),
            admin_opcode::SET_FEATURES => self.set_features(e),
            admin_opcode::GET_FEATURES => self.get_features(e),
            admin_opcode::GET_LOG_PAGE => self.get_log_page(e),
            // Commands complete at once here, so nothing can be aborted:
            // DW0 bit 0 = 1, "command not aborted".
            admin_opcode::ABORT => Ok(1),
            admin_opcode::DOORBELL_BUFFER_CONFIG => self.doorbell_buffer_config(e),
            admin_opcode::ASYNC_EVENT_REQUEST => {
                if self.held_aers > AERL {
                    Err(status::AER_LIMIT_EXCEEDED)
                } else {
                    self.held_aers += 1;
                    return Outcome::Held;
                }
            }
            _ => Err(status::INVALID_OPCODE),
        };
        match r {
            Ok(dw0) => Outcome::Done(dw0),
            Err(s) => Outcome::Error(s),
        }
    }

    fn identify(&mut self, e: &SubmissionEntry) -> CmdResult<u32> {
        self.scratch.clear();
        self.scratch.resize(IDENTIFY_DATA_SIZE, 0);
        match e.cdw10 as u8 {
            cns::CONTROLLER => {
                let id = self.identify_controller();
                self.scratch.copy_from_slice(bytemuck::bytes_of(&id));
            }
            cns::NAMESPACE => {
                let id = match (e.nsid, self.meta_ns(e.nsid)) {
                    (1, _) => self.identify_namespace(),
                    (_, Some(ns)) => identify_meta_namespace(ns),
                    _ => return Err(status::INVALID_NAMESPACE),
                };
                self.scratch.copy_from_slice(bytemuck::bytes_of(&id));
            }
            cns::ACTIVE_NS_LIST => {
                if e.nsid >= 0xFFFF_FFFE {
                    return Err(status::INVALID_NAMESPACE);
                }
                let ids = (1..=self.namespace_count()).filter(|&id| id > e.nsid);
                for (i, id) in ids.take(1024).enumerate() {
                    self.scratch[4 * i..4 * i + 4].copy_from_slice(&id.to_le_bytes());
                }
            }
            _ => return Err(status::INVALID_FIELD),
        }
        self.map_prps(e.prp1, e.prp2, IDENTIFY_DATA_SIZE)?;
        copy_to_host(&mut self.dma, &self.segs, &self.scratch)
            .map_err(|f| transfer_error(&self.shared, f))?;
        Ok(0)
    }

    fn identify_controller(&self) -> IdentifyController {
        let mut id = IdentifyController::zeroed();
        pad(&mut id.sn, b"SIM0001");
        pad(id.mn.as_flattened_mut(), b"fastlane sim");
        pad(&mut id.fr, b"1.0");
        id.mdts = self.cfg.mdts;
        id.cntlid = 1;
        id.ver = VERSION;
        id.oacs = OACS_DOORBELL_BUFFER_CONFIG;
        id.acl = 3;
        id.aerl = AERL;
        id.sqes = 0x66;
        id.cqes = 0x44;
        id.nn = self.namespace_count();
        id.oncs = ONCS_DSM | ONCS_WRITE_ZEROES;
        id.vwc = 1;
        id.sgls = self.cfg.sgls;
        id
    }

    fn identify_namespace(&self) -> IdentifyNamespace {
        let mut id = IdentifyNamespace::zeroed();
        id.nsze = self.cfg.namespace_blocks;
        id.ncap = self.cfg.namespace_blocks;
        id.nuse = self.cfg.namespace_blocks;
        // DLFEAT: deallocated blocks read as zeroes (001b), Write Zeroes
        // supports DEAC (bit 3).
        id.dlfeat = 0b1001;
        id.nlbaf = 0;
        id.flbas = 0;
        id.lbaf[0].lbads = self.cfg.lba_size.trailing_zeros() as u8;
        id
    }

    /// Namespaces: 1, then the metadata namespaces.
    fn namespace_count(&self) -> u32 {
        1 + self.cfg.metadata_namespaces.len() as u32
    }

    /// The metadata namespace `nsid` (2, 3, ...).
    fn meta_ns(&self, nsid: u32) -> Option<SimMetaNamespace> {
        let i = nsid.checked_sub(2)? as usize;
        self.cfg.metadata_namespaces.get(i).copied()
    }

    /// Create I/O Completion Queue (base spec 5.4).
    fn create_cq(&mut self, e: &SubmissionEntry) -> CmdResult<u32> {
        let qid = e.cdw10 as u16;
        let size = (e.cdw10 >> 16) + 1;
        if qid == 0 || qid > self.granted.1 || self.cqs[qid as usize].is_some() {
            return Err(status::INVALID_QID);
        }
        if size < 2 || size > self.cfg.mqes as u32 + 1 {
            return Err(status::INVALID_QUEUE_SIZE);
        }
        self.check_queue_memory(e, 4)?;
        let shadow = self.shadow_fits(qid);
        // A new queue starts at 0 whatever a stale write left in its doorbell.
        self.mmio.write32(cq_head_doorbell(qid, 0), 0);
        self.cqs[qid as usize] = Some(Cq::new(e.prp1, size, shadow));
        self.active_cqs.push(qid);
        Ok(0)
    }

    /// Create I/O Submission Queue (base spec 5.5).
    fn create_sq(&mut self, e: &SubmissionEntry) -> CmdResult<u32> {
        let qid = e.cdw10 as u16;
        let size = (e.cdw10 >> 16) + 1;
        let cqid = (e.cdw11 >> 16) as u16;
        if qid == 0 || qid > self.granted.0 || self.sqs[qid as usize].is_some() {
            return Err(status::INVALID_QID);
        }
        if size < 2 || size > self.cfg.mqes as u32 + 1 {
            return Err(status::INVALID_QUEUE_SIZE);
        }
        let Some(Some(cq)) = self.cqs.get_mut(cqid as usize).filter(|_| cqid != 0) else {
            return Err(status::CQ_INVALID);
        };
        cq.sqs += 1;
        if let Err(s) = self.check_queue_memory(e, 6) {
            if let Some(Some(cq)) = self.cqs.get_mut(cqid as usize) {
                cq.sqs -= 1;
            }
            return Err(s);
        }
        let shadow = self.shadow_fits(qid);
        self.mmio.write32(sq_tail_doorbell(qid, 0), 0);
        self.sqs[qid as usize] = Some(Sq::new(e.prp1, size, cqid, shadow));
        self.active_sqs.push(qid);
        Ok(0)
    }

    /// PC=1 (CAP.CQR), a page-aligned base, and CC.IO[SC]QES set to the
    /// only entry size the model knows.
    fn check_queue_memory(&self, e: &SubmissionEntry, entry_log2: u8) -> CmdResult<()> {
        let cc = Cc(self.last_cc);
        let es = if entry_log2 == 6 {
            cc.iosqes()
        } else {
            cc.iocqes()
        };
        if e.cdw11 & 1 == 0 || es != entry_log2 || e.prp1 == 0 {
            return Err(status::INVALID_FIELD);
        }
        if e.prp1 & (self.page_size as u64 - 1) != 0 {
            return Err(status::PRP_OFFSET_INVALID);
        }
        Ok(())
    }

    /// Whether a queue created now uses the shadow doorbell buffer: one
    /// was configured and the queue's slots lie inside its page.
    fn shadow_fits(&self, qid: u16) -> bool {
        self.dbbuf.is_some() && (qid as usize + 1) * 8 <= self.page_size
    }

    fn delete_sq(&mut self, e: &SubmissionEntry) -> CmdResult<u32> {
        let qid = e.cdw10 as u16;
        let sq = match self.sqs.get_mut(qid as usize) {
            Some(q @ Some(_)) if qid != 0 => q.take(),
            _ => return Err(status::INVALID_QID),
        };
        if let Some(Some(cq)) = sq.and_then(|sq| self.cqs.get_mut(sq.cqid as usize)) {
            cq.sqs -= 1;
        }
        self.active_sqs.retain(|&q| q != qid);
        Ok(0)
    }

    fn delete_cq(&mut self, e: &SubmissionEntry) -> CmdResult<u32> {
        let qid = e.cdw10 as u16;
        match self.cqs.get_mut(qid as usize) {
            Some(Some(cq)) if qid != 0 => {
                if cq.sqs != 0 {
                    return Err(status::INVALID_QUEUE_DELETION);
                }
            }
            _ => return Err(status::INVALID_QID),
        }
        self.cqs[qid as usize] = None;
        self.active_cqs.retain(|&q| q != qid);
        Ok(0)
    }

    fn known_feature(fid: u8) -> bool {
        matches!(
            fid,
            feature::ARBITRATION
                | feature::POWER_MANAGEMENT
                | feature::TEMPERATURE_THRESHOLD
                | feature::VOLATILE_WRITE_CACHE
                | feature::NUMBER_OF_QUEUES
                | feature::INTERRUPT_COALESCING
                | feature::ASYNC_EVENT_CONFIG
        )
    }

    fn num_queues_dw0(&self) -> u32 {
        (self.granted.1 as u32 - 1) << 16 | (self.granted.0 as u32 - 1)
    }

    fn set_features(&mut self, e: &SubmissionEntry) -> CmdResult<u32> {
        let fid = e.cdw10 as u8;
        if !Self::known_feature(fid) {
            return Err(status::INVALID_FIELD);
        }
        if e.cdw10 >> 31 != 0 {
            return Err(status::FEATURE_NOT_SAVEABLE);
        }
        if fid == feature::NUMBER_OF_QUEUES {
            let (nsqr, ncqr) = (e.cdw11 & 0xFFFF, e.cdw11 >> 16);
            if nsqr == 0xFFFF || ncqr == 0xFFFF {
                return Err(status::INVALID_FIELD);
            }
            let max = self.cfg.max_queues as u32;
            self.granted = ((nsqr + 1).min(max) as u16, (ncqr + 1).min(max) as u16);
            return Ok(self.num_queues_dw0());
        }
        self.features[fid as usize] = e.cdw11;
        Ok(0)
    }

    fn get_features(&mut self, e: &SubmissionEntry) -> CmdResult<u32> {
        let fid = e.cdw10 as u8;
        if !Self::known_feature(fid) {
            return Err(status::INVALID_FIELD);
        }
        match e.cdw10 >> 8 & 0x7 {
            // Supported capabilities: changeable, not saveable.
            3 => Ok(1 << 2),
            0..=2 if fid == feature::NUMBER_OF_QUEUES => Ok(self.num_queues_dw0()),
            0..=2 => Ok(self.features[fid as usize]),
            _ => Err(status::INVALID_FIELD),
        }
    }

    /// Error Information, SMART / Health and Firmware Slot logs, all zeroes.
    fn get_log_page(&mut self, e: &SubmissionEntry) -> CmdResult<u32> {
        if !matches!(e.cdw10 as u8, 0x01..=0x03) {
            return Err(status::INVALID_LOG_PAGE);
        }
        let dwords = ((e.cdw10 >> 16) | (e.cdw11 & 0xFFFF) << 16) as usize + 1;
        let len = dwords * 4;
        if self.exceeds_mdts(len) {
            return Err(status::INVALID_FIELD);
        }
        self.map_prps(e.prp1, e.prp2, len)?;
        for &(addr, n) in &self.segs {
            self.dma
                .fill(addr, n, 0)
                .map_err(|f| transfer_error(&self.shared, f))?;
        }
        Ok(0)
    }

    /// Doorbell Buffer Config (base spec 5.8): PRP1 shadow doorbells, PRP2
    /// EventIdx, one page each. Applies to I/O queues created afterwards.
    fn doorbell_buffer_config(&mut self, e: &SubmissionEntry) -> CmdResult<u32> {
        let mask = self.page_size as u64 - 1;
        if e.prp1 == 0 || e.prp2 == 0 || e.prp1 & mask != 0 || e.prp2 & mask != 0 {
            return Err(status::INVALID_FIELD);
        }
        self.dbbuf = Some((e.prp1, e.prp2));
        Ok(0)
    }

    // ---- NVM commands (NVM Command Set spec 3) ----------------------------

    fn io(&mut self, e: &SubmissionEntry) -> Outcome {
        let rw = matches!(e.opcode(), nvm_opcode::READ | nvm_opcode::WRITE);
        // FUSE must be 0; PSDT 01b (SGL) only for reads and writes of a
        // controller reporting SGL support.
        let psdt_ok = match e.psdt() {
            0 => true,
            1 => rw && SglSupport::from_sgls(self.cfg.sgls) != SglSupport::None,
            _ => false,
        };
        let r = if e.cdw0 >> 8 & 0x3 != 0 || !psdt_ok {
            Err(status::INVALID_FIELD)
        } else {
            match e.opcode() {
                nvm_opcode::READ | nvm_opcode::WRITE if e.nsid > 1 => {
                    self.meta_read_write(e, e.opcode() == nvm_opcode::WRITE)
                }
                nvm_opcode::READ => self.read_write(e, false),
                nvm_opcode::WRITE => self.read_write(e, true),
                nvm_opcode::FLUSH
                    if e.nsid == 1 || e.nsid == 0xFFFF_FFFF || self.meta_ns(e.nsid).is_some() =>
                {
                    Ok(())
                }
                nvm_opcode::FLUSH => Err(status::INVALID_NAMESPACE),
                nvm_opcode::WRITE_ZEROES => self.write_zeroes(e),
                nvm_opcode::DATASET_MANAGEMENT => self.dataset_management(e),
                _ => Err(status::INVALID_OPCODE),
            }
        };
        match r {
            Ok(()) => Outcome::Done(0),
            Err(s) => Outcome::Error(s),
        }
    }

    fn exceeds_mdts(&self, len: usize) -> bool {
        self.cfg.mdts != 0
            && (4096usize)
                .checked_shl(self.cfg.mdts as u32)
                .is_some_and(|max| len > max)
    }

    /// Byte offset and length of `nlb` blocks at `slba`, if inside the
    /// namespace.
    fn lba_range(&self, slba: u64, nlb: u64) -> CmdResult<(u64, usize)> {
        let lba = self.cfg.lba_size as u64;
        match (
            slba.checked_add(nlb),
            slba.checked_mul(lba),
            nlb.checked_mul(lba),
        ) {
            (Some(end), Some(offset), Some(len))
                if end <= self.cfg.namespace_blocks && offset.checked_add(len).is_some() =>
            {
                Ok((offset, len as usize))
            }
            _ => Err(status::LBA_OUT_OF_RANGE),
        }
    }

    fn read_write(&mut self, e: &SubmissionEntry, write: bool) -> CmdResult<()> {
        if e.nsid != 1 {
            return Err(status::INVALID_NAMESPACE);
        }
        let slba = (e.cdw11 as u64) << 32 | e.cdw10 as u64;
        let nlb = (e.cdw12 & 0xFFFF) as u64 + 1;
        if self.exceeds_mdts(nlb as usize * self.cfg.lba_size as usize) {
            return Err(status::INVALID_FIELD);
        }
        let (offset, len) = self.lba_range(slba, nlb)?;
        if e.psdt() == 1 {
            bump(&self.shared.sgl);
            self.map_sgl(e.prp1, e.prp2, len)?;
        } else {
            bump(&self.shared.prp);
            self.map_prps(e.prp1, e.prp2, len)?;
        }
        if write {
            self.store.write(&mut self.dma, offset, &self.segs)
        } else {
            self.store.read(&mut self.dma, offset, &self.segs)
        }
        .map_err(|f| transfer_error(&self.shared, f))
    }

    fn write_zeroes(&mut self, e: &SubmissionEntry) -> CmdResult<()> {
        if e.nsid != 1 {
            return Err(status::INVALID_NAMESPACE);
        }
        let slba = (e.cdw11 as u64) << 32 | e.cdw10 as u64;
        let nlb = (e.cdw12 & 0xFFFF) as u64 + 1;
        let (offset, len) = self.lba_range(slba, nlb)?;
        // With or without DEAC the blocks read back as zeroes.
        self.store.zero(offset, len as u64);
        Ok(())
    }

    fn dataset_management(&mut self, e: &SubmissionEntry) -> CmdResult<()> {
        if e.nsid != 1 {
            return Err(status::INVALID_NAMESPACE);
        }
        if e.cdw11 & DSM_AD == 0 {
            return Ok(()); // IDR/IDW are hints only.
        }
        let count = (e.cdw10 & 0xFF) as usize + 1;
        let len = count * std::mem::size_of::<DsmRange>();
        self.map_prps(e.prp1, e.prp2, len)?;
        self.scratch.clear();
        self.scratch.resize(len, 0);
        copy_from_host(&mut self.dma, &self.segs, &mut self.scratch)
            .map_err(|f| transfer_error(&self.shared, f))?;
        let ranges: Vec<DsmRange> = self
            .scratch
            .chunks_exact(16)
            .map(bytemuck::pod_read_unaligned)
            .collect();
        let mut zero = Vec::with_capacity(ranges.len());
        for r in &ranges {
            if r.length != 0 {
                zero.push(self.lba_range(r.slba, r.length as u64)?);
            }
        }
        for (offset, len) in zero {
            self.store.zero(offset, len as u64);
        }
        Ok(())
    }

    /// A read or write of a metadata namespace: data (and interleaved
    /// metadata) through DPTR, separate metadata at MPTR (one contiguous
    /// range), PRINFO applied per block.
    fn meta_read_write(&mut self, e: &SubmissionEntry, write: bool) -> CmdResult<()> {
        let ns = self.meta_ns(e.nsid).ok_or(status::INVALID_NAMESPACE)?;
        let store = e.nsid as usize - 2;
        let slba = (e.cdw11 as u64) << 32 | e.cdw10 as u64;
        let nlb = (e.cdw12 & 0xFFFF) as usize + 1;
        if slba
            .checked_add(nlb as u64)
            .is_none_or(|end| end > ns.blocks)
        {
            return Err(status::LBA_OUT_OF_RANGE);
        }
        let prinfo = (e.cdw12 >> CDW12_PRINFO_SHIFT) as u8 & 0xF;
        let pract = prinfo & PRINFO_PRACT != 0;
        let pi = PiParams {
            kind: ns.pi_type,
            check: prinfo & (PRCHK_GUARD | PRCHK_APP | PRCHK_REF),
            ref_tag: e.cdw14,
            app_tag: e.cdw15 as u16,
            app_mask: (e.cdw15 >> 16) as u16,
            at: if ns.pi_first {
                0
            } else {
                ns.ms as usize - PI_TUPLE_SIZE
            },
        };
        if prinfo != 0 && ns.pi_type == 0 {
            return Err(status::INVALID_FIELD);
        }
        if ns.pi_type == 1 && pi.check & PRCHK_REF != 0 && slba as u32 != e.cdw14 {
            return Err(status::INVALID_PROT_INFO);
        }
        let (bs, ms) = (ns.lba_size as usize, ns.ms as usize);
        let moved = !(pract && ns.pi_type != 0 && ms == PI_TUPLE_SIZE);
        let inline_ms = if ns.extended && moved { ms } else { 0 };
        let len = nlb * (bs + inline_ms);
        if self.exceeds_mdts(len) {
            return Err(status::INVALID_FIELD);
        }
        if e.psdt() == 1 {
            self.map_sgl(e.prp1, e.prp2, len)?;
        } else {
            self.map_prps(e.prp1, e.prp2, len)?;
        }
        let separate = (!ns.extended && moved).then_some(nlb * ms);
        if separate.is_some() && (e.mptr == 0 || e.mptr & 0x3 != 0) {
            return Err(status::DATA_TRANSFER_ERROR);
        }
        let mut host = vec![0u8; len];
        let mut host_md = vec![0u8; separate.unwrap_or(0)];
        // Each block as stored: data then metadata.
        let mut blocks = vec![0u8; nlb * (bs + ms)];
        let chunk = bs + ms;
        if write {
            copy_from_host(&mut self.dma, &self.segs, &mut host)
                .map_err(|f| transfer_error(&self.shared, f))?;
            if separate.is_some() {
                self.dma
                    .read(e.mptr, &mut host_md)
                    .map_err(|f| transfer_error(&self.shared, f))?;
            }
            for (i, b) in blocks.chunks_exact_mut(chunk).enumerate() {
                let hs = bs + inline_ms;
                b[..bs].copy_from_slice(&host[i * hs..i * hs + bs]);
                if inline_ms != 0 {
                    b[bs..].copy_from_slice(&host[i * hs + bs..(i + 1) * hs]);
                } else if separate.is_some() {
                    b[bs..].copy_from_slice(&host_md[i * ms..(i + 1) * ms]);
                }
                if pract && ns.pi_type != 0 {
                    let crc = guard(&b[..bs], &b[bs..bs + pi.at]);
                    let t = PiTuple::new(crc, pi.app_tag, pi.ref_tag(i));
                    b[bs + pi.at..bs + pi.at + PI_TUPLE_SIZE]
                        .copy_from_slice(bytemuck::bytes_of(&t));
                } else {
                    pi.check_block(&b[..bs], &b[bs..], i)?;
                }
            }
            let map = &mut self.meta_stores[store];
            for (i, b) in blocks.chunks_exact(chunk).enumerate() {
                map.insert(slba + i as u64, b.into());
            }
            return Ok(());
        }
        let map = &self.meta_stores[store];
        for (i, b) in blocks.chunks_exact_mut(chunk).enumerate() {
            match map.get(&(slba + i as u64)) {
                Some(stored) => b.copy_from_slice(stored),
                None => b[bs..].fill(0xFF),
            }
            pi.check_block(&b[..bs], &b[bs..], i)?;
            let hs = bs + inline_ms;
            host[i * hs..i * hs + bs].copy_from_slice(&b[..bs]);
            if inline_ms != 0 {
                host[i * hs + bs..(i + 1) * hs].copy_from_slice(&b[bs..]);
            } else if separate.is_some() {
                host_md[i * ms..(i + 1) * ms].copy_from_slice(&b[bs..]);
            }
        }
        copy_to_host(&mut self.dma, &self.segs, &host)
            .map_err(|f| transfer_error(&self.shared, f))?;
        if separate.is_some() {
            self.dma
                .write(e.mptr, &host_md)
                .map_err(|f| transfer_error(&self.shared, f))?;
        }
        Ok(())
    }

    /// Takes the inline SGL descriptor of DPTR for a `len`-byte transfer
    /// (base spec 4.1.2) into `self.segs`: one Data Block (type 0h, sub
    /// type 0h Address) of exactly `len` bytes, aligned as SGLS asks.
    fn map_sgl(&mut self, dptr1: u64, dptr2: u64, len: usize) -> CmdResult<()> {
        self.segs.clear();
        let d = SglDescriptor::from_dptr(dptr1, dptr2);
        if d.kind() != SGL_TYPE_DATA_BLOCK || d.subtype() != SGL_SUBTYPE_ADDRESS {
            return Err(status::SGL_DESCRIPTOR_TYPE_INVALID);
        }
        // SGLS bit 18 (a descriptor longer than the transfer) is not
        // reported, so the length must match.
        if d.length as usize != len {
            return Err(status::DATA_SGL_LENGTH_INVALID);
        }
        if !SglSupport::from_sgls(self.cfg.sgls).fits(d.address, len) {
            return Err(status::SGL_DATA_BLOCK_GRANULARITY_INVALID);
        }
        self.push_seg(d.address, len as u64)
    }

    /// Walks PRP1/PRP2 for a `len`-byte transfer with the CC.MPS page size
    /// (base spec 4.1.1) into `self.segs`, merging contiguous pages.
    fn map_prps(&mut self, prp1: u64, prp2: u64, len: usize) -> CmdResult<()> {
        self.segs.clear();
        let ps = self.page_size as u64;
        let mask = ps - 1;
        if prp1 & 0x3 != 0 {
            return Err(status::PRP_OFFSET_INVALID);
        }
        let first = (len as u64).min(ps - (prp1 & mask));
        self.push_seg(prp1, first)?;
        let mut rem = len as u64 - first;
        if rem == 0 {
            return Ok(());
        }
        if rem <= ps {
            if prp2 & mask != 0 {
                return Err(status::PRP_OFFSET_INVALID);
            }
            return self.push_seg(prp2, rem);
        }
        let mut list = prp2;
        // Each list page carries at least one data entry unless it is a
        // lone chain slot; bound the walk so a cycle cannot spin forever.
        let mut hops = rem.div_ceil(ps) + 2;
        loop {
            if list & 0x7 != 0 {
                return Err(status::PRP_OFFSET_INVALID);
            }
            if list == 0 || hops == 0 {
                return Err(status::DATA_TRANSFER_ERROR);
            }
            hops -= 1;
            let slots = (ps - (list & mask)) / 8;
            let mut next = None;
            for i in 0..slots {
                let entry = self
                    .dma
                    .read_obj::<u64>(list + 8 * i)
                    .map_err(|f| transfer_error(&self.shared, f))?;
                if i == slots - 1 && rem > ps {
                    next = Some(entry);
                    break;
                }
                if entry & mask != 0 {
                    return Err(status::PRP_OFFSET_INVALID);
                }
                let n = rem.min(ps);
                self.push_seg(entry, n)?;
                rem -= n;
                if rem == 0 {
                    return Ok(());
                }
            }
            match next {
                Some(n) => list = n,
                None => return Err(status::DATA_TRANSFER_ERROR),
            }
        }
    }

    fn push_seg(&mut self, addr: u64, len: u64) -> CmdResult<()> {
        if addr == 0 || addr.checked_add(len).is_none() {
            return Err(status::DATA_TRANSFER_ERROR);
        }
        match self.segs.last_mut() {
            Some((a, l)) if *a + *l as u64 == addr => *l += len as usize,
            _ => self.segs.push((addr, len as usize)),
        }
        Ok(())
    }
}

impl Sq {
    fn new(base: u64, size: u32, cqid: u16, shadow: bool) -> Sq {
        Sq {
            base,
            size,
            head: 0,
            tail: 0,
            cqid,
            shadow,
            last_db: 0,
            last_shadow: 0,
        }
    }
}

impl Cq {
    fn new(base: u64, size: u32, shadow: bool) -> Cq {
        Cq {
            base,
            size,
            tail: 0,
            head: 0,
            phase: true,
            shadow,
            sqs: 0,
            last_db: 0,
            last_shadow: 0,
        }
    }
}

impl Store {
    /// Calls `f(host address, namespace offset, length)` for the pieces of
    /// `segs` (mapped to namespace bytes from `offset`) split at chunk
    /// boundaries.
    fn pieces(
        offset: u64,
        segs: &[(u64, usize)],
        mut f: impl FnMut(u64, u64, usize) -> Result<(), SimFault>,
    ) -> Result<(), SimFault> {
        let mut dev = offset;
        for &(addr, len) in segs {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK - (dev % CHUNK as u64) as usize);
                f(addr + done as u64, dev, n)?;
                done += n;
                dev += n as u64;
            }
        }
        Ok(())
    }

    fn read(&self, dma: &mut SimDma, offset: u64, segs: &[(u64, usize)]) -> Result<(), SimFault> {
        if !self.keep {
            return segs.iter().try_for_each(|&(a, n)| dma.fill(a, n, 0));
        }
        Self::pieces(offset, segs, |addr, dev, n| {
            let at = (dev % CHUNK as u64) as usize;
            match self.chunks.get(&(dev / CHUNK as u64)) {
                Some(c) => dma.write(addr, &c[at..at + n]),
                None => dma.fill(addr, n, 0),
            }
        })
    }

    fn write(
        &mut self,
        dma: &mut SimDma,
        offset: u64,
        segs: &[(u64, usize)],
    ) -> Result<(), SimFault> {
        if !self.keep {
            return Ok(());
        }
        let chunks = &mut self.chunks;
        Self::pieces(offset, segs, |addr, dev, n| {
            let at = (dev % CHUNK as u64) as usize;
            let c = chunks
                .entry(dev / CHUNK as u64)
                .or_insert_with(|| vec![0; CHUNK].into_boxed_slice());
            dma.read(addr, &mut c[at..at + n])
        })
    }

    fn zero(&mut self, offset: u64, len: u64) {
        if self.chunks.is_empty() || len == 0 {
            return;
        }
        let c = CHUNK as u64;
        let end = offset + len;
        let (first_full, end_full) = (offset.div_ceil(c), end / c);
        if end_full > first_full {
            if end_full - first_full > self.chunks.len() as u64 {
                self.chunks
                    .retain(|k, _| !(first_full..end_full).contains(k));
            } else {
                (first_full..end_full).for_each(|k| {
                    self.chunks.remove(&k);
                });
            }
        }
        let head = (offset, end.min(first_full * c));
        let tail = ((end_full * c).max(head.1), end);
        for (from, to) in [head, tail] {
            if from < to {
                if let Some(ch) = self.chunks.get_mut(&(from / c)) {
                    let at = (from % c) as usize;
                    ch[at..at + (to - from) as usize].fill(0);
                }
            }
        }
    }
}

/// Identify Namespace of a metadata namespace: one LBA format.
fn identify_meta_namespace(ns: SimMetaNamespace) -> IdentifyNamespace {
    let mut id = IdentifyNamespace::zeroed();
    id.nsze = ns.blocks;
    id.ncap = ns.blocks;
    id.nuse = ns.blocks;
    id.flbas = (ns.extended as u8) << 4;
    // MC: extended and separate metadata supported; DPC: types 1..3, first
    // or last 8 bytes.
    id.mc = 0b11;
    id.dpc = 0b1_1111;
    id.dps = ns.pi_type & 0x7 | (ns.pi_first as u8) << 3;
    id.lbaf[0].lbads = ns.lba_size.trailing_zeros() as u8;
    id.lbaf[0].ms = ns.ms;
    id
}

/// PRCHK and the expected tags of one read or write.
struct PiParams {
    kind: u8,
    check: u8,
    ref_tag: u32,
    app_tag: u16,
    app_mask: u16,
    /// Offset of the tuple in a block's metadata.
    at: usize,
}

impl PiParams {
    /// The reference tag block `i` of the command should carry.
    fn ref_tag(&self, i: usize) -> u32 {
        match self.kind {
            1 | 2 => self.ref_tag.wrapping_add(i as u32),
            _ => self.ref_tag,
        }
    }

    /// Checks one block's tuple as PRCHK asks (FFFFh application tag:
    /// skipped, and for type 3 also needing an all-ones reference tag).
    fn check_block(&self, data: &[u8], md: &[u8], i: usize) -> CmdResult<()> {
        if self.kind == 0 || self.check == 0 {
            return Ok(());
        }
        let t: PiTuple = bytemuck::pod_read_unaligned(&md[self.at..self.at + PI_TUPLE_SIZE]);
        if t.app_tag() == 0xFFFF && (self.kind != 3 || t.ref_tag() == u32::MAX) {
            return Ok(());
        }
        if self.check & PRCHK_GUARD != 0 && t.guard() != guard(data, &md[..self.at]) {
            return Err(status::GUARD_CHECK);
        }
        if self.check & PRCHK_APP != 0 && (t.app_tag() ^ self.app_tag) & self.app_mask != 0 {
            return Err(status::APP_TAG_CHECK);
        }
        if self.check & PRCHK_REF != 0 && self.kind != 3 && t.ref_tag() != self.ref_tag(i) {
            return Err(status::REF_TAG_CHECK);
        }
        Ok(())
    }
}

fn pad(field: &mut [u8], s: &[u8]) {
    field.fill(b' ');
    field[..s.len()].copy_from_slice(s);
}

// ---- host memory access -----------------------------------------------------
//
// Every address below comes from the driver; SimDma checks it against the
// live unmapped regions, so a wrong one is a SimFault, never a stray access.

/// A completion entry without Phase Tag.
fn cqe(dw0: u32, sq_head: u16, sq_id: u16, cid: u16, status: u16) -> CompletionEntry {
    CompletionEntry {
        dw0,
        dw1: 0,
        sq_head,
        sq_id,
        cid,
        status,
    }
}

/// A data transfer that faulted ends its command with Data Transfer Error.
fn transfer_error(shared: &Shared, f: SimFault) -> u16 {
    dma_fault(shared, "data transfer", f);
    status::DATA_TRANSFER_ERROR
}

fn copy_to_host(dma: &mut SimDma, segs: &[(u64, usize)], mut src: &[u8]) -> Result<(), SimFault> {
    for &(addr, n) in segs {
        let n = n.min(src.len());
        dma.write(addr, &src[..n])?;
        src = &src[n..];
    }
    Ok(())
}

fn copy_from_host(
    dma: &mut SimDma,
    segs: &[(u64, usize)],
    mut dst: &mut [u8],
) -> Result<(), SimFault> {
    for &(addr, n) in segs {
        let n = n.min(dst.len());
        let (head, tail) = dst.split_at_mut(n);
        dma.read(addr, head)?;
        dst = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{aqa, sct, Cap, NumQueues, QueuePriority, Shutdown, ShutdownStatus};
    use fastlane_framework::{DmaRegion, Iova, PageSize};
    use std::cell::RefCell;

    // Layout of the test's DMA region (offsets).
    const ASQ: usize = 0x0000;
    const ACQ: usize = 0x1000;
    const IDENT: usize = 0x2000;
    const IOSQ: usize = 0x3000;
    const IOCQ: usize = 0x4000;
    const LIST: usize = 0x5000;
    const LIST2: usize = 0x6000;
    const SHADOW: usize = 0x7000;
    const EVENTIDX: usize = 0x8000;
    const DATA: usize = 0x10_0000;
    const DATA2: usize = 0x20_0000;
    const ENTRIES: u16 = 16;

    /// The test's DMA region and the hand-written host's access to it (by
    /// address, through the same checked window a model uses).
    struct Mem {
        region: DmaRegion,
        cpu: RefCell<SimDma>,
    }

    impl Mem {
        fn at(&self, off: usize) -> u64 {
            self.region.iova_at(off).get()
        }
        fn iova_at(&self, off: usize) -> Iova {
            self.region.iova_at(off)
        }
        fn write(&self, off: usize, data: &[u8]) -> Result<(), SimFault> {
            self.cpu.borrow_mut().write(self.at(off), data)
        }
        fn read(&self, off: usize, out: &mut [u8]) -> Result<(), SimFault> {
            self.cpu.borrow_mut().read(self.at(off), out)
        }
        fn fill(&self, off: usize, len: usize, byte: u8) -> Result<(), SimFault> {
            self.cpu.borrow_mut().fill(self.at(off), len, byte)
        }
    }

    /// One queue pair as the test drives it.
    struct Q {
        qid: u16,
        sq: usize,
        cq: usize,
        tail: u16,
        head: u16,
        phase: bool,
        cid: u16,
    }

    /// A hand-written host: writes entries, rings doorbells, reaps CQEs.
    struct Host {
        sim: SimController,
        bar: Mmio,
        mem: Mem,
        q: [Q; 2],
        shadow: bool,
    }

    fn st(sct_: u8, sc: u8) -> (u8, u8) {
        (sct_, sc)
    }

    impl Host {
        fn new(cfg: SimConfig) -> Host {
            let (sim, bar) = SimController::start(cfg);
            let mem = Mem {
                region: DmaRegion::new_unmapped(0x40_0000, PageSize::Small).unwrap(),
                cpu: RefCell::new(SimDma::new()),
            };
            let q = |qid, sq, cq| Q {
                qid,
                sq,
                cq,
                tail: 0,
                head: 0,
                phase: true,
                cid: 0,
            };
            Host {
                sim,
                bar,
                mem,
                q: [q(0, ASQ, ACQ), q(1, IOSQ, IOCQ)],
                shadow: false,
            }
        }

        fn iova(&self, off: usize) -> u64 {
            self.mem.iova_at(off).get()
        }

        fn wait_csts(&self, f: impl Fn(Csts) -> bool) -> Csts {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let c = Csts(self.bar.read32(reg::CSTS));
                if f(c) {
                    return c;
                }
                assert!(Instant::now() < deadline, "CSTS stuck at {:#x}", c.0);
                thread::yield_now();
            }
        }

        fn enable(&mut self) {
            self.mem.fill(0, 0x10000, 0).unwrap();
            self.q.iter_mut().for_each(|q| {
                (q.tail, q.head, q.phase) = (0, 0, true);
            });
            self.bar.write32(reg::AQA, aqa(ENTRIES, ENTRIES).unwrap());
            self.bar.write64(reg::ASQ, self.iova(ASQ));
            self.bar.write64(reg::ACQ, self.iova(ACQ));
            self.bar.write32(reg::CC, Cc::nvm(0).with_en(true).0);
            self.wait_csts(|c| c.rdy());
        }

        fn disable(&mut self) {
            self.bar.write32(reg::CC, Cc::nvm(0).0);
            self.wait_csts(|c| !c.rdy());
        }

        fn submit(&mut self, q: usize, mut e: SubmissionEntry) -> u16 {
            let cid = self.q[q].cid;
            self.q[q].cid = cid.wrapping_add(1) & 0x7FFF;
            e.set_cid(cid);
            let (sq, tail, qid) = (self.q[q].sq, self.q[q].tail, self.q[q].qid);
            self.mem
                .write(sq + tail as usize * 64, bytemuck::bytes_of(&e))
                .unwrap();
            let tail = (tail + 1) % ENTRIES;
            self.q[q].tail = tail;
            fence(Ordering::Release);
            if self.shadow && qid != 0 {
                self.mem
                    .write(SHADOW + 8 * qid as usize, &(tail as u32).to_le_bytes())
                    .unwrap();
            } else {
                self.bar.write32(sq_tail_doorbell(qid, 0), tail as u32);
            }
            cid
        }

        fn try_reap(&mut self, q: usize, timeout: Duration) -> Option<CompletionEntry> {
            let deadline = Instant::now() + timeout;
            let at = self.q[q].cq + self.q[q].head as usize * 16;
            loop {
                let mut raw = [0u8; 16];
                self.mem.read(at, &mut raw).unwrap();
                let e: CompletionEntry = bytemuck::pod_read_unaligned(&raw);
                if e.phase() == self.q[q].phase {
                    fence(Ordering::Acquire);
                    self.mem.read(at, &mut raw).unwrap();
                    let qq = &mut self.q[q];
                    qq.head = (qq.head + 1) % ENTRIES;
                    if qq.head == 0 {
                        qq.phase = !qq.phase;
                    }
                    let (qid, head) = (qq.qid, qq.head);
                    if self.shadow && qid != 0 {
                        self.mem
                            .write(SHADOW + 8 * qid as usize + 4, &(head as u32).to_le_bytes())
                            .unwrap();
                    } else {
                        self.bar.write32(cq_head_doorbell(qid, 0), head as u32);
                    }
                    return Some(bytemuck::pod_read_unaligned(&raw));
                }
                if Instant::now() > deadline {
                    return None;
                }
                thread::yield_now();
            }
        }

        fn reap(&mut self, q: usize) -> CompletionEntry {
            self.try_reap(q, Duration::from_secs(5))
                .expect("completion")
        }

        /// Submits and waits; returns DW0 or (SCT, SC).
        fn cmd(&mut self, q: usize, e: SubmissionEntry) -> Result<u32, (u8, u8)> {
            let cid = self.submit(q, e);
            let c = self.reap(q);
            assert_eq!((c.cid, c.sq_id), (cid, self.q[q].qid));
            assert_eq!(c.sq_head, self.q[q].tail, "all submitted entries consumed");
            match c.status().result() {
                Ok(()) => Ok(c.dw0),
                Err(e) => {
                    assert!(e.dnr);
                    Err((e.sct, e.sc))
                }
            }
        }

        fn create_io_queues(&mut self) {
            let cq = SubmissionEntry::create_io_cq(1, ENTRIES, self.iova(IOCQ));
            assert_eq!(self.cmd(0, cq), Ok(0));
            let sq = SubmissionEntry::create_io_sq(
                1,
                ENTRIES,
                self.iova(IOSQ),
                1,
                QueuePriority::Medium,
            );
            assert_eq!(self.cmd(0, sq), Ok(0));
        }

        /// Writes PRP list entries for the pages after the first of a
        /// buffer at `data` of `len` bytes; returns PRP2.
        fn prp_list(&self, list: usize, data: usize, len: usize) -> u64 {
            let first = 4096 - data % 4096;
            let pages = (len - first).div_ceil(4096);
            for i in 0..pages {
                let page = self.iova(data - data % 4096 + (i + 1) * 4096);
                self.mem.write(list + 8 * i, &page.to_le_bytes()).unwrap();
            }
            self.iova(list)
        }

        fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
            let mut v = vec![0; len];
            self.mem.read(off, &mut v).unwrap();
            v
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 9) as u8)
            .collect()
    }

    #[test]
    fn identify_then_write_and_read_back_through_prp_lists() {
        let cfg = SimConfig {
            lba_size: 4096,
            namespace_blocks: 4096,
            ..SimConfig::default()
        };
        let mut h = Host::new(cfg);
        let cap = Cap(h.bar.read64(reg::CAP));
        assert_eq!((cap.mqes(), cap.cqr(), cap.dstrd()), (1023, true, 0));
        assert!(cap.supports_nvm_command_set());
        assert_eq!((cap.min_page_size(), cap.max_page_size()), (4096, 65536));
        assert_eq!(cap.timeout(), Duration::from_millis(500));
        assert_eq!(h.bar.read32(reg::VS), 0x0001_0400);
        h.enable();

        let id = SubmissionEntry::identify_controller(h.iova(IDENT));
        assert_eq!(h.cmd(0, id), Ok(0));
        let ctrl = IdentifyController::from_bytes(&h.bytes(IDENT, 4096)).unwrap();
        assert_eq!(
            (ctrl.serial(), ctrl.model(), ctrl.firmware()),
            ("SIM0001".into(), "fastlane sim".into(), "1.0".into())
        );
        assert_eq!(ctrl.mdts_bytes(4096), Some(128 << 10));
        assert_eq!((ctrl.nn, ctrl.sqes, ctrl.cqes), (1, 0x66, 0x44));
        assert!(ctrl.supports_dsm() && ctrl.supports_write_zeroes());
        assert!(ctrl.supports_doorbell_buffer_config());

        let id = SubmissionEntry::identify_namespace(1, h.iova(IDENT));
        assert_eq!(h.cmd(0, id), Ok(0));
        let ns = IdentifyNamespace::from_bytes(&h.bytes(IDENT, 4096)).unwrap();
        assert_eq!((ns.nsze, ns.ncap, ns.lba_size()), (4096, 4096, Some(4096)));
        let id = SubmissionEntry::identify_active_ns_list(0, h.iova(IDENT));
        assert_eq!(h.cmd(0, id), Ok(0));
        assert_eq!(
            crate::spec::active_ns_ids(&h.bytes(IDENT, 4096)).collect::<Vec<_>>(),
            [1]
        );
        let id = SubmissionEntry::identify_namespace(2, h.iova(IDENT));
        assert_eq!(h.cmd(0, id), Err(st(sct::GENERIC, 0x0B)));

        let nq = h.cmd(0, SubmissionEntry::set_num_queues(64, 2)).unwrap();
        assert_eq!(
            NumQueues::from_dw0(nq),
            NumQueues {
                sq_count: 8,
                cq_count: 2
            }
        );
        h.create_io_queues();

        // 8 blocks = 8 pages: PRP1 plus a list of 7.
        let len = 8 * 4096;
        let data = pattern(len, 0x5A);
        h.mem.write(DATA, &data).unwrap();
        let prp2 = h.prp_list(LIST, DATA, len);
        let w = SubmissionEntry::write(1, 100, 7, h.iova(DATA), prp2);
        assert_eq!(h.cmd(1, w), Ok(0));

        // Read back into a buffer with an in-page offset: 9 pages.
        let dst = DATA2 + 0x200;
        let prp2 = h.prp_list(LIST2, dst, len);
        let r = SubmissionEntry::read(1, 100, 7, h.iova(dst), prp2);
        assert_eq!(h.cmd(1, r), Ok(0));
        assert!(h.bytes(dst, len) == data, "read-back data differs");

        // Two blocks through PRP1 + PRP2, unwritten blocks read as zeroes.
        h.mem.fill(DATA2, 2 * 4096, 0xEE).unwrap();
        let r = SubmissionEntry::read(1, 99, 1, h.iova(DATA2), h.iova(DATA2 + 4096));
        assert_eq!(h.cmd(1, r), Ok(0));
        assert!(h.bytes(DATA2, 4096).iter().all(|&b| b == 0));
        assert_eq!(h.bytes(DATA2 + 4096, 4096), data[..4096]);

        // Errors: LBA range, namespace, MDTS (32 blocks of 4 KiB), opcode.
        let bad = SubmissionEntry::read(1, 4090, 7, h.iova(DATA2), prp2);
        assert_eq!(h.cmd(1, bad), Err(st(sct::GENERIC, 0x80)));
        let bad = SubmissionEntry::read(1, u64::MAX, 0, h.iova(DATA2), 0);
        assert_eq!(h.cmd(1, bad), Err(st(sct::GENERIC, 0x80)));
        let bad = SubmissionEntry::read(2, 0, 0, h.iova(DATA2), 0);
        assert_eq!(h.cmd(1, bad), Err(st(sct::GENERIC, 0x0B)));
        let bad = SubmissionEntry::read(1, 0, 32, h.iova(DATA2), prp2);
        assert_eq!(h.cmd(1, bad), Err(st(sct::GENERIC, 0x02)));
        let bad = SubmissionEntry::read(1, 0, 0, h.iova(DATA2) + 2, 0);
        assert_eq!(h.cmd(1, bad), Err(st(sct::GENERIC, 0x13)));
        assert_eq!(
            h.cmd(1, SubmissionEntry::new(0x7F, 1)),
            Err(st(sct::GENERIC, 0x01))
        );
        assert_eq!(h.cmd(1, SubmissionEntry::flush(1)), Ok(0));

        // Deallocate blocks 100..102, write zeroes over 106: they read as
        // zeroes, the rest keeps its data.
        h.mem
            .write(DATA2, bytemuck::bytes_of(&DsmRange::new(100, 2)))
            .unwrap();
        assert_eq!(
            h.cmd(1, SubmissionEntry::deallocate(1, h.iova(DATA2), 0)),
            Ok(0)
        );
        assert_eq!(
            h.cmd(1, SubmissionEntry::write_zeroes(1, 106, 0, false)),
            Ok(0)
        );
        let prp2 = h.prp_list(LIST2, dst, len);
        assert_eq!(
            h.cmd(1, SubmissionEntry::read(1, 100, 7, h.iova(dst), prp2)),
            Ok(0)
        );
        let got = h.bytes(dst, len);
        for blk in 0..8 {
            let range = blk * 4096..(blk + 1) * 4096;
            if matches!(blk, 0 | 1 | 6) {
                assert!(got[range].iter().all(|&b| b == 0), "block {blk} not zeroed");
            } else {
                assert!(got[range.clone()] == data[range], "block {blk} lost");
            }
        }

        let s = h.sim.stats();
        assert_eq!(s.io[nvm_opcode::WRITE as usize], 1);
        assert_eq!(s.io[nvm_opcode::READ as usize], 8);
        assert_eq!(s.admin[admin_opcode::IDENTIFY as usize], 4);
        assert_eq!(s.io_total(), 13);
        assert!(s.sq_doorbell_writes >= 1 && s.cq_doorbell_writes >= 1);
    }

    #[test]
    fn queue_management_errors() {
        let mut h = Host::new(SimConfig {
            max_queues: 2,
            mqes: 63,
            ..SimConfig::default()
        });
        h.enable();
        let base = h.iova(IOCQ);
        let cq = |qid, n| SubmissionEntry::create_io_cq(qid, n, base);
        let sq =
            |qid, n, cqid| SubmissionEntry::create_io_sq(qid, n, base, cqid, QueuePriority::Low);
        assert_eq!(h.cmd(0, cq(0, 16)), Err(st(sct::COMMAND_SPECIFIC, 1)));
        assert_eq!(h.cmd(0, cq(3, 16)), Err(st(sct::COMMAND_SPECIFIC, 1)));
        assert_eq!(h.cmd(0, cq(1, 65)), Err(st(sct::COMMAND_SPECIFIC, 2)));
        assert_eq!(h.cmd(0, cq(1, 1)), Err(st(sct::COMMAND_SPECIFIC, 2)));
        assert_eq!(h.cmd(0, sq(1, 16, 1)), Err(st(sct::COMMAND_SPECIFIC, 0)));
        assert_eq!(h.cmd(0, sq(1, 16, 0)), Err(st(sct::COMMAND_SPECIFIC, 0)));
        let mut misaligned = cq(1, 16);
        misaligned.prp1 += 64;
        assert_eq!(h.cmd(0, misaligned), Err(st(sct::GENERIC, 0x13)));
        assert_eq!(h.cmd(0, cq(1, 16)), Ok(0));
        assert_eq!(h.cmd(0, cq(1, 16)), Err(st(sct::COMMAND_SPECIFIC, 1)));
        assert_eq!(h.cmd(0, sq(1, 16, 1)), Ok(0));
        assert_eq!(
            h.cmd(0, SubmissionEntry::delete_io_cq(1)),
            Err(st(sct::COMMAND_SPECIFIC, 0x0C))
        );
        assert_eq!(
            h.cmd(0, SubmissionEntry::delete_io_sq(2)),
            Err(st(sct::COMMAND_SPECIFIC, 1))
        );
        assert_eq!(
            h.cmd(0, SubmissionEntry::delete_io_sq(0)),
            Err(st(sct::COMMAND_SPECIFIC, 1))
        );
        assert_eq!(h.cmd(0, SubmissionEntry::delete_io_sq(1)), Ok(0));
        assert_eq!(h.cmd(0, SubmissionEntry::delete_io_cq(1)), Ok(0));
        assert_eq!(h.cmd(0, SubmissionEntry::abort(1, 3)), Ok(1));
        assert_eq!(
            h.cmd(0, SubmissionEntry::new(0xC5, 0)),
            Err(st(sct::GENERIC, 1))
        );
        let gf = SubmissionEntry::get_features(
            feature::NUMBER_OF_QUEUES,
            crate::spec::FeatureSelect::Current,
            0,
        );
        assert_eq!(h.cmd(0, gf), Ok(1 << 16 | 1));
        let gf = SubmissionEntry::get_features(0x55, crate::spec::FeatureSelect::Current, 0);
        assert_eq!(h.cmd(0, gf), Err(st(sct::GENERIC, 2)));

        // Admin CQ wraps: phase tags flip and the model honours the head.
        for _ in 0..3 * ENTRIES {
            assert_eq!(h.cmd(0, SubmissionEntry::abort(1, 0)), Ok(1));
        }

        // Shutdown notification.
        h.bar.write32(
            reg::CC,
            Cc::nvm(0).with_en(true).with_shn(Shutdown::Normal).0,
        );
        h.wait_csts(|c| c.shst() == ShutdownStatus::Complete);
    }

    #[test]
    fn cq_full_waits_for_head_doorbell() {
        let mut h = Host::new(SimConfig::default());
        h.enable();
        h.create_io_queues();
        // 15 commands fill the 16-entry CQ to its 15-entry capacity...
        let mut cids = Vec::new();
        for _ in 0..ENTRIES - 1 {
            cids.push(h.submit(1, SubmissionEntry::flush(1)));
        }
        // ...wait until all are posted, then submit one more without
        // consuming: it must not be posted over the unread entries.
        let last = h.q[1].cq + (ENTRIES as usize - 2) * 16;
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.bytes(last + 14, 2)[0] & 1 == 0 {
            assert!(Instant::now() < deadline);
            thread::yield_now();
        }
        cids.push(h.submit(1, SubmissionEntry::flush(1)));
        thread::sleep(Duration::from_millis(20));
        let slot = h.q[1].cq + (ENTRIES as usize - 1) * 16;
        assert_eq!(h.bytes(slot + 14, 2)[0] & 1, 0, "posted into a full CQ");
        for cid in cids {
            assert_eq!(h.reap(1).cid, cid);
        }
        assert_eq!(h.sim.stats().io[nvm_opcode::FLUSH as usize], ENTRIES as u64);
    }

    #[test]
    fn inline_sgl_data_blocks() {
        use crate::spec::SglDescriptor;
        let mut h = Host::new(SimConfig {
            sgls: 0b01,
            ..SimConfig::default()
        });
        h.enable();
        h.create_io_queues();
        let len = 5 * 4096 + 512; // 41 blocks, any alignment
        let data = pattern(len, 9);
        h.mem.write(DATA + 0x104, &data).unwrap();
        let sgl = |h: &Host, at: usize, n: usize| SglDescriptor::data_block(h.iova(at), n as u32);
        let w = SubmissionEntry::write(1, 100, 40, 0, 0).with_sgl(sgl(&h, DATA + 0x104, len));
        assert_eq!(w.psdt(), 1);
        assert_eq!(h.cmd(1, w), Ok(0));
        let r = SubmissionEntry::read(1, 100, 40, 0, 0).with_sgl(sgl(&h, DATA2 + 2, len));
        assert_eq!(h.cmd(1, r), Ok(0));
        assert!(h.bytes(DATA2 + 2, len) == data);
        // Length other than the transfer's, a segment descriptor, an
        // unmapped address, PSDT 10b, and an admin command with an SGL.
        let r = SubmissionEntry::read(1, 100, 40, 0, 0).with_sgl(sgl(&h, DATA2, len - 512));
        assert_eq!(h.cmd(1, r), Err(st(sct::GENERIC, 0x0F)));
        let mut seg = sgl(&h, DATA2, len);
        seg.identifier = 0x20;
        let r = SubmissionEntry::read(1, 100, 40, 0, 0).with_sgl(seg);
        assert_eq!(h.cmd(1, r), Err(st(sct::GENERIC, 0x11)));
        let wild = SglDescriptor::data_block(0x10, len as u32);
        let r = SubmissionEntry::read(1, 100, 40, 0, 0).with_sgl(wild);
        assert_eq!(h.cmd(1, r), Err(st(sct::GENERIC, 0x04)));
        let mut r = SubmissionEntry::read(1, 100, 40, 0, 0).with_sgl(sgl(&h, DATA2, len));
        r.cdw0 ^= 0b11 << 14;
        assert_eq!(h.cmd(1, r), Err(st(sct::GENERIC, 0x02)));
        let id = SubmissionEntry::identify_controller(0).with_sgl(sgl(&h, DATA2, 4096));
        assert_eq!(h.cmd(0, id), Err(st(sct::GENERIC, 0x02)));
        assert_eq!(h.sim.stats().sgl_commands, 5);

        // Dword alignment and granularity (SGLS 10b).
        let mut h = Host::new(SimConfig {
            sgls: 0b10,
            ..SimConfig::default()
        });
        h.enable();
        h.create_io_queues();
        let r = SubmissionEntry::read(1, 0, 7, 0, 0).with_sgl(sgl(&h, DATA2 + 4, 4096));
        assert_eq!(h.cmd(1, r), Ok(0));
        let r = SubmissionEntry::read(1, 0, 7, 0, 0).with_sgl(sgl(&h, DATA2 + 2, 4096));
        assert_eq!(h.cmd(1, r), Err(st(sct::GENERIC, 0x1E)));

        // No SGL support: PSDT 01b is an invalid field.
        let mut h = Host::new(SimConfig::default());
        h.enable();
        h.create_io_queues();
        let r = SubmissionEntry::read(1, 0, 7, 0, 0).with_sgl(sgl(&h, DATA2, 4096));
        assert_eq!(h.cmd(1, r), Err(st(sct::GENERIC, 0x02)));
        let r = SubmissionEntry::read(1, 0, 7, h.iova(DATA2), 0);
        assert_eq!(h.cmd(1, r), Ok(0));
        let s = h.sim.stats();
        assert_eq!((s.sgl_commands, s.prp_commands), (0, 1));
    }

    #[test]
    fn chained_prp_list() {
        let mut h = Host::new(SimConfig::default());
        h.enable();
        h.create_io_queues();
        // 5 pages at an offset: PRP1 + 5 more pages. The first list starts
        // 16 bytes before the end of its page: one data entry, then a chain
        // pointer to a second list with the remaining four.
        let len = 5 * 4096;
        let data = pattern(len, 3);
        let buf = DATA + 0x100;
        h.mem.write(buf, &data).unwrap();
        let pages: Vec<u64> = (1..=5).map(|i| h.iova(DATA + i * 4096)).collect();
        let page = |i: usize| pages[i];
        let l1 = LIST + 4096 - 16;
        h.mem.write(l1, &page(0).to_le_bytes()).unwrap();
        h.mem.write(l1 + 8, &h.iova(LIST2).to_le_bytes()).unwrap();
        for i in 1..5 {
            h.mem
                .write(LIST2 + 8 * (i - 1), &page(i).to_le_bytes())
                .unwrap();
        }
        let w = SubmissionEntry::write(1, 8, 39, h.iova(buf), h.iova(l1));
        assert_eq!(h.cmd(1, w), Ok(0));
        let prp2 = h.prp_list(LIST, DATA2, len);
        let r = SubmissionEntry::read(1, 8, 39, h.iova(DATA2), prp2);
        assert_eq!(h.cmd(1, r), Ok(0));
        assert!(h.bytes(DATA2, len) == data);

        // A list entry with an offset, and a list that chains to itself.
        h.mem.write(LIST2, &(page(1) + 8).to_le_bytes()).unwrap();
        let w = SubmissionEntry::write(1, 8, 39, h.iova(buf), h.iova(l1));
        assert_eq!(h.cmd(1, w), Err(st(sct::GENERIC, 0x13)));
        let l = LIST + 4096 - 8;
        h.mem.write(l, &h.iova(l).to_le_bytes()).unwrap();
        let w = SubmissionEntry::write(1, 8, 39, h.iova(buf), h.iova(l));
        assert_eq!(h.cmd(1, w), Err(st(sct::GENERIC, 0x04)));
        let w = SubmissionEntry::write(1, 8, 39, h.iova(buf), 0);
        assert_eq!(h.cmd(1, w), Err(st(sct::GENERIC, 0x04)));
    }

    #[test]
    fn fault_injection() {
        let mut h = Host::new(SimConfig::default());
        h.enable();
        h.create_io_queues();
        let flush = SubmissionEntry::flush(1);

        h.sim.drop_next_completions(1);
        h.submit(1, flush);
        assert!(h.try_reap(1, Duration::from_millis(50)).is_none());
        let cid = h.submit(1, flush);
        let c = h.reap(1);
        assert_eq!((c.cid, c.sq_head), (cid, 2));

        h.sim.corrupt_next_cid();
        let cid = h.submit(1, flush);
        assert_eq!(h.reap(1).cid, cid ^ 0x8000);
        assert_eq!(h.cmd(1, flush), Ok(0));
        let s = h.sim.stats();
        assert_eq!((s.dropped_completions, s.corrupted_completions), (1, 1));

        h.sim.set_fatal();
        assert!(Csts(h.bar.read32(reg::CSTS)).cfs());
        h.submit(1, flush);
        assert!(h.try_reap(1, Duration::from_millis(50)).is_none());
        h.disable();
        assert!(!Csts(h.bar.read32(reg::CSTS)).cfs());
        h.enable();
        assert_eq!(h.cmd(0, SubmissionEntry::abort(0, 0)), Ok(1));
        // The reset dropped the I/O queues: a doorbell for SQ 1 is ignored.
        h.submit(1, flush);
        assert!(h.try_reap(1, Duration::from_millis(50)).is_none());
    }

    #[test]
    fn wild_addresses_fault_instead_of_touching_memory() {
        let mut h = Host::new(SimConfig::default());
        h.enable();
        // Heap memory: no DMA region covers it.
        let outside = vec![0u8; 3 * 4096];
        let addr = (outside.as_ptr() as u64).next_multiple_of(4096);
        let id = SubmissionEntry::identify_controller(addr);
        assert_eq!(h.cmd(0, id), Err(st(sct::GENERIC, 0x04)));
        h.create_io_queues();
        let r = SubmissionEntry::read(1, 0, 7, addr, 0);
        assert_eq!(h.cmd(1, r), Err(st(sct::GENERIC, 0x04)));
        // A PRP list outside every region.
        let r = SubmissionEntry::read(1, 0, 31, h.iova(DATA), addr);
        assert_eq!(h.cmd(1, r), Err(st(sct::GENERIC, 0x04)));
        assert!(
            outside.iter().all(|&b| b == 0),
            "the model wrote heap memory"
        );
        assert!(h.sim.stats().dma_faults >= 3);
        // The controller goes on working.
        let r = SubmissionEntry::read(1, 0, 7, h.iova(DATA), 0);
        assert_eq!(h.cmd(1, r), Ok(0));
    }

    #[test]
    fn invalid_enable_sets_cfs() {
        let h = Host::new(SimConfig::default());
        h.bar.write32(reg::AQA, 0);
        h.bar.write32(reg::CC, Cc::nvm(0).with_en(true).0);
        let c = h.wait_csts(|c| c.cfs());
        assert!(!c.rdy());
    }

    #[test]
    fn shadow_doorbells() {
        let mut h = Host::new(SimConfig::default());
        h.enable();
        let dbbc = SubmissionEntry::doorbell_buffer_config(h.iova(SHADOW), h.iova(EVENTIDX));
        assert_eq!(h.cmd(0, dbbc), Ok(0));
        h.create_io_queues();
        h.shadow = true;
        let before = h.sim.stats();
        for _ in 0..40 {
            assert_eq!(h.cmd(1, SubmissionEntry::flush(1)), Ok(0));
        }
        let after = h.sim.stats();
        assert_eq!(after.sq_doorbell_writes, before.sq_doorbell_writes);
        assert!(after.shadow_doorbell_updates > before.shadow_doorbell_updates);
        let eventidx = u32::from_le_bytes(h.bytes(EVENTIDX + 8, 4).try_into().unwrap());
        assert_eq!(eventidx, h.q[1].tail as u32);
    }

    #[test]
    fn store_data_false_discards_writes() {
        let mut h = Host::new(SimConfig {
            store_data: false,
            ..SimConfig::default()
        });
        h.enable();
        h.create_io_queues();
        h.mem.fill(DATA, 4096, 0xAB).unwrap();
        assert_eq!(
            h.cmd(1, SubmissionEntry::write(1, 0, 7, h.iova(DATA), 0)),
            Ok(0)
        );
        assert_eq!(
            h.cmd(1, SubmissionEntry::read(1, 0, 7, h.iova(DATA), 0)),
            Ok(0)
        );
        assert!(h.bytes(DATA, 4096).iter().all(|&b| b == 0));
        // After a long idle the model sleeps between polls, but still serves.
        thread::sleep(DEEP_IDLE * 2);
        assert_eq!(h.cmd(1, SubmissionEntry::flush(1)), Ok(0));
    }
}
