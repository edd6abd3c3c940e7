//! The NVMe-oF controller model: the subsystem (what is exported, who may
//! connect, the controllers that exist), Fabrics Connect for admin and I/O
//! queues, and the admin commands a host needs (NVMe over Fabrics
//! specification: "Connect", "Property Get/Set", "Keep Alive";
//! base specification: "Identify", "Get Log Page", "Set/Get Features",
//! "Asynchronous Event Request"; discovery: "Discovery Log Page").
//!
//! Everything here is pure state and byte buffers: no sockets, no device.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytemuck::Zeroable;

use crate::nvme::{
    admin_opcode, fctype, feature, nqn_str, prop, put_str, CommandFields, ConnectData, Sqe, Status,
    CONNECT_CNTLID_OFFSET, CONNECT_HOSTNQN_OFFSET, CONNECT_SUBNQN_OFFSET,
};

/// The well-known discovery subsystem NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Asynchronous Event Requests a controller holds at once (AERL + 1).
pub const AER_LIMIT: usize = 4;
/// Keep Alive granularity reported in Identify (KAS, 100 ms units).
const KAS: u16 = 10;
/// Entries of the admin queue a host may ask for (0's based limit + 1).
const ADMIN_QUEUE_MAX: u16 = 32;

/// One exported namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsInfo {
    pub id: u32,
    pub blocks: u64,
    pub block_size: u32,
}

/// What a subsystem exports and how (set once at start).
#[derive(Clone, Debug)]
pub struct Config {
    pub nqn: String,
    /// Host NQNs allowed to connect; empty: any host.
    pub allowed_hosts: Vec<String>,
    pub namespaces: Vec<NsInfo>,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// I/O queues one controller may have.
    pub max_io_queues: u16,
    /// Entries of one I/O queue (CAP.MQES + 1).
    pub queue_depth: u16,
    /// Largest transfer of one command in bytes (a power of two >= 4 KiB).
    pub max_transfer: usize,
    /// In-capsule data an I/O command may carry (IOCCSZ - 64 bytes).
    pub in_capsule: usize,
    pub volatile_write_cache: bool,
    pub write_zeroes: bool,
    pub dsm: bool,
    /// Address and port for the discovery log.
    pub traddr: String,
    pub trsvcid: String,
}

/// A controller as the I/O queues of its host see it.
#[derive(Debug)]
pub struct CtrlShared {
    pub cntlid: u16,
    pub hostnqn: String,
    pub discovery: bool,
    /// I/O queues granted (Number of Queues).
    pub io_queues: AtomicU16,
    /// Bit q set: I/O queue q is connected.
    qids: Mutex<Vec<bool>>,
    /// Keep Alive Timeout in ms (0: none).
    pub kato_ms: AtomicU32,
    /// Time of the last Keep Alive, ms since the subsystem started.
    pub last_keep_alive: AtomicU64,
    /// Set when the controller is gone (admin queue closed, keep-alive
    /// expired): its I/O queues close.
    pub dead: AtomicBool,
}

impl CtrlShared {
    /// Frees I/O queue `qid` (its connection closed).
    pub fn release_qid(&self, qid: u16) {
        if let Some(b) = self
            .qids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(qid as usize)
        {
            *b = false;
        }
    }
}

/// A subsystem: its configuration and the controllers that exist.
pub struct Subsystem {
    pub cfg: Config,
    ctrls: Mutex<Registry>,
    start: Instant,
}

struct Registry {
    next: u16,
    map: HashMap<u16, Arc<CtrlShared>>,
}

/// What a queue is after Connect.
pub enum Queue {
    Admin(AdminCtrl),
    Io { ctrl: Arc<CtrlShared>, qid: u16 },
}

/// A Connect that succeeded: the queue, its size (entries) and DW0.
pub struct Connected {
    pub queue: Queue,
    pub entries: u16,
    pub dw0: u32,
}

/// A Connect that failed: status and DW0 (IATTR/IPO for Invalid Parameters).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: Status,
    pub dw0: u32,
}

fn invalid_param(in_data: bool, offset: u16) -> Refused {
    Refused {
        status: Status::CONNECT_INVALID_PARAMETERS,
        dw0: (in_data as u32) | (offset as u32) << 16,
    }
}

impl Subsystem {
    pub fn new(cfg: Config) -> Subsystem {
        Subsystem {
            cfg,
            ctrls: Mutex::new(Registry {
                next: 1,
                map: HashMap::new(),
            }),
            start: Instant::now(),
        }
    }

    /// Milliseconds since start (the keep-alive clock).
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.ctrls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Controllers that exist.
    pub fn controllers(&self) -> usize {
        self.registry().map.len()
    }

