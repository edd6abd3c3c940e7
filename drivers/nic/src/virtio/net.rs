//! The virtio-net port: device initialization (virtio spec §3.1.1 on the
//! PCI transport, §5.1.5 for the network device) and the [`Nic`] interface
//! on each receive/transmit queue pair (one, or several with
//! VIRTIO_NET_F_MQ and RSS, §5.1.6.5.5).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fastlane_framework::{DmaBuf, DmaRegion, PageSize, PciDevice, PoolCache, Vfio};

use super::ctrl::{self, CtrlQueue};
use super::packed::{PackedLayout, PackedQueue};
use super::pci::{find_caps, Transport};
use super::ring::Ring;
use super::rss::RssSetup;
use super::rx::{mergeable_buffers, RxMode, RxQueue, RX_HEADROOM};
use super::spec::*;
use super::tx::{self, TxQueue};
use super::virtqueue::{QueueLayout, Virtqueue};
use crate::offload::{TxOffload, VLAN_HLEN};
use crate::{
    LinkStatus, Nic, NicConfig, NicError, Packet, PacketPool, Result, Stats, HEADROOM, MAX_FRAME,
    MAX_JUMBO_FRAME,
};

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

/// The features to accept from those `offered` for one queue pair.
pub fn negotiate(offered: u64) -> Result<u64> {
    negotiate_queues(offered, 1)
}

/// The features to accept from those `offered` for `queues` queue pairs:
/// several need VIRTIO_NET_F_MQ, VIRTIO_NET_F_RSS (so that flows spread as
/// the hash says) and the control queue to set them up.
pub fn negotiate_queues(offered: u64, queues: u16) -> Result<u64> {
    negotiate_with(offered, queues, false)
}

