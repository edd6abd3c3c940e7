//! A block of device registers (a mapped BAR), read and written with
//! volatile accesses. The only way the framework touches device registers.

use std::ptr::NonNull;
use std::sync::Arc;

/// A mapped register block. Cloning shares the mapping.
#[derive(Clone)]
pub struct Mmio {
    ptr: NonNull<u8>,
    len: usize,
    _owner: Arc<dyn Send + Sync>,
}

// SAFETY: every access is a volatile load/store of an aligned integer inside
// the mapping, which `_owner` keeps alive; registers tolerate concurrent use
// as far as the device defines it.
unsafe impl Send for Mmio {}
// SAFETY: as above.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Wraps `len` bytes at `ptr`, kept alive by `owner`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be mapped, readable and writable, and stay so as
    /// long as `owner` lives; it must be 8-byte aligned.
    pub(crate) unsafe fn new(ptr: NonNull<u8>, len: usize, owner: Arc<dyn Send + Sync>) -> Mmio {
        Mmio {
            ptr,
            len,
            _owner: owner,
        }
    }

    /// A register block in ordinary memory, for in-process device models:
    /// the model reads what the driver writes, and the other way round.
    pub fn simulated(len: usize) -> Mmio {
        let words = len.div_ceil(8);
        let mem: Arc<SimMem> = Arc::new(SimMem(
            (0..words).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
        ));
        let ptr = NonNull::new(mem.0.as_ptr() as *mut u8).unwrap_or(NonNull::dangling());
        Mmio {
            ptr,
            len: words * 8,
            _owner: mem,
        }
    }

    /// Size of the block in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-sized block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    fn at<T>(&self, off: usize) -> *mut T {
        // Offsets come from the driver's register constants (and doorbell
        // strides it validated against the BAR size), so a bad one is a
        // driver bug, which must not turn into a stray access.
        let size = std::mem::size_of::<T>();
        assert!(
            off.is_multiple_of(size) && off.checked_add(size).is_some_and(|end| end <= self.len),
            "register offset {off:#x} outside a {:#x}-byte block",
            self.len
        );
        // SAFETY: in bounds per the assertion.
        unsafe { self.ptr.as_ptr().add(off).cast() }
    }

    /// 32-bit register read.
    #[inline(always)]
    pub fn read32(&self, off: usize) -> u32 {
        // SAFETY: aligned and in bounds (see `at`); mapping alive via owner.
        unsafe { self.at::<u32>(off).read_volatile() }
    }

    /// 32-bit register write.
    #[inline(always)]
    pub fn write32(&self, off: usize, v: u32) {
        // SAFETY: aligned and in bounds (see `at`); mapping alive via owner.
        unsafe { self.at::<u32>(off).write_volatile(v) }
    }

    /// 8-bit register read (virtio's device status and config generation).
    #[inline(always)]
    pub fn read8(&self, off: usize) -> u8 {
        // SAFETY: in bounds (see `at`); mapping alive via owner.
        unsafe { self.at::<u8>(off).read_volatile() }
    }

    /// 8-bit register write.
    #[inline(always)]
    pub fn write8(&self, off: usize, v: u8) {
        // SAFETY: in bounds (see `at`); mapping alive via owner.
        unsafe { self.at::<u8>(off).write_volatile(v) }
    }

    /// 16-bit register read (virtio's queue registers: the spec requires
    /// accesses of each field's own width).
    #[inline(always)]
    pub fn read16(&self, off: usize) -> u16 {
        // SAFETY: aligned and in bounds (see `at`); mapping alive via owner.
        unsafe { self.at::<u16>(off).read_volatile() }
    }

    /// 16-bit register write.
    #[inline(always)]
    pub fn write16(&self, off: usize, v: u16) {
        // SAFETY: aligned and in bounds (see `at`); mapping alive via owner.
        unsafe { self.at::<u16>(off).write_volatile(v) }
    }

    /// 64-bit register read (one access; NVMe and igb allow it).
    #[inline(always)]
    pub fn read64(&self, off: usize) -> u64 {
        // SAFETY: aligned and in bounds (see `at`); mapping alive via owner.
        unsafe { self.at::<u64>(off).read_volatile() }
    }

    /// 64-bit register write.
    #[inline(always)]
    pub fn write64(&self, off: usize, v: u64) {
        // SAFETY: aligned and in bounds (see `at`); mapping alive via owner.
        unsafe { self.at::<u64>(off).write_volatile(v) }
    }
}

