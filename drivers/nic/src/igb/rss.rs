//! Receive Side Scaling (82576 datasheet 7.1.2.10): the device hashes a
//! frame's addresses and ports with a Toeplitz hash under a 40-byte key,
//! and entry `hash & 0x7f` of the 128-entry redirection table names the
//! receive queue. Frames it cannot hash (not IP, or a type whose field
//! enable is off) go to queue 0.
//!
//! Pure code: the register values, and the hash itself so that tests can
//! predict the queue of a frame.

use super::regs::{mrqc, RETA_ENTRIES, RSSRK_BYTES};

/// The RSS key: the one of Microsoft's RSS verification suite, used by most
/// drivers as their default, so hashes can be checked against published
/// values.
pub const KEY: [u8; RSSRK_BYTES] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

/// MRQC: RSS on, hashing IPv4 and IPv6 by addresses, and TCP and UDP over
/// either by addresses and ports. (UDP by ports means the fragments of one
/// datagram can reach different queues: the first carries the ports, the
/// rest do not.)
pub const MRQC: u32 = mrqc::ENABLE_RSS
    | mrqc::RSS_FIELD_IPV4
    | mrqc::RSS_FIELD_IPV4_TCP
    | mrqc::RSS_FIELD_IPV4_UDP
    | mrqc::RSS_FIELD_IPV6
    | mrqc::RSS_FIELD_IPV6_TCP
    | mrqc::RSS_FIELD_IPV6_TCP_EX
    | mrqc::RSS_FIELD_IPV6_UDP;

/// The RSSRK register values for `key`.
pub fn key_words(key: &[u8; RSSRK_BYTES]) -> [u32; RSSRK_BYTES / 4] {
    std::array::from_fn(|i| u32::from_le_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]))
}

/// Redirection table entry `i` for `queues` queues: round robin.
pub fn reta_entry(i: usize, queues: usize) -> u8 {
    (i % queues.max(1)) as u8
}

/// The RETA register values spreading hashes over `queues` queues.
pub fn reta_words(queues: usize) -> [u32; RETA_ENTRIES / 4] {
    std::array::from_fn(|w| u32::from_le_bytes(std::array::from_fn(|b| reta_entry(4 * w + b, queues))))
}

/// The queue the redirection table of [`reta_words`] gives `hash`.
pub fn queue_of(hash: u32, queues: usize) -> usize {
    reta_entry(hash as usize % RETA_ENTRIES, queues) as usize
}

/// Toeplitz hash of `input` under `key`: for every set bit of the input,
/// the 32 key bits starting at that bit position are XORed into the result.
pub fn toeplitz(key: &[u8; RSSRK_BYTES], input: &[u8]) -> u32 {
    let mut hash = 0u32;
    // The 32-bit key window at the current bit, and the key bits after it.
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    for (i, &byte) in input.iter().enumerate() {
        let next = key.get(i + 4).copied().unwrap_or(0);
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window = window << 1 | u32::from(next >> (7 - bit) & 1);
        }
    }
    hash
}

/// The hash input of an IPv4 frame: source and destination address, then
/// (for TCP and UDP) source and destination port, all in network order.
pub fn ipv4_input(src: [u8; 4], dst: [u8; 4], ports: Option<(u16, u16)>) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&src);
    v.extend_from_slice(&dst);
    if let Some((sp, dp)) = ports {
        v.extend_from_slice(&sp.to_be_bytes());
        v.extend_from_slice(&dp.to_be_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toeplitz_matches_the_verification_suite() {
        // (source, destination, source port, destination port, IPv4 hash,
        // IPv4 with TCP hash), from the RSS verification suite.
        let cases = [
            ([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766, 0x323e_8fc2, 0x51cc_c178),
            ([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739, 0xd718_262a, 0xc626_b0ea),
            ([24, 19, 198, 95], [12, 22, 207, 184], 12898, 38024, 0xd2d0_a5de, 0x5c2b_394a),
            ([38, 27, 205, 30], [209, 142, 163, 6], 48228, 2217, 0x8298_9176, 0xafc7_327f),
            ([153, 39, 163, 191], [202, 188, 127, 2], 44251, 1303, 0x5d18_09c5, 0x10e8_28a2),
        ];
        for (src, dst, sp, dp, ip, tcp) in cases {
            assert_eq!(toeplitz(&KEY, &ipv4_input(src, dst, None)), ip, "{src:?}");
            assert_eq!(toeplitz(&KEY, &ipv4_input(src, dst, Some((sp, dp)))), tcp, "{src:?}");
        }
    }

    #[test]
    fn register_values() {
        let k = key_words(&KEY);
        assert_eq!(k[0], 0xda56_5a6d, "key byte 0 in bits 7:0");
        assert_eq!(k[9], 0xfa01_acbe);
        assert_eq!(reta_words(1), [0; 32]);
        assert_eq!(reta_words(2)[0], 0x0100_0100);
        assert_eq!(reta_words(4)[31], 0x0302_0100);
        for q in 1..=8 {
            let mut seen = vec![0; q];
            for h in 0..RETA_ENTRIES as u32 {
                seen[queue_of(h, q)] += 1;
            }
            assert!(seen.iter().all(|&n| n >= RETA_ENTRIES / q), "{q}: {seen:?}");
        }
        assert_eq!(MRQC & 0b111, 0b010);
    }
}
