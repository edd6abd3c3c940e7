//! NVMe/TCP PDUs (NVMe over TCP transport specification, section 3.6
//! "PDU Formats"): the common header, and the header of each PDU type as a
//! `#[repr(C)]` Pod struct with a size assertion. Parsing is incremental:
//! [`check_header`] validates the 8-byte common header against the
//! negotiated digests and tells where the PDU's header, data and digests
//! lie; [`parse_header`] decodes the complete header. Every length is
//! checked: bad input is a [`PduError`] carrying the Fatal Error Status and
//! the offending field's offset for a Termination Request, never a panic.

use bytemuck::{Pod, Zeroable};

use crate::nvme::{Cqe, Sqe};

#[cfg(target_endian = "big")]
compile_error!("PDU structs are little-endian on the wire and read in place");

/// PDU types (transport spec, figure "PDU Type").
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common header FLAGS.
pub mod flags {
    /// HDGSTF: a header digest follows the header.
    pub const HDGSTF: u8 = 0x01;
    /// DDGSTF: a data digest follows the data.
    pub const DDGSTF: u8 = 0x02;
    /// LAST_PDU of a data transfer (H2CData, C2HData).
    pub const LAST_PDU: u8 = 0x04;
    /// SUCCESS: C2HData standing in for the response capsule.
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal Error Status of a Termination Request.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const R2T_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Size of a header or data digest (CRC32C).
pub const DIGEST_LEN: usize = 4;
/// Largest header the target receives (ICReq), without digest.
pub const MAX_HLEN: usize = 128;
/// Most bytes of the offending PDU header a Termination Request carries.
pub const TERM_DATA_MAX: usize = 128;

/// The 8 bytes every PDU starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    /// HLEN: header length without the header digest.
    pub hlen: u8,
    /// PDO: offset of the data from the start of the PDU (0: no data).
    pub pdo: u8,
    /// PLEN: the whole PDU: header, digests, padding and data.
    pub plen: u32,
}
const _: () = assert!(size_of::<CommonHeader>() == 8);

/// ICReq / ICResp (128 bytes). `hpda_cpda` is HPDA in a request and CPDA
/// in a response; `maxr2t_maxdata` is MAXR2T (0's based) or MAXH2CDATA.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct IcPdu {
    pub hdr: CommonHeader,
    pub pfv: u16,
    pub hpda_cpda: u8,
    /// DGST: bit 0 header digest, bit 1 data digest.
    pub dgst: u8,
    pub maxr2t_maxdata: u32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(size_of::<IcPdu>() == 128);

/// CapsuleCmd header: the common header and a submission queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CapsuleCmd {
    pub hdr: CommonHeader,
    pub sqe: Sqe,
}
const _: () = assert!(size_of::<CapsuleCmd>() == 72);

/// CapsuleResp: the common header and a completion queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CapsuleResp {
    pub hdr: CommonHeader,
    pub cqe: Cqe,
}
const _: () = assert!(size_of::<CapsuleResp>() == 24);

/// H2CData / C2HData header (TTAG is reserved in C2HData).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DataHdr {
    pub hdr: CommonHeader,
    pub cccid: u16,
    pub ttag: u16,
    pub datao: u32,
    pub datal: u32,
    pub rsvd: u32,
}
const _: () = assert!(size_of::<DataHdr>() == 24);

/// R2T: Ready to Transfer `r2tl` bytes at `r2to` of command `cccid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct R2t {
    pub hdr: CommonHeader,
    pub cccid: u16,
    pub ttag: u16,
    pub r2to: u32,
    pub r2tl: u32,
    pub rsvd: u32,
}
const _: () = assert!(size_of::<R2t>() == 24);

/// H2CTermReq / C2HTermReq header; up to 128 bytes of the offending PDU
/// header follow as data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TermReq {
    pub hdr: CommonHeader,
    pub fes: u16,
    /// FEI: Fatal Error Information (the offending field's byte offset).
    pub fei: [u8; 4],
    pub rsvd: [u8; 10],
}
const _: () = assert!(size_of::<TermReq>() == 24);

