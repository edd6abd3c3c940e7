//! The VFIO container: one IOMMU address space shared by every device the
//! process opens, and the DMA regions mapped into it.
//!
//! The container's IOMMU type is set when its first group is attached, so the
//! valid IOVA ranges (VFIO_IOMMU_GET_INFO, IOVA-range capability) are known
//! only from then on. Regions allocated earlier wait and are mapped at that
//! moment; regions allocated later are mapped as they are created.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vfio_ioctls::{VfioContainer, VfioDevice, VfioError};

use crate::addr::{DmaDomain, Iova};
use crate::error::{Error, Result};
use crate::hugepage::PageSize;
use crate::iova::{IovaSpace, Range};
use crate::pci::{DeviceInner, PciAddress, PciDevice};
use crate::region::{DmaRegion, RegionInner};

/// `VFIO_IOMMU_GET_INFO`: `_IO(';', 100 + 12)`.
const VFIO_IOMMU_GET_INFO: libc::c_ulong = 0x3b70;
/// `vfio_iommu_type1_info.flags`: a capability chain follows.
const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
/// Capability id of the valid IOVA ranges.
const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
/// Aperture assumed when the kernel predates the IOVA-range capability: the
/// 39 address bits every VT-d implementation has, minus the MSI window.
const FALLBACK_RANGES: [Range; 2] = [
    Range { start: 0, end: 0xfee0_0000 },
    Range { start: 0xfef0_0000, end: 1 << 39 },
];

/// A VFIO container: open devices with [`Vfio::open`], get DMA memory with
/// [`Vfio::alloc_region`] or [`crate::BufferPool::new`]. Cheap to clone.
#[derive(Clone)]
pub struct Vfio {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) container: Arc<VfioContainer>,
    state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    /// A group is attached and the IOMMU type set.
    ready: bool,
    space: IovaSpace,
    /// Regions made before the first device, mapped when it comes.
    pending: Vec<Weak<RegionInner>>,
    /// Mapped regions sorted by VA: (va, len, iova), for foreign pointers.
    mapped: Vec<(u64, u64, u64)>,
    /// Devices with a live handle: a second open is refused (`Busy`), so no
    /// driver resets a device under another.
    pub(crate) open: HashSet<PciAddress>,
    /// Every device opened so far, kept until the container goes. A group
    /// leaves the container when its last device closes, and the type1
    /// IOMMU then drops every mapping; keeping the devices keeps the groups
    /// in, so mappings live exactly as long as their regions. A later open
    /// of the same device reuses its entry. A removal takes the entry out
    /// (the kernel needs the device closed; see `detached`).
    pub(crate) devices: HashMap<PciAddress, Arc<VfioDevice>>,
    /// The live handle of each open device (for a removal).
    pub(crate) live: HashMap<PciAddress, Weak<DeviceInner>>,
    /// The container lost its last group to a removal, and with it the
    /// IOMMU and every mapping: it takes no new device (whether the kernel
    /// or vfio-ioctls let the group go first is a race, so the container's
    /// bookkeeping cannot be trusted). Regions stay valid memory.
    pub(crate) detached: bool,
    /// IOMMU groups released from this container by a removal: a group of
    /// the same number coming back is not taken here (see `detached`).
    pub(crate) removed_groups: HashSet<u32>,
}

