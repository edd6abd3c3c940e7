//! virtio 1.x definitions the driver uses, each declared once: device
//! status and feature bits (virtio spec §2.1, §2.2, §6), the PCI transport's
//! capabilities and common configuration (§4.1.4), split virtqueues (§2.7)
//! and the network device (§5.1). Names follow the spec.
//!
//! Every multi-byte field is little-endian (§2.4, VIRTIO_F_VERSION_1); the
//! driver writes host-order values, so it is for little-endian hosts only.

// The names are the spec's, and the spec is their documentation: a doc
// line per constant or field would only repeat the name.
#![allow(missing_docs)]

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};

const _: () = assert!(
    cfg!(target_endian = "little"),
    "virtio structures are little-endian"
);

/// PCI vendor id of virtio devices.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern (virtio 1.x only) network device: 0x1040 + device type 1 (§4.1.2).
pub const VIRTIO_PCI_DEVICE_NET: u16 = 0x1041;
/// Transitional network device (legacy interface plus, maybe, the modern one).
pub const VIRTIO_PCI_DEVICE_NET_TRANSITIONAL: u16 = 0x1000;

// Device status field (§2.1).
pub const VIRTIO_STATUS_ACKNOWLEDGE: u8 = 1;
pub const VIRTIO_STATUS_DRIVER: u8 = 2;
pub const VIRTIO_STATUS_DRIVER_OK: u8 = 4;
pub const VIRTIO_STATUS_FEATURES_OK: u8 = 8;
pub const VIRTIO_STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
pub const VIRTIO_STATUS_FAILED: u8 = 0x80;

// Feature bits, as masks of the 64-bit feature word (§5.1.3, §6).
/// Device takes frames with a partial checksum: the driver asks it to
/// finish the TCP/UDP checksum through the net header (bit 0).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// Driver takes frames with a partial checksum, and the device may mark
/// checksums it validated (bit 1).
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// Device reports the largest MTU the driver may use in `mtu` (bit 3).
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// Device has a given MAC address (bit 5).
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Driver can merge receive buffers (bit 15): a frame longer than one
/// buffer spans `num_buffers` of them.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// Configuration status field is available (bit 16).
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Control channel is available (bit 17).
pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
/// Control channel receive mode support: promiscuous, all-multicast (bit 18).
pub const VIRTIO_NET_F_CTRL_RX: u64 = 1 << 18;
/// Several receive/transmit queue pairs, steered through the control
/// queue (bit 22).
pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
/// Receive-side scaling: a Toeplitz hash and an indirection table pick the
/// receive queue (bit 60, §5.1.6.5.7).
pub const VIRTIO_NET_F_RSS: u64 = 1 << 60;
/// Device reports its speed and duplex (bit 63).
pub const VIRTIO_NET_F_SPEED_DUPLEX: u64 = 1 << 63;
/// Compliance with virtio 1.x (bit 32): required, no legacy interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The device reaches memory through the platform's IOMMU (bit 33). Without
/// it a device uses physical addresses, which are not our IOVAs.
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Packed virtqueues (bit 34, §2.8): one descriptor ring both sides
/// write, instead of a descriptor table and two rings.
pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;

