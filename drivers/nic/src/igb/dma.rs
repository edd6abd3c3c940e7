//! A descriptor ring in DMA memory. The device reads and writes this memory
//! at any time, so it is touched only through raw pointers with volatile
//! accesses: whole-descriptor stores for the driver's "read" format, and
//! single 64-bit loads of the status quadword for the device's write-back.

use std::marker::PhantomData;
use std::ptr::NonNull;

use bytemuck::Pod;
use fastlane_framework::{DmaRegion, Iova};

use super::desc::STATUS_QWORD_OFFSET;
use crate::{NicError, Result};

/// `count` descriptors of type `T` at `offset` in a region.
pub struct DescRing<T> {
    region: DmaRegion,
    base: NonNull<T>,
    count: u16,
    _kind: PhantomData<T>,
}

// SAFETY: `base` points into `region`, which the ring keeps alive; the ring
// is owned by one queue and used by one thread at a time.
unsafe impl<T: Send> Send for DescRing<T> {}

impl<T: Pod> DescRing<T> {
    /// Descriptors must be 16 bytes (the status quadword at offset 8) and
    /// the ring 128-byte aligned, as RDBAL/TDBAL require.
    pub fn new(region: DmaRegion, offset: usize, count: u16) -> Result<DescRing<T>> {
        let bytes = std::mem::size_of::<T>() * count as usize;
        if std::mem::size_of::<T>() != 16 || !offset.is_multiple_of(128) || offset + bytes > region.len() {
            return Err(NicError::InvalidArgument(format!(
                "{count} descriptors at offset {offset:#x} do not fit a region of {:#x} bytes",
                region.len()
            )));
        }
        // SAFETY: offset + bytes <= region length (checked above).
        let ptr = unsafe { region.as_ptr().add(offset) }.cast::<T>();
        let base = NonNull::new(ptr).ok_or(NicError::Malformed("null DMA region"))?;
        let ring = DescRing {
            region,
            base,
            count,
            _kind: PhantomData,
        };
        ring.clear();
        Ok(ring)
    }

    /// Descriptors in the ring.
    pub fn len(&self) -> u16 {
        self.count
    }

    /// Bus address of descriptor 0 (for RDBAL/RDBAH, TDBAL/TDBAH).
    pub fn iova(&self) -> Iova {
        let offset = self.base.as_ptr() as usize - self.region.as_ptr() as usize;
        self.region.iova_at(offset)
    }

    /// Ring length in bytes (for RDLEN/TDLEN).
    pub fn bytes(&self) -> u32 {
        (self.count as usize * std::mem::size_of::<T>()) as u32
    }

    /// Zeroes every descriptor: no stale DD bit survives a restart.
    pub fn clear(&self) {
        let zero = T::zeroed();
        for i in 0..self.count {
            self.write(i, zero);
        }
    }

    #[inline(always)]
    fn slot(&self, i: u16) -> *mut T {
        assert!(i < self.count, "descriptor {i} of {}", self.count);
        // SAFETY: i < count, inside the ring (see `new`).
        unsafe { self.base.as_ptr().add(i as usize) }
    }

    /// Writes descriptor `i` in one volatile store.
    #[inline(always)]
    pub fn write(&self, i: u16, desc: T) {
        // SAFETY: aligned (16-byte descriptors from a 128-byte aligned base
        // in a page-aligned region) and in bounds. Software owns descriptor
        // `i` until the tail register passes it.
        unsafe { self.slot(i).write_volatile(desc) }
    }

    /// The status quadword (bytes 8..16) of descriptor `i`, in one load so
    /// that the device's status and length are seen together.
    #[inline(always)]
    pub fn status_qword(&self, i: u16) -> u64 {
        // SAFETY: bytes 8..16 of an in-bounds 16-byte descriptor, 8-byte
        // aligned; a plain volatile load of memory the device may write.
        unsafe {
            self.slot(i)
                .cast::<u8>()
                .add(STATUS_QWORD_OFFSET)
                .cast::<u64>()
                .read_volatile()
        }
    }

    /// Keeps the ring's memory mapped for good: for a device that might
    /// still write it.
    pub fn leak(&self) {
        std::mem::forget(self.region.clone());
    }

    /// Reads descriptor `i`.
    #[cfg(test)]
    pub fn read(&self, i: u16) -> T {
        // SAFETY: aligned and in bounds; a copy out, no reference kept.
        unsafe { self.slot(i).read_volatile() }
    }
}

/// The device's side of a ring, played by unit tests: owns the descriptors
/// from its head up to the tail register, reads them and writes back.
#[cfg(test)]
pub struct FakeDevice {
    pub region: fastlane_framework::DmaRegion,
    pub regs: fastlane_framework::Mmio,
    tail_reg: usize,
    head: u16,
    size: u16,
}

#[cfg(test)]
impl FakeDevice {
    /// A device walking a ring of `size` descriptors at offset 0 of
    /// `region`, whose tail register is at `tail_reg`.
    pub fn new(region: DmaRegion, regs: fastlane_framework::Mmio, size: u16, tail_reg: usize) -> FakeDevice {
        FakeDevice { region, regs, tail_reg, head: 0, size }
    }

    /// The next descriptor the device owns, if any.
    pub fn next<D: Pod>(&self) -> Option<D> {
        if u32::from(self.head) == self.regs.read32(self.tail_reg) {
            return None;
        }
        let mut raw = [0u8; 16];
        self.region.read(self.head as usize * 16, &mut raw).unwrap();
        Some(bytemuck::pod_read_unaligned(&raw))
    }

    /// Writes `wb` over that descriptor and moves on.
    pub fn write_back<W: Pod>(&mut self, wb: W) {
        self.region.write(self.head as usize * 16, bytemuck::bytes_of(&wb)).unwrap();
        self.head = (self.head + 1) % self.size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::igb::desc::{RxDescRead, RxDescWb, RxStatus};
    use fastlane_framework::PageSize;

    #[test]
    fn writes_and_status_reads_hit_the_right_bytes() {
        let region = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        let ring = DescRing::<RxDescRead>::new(region.clone(), 128, 16).unwrap();
        assert_eq!(ring.iova(), region.iova_at(128));
        assert_eq!(ring.bytes(), 256);
        ring.write(3, RxDescRead::new(0x1234_5000));
        let mut raw = [0u8; 16];
        region.read(128 + 3 * 16, &mut raw).unwrap();
        assert_eq!(u64::from_le_bytes(raw[..8].try_into().unwrap()), 0x1234_5000);
        let wb = RxDescWb { status_error: 3, length: 99, ..Default::default() };
        region.write(128 + 5 * 16, bytemuck::bytes_of(&wb)).unwrap();
        let s = RxStatus::from_qword(ring.status_qword(5));
        assert_eq!((s.status_error, s.length), (3, 99));
    }

    #[test]
    fn misplaced_rings_are_refused() {
        let region = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        assert!(DescRing::<RxDescRead>::new(region.clone(), 64, 16).is_err(), "unaligned");
        assert!(DescRing::<RxDescRead>::new(region, 4096 - 128, 16).is_err(), "too long");
    }
}
