//! IOVA space bookkeeping (pure logic): which device addresses are valid in
//! the IOMMU aperture, which are taken, and where a new region goes.
//!
//! A region is placed at IOVA == VA when the aperture allows it; otherwise at
//! the lowest free, page-aligned IOVA, which fixes a constant per-region
//! offset. Either way the choice is made once, when the region is mapped.

/// A half-open `[start, end)` range of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
}

impl Range {
    /// Builds `[start, start + len)`, or `None` if it would overflow.
    pub fn new(start: u64, len: u64) -> Option<Range> {
        start.checked_add(len).map(|end| Range { start, end })
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.start < o.end && o.start < self.end
    }

    fn contains(&self, o: &Range) -> bool {
        self.start <= o.start && o.end <= self.end
    }
}

/// Lowest IOVA handed out when identity mapping is impossible: keeps IOVA 0
/// (and the legacy low memory) unused so a zero in a descriptor is never valid.
pub const IOVA_FLOOR: u64 = 1 << 30;

/// The container-wide IOVA allocator.
#[derive(Debug, Default)]
pub struct IovaSpace {
    /// Valid ranges reported by the IOMMU (VFIO's IOVA-range capability),
    /// inclusive ends converted to half-open.
    valid: Vec<Range>,
    /// Ranges in use, sorted by start.
    used: Vec<Range>,
}

impl IovaSpace {
    /// A space with the given valid ranges.
    pub fn new(mut valid: Vec<Range>) -> Self {
        valid.sort_by_key(|r| r.start);
        IovaSpace {
            valid,
            used: Vec::new(),
        }
    }

    /// The valid ranges.
    pub fn valid(&self) -> &[Range] {
        &self.valid
    }

    fn is_free(&self, r: &Range) -> bool {
        self.valid.iter().any(|v| v.contains(r)) && !self.used.iter().any(|u| u.overlaps(r))
    }

    /// Chooses the IOVA of a region at virtual address `va` of `len` bytes
    /// aligned to `align` (a power of two) and marks it used.
    pub fn place(&mut self, va: u64, len: u64, align: u64) -> Option<u64> {
        // An empty range would sit anywhere and be released by any other.
        if len == 0 {
            return None;
        }
        debug_assert!(align.is_power_of_two(), "alignment {align:#x}");
        let identity = Range::new(va, len).is_some_and(|r| self.is_free(&r));
        let iova = if identity {
            va
        } else {
            self.lowest_free(len, align)?
        };
        let r = Range::new(iova, len)?;
        let at = self.used.partition_point(|u| u.start < iova);
        self.used.insert(at, r);
        Some(iova)
    }

    fn lowest_free(&self, len: u64, align: u64) -> Option<u64> {
        let align = align.max(1);
        for v in &self.valid {
            let mut cand = align_up(v.start.max(IOVA_FLOOR), align)?;
            loop {
                let r = Range::new(cand, len)?;
                if !v.contains(&r) {
                    break;
                }
                match self.used.iter().find(|u| u.overlaps(&r)) {
                    None => return Some(cand),
                    Some(u) => cand = align_up(u.end, align)?,
                }
            }
        }
        None
    }

    /// Returns a range to the free space.
    pub fn release(&mut self, iova: u64, len: u64) {
        self.used.retain(|u| !(u.start == iova && u.end == iova.wrapping_add(len)));
    }
}

fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB2: u64 = 2 << 20;

    fn aw39() -> IovaSpace {
        // What QEMU's intel-iommu with aw-bits=39 reports: all of 39 bits but
        // the MSI window.
        IovaSpace::new(vec![
            Range { start: 0, end: 0xfee0_0000 },
            Range { start: 0xfef0_0000, end: 1 << 39 },
        ])
    }

    #[test]
    fn identity_when_inside_aperture() {
        let mut s = aw39();
        assert_eq!(s.place(0x40_0000_0000, MB2, MB2), Some(0x40_0000_0000));
    }

    #[test]
    fn offset_when_outside_aperture() {
        let mut s = aw39();
        let va = 0x7f57_e1a0_0000;
        let a = s.place(va, 4 * MB2, MB2).unwrap();
        assert_eq!(a, IOVA_FLOOR);
        let b = s.place(va + 4 * MB2, MB2, MB2).unwrap();
        assert_eq!(b, IOVA_FLOOR + 4 * MB2, "next region goes right after");
    }

    #[test]
    fn identity_never_overlaps_a_placed_region() {
        let mut s = aw39();
        let a = s.place(0x7f00_0000_0000, MB2, MB2).unwrap();
        // A region whose VA equals the IOVA just handed out must move.
        let b = s.place(a, MB2, MB2).unwrap();
        assert_ne!(a, b);
        assert!(b >= a + MB2);
    }

    #[test]
    fn msi_window_is_skipped() {
        let mut s = IovaSpace::new(vec![
            Range { start: 0, end: 0xfee0_0000 },
            Range { start: 0xfef0_0000, end: 0x2_0000_0000 },
        ]);
        let big = 0xbee0_0000; // fills [1 GiB, 0xfee0_0000)
        assert_eq!(s.place(u64::MAX - 10, big, MB2), Some(IOVA_FLOOR));
        let next = s.place(u64::MAX - 10, 4 * MB2, MB2).unwrap();
        assert!(next >= 0xfef0_0000, "placed at {next:#x}, inside the MSI window");
        assert_eq!(next % MB2, 0);
    }

    #[test]
    fn exhaustion_and_release() {
        let mut s = IovaSpace::new(vec![Range { start: IOVA_FLOOR, end: IOVA_FLOOR + 2 * MB2 }]);
        let a = s.place(u64::MAX - 1, 2 * MB2, MB2).unwrap();
        assert_eq!(s.place(u64::MAX - 1, MB2, MB2), None);
        s.release(a, 2 * MB2);
        assert_eq!(s.place(u64::MAX - 1, MB2, MB2), Some(IOVA_FLOOR));
    }
}
