//! Register offsets and bits of the 82576 / I350 (Intel 82576EB GbE
//! Controller Datasheet, chapter 8 "Programming Interface"). Names follow
//! the datasheet so a reader can look each one up; every offset and bit the
//! driver touches is declared here once.

// The names are the datasheet's, and the datasheet is their documentation:
// a doc line per register would only repeat the name.
#![allow(missing_docs)]

/// PCI vendor id of Intel.
pub const VENDOR_INTEL: u16 = 0x8086;

/// Physical-function device ids this driver accepts, with the part name.
/// (Virtual functions, 0x10ca and 0x1520, are a different interface.)
pub const DEVICE_IDS: &[(u16, &str)] = &[
    (0x10c9, "82576"),
    (0x10e6, "82576 fiber"),
    (0x10e7, "82576 serdes"),
    (0x10e8, "82576 quad copper"),
    (0x1526, "82576 quad copper ET2"),
    (0x150a, "82576NS"),
    (0x1518, "82576NS serdes"),
    (0x150d, "82576 serdes quad"),
    (0x1521, "I350 copper"),
    (0x1522, "I350 fiber"),
    (0x1523, "I350 backplane"),
    (0x1524, "I350 SGMII"),
];

/// Whether `device` is one of the I350 parts (they need DVMOLR.STRCRC).
pub fn is_i350(device: u16) -> bool {
    (0x1521..=0x1524).contains(&device)
}

// ---- General registers (8.2) ----------------------------------------------

/// Device Control.
pub const CTRL: usize = 0x0000;
/// Device Status.
pub const STATUS: usize = 0x0008;
/// Extended Device Control.
pub const CTRL_EXT: usize = 0x0018;
/// MDI Control: access to the PHY's registers.
pub const MDIC: usize = 0x0020;

pub mod ctrl {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Link reset (held after power-up until software clears it).
    pub const LRST: u32 = 1 << 3;
    /// Set link up.
    pub const SLU: u32 = 1 << 6;
    /// Device reset; self-clearing.
    pub const RST: u32 = 1 << 26;
    /// VLAN mode: strip received 802.1Q tags, insert them on VLE.
    pub const VME: u32 = 1 << 30;
    /// PHY reset.
    pub const PHY_RST: u32 = 1 << 31;
}

pub mod status {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Link up.
    pub const LU: u32 = 1 << 1;
    /// Link speed field: 00 = 10, 01 = 100, 1x = 1000 Mb/s.
    pub const SPEED_SHIFT: u32 = 6;
    pub const SPEED_MASK: u32 = 0b11;
}

pub mod ctrl_ext {
    /// Driver loaded: tells manageability firmware a driver owns the port.
    pub const DRV_LOAD: u32 = 1 << 28;
}

pub mod mdic {
    pub const DATA_MASK: u32 = 0xffff;
    pub const REG_SHIFT: u32 = 16;
    pub const PHY_SHIFT: u32 = 21;
    pub const OP_WRITE: u32 = 1 << 26;
    pub const OP_READ: u32 = 2 << 26;
    pub const READY: u32 = 1 << 28;
    pub const ERROR: u32 = 1 << 30;
    /// The internal PHY answers at MDIO address 1.
    pub const INTERNAL_PHY: u32 = 1;
}

/// PHY (IEEE 802.3 clause 22) registers reached through MDIC.
pub mod phy {
    /// Basic Mode Control Register.
    pub const BMCR: u32 = 0;
    /// BMCR: restart auto-negotiation (self-clearing).
    pub const BMCR_ANRESTART: u16 = 1 << 9;
    /// BMCR: auto-negotiation enable.
    pub const BMCR_ANENABLE: u16 = 1 << 12;
}

// ---- Interrupts (8.8): masked, the driver polls ----------------------------

/// Interrupt Cause Read (read clears).
pub const ICR: usize = 0x00c0;
/// Interrupt Mask Clear.
pub const IMC: usize = 0x00d8;
/// Extended Interrupt Mask Clear.
pub const EIMC: usize = 0x1528;
/// Extended Interrupt Auto Clear.
pub const EIAC: usize = 0x152c;

// ---- Receive (8.10) ---------------------------------------------------------

