//! Physical Region Page entries and lists (NVMe base spec 4.1.1, "Physical
//! Region Page Entry and List"): how a command's data buffer is described to
//! the controller by IOVA.
//!
//! PRP1 points at the first byte of the buffer and may carry an in-page
//! offset (dword aligned). If the buffer ends inside the first memory page,
//! PRP2 is 0; if it ends in the second page, PRP2 is that page's address;
//! otherwise PRP2 points at a PRP list whose entries are the page-aligned
//! addresses of the second and every further page.
//!
//! This module fills at most one list page and never chains lists. With
//! memory page size `P` and a list of `P / 8` entries the largest transfer is
//! `P - offset + (P / 8) * P` bytes: for 4 KiB pages and a page-aligned
//! buffer, 513 pages = 2 MiB + 4 KiB (MDTS usually limits transfers further).

use thiserror::Error;

/// Smallest memory page size (CC.MPS = 0).
pub const MIN_PAGE_SIZE: usize = 4096;
/// Largest memory page size (CC.MPS = 15).
pub const MAX_PAGE_SIZE: usize = 1 << 27;

/// Why a buffer cannot be described with one PRP list page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PrpError {
    /// Transfers carry at least one byte.
    #[error("zero-length data buffer")]
    ZeroLength,
    /// PRP1's offset must be dword aligned.
    #[error("data buffer IOVA {iova:#x} is not dword aligned")]
    Misaligned {
        /// The buffer's IOVA.
        iova: u64,
    },
    /// A PRP list pointer must be qword aligned.
    #[error("PRP list IOVA {iova:#x} is not qword aligned")]
    ListMisaligned {
        /// The list's IOVA.
        iova: u64,
    },
    /// Page size must be a power of two in 4 KiB..=128 MiB.
    #[error("memory page size {page_size} is invalid")]
    InvalidPageSize {
        /// The page size given.
        page_size: usize,
    },
    /// The buffer's last byte lies beyond the 64-bit IOVA space.
    #[error("data buffer at {iova:#x} of {len} bytes wraps the IOVA space")]
    AddressOverflow {
        /// The buffer's IOVA.
        iova: u64,
        /// Its length.
        len: usize,
    },
    /// The buffer needs more pages than PRP1 plus one list page describe;
    /// `max` is the largest length at this buffer's page offset.
    #[error("data buffer of {len} bytes needs a chained PRP list (max {max} bytes)")]
    TooLarge {
        /// The buffer's length.
        len: usize,
        /// The largest length possible here.
        max: usize,
    },
}

/// A preallocated PRP list page: its IOVA and the CPU view of its entries.
/// Usable entries are those from `iova` to the end of its memory page, and
/// no more than `entries.len()`.
#[derive(Debug)]
pub struct PrpList<'a> {
    /// Bus address of the list page.
    pub iova: u64,
    /// Its entries, as the CPU writes them.
    pub entries: &'a mut [u64],
}

impl PrpList<'_> {
    /// No list page: only buffers spanning at most two pages can be built.
    pub fn none() -> PrpList<'static> {
        PrpList {
            iova: 0,
            entries: &mut [],
        }
    }

    /// Entries this list can hold with memory page size `page_size`.
    pub fn capacity(&self, page_size: usize) -> usize {
        let in_page = page_size - (self.iova % page_size as u64) as usize;
        self.entries.len().min(in_page / 8)
    }
}

/// The data pointer fields of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prps {
    /// PRP Entry 1: the first data page.
    pub prp1: u64,
    /// PRP Entry 2: the second page, or the list pointer.
    pub prp2: u64,
    /// List entries written (0 when PRP2 is not a list pointer).
    pub list_len: usize,
}

/// Largest transfer, in bytes, a buffer starting at in-page offset
/// `offset` can have with `list_capacity` list entries.
pub const fn max_transfer(page_size: usize, offset: usize, list_capacity: usize) -> usize {
    let pages_after_first = if list_capacity > 1 { list_capacity } else { 1 };
    (page_size - offset % page_size) + pages_after_first * page_size
}

/// Describe `len` bytes at IOVA `data` with memory page size `page_size`
/// (CC.MPS), writing list entries into `list` when more than two pages are
/// spanned. On error nothing meaningful has been written.
pub fn build(data: u64, len: usize, page_size: usize, list: PrpList<'_>) -> Result<Prps, PrpError> {
    let PrpList { iova, entries } = list;
    build_into(data, len, page_size, iova, entries.len(), |i, v| {
        entries[i] = v
    })
}

