//! Typed arrays in DMA memory: descriptor rings, queue entries, PRP lists,
//! doorbell shadows. The one place drivers touch memory a device shares.
//!
//! A [`DmaArray`] is carved out of a [`DmaRegion`] and owns its bytes: two
//! arrays never overlap (the region keeps a list of claimed ranges), a pool's
//! buffers are claimed by the pool, and the array is `Send` but not `Sync`,
//! so one queue on one thread at a time writes it. Every access is a
//! bounds-checked volatile load or store of a whole `Pod` value, or of one
//! `Pod` field inside an element: the device may change the memory at any
//! time, so no Rust reference to it is ever made.

use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;

use bytemuck::Pod;

use crate::addr::{DmaDomain, Iova};
use crate::error::{Error, Result};
use crate::region::DmaRegion;

/// The byte ranges of a region that are claimed, sorted by start.
#[derive(Default)]
pub(crate) struct Claims(Mutex<Vec<(usize, usize)>>);

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(usize, usize)>> {
        // The list is consistent whenever the lock is released.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `[start, end)`, or says which claim it overlaps.
    fn claim(&self, start: usize, end: usize) -> std::result::Result<(), (usize, usize)> {
        let mut list = self.lock();
        let at = list.partition_point(|&(s, _)| s < start);
        if let Some(&prev) = at.checked_sub(1).and_then(|i| list.get(i)) {
            if prev.1 > start {
                return Err(prev);
            }
        }
        if let Some(&next) = list.get(at) {
            if next.0 < end {
                return Err(next);
            }
        }
        list.insert(at, (start, end));
        Ok(())
    }

    fn release(&self, start: usize, end: usize) {
        self.lock().retain(|&r| r != (start, end));
    }
}

/// Exclusive ownership of a byte range of a region; released on drop.
/// Keeps the region (and so its IOMMU mapping) alive.
pub struct Claim {
    region: DmaRegion,
    start: usize,
    end: usize,
}

impl Claim {
    pub(crate) fn new(region: &DmaRegion, start: usize, len: usize) -> Result<Claim> {
        let end = start
            .checked_add(len)
            .filter(|&e| e <= region.len() && len > 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{len} bytes at offset {start:#x} outside a region of {:#x} bytes",
                    region.len()
                ))
            })?;
        region.inner.claims.claim(start, end).map_err(|(s, e)| {
            Error::InvalidArgument(format!(
                "bytes {start:#x}..{end:#x} of the region overlap {s:#x}..{e:#x}, already owned"
            ))
        })?;
        Ok(Claim {
            region: region.clone(),
            start,
            end,
        })
    }

    /// The region the range belongs to.
    pub fn region(&self) -> &DmaRegion {
        &self.region
    }

    /// First byte of the range.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        // start < region length (checked in `new`), so this stays inside the
        // mapping and is not null.
        let p = self.region.as_ptr().wrapping_add(self.start);
        NonNull::new(p).unwrap_or(NonNull::dangling())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.region.inner.claims.release(self.start, self.end);
    }
}

/// `len` values of `T` in DMA memory, owned by one queue.
pub struct DmaArray<T: Pod> {
    claim: Claim,
    base: NonNull<T>,
    len: usize,
    /// Not `Sync`: one thread at a time stores into the array.
    _owned: PhantomData<*mut T>,
}

// SAFETY: the array owns its bytes (no other DmaArray, buffer or pool
// overlaps them, see Claims) and `claim` keeps the region's memory alive;
// moving the whole array to another thread moves that ownership with it.
unsafe impl<T: Pod + Send> Send for DmaArray<T> {}

