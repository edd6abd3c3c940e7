//! PCI devices through VFIO: address parsing, the sysfs checks that turn
//! "why can't I open it" into a precise error, config space, bus mastering
//! and BAR mapping.

use std::fmt;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, Weak};

use vfio_ioctls::{VfioDevice, VfioError, VfioRegionInfoCap};

use crate::removal::Removal;

use crate::error::{Error, Result};
use crate::mmio::Mmio;
use crate::vfio::Vfio;

/// VFIO region index of PCI config space.
const CONFIG_REGION: u32 = 7;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
const REGION_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_DEVICE_RESET`: `_IO(';', 100 + 11)`.
const VFIO_DEVICE_RESET: libc::c_ulong = 0x3b6f;

/// Config space offsets (PCI Local Bus spec, type 0 header).
pub mod config {
    /// Vendor id (16 bits).
    pub const VENDOR_ID: u64 = 0x00;
    /// Device id (16 bits).
    pub const DEVICE_ID: u64 = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: u64 = 0x04;
    /// Revision id (8 bits) and class code (24 bits).
    pub const CLASS_REVISION: u64 = 0x08;
    /// COMMAND: respond to memory space accesses.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// COMMAND: the device may master the bus (issue DMA).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// COMMAND: legacy INTx disabled (we poll).
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
}

/// A PCI address `domain:bus:device.function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PciAddress {
    /// PCI segment (domain).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0-31).
    pub device: u8,
    /// Function number (0-7).
    pub function: u8,
}

impl FromStr for PciAddress {
    type Err = Error;

    /// Accepts `0000:00:04.0` and the short `00:04.0`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadPciAddress(s.to_string());
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, v] if d.len() == 4 => (*d, *b, *v),
            [b, v] => ("0000", *b, *v),
            _ => return Err(bad()),
        };
        let hex = |t: &str, width: usize| {
            (t.len() == width && t.bytes().all(|c| c.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(t, 16).ok())
                .flatten()
        };
        let addr = PciAddress {
            domain: hex(domain, 4).ok_or_else(bad)?,
            bus: hex(bus, 2).ok_or_else(bad)? as u8,
            device: hex(device, 2).ok_or_else(bad)? as u8,
            function: hex(function, 1).ok_or_else(bad)? as u8,
        };
        if addr.device > 0x1f || addr.function > 7 {
            return Err(bad());
        }
        Ok(addr)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl PciAddress {
    /// `/sys/bus/pci/devices/<addr>`.
    pub fn sysfs_path(&self) -> PathBuf {
        PathBuf::from(format!("/sys/bus/pci/devices/{self}"))
    }
}

/// PCI devices of class `class` (24-bit class code) bound to vfio-pci, from
/// sysfs, sorted by address: what a tool can open without being told.
pub fn vfio_devices(class: u32) -> Vec<PciAddress> {
    let Ok(dir) = fs::read_dir("/sys/bus/pci/devices") else {
        return Vec::new();
    };
    let mut out: Vec<PciAddress> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let addr: PciAddress = e.file_name().to_str()?.parse().ok()?;
            let class_text = fs::read_to_string(e.path().join("class")).ok()?;
            let c = u32::from_str_radix(class_text.trim().trim_start_matches("0x"), 16).ok()?;
            (c == class && link_name(&e.path().join("driver")).as_deref() == Some("vfio-pci"))
                .then_some(addr)
        })
        .collect();
    out.sort_by_key(|a| (a.domain, a.bus, a.device, a.function));
    out
}

fn link_name(p: &Path) -> Option<String> {
    Some(fs::read_link(p).ok()?.file_name()?.to_str()?.to_string())
}

/// An open PCI device. Dropping the last handle (including BAR mappings)
/// turns bus mastering off, then releases the device to vfio-pci.
#[derive(Clone)]
pub struct PciDevice {
    inner: Arc<DeviceInner>,
}

