//! The virtio-net port: device initialization (virtio spec §3.1.1 on the
//! PCI transport, §5.1.5 for the network device) and the [`Nic`] interface
//! on one receive and one transmit queue.

use std::time::Duration;

use fastlane_framework::{DmaRegion, PageSize, PciDevice, PoolCache, Vfio};

use super::ctrl::{self, CtrlQueue};
use super::pci::{find_caps, Transport};
use super::rx::{RxQueue, RX_HEADROOM};
use super::spec::*;
use super::tx::{self, TxQueue};
use super::virtqueue::{QueueLayout, Virtqueue};
use crate::{LinkStatus, Nic, NicConfig, NicError, Packet, PacketPool, Result, Stats, HEADROOM, MAX_FRAME};

/// How long the device may take to finish a reset.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a control command may take.
const CTRL_TIMEOUT: Duration = Duration::from_secs(2);
/// Control queue entries (one command at a time).
const CTRL_QUEUE_SIZE: u16 = 8;
/// Buffers the port's pool cache holds.
const CACHE_SIZE: usize = 256;

/// Features the driver can use; VERSION_1 and ACCESS_PLATFORM are required.
const WANTED: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_F_ACCESS_PLATFORM
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_STATUS
    | VIRTIO_NET_F_CTRL_VQ
    | VIRTIO_NET_F_CTRL_RX
    | VIRTIO_NET_F_SPEED_DUPLEX;

/// The features to accept from those `offered`.
pub fn negotiate(offered: u64) -> Result<u64> {
    if offered & VIRTIO_F_VERSION_1 == 0 {
        return Err(NicError::Negotiation(
            "the device does not offer VIRTIO_F_VERSION_1 (legacy-only devices are not supported)".into(),
        ));
    }
    if offered & VIRTIO_F_ACCESS_PLATFORM == 0 {
        return Err(NicError::Negotiation(
            "the device does not offer VIRTIO_F_ACCESS_PLATFORM: it would DMA to physical addresses, \
             bypassing the IOMMU (QEMU: add iommu_platform=on to -device virtio-net-pci)"
                .into(),
        ));
    }
    let mut f = offered & WANTED;
    if f & VIRTIO_NET_F_CTRL_VQ == 0 {
        f &= !VIRTIO_NET_F_CTRL_RX;
    }
    Ok(f)
}

/// The queue size to use: `wanted` rounded up to a power of two, at most
/// the device's largest (rounded down to a power of two).
pub fn queue_size(wanted: u16, device_max: u16) -> Result<u16> {
    if device_max == 0 {
        return Err(NicError::Malformed("the device reports a virtqueue of size 0"));
    }
    // The largest power of two not above the device's limit.
    let max = 1u16 << (15 - device_max.min(VIRTQ_MAX_SIZE).leading_zeros());
    let want = wanted.max(1).checked_next_power_of_two().unwrap_or(VIRTQ_MAX_SIZE);
    Ok(want.min(max))
}

/// A virtio-net port (modern virtio-pci, split virtqueues): one receive and
/// one transmit queue, polled.
///
/// ```no_run
/// use fastlane_framework::Vfio;
/// use fastlane_nic::{Nic, NicConfig, PacketPool, virtio::VirtioNet};
/// let vfio = Vfio::new()?;
/// let pool = PacketPool::new(&vfio, 4096)?;
/// let mut port = VirtioNet::open(&vfio, "0000:00:05.0", &pool, &NicConfig::default())?;
/// let mut pkts = Vec::new();
/// port.rx_burst(&mut pkts, 32);
/// port.tx_burst(&mut pkts); // send them back out
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Frames: received packets start [`RX_HEADROOM`] bytes into their buffer
/// (see [`Packet::offset`]); sending a packet with at least 12 bytes of
/// headroom writes the virtio header into it (one descriptor instead of
/// two). Frames shorter than 60 bytes are padded with zeros.
///
/// Invalid frames: `tx_burst` stops at a packet that
/// [`VirtioNet::check_packet`] refuses (longer than [`MAX_FRAME`], shorter
/// than an Ethernet header, or no room to pad it) and leaves it at the front
/// of the vector, unsent and uncounted. When `tx_burst` takes fewer packets
/// than offered, `check_packet(&pkts[0])` tells a full ring (`Ok`) from an
/// invalid frame (the typed error: `FrameTooLarge`, `FrameTooShort`).
///
/// Counters are kept by the driver (virtio has no statistics registers):
/// `tx_*` count frames the device has consumed (padded length), `rx_*`
/// frames delivered (without the virtio header); `rx_errors` counts frames
/// longer than [`MAX_FRAME`] or shorter than the header; `rx_dropped` stays
/// 0 (the device does not report drops).
pub struct VirtioNet {
    transport: Transport,
    rx: RxQueue,
    tx: TxQueue,
    ctrl: Option<CtrlQueue>,
    cache: PoolCache,
    features: u64,
    mac: [u8; 6],
    stats: Stats,
    dev: PciDevice,
}