/// Which side sends the PDUs being parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Host to controller: what the target receives.
    HostToController,
    /// Controller to host: what a host (the test client) receives.
    ControllerToHost,
}

/// Digests in force on a connection (after ICReq/ICResp; none before).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    /// Header digest bytes after a header.
    pub fn hdgst_len(self) -> usize {
        if self.header {
            DIGEST_LEN
        } else {
            0
        }
    }
    /// Data digest bytes after data.
    pub fn ddgst_len(self) -> usize {
        if self.data {
            DIGEST_LEN
        } else {
            0
        }
    }
}

/// A malformed PDU: what a C2HTermReq (or H2CTermReq) reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad PDU: {what} (fatal error status {fes:#x}, field at byte {fei})")]
pub struct PduError {
    /// Fatal Error Status.
    pub fes: u16,
    /// Fatal Error Information: byte offset of the offending field.
    pub fei: u32,
    /// What was wrong.
    pub what: &'static str,
}

impl PduError {
    const fn header(fei: u32, what: &'static str) -> PduError {
        PduError {
            fes: fes::INVALID_HEADER_FIELD,
            fei,
            what,
        }
    }
}

/// Where the parts of a PDU lie, from its common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub pdu_type: u8,
    /// Header bytes including the header digest.
    pub header_len: usize,
    /// Padding bytes between the header (digest) and the data.
    pub pad: usize,
    /// Data bytes (0: none).
    pub data_len: usize,
    /// Data digest bytes after the data.
    pub ddgst_len: usize,
    /// PLEN.
    pub plen: usize,
}

/// Expected HLEN of each PDU type a `dir` side sends.
fn expected_hlen(pdu_type: u8, dir: Direction) -> Option<usize> {
    use pdu_type::*;
    match (dir, pdu_type) {
        (Direction::HostToController, IC_REQ) => Some(128),
        (Direction::HostToController, H2C_TERM_REQ) => Some(24),
        (Direction::HostToController, CAPSULE_CMD) => Some(72),
        (Direction::HostToController, H2C_DATA) => Some(24),
        (Direction::ControllerToHost, IC_RESP) => Some(128),
        (Direction::ControllerToHost, C2H_TERM_REQ) => Some(24),
        (Direction::ControllerToHost, CAPSULE_RESP) => Some(24),
        (Direction::ControllerToHost, C2H_DATA) => Some(24),
        (Direction::ControllerToHost, R2T) => Some(24),
        _ => None,
    }
}

