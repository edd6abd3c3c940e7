//! Controller bring-up, the admin queue, namespaces, reset and shutdown
//! (NVMe base specification: "Controller Initialization", "Resets",
//! "Shutdown"). I/O queue pairs live in `qpair`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fastlane_framework::{
    DmaBuf, DmaDomain, DmaRegion, Interrupt, Mmio, MsixVectors, PageSize, PciDevice, Removal,
    UncheckedDma, Vfio,
};

use crate::error::{NvmeError, Result};
use crate::metadata::MetadataFormat;
use crate::qpair::IoQueuePair;
use crate::ring::{Layout, Ring, Shadow};
use crate::spec::{
    self, active_ns_ids, admin_opcode, feature, reg, Cap, Cc, CompletionEntry, Csts,
    IdentifyController, IdentifyNamespace, NumQueues, SglSupport, Shutdown, ShutdownStatus,
    SubmissionEntry, Version,
};

/// Memory page size the driver programs into CC.MPS (4 KiB).
pub const PAGE_SIZE: usize = 4096;
const ADMIN_ENTRIES: u16 = 32;
/// How long an admin command may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
const NVME_CLASS: u32 = 0x01_08_02;

/// Where queue memory comes from: the VFIO container of a real device, or
/// unmapped memory for an in-process device model (IOVA == VA).
#[derive(Clone)]
pub(crate) enum Memory {
    Vfio(Vfio),
    Unmapped,
}

impl Memory {
    /// The IOMMU domain buffers must be mapped in to reach the device.
    pub fn domain(&self) -> DmaDomain {
        match self {
            Memory::Vfio(v) => v.domain(),
            Memory::Unmapped => DmaDomain::UNMAPPED,
        }
    }

    pub fn region(&self, len: usize) -> Result<DmaRegion> {
        Ok(match self {
            Memory::Vfio(v) => v.alloc_region(len, PageSize::Huge2M)?,
            Memory::Unmapped => DmaRegion::new_unmapped(len, PageSize::Small)?,
        })
    }
}

/// Controller options.
#[derive(Clone, Debug)]
pub struct Options {
    /// I/O queue pairs to ask the controller for.
    pub io_queues: u16,
    /// How long an I/O command may be outstanding before it is aborted.
    pub io_timeout: Duration,
    /// Use shadow doorbells (Doorbell Buffer Config) for I/O queues when the
    /// controller supports them: doorbell values go to memory, and the
    /// register is written only when the controller asks for it (EventIdx).
    pub shadow_doorbells: bool,
    /// How read and write commands describe their data buffer: an inline
    /// SGL Data Block descriptor when the controller supports SGLs (the
    /// default, [`DataPointer::Auto`]), or PRPs. Admin commands always use
    /// PRPs. Queue pairs can override it
    /// ([`IoQueuePair::set_data_pointer`]).
    pub data_pointer: DataPointer,
    /// How many entries the submission and completion queues of an I/O
    /// queue pair get, beyond the commands it keeps in flight.
    pub queue_size: QueueSize,
    /// Give every I/O completion queue an MSI-X vector (through VFIO, an
    /// eventfd), so a thread with nothing to do can sleep in
    /// [`IoQueuePair::wait`] instead of spinning (hybrid polling: the data
    /// path still polls). Off by default; a controller opened with
    /// [`Controller::with_registers`] has no vectors and refuses it.
    pub interrupts: bool,
}

/// Entries of an I/O queue pair's submission and completion queues.
///
/// [`Controller::create_qpair`]`(depth)` keeps at most `depth - 1`
/// commands in flight whatever the queues hold. With only `depth` entries
/// the completion queue is full as soon as every command in flight has
/// completed (at depth 2: after every completion), and some controllers
/// (QEMU's among them) treat a CQ head doorbell write on a full queue as an
/// event and take much longer over it. Spare entries keep the completion
/// queue from ever being full in normal operation: in flight + 1 < entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueSize {
    /// `max(2 * depth, 256)` entries, at most the controller's maximum
    /// (CAP.MQES + 1): a few KiB of queue memory more, spare entries at
    /// every depth the controller's maximum leaves room for.
    #[default]
    Spare,
    /// Exactly `depth` entries (the completion queue can fill).
    Minimal,
    /// The controller's maximum (CAP.MQES + 1), as SPDK asks for.
    Maximum,
}

