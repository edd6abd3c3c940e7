//! One NVMe/TCP connection (one queue of one controller): the receive
//! state machine (header, padding, data, data digest) over a non-blocking
//! kernel socket, command dispatch (Connect, admin commands through
//! [`crate::admin`], I/O commands to the backing queue pair), and the
//! transmit queue (CapsuleResp, R2T, C2HData whose data goes from the DMA
//! buffer to the socket with `writev`, no copy).
//!
//! Syscalls are what a target costs (most of all under emulation), so
//! headers come in through a small stage: one `recv` takes every command
//! capsule that has arrived, and what is queued to send goes out gathered
//! in one `writev` per pass (the responses, then one C2HData header and its
//! data straight from the DMA buffer). Data of reads and writes moves
//! between the socket and pool buffers with [`DmaBuf::read_from_fd`] /
//! [`DmaBuf::write_to_fd`]; only write data that arrived in the same `recv`
//! as headers before it is copied from the stage, and the stage reads
//! headers exactly (no look-ahead) once a connection carries write data.
//! Command slots, the stage and the transmit ring are allocated once per
//! connection.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use fastlane_framework::{BufferPool, DmaBuf};
use fastlane_nvme::{IoQueuePair, NvmeError, Rejected};

use crate::admin::{Outcome, Queue, Subsystem};
use crate::nvme::{admin_opcode, fctype, io_opcode, sgl_id, CommandFields, Cqe, Sqe, Status};
use crate::pdu::{
    self, check_header, common, fes, flags, parse_header, pdu_type, CapsuleResp, CommonHeader,
    DataHdr, Digests, Direction, IcPdu, Pdu, PduError, R2t, TermReq, DIGEST_LEN,
};

/// Room for the largest header plus its digest.
const HDR_BUF: usize = pdu::MAX_HLEN + DIGEST_LEN;
/// PDUs handled per call of [`Conn::poll_rx`] before others get a turn.
const RX_BUDGET: usize = 64;
/// Receive stage: room for 56 command capsules (72 bytes each).
const STAGE: usize = 4096;
/// Bytes gathered into one `writev` before the data (responses, headers).
const GATHER: usize = 8192;

/// Bytes received ahead of the state machine, and whether the socket had
/// nothing more (a short read or `EAGAIN`: wait for the next edge).
struct Stage {
    buf: Box<[u8; STAGE]>,
    at: usize,
    end: usize,
    drained: bool,
}

impl Stage {
    fn buffered(&self) -> usize {
        self.end - self.at
    }

    /// Up to `out.len()` bytes: from the stage, else from one `recv` of up
    /// to `ahead` bytes (at least `out.len()`). Ok(None): nothing now.
    fn take(&mut self, sock: &TcpStream, out: &mut [u8], ahead: bool) -> io::Result<Option<usize>> {
        if out.is_empty() {
            return Ok(Some(0));
        }
        if self.at == self.end {
            if self.drained {
                return Ok(None);
            }
            let want = if ahead { STAGE } else { out.len().min(STAGE) };
            self.at = 0;
            self.end = 0;
            match (&mut &*sock).read(&mut self.buf[..want]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.end = n;
                    self.drained = n < want;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some(0)),
                Err(e) => return Err(e),
            }
        }
        let n = out.len().min(self.buffered());
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(Some(n))
    }
}

/// Where a command slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for a buffer or for room on the device queue.
    Pending,
    /// In-capsule or H2CData data arriving.
    Receiving,
    /// R2T sent, H2CData expected.
    AwaitData,
    /// On the device.
    Device,
    /// C2HData being sent.
    Sending,
}

/// One command in flight on an I/O queue.
struct Slot {
    state: SlotState,
    cid: u16,
    opcode: u8,
    nsid: u32,
    lba: u64,
    nlb: u32,
    len: u32,
    /// Bytes of write data received so far.
    got: u32,
    buf: Option<DmaBuf>,
}

impl Slot {
    fn free() -> Slot {
        Slot {
            state: SlotState::Free,
            cid: 0,
            opcode: 0,
            nsid: 0,
            lba: 0,
            nlb: 0,
            len: 0,
            got: 0,
            buf: None,
        }
    }
}

/// Where incoming data goes.
#[derive(Clone, Copy, Debug)]
enum Dest {
    /// The connection's scratch buffer (admin data, DSM ranges).
    Scratch,
    /// A slot's DMA buffer at the slot's `got` offset.
    Slot(u16),
    /// Nowhere (data of a refused command, Termination Request data).
    Discard,
}

#[derive(Clone, Copy, Debug)]
enum Rx {
    Header,
    Pad { left: usize },
    Data { dest: Dest, left: usize },
    DataDigest { have: usize },
}

/// A PDU (or PDUs) waiting to be sent.
enum Tx {
    /// Up to 64 bytes of header(s).
    Small { bytes: [u8; 64], len: u8 },
    /// Bytes built on the admin path.
    Owned(Vec<u8>),
    /// C2HData: `head`, then `len` bytes of a slot's buffer (the data
    /// digest and the CapsuleResp follow as a `Small`).
    Data {
        slot: u16,
        head: [u8; 32],
        head_len: u8,
        len: u32,
    },
}

/// What a connection needs from its worker.
pub struct Ctx<'a> {
    pub sub: &'a Subsystem,
    pub qp: &'a mut IoQueuePair,
    pub pool: &'a BufferPool,
    /// Tag base for this connection's device commands (slot in low bits).
    pub tag: u64,
    pub digests_allowed: bool,
}

/// Connection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    AwaitIcReq,
    Ready,
    /// Sending what is queued (a Termination Request), then closed.
    Closing,
    Closed,
}

