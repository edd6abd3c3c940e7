//! A minimal NVMe/TCP host written against the transport specification
//! with std only (its own byte layouts and CRC32C, not the target's
//! code), for the target's host tests and its guest test
//! (tests/guest_nvmf.rs includes this file). It can also misbehave on
//! purpose: raw bytes go out through [`Client::raw`].
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// CRC32C (Castagnoli), bitwise.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub status: u16,
}

impl Cqe {
    pub fn sc(&self) -> u8 {
        (self.status >> 1) as u8
    }
    pub fn sct(&self) -> u8 {
        ((self.status >> 9) & 7) as u8
    }
    pub fn ok(&self) -> bool {
        self.status >> 1 == 0
    }
}

/// A 64-byte command.
#[derive(Clone, Copy)]
pub struct Cmd(pub [u8; 64]);

impl Cmd {
    pub fn new(opcode: u8, nsid: u32) -> Cmd {
        let mut c = [0u8; 64];
        c[0] = opcode;
        c[1] = 0x40; // PSDT: SGL
        c[4..8].copy_from_slice(&nsid.to_le_bytes());
        Cmd(c)
    }
    pub fn cdw(mut self, n: usize, v: u32) -> Cmd {
        self.0[n * 4..n * 4 + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    /// SGL1: address, length, identifier.
    pub fn sgl(mut self, addr: u64, len: u32, id: u8) -> Cmd {
        self.0[24..32].copy_from_slice(&addr.to_le_bytes());
        self.0[32..36].copy_from_slice(&len.to_le_bytes());
        self.0[39] = id;
        self
    }
}

/// A PDU received from the target.
#[derive(Debug)]
pub struct Pdu {
    pub ty: u8,
    pub flags: u8,
    pub header: Vec<u8>,
    pub data: Vec<u8>,
}

pub struct Client {
    pub sock: TcpStream,
    pub hd: bool,
    pub dd: bool,
    pub cntlid: u16,
    next_cid: u16,
}

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

impl Client {
    /// TCP connection and ICReq/ICResp asking for `digests` (header, data).
    pub fn connect(addr: &str, digests: (bool, bool)) -> io::Result<Client> {
        let sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut c = Client {
            sock,
            hd: false,
            dd: false,
            cntlid: 0,
            next_cid: 1,
        };
        let mut ic = [0u8; 128];
        ic[0] = 0; // ICReq
        ic[2] = 128;
        ic[4..8].copy_from_slice(&128u32.to_le_bytes());
        ic[11] = digests.0 as u8 | (digests.1 as u8) << 1;
        c.sock.write_all(&ic)?;
        let p = c.recv()?;
        if p.ty != 1 || p.header.len() != 128 {
            return Err(io::Error::other(format!("expected ICResp, got {p:?}")));
        }
        c.hd = p.header[11] & 1 != 0;
        c.dd = p.header[11] & 2 != 0;
        Ok(c)
    }

    pub fn raw(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        self.next_cid
    }

    /// Receives one PDU (checking digests).
    pub fn recv(&mut self) -> io::Result<Pdu> {
        let mut ch = [0u8; 8];
        self.sock.read_exact(&mut ch)?;
        let (ty, flags, hlen, pdo) = (ch[0], ch[1], ch[2] as usize, ch[3] as usize);
        let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
        if plen < 8 || hlen < 8 || plen > (4 << 20) {
            return Err(io::Error::other(format!("bad PDU header {ch:?}")));
        }
        let mut rest = vec![0u8; plen - 8];
        self.sock.read_exact(&mut rest)?;
        let mut all = ch.to_vec();
        all.extend_from_slice(&rest);
        let hd = if flags & 1 != 0 { 4 } else { 0 };
        if hlen + hd > plen {
            return Err(io::Error::other("HLEN beyond PLEN"));
        }
        if hd != 0 && crc32c(&all[..hlen]).to_le_bytes() != all[hlen..hlen + 4] {
            return Err(io::Error::other("header digest mismatch"));
        }
        let header = all[..hlen].to_vec();
        let dd = if flags & 2 != 0 { 4 } else { 0 };
        let data = if pdo > 0 && pdo + dd <= plen {
            all[pdo..plen - dd].to_vec()
        } else if ty == 3 {
            all[hlen..].to_vec()
        } else {
            vec![]
        };
        if dd != 0 && crc32c(&data).to_le_bytes() != all[plen - 4..plen] {
            return Err(io::Error::other("data digest mismatch"));
        }
        Ok(Pdu {
            ty,
            flags,
            header,
            data,
        })
    }

    fn header(&self, ty: u8, hlen: usize, data_len: usize, extra: u8) -> Vec<u8> {
        let hd = if self.hd { 4 } else { 0 };
        let dd = if self.dd && data_len > 0 { 4 } else { 0 };
        let mut h = vec![0u8; hlen];
        h[0] = ty;
        h[1] = extra | if hd != 0 { 1 } else { 0 } | if dd != 0 { 2 } else { 0 };
        h[2] = hlen as u8;
        h[3] = if data_len > 0 { (hlen + hd) as u8 } else { 0 };
        h[4..8].copy_from_slice(&((hlen + hd + data_len + dd) as u32).to_le_bytes());
        h
    }

    fn finish(&self, mut h: Vec<u8>, data: &[u8]) -> Vec<u8> {
        if self.hd {
            let c = crc32c(&h);
            h.extend_from_slice(&c.to_le_bytes());
        }
        h.extend_from_slice(data);
        if self.dd && !data.is_empty() {
            h.extend_from_slice(&crc32c(data).to_le_bytes());
        }
        h
    }

    /// The bytes of a command capsule (with in-capsule `data`), for
    /// sending several at once; returns its cid too.
    pub fn capsule(&mut self, mut cmd: Cmd, data: &[u8]) -> (u16, Vec<u8>) {
        let cid = self.cid();
        cmd.0[2..4].copy_from_slice(&cid.to_le_bytes());
        let mut h = self.header(4, 72, data.len(), 0);
        h[8..72].copy_from_slice(&cmd.0);
        (cid, self.finish(h, data))
    }

    /// Sends a command capsule (with in-capsule `data`); returns its cid.
    pub fn send_cmd(&mut self, cmd: Cmd, data: &[u8]) -> io::Result<u16> {
        let (cid, b) = self.capsule(cmd, data);
        self.sock.write_all(&b)?;
        Ok(cid)
    }

    /// Collects the responses to `n` commands in any order: status field
    /// and C2HData bytes by cid.
    pub fn responses(&mut self, n: usize) -> io::Result<HashMap<u16, (u16, Vec<u8>)>> {
        let mut data: HashMap<u16, Vec<u8>> = HashMap::new();
        let mut done = HashMap::new();
        while done.len() < n {
            let p = self.recv()?;
            let cid = u16::from_le_bytes([p.header[8], p.header[9]]);
            match p.ty {
                7 => data.entry(cid).or_default().extend_from_slice(&p.data),
                5 => {
                    let cid = u16::from_le_bytes([p.header[20], p.header[21]]);
                    let status = u16::from_le_bytes([p.header[22], p.header[23]]);
                    let d = data.remove(&cid).unwrap_or_default();
                    if done.insert(cid, (status, d)).is_some() {
                        return Err(io::Error::other(format!("two responses for cid {cid}")));
                    }
                }
                t => return Err(io::Error::other(format!("unexpected PDU type {t}"))),
            }
        }
        Ok(done)
    }

    /// Sends H2CData.
    pub fn send_h2c(
        &mut self,
        cccid: u16,
        ttag: u16,
        datao: u32,
        data: &[u8],
        last: bool,
    ) -> io::Result<()> {
        let mut h = self.header(6, 24, data.len(), if last { 4 } else { 0 });
        h[8..10].copy_from_slice(&cccid.to_le_bytes());
        h[10..12].copy_from_slice(&ttag.to_le_bytes());
        h[12..16].copy_from_slice(&datao.to_le_bytes());
        h[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        let b = self.finish(h, data);
        self.sock.write_all(&b)
    }

    /// Waits for the response to `cid`, collecting C2HData and answering
    /// R2Ts from `out_data`.
    pub fn wait(&mut self, cid: u16, out_data: &[u8]) -> io::Result<(Cqe, Vec<u8>)> {
        let mut data = Vec::new();
        loop {
            let p = self.recv()?;
            match p.ty {
                5 => {
                    let h = &p.header;
                    let cqe = Cqe {
                        dw0: u32::from_le_bytes(h[8..12].try_into().unwrap()),
                        dw1: u32::from_le_bytes(h[12..16].try_into().unwrap()),
                        sqhd: u16::from_le_bytes(h[16..18].try_into().unwrap()),
                        sqid: u16::from_le_bytes(h[18..20].try_into().unwrap()),
                        cid: u16::from_le_bytes(h[20..22].try_into().unwrap()),
                        status: u16::from_le_bytes(h[22..24].try_into().unwrap()),
                    };
                    if cqe.cid != cid {
                        return Err(io::Error::other(format!(
                            "response for cid {} while waiting for {cid}",
                            cqe.cid
                        )));
                    }
                    return Ok((cqe, data));
                }
                7 => {
                    let datao = u32::from_le_bytes(p.header[12..16].try_into().unwrap()) as usize;
                    if datao != data.len() {
                        return Err(io::Error::other("C2HData out of order"));
                    }
                    data.extend_from_slice(&p.data);
                }
                9 => {
                    let h = &p.header;
                    let cccid = u16::from_le_bytes(h[8..10].try_into().unwrap());
                    let ttag = u16::from_le_bytes(h[10..12].try_into().unwrap());
                    let r2to = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
                    let r2tl = u32::from_le_bytes(h[16..20].try_into().unwrap()) as usize;
                    let chunk = &out_data[r2to..r2to + r2tl];
                    // Two H2CData PDUs when it is large enough to split.
                    let half = if r2tl >= 8192 { r2tl / 2 } else { r2tl };
                    self.send_h2c(cccid, ttag, r2to as u32, &chunk[..half], half == r2tl)?;
                    if half < r2tl {
                        self.send_h2c(cccid, ttag, (r2to + half) as u32, &chunk[half..], true)?;
                    }
                }
                3 => {
                    return Err(io::Error::other(format!(
                        "C2HTermReq {:?}",
                        &p.header[8..12]
                    )))
                }
                t => return Err(io::Error::other(format!("unexpected PDU type {t}"))),
            }
        }
    }

    /// One command and its response.
    pub fn exec(&mut self, cmd: Cmd, inline: &[u8]) -> io::Result<(Cqe, Vec<u8>)> {
        let cid = self.send_cmd(cmd, inline)?;
        self.wait(cid, &[])
    }

    /// Fabrics Connect.
    pub fn fabrics_connect(
        &mut self,
        qid: u16,
        sqsize: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        kato_ms: u32,
    ) -> io::Result<Cqe> {
        let mut d = vec![0u8; 1024];
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        d[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
        let cmd = Cmd::new(0x7F, 0x01)
            .sgl(0, 1024, 0x01)
            .cdw(10, (qid as u32) << 16)
            .cdw(11, sqsize as u32)
            .cdw(12, kato_ms);
        let (cqe, _) = self.exec(cmd, &d)?;
        if cqe.ok() && qid == 0 {
            self.cntlid = cqe.dw0 as u16;
        }
        Ok(cqe)
    }

    /// Property Set CC = EN with 64/16-byte entries, and wait for RDY.
    pub fn enable(&mut self) -> io::Result<()> {
        let cmd = Cmd::new(0x7F, 0x00)
            .cdw(11, 0x14)
            .cdw(12, 1 | 6 << 16 | 4 << 20);
        let (c, _) = self.exec(cmd, &[])?;
        let (csts, _) = self.exec(Cmd::new(0x7F, 0x04).cdw(11, 0x1C), &[])?;
        if !c.ok() || csts.dw0 & 1 == 0 {
            return Err(io::Error::other("enable failed"));
        }
        Ok(())
    }

    /// Admin queue: connect, enable. Returns the cntlid.
    pub fn admin_queue(
        addr: &str,
        subnqn: &str,
        hostnqn: &str,
        kato_ms: u32,
    ) -> io::Result<Client> {
        let mut c = Client::connect(addr, (false, false))?;
        let cqe = c.fabrics_connect(0, 31, 0xFFFF, subnqn, hostnqn, kato_ms)?;
        if !cqe.ok() {
            return Err(io::Error::other(format!("admin connect refused: {cqe:?}")));
        }
        c.enable()?;
        Ok(c)
    }

    pub fn identify(&mut self, cns: u32, nsid: u32) -> io::Result<(Cqe, Vec<u8>)> {
        self.exec(Cmd::new(0x06, nsid).sgl(0, 4096, 0x5A).cdw(10, cns), &[])
    }

    pub fn read(&mut self, nsid: u32, lba: u64, nlb: u32, bs: u32) -> io::Result<(Cqe, Vec<u8>)> {
        let cmd = Cmd::new(0x02, nsid)
            .sgl(0, nlb * bs, 0x5A)
            .cdw(10, lba as u32)
            .cdw(11, (lba >> 32) as u32)
            .cdw(12, nlb - 1);
        self.exec(cmd, &[])
    }

    /// Write `data` at `lba`: in-capsule when `inline`, else by R2T.
    pub fn write(
        &mut self,
        nsid: u32,
        lba: u64,
        data: &[u8],
        bs: u32,
        inline: bool,
    ) -> io::Result<Cqe> {
        let nlb = data.len() as u32 / bs;
        let cmd = Cmd::new(0x01, nsid)
            .sgl(0, data.len() as u32, if inline { 0x01 } else { 0x5A })
            .cdw(10, lba as u32)
            .cdw(11, (lba >> 32) as u32)
            .cdw(12, nlb - 1);
        let cid = self.send_cmd(cmd, if inline { data } else { &[] })?;
        Ok(self.wait(cid, data)?.0)
    }

    /// Whether the target closed the connection within `within`
    /// (anything it sends first, such as a C2HTermReq, is skipped).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let _ = self.sock.set_read_timeout(Some(within));
        let mut b = [0u8; 4096];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// A test pattern: block `lba` of `bs` bytes tagged with its LBA and `seed`.
pub fn pattern(lba: u64, blocks: usize, bs: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; blocks * bs];
    for (i, chunk) in v.chunks_mut(8).enumerate() {
        let b = lba + (i * 8 / bs) as u64;
        let x = (b.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed ^ (i as u64)).to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    v
}
