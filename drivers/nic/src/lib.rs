//! NIC polling-mode drivers for the fastlane framework, behind one [`Nic`]
//! interface: burst receive and transmit of [`Packet`]s whose buffers come
//! from framework pools and whose descriptors are filled from the buffer's
//! precomputed IOVA.
//!
//! Ownership is the contract: `rx_burst` hands received packets to the
//! caller; `tx_burst` takes packets from the front of the caller's vector,
//! and the driver returns their buffers to the pool once the NIC reports
//! them sent. Packets it could not queue stay in the caller's vector.
//! Between the two the caller owns the bytes: headers are read and
//! rewritten in place ([`Packet::data_mut`], [`Packet::prepend`]), and a
//! received packet goes back out as it is, without a copy:
//!
//! ```no_run
//! # use fastlane_nic::{Nic, Packet};
//! /// l2fwd: both MAC addresses rewritten in place, then sent on.
//! fn forward(from: &mut dyn Nic, to: &mut dyn Nic, pkts: &mut Vec<Packet>, dst: [u8; 6]) {
//!     from.rx_burst(pkts, 32);
//!     let src = to.mac_address();
//!     for p in pkts.iter_mut() {
//!         if let Some(macs) = p.data_mut().get_mut(..12) {
//!             macs[..6].copy_from_slice(&dst);
//!             macs[6..].copy_from_slice(&src);
//!         }
//!     }
//!     to.tx_burst(pkts);
//!     to.recycle(pkts); // what did not fit goes back to the port's cache
//! }
//! ```
//!
//! Safe code cannot make a port hand its device an address outside its own
//! VFIO container: a pool of another container is refused at open
//! ([`NicError::ForeignBuffer`]), a packet of another container stops
//! `tx_burst` and stays with the caller, and receive rings are filled only
//! from the port's own pool. Nothing here is `unsafe`: descriptor rings
//! and virtqueues are the framework's [`fastlane_framework::DmaArray`]s.

#![forbid(unsafe_code)]

use fastlane_framework::{BufferPool, DmaBuf, DmaDomain, PciDevice, PoolError, Vfio};

pub mod igb;
pub mod offload;
pub mod packet;
/// Ethernet, ARP, IPv4, ICMP and UDP headers, checksums and parsers for the tools.
pub mod proto;
pub mod virtio;

pub use offload::{TxOffload, L4};
pub use packet::{rx_status, Packet, PacketPool, RxChecksum, HEADROOM};

/// Largest frame without FCS that the drivers send or accept (standard MTU).
pub const MAX_FRAME: usize = 1514;
/// Largest MTU the drivers support (jumbo frames), in IP bytes.
pub const MAX_MTU: u16 = 9000;
/// Largest frame without FCS at [`MAX_MTU`]: a multi-buffer [`Packet`].
pub const MAX_JUMBO_FRAME: usize = MAX_MTU as usize + 14;
/// Smallest frame without FCS on Ethernet; shorter ones are padded by the NIC.
pub const MIN_FRAME: usize = 60;

