//! Hostile use of the framework, against the QEMU guest's devices through
//! real VFIO (issue 8): opening a device twice, closing every device while
//! regions live, allocating with no device open, register offsets that
//! wrap. Each of these once corrupted data or memory silently. The drivers'
//! own hostile cases are in guest_hostile_nvme.rs and guest_hostile_nic.rs.

use std::panic::{catch_unwind, AssertUnwindSafe};

use fastlane::framework::{BufferPool, Error, PageSize, Vfio};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set: run through vm/test.sh"))
}

/// "0000:00:04.0" and "00:04.0": the same device, spelt two ways.
fn spellings(bdf: &str) -> [String; 2] {
    [bdf.to_string(), bdf.trim_start_matches("0000:").to_string()]
}

#[test]
fn a_device_open_in_this_container_is_busy_however_it_is_spelt() {
    let vfio = Vfio::new().unwrap();
    let bdf = env("FASTLANE_NVME");
    let first = vfio.open(&bdf).unwrap();
    for s in spellings(&bdf) {
        match vfio.open(&s) {
            Err(e @ Error::Busy(_)) => assert!(e.to_string().contains("busy"), "{e}"),
            other => panic!("second open as {s:?}: expected Busy, got {other:?}"),
        }
    }
    // The refused attempts did not disturb the first handle.
    first.enable_dma().unwrap();
    assert!(first.dma_enabled().unwrap(), "bus mastering lost on the first handle");
    let bar = first.map_bar(0).unwrap();
    assert_eq!(bar.read32(0x08) >> 16, 1, "NVMe VS major through the first handle");
    // Closing the first (and its BAR) frees the address for a new open.
    drop(bar);
    drop(first);
    let again = vfio.open(&spellings(&bdf)[1]).unwrap();
    assert_eq!(again.id().unwrap(), (0x1b36, 0x0010));
}

#[test]
fn a_clone_or_bar_keeps_the_device_open() {
    let vfio = Vfio::new().unwrap();
    let bdf = env("FASTLANE_NVME");
    let dev = vfio.open(&bdf).unwrap();
    let bar = dev.map_bar(0).unwrap();
    let clone = dev.clone();
    drop(dev);
    assert!(matches!(vfio.open(&bdf), Err(Error::Busy(_))), "a clone is still open");
    drop(clone);
    assert!(matches!(vfio.open(&bdf), Err(Error::Busy(_))), "a BAR mapping is still open");
    drop(bar);
    vfio.open(&bdf).unwrap();
}

#[test]
fn a_device_open_in_another_container_is_busy() {
    let a = Vfio::new().unwrap();
    let held = a.open(&env("FASTLANE_NVME")).unwrap();
    let b = Vfio::new().unwrap();
    assert!(matches!(b.open(&env("FASTLANE_NVME")), Err(Error::Busy(_))));
    // Another device in its own group still opens in the second container.
    let igb = b.open(&env("FASTLANE_IGB0")).unwrap();
    assert_ne!(a.domain(), b.domain());
    drop((held, igb));
}

#[test]
fn regions_stay_mapped_when_every_device_closes_and_new_ones_map() {
    let vfio = Vfio::new().unwrap();
    let early = vfio.alloc_region(2 << 20, PageSize::Huge2M).unwrap();
    let dev = vfio.open(&env("FASTLANE_NVME")).unwrap();
    let iova = early.iova_at(0);
    drop(dev);
    // No device open now. This failed with a bare EINVAL once: the group
    // had left the container and taken the IOMMU type with it.
    let between = vfio
        .alloc_region(2 << 20, PageSize::Huge2M)
        .expect("a region made while no device is open");
    let pool = BufferPool::new(&vfio, 4096, 64, PageSize::Huge2M).expect("a pool made while no device is open");
    assert!(between.is_mapped());
    assert_eq!(pool.region().domain(), vfio.domain());
    // Reopening finds the old mapping unchanged (the NVMe tests check that
    // data still moves through it).
    let _dev = vfio.open(&env("FASTLANE_NVME")).unwrap();
    assert!(early.is_mapped());
    assert_eq!(early.iova_at(0), iova, "a region moved on reopen");
    assert_eq!(vfio.translate(early.as_ptr()), Some(iova));
    assert_eq!(vfio.translate(between.as_ptr()), Some(between.iova_at(0)));
}

#[test]
fn regions_outlive_the_container_handle_and_devices_in_any_order() {
    // Drop orders: device before region, region before device, the Vfio
    // handle first of all. None may fault, leak hugepages or panic.
    let before = PageSize::Huge2M.free_pages();
    for order in 0..3 {
        let vfio = Vfio::new().unwrap();
        let dev = vfio.open(&env("FASTLANE_NVME")).unwrap();
        dev.enable_dma().unwrap();
        let pool = BufferPool::new(&vfio, 4096, 16, PageSize::Huge2M).unwrap();
        let buf = pool.alloc().unwrap();
        match order {
            0 => drop((vfio, dev, pool, buf)),
            1 => {
                drop(vfio);
                drop(buf);
                drop(dev);
                drop(pool);
            }
            _ => {
                drop(pool);
                drop(vfio);
                drop(dev);
                drop(buf);
            }
        }
        assert_eq!(PageSize::Huge2M.free_pages(), before, "order {order} kept hugepages");
    }
}

#[test]
fn register_offsets_that_wrap_are_refused_on_a_real_bar() {
    let vfio = Vfio::new().unwrap();
    let dev = vfio.open(&env("FASTLANE_NVME")).unwrap();
    let bar = AssertUnwindSafe(dev.map_bar(0).unwrap());
    for off in [usize::MAX - 7, bar.len(), bar.len() + 8] {
        assert!(catch_unwind(|| bar.read64(off)).is_err(), "read64 at {off:#x}");
        assert!(catch_unwind(|| bar.write64(off, 0)).is_err(), "write64 at {off:#x}");
    }
    assert!(catch_unwind(|| bar.read32(usize::MAX - 3)).is_err());
    // In-bounds reads still work afterwards.
    assert_eq!(bar.read32(0x08) >> 16, 1);
}

#[test]
fn a_pools_memory_cannot_be_claimed_twice() {
    let vfio = Vfio::new().unwrap();
    let _dev = vfio.open(&env("FASTLANE_NVME")).unwrap();
    let pool = BufferPool::new(&vfio, 4096, 16, PageSize::Huge2M).unwrap();
    // Safe code gets at the region but cannot carve the buffers' bytes.
    assert!(pool.region().carve::<u64>(0, 1).is_err());
    let r = vfio.alloc_region(2 << 20, PageSize::Huge2M).unwrap();
    let a = r.carve::<u32>(0, 1024).unwrap();
    assert!(r.carve::<u8>(4095, 1).is_err(), "overlapping arrays");
    drop(a);
    r.carve::<u8>(0, 4096).unwrap();
}