impl QueueSize {
    /// Entries for a queue pair of `depth` on a controller whose queues
    /// hold at most `max` entries (`2 <= depth <= max`).
    pub fn entries(self, depth: u16, max: u16) -> u16 {
        match self {
            QueueSize::Spare => depth.saturating_mul(2).max(256).min(max).max(depth),
            QueueSize::Minimal => depth,
            QueueSize::Maximum => max,
        }
    }
}

/// How read and write commands describe their data buffer (base spec 4.1,
/// "Data Pointer").
///
/// A [`fastlane_framework::DmaBuf`] is always one contiguous IOVA range:
/// its pool's region is mapped at one static offset (IOVA = virtual
/// address + offset for every byte of the region), so any buffer, and any
/// sub-range of it, is described by a single SGL Data Block descriptor
/// carried inside the command: no list page, no per-page address lookup,
/// one mapping for the device to walk. PRPs need one entry per memory page
/// (a PRP list page in DMA memory beyond two pages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPointer {
    /// One inline SGL Data Block descriptor when Identify Controller SGLS
    /// reports SGL support for the NVM command set and the buffer meets its
    /// alignment (dword alignment and granularity for SGLS = 10b); PRPs
    /// otherwise.
    #[default]
    Auto,
    /// Always PRPs.
    Prp,
    /// SGLs; refused (InvalidArgument) on a controller without SGL support.
    /// A buffer that does not meet the controller's SGL alignment still
    /// falls back to PRPs.
    Sgl,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            io_queues: 8,
            io_timeout: Duration::from_secs(5),
            shadow_doorbells: false,
            data_pointer: DataPointer::Auto,
            queue_size: QueueSize::Spare,
            interrupts: false,
        }
    }
}

/// An active namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace id (NSID).
    pub id: u32,
    /// Size in logical blocks (NSZE).
    pub blocks: u64,
    /// Logical block size in bytes (data only, without metadata).
    pub block_size: u32,
    /// Per-block metadata and protection information of its format.
    pub metadata: MetadataFormat,
}

/// What Identify Controller said, in readable form.
#[derive(Clone, Debug)]
pub struct ControllerInfo {
    /// PCI vendor id (VID).
    pub vendor_id: u16,
    /// Serial number (SN).
    pub serial: String,
    /// Model number (MN).
    pub model: String,
    /// Firmware revision (FR).
    pub firmware: String,
    /// NVMe version (VS).
    pub version: Version,
    /// Largest transfer of one command in bytes (MDTS, capped at
    /// [`MAX_COMMAND_BYTES`]). Larger reads and writes are split into
    /// commands of at most this size.
    pub max_transfer: usize,
    /// Entries a queue may have (CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// I/O queue pairs the controller granted (Number of Queues).
    pub io_queues: u16,
    /// Write Zeroes is supported (ONCS).
    pub supports_write_zeroes: bool,
    /// Dataset Management is supported (ONCS).
    pub supports_dsm: bool,
    /// SGL support for NVM commands (Identify Controller SGLS bits 1:0).
    pub sgl: SglSupport,
    /// The whole Identify Controller data structure.
    pub raw: Box<IdentifyController>,
}

/// An NVMe controller. Share it (it is `Sync`) and make one
/// [`IoQueuePair`] per thread with [`Controller::create_qpair`].
pub struct Controller {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub regs: Mmio,
    pub cap: Cap,
    pub mem: Memory,
    pub admin: Mutex<Admin>,
    /// Bumped by every reset; queue pairs compare it to notice one.
    pub generation: AtomicU64,
    pub info: ControllerInfo,
    pub namespaces: Vec<Namespace>,
    /// Shadow doorbell and EventIdx pages, when in use.
    pub dbbuf: Option<DmaRegion>,
    pub options: Options,
    /// Set by the framework when the device is being removed.
    pub removal: Removal,
    /// A queue pair noticed the removal and bumped `generation` for it.
    pub removal_noticed: std::sync::atomic::AtomicBool,
    /// MSI-X vectors when [`Options::interrupts`]: 0 for the admin queue,
    /// the rest shared out among I/O queues.
    pub vectors: Option<MsixVectors>,
    _device: Option<PciDevice>,
}