/// Names of the feature bits above, for messages.
pub const FEATURE_NAMES: [(u64, &str); 14] = [
    (VIRTIO_NET_F_CSUM, "VIRTIO_NET_F_CSUM"),
    (VIRTIO_NET_F_GUEST_CSUM, "VIRTIO_NET_F_GUEST_CSUM"),
    (VIRTIO_NET_F_MTU, "VIRTIO_NET_F_MTU"),
    (VIRTIO_NET_F_MAC, "VIRTIO_NET_F_MAC"),
    (VIRTIO_NET_F_MRG_RXBUF, "VIRTIO_NET_F_MRG_RXBUF"),
    (VIRTIO_NET_F_STATUS, "VIRTIO_NET_F_STATUS"),
    (VIRTIO_NET_F_CTRL_VQ, "VIRTIO_NET_F_CTRL_VQ"),
    (VIRTIO_NET_F_CTRL_RX, "VIRTIO_NET_F_CTRL_RX"),
    (VIRTIO_NET_F_MQ, "VIRTIO_NET_F_MQ"),
    (VIRTIO_NET_F_RSS, "VIRTIO_NET_F_RSS"),
    (VIRTIO_NET_F_SPEED_DUPLEX, "VIRTIO_NET_F_SPEED_DUPLEX"),
    (VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"),
    (VIRTIO_F_ACCESS_PLATFORM, "VIRTIO_F_ACCESS_PLATFORM"),
    (VIRTIO_F_RING_PACKED, "VIRTIO_F_RING_PACKED"),
];

// PCI capabilities (§4.1.4).
/// Capability id of vendor-specific capabilities, which virtio uses.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// Config space: status register, and its "capability list present" bit.
pub const PCI_STATUS: u64 = 0x06;
pub const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
/// Config space: offset of the first capability.
pub const PCI_CAPABILITY_LIST: u64 = 0x34;

/// `cfg_type` of `struct virtio_pci_cap`.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;

/// Field offsets in `struct virtio_pci_cap` (and `virtio_pci_notify_cap`).
pub mod cap {
    pub const CAP_VNDR: u64 = 0;
    pub const CAP_NEXT: u64 = 1;
    pub const CAP_LEN: u64 = 2;
    pub const CFG_TYPE: u64 = 3;
    pub const BAR: u64 = 4;
    pub const OFFSET: u64 = 8;
    pub const LENGTH: u64 = 12;
    /// Only in the notification capability.
    pub const NOTIFY_OFF_MULTIPLIER: u64 = 16;
    /// Bytes of the generic capability, and of the notification one.
    pub const LEN_GENERIC: u8 = 16;
    pub const LEN_NOTIFY: u8 = 20;
}

/// Register offsets in `struct virtio_pci_common_cfg` (§4.1.4.3). Each is
/// accessed with its own width, as the spec requires.
pub mod common {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00; // le32
    pub const DEVICE_FEATURE: usize = 0x04; // le32
    pub const DRIVER_FEATURE_SELECT: usize = 0x08; // le32
    pub const DRIVER_FEATURE: usize = 0x0c; // le32
    pub const CONFIG_MSIX_VECTOR: usize = 0x10; // le16
    pub const NUM_QUEUES: usize = 0x12; // le16
    pub const DEVICE_STATUS: usize = 0x14; // u8
    pub const CONFIG_GENERATION: usize = 0x15; // u8
    pub const QUEUE_SELECT: usize = 0x16; // le16
    pub const QUEUE_SIZE: usize = 0x18; // le16
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a; // le16
    pub const QUEUE_ENABLE: usize = 0x1c; // le16
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e; // le16
    pub const QUEUE_DESC: usize = 0x20; // le64, written as two le32
    pub const QUEUE_DRIVER: usize = 0x28; // le64
    pub const QUEUE_DEVICE: usize = 0x30; // le64
    /// Bytes of the structure up to here (virtio 1.0).
    pub const LEN: usize = 0x38;
}

/// "No MSI-X vector": we poll.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

// Split virtqueues (§2.7).
/// Largest queue size the spec allows.
pub const VIRTQ_MAX_SIZE: u16 = 32768;
/// Descriptor continues via `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Buffer is device write-only (otherwise device read-only).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Driver to device: do not interrupt when consuming buffers.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Device to driver: do not notify when adding buffers.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// `struct virtq_desc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VirtqDesc {
    /// Buffer IOVA.
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}
const _: () = assert!(size_of::<VirtqDesc>() == 16);
const _: () = assert!(offset_of!(VirtqDesc, flags) == 12);

/// `struct virtq_used_elem`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VirtqUsedElem {
    /// Head descriptor of the used chain.
    pub id: u32,
    /// Bytes the device wrote into the chain.
    pub len: u32,
}
const _: () = assert!(size_of::<VirtqUsedElem>() == 8);