/// What [`VirtioNet::init`] sets up.
struct Bringup {
    rx: RxQueue,
    tx: TxQueue,
    ctrl: Option<CtrlQueue>,
    features: u64,
    mac: [u8; 6],
}

impl VirtioNet {
    /// Opens the virtio-net device at `addr` (bound to vfio-pci): resets
    /// and initializes it, receive buffers from `pool`, ring sizes from
    /// `cfg` (capped by the device).
    pub fn open(vfio: &Vfio, addr: &str, pool: &PacketPool, cfg: &NicConfig) -> Result<VirtioNet> {
        // A device open in this container already gives `Busy` here, before
        // anything touches it: the first handle keeps working.
        Self::open_device(vfio, vfio.open(addr)?, pool, cfg)
    }

    /// [`VirtioNet::open`] on a device already opened in `vfio` (what
    /// [`crate::open`] does after reading its PCI id). Nothing is written to
    /// the device before every argument was checked: a refused open leaves
    /// it as it was.
    pub(crate) fn open_device(vfio: &Vfio, dev: PciDevice, pool: &PacketPool, cfg: &NicConfig) -> Result<VirtioNet> {
        let addr = dev.address().to_string();
        let (vendor, device) = dev.id()?;
        let caps = find_caps(|off, buf| Ok(dev.config_read(off, buf)?))?;
        let is_net = vendor == VIRTIO_PCI_VENDOR
            && (device == VIRTIO_PCI_DEVICE_NET || device == VIRTIO_PCI_DEVICE_NET_TRANSITIONAL);
        if !is_net || !caps.is_modern() {
            return Err(NicError::Unsupported {
                addr,
                vendor,
                device,
                class: dev.class_code()?,
            });
        }
        if cfg.queues != 1 {
            return Err(NicError::InvalidArgument(format!(
                "{} queues: the virtio-net driver has one queue pair",
                cfg.queues
            )));
        }
        // The pool must be mapped in this container: a buffer of another
        // container has an IOVA that means other memory here, or none.
        crate::check_pool(pool, vfio.domain())?;
        let need = RX_HEADROOM + MAX_FRAME;
        if pool.pool().buf_size() < need {
            return Err(NicError::InvalidArgument(format!(
                "packet buffers of {} bytes: virtio-net needs {need}",
                pool.pool().buf_size()
            )));
        }
        dev.enable_dma()?;
        let transport = Transport::map(&dev, &caps)?;
        let up = match Self::init(vfio, &dev, &transport, cfg) {
            Ok(up) => up,
            Err(e) => {
                // §3.1.1: tell the device we gave up. It never got DRIVER_OK,
                // so it did not use the queue memory; the reset clears it.
                transport.add_status(VIRTIO_STATUS_FAILED);
                let _ = transport.reset(RESET_TIMEOUT);
                return Err(e);
            }
        };
        let mut port = VirtioNet {
            transport,
            rx: up.rx,
            tx: up.tx,
            ctrl: up.ctrl,
            cache: pool.cache(CACHE_SIZE),
            features: up.features,
            mac: up.mac,
            stats: Stats::default(),
            dev,
        };
        // From here on, dropping `port` resets the device.
        port.transport.add_status(VIRTIO_STATUS_DRIVER_OK);
        if port.transport.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET != 0 {
            return Err(NicError::Malformed("the device needs a reset right after DRIVER_OK"));
        }
        port.rx.refill(&mut port.cache);
        if port.ctrl.is_some() {
            port.set_promiscuous(cfg.promiscuous)?;
        } else if !cfg.promiscuous {
            log::warn!(
                "{}: the device has no VIRTIO_NET_F_CTRL_RX; it receives every frame",
                port.dev.address()
            );
        }
        Ok(port)
    }