    /// Fabrics Connect (`sqe` with its in-capsule `data`).
    pub fn connect(&self, sqe: &Sqe, data: &[u8]) -> Result<Connected, Refused> {
        let recfmt = sqe.cdw10 & 0xFFFF;
        let qid = (sqe.cdw10 >> 16) as u16;
        let sqsize = (sqe.cdw11 & 0xFFFF) as u16;
        let kato = sqe.cdw12;
        if recfmt != 0 {
            return Err(Refused {
                status: Status::CONNECT_INCOMPATIBLE_FORMAT,
                dw0: 0,
            });
        }
        if data.len() < size_of::<ConnectData>() {
            return Err(Refused {
                status: Status::SGL_DATA_LENGTH_INVALID,
                dw0: 0,
            });
        }
        let d: ConnectData = bytemuck::pod_read_unaligned(&data[..size_of::<ConnectData>()]);
        let subnqn = nqn_str(&d.subnqn).ok_or(invalid_param(true, CONNECT_SUBNQN_OFFSET))?;
        let hostnqn = nqn_str(&d.hostnqn).ok_or(invalid_param(true, CONNECT_HOSTNQN_OFFSET))?;
        let discovery = subnqn == DISCOVERY_NQN;
        if !discovery && subnqn != self.cfg.nqn {
            return Err(invalid_param(true, CONNECT_SUBNQN_OFFSET));
        }
        if hostnqn.is_empty() {
            return Err(invalid_param(true, CONNECT_HOSTNQN_OFFSET));
        }
        if !discovery
            && !self.cfg.allowed_hosts.is_empty()
            && !self.cfg.allowed_hosts.iter().any(|h| h == hostnqn)
        {
            return Err(Refused {
                status: Status::CONNECT_INVALID_HOST,
                dw0: 0,
            });
        }
        // SQSIZE is 0's based and at least 1.
        let max = if qid == 0 {
            ADMIN_QUEUE_MAX
        } else {
            self.cfg.queue_depth
        };
        if sqsize == 0 || sqsize >= max {
            return Err(invalid_param(false, 44));
        }
        if qid == 0 {
            if d.cntlid != 0xFFFF {
                // Static controller model is not offered.
                return Err(invalid_param(true, CONNECT_CNTLID_OFFSET));
            }
            let mut reg = self.registry();
            let cntlid = (0..0xFFEFu16)
                .map(|i| ((reg.next as u32 - 1 + i as u32) % 0xFFEF + 1) as u16)
                .find(|c| !reg.map.contains_key(c))
                .ok_or(Refused {
                    status: Status::CONNECT_CONTROLLER_BUSY,
                    dw0: 0,
                })?;
            reg.next = cntlid % 0xFFEF + 1;
            let shared = Arc::new(CtrlShared {
                cntlid,
                hostnqn: hostnqn.to_string(),
                discovery,
                io_queues: AtomicU16::new(if discovery { 0 } else { self.cfg.max_io_queues }),
                qids: Mutex::new(vec![false; self.cfg.max_io_queues as usize + 1]),
                kato_ms: AtomicU32::new(kato),
                last_keep_alive: AtomicU64::new(self.now_ms()),
                dead: AtomicBool::new(false),
            });
            reg.map.insert(cntlid, shared.clone());
            log::info!("controller {cntlid} for {hostnqn} ({subnqn}), kato {kato} ms");
            return Ok(Connected {
                queue: Queue::Admin(AdminCtrl::new(shared)),
                entries: sqsize + 1,
                dw0: cntlid as u32,
            });
        }
        let ctrl = self
            .registry()
            .map
            .get(&d.cntlid)
            .cloned()
            .filter(|c| c.hostnqn == hostnqn && !c.dead.load(Ordering::Acquire))
            .ok_or(invalid_param(true, CONNECT_CNTLID_OFFSET))?;
        if ctrl.discovery || qid > ctrl.io_queues.load(Ordering::Acquire) {
            return Err(invalid_param(false, 42));
        }
        let mut qids = ctrl.qids.lock().unwrap_or_else(|e| e.into_inner());
        match qids.get_mut(qid as usize) {
            Some(b) if !*b => *b = true,
            Some(_) => {
                return Err(Refused {
                    status: Status::COMMAND_SEQUENCE_ERROR,
                    dw0: 0,
                })
            }
            None => return Err(invalid_param(false, 42)),
        }
        drop(qids);
        Ok(Connected {
            queue: Queue::Io {
                ctrl: ctrl.clone(),
                qid,
            },
            entries: sqsize + 1,
            dw0: ctrl.cntlid as u32,
        })
    }

    /// Removes controller `cntlid` (its admin queue is gone).
    pub fn remove(&self, cntlid: u16) {
        if let Some(c) = self.registry().map.remove(&cntlid) {
            c.dead.store(true, Ordering::Release);
            log::info!("controller {cntlid} removed");
        }
    }
}

/// What an admin command produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Complete now with `status`, `result` (DW0, and DW1 in the high
    /// half), and `data` bytes of the output
    /// buffer to send to the host first.
    Done {
        status: Status,
        result: u64,
        data: usize,
    },
    /// Held (an Asynchronous Event Request): completed at shutdown.
    Held,
}