impl Vfio {
    /// Opens `/dev/vfio/vfio`.
    pub fn new() -> Result<Vfio> {
        let container = VfioContainer::new(None).map_err(|e| match e {
            VfioError::OpenContainer(io) => match io.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied {
                    path: PathBuf::from("/dev/vfio/vfio"),
                },
                _ => Error::NoVfio(io),
            },
            other => Error::NoVfio(io::Error::other(other.to_string())),
        })?;
        Ok(Vfio {
            shared: Arc::new(Shared {
                container: Arc::new(container),
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Opens the PCI device at `addr` (e.g. `"0000:00:04.0"`), which must be
    /// bound to vfio-pci, and joins its IOMMU group to this container.
    pub fn open(&self, addr: &str) -> Result<PciDevice> {
        let addr: PciAddress = addr.parse()?;
        PciDevice::open(self, addr)
    }

    /// Allocates a DMA region of at least `len` bytes and maps it through the
    /// IOMMU (now, or when the first device is opened).
    pub fn alloc_region(&self, len: usize, page_size: PageSize) -> Result<DmaRegion> {
        let region = DmaRegion::allocate(len, page_size, Some(self.shared.clone()))?;
        let mut st = self.shared.lock();
        if st.ready && !st.detached {
            self.shared.map_locked(&mut st, &region.inner)?;
        } else {
            st.pending.push(Arc::downgrade(&region.inner));
        }
        Ok(region)
    }

    /// The IOMMU domain of this container: regions mapped here report it.
    pub fn domain(&self) -> DmaDomain {
        DmaDomain(Arc::as_ptr(&self.shared) as usize)
    }

    /// The valid IOVA ranges of the container (empty before the first device).
    pub fn iova_ranges(&self) -> Vec<Range> {
        self.shared.lock().space.valid().to_vec()
    }

    /// IOVA of any pointer into a mapped region. A binary search under a
    /// lock: for foreign pointers only; buffers and regions know their IOVA.
    pub fn translate(&self, ptr: *const u8) -> Option<Iova> {
        let va = ptr as u64;
        let st = self.shared.lock();
        let i = st.mapped.partition_point(|&(start, _, _)| start <= va);
        let &(start, len, iova) = st.mapped.get(i.checked_sub(1)?)?;
        (va - start < len).then(|| Iova(iova + (va - start)))
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent data behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called after a group joined the container: learn the aperture and map
    /// the regions that were waiting for it.
    pub(crate) fn group_attached(&self) -> Result<()> {
        let mut st = self.lock();
        if !st.ready {
            let ranges = query_iova_ranges(self.container.as_ref()).unwrap_or_else(|e| {
                log::warn!("VFIO_IOMMU_GET_INFO: {e}; assuming a 39-bit aperture");
                FALLBACK_RANGES.to_vec()
            });
            st.space = IovaSpace::new(ranges);
            st.ready = true;
        }
        // Regions made before the first device.
        let waiting = std::mem::take(&mut st.pending);
        let mut result = Ok(());
        let live: Vec<Arc<RegionInner>> = waiting.iter().filter_map(Weak::upgrade).collect();
        for r in &live {
            if let Err(e) = self.map_locked(&mut st, r) {
                result = Err(e);
                break;
            }
        }
        drop(st);
        // `live` drops here, outside the lock: a region's drop takes it.
        drop(live);
        result
    }

    fn map_locked(&self, st: &mut State, r: &RegionInner) -> Result<()> {
        let len = r.len();
        let iova = st
            .space
            .place(r.va(), len as u64, r.align())
            .ok_or(Error::IovaExhausted(len))?;
        // SAFETY: the region owns [ptr, ptr+len) until RegionInner::drop,
        // which unmaps this IOVA range before the memory is released. The
        // region is only accessed through raw pointers (see region.rs).
        let res = unsafe { self.container.vfio_dma_map(iova, len, r.ptr()) };
        if let Err(e) = res {
            st.space.release(iova, len as u64);
            return Err(map_error(iova, len, e));
        }
        r.set_iova(iova);
        let at = st.mapped.partition_point(|&(va, _, _)| va < r.va());
        st.mapped.insert(at, (r.va(), len as u64, iova));
        log::debug!("mapped {len:#x} bytes at va {:#x} iova {iova:#x}", r.va());
        Ok(())
    }

    pub(crate) fn unmap(&self, iova: u64, len: usize, va: u64) {
        let mut st = self.lock();
        // Detached, the kernel dropped the mappings already.
        if !st.detached {
            if let Err(e) = self.container.vfio_dma_unmap(iova, len) {
                log::error!("VFIO unmap of {len:#x} bytes at IOVA {iova:#x}: {e}");
            }
        }
        st.space.release(iova, len as u64);
        st.mapped.retain(|&(v, _, _)| v != va);
    }
}

fn map_error(iova: u64, len: usize, e: VfioError) -> Error {
    let errno = match &e {
        VfioError::IommuDmaMap(sys) => Some(sys.errno()),
        _ => None,
    };
    if errno == Some(libc::ENOMEM) {
        return Error::MemlockLimit {
            iova,
            len,
            limit: memlock_limit(),
        };
    }
    let source = match errno {
        Some(n) => io::Error::from_raw_os_error(n),
        None => io::Error::other(e.to_string()),
    };
    Error::DmaMap { iova, len, source }
}

/// RLIMIT_MEMLOCK as text, for error messages.
pub(crate) fn memlock_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return "unknown".into();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", lim.rlim_cur / 1024)
    }
}

/// Asks the container for its valid IOVA ranges.
fn query_iova_ranges(container: &VfioContainer) -> io::Result<Vec<Range>> {
    let mut size = 4096usize;
    loop {
        // u64 storage keeps the kernel's 8-byte fields aligned.
        let mut buf = vec![0u64; size / 8];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        bytes[0..4].copy_from_slice(&(size as u32).to_ne_bytes());
        // SAFETY: the kernel writes at most `argsz` (= size) bytes into buf.
        let rc = unsafe {
            libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_GET_INFO as _, buf.as_mut_ptr())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes: &[u8] = bytemuck::cast_slice(&buf);
        let argsz = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if argsz > size && size < (1 << 20) {
            size = argsz.next_multiple_of(8);
            continue;
        }
        return parse_iova_ranges(bytes)
            .ok_or_else(|| io::Error::other("no IOVA-range capability in VFIO_IOMMU_GET_INFO"));
    }
}

/// Walks the capability chain of a `vfio_iommu_type1_info` reply (public
/// for the fuzz target: the kernel writes these bytes).
pub fn parse_iova_ranges(info: &[u8]) -> Option<Vec<Range>> {
    let u16_at = |o: usize| Some(u16::from_ne_bytes(info.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_ne_bytes(info.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_ne_bytes(info.get(o..o + 8)?.try_into().ok()?));
    // struct vfio_iommu_type1_info { argsz u32, flags u32, iova_pgsizes u64, cap_offset u32, pad u32 }
    if u32_at(4)? & VFIO_IOMMU_INFO_CAPS == 0 {
        return None;
    }
    let mut off = u32_at(16)? as usize;
    let mut hops = 0;
    while off != 0 && hops < 64 {
        // struct vfio_info_cap_header { id u16, version u16, next u32 }
        if u16_at(off)? == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = u32_at(off + 8)? as usize;
            let mut out = Vec::with_capacity(n.min(64));
            for i in 0..n {
                let base = off + 16 + 16 * i;
                let (start, last) = (u64_at(base)?, u64_at(base + 8)?);
                if last >= start {
                    out.push(Range {
                        start,
                        end: last.saturating_add(1),
                    });
                }
            }
            return Some(out);
        }
        off = u32_at(off + 4)? as usize;
        hops += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_with_ranges(ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[4..8].copy_from_slice(&VFIO_IOMMU_INFO_CAPS.to_ne_bytes());
        b[16..20].copy_from_slice(&24u32.to_ne_bytes());
        // an unrelated capability first (id 2, migration), then ranges
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&40u32.to_ne_bytes());
        b.extend_from_slice(&[0u8; 8]);
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(ranges.len() as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        for &(s, e) in ranges {
            b.extend_from_slice(&s.to_ne_bytes());
            b.extend_from_slice(&e.to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_iova_range_capability() {
        let b = info_with_ranges(&[(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)]);
        let r = parse_iova_ranges(&b).unwrap();
        assert_eq!(r, vec![
            Range { start: 0, end: 0xfee0_0000 },
            Range { start: 0xfef0_0000, end: 1 << 39 },
        ]);
    }

    #[test]
    fn truncated_or_looping_chains_do_not_panic() {
        let b = info_with_ranges(&[(0, 0xffff)]);
        for cut in 0..b.len() {
            let _ = parse_iova_ranges(&b[..cut]);
        }
        let mut looped = b.clone();
        looped[28..32].copy_from_slice(&24u32.to_ne_bytes()); // next -> itself
        looped[24..26].copy_from_slice(&9u16.to_ne_bytes());
        assert_eq!(parse_iova_ranges(&looped), None);
    }
}