/// One 32-bit register of a block, its offset checked once when made
/// ([`Mmio::reg32`]), so a doorbell write on the data path is a single
/// volatile store. Keeps the mapping alive.
#[derive(Clone)]
pub struct Reg32 {
    ptr: NonNull<u32>,
    _block: Mmio,
}

// SAFETY: as for Mmio: a volatile store to an aligned register inside a
// mapping the held block keeps alive.
unsafe impl Send for Reg32 {}
// SAFETY: as above.
unsafe impl Sync for Reg32 {}

impl Reg32 {
    /// Writes the register.
    #[inline(always)]
    pub fn write(&self, v: u32) {
        // SAFETY: aligned and in bounds (checked in Mmio::reg32); the
        // mapping lives as long as `_block`.
        unsafe { self.ptr.as_ptr().write_volatile(v) }
    }

    /// Reads the register.
    #[inline(always)]
    pub fn read(&self) -> u32 {
        // SAFETY: as in `write`.
        unsafe { self.ptr.as_ptr().read_volatile() }
    }
}

impl Mmio {
    /// The 32-bit register at `off`, checked now (aligned, inside the
    /// block, without overflow) instead of at every access.
    pub fn reg32(&self, off: usize) -> Option<Reg32> {
        let ok = off.is_multiple_of(4) && off.checked_add(4).is_some_and(|end| end <= self.len);
        ok.then(|| Reg32 {
            // The assertion in `at` holds (checked just above).
            ptr: NonNull::new(self.at::<u32>(off)).unwrap_or(NonNull::dangling()),
            _block: self.clone(),
        })
    }
}

struct SimMem(Box<[std::sync::atomic::AtomicU64]>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_block_round_trips() {
        let m = Mmio::simulated(0x1010);
        m.write32(0x14, 0xdead_beef);
        m.write64(0x1008, 7);
        assert_eq!(m.read32(0x14), 0xdead_beef);
        assert_eq!(m.read64(0x1008), 7);
        assert_eq!(m.read32(0x10), 0);
    }

    #[test]
    fn registers_are_checked_once_when_made() {
        let m = Mmio::simulated(16);
        let r = m.reg32(12).unwrap();
        r.write(0xfeed);
        assert_eq!((m.read32(12), r.read()), (0xfeed, 0xfeed));
        for bad in [16, 14, usize::MAX - 3, usize::MAX] {
            assert!(m.reg32(bad).is_none(), "offset {bad:#x}");
        }
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_is_caught() {
        Mmio::simulated(16).read32(16);
    }

    /// `off + 8` wraps for this offset: the check must not (it once read
    /// the allocator's header in release builds).
    #[test]
    #[should_panic(expected = "outside")]
    fn offsets_that_wrap_are_caught_on_read() {
        Mmio::simulated(16).read64(usize::MAX - 7);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn offsets_that_wrap_are_caught_on_write() {
        Mmio::simulated(16).write64(usize::MAX - 7, 0);
    }

    #[test]
    fn every_wrapping_offset_of_every_width_panics() {
        for off in [usize::MAX, usize::MAX - 1, usize::MAX - 3, usize::MAX - 7, usize::MAX - 15] {
            let m = std::panic::AssertUnwindSafe(Mmio::simulated(16));
            for r in [
                std::panic::catch_unwind(|| m.read8(off) as u64),
                std::panic::catch_unwind(|| m.read16(off & !1) as u64),
                std::panic::catch_unwind(|| m.read32(off & !3) as u64),
                std::panic::catch_unwind(|| m.read64(off & !7)),
            ] {
                assert!(r.is_err(), "offset {off:#x} accepted");
            }
        }
    }
}