impl Outcome {
    fn ok(dw0: u32) -> Outcome {
        Outcome::Done {
            status: Status::SUCCESS,
            result: dw0 as u64,
            data: 0,
        }
    }
    fn data(n: usize) -> Outcome {
        Outcome::Done {
            status: Status::SUCCESS,
            result: 0,
            data: n,
        }
    }
    fn err(status: Status) -> Outcome {
        Outcome::Done {
            status,
            result: 0,
            data: 0,
        }
    }
}

/// The admin queue's view of a controller: registers, features, AERs.
pub struct AdminCtrl {
    pub shared: Arc<CtrlShared>,
    pub cc: u32,
    pub csts: u32,
    /// Command ids of held Asynchronous Event Requests.
    pub aers: Vec<u16>,
    features: [u32; 32],
}

impl AdminCtrl {
    fn new(shared: Arc<CtrlShared>) -> AdminCtrl {
        let mut features = [0u32; 32];
        features[feature::TEMPERATURE_THRESHOLD as usize] = 343; // 70 C
        AdminCtrl {
            shared,
            cc: 0,
            csts: 0,
            aers: Vec::with_capacity(AER_LIMIT),
            features,
        }
    }

    /// Whether the keep-alive timer expired at `now_ms` (with half a
    /// timeout of slack for slow hosts).
    pub fn keep_alive_expired(&self, now_ms: u64) -> bool {
        let kato = self.shared.kato_ms.load(Ordering::Relaxed) as u64;
        kato != 0 && now_ms > self.shared.last_keep_alive.load(Ordering::Relaxed) + kato + kato / 2
    }

    fn cap(&self, sub: &Subsystem) -> u64 {
        let mqes = (sub.cfg.queue_depth - 1) as u64;
        // CQR, TO = 15 (7.5 s), CSS = NVM command set, MPSMIN = MPSMAX = 4 KiB.
        mqes | 1 << 16 | 15 << 24 | 1 << 37
    }

    /// Handles one admin-queue command. `data_in` is its in-capsule data;
    /// controller-to-host data goes into `out` (cleared first).
    pub fn command(
        &mut self,
        sub: &Subsystem,
        sqe: &Sqe,
        data_in: &[u8],
        out: &mut Vec<u8>,
    ) -> Outcome {
        out.clear();
        match sqe.opcode() {
            admin_opcode::FABRICS => self.fabrics(sub, sqe),
            admin_opcode::KEEP_ALIVE => {
                self.shared
                    .last_keep_alive
                    .store(sub.now_ms(), Ordering::Relaxed);
                Outcome::ok(0)
            }
            admin_opcode::ASYNC_EVENT_REQUEST => {
                if self.aers.len() >= AER_LIMIT {
                    Outcome::err(Status::AER_LIMIT_EXCEEDED)
                } else {
                    self.aers.push(sqe.cid());
                    Outcome::Held
                }
            }
            _ if self.csts & 1 == 0 => Outcome::err(Status::COMMAND_SEQUENCE_ERROR),
            admin_opcode::IDENTIFY => self.identify(sub, sqe, out),
            admin_opcode::GET_LOG_PAGE => self.get_log_page(sub, sqe, out),
            admin_opcode::SET_FEATURES => self.set_features(sub, sqe, data_in),
            admin_opcode::GET_FEATURES => self.get_features(sqe),
            admin_opcode::ABORT => Outcome::ok(1), // not aborted
            _ => Outcome::err(Status::INVALID_OPCODE),
        }
    }

    fn fabrics(&mut self, sub: &Subsystem, sqe: &Sqe) -> Outcome {
        let eight = sqe.cdw10 & 7 == 1;
        match sqe.fctype() {
            fctype::PROPERTY_GET => {
                let v: u64 = match (sqe.cdw11, eight) {
                    (prop::CAP, true) => self.cap(sub),
                    (prop::VS, false) => 0x0001_0300,
                    (prop::CC, false) => self.cc as u64,
                    (prop::CSTS, false) => self.csts as u64,
                    _ => return Outcome::err(Status::INVALID_FIELD),
                };
                Outcome::Done {
                    status: Status::SUCCESS,
                    result: v,
                    data: 0,
                }
            }
            fctype::PROPERTY_SET => {
                if sqe.cdw11 != prop::CC || eight {
                    return Outcome::err(Status::INVALID_FIELD);
                }
                let cc = sqe.cdw12;
                let en = cc & 1 != 0;
                // IOSQES 6 and IOCQES 4 must be what we support once enabled.
                if en && (cc >> 16 & 0xF != 6 || cc >> 20 & 0xF != 4) && !self.shared.discovery {
                    self.csts |= 1 << 1; // CFS
                }
                if en {
                    self.csts |= 1;
                } else {
                    self.csts &= !1;
                }
                if cc >> 14 & 3 != 0 {
                    self.csts = (self.csts & !(3 << 2)) | 2 << 2; // SHST complete
                } else {
                    self.csts &= !(3 << 2);
                }
                self.cc = cc;
                Outcome::ok(0)
            }
            fctype::CONNECT => Outcome::err(Status::COMMAND_SEQUENCE_ERROR),
            _ => Outcome::err(Status::INVALID_OPCODE),
        }
    }