/// [`negotiate_queues`], with packed virtqueues when `packed`.
pub fn negotiate_with(offered: u64, queues: u16, packed: bool) -> Result<u64> {
    if packed && offered & VIRTIO_F_RING_PACKED == 0 {
        return Err(NicError::Negotiation(format!(
            "packed virtqueues asked for, the device does not offer VIRTIO_F_RING_PACKED \
             (QEMU: packed=on on -device virtio-net-pci); it offers {}",
            feature_names(offered)
        )));
    }
    if queues > 1 {
        let need = VIRTIO_NET_F_MQ | VIRTIO_NET_F_RSS | VIRTIO_NET_F_CTRL_VQ;
        if offered & need != need {
            return Err(NicError::Negotiation(format!(
                "{queues} queue pairs need {} (QEMU: mq=on,rss=on on -device virtio-net-pci, and a \
                 multi-queue netdev such as tap with queues=N); the device offers {}",
                feature_names(need),
                feature_names(offered)
            )));
        }
    }
    if offered & VIRTIO_F_VERSION_1 == 0 {
        return Err(NicError::Negotiation(
            "the device does not offer VIRTIO_F_VERSION_1 (legacy-only devices are not supported)"
                .into(),
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
    if queues > 1 {
        f |= VIRTIO_NET_F_MQ | VIRTIO_NET_F_RSS;
    }
    if packed {
        f |= VIRTIO_F_RING_PACKED;
    }
    if f & VIRTIO_NET_F_CTRL_VQ == 0 {
        f &= !VIRTIO_NET_F_CTRL_RX;
    }
    Ok(f)
}

/// The features to accept from those `offered` for a port configured as
/// `cfg` ([`negotiate_with`] for its queues and ring layout), plus:
/// VIRTIO_NET_F_CSUM when offered (transmit checksums by the device);
/// VIRTIO_NET_F_GUEST_CSUM when offered and `cfg.rx_checksum` asks (so a
/// port that does not ask never gets frames with partial checksums);
/// VIRTIO_NET_F_MRG_RXBUF for an MTU above 1500, which needs it (frames
/// over several receive buffers); VIRTIO_NET_F_MTU when offered (the
/// device's limit is then honored). QEMU's virtio-net offers no checksum
/// feature behind a hub (`-netdev hubport`: no vnet header on the peer),
/// and offers MRG_RXBUF by default (`mrg_rxbuf=on`).
pub fn negotiate_for(offered: u64, cfg: &NicConfig, packed: bool) -> Result<u64> {
    let mut f = negotiate_with(offered, cfg.queues, packed)?;
    f |= offered & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_MTU);
    if cfg.rx_checksum {
        f |= offered & VIRTIO_NET_F_GUEST_CSUM;
    }
    if cfg.max_frame()? > MAX_FRAME {
        if offered & VIRTIO_NET_F_MRG_RXBUF == 0 {
            return Err(NicError::Negotiation(format!(
                "MTU {} needs VIRTIO_NET_F_MRG_RXBUF (QEMU: mrg_rxbuf=on, its default); the \
                 device offers {}",
                cfg.mtu,
                feature_names(offered)
            )));
        }
        f |= VIRTIO_NET_F_MRG_RXBUF;
    }
    Ok(f)
}

/// The longest frame a port of `max_frame` ([`NicConfig::max_frame`])
/// receives: above [`MAX_FRAME`], with room for a VLAN tag (as igb's and
/// the kernel's drivers allow) up to what a packet holds
/// ([`MAX_JUMBO_FRAME`]); otherwise [`MAX_FRAME`].
fn rx_max_frame(max_frame: usize) -> usize {
    if max_frame > MAX_FRAME {
        (max_frame + VLAN_HLEN).min(MAX_JUMBO_FRAME)
    } else {
        MAX_FRAME
    }
}

/// The queue size to use: `wanted` rounded up to a power of two, at most
/// the device's largest (rounded down to a power of two).
pub fn queue_size(wanted: u16, device_max: u16) -> Result<u16> {
    if device_max == 0 {
        return Err(NicError::Malformed(
            "the device reports a virtqueue of size 0",
        ));
    }
    // The largest power of two not above the device's limit.
    let max = 1u16 << (15 - device_max.min(VIRTQ_MAX_SIZE).leading_zeros());
    let want = wanted
        .max(1)
        .checked_next_power_of_two()
        .unwrap_or(VIRTQ_MAX_SIZE);
    Ok(want.min(max))
}

/// An open virtio-net queue pair (modern virtio-pci, split virtqueues),
/// polled: [`VirtioNet::open`] gives a port's only pair, and
/// [`VirtioNet::open_multi`] one handle per pair, each usable from its own
/// thread, with RSS spreading received frames over them.
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
/// Jumbo frames: with [`NicConfig::mtu`] above 1500 (up to
/// [`crate::MAX_MTU`]) the port negotiates mergeable receive buffers and
/// a frame longer than [`MAX_FRAME`] arrives as one multi-buffer
/// [`Packet`] (at most the MTU plus a VLAN tag); multi-buffer packets of
/// up to the MTU are sent as one descriptor chain, on split and packed
/// rings. QEMU needs nothing on its command line for this (`mrg_rxbuf=on`
/// is its default); a device that offers VIRTIO_NET_F_MTU (`host_mtu`)
/// refuses a larger MTU at open.
///
/// Checksums: [`Nic::tx_burst_offload`] leaves TCP/UDP checksums to a
/// device that offers VIRTIO_NET_F_CSUM and does the rest in software;
/// with [`NicConfig::rx_checksum`], VIRTIO_NET_F_GUEST_CSUM's header flags
/// become [`Packet::rx_l4_checksum`] verdicts (see the `rx` module for
/// what QEMU reports).
///
/// Invalid frames: `tx_burst` stops at a packet that [`Nic::check_tx`]
/// refuses (longer than the port's largest frame, shorter than an Ethernet
/// header, no room to pad it, over more than 8 buffers, a buffer of
/// another container) and leaves it at the front of the vector, unsent and
/// uncounted. When `tx_burst` takes fewer packets than offered,
/// `check_tx(&pkts[0])` tells a full ring (`Ok`) from an invalid frame
/// (the typed error: `FrameTooLarge`, `FrameTooShort`, ...).
///
/// Counters are kept by the driver (virtio has no statistics registers),
/// per queue pair: `tx_*` count frames the device has consumed (padded
/// length), `rx_*` frames delivered (without the virtio header);
/// `rx_errors` counts frames longer than the port takes or shorter than the
/// header, frames the device described wrongly (one per frame, its buffers
/// kept), and used entries the driver refused; `rx_dropped` stays 0 (the
/// device does not report drops).
pub struct VirtioNet {
    rx: RxQueue,
    tx: TxQueue,
    cache: PoolCache,
    stats: Stats,
    queue: usize,
    /// The longest frame sent ([`NicConfig::max_frame`]).
    max_frame: usize,
    port: Arc<Port>,
}

/// What the queue pairs of one device share. Dropped with the last handle:
/// resets the device, and only then gives back the buffers of handles
/// dropped before.
struct Port {
    transport: Transport,
    ctrl: Mutex<Option<CtrlQueue>>,
    features: u64,
    mac: [u8; 6],
    queues: usize,
    rss: Option<RssSetup>,
    /// Every queue's memory: a handle dropped while the device runs leaves
    /// its rings to the device, so the memory stays until the reset.
    _region: DmaRegion,
    /// Buffers of handles dropped while the device ran.
    retired: Mutex<Vec<DmaBuf>>,
    dev: PciDevice,
}

impl Port {
    fn ctrl(&self) -> MutexGuard<'_, Option<CtrlQueue>> {
        // The queue is consistent whenever the lock is released.
        self.ctrl.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn retired(&self) -> MutexGuard<'_, Vec<DmaBuf>> {
        self.retired.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // The device must let go of every buffer before they return to the
        // pool: reset it, or at least cut its bus mastering.
        if let Err(e) = self.transport.reset(RESET_TIMEOUT) {
            log::error!("{}: {e}; turning bus mastering off", self.dev.address());
            if let Err(e) = self.dev.disable_dma() {
                log::error!(
                    "{}: {e}: buffers leak rather than return",
                    self.dev.address()
                );
                std::mem::take(&mut *self.retired())
                    .into_iter()
                    .for_each(std::mem::forget);
                std::mem::forget(self._region.clone());
            }
        }
    }
}

/// What [`VirtioNet::init`] sets up.
struct Bringup {
    pairs: Vec<(RxQueue, TxQueue)>,
    max_frame: usize,
    ctrl: Option<CtrlQueue>,
    features: u64,
    mac: [u8; 6],
    rss: Option<RssSetup>,
    region: DmaRegion,
}

impl VirtioNet {
    /// Opens the virtio-net device at `addr` (bound to vfio-pci): resets
    /// and initializes it, receive buffers from `pool`, ring sizes from
    /// `cfg` (capped by the device). One queue pair: `cfg.queues` must be 1
    /// (see [`VirtioNet::open_multi`]).
    pub fn open(vfio: &Vfio, addr: &str, pool: &PacketPool, cfg: &NicConfig) -> Result<VirtioNet> {
        // A device open in this container already gives `Busy` here, before
        // anything touches it: the first handle keeps working.
        Self::open_device(vfio, vfio.open(addr)?, pool, cfg)
    }

    /// Opens the virtio-net device at `addr` with `cfg.queues` queue pairs
    /// (1 to the device's `max_virtqueue_pairs`), each `cfg.rx_ring` and
    /// `cfg.tx_ring` long and filled from `pool` (which needs buffers for
    /// every ring), and returns one handle per pair, pair 0 first. With
    /// several, the device needs VIRTIO_NET_F_MQ and VIRTIO_NET_F_RSS (QEMU:
    /// `mq=on,rss=on` and a multi-queue netdev): received IPv4 and IPv6
    /// frames are spread by addresses and TCP/UDP ports with igb's key and
    /// table ([`VirtioNet::rss`] predicts the queue); other frames arrive
    /// on pair 0. Each handle sends on its own transmit queue. The device
    /// stays open until every handle is dropped; a pair dropped before
    /// keeps its buffers until then, and frames RSS sends it are lost.
    pub fn open_multi(
        vfio: &Vfio,
        addr: &str,
        pool: &PacketPool,
        cfg: &NicConfig,
    ) -> Result<Vec<VirtioNet>> {
        Self::open_pairs(vfio, vfio.open(addr)?, pool, cfg, false)
    }

    /// [`VirtioNet::open_multi`] with packed virtqueues (VIRTIO_F_RING_PACKED,
    /// §2.8; QEMU: `packed=on`) instead of split ones: every queue of the
    /// port, control queue included. Refused (`Negotiation`) when the
    /// device does not offer them.
    pub fn open_multi_packed(
        vfio: &Vfio,
        addr: &str,
        pool: &PacketPool,
        cfg: &NicConfig,
    ) -> Result<Vec<VirtioNet>> {
        Self::open_pairs(vfio, vfio.open(addr)?, pool, cfg, true)
    }

    /// [`VirtioNet::open`] on a device already opened in `vfio` (what
    /// [`crate::open`] does after reading its PCI id).
    pub(crate) fn open_device(
        vfio: &Vfio,
        dev: PciDevice,
        pool: &PacketPool,
        cfg: &NicConfig,
    ) -> Result<VirtioNet> {
        if cfg.queues != 1 {
            return Err(NicError::InvalidArgument(format!(
                "{} queues: VirtioNet::open opens one, VirtioNet::open_multi several",
                cfg.queues
            )));
        }
        Self::open_pairs(vfio, dev, pool, cfg, cfg.packed)?
            .pop()
            .ok_or(NicError::Malformed("no queue opened"))
    }

    /// Nothing is written to the device before every argument was
    /// checked: a refused open leaves it as it was.
    pub(crate) fn open_pairs(
        vfio: &Vfio,
        dev: PciDevice,
        pool: &PacketPool,
        cfg: &NicConfig,
        packed: bool,
    ) -> Result<Vec<VirtioNet>> {
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
        if cfg.queues == 0 || cfg.queues > VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX {
            return Err(NicError::InvalidArgument(format!(
                "{} queues: virtio-net takes 1 to the device's max_virtqueue_pairs",
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
        let up = match Self::init(vfio, &dev, &transport, cfg, packed, pool.pool().buf_size()) {
            Ok(up) => up,
            Err(e) => {
                // §3.1.1: tell the device we gave up. It never got DRIVER_OK,
                // so it did not use the queue memory; the reset clears it.
                transport.add_status(VIRTIO_STATUS_FAILED);
                let _ = transport.reset(RESET_TIMEOUT);
                return Err(e);
            }
        };
        let port = Arc::new(Port {
            transport,
            ctrl: Mutex::new(up.ctrl),
            features: up.features,
            mac: up.mac,
            queues: up.pairs.len(),
            rss: up.rss,
            _region: up.region,
            retired: Mutex::new(Vec::new()),
            dev,
        });
        // From here on, dropping the handles resets the device.
        let mut handles: Vec<VirtioNet> = up
            .pairs
            .into_iter()
            .enumerate()
            .map(|(queue, (rx, tx))| VirtioNet {
                rx,
                tx,
                cache: pool.cache(CACHE_SIZE),
                stats: Stats::default(),
                queue,
                max_frame: up.max_frame,
                port: port.clone(),
            })
            .collect();
        port.transport.add_status(VIRTIO_STATUS_DRIVER_OK);
        if port.transport.status() & VIRTIO_STATUS_DEVICE_NEEDS_RESET != 0 {
            return Err(NicError::Malformed(
                "the device needs a reset right after DRIVER_OK",
            ));
        }
        for h in &mut handles {
            h.rx.refill(&mut h.cache);
        }
        if let Some(rss) = &port.rss {
            // Spreads the flows and sets the pairs in use (max_tx_vq).
            port.command(
                VIRTIO_NET_CTRL_MQ,
                VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
                &rss.command_bytes(),
            )?;
        }
        let first = handles
            .first_mut()
            .ok_or(NicError::Malformed("no queue opened"))?;
        let has_ctrl = port.ctrl().is_some();
        if has_ctrl {
            first.set_promiscuous(cfg.promiscuous)?;
        } else if !cfg.promiscuous {
            log::warn!(
                "{}: the device has no VIRTIO_NET_F_CTRL_RX; it receives every frame",
                port.dev.address()
            );
        }
        Ok(handles)
    }

    /// The initialization sequence from reset up to, not including,
    /// DRIVER_OK (§3.1.1): features, queues, MAC address.
    fn init(
        vfio: &Vfio,
        dev: &PciDevice,
        t: &Transport,
        cfg: &NicConfig,
        packed: bool,
        buf_size: usize,
    ) -> Result<Bringup> {
        t.reset(RESET_TIMEOUT)?;
        t.add_status(VIRTIO_STATUS_ACKNOWLEDGE);
        t.add_status(VIRTIO_STATUS_DRIVER);
        let offered = t.device_features();
        let features = negotiate_for(offered, cfg, packed)?;
        let max_frame = cfg.max_frame()?;
        let pairs = cfg.queues;
        // Every field past `mac` and `status` exists with the features
        // that add it (§5.1.4); the structure must be long enough for them.
        let rss = if pairs > 1 {
            if t.device_config_len() < net_config::LEN_RSS {
                return Err(NicError::Malformed(
                    "device configuration too short for max_virtqueue_pairs and RSS",
                ));
            }
            let (max_pairs, max_key, max_table, hash_types) = t.read_config(|c| {
                (
                    c.read16(net_config::MAX_VIRTQUEUE_PAIRS),
                    c.read8(net_config::RSS_MAX_KEY_SIZE),
                    c.read16(net_config::RSS_MAX_INDIRECTION_TABLE_LENGTH),
                    c.read32(net_config::SUPPORTED_HASH_TYPES),
                )
            });
            if pairs > max_pairs {
                return Err(NicError::InvalidArgument(format!(
                    "{pairs} queues: the device has {max_pairs} queue pairs"
                )));
            }
            Some((
                max_pairs,
                RssSetup::new(pairs, max_key, max_table, hash_types)?,
            ))
        } else {
            None
        };
        t.set_driver_features(features);
        t.add_status(VIRTIO_STATUS_FEATURES_OK);
        if t.status() & VIRTIO_STATUS_FEATURES_OK == 0 {
            return Err(NicError::Negotiation(format!(
                "the device did not accept features {} (offered {})",
                feature_names(features),
                feature_names(offered)
            )));
        }
        log::debug!(
            "{}: virtio-net features {}",
            dev.address(),
            feature_names(features)
        );
        t.disable_config_vector();
        if features & VIRTIO_NET_F_MTU != 0 && t.device_config_len() >= net_config::MTU + 2 {
            // §5.1.4.1: the driver sends no frame longer than this allows.
            let mtu = t.read_config(|c| c.read16(net_config::MTU));
            if cfg.mtu > mtu {
                return Err(NicError::InvalidArgument(format!(
                    "MTU {}: the device allows at most {mtu} (QEMU: host_mtu on -device \
                     virtio-net-pci)",
                    cfg.mtu
                )));
            }
        }
        let rx_mode = RxMode {
            mergeable: features & VIRTIO_NET_F_MRG_RXBUF != 0,
            checksum: cfg.rx_checksum && features & VIRTIO_NET_F_GUEST_CSUM != 0,
            max_frame: rx_max_frame(max_frame),
        };

        let with_ctrl = features & VIRTIO_NET_F_CTRL_VQ != 0;
        let controlq = match &rss {
            Some((max_pairs, _)) => controlq_mq(*max_pairs),
            None => CONTROLQ,
        };
        let needed = if with_ctrl {
            u32::from(controlq) + 1
        } else {
            2 * u32::from(pairs)
        };
        if u32::from(t.num_queues()) < needed {
            return Err(NicError::Malformed(
                "the device has fewer virtqueues than its features promise",
            ));
        }
        // Per pair: receive then transmit queue; then the control queue;
        // then a page with the zero transmit header and the command area.
        let mut layouts = Vec::with_capacity(2 * pairs as usize + 1);
        for p in 0..pairs {
            let rx_size = queue_size(cfg.rx_ring, t.queue_max_size(receiveq(p)))?;
            // The device waits for room for a whole frame (QEMU: forever).
            let frame_bufs = mergeable_buffers(rx_mode.max_frame);
            if rx_mode.mergeable && usize::from(rx_size) < frame_bufs {
                return Err(NicError::InvalidArgument(format!(
                    "a receive ring of {rx_size}: MTU {} needs at least {frame_bufs} buffers",
                    cfg.mtu
                )));
            }
            let tx_size = queue_size(cfg.tx_ring, t.queue_max_size(transmitq(p)))?;
            layouts.push((receiveq(p), rx_size));
            layouts.push((transmitq(p), tx_size));
        }
        if with_ctrl {
            let size = queue_size(CTRL_QUEUE_SIZE, t.queue_max_size(controlq))?;
            layouts.push((controlq, size));
        }
        let mut bases = Vec::with_capacity(layouts.len());
        let mut scratch = 0usize;
        let bytes = |size| match packed {
            true => PackedLayout::new(size).total,
            false => QueueLayout::new(size).total,
        };
        for &(_, size) in &layouts {
            bases.push(scratch);
            scratch = scratch
                .checked_add(bytes(size))
                .ok_or_else(|| NicError::InvalidArgument("virtqueues too large".into()))?;
        }
        // One page per transmit queue's zero header, and the command area.
        let region = vfio.alloc_region(scratch + 4096 * (pairs as usize + 1), PageSize::Huge2M)?;
        let ctrl_area = region.carve::<u8>(scratch, ctrl::AREA_LEN)?;

        /// Queue `q` of `size` entries at `base`, split or packed.
        fn queue<T>(
            t: &Transport,
            region: &DmaRegion,
            q: u16,
            base: usize,
            size: u16,
            packed: bool,
        ) -> Result<Ring<T>> {
            Ok(if packed {
                let l = PackedLayout::new(size);
                let notifier = t.setup_queue(q, size, l.addrs(region, base))?;
                PackedQueue::new(region, base, l, notifier)?.into()
            } else {
                let l = QueueLayout::new(size);
                let notifier = t.setup_queue(q, size, l.addrs(region, base))?;
                Virtqueue::new(region, base, l, notifier)?.into()
            })
        }
        let mut queue_pairs = Vec::with_capacity(pairs as usize);
        for p in 0..pairs as usize {
            let (rq, rl) = layouts[2 * p];
            let (tq, tl) = layouts[2 * p + 1];
            let zero_hdr = region.carve::<u8>(scratch + 4096 * (p + 1), 64)?;
            let rx = RxQueue::with_mode(
                queue(t, &region, rq, bases[2 * p], rl, packed)?,
                rx_mode,
                buf_size,
            );
            let mut tx = TxQueue::new(
                queue(t, &region, tq, bases[2 * p + 1], tl, packed)?,
                zero_hdr,
                vfio.domain(),
            )?;
            tx.set_max_frame(max_frame);
            queue_pairs.push((rx, tx));
        }
        let ctrl = match layouts.get(2 * pairs as usize) {
            Some(&(q, l)) => Some(CtrlQueue::new(
                queue(t, &region, q, bases[2 * pairs as usize], l, packed)?,
                ctrl_area,
            )?),
            None => None,
        };
        let mac = if features & VIRTIO_NET_F_MAC != 0 {
            t.read_config(|c| std::array::from_fn(|i| c.read8(net_config::MAC + i)))
        } else {
            // No address from the device: a locally administered one from
            // the PCI address.
            let a = dev.address();
            [
                0x02,
                0,
                (a.domain & 0xff) as u8,
                a.bus,
                a.device,
                a.function,
            ]
        };
        Ok(Bringup {
            pairs: queue_pairs,
            max_frame,
            ctrl,
            features,
            mac,
            rss: rss.map(|(_, r)| r),
            region,
        })
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
        self.port.features
    }

    /// Receive buffers the device holds on this pair.
    pub fn rx_posted(&self) -> usize {
        self.rx.posted()
    }

    /// The PCI device.
    pub fn device(&self) -> &PciDevice {
        &self.port.dev
    }

    /// This handle's queue pair (0 for [`VirtioNet::open`]).
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Queue pairs of the port.
    pub fn queues(&self) -> usize {
        self.port.queues
    }

    /// The RSS setup the device was given (with several queue pairs):
    /// [`RssSetup::queue_of_ipv4`] predicts a frame's receive queue.
    pub fn rss(&self) -> Option<&RssSetup> {
        self.port.rss.as_ref()
    }
}

impl Port {
    /// One control command, from whichever handle asks.
    fn command(&self, class: u8, command: u8, data: &[u8]) -> Result<()> {
        match &mut *self.ctrl() {
            Some(ctrl) => ctrl.command(class, command, data, CTRL_TIMEOUT),
            None => Err(NicError::InvalidArgument(
                "the device has no control queue".into(),
            )),
        }
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

    /// The TCP/UDP checksum by the device when it took VIRTIO_NET_F_CSUM
    /// (through the net header, for frames with 12 bytes of headroom after
    /// any tag), everything else in software (virtio has no IPv4 header
    /// checksum or VLAN insertion): the same bytes on the wire either way.
    /// The whole burst is queued at once, with one notification.
    fn tx_burst_offload(&mut self, pkts: &mut Vec<Packet>, offload: &TxOffload) -> usize {
        if offload.is_empty() {
            return self.tx_burst(pkts);
        }
        let device_csum = self.port.features & VIRTIO_NET_F_CSUM != 0;
        self.tx
            .burst_offload(pkts, offload, device_csum, &mut self.cache, &mut self.stats)
    }

    fn mac_address(&self) -> [u8; 6] {
        self.port.mac
    }

    fn link_status(&self) -> LinkStatus {
        let f = self.port.features;
        let len = self.port.transport.device_config_len();
        self.port.transport.read_config(|c| {
            // Without VIRTIO_NET_F_STATUS the link is assumed up (§5.1.4.2).
            let up = f & VIRTIO_NET_F_STATUS == 0
                || len < net_config::STATUS + 2
                || c.read16(net_config::STATUS) & VIRTIO_NET_S_LINK_UP != 0;
            let (speed, duplex) =
                if f & VIRTIO_NET_F_SPEED_DUPLEX != 0 && len >= net_config::LEN_SPEED_DUPLEX {
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

    /// Port-wide: every queue pair receives per the new setting.
    fn set_promiscuous(&mut self, on: bool) -> Result<()> {
        // (The lock is not held across `command`, which takes it.)
        let has_ctrl = self.port.ctrl().is_some();
        match has_ctrl {
            true if self.port.features & VIRTIO_NET_F_CTRL_RX != 0 => {
                self.port
                    .command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[on as u8])
            }
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
    /// A frame longer than [`MAX_FRAME`] (up to the port's MTU) is a
    /// multi-buffer packet.
    fn alloc_packet(&mut self, len: usize) -> Result<Packet> {
        if len <= MAX_FRAME {
            return Packet::with_offset(self.cache.alloc()?, HEADROOM, len);
        }
        let cache = &mut self.cache;
        crate::packet::alloc_frame(|| Ok(cache.alloc()?), HEADROOM, len, self.max_frame)
    }

    fn recycle(&mut self, pkts: &mut Vec<Packet>) {
        self.cache.free_all(pkts.drain(..).map(Packet::into_buf));
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        // The device may still use this pair's buffers: they go back only
        // after the reset, which the port does when the last handle goes
        // (right after this one, for a single pair).
        let mut retired = self.port.retired();
        retired.extend(self.rx.drain());
        retired.extend(self.tx.drain());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_requires_version_1_and_access_platform() {
        let all = u64::MAX;
        assert_eq!(negotiate(all).unwrap(), WANTED);
        assert!(matches!(
            negotiate(all & !VIRTIO_F_VERSION_1),
            Err(NicError::Negotiation(_))
        ));
        let e = negotiate(all & !VIRTIO_F_ACCESS_PLATFORM)
            .unwrap_err()
            .to_string();
        assert!(e.contains("iommu_platform=on"), "{e}");
        // Never merged buffers; no receive-mode control without the queue.
        assert_eq!(negotiate(all).unwrap() & VIRTIO_NET_F_MRG_RXBUF, 0);
        let no_vq = negotiate(all & !VIRTIO_NET_F_CTRL_VQ).unwrap();
        assert_eq!(no_vq & (VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_CTRL_RX), 0);
    }

    #[test]
    fn several_pairs_need_mq_rss_and_the_control_queue() {
        let all = u64::MAX;
        assert_eq!(
            negotiate(all).unwrap() & (VIRTIO_NET_F_MQ | VIRTIO_NET_F_RSS),
            0,
            "one pair: neither"
        );
        let four = negotiate_queues(all, 4).unwrap();
        assert_eq!(four, WANTED | VIRTIO_NET_F_MQ | VIRTIO_NET_F_RSS);
        for missing in [VIRTIO_NET_F_MQ, VIRTIO_NET_F_RSS, VIRTIO_NET_F_CTRL_VQ] {
            let e = negotiate_queues(all & !missing, 2).unwrap_err().to_string();
            assert!(e.contains("mq=on,rss=on"), "{e}");
        }
        // Packed rings only when asked and offered.
        assert_eq!(negotiate(all).unwrap() & VIRTIO_F_RING_PACKED, 0);
        assert_ne!(
            negotiate_with(all, 4, true).unwrap() & VIRTIO_F_RING_PACKED,
            0
        );
        let e = negotiate_with(all & !VIRTIO_F_RING_PACKED, 1, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("packed=on"), "{e}");
        // The control queue comes after every pair the device has.
        assert_eq!((receiveq(3), transmitq(3), controlq_mq(4)), (6, 7, 8));
    }

    #[test]
    fn checksum_mergeable_and_mtu_features_follow_the_configuration() {
        let all = u64::MAX;
        let std = NicConfig::default();
        let f = negotiate_for(all, &std, false).unwrap();
        // Transmit checksums whenever offered; receive ones only when asked;
        // merged buffers only for jumbo frames.
        assert_eq!(
            f & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_MRG_RXBUF),
            VIRTIO_NET_F_CSUM
        );
        assert_ne!(f & VIRTIO_NET_F_MTU, 0);
        let rx_csum = NicConfig {
            rx_checksum: true,
            ..NicConfig::default()
        };
        assert_ne!(
            negotiate_for(all, &rx_csum, false).unwrap() & VIRTIO_NET_F_GUEST_CSUM,
            0
        );
        let jumbo = NicConfig {
            mtu: 9000,
            ..NicConfig::default()
        };
        assert_ne!(
            negotiate_for(all, &jumbo, false).unwrap() & VIRTIO_NET_F_MRG_RXBUF,
            0
        );
        let e = negotiate_for(all & !VIRTIO_NET_F_MRG_RXBUF, &jumbo, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mrg_rxbuf=on"), "{e}");
        // Behind a QEMU hub: no checksum features offered, none taken.
        let hub = all & !(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM);
        assert_eq!(
            negotiate_for(hub, &rx_csum, false).unwrap()
                & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM),
            0
        );
        let bad_mtu = NicConfig {
            mtu: 9001,
            ..NicConfig::default()
        };
        assert!(matches!(
            negotiate_for(all, &bad_mtu, false),
            Err(NicError::InvalidArgument(_))
        ));
        assert_eq!(rx_max_frame(1514), MAX_FRAME);
        assert_eq!(rx_max_frame(1000), MAX_FRAME);
        assert_eq!(rx_max_frame(4014), 4018);
        assert_eq!(rx_max_frame(MAX_JUMBO_FRAME), MAX_JUMBO_FRAME);
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
