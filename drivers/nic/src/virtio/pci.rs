//! The virtio PCI transport (virtio spec §4.1): finds the vendor-specific
//! capabilities that locate the common configuration, notification, ISR
//! and device configuration structures, maps the BARs they live in, and
//! offers the register accesses the driver needs (status, features, queue
//! setup, notifications, device configuration).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fastlane_framework::{Iova, Mmio, PciDevice};

use super::spec::{self, cap, common};
use crate::{NicError, Result};

/// Where one virtio structure lives (`struct virtio_pci_cap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapLocation {
    /// BAR number (0-5).
    pub bar: u8,
    /// Offset of the structure in the BAR.
    pub offset: u32,
    /// Length of the structure in bytes.
    pub length: u32,
}

/// The virtio structures a device's capability list points at; the first
/// capability of each type wins, as the spec recommends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioCaps {
    /// Common configuration (`VIRTIO_PCI_CAP_COMMON_CFG`).
    pub common: Option<CapLocation>,
    /// Notifications (`VIRTIO_PCI_CAP_NOTIFY_CFG`).
    pub notify: Option<CapLocation>,
    /// Bytes between the notification addresses of consecutive `queue_notify_off` values.
    pub notify_off_multiplier: u32,
    /// ISR status (`VIRTIO_PCI_CAP_ISR_CFG`).
    pub isr: Option<CapLocation>,
    /// Device configuration (`VIRTIO_PCI_CAP_DEVICE_CFG`).
    pub device: Option<CapLocation>,
}

impl VirtioCaps {
    /// Whether the device has the modern interface's mandatory structures.
    pub fn is_modern(&self) -> bool {
        self.common.is_some() && self.notify.is_some() && self.device.is_some()
    }
}

/// Walks the PCI capability list through `read` (config space reads).
/// Stops at a malformed list instead of looping: at most 48 capabilities
/// fit in the 192 bytes after the header.
pub fn find_caps(read: impl Fn(u64, &mut [u8]) -> Result<()>) -> Result<VirtioCaps> {
    let byte = |off: u64| -> Result<u8> {
        let mut b = [0u8; 1];
        read(off, &mut b)?;
        Ok(b[0])
    };
    let dword = |off: u64| -> Result<u32> {
        let mut b = [0u8; 4];
        read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    };
    let mut caps = VirtioCaps::default();
    let mut status = [0u8; 2];
    read(spec::PCI_STATUS, &mut status)?;
    if u16::from_le_bytes(status) & spec::PCI_STATUS_CAP_LIST == 0 {
        return Ok(caps);
    }
    let mut ptr = byte(spec::PCI_CAPABILITY_LIST)? & !3;
    for _ in 0..48 {
        if ptr < 0x40 {
            break;
        }
        let at = ptr as u64;
        if byte(at + cap::CAP_VNDR)? == spec::PCI_CAP_ID_VNDR && byte(at + cap::CAP_LEN)? >= cap::LEN_GENERIC {
            let cfg_type = byte(at + cap::CFG_TYPE)?;
            let loc = CapLocation {
                bar: byte(at + cap::BAR)?,
                offset: dword(at + cap::OFFSET)?,
                length: dword(at + cap::LENGTH)?,
            };
            // BAR numbers above 5 are reserved: skip such capabilities.
            if loc.bar <= 5 {
                let slot = match cfg_type {
                    spec::VIRTIO_PCI_CAP_COMMON_CFG => Some(&mut caps.common),
                    spec::VIRTIO_PCI_CAP_ISR_CFG => Some(&mut caps.isr),
                    spec::VIRTIO_PCI_CAP_DEVICE_CFG => Some(&mut caps.device),
                    spec::VIRTIO_PCI_CAP_NOTIFY_CFG
                        if caps.notify.is_none() && byte(at + cap::CAP_LEN)? >= cap::LEN_NOTIFY =>
                    {
                        caps.notify_off_multiplier = dword(at + cap::NOTIFY_OFF_MULTIPLIER)?;
                        Some(&mut caps.notify)
                    }
                    _ => None,
                };
                if let Some(slot) = slot {
                    slot.get_or_insert(loc);
                }
            }
        }
        ptr = byte(at + cap::CAP_NEXT)? & !3;
    }
    Ok(caps)
}