pub(crate) struct Admin {
    ring: Ring,
    /// Which I/O queue ids are taken.
    qids: Vec<bool>,
    /// The device's removal flag: commands are refused once it is set.
    removal: Removal,
}

impl Controller {
    /// Opens the NVMe controller at `addr` (bound to vfio-pci) and brings it
    /// up: reset, admin queue, identify, namespaces, number of queues.
    pub fn open(vfio: &Vfio, addr: &str, options: Options) -> Result<Controller> {
        let dev = vfio.open(addr)?;
        let class = dev.class_code()?;
        if class != NVME_CLASS {
            return Err(NvmeError::NotNvme {
                addr: dev.address().to_string(),
                class,
            });
        }
        dev.enable_dma()?;
        let regs = dev.map_bar(0)?;
        let vectors = match options.interrupts {
            // One for the admin queue, one per I/O queue when there are enough.
            true => Some(dev.enable_msix(options.io_queues.saturating_add(1))?),
            false => None,
        };
        Self::init(
            regs,
            Memory::Vfio(vfio.clone()),
            Some(dev),
            vectors,
            options,
        )
    }

    /// Brings up a controller whose registers are `regs` and whose memory is
    /// unmapped (IOVA == VA): for the in-process model in `sim`.
    pub fn with_registers(regs: Mmio, options: Options) -> Result<Controller> {
        if options.interrupts {
            return Err(NvmeError::InvalidArgument(
                "interrupts need a device opened through VFIO".into(),
            ));
        }
        Self::init(regs, Memory::Unmapped, None, None, options)
    }

    fn init(
        regs: Mmio,
        mem: Memory,
        device: Option<PciDevice>,
        vectors: Option<MsixVectors>,
        options: Options,
    ) -> Result<Controller> {
        if regs.len() < reg::DOORBELL_BASE + 8 {
            return Err(NvmeError::Malformed(
                "BAR0 smaller than the admin doorbells",
            ));
        }
        let cap = Cap(regs.read64(reg::CAP));
        if !cap.supports_nvm_command_set() {
            return Err(NvmeError::NoNvmCommandSet);
        }
        if cap.min_page_size() > PAGE_SIZE {
            return Err(NvmeError::Malformed("CAP.MPSMIN above 4 KiB"));
        }
        let entries = ADMIN_ENTRIES
            .min(cap.max_queue_entries().min(4096) as u16)
            .max(2);
        let layout = Layout::new(entries, 2 * PAGE_SIZE);
        let region = mem.region(layout.total)?;
        let ring = Ring::new(region, layout, entries, 0, cap.dstrd(), regs.clone())?;
        let mut admin = Admin {
            ring,
            qids: Vec::new(),
            removal: Removal::default(),
        };
        let removal = device.as_ref().map(PciDevice::removal).unwrap_or_default();
        admin.removal = removal.clone();
        let up = enable(&regs, cap, &admin.ring)
            .and_then(|()| bring_up(&mut admin, &regs, cap, &mem, &options));
        match up {
            Ok((info, namespaces, dbbuf)) => Ok(Controller {
                inner: Arc::new(Inner {
                    regs,
                    cap,
                    mem,
                    admin: Mutex::new(admin),
                    generation: AtomicU64::new(0),
                    info,
                    namespaces,
                    dbbuf,
                    options,
                    removal,
                    removal_noticed: std::sync::atomic::AtomicBool::new(false),
                    vectors,
                    _device: device,
                }),
            }),
            Err(e) => {
                // Our own controller, enabled a moment ago: stop it before
                // its admin queue memory goes away.
                regs.write32(reg::CC, Cc(regs.read32(reg::CC)).with_en(false).0);
                if let Err(d) = wait_ready(&regs, cap, false) {
                    log::error!("disabling the controller after a failed bring-up: {d}");
                    // It may still write its queues: keep them mapped.
                    std::mem::forget(admin.ring.region.clone());
                }
                Err(e)
            }
        }
    }

    /// Identify data and limits.
    pub fn info(&self) -> &ControllerInfo {
        &self.inner.info
    }

