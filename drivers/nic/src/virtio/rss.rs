//! Receive-side scaling of a multi-queue virtio-net port (virtio spec
//! §5.1.6.4.3, §5.1.6.5.7): the device hashes a packet's addresses and
//! ports with a Toeplitz hash under a 40-byte key, and entry `hash & mask`
//! of the indirection table names the receive queue.
//!
//! The key, the hash and the round-robin table are igb's ([`crate::igb::rss`]):
//! the same flow lands on the same queue number on either driver, and a
//! test predicts the queue with the same code. Pure code: the command bytes
//! and the prediction, unit-tested without a device.

use super::spec::{
    RssConfigHead, RssConfigTail, VIRTIO_NET_RSS_HASH_TYPE_IPV4, VIRTIO_NET_RSS_HASH_TYPE_IPV6,
    VIRTIO_NET_RSS_HASH_TYPE_TCPV4, VIRTIO_NET_RSS_HASH_TYPE_TCPV6, VIRTIO_NET_RSS_HASH_TYPE_UDPV4,
    VIRTIO_NET_RSS_HASH_TYPE_UDPV6,
};
use crate::igb::rss::{ipv4_input, reta_entry, toeplitz, KEY};
use crate::{NicError, Result};

/// Hash types asked for (those the device supports of them): IPv4 and IPv6
/// by addresses, TCP and UDP over either by addresses and ports, as igb.
pub const HASH_TYPES: u32 = VIRTIO_NET_RSS_HASH_TYPE_IPV4
    | VIRTIO_NET_RSS_HASH_TYPE_TCPV4
    | VIRTIO_NET_RSS_HASH_TYPE_UDPV4
    | VIRTIO_NET_RSS_HASH_TYPE_IPV6
    | VIRTIO_NET_RSS_HASH_TYPE_TCPV6
    | VIRTIO_NET_RSS_HASH_TYPE_UDPV6;
/// Longest indirection table the driver sets (QEMU's limit, igb's RETA).
pub const MAX_TABLE: u16 = 128;

/// What the driver told the device: hash types, indirection table, key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssSetup {
    /// Hash types in force (the device's supported ones of [`HASH_TYPES`]).
    pub hash_types: u32,
    /// Receive queue (pair index) per table entry, round robin.
    pub table: Vec<u16>,
    /// Queue pairs in use.
    pub queues: u16,
}

impl RssSetup {
    /// The setup spreading over `queues` pairs on a device whose
    /// configuration offers `max_key` key bytes, tables of up to
    /// `max_table` entries and `supported` hash types. A device that cannot
    /// take igb's 40-byte key, a table at least `queues` long, or any hash
    /// type of UDP or TCP over IPv4 is refused.
    pub fn new(queues: u16, max_key: u8, max_table: u16, supported: u32) -> Result<RssSetup> {
        if usize::from(max_key) < KEY.len() {
            return Err(NicError::Negotiation(format!(
                "the device's RSS key holds {max_key} bytes; the driver's is {}",
                KEY.len()
            )));
        }
        // The largest power of two within both limits.
        let limit = max_table.min(MAX_TABLE);
        if limit == 0 || limit < queues {
            return Err(NicError::Negotiation(format!(
                "an RSS indirection table of {max_table} entries cannot spread over {queues} queues"
            )));
        }
        let len = 1u16 << (15 - limit.leading_zeros());
        let hash_types = supported & HASH_TYPES;
        let l4v4 = VIRTIO_NET_RSS_HASH_TYPE_TCPV4 | VIRTIO_NET_RSS_HASH_TYPE_UDPV4;
        if hash_types & l4v4 == 0 {
            return Err(NicError::Negotiation(format!(
                "the device hashes none of TCP or UDP over IPv4 (supported hash types {supported:#x})"
            )));
        }
        let table = (0..len as usize)
            .map(|i| u16::from(reta_entry(i, queues.into())))
            .collect();
        Ok(RssSetup {
            hash_types,
            table,
            queues,
        })
    }