/// Validates a common header sent by the `dir` side on a connection with
/// `digests` in force (none for ICReq/ICResp, which never carry digests),
/// allowing at most `max_data` data bytes. Returns where the rest lies.
pub fn check_header(
    ch: &CommonHeader,
    dir: Direction,
    digests: Digests,
    max_data: usize,
) -> Result<Layout, PduError> {
    use pdu_type::*;
    let hlen = expected_hlen(ch.pdu_type, dir)
        .ok_or(PduError::header(0, "PDU type not sent in this direction"))?;
    if ch.hlen as usize != hlen {
        return Err(PduError::header(2, "HLEN does not match the PDU type"));
    }
    let plen = ch.plen as usize;
    let is_ic = matches!(ch.pdu_type, IC_REQ | IC_RESP);
    let is_term = matches!(ch.pdu_type, H2C_TERM_REQ | C2H_TERM_REQ);
    // Initialize Connection PDUs and Termination Requests carry no digests.
    let d = if is_ic || is_term {
        Digests::default()
    } else {
        digests
    };
    let hd = d.hdgst_len();
    if (ch.flags & flags::HDGSTF != 0) != (hd != 0) {
        return Err(PduError::header(
            1,
            "HDGSTF does not match the negotiated header digest",
        ));
    }
    if is_ic {
        if plen != hlen {
            return Err(PduError::header(4, "PLEN of an ICReq/ICResp must be 128"));
        }
        return Ok(Layout {
            pdu_type: ch.pdu_type,
            header_len: hlen,
            pad: 0,
            data_len: 0,
            ddgst_len: 0,
            plen,
        });
    }
    if is_term {
        if plen < hlen || plen > hlen + TERM_DATA_MAX {
            return Err(PduError::header(
                4,
                "PLEN of a Termination Request out of range",
            ));
        }
        return Ok(Layout {
            pdu_type: ch.pdu_type,
            header_len: hlen,
            pad: 0,
            data_len: plen - hlen,
            ddgst_len: 0,
            plen,
        });
    }
    let header_len = hlen + hd;
    if plen < header_len {
        return Err(PduError::header(4, "PLEN shorter than the header"));
    }
    if plen == header_len {
        // No data: PDO is reserved, DDGSTF must be clear.
        if ch.flags & flags::DDGSTF != 0 {
            return Err(PduError::header(1, "DDGSTF set on a PDU without data"));
        }
        if matches!(ch.pdu_type, H2C_DATA | C2H_DATA) {
            return Err(PduError::header(4, "data PDU without data"));
        }
        return Ok(Layout {
            pdu_type: ch.pdu_type,
            header_len,
            pad: 0,
            data_len: 0,
            ddgst_len: 0,
            plen,
        });
    }
    if !matches!(ch.pdu_type, CAPSULE_CMD | H2C_DATA | C2H_DATA) {
        return Err(PduError::header(
            4,
            "PLEN longer than a PDU type without data",
        ));
    }
    let pdo = ch.pdo as usize;
    if pdo < header_len {
        return Err(PduError::header(3, "PDO inside the header"));
    }
    let dd = d.ddgst_len();
    if (ch.flags & flags::DDGSTF != 0) != (dd != 0) {
        return Err(PduError::header(
            1,
            "DDGSTF does not match the negotiated data digest",
        ));
    }
    let data_len = plen
        .checked_sub(pdo + dd)
        .filter(|&n| n > 0)
        .ok_or(PduError::header(3, "PDO beyond the end of the PDU"))?;
    if data_len > max_data {
        return Err(PduError {
            fes: fes::DATA_OUT_OF_RANGE,
            fei: 4,
            what: "more data than the connection allows",
        });
    }
    Ok(Layout {
        pdu_type: ch.pdu_type,
        header_len,
        pad: pdo - header_len,
        data_len,
        ddgst_len: dd,
        plen,
    })
}

/// A decoded PDU header.
#[derive(Clone, Copy, Debug)]
pub enum Pdu {
    IcReq(IcPdu),
    IcResp(IcPdu),
    TermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2CData(DataHdr),
    C2HData(DataHdr),
    R2t(R2t),
}

