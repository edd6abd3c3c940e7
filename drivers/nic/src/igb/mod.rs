//! Intel igb polling-mode driver: 82576 and I350 physical functions, and
//! QEMU's `igb` device (8086:10c9). One queue pair per [`Igb`] handle; a
//! port opened with several ([`Igb::open_multi`]) spreads received frames
//! over them with RSS. Advanced descriptors, no interrupts.
//!
//! - `regs`: register offsets and bits (82576 datasheet chapter 8);
//! - `desc`: the advanced descriptors (7.1.5, 7.2.2.3);
//! - `ring`: pure ring index arithmetic, unit-tested without a device;
//! - `dma`: a descriptor ring in DMA memory, volatile access only;
//! - `rx` / `tx`: one queue each, burst receive and transmit;
//! - `rss`: RSS key, redirection table and hash (7.1.2.10);
//! - `link`: PHY access and link state; `stats`: statistics registers.
//!
//! ```no_run
//! use fastlane_framework::Vfio;
//! use fastlane_nic::{igb::Igb, Nic, NicConfig, PacketPool};
//! let vfio = Vfio::new()?;
//! let pool = PacketPool::new(&vfio, 4096)?;
//! let mut port = Igb::open(&vfio, "0000:01:00.0", &pool, &NicConfig::default())?;
//! let mut pkts = Vec::with_capacity(32);
//! loop {
//!     if port.rx_burst(&mut pkts, 32) > 0 {
//!         port.tx_burst(&mut pkts); // echo back what fits; the rest is dropped below
//!         pkts.clear();
//!     }
//! #   break;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod desc;
mod dma;
mod link;
pub mod regs;
pub mod ring;
pub mod rss;
mod rx;
#[cfg(feature = "sim")]
pub mod sim;
mod stats;
mod tx;
mod tx_jumbo;
mod tx_offload;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastlane_framework::{DmaDomain, DmaRegion, Mmio, PageSize, PciAddress, PciDevice, PoolCache, Vfio};

use crate::packet::PACKET_BUF_SIZE;
use crate::{LinkStatus, Nic, NicConfig, NicError, Packet, PacketPool, Result, Stats, TxOffload, HEADROOM, MAX_FRAME};
use dma::DescRing;
use regs::{ctrl, dctl, rctl, tctl};
use ring::Ring;
use rx::RxQueue;
use tx::TxQueue;

pub use rx::RxCounters;
pub use stats::HwCounters;
pub use tx::TxCounters;

/// Shortest frame accepted for sending: an Ethernet header. Frames shorter
/// than [`crate::MIN_FRAME`] are padded by the NIC (TCTL.PSP).
pub const MIN_TX_FRAME: usize = 14;
/// How long `open` waits for the link after restarting auto-negotiation.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a register handshake (reset, queue enable) may take.
const REG_TIMEOUT: Duration = Duration::from_secs(1);
/// Buffers kept in the port's pool cache.
const CACHE_SIZE: usize = 512;

/// Checks that a frame can be sent: [`MIN_TX_FRAME`]..=[`MAX_FRAME`] bytes.
/// `tx_burst` stops at the first frame that fails this and leaves it (and
/// everything after it) at the front of the caller's vector.
pub fn check_frame(pkt: &Packet) -> Result<()> {
    match pkt.len() {
        len if len > MAX_FRAME => Err(NicError::FrameTooLarge { len, max: MAX_FRAME }),
        len if len < MIN_TX_FRAME => Err(NicError::FrameTooShort { len, min: MIN_TX_FRAME }),
        _ => Ok(()),
    }
}

/// The longest frame a jumbo port accepts: its maximum plus one VLAN tag
/// (the kernel's igb driver allows the same) up to what a packet holds
/// ([`crate::MAX_JUMBO_FRAME`]); standard ports stay at [`MAX_FRAME`].
fn rx_max_frame(max_frame: usize) -> usize {
    if max_frame > MAX_FRAME {
        (max_frame + 4).min(crate::MAX_JUMBO_FRAME)
    } else {
        MAX_FRAME
    }
}