    /// Whether the host asked for shutdown (CC.SHN) or disabled us:
    /// held AERs complete then.
    pub fn shutting_down(&self) -> bool {
        self.cc >> 14 & 3 != 0 || self.cc & 1 == 0
    }

    fn identify(&mut self, sub: &Subsystem, sqe: &Sqe, out: &mut Vec<u8>) -> Outcome {
        let cns = (sqe.cdw10 & 0xFF) as u8;
        let csi = (sqe.cdw11 >> 24) as u8;
        out.resize(4096, 0);
        let ns = |id: u32| sub.cfg.namespaces.iter().find(|n| n.id == id).copied();
        match cns {
            0x01 => self.identify_controller(sub, out),
            0x00 if !self.shared.discovery => match ns(sqe.nsid) {
                Some(n) => identify_namespace(&n, &sub.cfg.serial, out),
                None => return Outcome::err(Status::INVALID_NAMESPACE),
            },
            0x02 if !self.shared.discovery => {
                let mut i = 0;
                let mut ids: Vec<u32> = sub
                    .cfg
                    .namespaces
                    .iter()
                    .map(|n| n.id)
                    .filter(|&id| id > sqe.nsid)
                    .collect();
                ids.sort_unstable();
                for id in ids.into_iter().take(1024) {
                    out[i..i + 4].copy_from_slice(&id.to_le_bytes());
                    i += 4;
                }
            }
            0x03 if !self.shared.discovery => match ns(sqe.nsid) {
                Some(n) => {
                    // NIDT 2 (NGUID), NIDL 16; then NIDT 3 (UUID), NIDL 16.
                    let g = nguid(&sub.cfg.serial, n.id);
                    out[0] = 2;
                    out[1] = 16;
                    out[4..20].copy_from_slice(&g);
                    out[20] = 3;
                    out[21] = 16;
                    let mut u = g;
                    u[6] = (u[6] & 0x0F) | 0x40;
                    u[8] = (u[8] & 0x3F) | 0x80;
                    out[24..40].copy_from_slice(&u);
                }
                None => return Outcome::err(Status::INVALID_NAMESPACE),
            },
            // I/O command set specific controller for NVM: no limits.
            0x06 if csi == 0 && !self.shared.discovery => {}
            _ => return Outcome::err(Status::INVALID_FIELD),
        }
        Outcome::data(4096)
    }

    fn identify_controller(&self, sub: &Subsystem, out: &mut [u8]) {
        let c = &sub.cfg;
        let disc = self.shared.discovery;
        out[0..2].copy_from_slice(&0x1b36u16.to_le_bytes()); // VID
        out[2..4].copy_from_slice(&0x1b36u16.to_le_bytes()); // SSVID
        put_str(&mut out[4..24], &c.serial, b' ');
        put_str(&mut out[24..64], &c.model, b' ');
        put_str(&mut out[64..72], &c.firmware, b' ');
        out[72] = 6; // RAB
        out[76] = if disc { 0 } else { 1 << 1 }; // CMIC: several controllers
        out[77] = if disc {
            0
        } else {
            (c.max_transfer / 4096).trailing_zeros() as u8
        }; // MDTS
        out[78..80].copy_from_slice(&self.shared.cntlid.to_le_bytes());
        out[80..84].copy_from_slice(&0x0001_0300u32.to_le_bytes()); // VER 1.3
        out[111] = if disc { 2 } else { 1 }; // CNTRLTYPE
        out[258] = 3; // ACL
        out[259] = (AER_LIMIT - 1) as u8; // AERL
        out[261] = 1 << 2; // LPA: extended data for Get Log Page
        out[262] = 0; // ELPE: 1 entry
        out[320..322].copy_from_slice(&KAS.to_le_bytes());
        out[512] = 0x66; // SQES
        out[513] = 0x44; // CQES
        out[514..516].copy_from_slice(&c.queue_depth.to_le_bytes()); // MAXCMD
        let nn = if disc {
            0
        } else {
            c.namespaces.iter().map(|n| n.id).max().unwrap_or(0)
        };
        out[516..520].copy_from_slice(&nn.to_le_bytes());
        let oncs: u16 = if disc {
            0
        } else {
            (c.dsm as u16) << 2 | (c.write_zeroes as u16) << 3
        };
        out[520..522].copy_from_slice(&oncs.to_le_bytes());
        out[525] = if c.volatile_write_cache && !disc {
            1
        } else {
            0
        }; // VWC
           // SGLS: SGLs supported (no alignment), offsets in in-capsule data.
        out[536..540].copy_from_slice(&(1u32 | 1 << 20).to_le_bytes());
        put_str(
            &mut out[768..1024],
            if disc { DISCOVERY_NQN } else { &c.nqn },
            0,
        );
        let ioccsz = ((64 + c.in_capsule) / 16) as u32;
        out[1792..1796].copy_from_slice(&ioccsz.to_le_bytes()); // IOCCSZ
        out[1796..1800].copy_from_slice(&1u32.to_le_bytes()); // IORCSZ: 16 bytes
        out[1800..1802].copy_from_slice(&0u16.to_le_bytes()); // ICDOFF
        out[1802] = 0; // FCATT: dynamic controller model
        out[1803] = 0; // MSDBD
                       // Power state 0: 25 W max (MP in 0.01 W).
        out[2048..2050].copy_from_slice(&2500u16.to_le_bytes());
    }