/// Decodes a complete header (`bytes` holds at least `layout.header_len`
/// bytes), checking the header digest when one is in force.
pub fn parse_header(bytes: &[u8], layout: &Layout) -> Result<Pdu, PduError> {
    use pdu_type::*;
    if bytes.len() < layout.header_len {
        return Err(PduError::header(4, "truncated header"));
    }
    let ch: CommonHeader = bytemuck::pod_read_unaligned(&bytes[..8]);
    let hlen = ch.hlen as usize;
    if layout.header_len == hlen + DIGEST_LEN {
        let want = crc32c::crc32c(&bytes[..hlen]);
        let got = u32::from_le_bytes([
            bytes[hlen],
            bytes[hlen + 1],
            bytes[hlen + 2],
            bytes[hlen + 3],
        ]);
        if want != got {
            return Err(PduError {
                fes: fes::HEADER_DIGEST_ERROR,
                fei: 0,
                what: "header digest mismatch",
            });
        }
    }
    let h = &bytes[..hlen];
    Ok(match ch.pdu_type {
        IC_REQ => Pdu::IcReq(bytemuck::pod_read_unaligned(h)),
        IC_RESP => Pdu::IcResp(bytemuck::pod_read_unaligned(h)),
        H2C_TERM_REQ | C2H_TERM_REQ => Pdu::TermReq(bytemuck::pod_read_unaligned(h)),
        CAPSULE_CMD => Pdu::CapsuleCmd(bytemuck::pod_read_unaligned(h)),
        CAPSULE_RESP => Pdu::CapsuleResp(bytemuck::pod_read_unaligned(h)),
        H2C_DATA => Pdu::H2CData(bytemuck::pod_read_unaligned(h)),
        C2H_DATA => Pdu::C2HData(bytemuck::pod_read_unaligned(h)),
        R2T => Pdu::R2t(bytemuck::pod_read_unaligned(h)),
        _ => return Err(PduError::header(0, "unknown PDU type")),
    })
}

/// A parsed PDU: its header, its data and the bytes it took.
pub type Parsed<'a> = (Pdu, &'a [u8], usize);

/// Parses one whole PDU from `bytes` (tests, fuzzing, the test client).
/// Returns the header, the data and the bytes used; `Ok(None)` when more
/// bytes are needed.
pub fn parse_pdu(
    bytes: &[u8],
    dir: Direction,
    digests: Digests,
    max_data: usize,
) -> Result<Option<Parsed<'_>>, PduError> {
    if bytes.len() < 8 {
        return Ok(None);
    }
    let ch: CommonHeader = bytemuck::pod_read_unaligned(&bytes[..8]);
    let layout = check_header(&ch, dir, digests, max_data)?;
    if bytes.len() < layout.plen {
        return Ok(None);
    }
    let pdu = parse_header(bytes, &layout)?;
    let start = layout.header_len + layout.pad;
    let data = &bytes[start..start + layout.data_len];
    if layout.ddgst_len != 0 {
        let d = &bytes[start + layout.data_len..layout.plen];
        if crc32c::crc32c(data).to_le_bytes() != d {
            return Err(PduError {
                fes: fes::HEADER_DIGEST_ERROR,
                fei: 0,
                what: "data digest mismatch",
            });
        }
    }
    Ok(Some((pdu, data, layout.plen)))
}

/// Serialises a header `h` (a PDU struct) into `out`, followed by its
/// header digest when `digests.header` and the type carries one. Returns
/// the bytes written. `out` must hold `size_of::<T>() + 4`.
pub fn put_header<T: Pod>(h: &T, digests: Digests, out: &mut [u8]) -> usize {
    let b = bytemuck::bytes_of(h);
    out[..b.len()].copy_from_slice(b);
    let ty = b[0];
    let has = digests.header
        && !matches!(
            ty,
            pdu_type::IC_REQ | pdu_type::IC_RESP | pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ
        );
    if has {
        let c = crc32c::crc32c(b).to_le_bytes();
        out[b.len()..b.len() + 4].copy_from_slice(&c);
        b.len() + 4
    } else {
        b.len()
    }
}

/// A common header for a PDU of `pdu_type`, header `hlen`, `data_len`
/// data bytes (placed right after the header and its digest).
pub fn common(
    pdu_type: u8,
    hlen: usize,
    data_len: usize,
    extra_flags: u8,
    digests: Digests,
) -> CommonHeader {
    let hd = digests.hdgst_len();
    let dd = if data_len > 0 { digests.ddgst_len() } else { 0 };
    let mut f = extra_flags;
    if hd != 0 {
        f |= flags::HDGSTF;
    }
    if dd != 0 {
        f |= flags::DDGSTF;
    }
    CommonHeader {
        pdu_type,
        flags: f,
        hlen: hlen as u8,
        pdo: if data_len > 0 { (hlen + hd) as u8 } else { 0 },
        plen: (hlen + hd + data_len + dd) as u32,
    }
}

