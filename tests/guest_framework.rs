//! Framework tests against the QEMU guest's devices, through real VFIO and
//! the emulated VT-d. Built with `--features guest` and run inside the guest
//! by `vm/test.sh` (devices bound and hugepages reserved by its guest script).

use std::fs;

use fastlane::framework::{BufferPool, Error, PageSize, PciAddress, Vfio};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set: run through vm/test.sh"))
}

fn aw_bits() -> u32 {
    env("FASTLANE_AW_BITS").parse().expect("FASTLANE_AW_BITS")
}

fn free_2m() -> u64 {
    PageSize::Huge2M.free_pages()
}

/// COMMAND register as the kernel sees it (sysfs config), not through us.
fn sysfs_command(bdf: &str) -> u16 {
    let cfg = fs::read(format!("/sys/bus/pci/devices/{bdf}/config")).expect("sysfs config");
    u16::from_le_bytes([cfg[4], cfg[5]])
}

#[test]
fn nvme_bar0_has_plausible_cap_and_version() {
    let vfio = Vfio::new().unwrap();
    let dev = vfio.open(&env("FASTLANE_NVME")).unwrap();
    assert_eq!(dev.id().unwrap(), (0x1b36, 0x0010));
    assert_eq!(dev.class_code().unwrap(), 0x01_08_02, "NVMe class code");
    let bar0 = dev.map_bar(0).unwrap();
    assert!(bar0.len() >= 0x2000, "BAR0 of {:#x} bytes", bar0.len());
    let cap = bar0.read64(0x00);
    let mqes = cap & 0xffff;
    let dstrd = (cap >> 32) & 0xf;
    let css_nvm = (cap >> 37) & 1;
    assert!(mqes >= 63, "CAP.MQES {mqes}");
    assert_eq!(dstrd, 0, "QEMU uses a 4-byte doorbell stride");
    assert_eq!(css_nvm, 1, "NVM command set supported");
    let vs = bar0.read32(0x08);
    assert!(vs >= 0x0001_0400, "VS {vs:#x}: QEMU reports NVMe 1.4 or later");
}

#[test]
fn igb_status_and_virtio_ids_through_one_container() {
    let vfio = Vfio::new().unwrap();
    let igb = vfio.open(&env("FASTLANE_IGB0")).unwrap();
    assert_eq!(igb.id().unwrap(), (0x8086, 0x10c9));
    assert_eq!(igb.class_code().unwrap() >> 16, 0x02, "network class");
    let bar0 = igb.map_bar(0).unwrap();
    let status = bar0.read32(0x0008);
    assert_ne!(status, 0xffff_ffff, "STATUS reads as a dead device");
    // STATUS.FD (bit 0) full duplex and SPEED (bits 7:6) = 10b, 1000 Mb/s:
    // what QEMU's igb reports before a driver sets the link up.
    assert_eq!(status & 1, 1, "STATUS {status:#x}: not full duplex");
    assert_eq!((status >> 6) & 0b11, 0b10, "STATUS {status:#x}: not 1000 Mb/s");
    // A second device joins the same container.
    let nvme = vfio.open(&env("FASTLANE_NVME")).unwrap();
    assert_ne!(nvme.iommu_group(), igb.iommu_group());
}