    /// Active namespaces.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.inner.namespaces
    }

    /// The namespace with id `nsid`.
    pub fn namespace(&self, nsid: u32) -> Result<Namespace> {
        self.inner
            .namespaces
            .iter()
            .find(|n| n.id == nsid)
            .copied()
            .ok_or(NvmeError::InvalidNamespace(nsid))
    }

    /// A new I/O queue pair of `depth` entries (2..=MQES+1) for one thread.
    pub fn create_qpair(&self, depth: u16) -> Result<IoQueuePair> {
        IoQueuePair::create(self.inner.clone(), depth)
    }

    /// Resets the controller (CC.EN 1 → 0 → 1) and rebuilds the admin
    /// queue. Queue pairs notice on their next call: their outstanding
    /// commands complete with [`NvmeError::Reset`] and their queues are
    /// created again, after which I/O continues.
    pub fn reset(&self) -> Result<()> {
        let seen = self.inner.generation.load(Ordering::Acquire);
        self.inner.reset_if(seen)
    }

    /// Set once the controller is being removed (hot unplug): every
    /// command then ends with [`NvmeError::Removed`].
    pub fn removal(&self) -> Removal {
        self.inner.removal.clone()
    }

    /// Resets performed so far.
    pub fn resets(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The controller status register, for diagnostics.
    pub fn csts(&self) -> Csts {
        Csts(self.inner.regs.read32(reg::CSTS))
    }

    /// Runs one admin command synchronously (for tools and tests) through
    /// the driver's own 4 KiB admin data page: the driver fills PRP1 with
    /// that page and PRP2 with 0. `data`, if given, is copied into the page
    /// first (for commands that send data, such as Set Features –
    /// Timestamp) and receives up to 4 KiB of what the command returns.
    ///
    /// Only commands whose every address field the driver fills itself are
    /// accepted (see [`check_safe_admin`]): Identify, Get Log Page of at
    /// most 4 KiB, Get Features, and Set Features of features that carry no
    /// address; PRP1, PRP2 and the metadata pointer must be left 0, and
    /// fused or SGL commands are refused. Anything else is
    /// [`NvmeError::UnsafeCommand`]: use [`Controller::admin_command_raw`].
    pub fn admin_command(
        &self,
        mut cmd: SubmissionEntry,
        data: Option<&mut [u8]>,
    ) -> Result<CompletionEntry> {
        check_safe_admin(&cmd)?;
        let mut admin = self.inner.lock_admin();
        if let Some(d) = &data {
            admin.put_page(d);
        }
        cmd.prp1 = admin.ring.extra_iova();
        cmd.prp2 = 0;
        let c = admin.execute(&self.inner.regs, self.inner.cap, cmd);
        if let Some(out) = data {
            let n = out.len().min(PAGE_SIZE);
            out[..n].copy_from_slice(&admin.page(n));
        }
        c
    }

    /// Runs one admin command whose data goes to (or comes from) `buf`, a
    /// 4 KiB aligned buffer of at least 4 KiB mapped in this controller's
    /// container: the driver sets PRP1 to the buffer's IOVA and PRP2 to 0.
    /// The same commands as [`Controller::admin_command`] are accepted.
    ///
    /// If the command times out, the controller is reset so it cannot
    /// write the buffer after this returns. The buffer is borrowed
    /// exclusively: nothing else may read it while the device writes it.
    pub fn admin_command_buf(
        &self,
        mut cmd: SubmissionEntry,
        buf: &mut DmaBuf,
    ) -> Result<CompletionEntry> {
        check_safe_admin(&cmd)?;
        if buf.domain() != self.inner.mem.domain() {
            return Err(NvmeError::ForeignBuffer);
        }
        if buf.len() < PAGE_SIZE || !buf.iova().get().is_multiple_of(PAGE_SIZE as u64) {
            return Err(NvmeError::InvalidArgument(
                "admin data needs a 4 KiB aligned 4 KiB buffer".into(),
            ));
        }
        cmd.prp1 = buf.iova().get();
        cmd.prp2 = 0;
        let seen = self.inner.generation.load(Ordering::Acquire);
        let r = self
            .inner
            .lock_admin()
            .execute(&self.inner.regs, self.inner.cap, cmd);
        if matches!(r, Err(NvmeError::Timeout { .. })) {
            // The device may still own the buffer: stop it.
            if let Err(e) = self.inner.reset_if(seen) {
                log::error!("reset after an admin timeout on a caller's buffer: {e}");
            }
        }
        r
    }

    /// Runs one admin command exactly as given, every address field
    /// included (PRPs, metadata pointer, Host Memory Buffer descriptors,
    /// queue bases): for fault injection and commands the safe API refuses.
    /// `_promise` is the caller's [`UncheckedDma`] promise that those
    /// addresses name only memory the device may use for this command; the
    /// device reads and writes whatever they name within the IOMMU's
    /// mappings of this container, the driver's own queues included.
    pub fn admin_command_raw(
        &self,
        cmd: SubmissionEntry,
        _promise: &UncheckedDma,
    ) -> Result<CompletionEntry> {
        self.inner
            .lock_admin()
            .execute(&self.inner.regs, self.inner.cap, cmd)
    }
}