impl IcPdu {
    /// An ICResp accepting `dgst` with MAXH2CDATA `maxdata`.
    pub fn resp(dgst: u8, maxdata: u32) -> IcPdu {
        IcPdu {
            hdr: CommonHeader {
                pdu_type: pdu_type::IC_RESP,
                flags: 0,
                hlen: 128,
                pdo: 0,
                plen: 128,
            },
            pfv: 0,
            hpda_cpda: 0,
            dgst,
            maxr2t_maxdata: maxdata,
            rsvd: [0; 112],
        }
    }
    /// An ICReq asking for `dgst` (host side).
    pub fn req(dgst: u8) -> IcPdu {
        IcPdu {
            hdr: CommonHeader {
                pdu_type: pdu_type::IC_REQ,
                flags: 0,
                hlen: 128,
                pdo: 0,
                plen: 128,
            },
            pfv: 0,
            hpda_cpda: 0,
            dgst,
            maxr2t_maxdata: 0,
            rsvd: [0; 112],
        }
    }
}

impl TermReq {
    /// A Termination Request sent by the controller for `err`, carrying
    /// `offending` header bytes (at most 128 kept).
    pub fn c2h(err: &PduError, offending: usize) -> TermReq {
        let n = offending.min(TERM_DATA_MAX);
        TermReq {
            hdr: CommonHeader {
                pdu_type: pdu_type::C2H_TERM_REQ,
                flags: 0,
                hlen: 24,
                pdo: 0,
                plen: (24 + n) as u32,
            },
            fes: err.fes,
            fei: err.fei.to_le_bytes(),
            rsvd: [0; 10],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::Sqe;

    const D0: Digests = Digests {
        header: false,
        data: false,
    };
    const D1: Digests = Digests {
        header: true,
        data: true,
    };

    fn capsule(data: &[u8], d: Digests) -> Vec<u8> {
        let mut sqe = Sqe::zeroed();
        sqe.cdw0 = 1 | 9 << 16;
        let cmd = CapsuleCmd {
            hdr: common(pdu_type::CAPSULE_CMD, 72, data.len(), 0, d),
            sqe,
        };
        let mut out = vec![0; 80];
        let n = put_header(&cmd, d, &mut out);
        out.truncate(n);
        out.extend_from_slice(data);
        if d.data && !data.is_empty() {
            out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        }
        out
    }

    #[test]
    fn capsule_round_trip_with_and_without_digests() {
        for d in [D0, D1] {
            let b = capsule(b"hello world!", d);
            let (pdu, data, used) = parse_pdu(&b, Direction::HostToController, d, 8192)
                .unwrap()
                .unwrap();
            assert_eq!(used, b.len());
            assert_eq!(data, b"hello world!");
            match pdu {
                Pdu::CapsuleCmd(c) => assert_eq!((c.sqe.opcode(), c.sqe.cid()), (1, 9)),
                other => panic!("{other:?}"),
            }
            // Every prefix is incomplete, never an error.
            for n in 0..b.len() {
                assert!(parse_pdu(&b[..n], Direction::HostToController, d, 8192)
                    .unwrap()
                    .is_none());
            }
        }
    }

    #[test]
    fn digest_errors_are_reported() {
        let mut b = capsule(b"abcd", D1);
        b[10] ^= 1; // inside the SQE: header digest now wrong
        let e = parse_pdu(&b, Direction::HostToController, D1, 8192).unwrap_err();
        assert_eq!(e.fes, fes::HEADER_DIGEST_ERROR);
        let mut b = capsule(b"abcd", D1);
        let n = b.len();
        b[n - 5] ^= 1; // data
        assert!(parse_pdu(&b, Direction::HostToController, D1, 8192).is_err());
    }

    #[test]
    fn wrong_lengths_are_typed_errors() {
        let b = capsule(b"abcd", D0);
        // HLEN wrong.
        let mut x = b.clone();
        x[2] = 24;
        assert_eq!(
            parse_pdu(&x, Direction::HostToController, D0, 8192)
                .unwrap_err()
                .fei,
            2
        );
        // PLEN below the header.
        let mut x = b.clone();
        x[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(
            parse_pdu(&x, Direction::HostToController, D0, 8192)
                .unwrap_err()
                .fei,
            4
        );
        // PDO inside the header.
        let mut x = b.clone();
        x[3] = 8;
        assert_eq!(
            parse_pdu(&x, Direction::HostToController, D0, 8192)
                .unwrap_err()
                .fei,
            3
        );
        // Too much data.
        assert_eq!(
            parse_pdu(&b, Direction::HostToController, D0, 2)
                .unwrap_err()
                .fes,
            fes::DATA_OUT_OF_RANGE
        );
        // Digest flag without negotiated digests.
        let mut x = b.clone();
        x[1] |= flags::HDGSTF;
        assert!(parse_pdu(&x, Direction::HostToController, D0, 8192).is_err());
        // A controller-to-host type sent by a host, and an unknown type.
        let mut x = b.clone();
        x[0] = pdu_type::R2T;
        assert_eq!(
            parse_pdu(&x, Direction::HostToController, D0, 8192)
                .unwrap_err()
                .fei,
            0
        );
        x[0] = 0x7f;
        assert!(parse_pdu(&x, Direction::HostToController, D0, 8192).is_err());
    }

    #[test]
    fn icreq_and_icresp() {
        let req = IcPdu::req(3);
        let (pdu, data, used) =
            parse_pdu(bytemuck::bytes_of(&req), Direction::HostToController, D1, 0)
                .unwrap()
                .unwrap();
        assert!(matches!(pdu, Pdu::IcReq(r) if r.dgst == 3));
        assert!(data.is_empty() && used == 128);
        let resp = IcPdu::resp(1, 131072);
        let (pdu, _, _) = parse_pdu(
            bytemuck::bytes_of(&resp),
            Direction::ControllerToHost,
            D0,
            0,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(pdu, Pdu::IcResp(r) if r.maxr2t_maxdata == 131072));
        let mut bad = req;
        bad.hdr.plen = 129;
        assert!(parse_pdu(bytemuck::bytes_of(&bad), Direction::HostToController, D0, 0).is_err());
    }

    #[test]
    fn term_req_carries_offending_header() {
        let e = PduError::header(2, "x");
        let t = TermReq::c2h(&e, 500);
        assert_eq!(t.hdr.plen, 24 + 128);
        assert_eq!(u32::from_le_bytes(t.fei), 2);
        let mut b = bytemuck::bytes_of(&t).to_vec();
        b.extend_from_slice(&[0xAA; 128]);
        let (pdu, data, _) = parse_pdu(&b, Direction::ControllerToHost, D1, 0)
            .unwrap()
            .unwrap();
        assert!(matches!(pdu, Pdu::TermReq(t) if t.fes == fes::INVALID_HEADER_FIELD));
        assert_eq!(data.len(), 128);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
                                    h: bool, d: bool, max in 0usize..9000) {
            let dg = Digests { header: h, data: d };
            for dir in [Direction::HostToController, Direction::ControllerToHost] {
                let _ = parse_pdu(&bytes, dir, dg, max);
            }
        }

        #[test]
        fn mutated_capsules_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
                                        at in 0usize..200, val: u8, cut in 0usize..200) {
            let mut b = capsule(&data, D1);
            let i = at % b.len();
            b[i] = val;
            b.truncate(cut.min(b.len()));
            if let Ok(Some((_, payload, used))) = parse_pdu(&b, Direction::HostToController, D1, 8192) {
                proptest::prop_assert!(used <= b.len() && payload.len() <= used);
            }
        }
    }
}