pub(crate) struct DeviceInner {
    addr: PciAddress,
    group: u32,
    config_offset: u64,
    /// The VFIO device (its fd). `None` once released for a removal: the
    /// kernel finishes removing a device only when its fd is closed.
    dev: RwLock<Option<Arc<VfioDevice>>>,
    /// MSI-X vectors are enabled (by a live [`crate::MsixVectors`]).
    msix: AtomicBool,
    /// Live BAR mappings, revoked (replaced by all-ones memory) on removal.
    bars: Mutex<Vec<Weak<BarMapping>>>,
    /// Set when the device is being removed (see [`crate::removal`]).
    removed: Removal,
    /// Keeps the container (and with it the mappings) alive while the device
    /// can still DMA, and frees the address for a later open.
    vfio: Vfio,
}

impl PciDevice {
    pub(crate) fn open(vfio: &Vfio, addr: PciAddress) -> Result<PciDevice> {
        let sysfs = addr.sysfs_path();
        if !sysfs.exists() {
            return Err(Error::NoSuchDevice(addr));
        }
        match link_name(&sysfs.join("driver")).as_deref() {
            Some("vfio-pci") => {}
            Some(driver) => {
                return Err(Error::BoundToKernel {
                    addr,
                    driver: driver.to_string(),
                })
            }
            None => return Err(Error::NotBound(addr)),
        }
        let group: u32 = link_name(&sysfs.join("iommu_group"))
            .and_then(|g| g.parse().ok())
            .ok_or(Error::NoIommu(addr))?;
        let mut st = vfio.shared.lock();
        if st.detached || st.removed_groups.contains(&group) {
            return Err(Error::Released(addr));
        }
        let released = st
            .live
            .get(&addr)
            .and_then(Weak::upgrade)
            .is_some_and(|old| old.removed_flag().is_removed());
        if st.open.contains(&addr) && !released {
            return Err(Error::Busy(addr));
        }
        let dev = match st.devices.get(&addr) {
            Some(dev) => dev.clone(),
            None => {
                let dev = VfioDevice::new(&sysfs, vfio.shared.container.clone(), false)
                    .map_err(|e| open_error(addr, group, e))?;
                let dev = Arc::new(dev);
                st.devices.insert(addr, dev.clone());
                crate::removal::watch(&vfio.shared, addr, &dev);
                dev
            }
        };
        st.open.insert(addr);
        drop(st);
        let config_offset = dev.get_region_offset(CONFIG_REGION);
        let device = PciDevice {
            inner: Arc::new(DeviceInner {
                addr,
                group,
                config_offset,
                dev: RwLock::new(Some(dev)),
                msix: AtomicBool::new(false),
                bars: Mutex::new(Vec::new()),
                removed: Removal::default(),
                vfio: vfio.clone(),
            }),
        };
        vfio.shared
            .lock()
            .live
            .insert(addr, Arc::downgrade(&device.inner));
        vfio.shared.group_attached()?;
        Ok(device)
    }

    /// Enables up to `wanted` MSI-X vectors (fewer if the device has
    /// fewer), each signalling an eventfd; see [`crate::irq`]. While they
    /// live, a second call is [`Error::Busy`].
    pub fn enable_msix(&self, wanted: u16) -> Result<crate::MsixVectors> {
        crate::MsixVectors::enable(self, wanted)
    }

    /// The VFIO device, or [`Error::Removed`] once released for a removal.
    pub(crate) fn vfio_device(&self) -> Result<Arc<VfioDevice>> {
        self.inner.dev()
    }

    /// Set once the device is being removed: see [`crate::removal`].
    pub fn removal(&self) -> Removal {
        self.inner.removed.clone()
    }

    pub(crate) fn msix_flag(&self) -> &AtomicBool {
        &self.inner.msix
    }

    /// The device's PCI address.
    pub fn address(&self) -> PciAddress {
        self.inner.addr
    }