/// One structure inside a mapped BAR.
#[derive(Clone)]
struct Window {
    bar: Mmio,
    base: usize,
    len: usize,
}

impl Window {
    fn new(bars: &HashMap<u8, Mmio>, loc: CapLocation, min_len: usize, what: &str) -> Result<Window> {
        let bar = bars
            .get(&loc.bar)
            .ok_or_else(|| NicError::InvalidArgument(format!("virtio {what} structure in unmapped BAR{}", loc.bar)))?
            .clone();
        let (base, len) = (loc.offset as usize, loc.length as usize);
        if len < min_len || base.checked_add(len).is_none_or(|end| end > bar.len()) {
            return Err(NicError::InvalidArgument(format!(
                "virtio {what} structure ({len:#x} bytes at {base:#x} of BAR{}) does not fit the BAR of {:#x} bytes",
                loc.bar,
                bar.len()
            )));
        }
        Ok(Window { bar, base, len })
    }
}

/// Tells the device that a queue has new buffers: writes the queue index at
/// its notification address (§4.1.4.4).
pub struct Notifier {
    bar: Mmio,
    off: usize,
    queue: u16,
}

impl Notifier {
    /// A notifier writing `queue` at `off` of `bar`.
    pub fn new(bar: Mmio, off: usize, queue: u16) -> Notifier {
        Notifier { bar, off, queue }
    }

    #[inline]
    /// Notifies the device: one 16-bit MMIO write.
    pub fn notify(&self) {
        self.bar.write16(self.off, self.queue);
    }
}

/// IOVAs of one split queue's three parts.
#[derive(Clone, Copy, Debug)]
pub struct QueueAddrs {
    /// The descriptor table.
    pub desc: Iova,
    /// The available ring (driver area).
    pub driver: Iova,
    /// The used ring (device area).
    pub device: Iova,
}

/// The modern virtio PCI interface of one device.
pub struct Transport {
    common: Window,
    notify: Window,
    notify_off_multiplier: u32,
    device: Window,
}

impl Transport {
    /// Maps the BARs that `caps` points into; `caps` must be modern.
    pub fn map(dev: &PciDevice, caps: &VirtioCaps) -> Result<Transport> {
        let mut bars = HashMap::new();
        for loc in [caps.common, caps.notify, caps.device].into_iter().flatten() {
            if let std::collections::hash_map::Entry::Vacant(e) = bars.entry(loc.bar) {
                e.insert(dev.map_bar(loc.bar as u32)?);
            }
        }
        Transport::from_bars(&bars, caps)
    }

    /// The transport over already mapped BARs (or plain memory blocks, for
    /// host tests that play the device).
    pub fn from_bars(bars: &HashMap<u8, Mmio>, caps: &VirtioCaps) -> Result<Transport> {
        let (Some(c), Some(n), Some(d)) = (caps.common, caps.notify, caps.device) else {
            return Err(NicError::InvalidArgument(
                "device lacks the virtio 1.x common, notify or device configuration capability".into(),
            ));
        };
        Ok(Transport {
            common: Window::new(bars, c, common::LEN, "common configuration")?,
            notify: Window::new(bars, n, 2, "notification")?,
            notify_off_multiplier: caps.notify_off_multiplier,
            device: Window::new(bars, d, 0, "device configuration")?,
        })
    }

    fn c(&self) -> (&Mmio, usize) {
        (&self.common.bar, self.common.base)
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        let (m, b) = self.c();
        m.read8(b + common::DEVICE_STATUS)
    }

    /// Writes the device status byte.
    pub fn set_status(&self, status: u8) {
        let (m, b) = self.c();
        m.write8(b + common::DEVICE_STATUS, status);
    }

    /// Adds `bits` to the device status.
    pub fn add_status(&self, bits: u8) {
        self.set_status(self.status() | bits);
    }

