//! The device side of in-process device models (feature `sim`): DMA by
//! address into unmapped regions ([`crate::DmaRegion::new_unmapped`], whose
//! IOVA is their address), checked the way an IOMMU checks a real device.
//!
//! A model reads a descriptor or writes a frame through [`SimDma`]; an
//! address outside every live unmapped region, or a range crossing a
//! region's end, is a [`SimFault`] instead of a stray access, so a driver
//! bug that hands a model a wrong address shows up as an error in tests.

use std::mem::size_of;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Weak};

use bytemuck::Pod;

use crate::region::{RegionInner, UNMAPPED};

/// A simulated device touched an address no unmapped region covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("simulated DMA of {len} bytes at {addr:#x} outside every live region")]
pub struct SimFault {
    /// The address the model used.
    pub addr: u64,
    /// Bytes it wanted.
    pub len: usize,
}

/// A model's window onto DMA memory. Keeps the last region it hit (weakly:
/// a region the driver drops is gone for the model too).
#[derive(Default)]
pub struct SimDma {
    last: Weak<RegionInner>,
}

impl SimDma {
    /// A new window.
    pub fn new() -> SimDma {
        SimDma::default()
    }

    /// The region holding `[addr, addr + len)`, alive while the Arc is.
    fn region(&mut self, addr: u64, len: usize) -> Result<(Arc<RegionInner>, usize), SimFault> {
        let fault = SimFault { addr, len };
        let covers = |r: &RegionInner| {
            let off = usize::try_from(addr.checked_sub(r.va())?).ok()?;
            (off.checked_add(len)? <= r.len()).then_some(off)
        };
        if let Some(r) = self.last.upgrade() {
            if let Some(off) = covers(&r) {
                return Ok((r, off));
            }
        }
        let list = UNMAPPED.lock().unwrap_or_else(|p| p.into_inner());
        for w in list.iter() {
            if let Some(r) = w.upgrade() {
                if let Some(off) = covers(&r) {
                    self.last = w.clone();
                    return Ok((r, off));
                }
            }
        }
        Err(fault)
    }

    /// Copies `out.len()` bytes at `addr` into `out`.
    pub fn read(&mut self, addr: u64, out: &mut [u8]) -> Result<(), SimFault> {
        let (r, off) = self.region(addr, out.len())?;
        // SAFETY: [off, off + len) lies inside the live region `r`; a raw
        // copy, no reference to the shared memory.
        unsafe { std::ptr::copy_nonoverlapping(r.ptr().add(off), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies `data` to `addr`.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), SimFault> {
        let (r, off) = self.region(addr, data.len())?;
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), r.ptr().add(off), data.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `addr` to `byte`.
    pub fn fill(&mut self, addr: u64, len: usize, byte: u8) -> Result<(), SimFault> {
        let (r, off) = self.region(addr, len)?;
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_bytes(r.ptr().add(off), byte, len) };
        Ok(())
    }

    /// One `T` at `addr`, copied out (any alignment: a buggy driver may
    /// hand a model any address).
    pub fn read_obj<T: Pod>(&mut self, addr: u64) -> Result<T, SimFault> {
        let (r, off) = self.region(addr, size_of::<T>())?;
        // SAFETY: inside the live region; read_unaligned copes with any
        // address a buggy driver might give.
        Ok(unsafe { r.ptr().add(off).cast::<T>().read_unaligned() })
    }

    /// Stores one `T` at `addr`.
    pub fn write_obj<T: Pod>(&mut self, addr: u64, v: T) -> Result<(), SimFault> {
        let (r, off) = self.region(addr, size_of::<T>())?;
        // SAFETY: as in `read_obj`.
        unsafe { r.ptr().add(off).cast::<T>().write_unaligned(v) };
        Ok(())
    }

    /// A 16-bit index with acquire ordering (a virtqueue's avail index).
    pub fn load_u16_acquire(&mut self, addr: u64) -> Result<u16, SimFault> {
        let (r, off) = self.aligned16(addr)?;
        // SAFETY: inside the live region and 2-byte aligned (checked).
        Ok(unsafe { AtomicU16::from_ptr(r.ptr().add(off).cast()) }.load(Ordering::Acquire))
    }

    /// A 16-bit index with release ordering (a virtqueue's used index).
    pub fn store_u16_release(&mut self, addr: u64, v: u16) -> Result<(), SimFault> {
        let (r, off) = self.aligned16(addr)?;
        // SAFETY: as in `load_u16_acquire`.
        unsafe { AtomicU16::from_ptr(r.ptr().add(off).cast()) }.store(v, Ordering::Release);
        Ok(())
    }

    fn aligned16(&mut self, addr: u64) -> Result<(Arc<RegionInner>, usize), SimFault> {
        if !addr.is_multiple_of(2) {
            return Err(SimFault { addr, len: 2 });
        }
        self.region(addr, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DmaRegion, PageSize};

    #[test]
    fn models_reach_live_regions_and_nothing_else() {
        let r = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        let a = r.carve::<u32>(0, 4).unwrap();
        let mut dma = SimDma::new();
        dma.write_obj(a.iova_of(2).get(), 0x1234_5678u32).unwrap();
        assert_eq!(a.read(2), 0x1234_5678);
        let base = r.as_ptr() as u64;
        assert!(dma.read(base + 4090, &mut [0; 8]).is_err(), "crosses the end");
        // (The bytes just before the region may belong to another test's
        // region: mmap places regions side by side.)
        assert!(dma.write(8, &[1]).is_err(), "null page");
        assert!(dma.read(u64::MAX - 2, &mut [0; 8]).is_err(), "wraps");
        let mut stack = [0u8; 4];
        let foreign = stack.as_mut_ptr() as u64;
        assert!(dma.write(foreign, &[1]).is_err(), "not DMA memory");
        assert_eq!(stack, [0; 4]);
        drop(a);
        drop(r);
        assert!(dma.read(base, &mut [0; 1]).is_err(), "region gone");
    }
}