/// Polls `done` until it holds or `timeout` passes.
fn poll(what: &'static str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    loop {
        if done() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(NicError::Timeout { what });
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// [`poll`] with the register handshake timeout.
fn wait_for(what: &'static str, done: impl FnMut() -> bool) -> Result<()> {
    poll(what, REG_TIMEOUT, done)
}

/// The part name for a supported vendor/device id pair.
pub fn model(vendor: u16, device: u16) -> Option<&'static str> {
    if vendor != regs::VENDOR_INTEL {
        return None;
    }
    regs::DEVICE_IDS.iter().find(|(id, _)| *id == device).map(|(_, name)| *name)
}

/// Masks every interrupt cause and clears pending ones.
fn mask_interrupts(r: &Mmio) {
    r.write32(regs::IMC, u32::MAX);
    r.write32(regs::EIMC, u32::MAX);
    r.write32(regs::EIAC, 0);
    let _ = r.read32(regs::ICR);
}

/// Global device reset (CTRL.RST): receive and transmit stop, every
/// register returns to its default and the device forgets the rings.
fn reset(r: &Mmio) -> Result<()> {
    mask_interrupts(r);
    r.write32(regs::RCTL, 0);
    r.write32(regs::TCTL, 0);
    let _ = r.read32(regs::STATUS); // flush the posted writes
    std::thread::sleep(Duration::from_millis(10)); // let DMA in progress end
    r.write32(regs::CTRL, r.read32(regs::CTRL) | ctrl::RST);
    std::thread::sleep(Duration::from_millis(1));
    wait_for("device reset (CTRL.RST)", || r.read32(regs::CTRL) & ctrl::RST == 0)?;
    // The EEPROM auto-read after a reset takes a few milliseconds.
    std::thread::sleep(Duration::from_millis(20));
    mask_interrupts(r);
    Ok(())
}

/// What the queues of one port share: the device, its registers, the MAC
/// address and the port-wide statistics. Dropped with the last queue
/// handle: resets the device and turns bus mastering off.
struct Port {
    /// The PCI function; `None` on a simulated register block
    /// ([`Igb::with_registers`]).
    dev: Option<PciDevice>,
    regs: Mmio,
    model: &'static str,
    mac: [u8; 6],
    queues: usize,
    /// Totals of the clear-on-read statistics registers; the lock also
    /// serialises read-modify-writes of RCTL (never taken per packet).
    hw: Mutex<HwCounters>,
}

impl Port {
    /// Brings the link up and reads the MAC address (after a reset).
    fn start_link(&mut self) -> Result<()> {
        let r = &self.regs;
        // A simulated port has no PHY to talk to: its model presets the link.
        if self.dev.is_some() {
            link::bring_up(r)?;
        }
        let (ral, rah) = (r.read32(regs::RAL0), r.read32(regs::RAH0));
        if rah & regs::RAH_AV == 0 {
            return Err(NicError::Malformed("no valid MAC address in RAL0/RAH0"));
        }
        let (lo, hi) = (ral.to_le_bytes(), rah.to_le_bytes());
        self.mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        for i in 0..regs::MTA_WORDS {
            r.write32(regs::MTA + 4 * i, 0);
        }
        Ok(())
    }