/// One queue's TCP connection.
pub struct Conn {
    sock: TcpStream,
    pub phase: Phase,
    /// Commands received (the worker follows its busiest connection's CPU).
    pub commands: u64,
    digests: Digests,
    pub queue: Option<Queue>,
    qid: u16,
    sqhd: u16,
    entries: u16,
    rx: Rx,
    hdr: [u8; HDR_BUF],
    hdr_have: usize,
    hdr_need: usize,
    stage: Stage,
    /// Whether the last PDU carried data (then headers are read exactly,
    /// so write data does not land in the stage).
    data_stream: bool,
    /// The PDU being received: its layout and, for a capsule, its command.
    layout: Option<pdu::Layout>,
    cmd: Option<Sqe>,
    ddgst: [u8; DIGEST_LEN],
    /// CRC32C of the data received so far (data digest).
    crc: u32,
    /// Where the data of the PDU being received goes.
    pending_dest: Dest,
    scratch: Vec<u8>,
    scratch_len: usize,
    admin_out: Vec<u8>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    pending: VecDeque<u16>,
    tx: VecDeque<Tx>,
    tx_sent: usize,
    /// The socket took less than offered (wait for room).
    tx_blocked: bool,
    /// Gathered bytes of one `writev` (allocated once).
    gather: Vec<u8>,
    /// Bytes copied to compute digests over DMA buffers.
    crc_buf: Box<[u8; 4096]>,
}

/// Largest in-capsule data on the admin queue (the Linux host assumes 8 KiB).
const ADMIN_IN_CAPSULE: usize = 8192;

impl Conn {
    pub fn new(sock: TcpStream) -> io::Result<Conn> {
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        Ok(Conn {
            sock,
            phase: Phase::AwaitIcReq,
            digests: Digests::default(),
            queue: None,
            qid: 0,
            sqhd: 0,
            entries: 1,
            rx: Rx::Header,
            hdr: [0; HDR_BUF],
            hdr_have: 0,
            hdr_need: 8,
            stage: Stage {
                buf: Box::new([0; STAGE]),
                at: 0,
                end: 0,
                drained: false,
            },
            data_stream: false,
            layout: None,
            cmd: None,
            ddgst: [0; DIGEST_LEN],
            crc: 0,
            pending_dest: Dest::Discard,
            scratch: vec![0; ADMIN_IN_CAPSULE.max(4096)],
            scratch_len: 0,
            admin_out: Vec::with_capacity(4096),
            slots: Vec::new(),
            free: Vec::new(),
            pending: VecDeque::new(),
            tx: VecDeque::with_capacity(64),
            tx_sent: 0,
            tx_blocked: false,
            gather: Vec::with_capacity(GATHER + 64),
            crc_buf: Box::new([0; 4096]),
            commands: 0,
        })
    }

    /// Bytes received but not handled yet (handle them without waiting
    /// for the socket).
    pub fn rx_buffered(&self) -> bool {
        self.stage.buffered() > 0
    }

    /// Whether the last [`Conn::poll_rx`] saw the socket empty (then only
    /// a new readiness edge brings more).
    pub fn rx_drained(&self) -> bool {
        self.stage.drained
    }

    /// Something is queued to send.
    pub fn has_tx(&self) -> bool {
        !self.tx.is_empty()
    }

    /// The socket had no room for what is queued.
    pub fn tx_blocked(&self) -> bool {
        self.tx_blocked
    }

    /// Commands wait for a buffer or device queue room.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The controller this connection belongs to, if connected.
    pub fn cntlid(&self) -> Option<u16> {
        match &self.queue {
            Some(Queue::Admin(a)) => Some(a.shared.cntlid),
            Some(Queue::Io { ctrl, .. }) => Some(ctrl.cntlid),
            None => None,
        }
    }

    /// Periodic checks: keep-alive expiry on an admin queue, controller
    /// gone on an I/O queue.
    pub fn tick(&mut self, sub: &Subsystem) {
        let gone = match &self.queue {
            Some(Queue::Admin(a)) => {
                let expired = a.keep_alive_expired(sub.now_ms());
                if expired {
                    log::warn!("controller {}: keep-alive timeout expired", a.shared.cntlid);
                }
                expired
            }
            Some(Queue::Io { ctrl, .. }) => ctrl.dead.load(Ordering::Acquire),
            None => false,
        };
        if gone {
            self.phase = Phase::Closed;
        }
    }

