//! Fuzz bodies for the framework: the IOVA allocator fed with the valid
//! ranges an IOMMU reports (VFIO_IOMMU_GET_INFO's IOVA-range capability) and
//! with region requests, and (behind the `iova-ranges` feature) the parser
//! of that capability chain itself.

use fastlane_framework::iova::{IovaSpace, Range, IOVA_FLOOR};

use crate::Bytes;

fn inside(valid: &[Range], r: &Range) -> bool {
    valid.iter().any(|v| v.start <= r.start && r.end <= v.end)
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.start < b.end && b.start < a.end
}

/// Places and releases regions in an `IovaSpace` built from `valid`, with
/// requests read from `input`, checking every placement.
fn exercise_space(valid: Vec<Range>, input: &mut Bytes<'_>) {
    let mut space = IovaSpace::new(valid.clone());
    let mut placed: Vec<Range> = Vec::new();
    let near = IOVA_FLOOR - (1 << 24);
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        if op.is_multiple_of(5) {
            if !placed.is_empty() {
                let r = placed.swap_remove(usize::from(input.u8()) % placed.len());
                space.release(r.start, r.end - r.start);
            }
            continue;
        }
        // Compact requests near the floor, or raw 64-bit ones.
        let (va, len) = if op & 0x80 == 0 {
            (near + u64::from(input.u16()) * 4096, u64::from(input.u16()) * 512 + 1)
        } else {
            (input.u64(), input.u64() >> (op & 0x3F))
        };
        let align = 1u64 << (input.u8() % 40);
        if len == 0 {
            // Empty regions are accepted and recorded, can sit on top of one
            // another, and one release removes all at that address: outside
            // what this model tracks (and DmaRegion is never empty).
            continue;
        }
        let Some(want) = Range::new(va, len) else {
            // The region's own addresses overflow: no identity, maybe a slot.
            if let Some(iova) = space.place(va, len, align) {
                let r = Range::new(iova, len).expect("placement overflows");
                assert!(inside(&valid, &r) && !placed.iter().any(|u| overlaps(u, &r)));
                assert_eq!(iova % align, 0);
                placed.push(r);
            }
            continue;
        };
        let identity_ok = inside(&valid, &want) && !placed.iter().any(|u| overlaps(u, &want));
        match space.place(va, len, align) {
            Some(iova) => {
                let r = Range::new(iova, len).expect("placement overflows");
                assert!(inside(&valid, &r), "{iova:#x}+{len:#x} outside {valid:x?}");
                assert!(!placed.iter().any(|u| overlaps(u, &r)), "{iova:#x} overlaps");
                assert_eq!(iova == va, identity_ok, "identity iff possible");
                if !identity_ok {
                    assert_eq!(iova % align, 0, "{iova:#x} not {align:#x} aligned");
                    assert!(iova >= IOVA_FLOOR, "{iova:#x} below the floor");
                }
                placed.push(r);
            }
            None => assert!(!identity_ok, "identity was possible"),
        }
    }
}

/// IOMMU-reported valid ranges (as raw `[start, end)` pairs or compact ones
/// around the floor), then region requests.
pub fn iova_space(data: &[u8]) {
    let mut input = Bytes::new(data);
    let mode = input.u8();
    let n = usize::from(mode % 8);
    let valid: Vec<Range> = (0..n)
        .map(|_| {
            if mode & 0x80 == 0 {
                let start = IOVA_FLOOR - (1 << 24) + u64::from(input.u16()) * 4096;
                Range {
                    start,
                    end: start + u64::from(input.u16()) * 4096,
                }
            } else {
                Range {
                    start: input.u64(),
                    end: input.u64(),
                }
            }
        })
        .collect();
    exercise_space(valid, &mut input);
}

/// A `vfio_iommu_type1_info` reply as the kernel writes it: the parser
/// walks its capability chain; whatever ranges it returns are well formed
/// and usable by the allocator.
#[cfg(feature = "iova-ranges")]
pub fn iova_ranges(data: &[u8]) {
    let Some(ranges) = fastlane_framework::vfio::parse_iova_ranges(data) else {
        return;
    };
    for r in &ranges {
        assert!(r.start < r.end || r.end == u64::MAX, "empty range {r:?}");
    }
    assert!(ranges.len() <= data.len() / 16, "more ranges than the reply holds");
    exercise_space(ranges, &mut Bytes::new(&data[..data.len().min(64)]));
}