/// Set Features identifiers whose command carries no address and leaves the
/// driver's queues alone.
const SAFE_FEATURES: &[u8] = &[
    feature::ARBITRATION,
    feature::POWER_MANAGEMENT,
    feature::TEMPERATURE_THRESHOLD,
    feature::ERROR_RECOVERY,
    feature::VOLATILE_WRITE_CACHE,
    feature::INTERRUPT_COALESCING,
    feature::INTERRUPT_VECTOR_CONFIG,
    feature::WRITE_ATOMICITY,
    feature::ASYNC_EVENT_CONFIG,
    feature::AUTONOMOUS_POWER_STATE,
    feature::TIMESTAMP,
    feature::KEEP_ALIVE_TIMER,
];

/// Whether the safe admin API may send `cmd`: an allow-list of commands
/// whose only device address is the data pointer the driver fills in (one
/// page), with every address field the caller could set left zero.
pub fn check_safe_admin(cmd: &SubmissionEntry) -> Result<()> {
    let opcode = cmd.opcode();
    let refuse = |why| Err(NvmeError::UnsafeCommand { opcode, why });
    if cmd.cdw0 & 0xFF00 != 0 {
        return refuse("fused or SGL (PSDT) commands are not supported");
    }
    if cmd.mptr != 0 {
        return refuse("metadata pointer set (the driver fills every address)");
    }
    if cmd.prp1 != 0 || cmd.prp2 != 0 {
        return refuse("data pointers set (the driver fills PRP1/PRP2; leave them 0)");
    }
    match opcode {
        admin_opcode::IDENTIFY | admin_opcode::GET_FEATURES => Ok(()),
        admin_opcode::GET_LOG_PAGE if cmd.log_page_dwords() * 4 <= PAGE_SIZE as u64 => Ok(()),
        admin_opcode::GET_LOG_PAGE => refuse("log page longer than the 4 KiB data page"),
        admin_opcode::SET_FEATURES if SAFE_FEATURES.contains(&(cmd.cdw10 as u8)) => Ok(()),
        admin_opcode::SET_FEATURES if cmd.cdw10 as u8 == feature::HOST_MEMORY_BUFFER => {
            refuse("Host Memory Buffer descriptors are device addresses")
        }
        admin_opcode::SET_FEATURES => {
            refuse("feature not on the safe list (it may carry addresses or change queues)")
        }
        admin_opcode::CREATE_IO_SQ | admin_opcode::CREATE_IO_CQ => {
            refuse("queue bases are device addresses; use create_qpair")
        }
        admin_opcode::DELETE_IO_SQ | admin_opcode::DELETE_IO_CQ => {
            refuse("the driver owns its I/O queues")
        }
        admin_opcode::DOORBELL_BUFFER_CONFIG => {
            refuse("doorbell buffers are device addresses; use Options::shadow_doorbells")
        }
        _ => refuse("opcode not on the safe list"),
    }
}