    /// Programs every queue, RSS when there are several, and turns the
    /// receiver and transmitter on.
    fn start(&self, device: u16, cfg: &NicConfig, queues: &[Igb]) -> Result<()> {
        let r = &self.regs;
        // Receive: queues first, then RSS, then the receiver, then the tails.
        r.write32(regs::RCTL, 0);
        for q in queues {
            q.rx.configure()?;
            if regs::is_i350(device) {
                r.write32(regs::dvmolr(q.queue), r.read32(regs::dvmolr(q.queue)) | regs::DVMOLR_STRCRC);
            }
        }
        if queues.len() > 1 {
            for (i, w) in rss::key_words(&rss::KEY).into_iter().enumerate() {
                r.write32(regs::RSSRK + 4 * i, w);
            }
            for (i, w) in rss::reta_words(queues.len()).into_iter().enumerate() {
                r.write32(regs::RETA + 4 * i, w);
            }
            r.write32(regs::RXCSUM, r.read32(regs::RXCSUM) | regs::RXCSUM_PCSD);
            r.write32(regs::MRQC, rss::MRQC);
        }
        // Checksum verdicts in every write-back (with PCSD too: it moves
        // only the IP id, not the status bits).
        r.write32(regs::RXCSUM, r.read32(regs::RXCSUM) | regs::RXCSUM_IPOFLD | regs::RXCSUM_TUOFLD);
        // VLAN offloads: strip on receive, insert on VLE. CTRL is written
        // only then (VME is off after the reset).
        if cfg.vlan {
            r.write32(regs::CTRL, r.read32(regs::CTRL) | ctrl::VME);
            if r.read32(regs::VET) & 0xffff == 0 {
                let vet = r.read32(regs::VET) | u32::from(crate::offload::ETHERTYPE_VLAN);
                r.write32(regs::VET, vet);
            }
        }
        // Buffer size comes from SRRCTL; RCTL.BSIZE 00 (2048) agrees.
        let mut rc = rctl::EN | rctl::BAM | rctl::SECRC;
        let max_frame = cfg.max_frame()?;
        if max_frame > MAX_FRAME {
            // Long frames, spread over several 2 KiB buffers; RLPML counts
            // the FCS.
            rc |= rctl::LPE;
            r.write32(regs::RLPML, (rx_max_frame(max_frame) + 4) as u32);
        }
        if cfg.promiscuous {
            rc |= rctl::UPE | rctl::MPE;
        }
        r.write32(regs::RCTL, rc);
        for q in queues {
            q.rx.start();
        }

        // Transmit.
        for q in queues {
            q.tx.configure()?;
        }
        r.write32(
            regs::TCTL,
            tctl::EN
                | tctl::PSP
                | tctl::RTLC
                | tctl::CT_DEFAULT << tctl::CT_SHIFT
                | tctl::COLD_FULL_DUPLEX << tctl::COLD_SHIFT,
        );

        // Statistics start from zero (they clear on read).
        HwCounters::default().accumulate(r, self.queues);
        Ok(())
    }

    fn link_status(&self) -> LinkStatus {
        link::decode(self.regs.read32(regs::STATUS))
    }

    /// The statistics lock (a panic elsewhere leaves the counters usable).
    fn hw(&self) -> std::sync::MutexGuard<'_, HwCounters> {
        self.hw.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Port {
    /// The PCI address (0000:00:00.0 for a simulated port).
    fn address(&self) -> PciAddress {
        self.dev.as_ref().map_or(
            PciAddress { domain: 0, bus: 0, device: 0, function: 0 },
            |d| d.address(),
        )
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // A simulated port has no device to reset or stop.
        let Some(dev) = &self.dev else {
            return;
        };
        // Every queue was stopped by its handle; now the whole device.
        let reset_ok = reset(&self.regs)
            .inspect_err(|e| log::error!("{}: reset on close: {e}", dev.address()))
            .is_ok();
        let dma_off = dev
            .disable_dma()
            .inspect_err(|e| log::error!("{}: bus master off: {e}", dev.address()))
            .is_ok();
        if !reset_ok && !dma_off {
            log::error!("{}: device may still DMA", dev.address());
        }
    }
}

/// An open igb queue pair: receive queue `n` and transmit queue `n` of a
/// port. [`Igb::open`] gives the port's only queue pair; [`Igb::open_multi`]
/// one handle per queue, each usable from its own thread. Port-wide
/// operations (link, promiscuous mode, the device's statistics) work from
/// every handle and act on, or report for, the whole port.
pub struct Igb {
    // Dropped after the queues (fields drop in order; `Drop for Igb` stops
    // the queues first): the last handle resets the device.
    rx: RxQueue,
    tx: TxQueue,
    cache: PoolCache,
    queue: usize,
    /// Longest frame sent or received ([`NicConfig::max_frame`]); above
    /// [`MAX_FRAME`], multi-buffer packets.
    max_frame: usize,
    port: Arc<Port>,
}

impl Igb {
    /// Opens the igb at `addr` (bound to vfio-pci) and brings it up: reset,
    /// link, receive ring filled from `pool`, transmit ring, promiscuous
    /// mode per `cfg`. Waits up to [`LINK_TIMEOUT`] for the link (a port
    /// without link still opens; see [`Nic::link_status`]). One queue pair:
    /// `cfg.queues` must be 1 (see [`Igb::open_multi`]).
    pub fn open(vfio: &Vfio, addr: &str, pool: &PacketPool, cfg: &NicConfig) -> Result<Igb> {
        Self::check_one_queue(cfg)?;
        Self::open_one(vfio, vfio.open(addr)?, pool, cfg)
    }

