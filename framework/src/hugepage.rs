//! Hugepage-backed memory.
//!
//! Backing choice: `memmap2` over `hugepage-rs`. `memmap2` maps anonymous
//! `MAP_HUGETLB` memory at any page size (`huge(Some(21))` for 2 MiB,
//! `Some(30)` for 1 GiB) with `MAP_POPULATE`, and returns an `io::Error` when
//! the pool is empty; `hugepage-rs` only knows the default page size, cannot
//! populate, and panics when `/proc/meminfo` cannot be parsed.

use std::fmt;
use std::fs;

use memmap2::{MmapMut, MmapOptions};

use crate::error::{Error, Result};

/// Page size backing a [`crate::DmaRegion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PageSize {
    /// Ordinary 4 KiB pages. For simulated devices and tests only: the kernel
    /// may split such memory across many physical pages, which a device
    /// sees through the IOMMU just the same, but TLB reach is poor.
    Small,
    /// 2 MiB hugepages, the default.
    #[default]
    Huge2M,
    /// 1 GiB hugepages, where the system has reserved them.
    Huge1G,
}

impl PageSize {
    /// Bytes in one page.
    pub const fn bytes(self) -> usize {
        match self {
            PageSize::Small => 4096,
            PageSize::Huge2M => 2 << 20,
            PageSize::Huge1G => 1 << 30,
        }
    }

    fn shift(self) -> u8 {
        self.bytes().trailing_zeros() as u8
    }

    /// Free pages of this size in the system pool, from sysfs.
    pub fn free_pages(self) -> u64 {
        self.sysfs_counter("free_hugepages")
    }

    /// Pages of this size reserved in the system pool, from sysfs.
    pub fn total_pages(self) -> u64 {
        self.sysfs_counter("nr_hugepages")
    }

    fn sysfs_counter(self, name: &str) -> u64 {
        if self == PageSize::Small {
            return 0;
        }
        let kb = self.bytes() / 1024;
        fs::read_to_string(format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB/{name}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Rounds `len` up to a whole number of pages (at least one).
    pub fn round_up(self, len: usize) -> Option<usize> {
        let p = self.bytes();
        len.max(1).checked_add(p - 1).map(|n| n / p * p)
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageSize::Small => "4 KiB",
            PageSize::Huge2M => "2 MiB",
            PageSize::Huge1G => "1 GiB",
        })
    }
}

/// Maps `len` bytes (a multiple of the page size), populated and locked in
/// the hugepage pool, or reports how many pages were free.
pub(crate) fn map(len: usize, page_size: PageSize) -> Result<MmapMut> {
    let mut opts = MmapOptions::new();
    opts.len(len).populate();
    if page_size != PageSize::Small {
        opts.huge(Some(page_size.shift()));
    }
    opts.map_anon().map_err(|e| match e.raw_os_error() {
        Some(libc::ENOMEM) | Some(libc::EINVAL) if page_size != PageSize::Small => {
            Error::NoHugepages {
                page_size,
                bytes: len,
                free: page_size.free_pages(),
            }
        }
        _ => Error::io(format!("mmap of {len} bytes with {page_size} pages"), e),
    })
}