    /// The initialization sequence from reset up to, not including,
    /// DRIVER_OK (§3.1.1): features, queues, MAC address.
    fn init(vfio: &Vfio, dev: &PciDevice, t: &Transport, cfg: &NicConfig) -> Result<Bringup> {
        t.reset(RESET_TIMEOUT)?;
        t.add_status(VIRTIO_STATUS_ACKNOWLEDGE);
        t.add_status(VIRTIO_STATUS_DRIVER);
        let offered = t.device_features();
        let features = negotiate(offered)?;
        t.set_driver_features(features);
        t.add_status(VIRTIO_STATUS_FEATURES_OK);
        if t.status() & VIRTIO_STATUS_FEATURES_OK == 0 {
            return Err(NicError::Negotiation(format!(
                "the device did not accept features {} (offered {})",
                feature_names(features),
                feature_names(offered)
            )));
        }
        log::debug!("{}: virtio-net features {}", dev.address(), feature_names(features));
        t.disable_config_vector();

        let with_ctrl = features & VIRTIO_NET_F_CTRL_VQ != 0;
        if t.num_queues() < if with_ctrl { 3 } else { 2 } {
            return Err(NicError::Malformed("the device has fewer virtqueues than its features promise"));
        }
        let rx_size = queue_size(cfg.rx_ring, t.queue_max_size(RECEIVEQ))?;
        let tx_size = queue_size(cfg.tx_ring, t.queue_max_size(TRANSMITQ))?;
        let ctrl_size = if with_ctrl {
            queue_size(CTRL_QUEUE_SIZE, t.queue_max_size(CONTROLQ))?
        } else {
            1
        };
        // One region: the queues, then a page with the zero transmit
        // header and the control command area.
        let layouts = [QueueLayout::new(rx_size), QueueLayout::new(tx_size), QueueLayout::new(ctrl_size)];
        let bases = [0, layouts[0].total, layouts[0].total + layouts[1].total];
        let scratch = bases[2] + if with_ctrl { layouts[2].total } else { 0 };
        let region = vfio.alloc_region(scratch + 4096, PageSize::Huge2M)?;
        let zero_hdr = region.carve::<u8>(scratch, 64)?;
        let ctrl_area = region.carve::<u8>(scratch + 64, ctrl::AREA_LEN)?;

        fn queue<T>(t: &Transport, region: &DmaRegion, q: u16, base: usize, l: QueueLayout) -> Result<Virtqueue<T>> {
            let notifier = t.setup_queue(q, l.size, l.addrs(region, base))?;
            Virtqueue::new(region, base, l, notifier)
        }
        let rx = RxQueue::new(queue(t, &region, RECEIVEQ, bases[0], layouts[0])?);
        let tx = TxQueue::new(queue(t, &region, TRANSMITQ, bases[1], layouts[1])?, zero_hdr, vfio.domain())?;
        let ctrl = match with_ctrl {
            true => Some(CtrlQueue::new(queue(t, &region, CONTROLQ, bases[2], layouts[2])?, ctrl_area)?),
            false => None,
        };
        let mac = if features & VIRTIO_NET_F_MAC != 0 {
            t.read_config(|c| std::array::from_fn(|i| c.read8(net_config::MAC + i)))
        } else {
            // No address from the device: a locally administered one from
            // the PCI address.
            let a = dev.address();
            [0x02, 0, (a.domain & 0xff) as u8, a.bus, a.device, a.function]
        };
        Ok(Bringup { rx, tx, ctrl, features, mac })
    }

    /// Whether a frame of `len` bytes can be sent (at most [`MAX_FRAME`],
    /// at least an Ethernet header); the typed error says why not.
    pub fn check_frame(len: usize) -> Result<()> {
        tx::check_frame(len)
    }

    /// [`VirtioNet::check_frame`] plus room in the buffer to pad the frame:
    /// exactly the test `tx_burst` applies.
    pub fn check_packet(p: &Packet) -> Result<()> {
        tx::check_packet(p)
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Receive buffers the device holds.
    pub fn rx_posted(&self) -> usize {
        self.rx.posted()
    }

    /// The PCI device.
    pub fn device(&self) -> &PciDevice {
        &self.dev
    }
}

impl Nic for VirtioNet {
    fn rx_burst(&mut self, out: &mut Vec<Packet>, max: usize) -> usize {
        self.rx.burst(out, max, &mut self.cache, &mut self.stats)
    }

    /// Reclaims what the device sent, then queues packets from the front of
    /// `pkts` while descriptors last, and publishes and notifies before
    /// returning; stops at a packet [`Nic::check_tx`] refuses (a foreign
    /// buffer, a bad frame), which stays first in `pkts`.
    fn tx_burst(&mut self, pkts: &mut Vec<Packet>) -> usize {
        self.tx.burst(pkts, &mut self.cache, &mut self.stats)
    }