    fn check_one_queue(cfg: &NicConfig) -> Result<()> {
        if cfg.queues != 1 {
            return Err(NicError::InvalidArgument(format!(
                "{} queues: Igb::open opens one, Igb::open_multi several",
                cfg.queues
            )));
        }
        Ok(())
    }

    /// [`Igb::open`] on a device already opened in `vfio`.
    pub(crate) fn open_one(vfio: &Vfio, dev: PciDevice, pool: &PacketPool, cfg: &NicConfig) -> Result<Igb> {
        Self::check_one_queue(cfg)?;
        let mut v = Self::open_device(vfio, dev, pool, cfg)?;
        v.pop().ok_or(NicError::Malformed("no queue opened"))
    }

    /// Opens the igb at `addr` with `cfg.queues` (1 to
    /// [`regs::MAX_QUEUES`]) queue pairs, each `cfg.rx_ring` and
    /// `cfg.tx_ring` long and filled from `pool`, and returns one handle per
    /// queue, queue 0 first. With several queues, RSS spreads received IPv4
    /// and IPv6 frames over them by addresses and TCP/UDP ports (see
    /// [`rss`]); other frames arrive on queue 0. Each handle sends on its
    /// own transmit queue. The device stays open until every handle is
    /// dropped.
    pub fn open_multi(vfio: &Vfio, addr: &str, pool: &PacketPool, cfg: &NicConfig) -> Result<Vec<Igb>> {
        // A device open in this container already gives `Busy` here, before
        // anything touches it: the first handle keeps working.
        let dev = vfio.open(addr)?;
        Self::open_device(vfio, dev, pool, cfg)
    }

    /// [`Igb::open_multi`] on a device already opened in `vfio` (what
    /// [`crate::open`] does after reading its PCI id). Nothing is written to
    /// the device before every argument was checked: a refused open leaves
    /// it as it was.
    pub(crate) fn open_device(vfio: &Vfio, dev: PciDevice, pool: &PacketPool, cfg: &NicConfig) -> Result<Vec<Igb>> {
        let queues = cfg.queues as usize;
        let max_frame = cfg.max_frame()?;
        if !(1..=regs::MAX_QUEUES).contains(&queues) {
            return Err(NicError::InvalidArgument(format!(
                "{queues} queues: the igb driver takes 1 to {}",
                regs::MAX_QUEUES
            )));
        }
        let addr = dev.address();
        let (vendor, device) = dev.id()?;
        let Some(model) = model(vendor, device) else {
            return Err(NicError::Unsupported {
                addr: addr.to_string(),
                vendor,
                device,
                class: dev.class_code()?,
            });
        };
        // The pool must be mapped in this container: a buffer of another
        // container has an IOVA that means other memory here, or none.
        crate::check_pool(pool, vfio.domain())?;
        let buf_size = pool.pool().buf_size();
        if buf_size < PACKET_BUF_SIZE {
            return Err(NicError::InvalidArgument(format!(
                "packet buffers of {buf_size} bytes: the igb driver needs {PACKET_BUF_SIZE}"
            )));
        }
        let (rx_n, tx_n) = (Ring::new(cfg.rx_ring)?.size(), Ring::new(cfg.tx_ring)?.size());
        dev.enable_dma()?;
        let regs = dev.map_bar(0)?;
        if regs.len() < regs::REGS_LEN {
            return Err(NicError::Malformed("BAR0 is smaller than the igb register file"));
        }
        reset(&regs)?;
        // From here on, dropping the port resets the device.
        let mut port = Port {
            dev: Some(dev),
            regs,
            model,
            mac: [0; 6],
            queues,
            hw: Mutex::new(HwCounters::default()),
        };
        port.start_link()?;
        let port = Arc::new(port);

        // Every ring in one region: per queue, receive then transmit.
        let rx_bytes = (rx_n as usize * 16).next_multiple_of(128);
        let tx_bytes = (tx_n as usize * 16).next_multiple_of(128);
        let region = vfio.alloc_region((rx_bytes + tx_bytes) * queues, PageSize::Huge2M)?;
        let domain = vfio.domain();
        let mut handles = Vec::with_capacity(queues);
        for n in 0..queues {
            let base = (rx_bytes + tx_bytes) * n;
            let mut cache = pool.cache(CACHE_SIZE);
            let r = port.regs.clone();
            let rx = RxQueue::new(n, r.clone(), DescRing::new(&region, base, rx_n)?, &mut cache)?;
            let tx = TxQueue::new(n, r, DescRing::new(&region, base + rx_bytes, tx_n)?, domain)?;
            handles.push(Igb {
                rx,
                tx,
                cache,
                queue: n,
                max_frame,
                port: port.clone(),
            });
        }
        for h in &mut handles {
            h.rx.report(cfg.rx_checksum || cfg.vlan);
            h.rx.set_max_frame(rx_max_frame(max_frame));
        }
        port.start(device, cfg, &handles)?;
        let link = handles[0].wait_link(LINK_TIMEOUT);
        if !link.up {
            log::warn!("{addr}: link still down after {LINK_TIMEOUT:?}");
        }
        Ok(handles)
    }

