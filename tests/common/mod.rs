//! The test frame the NIC guest tests exchange: an Ethernet header with a
//! local experimental EtherType, then a tag (which test), a sequence number
//! and the sent length, then payload bytes each test derives from those.

#![allow(dead_code)]

pub mod nic;

/// IEEE 802 local experimental EtherType: no other traffic uses it.
pub const ETHERTYPE: u16 = 0x88b5;
/// Ethernet header bytes.
pub const HEADER: usize = 14;
/// Tag, sequence number and sent length after the Ethernet header.
pub const META: usize = 10;

/// A test frame of `len` bytes (at least HEADER + META); `payload(i)` is
/// byte `i` of the frame after the header and metadata.
pub fn frame_bytes(
    dst: [u8; 6],
    src: [u8; 6],
    tag: u32,
    seq: u32,
    len: usize,
    payload: impl Fn(usize) -> u8,
) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f[14..18].copy_from_slice(&tag.to_be_bytes());
    f[18..22].copy_from_slice(&seq.to_be_bytes());
    f[22..24].copy_from_slice(&(len as u16).to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(HEADER + META) {
        *b = payload(i);
    }
    f
}

/// `(tag, sequence number, sent length)` of a test frame; `None` for
/// frames of other protocols (or too short to be ours).
pub fn frame_meta(f: &[u8]) -> Option<(u32, u32, usize)> {
    if f.len() < HEADER + META || f[12..14] != ETHERTYPE.to_be_bytes() {
        return None;
    }
    let be32 = |o: usize| u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]);
    let sent = u16::from_be_bytes([f[22], f[23]]) as usize;
    Some((be32(14), be32(18), sent))
}
