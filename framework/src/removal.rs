//! Hot removal. When a device is unplugged (a hypervisor's `device_del`,
//! a slot's attention button, a failing drive taken offline), the kernel
//! asks vfio-pci to let it go and waits until every file descriptor of
//! the device is closed. The framework listens on the device's VFIO
//! request channel (`VFIO_PCI_REQ_IRQ_INDEX`, an eventfd) from a small
//! thread per device and, when asked:
//!
//! 1. turns bus mastering off, so the device can no longer reach memory
//!    whose buffers drivers are about to hand back;
//! 2. puts memory that reads all ones over every BAR mapping, so register
//!    accesses through handles still out neither fault (no SIGBUS) nor
//!    reach the device;
//! 3. marks the device removed ([`Removal::is_removed`]: drivers check it
//!    and fail their outstanding and new commands with a typed error).
//!    Last, so that a driver that sees the mark can no longer reach the
//!    device: a command it queued unseen stays unseen (a doorbell written
//!    between a first mark and the BARs' replacement once let the device
//!    take such commands);
//! 4. closes the device's file descriptor, so the kernel can finish.
//!
//! Regions and pools stay valid memory. A device that comes back (hot add)
//! is opened in a new [`crate::Vfio`]: its group was released from the old
//! container (by us or by the kernel, whichever came first, a race that
//! leaves the old container's bookkeeping unreliable), and a container that
//! lost its last device lost its IOMMU mappings with it. The old container
//! refuses such opens with [`crate::Error::Released`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use vfio_bindings::bindings::vfio::VFIO_PCI_REQ_IRQ_INDEX;
use vfio_ioctls::VfioDevice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::pci::{DeviceInner, PciAddress};
use crate::vfio::Shared;

/// Whether a device is being removed; cheap to check (one atomic load), so
/// a driver can look at it on every submission.
#[derive(Clone, Debug, Default)]
pub struct Removal(Arc<AtomicBool>);

impl Removal {
    /// True once the device is being removed or is gone.
    #[inline(always)]
    pub fn is_removed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Marks the device removed, as the removal watcher does: for device
    /// models (feature `sim`), which have no VFIO request channel.
    #[cfg(feature = "sim")]
    pub fn simulate(&self) {
        self.set();
    }
}

/// How often the watcher looks whether its container or device is gone.
const CHECK: Duration = Duration::from_millis(100);

/// Starts listening for removal requests of a device just taken into the
/// container (`dev`): until the request comes, or the container or the
/// device's entry in it goes.
pub(crate) fn watch(shared: &Arc<Shared>, addr: PciAddress, dev: &VfioDevice) {
    if dev.get_irq_info(VFIO_PCI_REQ_IRQ_INDEX).map_or(0, |i| i.count) == 0 {
        return;
    }
    let fd = match EventFd::new(EFD_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => return log::warn!("{addr}: no removal notice (eventfd: {e})"),
    };
    if let Err(e) = dev.enable_irq(VFIO_PCI_REQ_IRQ_INDEX, vec![&fd]) {
        return log::warn!("{addr}: no removal notice (VFIO request channel: {e})");
    }
    let shared = Arc::downgrade(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("fastlane-removal-{addr}"))
        .spawn(move || listen(fd, shared, addr));
    if let Err(e) = spawned {
        log::warn!("{addr}: no removal notice (thread: {e})");
    }
}

fn listen(fd: EventFd, shared: Weak<Shared>, addr: PciAddress) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    let ts = Timespec { tv_sec: 0, tv_nsec: CHECK.as_nanos() as i64 };
    loop {
        // SAFETY: the descriptor belongs to `fd`, which outlives this borrow.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
        let mut fds = [PollFd::from_borrowed_fd(bfd, PollFlags::IN)];
        let fired = matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0);
        // Never a strong reference just to look: the container's last
        // handle must drop (and close its devices) in its owner's thread,
        // at once, or a reopen right after could find the group busy.
        if shared.strong_count() == 0 {
            return;
        }
        if fired && fd.read().is_ok() {
            let Some(shared) = shared.upgrade() else { return };
            if shared.lock().devices.contains_key(&addr) {
                release(&shared, addr);
            }
            return;
        }
    }
}

/// Lets the device go (see the module text).
fn release(shared: &Arc<Shared>, addr: PciAddress) {
    log::warn!("{addr}: removal requested; releasing the device");
    let live = shared.lock().live.get(&addr).and_then(Weak::upgrade);
    let from_handle = live.as_ref().and_then(|inner| {
        release_handle(inner);
        inner.take_dev()
    });
    // Read while the device is still there (the kernel waits for us).
    let group = std::fs::read_link(addr.sysfs_path().join("iommu_group"))
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok());
    let (from_map, emptied) = {
        let mut st = shared.lock();
        if let Some(g) = group {
            st.removed_groups.insert(g);
        }
        let dev = st.devices.remove(&addr);
        let emptied = st.devices.is_empty();
        if emptied {
            // Closing the last device takes the last group out: the kernel
            // drops the IOMMU with it.
            st.detached = true;
        }
        (dev, emptied)
    };
    // The last reference closes the fd and lets the group go. vfio-ioctls
    // then looks the group up in sysfs, which the kernel may have cleared
    // already (it panics there: "InvalidPath"); the fd is closed by then,
    // so the panic is contained here rather than ending the thread early.
    let closing = (from_handle, live, from_map);
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(closing))).is_err() {
        log::warn!("{addr}: the device left sysfs before its group was put back (the kernel finished first)");
    }
    log::warn!("{addr}: released{}", if emptied { " (container now empty)" } else { "" });
}

/// Steps 1-3 for a device with a live handle.
fn release_handle(inner: &DeviceInner) {
    if let Err(e) = inner.disable_dma() {
        log::warn!("{}: bus mastering off before removal: {e}", inner.addr());
    }
    inner.revoke_bars();
    inner.removed_flag().set();
}