/// [`build`] for a list page the caller writes itself (DMA memory reached
/// through an accessor, not a slice): the list page is at `list_iova` and
/// holds at most `list_entries` entries; `put(i, address)` stores entry `i`
/// (only for `i < list_entries`, in order).
pub fn build_into(
    data: u64,
    len: usize,
    page_size: usize,
    list_iova: u64,
    list_entries: usize,
    put: impl FnMut(usize, u64),
) -> Result<Prps, PrpError> {
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(PrpError::InvalidPageSize { page_size });
    }
    build_valid(data, len, page_size, list_iova, list_entries, put)
}

/// [`build_into`] for 4 KiB memory pages and a list page of 512 entries at
/// `list_iova` (the I/O path's case: the page size is a constant, nothing
/// to validate per command).
#[inline(always)]
pub fn build_4k(
    data: u64,
    len: usize,
    list_iova: u64,
    put: impl FnMut(usize, u64),
) -> Result<Prps, PrpError> {
    build_valid(data, len, MIN_PAGE_SIZE, list_iova, MIN_PAGE_SIZE / 8, put)
}

/// [`build_into`] once `page_size` is known to be valid.
#[inline(always)]
fn build_valid(
    data: u64,
    len: usize,
    page_size: usize,
    list_iova: u64,
    list_entries: usize,
    mut put: impl FnMut(usize, u64),
) -> Result<Prps, PrpError> {
    if len == 0 {
        return Err(PrpError::ZeroLength);
    }
    if data & 0x3 != 0 {
        return Err(PrpError::Misaligned { iova: data });
    }
    let ps = page_size as u64;
    data.checked_add(len as u64 - 1)
        .ok_or(PrpError::AddressOverflow { iova: data, len })?;

    let offset = data % ps;
    let first_len = (ps - offset) as usize;
    if len <= first_len {
        return Ok(Prps {
            prp1: data,
            prp2: 0,
            list_len: 0,
        });
    }
    // Pages after the first one; cannot overflow since data + len fits.
    let pages = (len - first_len).div_ceil(page_size);
    let second_page = data - offset + ps;
    if pages == 1 {
        return Ok(Prps {
            prp1: data,
            prp2: second_page,
            list_len: 0,
        });
    }

    let in_page = page_size - (list_iova % ps) as usize;
    let capacity = list_entries.min(in_page / 8);
    if pages > capacity {
        return Err(PrpError::TooLarge {
            len,
            max: max_transfer(page_size, offset as usize, capacity),
        });
    }
    if list_iova & 0x7 != 0 {
        return Err(PrpError::ListMisaligned { iova: list_iova });
    }
    for i in 0..pages {
        put(i, second_page + i as u64 * ps);
    }
    Ok(Prps {
        prp1: data,
        prp2: list_iova,
        list_len: pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: usize = 4096;
    const LIST_IOVA: u64 = 0x9_0000;

    fn run(data: u64, len: usize, list: &mut [u64]) -> Result<Prps, PrpError> {
        build(
            data,
            len,
            PS,
            PrpList {
                iova: LIST_IOVA,
                entries: list,
            },
        )
    }

    #[test]
    fn one_block_and_one_page() {
        let mut list = [0u64; 512];
        assert_eq!(
            run(0x10_0000, 512, &mut list),
            Ok(Prps {
                prp1: 0x10_0000,
                prp2: 0,
                list_len: 0
            })
        );
        assert_eq!(
            run(0x10_0000, PS, &mut list),
            Ok(Prps {
                prp1: 0x10_0000,
                prp2: 0,
                list_len: 0
            })
        );
        // Offset buffer ending exactly at the page end.
        assert_eq!(run(0x10_0E00, 512, &mut list).unwrap().prp2, 0);
        assert!(list.iter().all(|&e| e == 0));
    }

    #[test]
    fn two_pages_use_prp2_directly() {
        let mut list = [0u64; 512];
        let page_plus_one = run(0x10_0000, PS + 1, &mut list).unwrap();
        assert_eq!(
            page_plus_one,
            Prps {
                prp1: 0x10_0000,
                prp2: 0x10_1000,
                list_len: 0
            }
        );
        assert_eq!(run(0x10_0000, 2 * PS, &mut list), Ok(page_plus_one));
        // Offset crossing into the next page.
        assert_eq!(
            run(0x10_0F00, 512, &mut list),
            Ok(Prps {
                prp1: 0x10_0F00,
                prp2: 0x10_1000,
                list_len: 0
            })
        );
        // Works without any list page.
        assert_eq!(
            build(0x10_0000, 2 * PS, PS, PrpList::none()),
            Ok(page_plus_one)
        );
        assert!(list.iter().all(|&e| e == 0));
    }

    #[test]
    fn offset_first_page_spanning_three_pages() {
        let mut list = [0u64; 512];
        // 0x10_0800 + 2 pages ends at 0x10_2800: pages 0x10_0000, 0x10_1000, 0x10_2000.
        let p = run(0x10_0800, 2 * PS, &mut list).unwrap();
        assert_eq!(
            p,
            Prps {
                prp1: 0x10_0800,
                prp2: LIST_IOVA,
                list_len: 2
            }
        );
        assert_eq!(&list[..2], &[0x10_1000, 0x10_2000]);
        assert_eq!(list[2], 0);

        let p = run(0x10_0000, 3 * PS, &mut list).unwrap();
        assert_eq!(p.list_len, 2);
        let p = run(0x10_0000, 3 * PS + 4, &mut list).unwrap();
        assert_eq!(p.list_len, 3);
        assert_eq!(&list[..3], &[0x10_1000, 0x10_2000, 0x10_3000]);
    }

    #[test]
    fn max_size_and_one_more() {
        let mut list = [0u64; 512];
        let max = max_transfer(PS, 0, 512);
        assert_eq!(max, 2 * 1024 * 1024 + 4096);
        let p = run(0x100_0000, max, &mut list).unwrap();
        assert_eq!(p.list_len, 512);
        assert_eq!(list[0], 0x100_1000);
        assert_eq!(list[511], 0x100_0000 + 512 * 0x1000);
        assert_eq!(
            run(0x100_0000, max + 1, &mut list),
            Err(PrpError::TooLarge { len: max + 1, max })
        );

        // An in-page offset shrinks the maximum by that offset.
        let max_off = max_transfer(PS, 0x200, 512);
        assert_eq!(max_off, max - 0x200);
        assert_eq!(run(0x100_0200, max_off, &mut list).unwrap().list_len, 512);
        assert!(matches!(
            run(0x100_0200, max_off + 1, &mut list),
            Err(PrpError::TooLarge { .. })
        ));

        // The list page itself caps capacity: an offset list or short slice.
        let cap_off = build(
            0x100_0000,
            10 * PS,
            PS,
            PrpList {
                iova: LIST_IOVA + 4096 - 32,
                entries: &mut list,
            },
        );
        assert_eq!(
            cap_off,
            Err(PrpError::TooLarge {
                len: 10 * PS,
                max: 5 * PS
            })
        );
        let mut short = [0u64; 4];
        assert_eq!(run(0x100_0000, 5 * PS, &mut short).unwrap().list_len, 4);
        assert!(run(0x100_0000, 5 * PS + 1, &mut short).is_err());
        assert_eq!(
            build(0x100_0000, 2 * PS + 1, PS, PrpList::none()),
            Err(PrpError::TooLarge {
                len: 2 * PS + 1,
                max: 2 * PS
            })
        );
    }

    #[test]
    fn invalid_inputs() {
        let mut list = [0u64; 512];
        assert_eq!(run(0x10_0000, 0, &mut list), Err(PrpError::ZeroLength));
        assert_eq!(
            run(0x10_0002, 512, &mut list),
            Err(PrpError::Misaligned { iova: 0x10_0002 })
        );
        assert_eq!(
            run(0x10_0001, 512, &mut list),
            Err(PrpError::Misaligned { iova: 0x10_0001 })
        );
        // Dword aligned offsets are allowed.
        assert!(run(0x10_0004, 512, &mut list).is_ok());
        assert_eq!(
            build(
                0x10_0000,
                3 * PS,
                PS,
                PrpList {
                    iova: LIST_IOVA + 4,
                    entries: &mut list
                }
            ),
            Err(PrpError::ListMisaligned {
                iova: LIST_IOVA + 4
            })
        );
        for page_size in [0, 512, 4095, 6144, 1 << 28] {
            assert_eq!(
                build(0, 512, page_size, PrpList::none()),
                Err(PrpError::InvalidPageSize { page_size })
            );
        }
        assert!(matches!(
            run(u64::MAX - 3, 8, &mut list),
            Err(PrpError::AddressOverflow { .. })
        ));
        assert_eq!(run(u64::MAX - 3, 4, &mut list).unwrap().prp1, u64::MAX - 3);
        // Largest page size with a list.
        let big = 1 << 27;
        let mut l = [0u64; 3];
        let p = build(
            0,
            3 * big,
            big,
            PrpList {
                iova: 0x1000,
                entries: &mut l,
            },
        )
        .unwrap();
        assert_eq!((p.list_len, l), (2, [big as u64, 2 * big as u64, 0]));
    }
}