/// Errors of the NIC drivers.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// From the framework: VFIO, config space, DMA memory (`Busy` for a
    /// device open already in this container).
    #[error(transparent)]
    Framework(#[from] fastlane_framework::Error),
    /// The buffer or pool is not mapped in the port's VFIO container; the
    /// device could not reach it (or would reach other memory).
    #[error("the buffer is not mapped in this port's VFIO container (allocate it from a pool of the same Vfio)")]
    ForeignBuffer,
    /// The device is not one of the drivers' NICs.
    #[error("{addr} is not a supported NIC (id {vendor:04x}:{device:04x}, class {class:06x})")]
    Unsupported {
        /// Its PCI address.
        addr: String,
        /// PCI vendor id.
        vendor: u16,
        /// PCI device id.
        device: u16,
        /// PCI class code.
        class: u32,
    },
    /// A frame longer than the drivers send.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Its length.
        len: usize,
        /// The longest allowed.
        max: usize,
    },
    /// A frame shorter than an Ethernet header.
    #[error("frame of {len} bytes is shorter than the minimum of {min}")]
    FrameTooShort {
        /// Its length.
        len: usize,
        /// The shortest allowed.
        min: usize,
    },
    /// A packet has too little room for what was asked: headroom for a
    /// prepend, tailroom for an append, frame bytes for a trim.
    #[error("{what} of {want} bytes: only {room} there")]
    NoRoom {
        /// The operation.
        what: &'static str,
        /// Bytes it wanted.
        want: usize,
        /// Bytes there were.
        room: usize,
    },
    /// The packet pool (empty, or a buffer of another pool).
    #[error("buffer pool: {0}")]
    Pool(#[from] PoolError),
    /// The device did not finish a handshake in time.
    #[error("{what} timed out")]
    Timeout {
        /// Which handshake.
        what: &'static str,
    },
    /// The device and the driver have no feature set in common.
    #[error("device feature negotiation failed: {0}")]
    Negotiation(String),
    /// A bad argument (ring size, queue count, buffer size, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A frame lacks the headers a transmit offload needs (not IPv4, not
    /// the TCP/UDP asked for, a fragment, bad lengths).
    #[error("transmit offload refused: {0}")]
    Offload(&'static str),
    /// The device wrote something impossible; it was not trusted.
    #[error("malformed data from the device: {0}")]
    Malformed(&'static str),
}

/// Result alias of the NIC drivers.
pub type Result<T, E = NicError> = std::result::Result<T, E>;

/// Packet and byte counters, from the device's statistics registers where it
/// has them, counted by the driver otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received (without CRC).
    pub rx_bytes: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Bytes transmitted (without CRC).
    pub tx_bytes: u64,
    /// Frames the NIC dropped (no descriptor, FIFO full).
    pub rx_dropped: u64,
    /// Frames received with errors (CRC, length).
    pub rx_errors: u64,
    /// Frames the device or driver failed to send.
    pub tx_errors: u64,
}

/// Link state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    /// Whether the link is up.
    pub up: bool,
    /// Mbit/s, when known.
    pub speed_mbps: Option<u32>,
    /// Full duplex (when up).
    pub full_duplex: bool,
}

/// What every NIC driver offers. One queue pair per `Nic` value; drivers
/// with several queues hand out one value per queue.
pub trait Nic: Send {
    /// Receives up to `max` packets, appended to `out`; returns how many.
    fn rx_burst(&mut self, out: &mut Vec<Packet>, max: usize) -> usize;
    /// Queues packets from the front of `pkts` for sending; returns how many
    /// it took (removed from `pkts`). The rest stay the caller's.
    fn tx_burst(&mut self, pkts: &mut Vec<Packet>) -> usize;
    /// The port's MAC address.
    fn mac_address(&self) -> [u8; 6];
    /// Current link state.
    fn link_status(&self) -> LinkStatus;
    /// Receive every frame, not only those addressed to us.
    fn set_promiscuous(&mut self, on: bool) -> Result<()>;
    /// Counters since the port was opened.
    fn stats(&mut self) -> Stats;
    /// Buffers the driver holds for transmitted-but-not-yet-reclaimed packets
    /// (they return to their pool as the NIC reports them done).
    fn tx_in_flight(&self) -> usize;
    /// Exactly the test `tx_burst` applies to each packet: when it takes
    /// fewer than offered, this on the first one left tells a full ring
    /// (`Ok`) from a packet it will never take (`ForeignBuffer`,
    /// `FrameTooShort`, `FrameTooLarge`, ...).
    fn check_tx(&self, pkt: &Packet) -> Result<()>;
    /// A packet for a frame of `len` bytes from the port's own buffer
    /// cache, [`HEADROOM`] bytes into its buffer (the bytes are what the
    /// buffer held: write them through [`Packet::data_mut`]). Buffers
    /// cycle between here, `tx_burst`'s reclaim and `rx_burst`'s refill
    /// without touching the pool's shared free list.
    fn alloc_packet(&mut self, len: usize) -> Result<Packet>;
    /// Gives the buffers of `pkts` back to the port's cache (buffers of
    /// other pools go home to theirs, never onto a ring); `pkts` is left
    /// empty. Cheaper than dropping them: the next `rx_burst` or
    /// `alloc_packet` takes them from the cache.
    fn recycle(&mut self, pkts: &mut Vec<Packet>);
    /// [`Nic::tx_burst`] with work done on every frame of the burst: the
    /// IPv4, TCP or UDP checksum filled in, a VLAN tag inserted, by the NIC
    /// where it can (igb) and in software where it cannot (the same bytes
    /// on the wire). Stops at a frame the offload does not fit
    /// ([`NicError::Offload`] from [`offload::prepare`]) or that
    /// [`Nic::check_tx`] refuses, and leaves it first in `pkts`. The
    /// default does it in software ([`offload::tx_burst_in_software`]).
    fn tx_burst_offload(&mut self, pkts: &mut Vec<Packet>, offload: &TxOffload) -> usize {
        offload::tx_burst_in_software(self, pkts, offload)
    }
}