impl Inner {
    /// The interrupt of I/O queue `qid`: vector `qid` when the controller
    /// has that many, else the I/O vectors in turn (a shared vector only
    /// wakes a waiter early).
    pub fn interrupt_for(&self, qid: u16) -> Option<Interrupt> {
        let v = self.vectors.as_ref()?;
        let vector = match v.len().checked_sub(1).filter(|&n| n > 0) {
            Some(n) => 1 + (qid.max(1) - 1) % n,
            None => 0,
        };
        v.interrupt(vector)
    }
    pub fn lock_admin(&self) -> MutexGuard<'_, Admin> {
        // State behind the lock stays consistent across a panic elsewhere.
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resets unless someone else already did since generation `seen`.
    pub fn reset_if(&self, seen: u64) -> Result<()> {
        let mut admin = self.lock_admin();
        if self.removal.is_removed() {
            return Err(NvmeError::Removed);
        }
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        // Queue pairs stop trusting their queues from here on.
        self.generation.fetch_add(1, Ordering::AcqRel);
        log::warn!("resetting NVMe controller");
        admin.ring.reinit()?;
        enable(&self.regs, self.cap, &admin.ring)?;
        let granted = set_num_queues(&mut admin, &self.regs, self.cap, self.options.io_queues)?;
        if (granted as usize + 1) < admin.qids.len() {
            log::warn!("controller granted fewer queues after reset: {granted}");
        }
        if let Some(region) = &self.dbbuf {
            config_dbbuf(&mut admin, &self.regs, self.cap, region)?;
        }
        // Queue ids stay with their queue pairs, which recreate them.
        Ok(())
    }
}

impl Inner {
    /// Shadow doorbell and EventIdx slots of I/O queue `qid`, carved out of
    /// the doorbell buffer pages for that queue alone, when shadow doorbells
    /// are on.
    pub fn shadow_for(&self, qid: u16) -> Option<Shadow> {
        let region = self.dbbuf.as_ref()?;
        let stride = self.cap.doorbell_stride();
        let (sq, cq) = (2 * qid as usize * stride, (2 * qid as usize + 1) * stride);
        if cq + 4 > PAGE_SIZE {
            return None;
        }
        let slot = |off| region.carve::<u32>(off, 1);
        let carved = (|| {
            Ok::<_, fastlane_framework::Error>(Shadow {
                sq_db: slot(sq)?,
                cq_db: slot(cq)?,
                sq_ei: slot(PAGE_SIZE + sq)?,
                cq_ei: slot(PAGE_SIZE + cq)?,
            })
        })();
        carved
            .inspect_err(|e| log::warn!("queue {qid}: no shadow doorbells: {e}"))
            .ok()
    }
}

/// Hands the shadow doorbell and EventIdx pages to the controller (Doorbell
/// Buffer Config; the controller forgets it on reset). The pages are zeroed
/// when no queue holds a slot of them; a queue zeroes its own slots before
/// it is created.
fn config_dbbuf(admin: &mut Admin, regs: &Mmio, cap: Cap, region: &DmaRegion) -> Result<()> {
    if let Ok(pages) = region.carve::<u64>(0, 2 * PAGE_SIZE / 8) {
        pages.fill(0);
    }
    let cmd = SubmissionEntry::doorbell_buffer_config(
        region.iova_at(0).get(),
        region.iova_at(PAGE_SIZE).get(),
    );
    admin.execute(regs, cap, cmd)?;
    Ok(())
}

impl Admin {
    /// Submits one admin command and polls for its completion.
    pub fn execute(
        &mut self,
        regs: &Mmio,
        cap: Cap,
        mut cmd: SubmissionEntry,
    ) -> Result<CompletionEntry> {
        if self.removal.is_removed() {
            return Err(NvmeError::Removed);
        }
        cmd.set_cid(self.ring.sq.tail());
        if !self.ring.push(&cmd) {
            return Err(NvmeError::QueueFull);
        }
        self.ring.ring_sq();
        let start = Instant::now();
        let timeout = ADMIN_TIMEOUT.max(cap.timeout());
        loop {
            if let Some(c) = self.ring.pop() {
                self.ring.ring_cq();
                // A malformed completion finishes nothing: the command stays
                // outstanding and its timeout applies.
                if c.sq_id != 0 || c.cid != cmd.cid() || self.ring.sq.check_head(c.sq_head).is_err()
                {
                    log::warn!(
                        "malformed admin completion {c:?} (expected cid {})",
                        cmd.cid()
                    );
                    continue;
                }
                self.ring.sq.update_head(c.sq_head)?;
                c.status().result()?;
                return Ok(c);
            }
            if start.elapsed() > timeout {
                return Err(NvmeError::Timeout {
                    what: "admin command",
                    after: timeout,
                });
            }
            let csts = regs.read32(reg::CSTS);
            if self.removal.is_removed() || csts == u32::MAX {
                // Released (all-ones registers) or gone from the bus.
                return Err(NvmeError::Removed);
            }
            if Csts(csts).cfs() {
                return Err(NvmeError::ControllerFatal);
            }
            std::hint::spin_loop();
        }
    }