    /// A port on a simulated register block (an in-process model such as
    /// [`sim::SimIgb`]): one queue pair, rings in unmapped memory (IOVA ==
    /// VA, so the pool must be unmapped too), the same queue setup as
    /// [`Igb::open`], but no device reset or PHY bring-up.
    pub fn with_registers(regs: Mmio, pool: &PacketPool, cfg: &NicConfig) -> Result<Igb> {
        if regs.len() < regs::REGS_LEN {
            return Err(NicError::Malformed("register block smaller than the igb register file"));
        }
        // A model reaches memory by address: only unmapped memory (IOVA ==
        // VA) means the same thing to it as to the driver.
        crate::check_pool(pool, DmaDomain::UNMAPPED)?;
        let max_frame = cfg.max_frame()?;
        let (rx_n, tx_n) = (Ring::new(cfg.rx_ring)?.size(), Ring::new(cfg.tx_ring)?.size());
        mask_interrupts(&regs);
        let mut port = Port {
            dev: None,
            regs,
            model: "82576",
            mac: [0; 6],
            queues: 1,
            hw: Mutex::new(HwCounters::default()),
        };
        port.start_link()?;
        let port = Arc::new(port);
        let rx_bytes = (rx_n as usize * 16).next_multiple_of(128);
        let region = DmaRegion::new_unmapped(rx_bytes + tx_n as usize * 16, PageSize::Small)?;
        let mut cache = pool.cache(CACHE_SIZE);
        let r = port.regs.clone();
        let rx = RxQueue::new(0, r.clone(), DescRing::new(&region, 0, rx_n)?, &mut cache)?;
        let tx = TxQueue::new(0, r, DescRing::new(&region, rx_bytes, tx_n)?, DmaDomain::UNMAPPED)?;
        let mut handles = vec![Igb { rx, tx, cache, queue: 0, max_frame, port: port.clone() }];
        handles[0].rx.report(cfg.rx_checksum || cfg.vlan);
        handles[0].rx.set_max_frame(rx_max_frame(max_frame));
        port.start(0x10c9, cfg, &handles)?;
        Ok(handles.into_iter().next().expect("one queue pair"))
    }

    /// Checks that a frame can be sent (see [`check_frame`]).
    pub fn check_frame(pkt: &Packet) -> Result<()> {
        check_frame(pkt)
    }

    /// The IOMMU domain of the port's container: `tx_burst` takes only
    /// packets whose buffers are mapped there.
    pub fn domain(&self) -> DmaDomain {
        self.tx.domain()
    }

    /// The rest of a burst on a jumbo port: runs of long frames and of
    /// standard ones in turn, until one makes no progress (ring full, or a
    /// frame the checks refuse, which stays first).
    #[cold]
    #[inline(never)]
    fn tx_jumbo(&mut self, pkts: &mut Vec<Packet>, off: Option<&TxOffload>) -> usize {
        let mut total = 0;
        loop {
            let long = self.tx.burst_jumbo(&mut self.cache, pkts, self.max_frame, off);
            let short = match (pkts.is_empty(), off) {
                (true, _) => 0,
                (false, None) => self.tx.burst(&mut self.cache, pkts),
                (false, Some(o)) => self.tx.burst_offload(&mut self.cache, pkts, o),
            };
            total += long + short;
            if long + short == 0 || pkts.is_empty() {
                return total;
            }
        }
    }