/// Refuses a pool whose memory is not mapped in `domain` (the port's
/// container, or [`DmaDomain::UNMAPPED`] for an in-process model).
pub(crate) fn check_pool(pool: &PacketPool, domain: DmaDomain) -> Result<()> {
    if pool.pool().region().domain() != domain {
        return Err(NicError::ForeignBuffer);
    }
    Ok(())
}

/// Refuses a packet whose buffer is not mapped in `domain`: one compare.
#[inline(always)]
pub(crate) fn check_domain(pkt: &Packet, domain: DmaDomain) -> Result<()> {
    if pkt.buf().domain() != domain {
        return Err(NicError::ForeignBuffer);
    }
    Ok(())
}

/// Port configuration.
#[derive(Clone, Debug)]
pub struct NicConfig {
    /// Receive descriptors (a power of two; the driver may round).
    pub rx_ring: u16,
    /// Transmit descriptors.
    pub tx_ring: u16,
    /// Accept every frame, not only those for our MAC.
    pub promiscuous: bool,
    /// Receive/transmit queue pairs. 1 everywhere; drivers that can spread
    /// received frames over several queues (igb, with RSS) open that many
    /// through their own multi-queue constructor, one `Nic` per queue.
    pub queues: u16,
    /// VLAN offloads (igb: CTRL.VME): received 802.1Q tags are stripped and
    /// reported ([`Packet::rx_vlan`]); transmit can insert them
    /// ([`TxOffload::vlan`]). Off: tags stay in the frames.
    pub vlan: bool,
    /// Report the NIC's receive checksum verdicts per packet
    /// ([`Packet::rx_ip_checksum`], [`Packet::rx_l4_checksum`]); a few
    /// instructions per packet on igb, so off unless asked (on with `vlan`
    /// too, which reports the stripped tags the same way).
    pub rx_checksum: bool,
    /// Largest IP packet per frame, in bytes: 1500 (standard), up to
    /// [`MAX_MTU`] for jumbo frames. Frames longer than a packet buffer
    /// ([`MAX_FRAME`] bytes) are received and sent as multi-buffer
    /// [`Packet`]s; the port takes frames of up to [`NicConfig::max_frame`].
    pub mtu: u16,
    /// virtio-net: packed virtqueues (VIRTIO_F_RING_PACKED; QEMU
    /// `packed=on`) instead of split ones; refused when the device does not
    /// offer them. igb has no such choice and ignores it.
    pub packed: bool,
}

impl NicConfig {
    /// The longest frame (without FCS) the port sends and accepts: the MTU
    /// plus the Ethernet header. Refuses an MTU outside 68..=[`MAX_MTU`].
    pub fn max_frame(&self) -> Result<usize> {
        if !(68..=MAX_MTU).contains(&self.mtu) {
            return Err(NicError::InvalidArgument(format!(
                "MTU {} (68..={MAX_MTU})",
                self.mtu
            )));
        }
        Ok(usize::from(self.mtu) + 14)
    }
}

impl Default for NicConfig {
    fn default() -> Self {
        NicConfig {
            rx_ring: 512,
            tx_ring: 512,
            promiscuous: true,
            queues: 1,
            vlan: false,
            rx_checksum: false,
            mtu: 1500,
            packed: false,
        }
    }
}

/// Which driver a PCI vendor/device id calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// Intel igb (82576/I350 family, QEMU's `igb`).
    Igb,
    /// virtio-net, modern (1af4:1041) or transitional (1af4:1000).
    VirtioNet,
}

impl Driver {
    /// The driver for `vendor:device`, if any.
    pub fn for_id(vendor: u16, device: u16) -> Option<Driver> {
        use virtio::spec::{
            VIRTIO_PCI_DEVICE_NET, VIRTIO_PCI_DEVICE_NET_TRANSITIONAL, VIRTIO_PCI_VENDOR,
        };
        if igb::model(vendor, device).is_some() {
            Some(Driver::Igb)
        } else if vendor == VIRTIO_PCI_VENDOR
            && (device == VIRTIO_PCI_DEVICE_NET || device == VIRTIO_PCI_DEVICE_NET_TRANSITIONAL)
        {
            Some(Driver::VirtioNet)
        } else {
            None
        }
    }
}

