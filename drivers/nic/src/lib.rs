//! NIC polling-mode drivers for the fastlane framework, behind one [`Nic`]
//! interface: burst receive and transmit of [`Packet`]s whose buffers come
//! from framework pools and whose descriptors are filled from the buffer's
//! precomputed IOVA.
//!
//! Ownership is the contract: `rx_burst` hands received packets to the
//! caller; `tx_burst` takes packets from the front of the caller's vector,
//! and the driver returns their buffers to the pool once the NIC reports
//! them sent. Packets it could not queue stay in the caller's vector.

use fastlane_framework::{BufferPool, DmaBuf, PoolError};

pub mod igb;
pub mod packet;
pub mod virtio;

pub use packet::{Packet, PacketPool};

/// Largest frame without FCS that the drivers send or accept (standard MTU).
pub const MAX_FRAME: usize = 1514;
/// Smallest frame without FCS on Ethernet; shorter ones are padded by the NIC.
pub const MIN_FRAME: usize = 60;

/// Errors of the NIC drivers.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    #[error(transparent)]
    Framework(#[from] fastlane_framework::Error),
    #[error("{addr} is not a supported NIC (id {vendor:04x}:{device:04x}, class {class:06x})")]
    Unsupported {
        addr: String,
        vendor: u16,
        device: u16,
        class: u32,
    },
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is shorter than the minimum of {min}")]
    FrameTooShort { len: usize, min: usize },
    #[error("buffer pool: {0}")]
    Pool(#[from] PoolError),
    #[error("{what} timed out")]
    Timeout { what: &'static str },
    #[error("device feature negotiation failed: {0}")]
    Negotiation(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("malformed data from the device: {0}")]
    Malformed(&'static str),
}

/// Result alias of the NIC drivers.
pub type Result<T, E = NicError> = std::result::Result<T, E>;

/// Packet and byte counters, from the device's statistics registers where it
/// has them, counted by the driver otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames the NIC dropped (no descriptor, FIFO full).
    pub rx_dropped: u64,
    /// Frames received with errors (CRC, length).
    pub rx_errors: u64,
    pub tx_errors: u64,
}

/// Link state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    /// Mbit/s, when known.
    pub speed_mbps: Option<u32>,
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
}

impl Default for NicConfig {
    fn default() -> Self {
        NicConfig {
            rx_ring: 512,
            tx_ring: 512,
            promiscuous: true,
            queues: 1,
        }
    }
}

/// Opens the NIC at `addr` (bound to vfio-pci) with the driver its PCI id
/// calls for: Intel igb (82576/i350 family) or virtio-net (modern).
pub fn open(
    vfio: &fastlane_framework::Vfio,
    addr: &str,
    pool: &PacketPool,
    cfg: &NicConfig,
) -> Result<Box<dyn Nic>> {
    match igb::Igb::open(vfio, addr, pool, cfg) {
        Ok(nic) => Ok(Box::new(nic)),
        Err(NicError::Unsupported { .. }) => Ok(Box::new(virtio::VirtioNet::open(vfio, addr, pool, cfg)?)),
        Err(e) => Err(e),
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