    /// Resets the device (§2.1.2: write 0, then wait until it reads 0) and
    /// with it every queue; the device no longer touches their memory.
    pub fn reset(&self, timeout: Duration) -> Result<()> {
        self.set_status(0);
        let start = Instant::now();
        while self.status() != 0 {
            if start.elapsed() > timeout {
                return Err(NicError::Timeout { what: "virtio device reset" });
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        let (m, b) = self.c();
        m.write32(b + common::DEVICE_FEATURE_SELECT, 0);
        let lo = m.read32(b + common::DEVICE_FEATURE) as u64;
        m.write32(b + common::DEVICE_FEATURE_SELECT, 1);
        let hi = m.read32(b + common::DEVICE_FEATURE) as u64;
        hi << 32 | lo
    }

    /// Writes the feature bits the driver accepts.
    pub fn set_driver_features(&self, features: u64) {
        let (m, b) = self.c();
        m.write32(b + common::DRIVER_FEATURE_SELECT, 0);
        m.write32(b + common::DRIVER_FEATURE, features as u32);
        m.write32(b + common::DRIVER_FEATURE_SELECT, 1);
        m.write32(b + common::DRIVER_FEATURE, (features >> 32) as u32);
    }

    /// Virtqueues the device has.
    pub fn num_queues(&self) -> u16 {
        let (m, b) = self.c();
        m.read16(b + common::NUM_QUEUES)
    }

    /// Routes configuration-change interrupts nowhere.
    pub fn disable_config_vector(&self) {
        let (m, b) = self.c();
        m.write16(b + common::CONFIG_MSIX_VECTOR, spec::VIRTIO_MSI_NO_VECTOR);
    }

    /// Largest size of queue `q` (0: the queue does not exist).
    pub fn queue_max_size(&self, q: u16) -> u16 {
        let (m, b) = self.c();
        m.write16(b + common::QUEUE_SELECT, q);
        m.read16(b + common::QUEUE_SIZE)
    }

    /// Configures and enables queue `q` with `size` entries at `addrs`,
    /// without an interrupt vector; returns its notifier (§4.1.5.1.3).
    pub fn setup_queue(&self, q: u16, size: u16, addrs: QueueAddrs) -> Result<Notifier> {
        let (m, b) = self.c();
        m.write16(b + common::QUEUE_SELECT, q);
        m.write16(b + common::QUEUE_SIZE, size);
        m.write16(b + common::QUEUE_MSIX_VECTOR, spec::VIRTIO_MSI_NO_VECTOR);
        for (reg, iova) in [
            (common::QUEUE_DESC, addrs.desc),
            (common::QUEUE_DRIVER, addrs.driver),
            (common::QUEUE_DEVICE, addrs.device),
        ] {
            m.write32(b + reg, iova.get() as u32);
            m.write32(b + reg + 4, (iova.get() >> 32) as u32);
        }
        let notify_off = m.read16(b + common::QUEUE_NOTIFY_OFF) as usize;
        let off = notify_off * self.notify_off_multiplier as usize;
        if off + 2 > self.notify.len {
            return Err(NicError::Malformed("queue notification address outside the notify structure"));
        }
        m.write16(b + common::QUEUE_ENABLE, 1);
        Ok(Notifier::new(self.notify.bar.clone(), self.notify.base + off, q))
    }

    /// Bytes of device configuration.
    pub fn device_config_len(&self) -> usize {
        self.device.len
    }

    /// Reads device configuration with `f` until the configuration
    /// generation is the same before and after (§2.5.1: a consistent view).
    pub fn read_config<T>(&self, f: impl Fn(&DeviceConfig) -> T) -> T {
        let (m, b) = self.c();
        loop {
            let before = m.read8(b + common::CONFIG_GENERATION);
            let v = f(&DeviceConfig(&self.device));
            if m.read8(b + common::CONFIG_GENERATION) == before {
                return v;
            }
        }
    }
}

/// Read access to the device configuration structure.
pub struct DeviceConfig<'a>(&'a Window);

impl DeviceConfig<'_> {
    /// The byte at `off`.
    pub fn read8(&self, off: usize) -> u8 {
        self.0.bar.read8(self.0.base + off)
    }