    /// Releases what the connection holds in the subsystem (its
    /// controller, or its queue id). Buffers go back to the pool when the
    /// slots drop; those on the device come back with their completion.
    pub fn close(&mut self, sub: &Subsystem) {
        match self.queue.take() {
            Some(Queue::Admin(a)) => sub.remove(a.shared.cntlid),
            Some(Queue::Io { ctrl, qid }) => ctrl.release_qid(qid),
            None => {}
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        self.phase = Phase::Closed;
    }

    /// Ends the connection with a C2HTermReq for `err` (the offending
    /// header travels with it).
    fn fatal(&mut self, err: PduError) {
        log::warn!("connection (qid {}): {err}", self.qid);
        let n = self.hdr_have.min(pdu::TERM_DATA_MAX);
        let t = TermReq::c2h(&err, n);
        let mut v = bytemuck::bytes_of(&t).to_vec();
        v.extend_from_slice(&self.hdr[..n]);
        self.tx.push_back(Tx::Owned(v));
        self.phase = Phase::Closing;
    }

    // ---------------------------------------------------------------- rx

    /// Handles what the stage holds and, if the socket is `readable`,
    /// what it has (one `recv` when it holds less than a stage), up to a
    /// budget. Returns whether anything happened.
    pub fn poll_rx(&mut self, ctx: &mut Ctx<'_>, readable: bool) -> bool {
        self.stage.drained = !readable;
        let mut progress = false;
        let mut pdus = 0;
        while self.phase == Phase::AwaitIcReq || self.phase == Phase::Ready {
            match self.rx_step(ctx) {
                Ok(true) => {
                    progress = true;
                    if matches!(self.rx, Rx::Header) && self.hdr_have == 0 {
                        pdus += 1;
                        if pdus >= RX_BUDGET {
                            break;
                        }
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    progress = true;
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        log::info!("connection (qid {}): {e}", self.qid);
                    }
                    self.phase = Phase::Closed;
                }
            }
        }
        progress
    }

    /// One read from the socket and what follows from it. Ok(false): the
    /// socket has nothing now.
    fn rx_step(&mut self, ctx: &mut Ctx<'_>) -> io::Result<bool> {
        match self.rx {
            Rx::Header => {
                let ahead = !self.data_stream;
                let n = self.stage.take(
                    &self.sock,
                    &mut self.hdr[self.hdr_have..self.hdr_need],
                    ahead,
                )?;
                let Some(n) = n else { return Ok(false) };
                self.hdr_have += n;
                if self.hdr_have < self.hdr_need {
                    return Ok(true);
                }
                if self.hdr_need == 8 {
                    let ch: CommonHeader = bytemuck::pod_read_unaligned(&self.hdr[..8]);
                    let max = self.max_data(ch.pdu_type);
                    match check_header(&ch, Direction::HostToController, self.digests, max) {
                        Ok(l) => {
                            self.hdr_need = l.header_len;
                            self.layout = Some(l);
                            if l.header_len > 8 {
                                return Ok(true);
                            }
                        }
                        Err(e) => {
                            self.fatal(e);
                            return Ok(true);
                        }
                    }
                }
                self.header_done(ctx);
                Ok(true)
            }
            Rx::Pad { left } => {
                let mut junk = [0u8; 256];
                let Some(n) = self
                    .stage
                    .take(&self.sock, &mut junk[..left.min(256)], false)?
                else {
                    return Ok(false);
                };
                self.rx = if n == left {
                    self.data_state()
                } else {
                    Rx::Pad { left: left - n }
                };
                if n == left {
                    self.maybe_pdu_done(ctx);
                }
                Ok(true)
            }
            Rx::Data { dest, left } => {
                let n = match dest {
                    Dest::Scratch => {
                        let at = self.scratch_len;
                        self.stage
                            .take(&self.sock, &mut self.scratch[at..at + left], false)?
                    }
                    Dest::Discard => {
                        let mut junk = [0u8; 4096];
                        self.stage
                            .take(&self.sock, &mut junk[..left.min(4096)], false)?
                    }
                    Dest::Slot(s) => {
                        let slot = &mut self.slots[s as usize];
                        let off = slot.got as usize;
                        let Some(buf) = slot.buf.as_mut() else {
                            return Err(io::Error::other("receiving into a slot without a buffer"));
                        };
                        let st = &mut self.stage;
                        if st.buffered() > 0 {
                            // Arrived with the header: copy it from the stage.
                            let k = left.min(st.buffered());
                            buf.write(off, &st.buf[st.at..st.at + k])
                                .map_err(io::Error::other)?;
                            st.at += k;
                            Some(k)
                        } else if st.drained {
                            None
                        } else {
                            match buf.read_from_fd(off, left, self.sock.as_fd()) {
                                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                                Ok(n) => {
                                    st.drained = n < left;
                                    Some(n)
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    st.drained = true;
                                    None
                                }
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => Some(0),
                                Err(e) => return Err(e),
                            }
                        }
                    }
                };
                let Some(n) = n else { return Ok(false) };
                if self.digests.data {
                    self.crc_received(dest, n);
                }
                match dest {
                    Dest::Scratch => self.scratch_len += n,
                    Dest::Slot(s) => self.slots[s as usize].got += n as u32,
                    Dest::Discard => {}
                }
                if n == left {
                    self.rx = if self.layout.is_some_and(|l| l.ddgst_len > 0) {
                        Rx::DataDigest { have: 0 }
                    } else {
                        Rx::Header
                    };
                    self.maybe_pdu_done(ctx);
                } else {
                    self.rx = Rx::Data {
                        dest,
                        left: left - n,
                    };
                }
                Ok(true)
            }
            Rx::DataDigest { have } => {
                let Some(n) = self
                    .stage
                    .take(&self.sock, &mut self.ddgst[have..], false)?
                else {
                    return Ok(false);
                };
                if have + n < DIGEST_LEN {
                    self.rx = Rx::DataDigest { have: have + n };
                    return Ok(true);
                }
                self.rx = Rx::Header;
                if u32::from_le_bytes(self.ddgst) != self.crc {
                    // Data digest error: the command fails (transport spec
                    // 7.4.6.1: a Transient Transport Error), or the
                    // connection ends.
                    self.fatal(PduError {
                        fes: fes::HEADER_DIGEST_ERROR,
                        fei: 0,
                        what: "data digest mismatch",
                    });
                    return Ok(true);
                }
                self.maybe_pdu_done(ctx);
                Ok(true)
            }
        }
    }

    /// Data bytes one PDU of `ty` may carry on this connection.
    fn max_data(&self, ty: u8) -> usize {
        match (ty, &self.queue) {
            (pdu_type::CAPSULE_CMD, Some(Queue::Io { .. })) => ctx_in_capsule(self),
            (pdu_type::CAPSULE_CMD, _) => ADMIN_IN_CAPSULE,
            (pdu_type::H2C_DATA, _) => ctx_max_transfer(self),
            _ => pdu::TERM_DATA_MAX,
        }
    }

    /// Feeds `n` just-received bytes of `dest` to the data digest.
    fn crc_received(&mut self, dest: Dest, n: usize) {
        match dest {
            Dest::Scratch => {
                let at = self.scratch_len;
                self.crc = crc32c::crc32c_append(self.crc, &self.scratch[at..at + n]);
            }
            Dest::Slot(s) => {
                let slot = &self.slots[s as usize];
                if let Some(buf) = &slot.buf {
                    let mut off = slot.got as usize;
                    let end = off + n;
                    while off < end {
                        let k = (end - off).min(self.crc_buf.len());
                        if buf.read(off, &mut self.crc_buf[..k]).is_err() {
                            break;
                        }
                        self.crc = crc32c::crc32c_append(self.crc, &self.crc_buf[..k]);
                        off += k;
                    }
                }
            }
            Dest::Discard => {}
        }
    }

    fn data_state(&self) -> Rx {
        Rx::Data {
            dest: self.data_dest(),
            left: self.layout.map_or(0, |l| l.data_len),
        }
    }

    fn data_dest(&self) -> Dest {
        self.pending_dest
    }

    /// A complete header arrived: decode it and set up what follows.
    fn header_done(&mut self, ctx: &mut Ctx<'_>) {
        let Some(layout) = self.layout else { return };
        let pdu = match parse_header(&self.hdr[..layout.header_len], &layout) {
            Ok(p) => p,
            Err(e) => return self.fatal(e),
        };
        self.crc = 0;
        self.scratch_len = 0;
        self.pending_dest = Dest::Discard;
        self.data_stream = layout.data_len > 0;
        match pdu {
            Pdu::IcReq(req) => return self.icreq(&req, ctx),
            _ if self.phase == Phase::AwaitIcReq => {
                return self.fatal(PduError {
                    fes: fes::PDU_SEQUENCE_ERROR,
                    fei: 0,
                    what: "PDU before ICReq",
                })
            }
            Pdu::TermReq(t) => {
                log::warn!(
                    "host terminated the connection (qid {}): status {:#x}",
                    self.qid,
                    t.fes
                );
                self.phase = Phase::Closed;
                return;
            }
            Pdu::CapsuleCmd(c) => {
                self.cmd = Some(c.sqe);
                self.pending_dest = self.capsule_dest(&c.sqe, layout.data_len, ctx);
            }
            Pdu::H2CData(d) => match self.h2c_dest(&d) {
                Ok(dest) => self.pending_dest = dest,
                Err(e) => return self.fatal(e),
            },
            _ => {
                return self.fatal(PduError {
                    fes: fes::INVALID_HEADER_FIELD,
                    fei: 0,
                    what: "unexpected PDU type",
                })
            }
        }
        self.rx = if layout.pad > 0 {
            Rx::Pad { left: layout.pad }
        } else {
            self.data_state()
        };
        if layout.pad == 0 {
            self.maybe_pdu_done(ctx);
        }
    }

    /// Called whenever a receive stage ends: when the whole PDU is in,
    /// acts on it and gets ready for the next header.
    fn maybe_pdu_done(&mut self, ctx: &mut Ctx<'_>) {
        let done = match self.rx {
            Rx::Header => true,
            Rx::Data { left: 0, .. } => {
                if self
                    .layout
                    .is_some_and(|l| l.ddgst_len > 0 && l.data_len > 0)
                {
                    self.rx = Rx::DataDigest { have: 0 };
                    false
                } else {
                    self.rx = Rx::Header;
                    true
                }
            }
            _ => false,
        };
        if !done || self.phase == Phase::Closing || self.phase == Phase::Closed {
            return;
        }
        self.hdr_have = 0;
        self.hdr_need = 8;
        let layout = self.layout.take();
        if let Some(sqe) = self.cmd.take() {
            self.command(sqe, layout.map_or(0, |l| l.data_len), ctx);
        } else if let Dest::Slot(s) = self.pending_dest {
            let slot = &mut self.slots[s as usize];
            if slot.got == slot.len {
                self.submit_slot(s, ctx);
            } else {
                slot.state = SlotState::AwaitData;
            }
        }
    }

    fn icreq(&mut self, req: &IcPdu, ctx: &mut Ctx<'_>) {
        if self.phase != Phase::AwaitIcReq {
            return self.fatal(PduError {
                fes: fes::PDU_SEQUENCE_ERROR,
                fei: 0,
                what: "second ICReq",
            });
        }
        if req.pfv != 0 {
            return self.fatal(PduError {
                fes: fes::INVALID_HEADER_FIELD,
                fei: 8,
                what: "PFV not 0",
            });
        }
        if req.hpda_cpda != 0 {
            // We place C2HData right after the header: only HPDA 0.
            return self.fatal(PduError {
                fes: fes::UNSUPPORTED_PARAMETER,
                fei: 10,
                what: "HPDA not 0",
            });
        }
        let dgst = if ctx.digests_allowed { req.dgst & 3 } else { 0 };
        let resp = IcPdu::resp(dgst, ctx.sub.cfg.max_transfer as u32);
        self.tx
            .push_back(Tx::Owned(bytemuck::bytes_of(&resp).to_vec()));
        self.digests = Digests {
            header: dgst & 1 != 0,
            data: dgst & 2 != 0,
        };
        self.phase = Phase::Ready;
        self.hdr_have = 0;
        self.hdr_need = 8;
        self.layout = None;
        self.rx = Rx::Header;
    }

    // ---------------------------------------------------------- commands

    /// Decides where a capsule's in-capsule data goes (before it arrives).
    fn capsule_dest(&mut self, sqe: &Sqe, data_len: usize, ctx: &mut Ctx<'_>) -> Dest {
        if data_len == 0 {
            return Dest::Discard;
        }
        let io_write =
            matches!(self.queue, Some(Queue::Io { .. })) && sqe.opcode() == io_opcode::WRITE;
        if !io_write {
            return if data_len <= self.scratch.len() {
                Dest::Scratch
            } else {
                Dest::Discard
            };
        }
        // In-capsule write data straight into the command's buffer.
        match self.start_write(sqe, data_len, ctx) {
            Some(s) => Dest::Slot(s),
            None => Dest::Discard,
        }
    }

    /// An H2CData PDU: which slot its data belongs to.
    fn h2c_dest(&mut self, d: &DataHdr) -> Result<Dest, PduError> {
        let bad = |fei, what| PduError {
            fes: fes::INVALID_HEADER_FIELD,
            fei,
            what,
        };
        let slot = self
            .slots
            .get_mut(d.ttag as usize)
            .ok_or(bad(10, "unknown TTAG"))?;
        if slot.state != SlotState::AwaitData || slot.cid != d.cccid {
            return Err(bad(8, "H2CData for no outstanding R2T"));
        }
        if d.datao != slot.got || d.datal.checked_add(d.datao).is_none_or(|e| e > slot.len) {
            return Err(PduError {
                fes: fes::DATA_OUT_OF_RANGE,
                fei: 12,
                what: "H2CData outside the R2T",
            });
        }
        if self.layout.is_some_and(|l| l.data_len != d.datal as usize) {
            return Err(bad(16, "DATAL does not match PLEN"));
        }
        slot.state = SlotState::Receiving;
        Ok(Dest::Slot(d.ttag))
    }

    /// A whole capsule (and its data) arrived.
    fn command(&mut self, sqe: Sqe, data_len: usize, ctx: &mut Ctx<'_>) {
        self.commands += 1;
        self.sqhd = (self.sqhd + 1) % self.entries.max(1);
        match self.queue {
            None => self.connect(&sqe, data_len, ctx),
            Some(Queue::Admin(_)) => self.admin(&sqe, data_len, ctx),
            Some(Queue::Io { .. }) => self.io(&sqe, data_len, ctx),
        }
    }

    fn connect(&mut self, sqe: &Sqe, data_len: usize, ctx: &mut Ctx<'_>) {
        if sqe.opcode() != admin_opcode::FABRICS || sqe.fctype() != fctype::CONNECT {
            return self.respond(sqe.cid(), Status::COMMAND_SEQUENCE_ERROR, 0);
        }
        let data = &self.scratch[..self.scratch_len.min(data_len)];
        match ctx.sub.connect(sqe, data) {
            Ok(c) => {
                self.entries = c.entries;
                self.sqhd = 1 % c.entries;
                if let Queue::Io { qid, .. } = &c.queue {
                    self.qid = *qid;
                    self.slots = (0..c.entries).map(|_| Slot::free()).collect();
                    self.free = (0..c.entries).rev().collect();
                    self.pending = VecDeque::with_capacity(c.entries as usize);
                    self.tx = VecDeque::with_capacity(2 * c.entries as usize + 8);
                }
                self.queue = Some(c.queue);
                self.respond(sqe.cid(), Status::SUCCESS, c.dw0 as u64);
            }
            Err(r) => {
                log::warn!("connect refused: {:?}", r.status);
                self.respond(sqe.cid(), r.status, r.dw0 as u64);
            }
        }
    }

    fn admin(&mut self, sqe: &Sqe, data_len: usize, ctx: &mut Ctx<'_>) {
        let Some(Queue::Admin(a)) = &mut self.queue else {
            return;
        };
        let data = &self.scratch[..self.scratch_len.min(data_len)];
        let out = a.command(ctx.sub, sqe, data, &mut self.admin_out);
        let shutting =
            a.shutting_down() && !a.aers.is_empty() && sqe.opcode() == admin_opcode::FABRICS;
        match out {
            Outcome::Held => {}
            Outcome::Done {
                status,
                result,
                data,
            } => {
                let n = data.min(sqe.sgl().length as usize);
                if n > 0 && status.is_success() {
                    self.send_owned_data(sqe.cid(), n, result);
                } else {
                    self.respond(sqe.cid(), status, result);
                }
            }
        }
        if shutting {
            self.abort_aers();
        }
    }

    /// Completes held AERs (controller shut down or disabled).
    fn abort_aers(&mut self) {
        let cids = match &mut self.queue {
            Some(Queue::Admin(a)) => std::mem::take(&mut a.aers),
            _ => return,
        };
        for cid in cids {
            self.respond(cid, Status::ABORT_SQ_DELETION, 0);
        }
    }

    /// C2HData from `admin_out[..n]`, then the response.
    fn send_owned_data(&mut self, cid: u16, n: usize, result: u64) {
        let d = self.digests;
        let h = DataHdr {
            hdr: common(pdu_type::C2H_DATA, 24, n, flags::LAST_PDU, d),
            cccid: cid,
            ttag: 0,
            datao: 0,
            datal: n as u32,
            rsvd: 0,
        };
        let mut v = vec![0u8; 28];
        let hl = pdu::put_header(&h, d, &mut v);
        v.truncate(hl);
        v.extend_from_slice(&self.admin_out[..n]);
        if d.data {
            v.extend_from_slice(&crc32c::crc32c(&self.admin_out[..n]).to_le_bytes());
        }
        let mut r = [0u8; 64];
        let rl = self.resp_bytes(cid, Status::SUCCESS, result, &mut r);
        v.extend_from_slice(&r[..rl]);
        self.tx.push_back(Tx::Owned(v));
    }

    fn resp_bytes(&self, cid: u16, status: Status, result: u64, out: &mut [u8]) -> usize {
        let r = CapsuleResp {
            hdr: common(pdu_type::CAPSULE_RESP, 24, 0, 0, self.digests),
            cqe: Cqe {
                dw0: result as u32,
                dw1: (result >> 32) as u32,
                sq_head: self.sqhd,
                sq_id: self.qid,
                cid,
                status: status.field(),
            },
        };
        pdu::put_header(&r, self.digests, out)
    }

    /// Queues a CapsuleResp.
    fn respond(&mut self, cid: u16, status: Status, result: u64) {
        let mut bytes = [0u8; 64];
        let len = self.resp_bytes(cid, status, result, &mut bytes) as u8;
        self.tx.push_back(Tx::Small { bytes, len });
    }

    fn ns_block_size(&self, ctx: &Ctx<'_>, nsid: u32) -> Option<(u32, u64)> {
        ctx.sub
            .cfg
            .namespaces
            .iter()
            .find(|n| n.id == nsid)
            .map(|n| (n.block_size, n.blocks))
    }

    /// Takes a slot for command `sqe` (None: none free).
    fn take_slot(&mut self, sqe: &Sqe, len: u32) -> Option<u16> {
        let s = self.free.pop()?;
        let slot = &mut self.slots[s as usize];
        *slot = Slot {
            state: SlotState::Pending,
            cid: sqe.cid(),
            opcode: sqe.opcode(),
            nsid: sqe.nsid,
            lba: sqe.slba(),
            nlb: sqe.nlb(),
            len,
            got: 0,
            buf: None,
        };
        Some(s)
    }

    fn release(&mut self, s: u16) {
        let slot = &mut self.slots[s as usize];
        slot.state = SlotState::Free;
        slot.buf = None;
        self.free.push(s);
    }

    /// Checks a read or write: its length in bytes, or the status to
    /// complete it with.
    fn rw_len(&self, sqe: &Sqe, ctx: &Ctx<'_>) -> Result<u32, Status> {
        let (bs, blocks) = self
            .ns_block_size(ctx, sqe.nsid)
            .ok_or(Status::INVALID_NAMESPACE)?;
        let len = sqe.nlb() as u64 * bs as u64;
        if sqe
            .slba()
            .checked_add(sqe.nlb() as u64)
            .is_none_or(|e| e > blocks)
        {
            return Err(Status::LBA_OUT_OF_RANGE);
        }
        if len > ctx.sub.cfg.max_transfer as u64 {
            return Err(Status::INVALID_FIELD);
        }
        if !sqe.psdt_sgl() || sqe.sgl().length as u64 != len {
            return Err(Status::SGL_DATA_LENGTH_INVALID);
        }
        Ok(len as u32)
    }

    /// A Write with `data_len` in-capsule bytes (0: data by R2T). Returns
    /// the slot to receive into, or None (refused, response queued).
    fn start_write(&mut self, sqe: &Sqe, data_len: usize, ctx: &mut Ctx<'_>) -> Option<u16> {
        let refuse = |c: &mut Conn, st| {
            c.respond(sqe.cid(), st, 0);
            None
        };
        let len = match self.rw_len(sqe, ctx) {
            Ok(l) => l,
            Err(st) => return refuse(self, st),
        };
        let want_id = if data_len > 0 {
            sgl_id::IN_CAPSULE
        } else {
            sgl_id::TRANSPORT
        };
        if sqe.sgl().identifier != want_id
            || (data_len > 0 && (data_len != len as usize || sqe.sgl().address != 0))
        {
            return refuse(self, Status::SGL_TYPE_INVALID);
        }
        let Some(s) = self.take_slot(sqe, len) else {
            return refuse(self, Status::INTERNAL);
        };
        match ctx.pool.alloc() {
            Ok(b) => {
                self.slots[s as usize].buf = Some(b);
                self.slots[s as usize].state = if data_len > 0 {
                    SlotState::Receiving
                } else {
                    SlotState::AwaitData
                };
            }
            Err(_) => {
                if data_len > 0 {
                    // No buffer to receive into now: refuse, retryable.
                    self.release(s);
                    self.respond(
                        sqe.cid(),
                        Status {
                            dnr: false,
                            ..Status::INTERNAL
                        },
                        0,
                    );
                    return None;
                }
                self.pending.push_back(s);
            }
        }
        Some(s)
    }

    fn io(&mut self, sqe: &Sqe, data_len: usize, ctx: &mut Ctx<'_>) {
        match sqe.opcode() {
            io_opcode::WRITE if data_len > 0 => {
                // Data already in the slot (Dest::Slot) or refused.
                if let Dest::Slot(s) = self.pending_dest {
                    self.submit_slot(s, ctx);
                }
            }
            io_opcode::WRITE => {
                if let Some(s) = self.start_write(sqe, 0, ctx) {
                    if self.slots[s as usize].state == SlotState::AwaitData {
                        self.send_r2t(s);
                    }
                }
            }
            io_opcode::READ => {
                let len = match self.rw_len(sqe, ctx) {
                    Ok(l) => l,
                    Err(st) => return self.respond(sqe.cid(), st, 0),
                };
                if sqe.sgl().identifier != sgl_id::TRANSPORT {
                    return self.respond(sqe.cid(), Status::SGL_TYPE_INVALID, 0);
                }
                let Some(s) = self.take_slot(sqe, len) else {
                    return self.respond(sqe.cid(), Status::INTERNAL, 0);
                };
                self.submit_slot(s, ctx);
            }
            io_opcode::FLUSH | io_opcode::WRITE_ZEROES => {
                if self.ns_block_size(ctx, sqe.nsid).is_none() {
                    return self.respond(sqe.cid(), Status::INVALID_NAMESPACE, 0);
                }
                let Some(s) = self.take_slot(sqe, 0) else {
                    return self.respond(sqe.cid(), Status::INTERNAL, 0);
                };
                self.submit_slot(s, ctx);
            }
            io_opcode::DATASET_MANAGEMENT => self.dsm(sqe, data_len, ctx),
            _ => self.respond(sqe.cid(), Status::INVALID_OPCODE, 0),
        }
    }

    fn dsm(&mut self, sqe: &Sqe, data_len: usize, ctx: &mut Ctx<'_>) {
        let nr = (sqe.cdw10 & 0xFF) as usize + 1;
        if self.ns_block_size(ctx, sqe.nsid).is_none() {
            return self.respond(sqe.cid(), Status::INVALID_NAMESPACE, 0);
        }
        if data_len < nr * 16 || self.scratch_len < nr * 16 {
            return self.respond(sqe.cid(), Status::SGL_DATA_LENGTH_INVALID, 0);
        }
        if sqe.cdw11 & (1 << 2) == 0 || !ctx.sub.cfg.dsm {
            // Only deallocate does anything; integral hints are advice.
            return self.respond(sqe.cid(), Status::SUCCESS, 0);
        }
        let mut ranges = [(0u64, 0u32); 256];
        for (i, r) in ranges.iter_mut().enumerate().take(nr) {
            let e = &self.scratch[i * 16..i * 16 + 16];
            let nlb = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let slba = u64::from_le_bytes([e[8], e[9], e[10], e[11], e[12], e[13], e[14], e[15]]);
            *r = (slba, nlb);
        }
        let Some(s) = self.take_slot(sqe, 0) else {
            return self.respond(sqe.cid(), Status::INTERNAL, 0);
        };
        let tag = ctx.tag | s as u64;
        match ctx.qp.deallocate(sqe.nsid, &ranges[..nr], tag) {
            Ok(()) => self.slots[s as usize].state = SlotState::Device,
            Err(r) => {
                self.release(s);
                self.respond(sqe.cid(), status_of(&r.error), 0);
            }
        }
    }

    fn send_r2t(&mut self, s: u16) {
        let slot = &self.slots[s as usize];
        let r = R2t {
            hdr: common(pdu_type::R2T, 24, 0, 0, self.digests),
            cccid: slot.cid,
            ttag: s,
            r2to: 0,
            r2tl: slot.len,
            rsvd: 0,
        };
        let mut bytes = [0u8; 64];
        let len = pdu::put_header(&r, self.digests, &mut bytes) as u8;
        self.tx.push_back(Tx::Small { bytes, len });
    }

    /// Puts slot `s`'s command on the device (getting a buffer first when
    /// it needs one); on a full device queue or an empty pool it waits in
    /// `pending`.
    fn submit_slot(&mut self, s: u16, ctx: &mut Ctx<'_>) {
        let tag = ctx.tag | s as u64;
        let slot = &mut self.slots[s as usize];
        let needs_buf = matches!(slot.opcode, io_opcode::READ | io_opcode::WRITE);
        if needs_buf && slot.buf.is_none() {
            match ctx.pool.alloc() {
                Ok(b) => slot.buf = Some(b),
                Err(_) => {
                    slot.state = SlotState::Pending;
                    self.pending.push_back(s);
                    return;
                }
            }
        }
        if slot.opcode == io_opcode::WRITE
            && slot.state == SlotState::Pending
            && slot.got < slot.len
        {
            // Got its buffer only now: ask for the data.
            slot.state = SlotState::AwaitData;
            return self.send_r2t(s);
        }
        let nsid = slot.nsid;
        let bs = self.ns_block_size(ctx, nsid).map_or(512, |b| b.0);
        let slot = &mut self.slots[s as usize];
        let blocks = slot.len / bs;
        let r: Result<(), Rejected> = match (slot.opcode, slot.buf.take()) {
            (io_opcode::READ, Some(b)) => ctx.qp.read(slot.nsid, slot.lba, blocks, b, tag),
            (io_opcode::WRITE, Some(b)) => ctx.qp.write(slot.nsid, slot.lba, blocks, b, tag),
            (io_opcode::FLUSH, _) => ctx.qp.flush(slot.nsid, tag),
            (io_opcode::WRITE_ZEROES, _) => ctx.qp.write_zeroes(slot.nsid, slot.lba, slot.nlb, tag),
            (_, buf) => Err(Rejected {
                error: NvmeError::InvalidArgument("no buffer or opcode".into()),
                buf,
            }),
        };
        match r {
            Ok(()) => slot.state = SlotState::Device,
            Err(Rejected {
                error: NvmeError::QueueFull,
                buf,
            }) => {
                slot.buf = buf;
                slot.state = SlotState::Pending;
                self.pending.push_back(s);
            }
            Err(r) => {
                let cid = slot.cid;
                self.release(s);
                self.respond(cid, status_of(&r.error), 0);
            }
        }
    }

    /// Retries commands that waited for a buffer or device queue room.
    /// Returns whether any got further.
    pub fn retry_pending(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let before = self.pending.len();
        for _ in 0..before {
            let Some(s) = self.pending.pop_front() else {
                break;
            };
            if self.slots[s as usize].state == SlotState::Pending {
                self.submit_slot(s, ctx);
            }
        }
        self.pending.len() < before
    }

    /// A device completion for slot `s` (from the tag).
    pub fn complete(&mut self, s: u16, buf: Option<DmaBuf>, result: Result<(), NvmeError>) {
        let Some(slot) = self.slots.get_mut(s as usize) else {
            return;
        };
        if slot.state != SlotState::Device {
            return;
        }
        slot.buf = buf;
        let cid = slot.cid;
        match result {
            Ok(()) if slot.opcode == io_opcode::READ => {
                slot.state = SlotState::Sending;
                let len = slot.len;
                let d = self.digests;
                let h = DataHdr {
                    hdr: common(pdu_type::C2H_DATA, 24, len as usize, flags::LAST_PDU, d),
                    cccid: cid,
                    ttag: 0,
                    datao: 0,
                    datal: len,
                    rsvd: 0,
                };
                let mut head = [0u8; 32];
                let head_len = pdu::put_header(&h, d, &mut head) as u8;
                let mut tail = [0u8; 64];
                let mut tl = 0;
                if d.data {
                    let c = self.crc_of_slot(s, len as usize);
                    tail[..4].copy_from_slice(&c.to_le_bytes());
                    tl = 4;
                }
                tl += self.resp_bytes(cid, Status::SUCCESS, 0, &mut tail[tl..]);
                self.tx.push_back(Tx::Data {
                    slot: s,
                    head,
                    head_len,
                    len,
                });
                self.tx.push_back(Tx::Small {
                    bytes: tail,
                    len: tl as u8,
                });
            }
            r => {
                self.release(s);
                let st = match r {
                    Ok(()) => Status::SUCCESS,
                    Err(e) => status_of(&e),
                };
                self.respond(cid, st, 0);
            }
        }
    }

    fn crc_of_slot(&mut self, s: u16, len: usize) -> u32 {
        let mut crc = 0;
        if let Some(buf) = &self.slots[s as usize].buf {
            let mut off = 0;
            while off < len {
                let k = (len - off).min(self.crc_buf.len());
                if buf.read(off, &mut self.crc_buf[..k]).is_err() {
                    break;
                }
                crc = crc32c::crc32c_append(crc, &self.crc_buf[..k]);
                off += k;
            }
        }
        crc
    }

    // ---------------------------------------------------------------- tx

    /// Sends what is queued until the socket would block: each `writev`
    /// gathers the queued small PDUs (responses, R2Ts, the previous
    /// C2HData's response) and the next C2HData header, then that
    /// C2HData's data straight from its DMA buffer. Returns whether
    /// anything was sent.
    pub fn poll_tx(&mut self) -> bool {
        let mut progress = false;
        self.tx_blocked = false;
        while !self.tx.is_empty() {
            self.gather.clear();
            // (slot, offset in its buffer, bytes) of the data after `gather`.
            let mut data = None;
            for (k, item) in self.tx.iter().enumerate() {
                let skip = if k == 0 { self.tx_sent } else { 0 };
                match item {
                    Tx::Small { bytes, len } => {
                        if k > 0 && self.gather.len() + bytes.len() > GATHER {
                            break;
                        }
                        self.gather.extend_from_slice(&bytes[skip..*len as usize]);
                    }
                    Tx::Owned(v) => {
                        if k > 0 && self.gather.len() + v.len() > GATHER {
                            break;
                        }
                        self.gather.extend_from_slice(&v[skip..]);
                    }
                    Tx::Data {
                        slot,
                        head,
                        head_len,
                        len,
                    } => {
                        let hl = *head_len as usize;
                        let off = skip.saturating_sub(hl);
                        self.gather.extend_from_slice(&head[skip.min(hl)..hl]);
                        data = Some((*slot, off, (*len as usize).saturating_sub(off)));
                        break;
                    }
                }
            }
            let r = match data {
                Some((s, off, n)) => {
                    match self.slots.get(s as usize).and_then(|sl| sl.buf.as_ref()) {
                        Some(buf) => buf.write_to_fd(&self.gather, off, n, self.sock.as_fd()),
                        None => Err(io::Error::other("C2HData without a buffer")),
                    }
                }
                None => (&self.sock).write(&self.gather),
            };
            match r {
                Ok(0) => {
                    self.phase = Phase::Closed;
                    break;
                }
                Ok(n) => {
                    progress = true;
                    self.advance_tx(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tx_blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::info!("connection (qid {}): send: {e}", self.qid);
                    self.phase = Phase::Closed;
                    break;
                }
            }
        }
        if self.phase == Phase::Closing && self.tx.is_empty() {
            self.phase = Phase::Closed;
        }
        progress
    }

    /// Drops `n` sent bytes off the front of the queue (a C2HData's slot
    /// is free once its data is sent).
    fn advance_tx(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.tx.front() else { break };
            let total = match front {
                Tx::Small { len, .. } => *len as usize,
                Tx::Owned(v) => v.len(),
                Tx::Data { head_len, len, .. } => *head_len as usize + *len as usize,
            };
            let rest = total.saturating_sub(self.tx_sent);
            if n < rest {
                self.tx_sent += n;
                return;
            }
            n -= rest;
            self.tx_sent = 0;
            if let Some(Tx::Data { slot, .. }) = self.tx.pop_front() {
                self.release(slot);
            }
        }
    }

    /// The socket, for readiness polling.
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

fn ctx_in_capsule(c: &Conn) -> usize {
    // In-capsule data of an I/O command: checked against IOCCSZ by the
    // command (rw_len); the transport bound is the scratch size or a
    // whole transfer, whichever is larger.
    c.scratch.len().max(ADMIN_IN_CAPSULE)
}

fn ctx_max_transfer(c: &Conn) -> usize {
    // H2CData never carries more than the R2T asked for; h2c_dest checks
    // it against the slot. Bound the PDU by the largest slot.
    c.slots
        .iter()
        .map(|s| s.len as usize)
        .max()
        .unwrap_or(0)
        .max(1)
}

/// The NVMe status a host sees for a driver error.
pub fn status_of(e: &NvmeError) -> Status {
    match e {
        NvmeError::Status(s) => Status {
            sct: s.sct,
            sc: s.sc,
            dnr: s.dnr,
        },
        NvmeError::LbaOutOfRange { .. } => Status::LBA_OUT_OF_RANGE,
        NvmeError::InvalidNamespace(_) => Status::INVALID_NAMESPACE,
        NvmeError::InvalidArgument(_)
        | NvmeError::TooLarge { .. }
        | NvmeError::BufferTooSmall { .. } => Status::INVALID_FIELD,
        NvmeError::Timeout { .. } | NvmeError::Reset => Status {
            dnr: false,
            ..Status::ABORT_SQ_DELETION
        },
        _ => Status {
            dnr: false,
            ..Status::INTERNAL
        },
    }
}
