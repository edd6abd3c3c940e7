//! MSI-X interrupts through VFIO: each vector signals an eventfd, so a
//! polling thread that runs out of work can sleep until the device has
//! something for it, then go back to polling (hybrid polling, as SPDK's
//! interrupt mode). Nothing here is on the data path: a busy thread never
//! reads an eventfd.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::error::{Error, Result};
use crate::pci::PciDevice;

/// The MSI-X vectors of one device, enabled together. Dropping the last
/// handle (including every [`Interrupt`] taken from it) turns them off.
pub struct MsixVectors {
    inner: Arc<VectorsInner>,
}

struct VectorsInner {
    device: PciDevice,
    fds: Vec<Arc<EventFd>>,
}

/// One vector's eventfd: cleared and waited on by the thread that owns the
/// queue the vector is tied to.
#[derive(Clone)]
pub struct Interrupt {
    fd: Arc<EventFd>,
    vector: u16,
    /// Keeps the vectors enabled (and the device open) while waited on.
    _vectors: Arc<VectorsInner>,
}

impl MsixVectors {
    /// Enables up to `wanted` MSI-X vectors of `device` (at least one; fewer
    /// when the device has fewer), each signalling its own eventfd.
    /// A device's vectors are enabled once at a time: a second call while
    /// the first vectors live is [`Error::Busy`].
    pub(crate) fn enable(device: &PciDevice, wanted: u16) -> Result<MsixVectors> {
        let addr = device.address();
        let dev = device.vfio_device()?;
        let available = dev
            .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |i| i.count);
        if available == 0 {
            return Err(Error::InvalidArgument(format!("{addr} has no MSI-X vectors")));
        }
        if wanted == 0 {
            return Err(Error::InvalidArgument("zero MSI-X vectors asked for".into()));
        }
        let n = u32::from(wanted).min(available) as usize;
        if device.msix_flag().swap(true, Ordering::AcqRel) {
            return Err(Error::Busy(addr));
        }
        let made: std::io::Result<Vec<Arc<EventFd>>> =
            (0..n).map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new)).collect();
        let fds = match made {
            Ok(fds) => fds,
            Err(e) => {
                device.msix_flag().store(false, Ordering::Release);
                return Err(Error::io("eventfd for MSI-X", e));
            }
        };
        if let Err(source) = dev.enable_msix(fds.iter().map(|f| f.as_ref()).collect()) {
            device.msix_flag().store(false, Ordering::Release);
            return Err(Error::Vfio { addr, source });
        }
        Ok(MsixVectors {
            inner: Arc::new(VectorsInner {
                device: device.clone(),
                fds,
            }),
        })
    }

    /// How many vectors are enabled.
    pub fn len(&self) -> u16 {
        self.inner.fds.len() as u16
    }

    /// Never true: at least one vector is enabled.
    pub fn is_empty(&self) -> bool {
        self.inner.fds.is_empty()
    }

    /// Vector `vector`'s eventfd, or `None` past [`MsixVectors::len`].
    pub fn interrupt(&self, vector: u16) -> Option<Interrupt> {
        let fd = self.inner.fds.get(vector as usize)?.clone();
        Some(Interrupt {
            fd,
            vector,
            _vectors: self.inner.clone(),
        })
    }
}

impl Drop for VectorsInner {
    fn drop(&mut self) {
        // A removed device took its vectors with it.
        if let Ok(dev) = self.device.vfio_device() {
            if let Err(e) = dev.disable_irq(VFIO_PCI_MSIX_IRQ_INDEX) {
                log::warn!("{}: disabling MSI-X: {e}", self.device.address());
            }
        }
        self.device.msix_flag().store(false, Ordering::Release);
    }
}

impl Interrupt {
    /// The MSI-X vector number.
    pub fn vector(&self) -> u16 {
        self.vector
    }

    /// Forgets the signals so far (without blocking); returns how many
    /// there were. Clear, then check the queue, then [`Interrupt::wait`]:
    /// a signal raised after the clear is not lost.
    pub fn clear(&self) -> u64 {
        self.fd.read().unwrap_or(0)
    }

    /// Blocks until the vector fires or `timeout` passes (`None`: no
    /// limit); true when it fired. The signal is consumed.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let ts = timeout.map(|t| Timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        // SAFETY: the descriptor belongs to `self.fd`, which this borrow
        // cannot outlive (both end with this call).
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd.as_raw_fd()) };
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        loop {
            match poll(&mut fds, ts.as_ref()) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(self.clear() > 0),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::io("waiting for an interrupt", e.into())),
            }
        }
    }
}