/// Receive Control.
pub const RCTL: usize = 0x0100;
/// Receive Checksum Control.
pub const RXCSUM: usize = 0x5000;
/// Receive long packet maximum length (with FCS), used when RCTL.LPE is set.
pub const RLPML: usize = 0x5004;
/// Multicast Table Array: 128 words.
pub const MTA: usize = 0x5200;
pub const MTA_WORDS: usize = 128;
/// Receive Address Low/High, entry 0 holds the port's MAC address.
pub const RAL0: usize = 0x5400;
pub const RAH0: usize = 0x5404;
/// RAH: address valid.
pub const RAH_AV: u32 = 1 << 31;

/// RXCSUM: IPv4 header checksum offload (IPCS/IPE in the write-back).
pub const RXCSUM_IPOFLD: u32 = 1 << 8;
/// RXCSUM: TCP/UDP checksum offload (L4I/UDPCS/L4E in the write-back).
pub const RXCSUM_TUOFLD: u32 = 1 << 9;
/// VLAN EtherType: the TPID the NIC recognises and inserts (low 16 bits).
pub const VET: usize = 0x0038;
/// RXCSUM: Packet Checksum Disable. Must be set for RSS: the write-back
/// descriptor then carries the RSS hash where the checksum would be.
pub const RXCSUM_PCSD: u32 = 1 << 13;

// ---- Multiple receive queues and RSS (7.1.2, 8.10) ------------------------

/// Multiple Receive Queues Command.
pub const MRQC: usize = 0x5818;
/// Redirection Table: 32 registers of four one-byte entries (128 entries),
/// entry `hash & 0x7f` naming the receive queue.
pub const RETA: usize = 0x5c00;
pub const RETA_ENTRIES: usize = 128;
/// RSS Random Key: 10 registers, key byte `4 * i + j` in byte `j` of `i`.
pub const RSSRK: usize = 0x5c80;
pub const RSSRK_BYTES: usize = 40;
/// Receive and transmit queues the driver will use on one port (the
/// 82576 has 16 of each, the I350 8).
pub const MAX_QUEUES: usize = 8;

pub mod mrqc {
    /// Multiple Receive Queues Enable field (bits 2:0): RSS only.
    pub const ENABLE_RSS: u32 = 0b010;
    /// RSS field enables: which headers the hash covers, per packet type.
    pub const RSS_FIELD_IPV4_TCP: u32 = 1 << 16;
    pub const RSS_FIELD_IPV4: u32 = 1 << 17;
    pub const RSS_FIELD_IPV6_TCP_EX: u32 = 1 << 18;
    pub const RSS_FIELD_IPV6_EX: u32 = 1 << 19;
    pub const RSS_FIELD_IPV6: u32 = 1 << 20;
    pub const RSS_FIELD_IPV6_TCP: u32 = 1 << 21;
    pub const RSS_FIELD_IPV4_UDP: u32 = 1 << 22;
    pub const RSS_FIELD_IPV6_UDP: u32 = 1 << 23;
}

pub mod rctl {
    /// Receiver enable.
    pub const EN: u32 = 1 << 1;
    /// Unicast promiscuous.
    pub const UPE: u32 = 1 << 3;
    /// Multicast promiscuous.
    pub const MPE: u32 = 1 << 4;
    /// Long packet enable (frames above 1518 bytes).
    pub const LPE: u32 = 1 << 5;
    /// Broadcast accept mode.
    pub const BAM: u32 = 1 << 15;
    /// VLAN filter enable.
    pub const VFE: u32 = 1 << 18;
    /// Strip Ethernet CRC from received frames.
    pub const SECRC: u32 = 1 << 26;
}

/// Per-queue receive registers (queue `n` at `base + 0x40 * n`).
pub const fn rdbal(n: usize) -> usize {
    0xc000 + 0x40 * n
}
pub const fn rdbah(n: usize) -> usize {
    0xc004 + 0x40 * n
}
pub const fn rdlen(n: usize) -> usize {
    0xc008 + 0x40 * n
}
/// Split and Replication Receive Control.
pub const fn srrctl(n: usize) -> usize {
    0xc00c + 0x40 * n
}
pub const fn rdh(n: usize) -> usize {
    0xc010 + 0x40 * n
}
pub const fn rdt(n: usize) -> usize {
    0xc018 + 0x40 * n
}
pub const fn rxdctl(n: usize) -> usize {
    0xc028 + 0x40 * n
}
/// Receive Queue Drop Packet Count (read clears).
pub const fn rqdpc(n: usize) -> usize {
    0xc030 + 0x40 * n
}
/// DMA VM Offload (I350): per-queue CRC strip.
pub const fn dvmolr(n: usize) -> usize {
    0xc038 + 0x40 * n
}
pub const DVMOLR_STRCRC: u32 = 1 << 31;