// Packed virtqueues (§2.8).
/// Descriptor flag: the driver made it available when this bit equals its
/// wrap counter (and USED differs).
pub const VIRTQ_DESC_F_AVAIL: u16 = 1 << 7;
/// Descriptor flag: the device used it when AVAIL and USED both equal the
/// device's wrap counter.
pub const VIRTQ_DESC_F_USED: u16 = 1 << 15;
/// `flags` of an event suppression structure (§2.8.10): notify, don't, or
/// at a given descriptor (with VIRTIO_F_EVENT_IDX).
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
pub const RING_EVENT_FLAGS_DESC: u16 = 2;

/// `struct pvirtq_desc`: written available by the driver, overwritten used
/// by the device (`id` and `len` of the buffer, flags).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PvirtqDesc {
    /// Buffer IOVA.
    pub addr: u64,
    pub len: u32,
    /// Buffer id: the driver's name for the chain, given back when used.
    pub id: u16,
    pub flags: u16,
}
const _: () = assert!(size_of::<PvirtqDesc>() == 16);
/// Byte offsets of `PvirtqDesc` fields, for single-field accesses.
pub const PVIRTQ_DESC_LEN: usize = offset_of!(PvirtqDesc, len);
pub const PVIRTQ_DESC_ID: usize = offset_of!(PvirtqDesc, id);
pub const PVIRTQ_DESC_FLAGS: usize = offset_of!(PvirtqDesc, flags);

/// `struct pvirtq_event_suppress`: the driver area (written by the driver)
/// and the device area (written by the device) of a packed queue.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PvirtqEventSuppress {
    /// `desc_event_off` (bits 0-14) and `desc_event_wrap` (bit 15).
    pub off_wrap: u16,
    pub flags: u16,
}
const _: () = assert!(size_of::<PvirtqEventSuppress>() == 4);

/// `struct virtq_avail`: `flags`, `idx`, then `ring[size]` of le16 (and
/// `used_event`, unused without VIRTIO_F_EVENT_IDX).
pub mod avail {
    pub const FLAGS: usize = 0;
    pub const IDX: usize = 2;
    pub const RING: usize = 4;
    /// Bytes for a queue of `size` entries.
    pub const fn len(size: u16) -> usize {
        RING + 2 * size as usize + 2
    }
}

/// `struct virtq_used`: `flags`, `idx`, then `ring[size]` of
/// [`VirtqUsedElem`] (and `avail_event`).
pub mod used {
    pub const FLAGS: usize = 0;
    pub const IDX: usize = 2;
    pub const RING: usize = 4;
    /// Bytes for a queue of `size` entries.
    pub const fn len(size: u16) -> usize {
        RING + 8 * size as usize + 2
    }
}

// Network device (§5.1).
/// Virtqueue indices without VIRTIO_NET_F_MQ: receiveq1, transmitq1, controlq.
pub const RECEIVEQ: u16 = 0;
pub const TRANSMITQ: u16 = 1;
pub const CONTROLQ: u16 = 2;
/// With VIRTIO_NET_F_MQ (§5.1.2): receiveq(k+1) is virtqueue 2k,
/// transmitq(k+1) 2k+1, and the control queue comes after all
/// `max_virtqueue_pairs` pairs, at 2 * max_virtqueue_pairs.
pub const fn receiveq(pair: u16) -> u16 {
    2 * pair
}
pub const fn transmitq(pair: u16) -> u16 {
    2 * pair + 1
}
pub const fn controlq_mq(max_virtqueue_pairs: u16) -> u16 {
    2 * max_virtqueue_pairs
}
/// Largest `max_virtqueue_pairs` (§5.1.4): 0x8000.
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX: u16 = 0x8000;