    /// [`Nic::alloc_packet`], callable without the trait in scope.
    #[inline]
    pub fn alloc_packet(&mut self, len: usize) -> Result<Packet> {
        if len <= MAX_FRAME {
            return Packet::with_offset(self.cache.alloc()?, HEADROOM, len);
        }
        let cache = &mut self.cache;
        crate::packet::alloc_frame(|| Ok(cache.alloc()?), HEADROOM, len, self.max_frame)
    }

    /// [`Nic::recycle`], callable without the trait in scope. Buffers of
    /// other pools, foreign ones included, go home to theirs and never onto
    /// a ring: the cache takes only its own pool's.
    #[inline]
    pub fn recycle(&mut self, pkts: &mut Vec<Packet>) {
        self.cache.free_all(pkts.drain(..).map(Packet::into_buf));
    }

    /// Polls the link until it is up or `timeout` passes; returns the state.
    pub fn wait_link(&self, timeout: Duration) -> LinkStatus {
        let start = Instant::now();
        loop {
            let l = self.link_status();
            if l.up || start.elapsed() >= timeout {
                return l;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The port's PCI address.
    pub fn pci_address(&self) -> PciAddress {
        self.port.address()
    }

    /// The part, e.g. "82576".
    pub fn model(&self) -> &'static str {
        self.port.model
    }

    /// This handle's queue number (0 for [`Igb::open`]).
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Queue pairs of the port.
    pub fn queues(&self) -> usize {
        self.port.queues
    }

    /// What the driver itself counted on this queue pair: frames handed out
    /// by `rx_burst` and
    /// queued by `tx_burst` (bytes without CRC), frames it dropped.
    pub fn driver_stats(&self) -> Stats {
        Stats {
            rx_packets: self.rx.counters.packets,
            rx_bytes: self.rx.counters.bytes,
            tx_packets: self.tx.counters.packets,
            tx_bytes: self.tx.counters.bytes,
            rx_dropped: 0,
            rx_errors: self.rx.counters.errors,
            tx_errors: 0,
        }
    }

    /// Receive-side driver counters.
    pub fn rx_counters(&self) -> RxCounters {
        self.rx.counters
    }

    /// Transmit-side driver counters.
    pub fn tx_counters(&self) -> TxCounters {
        self.tx.counters
    }

    /// Totals of the device's statistics registers (read now), for the
    /// whole port.
    pub fn hw_counters(&mut self) -> HwCounters {
        let mut hw = self.port.hw();
        hw.accumulate(&self.port.regs, self.port.queues);
        *hw
    }
}

impl Nic for Igb {
    /// Receives up to `max` frames (appended to `out`, which should have the
    /// capacity). Stops early, leaving frames in the ring, when the pool has
    /// no buffer to put in their place.
    fn rx_burst(&mut self, out: &mut Vec<Packet>, max: usize) -> usize {
        self.rx.burst(&mut self.cache, out, max)
    }

    /// Reclaims finished descriptors, then queues frames from the front of
    /// `pkts` while the ring has room; stops at a packet
    /// [`Nic::check_tx`] refuses (a frame [`check_frame`] refuses, or a
    /// buffer of another VFIO container) and leaves it first in `pkts`. An
    /// empty `pkts` only reclaims.
    #[inline]
    fn tx_burst(&mut self, pkts: &mut Vec<Packet>) -> usize {
        let n = self.tx.burst(&mut self.cache, pkts);
        // Per burst, not per frame: a jumbo port's long frames stop the
        // plain burst and go through their own.
        if pkts.is_empty() || self.max_frame <= MAX_FRAME {
            return n;
        }
        n + self.tx_jumbo(pkts, None)
    }

    fn check_tx(&self, pkt: &Packet) -> Result<()> {
        if self.max_frame > MAX_FRAME && tx_jumbo::is_jumbo(pkt) {
            return self.tx.check_jumbo(pkt, self.max_frame);
        }
        self.tx.check(pkt)
    }

    fn mac_address(&self) -> [u8; 6] {
        self.port.mac
    }

    fn link_status(&self) -> LinkStatus {
        self.port.link_status()
    }

    /// Port-wide: every queue of the port receives per the new setting.
    fn set_promiscuous(&mut self, on: bool) -> Result<()> {
        let (r, _lock) = (&self.port.regs, self.port.hw());
        let rc = r.read32(regs::RCTL);
        let bits = rctl::UPE | rctl::MPE;
        r.write32(regs::RCTL, if on { rc | bits } else { rc & !bits });
        Ok(())
    }

    /// The device's statistics registers (accumulated) for the whole port,
    /// whichever queue asks, with the frames this queue's driver dropped
    /// added to `rx_errors`; see [`HwCounters::merge`]. (With several
    /// queues, do not add up the handles' stats: each is the port's.)
    fn stats(&mut self) -> Stats {
        let mut hw = self.port.hw();
        hw.accumulate(&self.port.regs, self.port.queues);
        hw.merge(&self.rx.counters)
    }

    fn tx_in_flight(&self) -> usize {
        self.tx.in_flight()
    }

    fn alloc_packet(&mut self, len: usize) -> Result<Packet> {
        Igb::alloc_packet(self, len)
    }

    fn recycle(&mut self, pkts: &mut Vec<Packet>) {
        Igb::recycle(self, pkts)
    }

    /// In the NIC: a context descriptor (header lengths, VLAN tag) before
    /// each frame's data descriptor, which asks for IXSM/TXSM/VLE. The
    /// checksum fields are prepared by [`crate::offload::prepare`].
    fn tx_burst_offload(&mut self, pkts: &mut Vec<Packet>, offload: &TxOffload) -> usize {
        if offload.is_empty() {
            return Nic::tx_burst(self, pkts);
        }
        let n = self.tx.burst_offload(&mut self.cache, pkts, offload);
        if pkts.is_empty() || self.max_frame <= MAX_FRAME {
            return n;
        }
        n + self.tx_jumbo(pkts, Some(offload))
    }
}

impl Drop for Igb {
    fn drop(&mut self) {
        // Stop this queue pair and wait until the device says it stopped:
        // only then may its buffers and rings (dropped after this) be
        // reused. The last handle's port then resets the device.
        self.rx.disable();
        self.tx.disable();
        let r = &self.port.regs;
        let (n, off) = (self.queue, |reg| r.read32(reg) & dctl::ENABLE == 0);
        let stopped = wait_for("receive queue disable", || off(regs::rxdctl(n)))
            .and_then(|()| wait_for("transmit queue disable", || off(regs::txdctl(n))));
        if let Err(e) = stopped {
            log::error!("{} queue {n}: {e}; leaking its buffers and rings", self.port.address());
            self.rx.leak();
            self.tx.leak();
        }
    }
}

impl std::fmt::Debug for Igb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Igb")
            .field("addr", &self.port.address())
            .field("model", &self.port.model)
            .field("mac", &format_args!("{:02x?}", self.port.mac))
            .field("queue", &self.queue)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_ids() {
        assert_eq!(model(0x8086, 0x10c9), Some("82576"));
        assert_eq!(model(0x8086, 0x1521), Some("I350 copper"));
        assert_eq!(model(0x8086, 0x10ca), None, "a VF");
        assert_eq!(model(0x1af4, 0x10c9), None);
    }

    #[test]
    fn frame_bounds() {
        let pool = PacketPool::new_unmapped(2).unwrap();
        let mut p = pool.alloc().unwrap();
        for (len, ok) in [(0, false), (13, false), (14, true), (60, true), (1514, true)] {
            p.set_len(len).unwrap();
            assert_eq!(check_frame(&p).is_ok(), ok, "{len}");
        }
        assert!(matches!(check_frame(&{ p.set_len(5).unwrap(); p }), Err(NicError::FrameTooShort { len: 5, min: 14 })));
        // Longer frames cannot even be built.
        let mut q = pool.alloc().unwrap();
        assert!(matches!(q.set_len(1515), Err(NicError::FrameTooLarge { len: 1515, .. })));
    }
}