    fn get_log_page(&self, sub: &Subsystem, sqe: &Sqe, out: &mut Vec<u8>) -> Outcome {
        let lid = (sqe.cdw10 & 0xFF) as u8;
        let numd = ((sqe.cdw10 >> 16) | (sqe.cdw11 & 0xFFFF) << 16) as usize + 1;
        let len = numd * 4;
        let offset = sqe.cdw12 as u64 | (sqe.cdw13 as u64) << 32;
        let page: Vec<u8> = match lid {
            0x01 => vec![0; 64],                            // Error Information: empty
            0x02 if !self.shared.discovery => smart_log(),  // SMART / Health
            0x03 if !self.shared.discovery => vec![0; 512], // Firmware Slot
            0x70 if self.shared.discovery => discovery_log(&sub.cfg),
            _ => return Outcome::err(Status::INVALID_LOG_PAGE),
        };
        if offset & 3 != 0 || offset > page.len() as u64 {
            return Outcome::err(Status::INVALID_FIELD);
        }
        let from = offset as usize;
        let n = len.min(page.len() - from);
        out.clear();
        out.extend_from_slice(&page[from..from + n]);
        // The host asked for `len`: the rest reads as zeroes.
        out.resize(len.min(1 << 20), 0);
        Outcome::data(out.len())
    }

    fn set_features(&mut self, sub: &Subsystem, sqe: &Sqe, _data: &[u8]) -> Outcome {
        let fid = (sqe.cdw10 & 0xFF) as u8;
        if sqe.cdw10 >> 31 != 0 {
            return Outcome::err(Status::FEATURE_NOT_SAVEABLE);
        }
        let v = sqe.cdw11;
        match fid {
            feature::NUMBER_OF_QUEUES => {
                if self.shared.discovery {
                    return Outcome::err(Status::INVALID_FIELD);
                }
                let (nsq, ncq) = (v & 0xFFFF, v >> 16);
                if nsq == 0xFFFF || ncq == 0xFFFF {
                    return Outcome::err(Status::INVALID_FIELD);
                }
                let want = nsq.min(ncq) + 1;
                let n = want.min(sub.cfg.max_io_queues as u32) as u16;
                self.shared.io_queues.store(n, Ordering::Release);
                let r = (n - 1) as u32;
                self.features[fid as usize] = r | r << 16;
                Outcome::ok(r | r << 16)
            }
            feature::KEEP_ALIVE_TIMER => {
                self.shared.kato_ms.store(v, Ordering::Relaxed);
                self.shared
                    .last_keep_alive
                    .store(sub.now_ms(), Ordering::Relaxed);
                Outcome::ok(0)
            }
            feature::VOLATILE_WRITE_CACHE if !sub.cfg.volatile_write_cache => {
                Outcome::err(Status::INVALID_FIELD)
            }
            feature::ARBITRATION
            | feature::POWER_MANAGEMENT
            | feature::TEMPERATURE_THRESHOLD
            | feature::VOLATILE_WRITE_CACHE
            | feature::INTERRUPT_COALESCING
            | feature::WRITE_ATOMICITY
            | feature::ASYNC_EVENT_CONFIG => {
                self.features[fid as usize] = v;
                Outcome::ok(0)
            }
            _ => Outcome::err(Status::INVALID_FIELD),
        }
    }

    fn get_features(&self, sqe: &Sqe) -> Outcome {
        let fid = (sqe.cdw10 & 0xFF) as u8;
        match fid {
            feature::KEEP_ALIVE_TIMER => Outcome::ok(self.shared.kato_ms.load(Ordering::Relaxed)),
            feature::NUMBER_OF_QUEUES => {
                let r = self.shared.io_queues.load(Ordering::Acquire).max(1) as u32 - 1;
                Outcome::ok(r | r << 16)
            }
            feature::ARBITRATION
            | feature::POWER_MANAGEMENT
            | feature::TEMPERATURE_THRESHOLD
            | feature::VOLATILE_WRITE_CACHE
            | feature::INTERRUPT_COALESCING
            | feature::WRITE_ATOMICITY
            | feature::ASYNC_EVENT_CONFIG => Outcome::ok(self.features[fid as usize]),
            _ => Outcome::err(Status::INVALID_FIELD),
        }
    }
}