    /// The first `len` bytes (at most 4 KiB) of the admin data page.
    fn page(&self, len: usize) -> Vec<u8> {
        let mut words = vec![0u64; PAGE_SIZE / 8];
        // The page is 512 words of the ring's extra area: cannot fail.
        let _ = self.ring.extra.copy_to(0, &mut words);
        let mut bytes: Vec<u8> = bytemuck::cast_slice(&words).to_vec();
        bytes.truncate(len.min(PAGE_SIZE));
        bytes
    }

    /// Copies up to 4 KiB of `data` to the start of the admin data page.
    fn put_page(&self, data: &[u8]) {
        let mut words = vec![0u64; PAGE_SIZE / 8];
        let n = data.len().min(PAGE_SIZE);
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..n].copy_from_slice(&data[..n]);
        let _ = self.ring.extra.copy_from(0, &words);
    }

    pub fn take_qid(&mut self) -> Option<u16> {
        let i = self.qids.iter().skip(1).position(|used| !used)? + 1;
        self.qids[i] = true;
        Some(i as u16)
    }

    pub fn release_qid(&mut self, qid: u16) {
        if let Some(q) = self.qids.get_mut(qid as usize) {
            *q = false;
        }
    }

    pub fn granted(&self) -> u16 {
        self.qids.len().saturating_sub(1) as u16
    }
}

/// Identify, namespaces, number of queues and shadow doorbells, on an
/// enabled controller.
fn bring_up(
    admin: &mut Admin,
    regs: &Mmio,
    cap: Cap,
    mem: &Memory,
    options: &Options,
) -> Result<(ControllerInfo, Vec<Namespace>, Option<DmaRegion>)> {
    // Identify Controller and namespaces into the admin ring's data page.
    let data = admin.ring.extra_iova();
    admin.execute(regs, cap, SubmissionEntry::identify_controller(data))?;
    let idc = IdentifyController::from_bytes(&admin.page(PAGE_SIZE))
        .ok_or(NvmeError::Malformed("identify controller"))?;
    let info_max = max_transfer(&idc);
    admin.execute(regs, cap, SubmissionEntry::identify_active_ns_list(0, data))?;
    let ids: Vec<u32> = active_ns_ids(&admin.page(PAGE_SIZE)).take(1024).collect();
    let mut namespaces = Vec::new();
    for id in ids {
        admin.execute(regs, cap, SubmissionEntry::identify_namespace(id, data))?;
        let ns = IdentifyNamespace::from_bytes(&admin.page(PAGE_SIZE))
            .ok_or(NvmeError::Malformed("identify namespace"))?;
        let block_size = ns.lba_size().ok_or(NvmeError::Malformed("LBA format"))?;
        let metadata = MetadataFormat::from_identify(&ns).map_err(NvmeError::Malformed)?;
        namespaces.push(Namespace {
            id,
            blocks: ns.nsze,
            block_size,
            metadata,
        });
    }
    if options.data_pointer == DataPointer::Sgl && idc.sgl_support() == SglSupport::None {
        return Err(NvmeError::InvalidArgument(
            "SGLs forced (DataPointer::Sgl) but the controller does not support them (SGLS bits 1:0 = 00b)"
                .into(),
        ));
    }
    let granted = set_num_queues(admin, regs, cap, options.io_queues)?;
    admin.qids = vec![false; granted as usize + 1];
    let dbbuf = if options.shadow_doorbells && idc.supports_doorbell_buffer_config() {
        let region = mem.region(2 * PAGE_SIZE)?;
        config_dbbuf(admin, regs, cap, &region)?;
        Some(region)
    } else {
        None
    };
    let info = ControllerInfo {
        vendor_id: idc.vid,
        serial: idc.serial(),
        model: idc.model(),
        firmware: idc.firmware(),
        version: Version(regs.read32(reg::VS)),
        max_transfer: info_max,
        max_queue_entries: cap.max_queue_entries(),
        io_queues: granted,
        supports_write_zeroes: idc.supports_write_zeroes(),
        supports_dsm: idc.supports_dsm(),
        sgl: idc.sgl_support(),
        raw: Box::new(idc),
    };
    Ok((info, namespaces, dbbuf))
}