impl DmaRegion {
    /// Carves `len` values of `T` at byte `offset` out of the region, for
    /// this array alone. Fails when the range is out of bounds, misaligned
    /// for `T`, or overlaps a range already carved (or a pool's buffers).
    pub fn carve<T: Pod>(&self, offset: usize, len: usize) -> Result<DmaArray<T>> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| Error::InvalidArgument(format!("{len} elements")))?;
        if size_of::<T>() == 0 || !offset.is_multiple_of(align_of::<T>()) {
            return Err(Error::InvalidArgument(format!(
                "offset {offset:#x} is not aligned for {}-byte elements",
                align_of::<T>()
            )));
        }
        let claim = Claim::new(self, offset, bytes)?;
        let base = claim.ptr().cast::<T>();
        Ok(DmaArray {
            claim,
            base,
            len,
            _owned: PhantomData,
        })
    }
}

impl<T: Pod> DmaArray<T> {
    /// Elements in the array.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it has no elements (carving refuses that, so never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes.
    pub fn byte_len(&self) -> usize {
        self.len * size_of::<T>()
    }

    /// Device address of element 0.
    #[inline(always)]
    pub fn iova(&self) -> Iova {
        self.claim.region.iova_at(self.claim.start)
    }

    /// Device address of element `i` (`i == len` gives the end).
    #[inline(always)]
    pub fn iova_of(&self, i: usize) -> Iova {
        assert!(i <= self.len, "element {i} of {}", self.len);
        self.iova().add((i * size_of::<T>()) as u64)
    }

    /// The IOMMU domain the array is mapped in.
    pub fn domain(&self) -> DmaDomain {
        self.claim.region.domain()
    }