/// A namespace's NGUID: derived from the serial and the id (stable).
pub fn nguid(serial: &str, nsid: u32) -> [u8; 16] {
    let a = crc32c::crc32c(serial.as_bytes());
    let b = crc32c::crc32c_append(a, &nsid.to_le_bytes());
    let c = crc32c::crc32c_append(b, b"fastlane");
    let mut g = [0u8; 16];
    g[0..4].copy_from_slice(&a.to_be_bytes());
    g[4..8].copy_from_slice(&b.to_be_bytes());
    g[8..12].copy_from_slice(&c.to_be_bytes());
    g[12..16].copy_from_slice(&nsid.to_be_bytes());
    g
}

fn identify_namespace(n: &NsInfo, serial: &str, out: &mut [u8]) {
    out[0..8].copy_from_slice(&n.blocks.to_le_bytes()); // NSZE
    out[8..16].copy_from_slice(&n.blocks.to_le_bytes()); // NCAP
    out[16..24].copy_from_slice(&n.blocks.to_le_bytes()); // NUSE
    out[25] = 0; // NLBAF: one format
    out[26] = 0; // FLBAS
    out[30] = 1; // NMIC: may be attached to several controllers
    out[104..120].copy_from_slice(&nguid(serial, n.id));
    // LBAF0: no metadata, LBADS = log2(block size).
    out[130] = n.block_size.trailing_zeros() as u8;
}

fn smart_log() -> Vec<u8> {
    let mut p = vec![0u8; 512];
    p[1..3].copy_from_slice(&298u16.to_le_bytes()); // 25 C in Kelvin
    p[3] = 100; // available spare
    p[4] = 10; // available spare threshold
    p
}

/// The discovery log page: a header and one entry for the subsystem.
fn discovery_log(c: &Config) -> Vec<u8> {
    let mut p = vec![0u8; 2048];
    p[0..8].copy_from_slice(&1u64.to_le_bytes()); // GENCTR
    p[8..16].copy_from_slice(&1u64.to_le_bytes()); // NUMREC
    let e = &mut p[1024..2048];
    e[0] = 3; // TRTYPE: TCP
    e[1] = 1; // ADRFAM: IPv4
    e[2] = 2; // SUBTYPE: NVM subsystem
    e[3] = 0x02; // TREQ: secure channel not required
    e[4..6].copy_from_slice(&1u16.to_le_bytes()); // PORTID
    e[6..8].copy_from_slice(&0xFFFFu16.to_le_bytes()); // CNTLID: dynamic
    e[8..10].copy_from_slice(&(ADMIN_QUEUE_MAX).to_le_bytes()); // ASQSZ
    put_str(&mut e[32..64], &c.trsvcid, b' ');
    put_str(&mut e[256..512], &c.nqn, 0);
    put_str(&mut e[512..768], &c.traddr, b' ');
    // TSAS for TCP: SECTYPE 0 (none).
    p
}