    /// The little-endian 16-bit word at `off`.
    pub fn read16(&self, off: usize) -> u16 {
        self.0.bar.read16(self.0.base + off)
    }

    /// The little-endian 32-bit word at `off`.
    pub fn read32(&self, off: usize) -> u32 {
        self.0.bar.read32(self.0.base + off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config space image with a capability list.
    struct FakeConfig(Vec<u8>);

    impl FakeConfig {
        fn new() -> FakeConfig {
            let mut c = vec![0u8; 256];
            c[spec::PCI_STATUS as usize] = spec::PCI_STATUS_CAP_LIST as u8;
            FakeConfig(c)
        }

        /// Appends a capability at `at`, linked after `prev` (or first).
        fn cap(&mut self, prev: Option<usize>, at: usize, body: &[u8]) {
            self.0[at..at + body.len()].copy_from_slice(body);
            match prev {
                Some(p) => self.0[p + 1] = at as u8,
                None => self.0[spec::PCI_CAPABILITY_LIST as usize] = at as u8,
            }
        }

        fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
            let o = off as usize;
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
    }

    fn virtio_cap(cfg_type: u8, bar: u8, offset: u32, length: u32, mult: Option<u32>) -> Vec<u8> {
        let len = if mult.is_some() { cap::LEN_NOTIFY } else { cap::LEN_GENERIC };
        let mut v = vec![spec::PCI_CAP_ID_VNDR, 0, len, cfg_type, bar, 0, 0, 0];
        v.extend(offset.to_le_bytes());
        v.extend(length.to_le_bytes());
        if let Some(m) = mult {
            v.extend(m.to_le_bytes());
        }
        v
    }

    #[test]
    fn finds_the_virtio_structures_like_qemus_layout() {
        let mut c = FakeConfig::new();
        // MSI-X first (id 0x11), then the virtio caps in BAR4 as QEMU lays them out.
        c.cap(None, 0x98, &[0x11, 0, 0, 0]);
        c.cap(Some(0x98), 0x84, &virtio_cap(5, 0, 0, 0, None)); // PCI cfg access: ignored
        c.cap(Some(0x84), 0x74, &virtio_cap(4, 4, 0x2000, 0x1000, None));
        c.cap(Some(0x74), 0x64, &virtio_cap(3, 4, 0x1000, 0x1000, None));
        c.cap(Some(0x64), 0x50, &virtio_cap(2, 4, 0x3000, 0x1000, Some(4)));
        c.cap(Some(0x50), 0x40, &virtio_cap(1, 4, 0x0000, 0x1000, None));
        let caps = find_caps(|o, b| c.read(o, b)).unwrap();
        assert!(caps.is_modern());
        assert_eq!(caps.common, Some(CapLocation { bar: 4, offset: 0, length: 0x1000 }));
        assert_eq!(caps.notify, Some(CapLocation { bar: 4, offset: 0x3000, length: 0x1000 }));
        assert_eq!(caps.notify_off_multiplier, 4);
        assert_eq!(caps.isr, Some(CapLocation { bar: 4, offset: 0x1000, length: 0x1000 }));
        assert_eq!(caps.device, Some(CapLocation { bar: 4, offset: 0x2000, length: 0x1000 }));
    }

    #[test]
    fn first_capability_of_a_type_wins_and_reserved_bars_are_skipped() {
        let mut c = FakeConfig::new();
        c.cap(None, 0x40, &virtio_cap(1, 7, 0, 0x100, None));
        c.cap(Some(0x40), 0x50, &virtio_cap(1, 2, 0x100, 0x100, None));
        c.cap(Some(0x50), 0x60, &virtio_cap(1, 3, 0x200, 0x100, None));
        let caps = find_caps(|o, b| c.read(o, b)).unwrap();
        assert_eq!(caps.common, Some(CapLocation { bar: 2, offset: 0x100, length: 0x100 }));
        assert!(!caps.is_modern());
    }

    #[test]
    fn a_looping_or_absent_list_ends() {
        let mut c = FakeConfig::new();
        c.cap(None, 0x40, &virtio_cap(4, 1, 0, 8, None));
        c.0[0x41] = 0x40; // points at itself
        let caps = find_caps(|o, b| c.read(o, b)).unwrap();
        assert_eq!(caps.device.map(|d| d.bar), Some(1));

        let mut none = FakeConfig::new();
        none.0[spec::PCI_STATUS as usize] = 0;
        none.0[spec::PCI_CAPABILITY_LIST as usize] = 0x40;
        assert_eq!(find_caps(|o, b| none.read(o, b)).unwrap(), VirtioCaps::default());
    }

    #[test]
    fn a_short_notify_capability_is_not_taken() {
        let mut c = FakeConfig::new();
        c.cap(None, 0x40, &virtio_cap(2, 4, 0x3000, 0x1000, None));
        let caps = find_caps(|o, b| c.read(o, b)).unwrap();
        assert_eq!(caps.notify, None);
    }

    fn sim_caps() -> VirtioCaps {
        VirtioCaps {
            common: Some(CapLocation { bar: 4, offset: 0, length: 0x100 }),
            notify: Some(CapLocation { bar: 4, offset: 0x300, length: 0x100 }),
            notify_off_multiplier: 4,
            isr: None,
            device: Some(CapLocation { bar: 4, offset: 0x200, length: 0x20 }),
        }
    }

    #[test]
    fn queue_setup_writes_every_register_with_its_width() {
        let bar = Mmio::simulated(0x400);
        let t = Transport::from_bars(&HashMap::from([(4, bar.clone())]), &sim_caps()).unwrap();
        bar.write16(common::QUEUE_NOTIFY_OFF, 1);
        let addrs = QueueAddrs {
            desc: Iova(0x1_2345_6000),
            driver: Iova(0x1_2345_7000),
            device: Iova(0x1_2345_8000),
        };
        let n = t.setup_queue(1, 256, addrs).unwrap();
        assert_eq!(bar.read16(common::QUEUE_SELECT), 1);
        assert_eq!(bar.read16(common::QUEUE_SIZE), 256);
        assert_eq!(bar.read16(common::QUEUE_MSIX_VECTOR), spec::VIRTIO_MSI_NO_VECTOR);
        assert_eq!(bar.read64(common::QUEUE_DESC), 0x1_2345_6000);
        assert_eq!(bar.read64(common::QUEUE_DRIVER), 0x1_2345_7000);
        assert_eq!(bar.read64(common::QUEUE_DEVICE), 0x1_2345_8000);
        assert_eq!(bar.read16(common::QUEUE_ENABLE), 1);
        // Status sits next to queue_select: byte writes leave it alone.
        t.set_status(spec::VIRTIO_STATUS_ACKNOWLEDGE);
        assert_eq!(bar.read16(common::QUEUE_SELECT), 1);
        assert_eq!(t.status(), spec::VIRTIO_STATUS_ACKNOWLEDGE);
        n.notify();
        assert_eq!(bar.read16(0x300 + 4), 1);

        // A notify offset past the structure is refused.
        bar.write16(common::QUEUE_NOTIFY_OFF, 0x40);
        assert!(matches!(t.setup_queue(0, 256, addrs), Err(NicError::Malformed(_))));
    }

    #[test]
    fn features_are_read_and_written_in_two_halves() {
        let bar = Mmio::simulated(0x400);
        let t = Transport::from_bars(&HashMap::from([(4, bar.clone())]), &sim_caps()).unwrap();
        t.set_driver_features(0x0000_0003_0001_0020);
        // The last half written stays in the register; select says which.
        assert_eq!(bar.read32(common::DRIVER_FEATURE_SELECT), 1);
        assert_eq!(bar.read32(common::DRIVER_FEATURE), 3);
        assert!(t.reset(Duration::from_millis(1)).is_ok());
    }

    #[test]
    fn structures_outside_their_bar_are_refused() {
        let mut caps = sim_caps();
        caps.device = Some(CapLocation { bar: 4, offset: 0x3f0, length: 0x20 });
        let bars = HashMap::from([(4, Mmio::simulated(0x400))]);
        assert!(matches!(Transport::from_bars(&bars, &caps), Err(NicError::InvalidArgument(_))));
    }
}