    /// The region it was carved from.
    pub fn region(&self) -> &DmaRegion {
        &self.claim.region
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> *mut T {
        assert!(i < self.len, "element {i} of {}", self.len);
        // SAFETY: i < len, and len elements fit the claimed range.
        unsafe { self.base.as_ptr().add(i) }
    }

    /// Element `i`, in one volatile load.
    #[inline(always)]
    pub fn read(&self, i: usize) -> T {
        // SAFETY: in bounds and aligned (checked in carve and slot); the
        // memory is alive (claim) and never referenced, only copied.
        unsafe { self.slot(i).read_volatile() }
    }

    /// Stores element `i` in one volatile store.
    #[inline(always)]
    pub fn write(&self, i: usize, v: T) {
        // SAFETY: as in `read`; the array is !Sync, so no other thread
        // stores into it concurrently.
        unsafe { self.slot(i).write_volatile(v) }
    }

    #[inline(always)]
    fn field<U: Pod>(&self, i: usize, byte: usize) -> *mut U {
        assert!(
            byte.is_multiple_of(align_of::<U>())
                && byte.checked_add(size_of::<U>()).is_some_and(|e| e <= size_of::<T>())
                && align_of::<U>() <= align_of::<T>(),
            "field at byte {byte} of a {}-byte element",
            size_of::<T>()
        );
        // SAFETY: the field lies inside element i (asserted above), and its
        // alignment follows from the element's.
        unsafe { self.slot(i).cast::<u8>().add(byte).cast::<U>() }
    }

    /// The `U` at byte `byte` of element `i`, in one volatile load (a
    /// status word the device writes last, for example).
    #[inline(always)]
    pub fn read_field<U: Pod>(&self, i: usize, byte: usize) -> U {
        // SAFETY: in bounds and aligned (see `field`).
        unsafe { self.field::<U>(i, byte).read_volatile() }
    }

    /// Stores the `U` at byte `byte` of element `i`.
    #[inline(always)]
    pub fn write_field<U: Pod>(&self, i: usize, byte: usize, v: U) {
        // SAFETY: in bounds and aligned (see `field`); !Sync as in `write`.
        unsafe { self.field::<U>(i, byte).write_volatile(v) }
    }

    /// Sets every element to `v`.
    pub fn fill(&self, v: T) {
        for i in 0..self.len {
            self.write(i, v);
        }
    }

    /// Copies `src` into elements `at..at + src.len()`.
    pub fn copy_from(&self, at: usize, src: &[T]) -> Result<()> {
        self.write_run(at, src.len(), |k| src[k])
    }

    /// Stores `f(k)` into element `at + k` for `k` in `0..n`, with one
    /// bounds check for the whole run (a burst of descriptors between the
    /// ring's wrap points). Each store is one volatile store, in order.
    #[inline]
    pub fn write_run(&self, at: usize, n: usize, mut f: impl FnMut(usize) -> T) -> Result<()> {
        self.check(at, n)?;
        // SAFETY: at + n <= len (checked above), so every `at + k` with
        // k < n is in bounds; see `read` for liveness and aliasing.
        let base = unsafe { self.base.as_ptr().add(at) };
        for k in 0..n {
            // SAFETY: k < n, inside the checked run.
            unsafe { base.add(k).write_volatile(f(k)) };
        }
        Ok(())
    }

    /// Stores `f(&src[k])` into element `at + k` for every `k` of `src`:
    /// [`DmaArray::write_run`] over a slice without an index check per
    /// element (a burst of descriptors built from its packets).
    #[inline]
    pub fn write_mapped<S>(&self, at: usize, src: &[S], mut f: impl FnMut(&S) -> T) -> Result<()> {
        self.check(at, src.len())?;
        // SAFETY: at + src.len() <= len (checked above), so every `at + k`
        // with k < src.len() is in bounds; see `read` for liveness and
        // aliasing.
        let base = unsafe { self.base.as_ptr().add(at) };
        for (k, s) in src.iter().enumerate() {
            // SAFETY: k < src.len(), inside the checked run.
            unsafe { base.add(k).write_volatile(f(s)) };
        }
        Ok(())
    }

    /// Calls `f(k, field)` with the `U` at byte `byte` of element `at + k`
    /// for `k` in `0..n`, in order, until `f` returns false; one bounds
    /// check for the run. Returns how many fields `f` accepted. For a
    /// burst of status words the device writes back.
    #[inline]
    pub fn read_field_run<U: Pod>(
        &self,
        at: usize,
        n: usize,
        byte: usize,
        mut f: impl FnMut(usize, U) -> bool,
    ) -> Result<usize> {
        self.check(at, n)?;
        if n == 0 {
            return Ok(0);
        }
        // Checks the field's place inside one element (any element will do).
        let first = self.field::<U>(at, byte);
        let stride = size_of::<T>();
        for k in 0..n {
            // SAFETY: element at + k is in bounds (checked run) and the
            // field lies at the same offset inside it as in element `at`
            // (checked by `field`), so this stays inside the array.
            let v = unsafe { first.cast::<u8>().add(k * stride).cast::<U>().read_volatile() };
            if !f(k, v) {
                return Ok(k);
            }
        }
        Ok(n)
    }

    /// Copies elements `at..at + dst.len()` out into `dst`.
    pub fn copy_to(&self, at: usize, dst: &mut [T]) -> Result<()> {
        self.check(at, dst.len())?;
        for (k, v) in dst.iter_mut().enumerate() {
            *v = self.read(at + k);
        }
        Ok(())
    }

    fn check(&self, at: usize, n: usize) -> Result<()> {
        match at.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "elements {at}..+{n} outside an array of {}",
                self.len
            ))),
        }
    }

    /// Keeps the array's memory mapped and owned for the rest of the
    /// process: for a device that may still write it (a queue whose device
    /// could not be stopped).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl DmaArray<u16> {
    /// Element `i` with acquire ordering: what the device published before
    /// storing it (a virtqueue's used index) is visible after.
    #[inline(always)]
    pub fn load_acquire(&self, i: usize) -> u16 {
        // SAFETY: in bounds and 2-byte aligned (slot); AtomicU16 has the
        // layout of u16 and the memory lives as long as the claim.
        unsafe { AtomicU16::from_ptr(self.slot(i)) }.load(Ordering::Acquire)
    }

    /// Stores element `i` with release ordering: everything written before
    /// (descriptors) is visible to whoever sees the new value.
    #[inline(always)]
    pub fn store_release(&self, i: usize, v: u16) {
        // SAFETY: as in `load_acquire`.
        unsafe { AtomicU16::from_ptr(self.slot(i)) }.store(v, Ordering::Release)
    }
}