/// Opens the NIC at `addr` (bound to vfio-pci) with the driver its PCI
/// vendor/device id calls for: Intel igb (82576/i350 family) or virtio-net
/// (modern). The device is opened once and handed to that driver; a device
/// open already in `vfio` gives `Busy` without being touched, and one of
/// another kind gives [`NicError::Unsupported`].
pub fn open(vfio: &Vfio, addr: &str, pool: &PacketPool, cfg: &NicConfig) -> Result<Box<dyn Nic>> {
    let dev: PciDevice = vfio.open(addr)?;
    let (vendor, device) = dev.id()?;
    match Driver::for_id(vendor, device) {
        Some(Driver::Igb) => Ok(Box::new(igb::Igb::open_one(vfio, dev, pool, cfg)?)),
        Some(Driver::VirtioNet) => Ok(Box::new(virtio::VirtioNet::open_device(
            vfio, dev, pool, cfg,
        )?)),
        None => Err(NicError::Unsupported {
            addr: addr.to_string(),
            vendor,
            device,
            class: dev.class_code()?,
        }),
    }
}

/// Opens the NIC at `addr` with `cfg.queues` queue pairs, one [`Nic`] per
/// pair, pair 0 first, with the driver its PCI id calls for: igb (RSS over
/// up to 8 queues, [`igb::Igb::open_multi`]) or virtio-net (VIRTIO_NET_F_MQ
/// with RSS, split or packed rings per `cfg.packed`,
/// [`virtio::VirtioNet::open_multi`]). Received IPv4/IPv6 flows are spread
/// over the pairs by the NIC's hash; each pair sends on its own queue, so
/// each can be driven by its own thread.
pub fn open_multi(vfio: &Vfio, addr: &str, pool: &PacketPool, cfg: &NicConfig) -> Result<Vec<Box<dyn Nic>>> {
    let dev: PciDevice = vfio.open(addr)?;
    let (vendor, device) = dev.id()?;
    fn boxed<N: Nic + 'static>(queues: Vec<N>) -> Vec<Box<dyn Nic>> {
        queues.into_iter().map(|q| Box::new(q) as Box<dyn Nic>).collect()
    }
    match Driver::for_id(vendor, device) {
        Some(Driver::Igb) => Ok(boxed(igb::Igb::open_device(vfio, dev, pool, cfg)?)),
        Some(Driver::VirtioNet) => Ok(boxed(virtio::VirtioNet::open_pairs(vfio, dev, pool, cfg, cfg.packed)?)),
        None => Err(NicError::Unsupported {
            addr: addr.to_string(),
            vendor,
            device,
            class: dev.class_code()?,
        }),
    }
}

impl std::ops::Sub for Stats {
    type Output = Stats;

    /// Counters gained between two snapshots.
    fn sub(self, before: Stats) -> Stats {
        Stats {
            rx_packets: self.rx_packets.wrapping_sub(before.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_sub(before.rx_bytes),
            tx_packets: self.tx_packets.wrapping_sub(before.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_sub(before.tx_bytes),
            rx_dropped: self.rx_dropped.wrapping_sub(before.rx_dropped),
            rx_errors: self.rx_errors.wrapping_sub(before.rx_errors),
            tx_errors: self.tx_errors.wrapping_sub(before.tx_errors),
        }
    }
}

/// Allocates a packet of `len` bytes from `pool` (for generators and tests).
pub fn alloc_packet(pool: &BufferPool, len: usize) -> Result<Packet> {
    let buf: DmaBuf = pool.alloc()?;
    Packet::new(buf, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_open_dispatches_on_the_pci_id() {
        assert_eq!(Driver::for_id(0x8086, 0x10c9), Some(Driver::Igb));
        assert_eq!(Driver::for_id(0x8086, 0x1521), Some(Driver::Igb));
        assert_eq!(Driver::for_id(0x1af4, 0x1041), Some(Driver::VirtioNet));
        assert_eq!(Driver::for_id(0x1af4, 0x1000), Some(Driver::VirtioNet));
        assert_eq!(Driver::for_id(0x1af4, 0x1042), None, "virtio-blk");
        assert_eq!(Driver::for_id(0x8086, 0x10ca), None, "an igb VF");
        assert_eq!(Driver::for_id(0x1b36, 0x0010), None, "QEMU's NVMe");
    }
}