    /// Its IOMMU group number (`/dev/vfio/<group>`).
    pub fn iommu_group(&self) -> u32 {
        self.inner.group
    }

    /// Reads `buf.len()` bytes of config space at `off`.
    pub fn config_read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.config_read(off, buf)
    }

    /// Writes `buf` into config space at `off`.
    pub fn config_write(&self, off: u64, buf: &[u8]) -> Result<()> {
        self.inner.config_write(off, buf)
    }

    /// 16-bit config space read.
    pub fn config_read16(&self, off: u64) -> Result<u16> {
        let mut b = [0; 2];
        self.config_read(off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// 32-bit config space read.
    pub fn config_read32(&self, off: u64) -> Result<u32> {
        let mut b = [0; 4];
        self.config_read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// 16-bit config space write.
    pub fn config_write16(&self, off: u64, v: u16) -> Result<()> {
        self.config_write(off, &v.to_le_bytes())
    }

    /// Vendor and device id.
    pub fn id(&self) -> Result<(u16, u16)> {
        Ok((
            self.config_read16(config::VENDOR_ID)?,
            self.config_read16(config::DEVICE_ID)?,
        ))
    }

    /// The 24-bit class code (base class, subclass, programming interface).
    pub fn class_code(&self) -> Result<u32> {
        Ok(self.config_read32(config::CLASS_REVISION)? >> 8)
    }

    /// Enables memory decoding and bus mastering (DMA), disables INTx: what
    /// a polling driver needs before touching the device.
    pub fn enable_dma(&self) -> Result<()> {
        let cmd = self.config_read16(config::COMMAND)?;
        self.config_write16(
            config::COMMAND,
            cmd | config::COMMAND_MEMORY | config::COMMAND_BUS_MASTER | config::COMMAND_INTX_DISABLE,
        )?;
        let back = self.config_read16(config::COMMAND)?;
        if back & config::COMMAND_BUS_MASTER == 0 {
            return Err(Error::InvalidArgument(format!(
                "{}: bus master bit did not stick",
                self.inner.addr
            )));
        }
        Ok(())
    }

    /// Turns bus mastering off: the device can no longer issue DMA.
    pub fn disable_dma(&self) -> Result<()> {
        self.inner.disable_dma()
    }

    /// Whether bus mastering is on.
    pub fn dma_enabled(&self) -> Result<bool> {
        Ok(self.config_read16(config::COMMAND)? & config::COMMAND_BUS_MASTER != 0)
    }

    /// Function-level reset through VFIO (`VFIO_DEVICE_RESET`), with its
    /// result checked.
    pub fn reset(&self) -> Result<()> {
        let dev = self.inner.dev()?;
        // SAFETY: a plain ioctl without arguments on the device fd we own.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), VFIO_DEVICE_RESET as _) };
        if rc != 0 {
            return Err(Error::io(
                format!("VFIO_DEVICE_RESET on {}", self.inner.addr),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Maps BAR `bar` (0-5) into the process as a register block.
    pub fn map_bar(&self, bar: u32) -> Result<Mmio> {
        let d = self.inner.dev()?;
        let addr = self.inner.addr;
        let err = |why: &str| Error::Bar {
            addr,
            bar,
            why: why.to_string(),
        };
        if bar > 5 {
            return Err(err("BAR index must be 0-5"));
        }
        let size = d.get_region_size(bar) as usize;
        if size == 0 {
            return Err(err("the device does not implement it"));
        }
        if d.get_region_flags(bar) & REGION_FLAG_MMAP == 0 {
            return Err(err("VFIO does not allow mmap of it (I/O port BAR?)"));
        }
        let caps = d.get_region_caps(bar);
        let msix_mappable = caps.iter().any(|c| matches!(c, VfioRegionInfoCap::MsixMappable));
        let sparse = caps.iter().find_map(|c| match c {
            VfioRegionInfoCap::SparseMmap(s) if !msix_mappable => Some(s.areas.clone()),
            _ => None,
        });
        let fd = d.as_raw_fd();
        let base = d.get_region_offset(bar) as libc::off_t;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: maps the device fd at the region offset VFIO gave us. With
        // sparse areas, a PROT_NONE reservation is made first and only the
        // allowed areas are mapped over it (MAP_FIXED inside our own
        // reservation), so the MSI-X table hole faults instead of aliasing.
        let ptr = unsafe {
            match &sparse {
                None => libc::mmap(std::ptr::null_mut(), size, prot, libc::MAP_SHARED, fd, base),
                Some(areas) => {
                    let res = libc::mmap(
                        std::ptr::null_mut(),
                        size,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if res != libc::MAP_FAILED {
                        for a in areas {
                            if a.offset as usize + a.size as usize > size {
                                continue;
                            }
                            let p = libc::mmap(
                                res.cast::<u8>().add(a.offset as usize).cast(),
                                a.size as usize,
                                prot,
                                libc::MAP_SHARED | libc::MAP_FIXED,
                                fd,
                                base + a.offset as libc::off_t,
                            );
                            if p == libc::MAP_FAILED {
                                libc::munmap(res, size);
                                return Err(err(&std::io::Error::last_os_error().to_string()));
                            }
                        }
                    }
                    res
                }
            }
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(&std::io::Error::last_os_error().to_string()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| err("mmap returned null"))?;
        let owner = Arc::new(BarMapping {
            ptr,
            len: size,
            _dev: self.inner.clone(),
        });
        let mut bars = self.inner.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.retain(|b| b.strong_count() > 0);
        bars.push(Arc::downgrade(&owner));
        drop(bars);
        // SAFETY: ptr..ptr+size is mapped (page aligned) until BarMapping
        // drops: while the device is open, to its BAR (BarMapping keeps the
        // handle); on a removal, before the device fd closes, to all-ones
        // memory of the same size (BarMapping::revoke), never unmapped.
        Ok(unsafe { Mmio::new(ptr, size, owner) })
    }
}

impl DeviceInner {
    pub(crate) fn dev(&self) -> Result<Arc<VfioDevice>> {
        let dev = self.dev.read().unwrap_or_else(|p| p.into_inner());
        dev.clone().ok_or(Error::Removed(self.addr))
    }

    /// Takes the device out (its fd closes when the last clone drops).
    pub(crate) fn take_dev(&self) -> Option<Arc<VfioDevice>> {
        self.dev.write().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(crate) fn addr(&self) -> PciAddress {
        self.addr
    }

    pub(crate) fn removed_flag(&self) -> &Removal {
        &self.removed
    }

    /// Replaces every live BAR mapping by all-ones memory.
    pub(crate) fn revoke_bars(&self) {
        let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        for b in bars.iter().filter_map(Weak::upgrade) {
            b.revoke();
        }
    }

    fn config_read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let dev = self.dev()?;
        // SAFETY: pread into a buffer we own, of its length.
        let n = unsafe {
            libc::pread(
                dev.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                (self.config_offset + off) as libc::off_t,
            )
        };
        if n != buf.len() as isize {
            return Err(Error::io(
                format!("config space read at {off:#x} of {}", self.addr),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn config_write(&self, off: u64, buf: &[u8]) -> Result<()> {
        let dev = self.dev()?;
        // SAFETY: pwrite from a buffer we own, of its length.
        let n = unsafe {
            libc::pwrite(
                dev.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                (self.config_offset + off) as libc::off_t,
            )
        };
        if n != buf.len() as isize {
            return Err(Error::io(
                format!("config space write at {off:#x} of {}", self.addr),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    pub(crate) fn disable_dma(&self) -> Result<()> {
        let mut b = [0u8; 2];
        self.config_read(config::COMMAND, &mut b)?;
        let cmd = u16::from_le_bytes(b) & !config::COMMAND_BUS_MASTER;
        self.config_write(config::COMMAND, &cmd.to_le_bytes())
    }
}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        let released = self.removed.is_removed();
        // Stop DMA before the group leaves the container and before any
        // region can be unmapped and freed.
        if !released {
            if let Err(e) = self.disable_dma() {
                log::error!("{}: turning bus mastering off: {e}", self.addr);
            }
        }
        let mut st = self.vfio.shared.lock();
        // A handle released for a removal may outlive a reopen of the
        // address (a new device there): leave the new handle's entries.
        if st.live.get(&self.addr).is_none_or(|w| w.strong_count() == 0) {
            st.open.remove(&self.addr);
            st.live.remove(&self.addr);
        }
    }
}

fn open_error(addr: PciAddress, group: u32, e: VfioError) -> Error {
    match e {
        VfioError::OpenGroup(io, _) => match io.raw_os_error() {
            Some(libc::EBUSY) => Error::Busy(addr),
            Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied {
                path: PathBuf::from(format!("/dev/vfio/{group}")),
            },
            Some(libc::ENOENT) => Error::NoVfio(io),
            _ => Error::io(format!("open /dev/vfio/{group}"), io),
        },
        VfioError::GroupViable => Error::GroupNotViable { addr, group },
        VfioError::GroupGetDeviceFD(ref sys) if sys.errno() == libc::EBUSY => Error::Busy(addr),
        source => Error::Vfio { addr, source },
    }
}

/// A BAR mapping; unmapped when the last [`Mmio`] clone drops.
struct BarMapping {
    ptr: NonNull<u8>,
    len: usize,
    _dev: Arc<DeviceInner>,
}

// SAFETY: the mapping is plain address space; access goes through Mmio.
unsafe impl Send for BarMapping {}
// SAFETY: as above.
unsafe impl Sync for BarMapping {}

impl BarMapping {
    /// Puts memory that reads all ones (what a vanished PCIe device
    /// returns) where the BAR was, in one step: register accesses through
    /// any [`Mmio`] still out neither fault nor reach the device, and a
    /// driver reading a status register sees the removal.
    fn revoke(&self) {
        let ones = match all_ones_file(self.len) {
            Ok(f) => f,
            Err(e) => {
                log::error!("revoking a BAR mapping: {e}");
                return;
            }
        };
        // SAFETY: maps over exactly the range this mapping owns (MAP_FIXED
        // inside our own mapping), with memory of the same length; volatile
        // accesses in flight see the old page or the new one, never a hole.
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                ones.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            log::error!("revoking a BAR mapping: {}", std::io::Error::last_os_error());
        }
    }
}

/// A memory file of `len` bytes of 0xff.
fn all_ones_file(len: usize) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    let fd = rustix::fs::memfd_create("fastlane-removed-bar", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut f = std::fs::File::from(fd);
    let chunk = [0xffu8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(f)
}

impl Drop for BarMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range mapped in map_bar.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl fmt::Debug for PciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PciDevice({}, group {})", self.inner.addr, self.inner.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_addresses() {
        let a: PciAddress = "0000:00:04.0".parse().unwrap();
        assert_eq!((a.domain, a.bus, a.device, a.function), (0, 0, 4, 0));
        let b: PciAddress = "01:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:01:1f.7");
        assert_eq!("ABCD:ff:00.1".parse::<PciAddress>().unwrap().domain, 0xabcd);
    }

    #[test]
    fn rejects_malformed_addresses() {
        for s in [
            "", "0000:00:04", "00:04", "0000:00:20.0", "0000:00:04.8", "0000:0:04.0",
            "00000:00:04.0", "zz:00.0", "0000:00:04.0.1", "0000:00:04.+", "0000:00:04.00",
            "1:2:3:4.0", "::.", "0000:00:04.0 ",
        ] {
            assert!(
                matches!(s.parse::<PciAddress>(), Err(Error::BadPciAddress(_))),
                "{s:?} accepted"
            );
        }
    }
}