/// A zeroed submission entry (tests and the client).
pub fn sqe() -> Sqe {
    Sqe::zeroed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            nqn: "nqn.2026-01.io.fastlane:test".into(),
            allowed_hosts: vec![],
            namespaces: vec![NsInfo {
                id: 1,
                blocks: 1 << 19,
                block_size: 512,
            }],
            serial: "fastlane0001".into(),
            model: "fastlane nvmf-tcp".into(),
            firmware: "1.0".into(),
            max_io_queues: 2,
            queue_depth: 128,
            max_transfer: 128 << 10,
            in_capsule: 8192,
            volatile_write_cache: true,
            write_zeroes: true,
            dsm: true,
            traddr: "127.0.0.1".into(),
            trsvcid: "4420".into(),
        }
    }

    fn connect_cmd(
        qid: u16,
        sqsize: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
    ) -> (Sqe, Vec<u8>) {
        let mut s = sqe();
        s.cdw0 = admin_opcode::FABRICS as u32;
        s.nsid = fctype::CONNECT as u32;
        s.cdw10 = (qid as u32) << 16;
        s.cdw11 = sqsize as u32;
        s.cdw12 = 5000;
        let mut d = ConnectData::zeroed();
        d.cntlid = cntlid;
        put_str(&mut d.subnqn, subnqn, 0);
        put_str(&mut d.hostnqn, hostnqn, 0);
        (s, bytemuck::bytes_of(&d).to_vec())
    }

    fn admin(sub: &Subsystem, host: &str) -> (AdminCtrl, u16) {
        let (s, d) = connect_cmd(0, 31, 0xFFFF, &sub.cfg.nqn, host);
        let c = sub.connect(&s, &d).unwrap();
        match c.queue {
            Queue::Admin(a) => (a, c.dw0 as u16),
            _ => panic!(),
        }
    }

    fn prop_set(a: &mut AdminCtrl, sub: &Subsystem, off: u32, v: u32) -> Outcome {
        let mut s = sqe();
        s.cdw0 = admin_opcode::FABRICS as u32;
        s.nsid = fctype::PROPERTY_SET as u32;
        s.cdw11 = off;
        s.cdw12 = v;
        a.command(sub, &s, &[], &mut Vec::new())
    }

    #[test]
    fn connect_admin_then_io_queues() {
        let sub = Subsystem::new(cfg());
        let (a, c1) = admin(&sub, "nqn.host1");
        let (_b, c2) = admin(&sub, "nqn.host2");
        assert_ne!(c1, c2);
        assert_eq!(sub.controllers(), 2);
        let (s, d) = connect_cmd(1, 127, c1, &sub.cfg.nqn, "nqn.host1");
        assert!(sub.connect(&s, &d).is_ok());
        // Same queue twice.
        assert_eq!(
            sub.connect(&s, &d).err().unwrap().status,
            Status::COMMAND_SEQUENCE_ERROR
        );
        a.shared.release_qid(1);
        assert!(sub.connect(&s, &d).is_ok());
        // Too many queues, too deep, wrong host, wrong controller.
        let (s, d) = connect_cmd(3, 127, c1, &sub.cfg.nqn, "nqn.host1");
        assert_eq!(sub.connect(&s, &d).err().unwrap(), invalid_param(false, 42));
        let (s, d) = connect_cmd(2, 128, c1, &sub.cfg.nqn, "nqn.host1");
        assert_eq!(sub.connect(&s, &d).err().unwrap(), invalid_param(false, 44));
        let (s, d) = connect_cmd(2, 127, c1, &sub.cfg.nqn, "nqn.host2");
        assert!(sub.connect(&s, &d).is_err());
        let (s, d) = connect_cmd(2, 127, 999, &sub.cfg.nqn, "nqn.host1");
        assert!(sub.connect(&s, &d).is_err());
        sub.remove(c1);
        let (s, d) = connect_cmd(2, 127, c1, &sub.cfg.nqn, "nqn.host1");
        assert!(sub.connect(&s, &d).is_err());
        assert!(a.shared.dead.load(Ordering::Acquire));
    }

    #[test]
    fn connect_refusals() {
        let mut c = cfg();
        c.allowed_hosts = vec!["nqn.good".into()];
        let sub = Subsystem::new(c);
        let (s, d) = connect_cmd(0, 31, 0xFFFF, &sub.cfg.nqn, "nqn.bad");
        assert_eq!(
            sub.connect(&s, &d).err().unwrap().status,
            Status::CONNECT_INVALID_HOST
        );
        let (s, d) = connect_cmd(0, 31, 0xFFFF, "nqn.other", "nqn.good");
        assert_eq!(
            sub.connect(&s, &d).err().unwrap(),
            invalid_param(true, CONNECT_SUBNQN_OFFSET)
        );
        let (s, d) = connect_cmd(0, 31, 0xFFFF, &sub.cfg.nqn, "nqn.good");
        assert_eq!(
            sub.connect(&s, &d[..100]).err().unwrap().status,
            Status::SGL_DATA_LENGTH_INVALID
        );
        assert!(sub.connect(&s, &d).is_ok());
        // Discovery is open to any host.
        let (s, d) = connect_cmd(0, 31, 0xFFFF, DISCOVERY_NQN, "nqn.bad");
        assert!(sub.connect(&s, &d).is_ok());
    }

    #[test]
    fn enable_identify_features_and_aer() {
        let sub = Subsystem::new(cfg());
        let (mut a, cntlid) = admin(&sub, "nqn.h");
        let mut out = Vec::new();
        let mut id = sqe();
        id.cdw0 = admin_opcode::IDENTIFY as u32;
        id.cdw10 = 1;
        // Not enabled yet.
        assert_eq!(
            a.command(&sub, &id, &[], &mut out),
            Outcome::err(Status::COMMAND_SEQUENCE_ERROR)
        );
        assert_eq!(
            prop_set(&mut a, &sub, prop::CC, 1 | 6 << 16 | 4 << 20),
            Outcome::ok(0)
        );
        assert_eq!(a.csts & 1, 1);
        assert_eq!(a.command(&sub, &id, &[], &mut out), Outcome::data(4096));
        assert_eq!(u16::from_le_bytes([out[78], out[79]]), cntlid);
        assert_eq!(
            u32::from_le_bytes(out[1792..1796].try_into().unwrap()),
            (64 + 8192) / 16
        );
        assert_eq!(out[77], 5); // 128 KiB
        assert_eq!(nqn_str(&out[768..1024]), Some(sub.cfg.nqn.as_str()));
        // Namespace, list, descriptors.
        id.cdw10 = 0;
        id.nsid = 1;
        assert_eq!(a.command(&sub, &id, &[], &mut out), Outcome::data(4096));
        assert_eq!(u64::from_le_bytes(out[0..8].try_into().unwrap()), 1 << 19);
        assert_eq!(out[130], 9);
        id.nsid = 2;
        assert_eq!(
            a.command(&sub, &id, &[], &mut out),
            Outcome::err(Status::INVALID_NAMESPACE)
        );
        id.cdw10 = 2;
        id.nsid = 0;
        a.command(&sub, &id, &[], &mut out);
        assert_eq!(&out[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        id.cdw10 = 3;
        id.nsid = 1;
        a.command(&sub, &id, &[], &mut out);
        assert_eq!((out[0], out[1]), (2, 16));
        // Number of queues: asks 8, gets 2.
        let mut f = sqe();
        f.cdw0 = admin_opcode::SET_FEATURES as u32;
        f.cdw10 = 7;
        f.cdw11 = 7 | 7 << 16;
        assert_eq!(a.command(&sub, &f, &[], &mut out), Outcome::ok(1 | 1 << 16));
        f.cdw11 = 0;
        assert_eq!(a.command(&sub, &f, &[], &mut out), Outcome::ok(0));
        assert_eq!(a.shared.io_queues.load(Ordering::Acquire), 1);
        // Keep alive timer.
        f.cdw10 = 0x0F;
        f.cdw11 = 1000;
        a.command(&sub, &f, &[], &mut out);
        f.cdw0 = admin_opcode::GET_FEATURES as u32;
        assert_eq!(a.command(&sub, &f, &[], &mut out), Outcome::ok(1000));
        let now = sub.now_ms();
        assert!(!a.keep_alive_expired(now));
        assert!(a.keep_alive_expired(now + 1600));
        // AERs held up to the limit.
        let mut aer = sqe();
        aer.cdw0 = admin_opcode::ASYNC_EVENT_REQUEST as u32;
        for _ in 0..AER_LIMIT {
            assert_eq!(a.command(&sub, &aer, &[], &mut out), Outcome::Held);
        }
        assert_eq!(
            a.command(&sub, &aer, &[], &mut out),
            Outcome::err(Status::AER_LIMIT_EXCEEDED)
        );
        // Unknown opcode, SMART, bad log page.
        let mut x = sqe();
        x.cdw0 = 0xC5;
        assert_eq!(
            a.command(&sub, &x, &[], &mut out),
            Outcome::err(Status::INVALID_OPCODE)
        );
        x.cdw0 = admin_opcode::GET_LOG_PAGE as u32;
        x.cdw10 = 2 | 127 << 16;
        assert_eq!(a.command(&sub, &x, &[], &mut out), Outcome::data(512));
        x.cdw10 = 0x70 | 255 << 16;
        assert_eq!(
            a.command(&sub, &x, &[], &mut out),
            Outcome::err(Status::INVALID_LOG_PAGE)
        );
        // Shutdown.
        prop_set(&mut a, &sub, prop::CC, 1 | 6 << 16 | 4 << 20 | 1 << 14);
        assert_eq!(a.csts >> 2 & 3, 2);
        assert!(a.shutting_down());
    }

    #[test]
    fn property_get_cap_and_discovery_log() {
        let sub = Subsystem::new(cfg());
        let (s, d) = connect_cmd(0, 31, 0xFFFF, DISCOVERY_NQN, "nqn.h");
        let Queue::Admin(mut a) = sub.connect(&s, &d).unwrap().queue else {
            panic!()
        };
        let mut g = sqe();
        g.cdw0 = admin_opcode::FABRICS as u32;
        g.nsid = fctype::PROPERTY_GET as u32;
        g.cdw10 = 1;
        g.cdw11 = prop::CAP;
        let mut out = Vec::new();
        let cap = 127 | 1 << 16 | 15 << 24 | 1 << 37;
        assert_eq!(
            a.command(&sub, &g, &[], &mut out),
            Outcome::Done {
                status: Status::SUCCESS,
                result: cap,
                data: 0
            }
        );
        prop_set(&mut a, &sub, prop::CC, 1);
        let mut x = sqe();
        x.cdw0 = admin_opcode::GET_LOG_PAGE as u32;
        x.cdw10 = 0x70 | (1024 / 4 - 1) << 16;
        assert_eq!(a.command(&sub, &x, &[], &mut out), Outcome::data(1024));
        assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), 1);
        x.cdw10 = 0x70 | (1024 / 4 - 1) << 16;
        x.cdw12 = 1024;
        a.command(&sub, &x, &[], &mut out);
        assert_eq!(out[0], 3);
        assert_eq!(nqn_str(&out[256..512]), Some(sub.cfg.nqn.as_str()));
        // A discovery controller has no namespaces.
        let mut id = sqe();
        id.cdw0 = admin_opcode::IDENTIFY as u32;
        id.nsid = 1;
        assert_eq!(
            a.command(&sub, &id, &[], &mut out),
            Outcome::err(Status::INVALID_FIELD)
        );
    }
}