    fn check_tx(&self, pkt: &Packet) -> Result<()> {
        self.tx.check(pkt)
    }

    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    fn link_status(&self) -> LinkStatus {
        let f = self.features;
        let len = self.transport.device_config_len();
        self.transport.read_config(|c| {
            // Without VIRTIO_NET_F_STATUS the link is assumed up (§5.1.4.2).
            let up = f & VIRTIO_NET_F_STATUS == 0
                || len < net_config::STATUS + 2
                || c.read16(net_config::STATUS) & VIRTIO_NET_S_LINK_UP != 0;
            let (speed, duplex) = if f & VIRTIO_NET_F_SPEED_DUPLEX != 0 && len >= net_config::LEN_SPEED_DUPLEX {
                (c.read32(net_config::SPEED), c.read8(net_config::DUPLEX))
            } else {
                (VIRTIO_NET_SPEED_UNKNOWN, 0xff)
            };
            LinkStatus {
                up,
                speed_mbps: (up && speed != VIRTIO_NET_SPEED_UNKNOWN).then_some(speed),
                full_duplex: duplex != VIRTIO_NET_DUPLEX_HALF,
            }
        })
    }

    fn set_promiscuous(&mut self, on: bool) -> Result<()> {
        match &mut self.ctrl {
            Some(ctrl) if self.features & VIRTIO_NET_F_CTRL_RX != 0 => ctrl.command(
                VIRTIO_NET_CTRL_RX,
                VIRTIO_NET_CTRL_RX_PROMISC,
                &[on as u8],
                CTRL_TIMEOUT,
            ),
            // A device without receive-mode control takes every frame.
            _ if on => Ok(()),
            _ => Err(NicError::InvalidArgument(
                "the device has no VIRTIO_NET_F_CTRL_RX: it cannot filter frames".into(),
            )),
        }
    }

    fn stats(&mut self) -> Stats {
        self.tx.reclaim(&mut self.cache, &mut self.stats);
        self.stats
    }

    fn tx_in_flight(&self) -> usize {
        self.tx.in_flight()
    }

    /// With [`HEADROOM`] in front of the frame, the virtio header goes
    /// there when it is sent: one descriptor per frame.
    fn alloc_packet(&mut self, len: usize) -> Result<Packet> {
        Packet::with_offset(self.cache.alloc()?, HEADROOM, len)
    }

    fn recycle(&mut self, pkts: &mut Vec<Packet>) {
        self.cache.free_all(pkts.drain(..).map(Packet::into_buf));
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        // The device must let go of every buffer before they return to the
        // pool: reset it, or at least cut its bus mastering.
        if let Err(e) = self.transport.reset(RESET_TIMEOUT) {
            log::error!("{}: {e}; turning bus mastering off", self.dev.address());
            if let Err(e) = self.dev.disable_dma() {
                log::error!("{}: {e}: buffers leak rather than return", self.dev.address());
                self.rx.drain().for_each(std::mem::forget);
                self.tx.drain().for_each(std::mem::forget);
                return;
            }
        }
        for buf in self.rx.drain() {
            super::release(&mut self.cache, buf);
        }
        for buf in self.tx.drain() {
            super::release(&mut self.cache, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_requires_version_1_and_access_platform() {
        let all = u64::MAX;
        assert_eq!(negotiate(all).unwrap(), WANTED);
        assert!(matches!(negotiate(all & !VIRTIO_F_VERSION_1), Err(NicError::Negotiation(_))));
        let e = negotiate(all & !VIRTIO_F_ACCESS_PLATFORM).unwrap_err().to_string();
        assert!(e.contains("iommu_platform=on"), "{e}");
        // Never merged buffers; no receive-mode control without the queue.
        assert_eq!(negotiate(all).unwrap() & VIRTIO_NET_F_MRG_RXBUF, 0);
        let no_vq = negotiate(all & !VIRTIO_NET_F_CTRL_VQ).unwrap();
        assert_eq!(no_vq & (VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_CTRL_RX), 0);
    }

    #[test]
    fn queue_sizes_are_powers_of_two_within_the_device_limit() {
        assert_eq!(queue_size(512, 256).unwrap(), 256);
        assert_eq!(queue_size(100, 256).unwrap(), 128);
        assert_eq!(queue_size(0, 256).unwrap(), 1);
        assert_eq!(queue_size(64, 1000).unwrap(), 64);
        assert_eq!(queue_size(4096, 1000).unwrap(), 512);
        assert_eq!(queue_size(u16::MAX, u16::MAX).unwrap(), 32768);
        assert_eq!(queue_size(8, 1).unwrap(), 1);
        assert!(queue_size(8, 0).is_err());
    }
}