#[test]
fn regions_are_identity_mapped_or_offset_by_aperture() {
    let vfio = Vfio::new().unwrap();
    // Made before any device: mapped when the first one is opened.
    let early = vfio.alloc_region(2 << 20, PageSize::Huge2M).unwrap();
    assert!(!early.is_mapped());
    let _dev = vfio.open(&env("FASTLANE_NVME")).unwrap();
    assert!(early.is_mapped(), "region made before the device was mapped at open");
    let late = vfio.alloc_region(4 << 20, PageSize::Huge2M).unwrap();
    assert!(late.is_mapped());
    let top = vfio.iova_ranges().iter().map(|r| r.end).max().unwrap();
    match aw_bits() {
        39 => {
            assert_eq!(top, 1 << 39, "39-bit aperture reported");
            // mmap places hugepages near the top of the 47-bit user space,
            // outside a 39-bit aperture: a constant offset is used instead.
            for r in [&early, &late] {
                assert!(!r.is_identity(), "{r:?} identity mapped outside the aperture");
                let iova = r.iova_at(0).get();
                assert!(iova >= 1 << 30 && iova + r.len() as u64 <= top, "{r:?} at {iova:#x}");
            }
        }
        48 => {
            assert_eq!(top, 1 << 48, "48-bit aperture reported");
            assert!(early.is_identity() && late.is_identity());
            assert_eq!(late.iova_at(12345).get(), late.as_ptr() as u64 + 12345);
        }
        other => panic!("unexpected aw-bits {other}"),
    }
    // The slow lookup for foreign pointers agrees with the offset.
    let p = late.as_ptr().wrapping_add(3 << 20);
    assert_eq!(vfio.translate(p), Some(late.iova_at(3 << 20)));
    assert_eq!(vfio.translate(std::ptr::null()), None);
}

#[test]
fn teardown_stops_dma_and_returns_hugepages() {
    let bdf = env("FASTLANE_NVME");
    let before = free_2m();
    {
        let vfio = Vfio::new().unwrap();
        let dev = vfio.open(&bdf).unwrap();
        dev.enable_dma().unwrap();
        assert!(dev.dma_enabled().unwrap());
        assert_ne!(sysfs_command(&bdf) & 0x4, 0, "bus master on, as the kernel sees it");
        let pool = BufferPool::new(&vfio, 4096, 1024, PageSize::Huge2M).unwrap();
        let _b = pool.alloc().unwrap();
        assert!(free_2m() + 2 <= before, "pool took hugepages");
    }
    assert_eq!(sysfs_command(&bdf) & 0x4, 0, "bus master still on after drop");
    assert_eq!(free_2m(), before, "hugepages not returned");
}

#[test]
fn errors_name_the_problem() {
    let vfio = Vfio::new().unwrap();
    assert!(matches!(vfio.open("0000:00:1e.0"), Err(Error::NoSuchDevice(_))));
    assert!(matches!(vfio.open("00:04"), Err(Error::BadPciAddress(_))));
    assert!(matches!(vfio.open("0000:00:04.9"), Err(Error::BadPciAddress(_))));
    // virtio-net stays with its kernel driver in the guest script.
    match vfio.open(&env("FASTLANE_VIRTIO")) {
        Err(Error::BoundToKernel { driver, .. }) => assert_eq!(driver, "virtio-pci"),
        other => panic!("expected BoundToKernel, got {other:?}"),
    }
    // The second igb is left unbound by the guest script.
    let igb1: PciAddress = env("FASTLANE_IGB1").parse().unwrap();
    match vfio.open(&igb1.to_string()) {
        Err(e @ Error::NotBound(_)) => {
            assert!(e.to_string().contains("hugepages.sh bind"), "{e}")
        }
        other => panic!("expected NotBound, got {other:?}"),
    }
    // No 1 GiB pages are reserved in the guest.
    match vfio.alloc_region(1 << 30, PageSize::Huge1G) {
        Err(e @ Error::NoHugepages { .. }) => assert!(e.to_string().contains("hugepages.sh setup")),
        other => panic!("expected NoHugepages, got {other:?}"),
    }
    // Asking for more 2 MiB pages than exist.
    let too_many = (PageSize::Huge2M.total_pages() as usize + 1) * (2 << 20);
    assert!(matches!(
        vfio.alloc_region(too_many, PageSize::Huge2M),
        Err(Error::NoHugepages { .. })
    ));
}

#[test]
fn a_device_held_elsewhere_is_busy() {
    let first = Vfio::new().unwrap();
    let _held = first.open(&env("FASTLANE_NVME")).unwrap();
    let second = Vfio::new().unwrap();
    match second.open(&env("FASTLANE_NVME")) {
        Err(e @ Error::Busy(_)) => assert!(e.to_string().contains("busy"), "{e}"),
        other => panic!("expected Busy, got {other:?}"),
    }
}