/// Disables the controller, programs the admin queue, enables it and waits
/// for CSTS.RDY within CAP.TO.
fn enable(regs: &Mmio, cap: Cap, admin: &Ring) -> Result<()> {
    let cc = Cc(regs.read32(reg::CC));
    if cc.en() || Csts(regs.read32(reg::CSTS)).rdy() {
        regs.write32(reg::CC, cc.with_en(false).0);
    }
    wait_ready(regs, cap, false)?;
    let entries = admin.sq.size();
    let aqa =
        spec::aqa(entries, entries).ok_or(NvmeError::InvalidArgument("admin queue size".into()))?;
    regs.write32(reg::AQA, aqa);
    regs.write64(reg::ASQ, admin.sq_iova());
    regs.write64(reg::ACQ, admin.cq_iova());
    regs.write32(reg::CC, Cc::nvm(0).with_en(true).0);
    wait_ready(regs, cap, true)
}

fn wait_ready(regs: &Mmio, cap: Cap, ready: bool) -> Result<()> {
    let timeout = cap.timeout().max(Duration::from_millis(500));
    let start = Instant::now();
    loop {
        let csts = Csts(regs.read32(reg::CSTS));
        if csts.is_all_ones() {
            return Err(NvmeError::Malformed("CSTS reads all ones: device gone"));
        }
        if csts.rdy() == ready {
            return Ok(());
        }
        if ready && csts.cfs() {
            return Err(NvmeError::ControllerFatal);
        }
        if start.elapsed() > timeout {
            return Err(NvmeError::Timeout {
                what: if ready {
                    "controller enable (CSTS.RDY=1)"
                } else {
                    "controller disable (CSTS.RDY=0)"
                },
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn set_num_queues(admin: &mut Admin, regs: &Mmio, cap: Cap, want: u16) -> Result<u16> {
    let want = want.clamp(1, 0xfffe);
    let c = admin.execute(regs, cap, SubmissionEntry::set_num_queues(want, want))?;
    let n = NumQueues::from_dw0(c.dw0);
    Ok(n.sq_count.min(n.cq_count).min(want as u32) as u16)
}

/// Largest transfer of one command: MDTS in bytes, capped at 2 MiB, which
/// one PRP list page describes at any dword offset (the driver does not
/// chain PRP lists), so a command fits with PRPs and SGLs alike.
pub const MAX_COMMAND_BYTES: usize = 2 << 20;

/// MDTS in bytes, capped by [`MAX_COMMAND_BYTES`].
fn max_transfer(idc: &IdentifyController) -> usize {
    idc.mdts_bytes(PAGE_SIZE)
        .map_or(MAX_COMMAND_BYTES, |m| m.min(MAX_COMMAND_BYTES))
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.removal.is_removed() {
            return; // nothing left to shut down
        }
        // Normal shutdown (CC.SHN), so a real drive flushes its caches.
        let cc = Cc(self.regs.read32(reg::CC));
        if !cc.en() {
            return;
        }
        self.regs.write32(reg::CC, cc.with_shn(Shutdown::Normal).0);
        let start = Instant::now();
        let timeout = self.cap.timeout().max(Duration::from_secs(1));
        while Csts(self.regs.read32(reg::CSTS)).shst() != ShutdownStatus::Complete {
            if start.elapsed() > timeout {
                log::warn!("NVMe shutdown did not complete within {timeout:?}");
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        self.regs
            .write32(reg::CC, Cc(self.regs.read32(reg::CC)).with_en(false).0);
    }
}