/// Offsets in `struct virtio_net_config` (device configuration).
pub mod net_config {
    pub const MAC: usize = 0; // u8[6]
    pub const STATUS: usize = 6; // le16
    pub const SPEED: usize = 12; // le32, Mbit/s
    /// With VIRTIO_NET_F_MQ or VIRTIO_NET_F_RSS.
    pub const MAX_VIRTQUEUE_PAIRS: usize = 8; // le16
    /// With VIRTIO_NET_F_MTU.
    pub const MTU: usize = 10; // le16
    pub const DUPLEX: usize = 16; // u8
    /// Bytes up to and including `duplex`.
    pub const LEN_SPEED_DUPLEX: usize = 17;
    // With VIRTIO_NET_F_RSS (or HASH_REPORT).
    pub const RSS_MAX_KEY_SIZE: usize = 17; // u8
    pub const RSS_MAX_INDIRECTION_TABLE_LENGTH: usize = 18; // le16
    pub const SUPPORTED_HASH_TYPES: usize = 20; // le32
    /// Bytes up to and including `supported_hash_types`.
    pub const LEN_RSS: usize = 24;
}
/// `status`: link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// `speed` when unknown.
pub const VIRTIO_NET_SPEED_UNKNOWN: u32 = u32::MAX;
/// `duplex` values.
pub const VIRTIO_NET_DUPLEX_HALF: u8 = 0;

/// `struct virtio_net_hdr` as VIRTIO_F_VERSION_1 lays it out (with
/// `num_buffers`): in front of every frame, both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}
/// `flags` of [`VirtioNetHdr`] (§5.1.6): the checksum from `csum_start`
/// to the end of the frame is to be stored at `csum_start + csum_offset`
/// (partial: the field holds the pseudo-header sum).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Received: the device validated the frame's checksum.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: no segmentation.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// Byte offset of `num_buffers` in the header.
pub const NET_HDR_NUM_BUFFERS: usize = offset_of!(VirtioNetHdr, num_buffers);
/// Bytes of the header.
pub const NET_HDR_LEN: usize = size_of::<VirtioNetHdr>();
const _: () = assert!(NET_HDR_LEN == 12);

// Control virtqueue (§5.1.6.5): class, command, data, then a device-written ack.
pub const VIRTIO_NET_CTRL_RX: u8 = 0;
pub const VIRTIO_NET_CTRL_RX_PROMISC: u8 = 0;
pub const VIRTIO_NET_OK: u8 = 0;
/// Multi-queue class (§5.1.6.5.5): the number of pairs, or the RSS setup.
pub const VIRTIO_NET_CTRL_MQ: u8 = 4;
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
pub const VIRTIO_NET_CTRL_MQ_RSS_CONFIG: u8 = 1;

// Hash types (§5.1.6.4.3.1): which fields a packet's hash covers.
pub const VIRTIO_NET_RSS_HASH_TYPE_IPV4: u32 = 1 << 0;
pub const VIRTIO_NET_RSS_HASH_TYPE_TCPV4: u32 = 1 << 1;
pub const VIRTIO_NET_RSS_HASH_TYPE_UDPV4: u32 = 1 << 2;
pub const VIRTIO_NET_RSS_HASH_TYPE_IPV6: u32 = 1 << 3;
pub const VIRTIO_NET_RSS_HASH_TYPE_TCPV6: u32 = 1 << 4;
pub const VIRTIO_NET_RSS_HASH_TYPE_UDPV6: u32 = 1 << 5;

/// The fixed head of `struct virtio_net_rss_config` (§5.1.6.5.7.1). After
/// it: `le16 indirection_table[indirection_table_mask + 1]`, `le16
/// max_tx_vq`, `u8 hash_key_length`, `u8 hash_key_data[hash_key_length]`
/// (see [`RssConfigTail`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RssConfigHead {
    pub hash_types: u32,
    pub indirection_table_mask: u16,
    pub unclassified_queue: u16,
}
const _: () = assert!(size_of::<RssConfigHead>() == 8);

/// What follows the indirection table, up to the key bytes (3 bytes,
/// unaligned: as bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RssConfigTail {
    pub max_tx_vq: [u8; 2],
    pub hash_key_length: u8,
}
const _: () = assert!(size_of::<RssConfigTail>() == 3);

/// `names` of the feature bits set in `features`, for messages.
pub fn feature_names(features: u64) -> String {
    let names: Vec<&str> = FEATURE_NAMES
        .iter()
        .filter(|(bit, _)| features & bit != 0)
        .map(|&(_, n)| n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}