impl<T: Pod> std::fmt::Debug for DmaArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DmaArray({} x {} bytes at {})", self.len, size_of::<T>(), self.iova())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hugepage::PageSize;

    fn region() -> DmaRegion {
        DmaRegion::new_unmapped(8192, PageSize::Small).unwrap()
    }

    #[test]
    fn arrays_round_trip_and_know_their_iova() {
        let r = region();
        let a = r.carve::<u64>(64, 4).unwrap();
        a.write(3, 0xdead_beef);
        assert_eq!(a.read(3), 0xdead_beef);
        assert_eq!(a.iova_of(1).get(), r.iova_at(72).get());
        a.write_field::<u32>(2, 4, 7);
        assert_eq!(a.read(2), 7 << 32);
        assert_eq!(a.read_field::<u32>(2, 4), 7);
    }

    #[test]
    fn overlapping_carves_are_refused_and_released_on_drop() {
        let r = region();
        let a = r.carve::<u32>(0, 16).unwrap();
        assert!(r.carve::<u8>(63, 1).is_err(), "overlaps the end");
        assert!(r.carve::<u8>(0, 1).is_err(), "overlaps the start");
        let b = r.carve::<u8>(64, 64).unwrap();
        assert!(r.carve::<u8>(100, 200).is_err(), "inside another");
        assert!(r.carve::<u8>(32, 64).is_err(), "straddles two");
        drop(a);
        let c = r.carve::<u8>(0, 64).unwrap();
        drop((b, c));
        r.carve::<u8>(0, 8192).unwrap();
    }

    #[test]
    fn bad_geometry_is_refused() {
        let r = region();
        assert!(r.carve::<u64>(4, 1).is_err(), "misaligned");
        assert!(r.carve::<u8>(8192, 1).is_err(), "past the end");
        assert!(r.carve::<u8>(usize::MAX, 2).is_err(), "offset overflow");
        assert!(r.carve::<u64>(0, usize::MAX / 4).is_err(), "length overflow");
        assert!(r.carve::<u8>(0, 0).is_err(), "empty");
    }

    #[test]
    #[should_panic(expected = "element 4 of 4")]
    fn index_past_the_end_panics_instead_of_touching_memory() {
        region().carve::<u32>(0, 4).unwrap().read(4);
    }

    #[test]
    #[should_panic(expected = "field at byte")]
    fn field_past_the_element_panics() {
        region().carve::<u32>(0, 4).unwrap().read_field::<u32>(0, 2);
    }

    #[test]
    fn runs_are_checked_once_and_stop_where_told() {
        let r = region();
        let a = r.carve::<u64>(0, 8).unwrap();
        a.write_run(2, 4, |k| (k as u64 + 1) << 32).unwrap();
        assert_eq!((a.read(1), a.read(2), a.read(5), a.read(6)), (0, 1 << 32, 4 << 32, 0));
        assert!(a.write_run(5, 4, |_| 9).is_err(), "run past the end");
        assert_eq!(a.read(7), 0, "a refused run writes nothing");
        assert!(a.write_run(usize::MAX, 2, |_| 9).is_err(), "overflow");
        let mut seen = Vec::new();
        let took = a.read_field_run::<u32>(2, 4, 4, |k, v| {
            seen.push(v);
            k < 2
        });
        assert_eq!(took.unwrap(), 2);
        assert_eq!(seen, [1, 2, 3]);
        assert!(a.read_field_run::<u32>(6, 3, 4, |_, _| true).is_err());
    }

    #[test]
    #[should_panic(expected = "field at byte")]
    fn a_run_of_fields_outside_the_element_panics() {
        let _ = region().carve::<u32>(0, 4).unwrap().read_field_run::<u32>(0, 2, 2, |_, _| true);
    }

    #[test]
    fn acquire_release_u16() {
        let r = region();
        let a = r.carve::<u16>(0, 4).unwrap();
        a.store_release(1, 9);
        assert_eq!(a.load_acquire(1), 9);
    }
}