    /// The VIRTIO_NET_CTRL_MQ_RSS_CONFIG command data: unclassified frames
    /// to queue 0, transmit on every pair, igb's key.
    pub fn command_bytes(&self) -> Vec<u8> {
        let head = RssConfigHead {
            hash_types: self.hash_types,
            // The table length is a power of two from 1 to MAX_TABLE.
            indirection_table_mask: (self.table.len() as u16).wrapping_sub(1),
            unclassified_queue: 0,
        };
        let tail = RssConfigTail {
            max_tx_vq: self.queues.to_le_bytes(),
            hash_key_length: KEY.len() as u8,
        };
        let mut v = bytemuck::bytes_of(&head).to_vec();
        v.extend(self.table.iter().flat_map(|q| q.to_le_bytes()));
        v.extend_from_slice(bytemuck::bytes_of(&tail));
        v.extend_from_slice(&KEY);
        v
    }

    /// The receive queue the device picks for a packet of `hash`.
    pub fn queue_of(&self, hash: u32) -> usize {
        // The table is never empty (see `new`).
        let mask = self.table.len().saturating_sub(1);
        self.table
            .get(hash as usize & mask)
            .map_or(0, |&q| q.into())
    }

    /// The receive queue of an IPv4 frame from `src` to `dst` (with TCP or
    /// UDP `ports` when the hash types cover them).
    pub fn queue_of_ipv4(&self, src: [u8; 4], dst: [u8; 4], ports: Option<(u16, u16)>) -> usize {
        self.queue_of(toeplitz(&KEY, &ipv4_input(src, dst, ports)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::igb::rss::queue_of;

    #[test]
    fn the_command_is_laid_out_as_the_spec_says() {
        let r = RssSetup::new(4, 40, 128, u32::MAX).unwrap();
        let b = r.command_bytes();
        assert_eq!(b.len(), 8 + 2 * 128 + 3 + 40);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), HASH_TYPES);
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 127, "mask");
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 0, "unclassified queue");
        let entry = |i: usize| u16::from_le_bytes([b[8 + 2 * i], b[9 + 2 * i]]);
        assert_eq!((entry(0), entry(1), entry(5), entry(127)), (0, 1, 1, 3));
        assert_eq!(u16::from_le_bytes([b[264], b[265]]), 4, "max_tx_vq");
        assert_eq!(b[266], 40);
        assert_eq!(&b[267..], &KEY);
        assert!(b.len() <= super::super::ctrl::MAX_DATA);
    }

    #[test]
    fn device_limits_shape_the_table_or_refuse() {
        // A 100-entry limit: the largest power of two below, 64.
        assert_eq!(RssSetup::new(2, 40, 100, u32::MAX).unwrap().table.len(), 64);
        assert_eq!(
            RssSetup::new(2, 52, 4096, u32::MAX).unwrap().table.len(),
            128
        );
        assert!(matches!(
            RssSetup::new(2, 39, 128, u32::MAX),
            Err(NicError::Negotiation(_))
        ));
        assert!(matches!(
            RssSetup::new(8, 40, 4, u32::MAX),
            Err(NicError::Negotiation(_))
        ));
        assert!(matches!(
            RssSetup::new(1, 40, 0, u32::MAX),
            Err(NicError::Negotiation(_))
        ));
        let ipv4_only = RssSetup::new(2, 40, 128, VIRTIO_NET_RSS_HASH_TYPE_IPV4);
        assert!(matches!(ipv4_only, Err(NicError::Negotiation(_))));
        // Only what the device supports is asked for.
        let udp = RssSetup::new(2, 40, 128, VIRTIO_NET_RSS_HASH_TYPE_UDPV4 | 1 << 8).unwrap();
        assert_eq!(udp.hash_types, VIRTIO_NET_RSS_HASH_TYPE_UDPV4);
    }

    #[test]
    fn predictions_match_igbs_for_a_full_table() {
        for queues in 1..=8u16 {
            let r = RssSetup::new(queues, 40, 128, u32::MAX).unwrap();
            for port in 1000..1200u16 {
                let (src, dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
                let h = toeplitz(&KEY, &ipv4_input(src, dst, Some((port, 9))));
                assert_eq!(
                    r.queue_of_ipv4(src, dst, Some((port, 9))),
                    queue_of(h, queues.into())
                );
                assert!(r.queue_of(h) < queues.into());
            }
        }
    }
}