pub mod srrctl {
    /// Packet buffer size field (bits 0-6), in KiB.
    pub const BSIZEPKT_MASK: u32 = 0x7f;
    /// Descriptor type: advanced, one buffer.
    pub const DESCTYPE_ADV_ONEBUF: u32 = 1 << 25;
    /// Drop frames when the queue has no free descriptor.
    pub const DROP_EN: u32 = 1 << 31;
}

// ---- Transmit (8.12) --------------------------------------------------------

/// Transmit Control.
pub const TCTL: usize = 0x0400;

pub mod tctl {
    /// Transmitter enable.
    pub const EN: u32 = 1 << 1;
    /// Pad short packets.
    pub const PSP: u32 = 1 << 3;
    /// Collision threshold field.
    pub const CT_SHIFT: u32 = 4;
    pub const CT_DEFAULT: u32 = 0xf;
    /// Collision distance field (full duplex value).
    pub const COLD_SHIFT: u32 = 12;
    pub const COLD_FULL_DUPLEX: u32 = 0x3f;
    /// Re-transmit on late collision.
    pub const RTLC: u32 = 1 << 24;
}

pub const fn tdbal(n: usize) -> usize {
    0xe000 + 0x40 * n
}
pub const fn tdbah(n: usize) -> usize {
    0xe004 + 0x40 * n
}
pub const fn tdlen(n: usize) -> usize {
    0xe008 + 0x40 * n
}
pub const fn tdh(n: usize) -> usize {
    0xe010 + 0x40 * n
}
pub const fn tdt(n: usize) -> usize {
    0xe018 + 0x40 * n
}
pub const fn txdctl(n: usize) -> usize {
    0xe028 + 0x40 * n
}

/// RXDCTL / TXDCTL fields: prefetch, host and write-back thresholds and the
/// queue enable bit (same layout for both).
pub mod dctl {
    pub const PTHRESH_SHIFT: u32 = 0;
    pub const HTHRESH_SHIFT: u32 = 8;
    pub const WTHRESH_SHIFT: u32 = 16;
    /// Queue enable; reads back set once the queue is running.
    pub const ENABLE: u32 = 1 << 25;

    /// A control word with the given thresholds and the enable bit.
    pub const fn enabled(pthresh: u32, hthresh: u32, wthresh: u32) -> u32 {
        ENABLE | (pthresh << PTHRESH_SHIFT) | (hthresh << HTHRESH_SHIFT) | (wthresh << WTHRESH_SHIFT)
    }
}

// ---- Statistics (8.19): all clear on read ----------------------------------

pub mod stat {
    /// CRC Error Count.
    pub const CRCERRS: usize = 0x4000;
    /// RX Error Count.
    pub const RXERRC: usize = 0x400c;
    /// Missed Packets Count (no room in the receive FIFO).
    pub const MPC: usize = 0x4010;
    /// Excessive Collisions Count.
    pub const ECOL: usize = 0x4018;
    /// Late Collisions Count.
    pub const LATECOL: usize = 0x4020;
    /// Receive Length Error Count.
    pub const RLEC: usize = 0x4040;
    /// Good Packets Received Count.
    pub const GPRC: usize = 0x4074;
    /// Good Packets Transmitted Count.
    pub const GPTC: usize = 0x4080;
    /// Good Octets Received Count, low then high (reading high clears both).
    pub const GORCL: usize = 0x4088;
    pub const GORCH: usize = 0x408c;
    /// Good Octets Transmitted Count, low then high.
    pub const GOTCL: usize = 0x4090;
    pub const GOTCH: usize = 0x4094;
}

/// Bytes the octet counters add per frame for its CRC (GORC/GOTC count
/// from the destination address through the CRC).
pub const FCS_LEN: u64 = 4;

/// Highest register offset the driver touches, plus one: BAR0 must be at
/// least this long.
pub const REGS_LEN: usize = 0x1_0000;
