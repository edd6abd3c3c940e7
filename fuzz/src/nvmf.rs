//! The NVMe/TCP target's PDU parser (`fastlane_nvmf_tcp::pdu::parse_pdu`)
//! on bytes a peer sends: a stream of PDUs from a hostile host (or, for the
//! test client, a hostile controller).

use fastlane_nvmf_tcp::pdu::{parse_pdu, Digests, Direction, Pdu, TERM_DATA_MAX};

use crate::Bytes;

/// First byte: direction and digests; second: the data limit (in 256-byte
/// steps); the rest: the stream. Parses PDU after PDU like a connection
/// does, and checks what a caller relies on: the bytes used lie inside the
/// input and cover the data returned, and progress is always made.
pub fn pdu_stream(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let max_data = usize::from(b.u8()) * 256;
    let dir = if mode & 1 == 0 {
        Direction::HostToController
    } else {
        Direction::ControllerToHost
    };
    let digests = Digests {
        header: mode & 2 != 0,
        data: mode & 4 != 0,
    };
    let mut rest = b.take(usize::MAX);
    while !rest.is_empty() {
        match parse_pdu(rest, dir, digests, max_data) {
            Ok(Some((pdu, payload, used))) => {
                assert!(used >= 8 && used <= rest.len(), "used {used} of {}", rest.len());
                // A Termination Request carries the offending header, under its
        // own limit rather than the connection's.
        let limit = if matches!(pdu, Pdu::TermReq(_)) { TERM_DATA_MAX } else { max_data };
                assert!(payload.len() <= limit, "{} data bytes over the limit {limit}", payload.len());
                let start = payload.as_ptr() as usize - rest.as_ptr() as usize;
                assert!(start + payload.len() <= used, "data outside the PDU");
                rest = &rest[used..];
            }
            Ok(None) | Err(_) => break,
        }
    }
}
