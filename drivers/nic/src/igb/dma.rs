//! A descriptor ring in DMA memory: a thin wrapper over the framework's
//! [`DmaArray`], which owns the bytes and makes every access a bounds-checked
//! volatile one: whole-descriptor stores for the driver's "read" format, and
//! single 64-bit loads of the status quadword for the device's write-back.

use bytemuck::Pod;
use fastlane_framework::{DmaArray, DmaRegion, Iova};

use super::desc::STATUS_QWORD_OFFSET;
use crate::{NicError, Result};

/// `count` descriptors of type `T` at `offset` in a region.
pub struct DescRing<T: Pod> {
    descs: DmaArray<T>,
    count: u16,
}

impl<T: Pod> DescRing<T> {
    /// Descriptors must be 16 bytes (the status quadword at offset 8) and
    /// the ring 128-byte aligned, as RDBAL/TDBAL require. The ring owns its
    /// bytes: a range overlapping another ring (or a pool) is refused.
    pub fn new(region: &DmaRegion, offset: usize, count: u16) -> Result<DescRing<T>> {
        if std::mem::size_of::<T>() != 16 || !offset.is_multiple_of(128) {
            return Err(NicError::InvalidArgument(format!(
                "{count} descriptors at offset {offset:#x}: 16-byte descriptors, 128-byte aligned ring"
            )));
        }
        let ring = DescRing {
            descs: region.carve::<T>(offset, count as usize)?,
            count,
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
        self.descs.iova()
    }

    /// Ring length in bytes (for RDLEN/TDLEN).
    pub fn bytes(&self) -> u32 {
        self.descs.byte_len() as u32
    }

    /// Zeroes every descriptor: no stale DD bit survives a restart.
    pub fn clear(&self) {
        self.descs.fill(T::zeroed());
    }

    /// Writes descriptor `i` in one volatile store. Software owns
    /// descriptor `i` until the tail register passes it.
    #[inline(always)]
    pub fn write(&self, i: u16, desc: T) {
        self.descs.write(i as usize, desc)
    }

    /// The status quadword (bytes 8..16) of descriptor `i`, in one load so
    /// that the device's status and length are seen together.
    #[inline(always)]
    pub fn status_qword(&self, i: u16) -> u64 {
        self.descs.read_field::<u64>(i as usize, STATUS_QWORD_OFFSET)
    }

    /// Stores `f(k)` into descriptors `at..at + n` (a part of the ring
    /// between its wrap points), with one bounds check for the run; false
    /// (and nothing written) for a run past the end.
    #[inline(always)]
    pub fn write_run(&self, at: usize, n: usize, f: impl FnMut(usize) -> T) -> bool {
        self.descs.write_run(at, n, f).is_ok()
    }

    /// Stores `f(&src[k])` into descriptors `at + k` (a part of the ring
    /// between its wrap points), one bounds check for the run; false (and
    /// nothing written) for a run past the end.
    #[inline(always)]
    pub fn write_mapped<S>(&self, at: usize, src: &[S], f: impl FnMut(&S) -> T) -> bool {
        self.descs.write_mapped(at, src, f).is_ok()
    }

    /// Calls `f(k, qword)` with the status quadword of descriptors
    /// `at + k`, `k` in `0..n`, until `f` returns false; one bounds check
    /// for the run. Returns how many `f` accepted (0 for a run past the
    /// end, after calling `f` for none).
    #[inline(always)]
    pub fn status_run(&self, at: usize, n: usize, f: impl FnMut(usize, u64) -> bool) -> usize {
        self.descs.read_field_run::<u64>(at, n, STATUS_QWORD_OFFSET, f).unwrap_or(0)
    }

    /// Keeps the ring's memory mapped for good: for a device that might
    /// still write it.
    pub fn leak(&self) {
        std::mem::forget(self.descs.region().clone());
    }

    /// Reads descriptor `i`.
    #[cfg(test)]
    pub fn read(&self, i: u16) -> T {
        self.descs.read(i as usize)
    }
}

/// The device's side of a ring, played by unit tests: owns the descriptors
/// from its head up to the tail register, reads them and writes back,
/// through the framework's simulated DMA.
#[cfg(all(test, feature = "sim"))]
pub struct FakeDevice {
    pub dma: fastlane_framework::sim::SimDma,
    pub regs: fastlane_framework::Mmio,
    base: u64,
    tail_reg: usize,
    head: u16,
    size: u16,
}

#[cfg(all(test, feature = "sim"))]
impl FakeDevice {
    /// A device walking a ring of `size` descriptors at `base` (its bus
    /// address), whose tail register is at `tail_reg`.
    pub fn new(base: Iova, regs: fastlane_framework::Mmio, size: u16, tail_reg: usize) -> FakeDevice {
        FakeDevice {
            dma: fastlane_framework::sim::SimDma::new(),
            regs,
            base: base.get(),
            tail_reg,
            head: 0,
            size,
        }
    }

    fn slot(&self) -> u64 {
        self.base + self.head as u64 * 16
    }

    /// The next descriptor the device owns, if any.
    pub fn next<D: Pod>(&mut self) -> Option<D> {
        if u32::from(self.head) == self.regs.read32(self.tail_reg) {
            return None;
        }
        Some(self.dma.read_obj(self.slot()).expect("descriptor in live memory"))
    }

    /// Writes `wb` over that descriptor and moves on.
    pub fn write_back<W: Pod>(&mut self, wb: W) {
        self.dma.write_obj(self.slot(), wb).expect("descriptor in live memory");
        self.head = (self.head + 1) % self.size;
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::igb::desc::{RxDescRead, RxDescWb, RxStatus};
    use fastlane_framework::sim::SimDma;
    use fastlane_framework::PageSize;

    #[test]
    fn writes_and_status_reads_hit_the_right_bytes() {
        let region = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        let ring = DescRing::<RxDescRead>::new(&region, 128, 16).unwrap();
        assert_eq!(ring.iova(), region.iova_at(128));
        assert_eq!(ring.bytes(), 256);
        ring.write(3, RxDescRead::new(0x1234_5000));
        let mut dma = SimDma::new();
        let at = |i: u64| region.iova_at(128).get() + i * 16;
        assert_eq!(dma.read_obj::<u64>(at(3)).unwrap(), 0x1234_5000);
        let wb = RxDescWb { status_error: 3, length: 99, ..Default::default() };
        dma.write_obj(at(5), wb).unwrap();
        let s = RxStatus::from_qword(ring.status_qword(5));
        assert_eq!((s.status_error, s.length), (3, 99));
    }

    #[test]
    fn misplaced_rings_are_refused() {
        let region = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        assert!(DescRing::<RxDescRead>::new(&region, 64, 16).is_err(), "unaligned");
        assert!(DescRing::<RxDescRead>::new(&region, 4096 - 128, 16).is_err(), "too long");
        let _a = DescRing::<RxDescRead>::new(&region, 0, 16).unwrap();
        assert!(DescRing::<RxDescRead>::new(&region, 128, 16).is_err(), "overlaps another ring");
    }
}
