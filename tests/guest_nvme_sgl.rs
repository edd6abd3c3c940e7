//! NVMe data pointers and large transfers against QEMU's controller (which
//! reports SGL support, SGLS bits 1:0 = 01b) through real VFIO: every I/O
//! size from one block to MDTS with SGLs and with PRPs, buffers that cross
//! hugepage boundaries described by one SGL descriptor, and requests of 2
//! to 4 times MDTS split into commands and completed once. Every read is
//! checked against the pattern written. Built with `--features guest`, run
//! by tests/guest/run-all.sh.

use std::time::{Duration, Instant};

use fastlane::framework::{BufferPool, DmaBuf, PageSize, Vfio};
use fastlane::nvme::spec::SglSupport;
use fastlane::nvme::{pattern, Controller, DataPointer, IoQueuePair, NvmeError, Options};

fn open() -> (Vfio, Controller) {
    let bdf = std::env::var("FASTLANE_NVME").expect("FASTLANE_NVME not set: run in the guest");
    let vfio = Vfio::new().unwrap();
    let ctrl = Controller::open(&vfio, &bdf, Options::default()).unwrap();
    (vfio, ctrl)
}

/// Submits one read or write and polls until it completes (once).
fn io(qp: &mut IoQueuePair, write: bool, lba: u64, blocks: u32, buf: DmaBuf) -> (DmaBuf, Result<(), NvmeError>) {
    let r = if write {
        qp.write(1, lba, blocks, buf, lba)
    } else {
        qp.read(1, lba, blocks, buf, lba)
    };
    if let Err(rej) = r {
        return (rej.buf.unwrap(), Err(rej.error));
    }
    qp.submit();
    let start = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() {
        qp.poll(4, |c| got.push(c));
        assert!(start.elapsed() < Duration::from_secs(30), "I/O never completed");
    }
    // Nothing else may complete: one request, one completion.
    for _ in 0..1000 {
        qp.poll(4, |c| got.push(c));
    }
    assert_eq!(got.len(), 1, "one completion per request");
    assert_eq!(qp.outstanding(), 0);
    let c = got.pop().unwrap();
    assert_eq!(c.tag, lba);
    (c.buf.unwrap(), c.result)
}

/// Writes the pattern of `seed` over `blocks` at `lba` from `buf`, reads
/// it back into the same buffer (poisoned first) and checks it.
fn write_read_check(qp: &mut IoQueuePair, buf: DmaBuf, lba: u64, blocks: u32, bs: usize, seed: u64) -> DmaBuf {
    let len = blocks as usize * bs;
    let mut data = vec![0u8; len];
    pattern::fill(&mut data, bs, lba, seed);
    let mut buf = buf;
    buf.write(0, &data).unwrap();
    let (mut buf, r) = io(qp, true, lba, blocks, buf);
    r.unwrap_or_else(|e| panic!("write of {blocks} blocks at {lba}: {e}"));
    buf.fill(0xee);
    let (buf, r) = io(qp, false, lba, blocks, buf);
    r.unwrap_or_else(|e| panic!("read of {blocks} blocks at {lba}: {e}"));
    buf.read(0, &mut data).unwrap();
    if let Err((bad, off)) = pattern::check(&data, bs, lba, seed) {
        panic!("{blocks} blocks at {lba} read back wrong: block {bad} at byte {off}");
    }
    buf
}

#[test]
fn qemu_reports_sgls() {
    let (_vfio, ctrl) = open();
    assert_eq!(ctrl.info().sgl, SglSupport::Any, "SGLS {:#x}", ctrl.info().raw.sgls);
    let mut qp = ctrl.create_qpair(4).unwrap();
    assert!(qp.uses_sgl(), "SGLs by default where supported");
    qp.set_data_pointer(DataPointer::Prp).unwrap();
    assert!(!qp.uses_sgl());
}

/// Every size from one block to MDTS, both data pointer modes, data
/// verified.
#[test]
fn every_size_one_block_to_mdts_sgl_and_prp() {
    let (vfio, ctrl) = open();
    let ns = ctrl.namespaces()[0];
    let bs = ns.block_size as usize;
    let max = ctrl.info().max_transfer;
    let max_blocks = (max / bs) as u32;
    let pool = BufferPool::new(&vfio, max, 2, PageSize::Huge2M).unwrap();
    let mut qp = ctrl.create_qpair(8).unwrap();
    let mut buf = pool.alloc().unwrap();
    for (i, mode) in [DataPointer::Sgl, DataPointer::Prp].into_iter().enumerate() {
        qp.set_data_pointer(mode).unwrap();
        // Sizes 1..=MDTS add up to more than the image: wrap around (each
        // size is written and read back before the next).
        let span = ns.blocks - max_blocks as u64;
        let mut lba = i as u64 * span / 2;
        for blocks in 1..=max_blocks {
            buf = write_read_check(&mut qp, buf, lba, blocks, bs, 0x5E1 + i as u64);
            lba = (lba + blocks as u64) % span;
        }
        eprintln!("{mode:?}: sizes 1..={max_blocks} blocks of {bs} bytes verified");
    }
    let st = qp.stats();
    assert_eq!(st.completed, 2 * 2 * max_blocks as u64);
    assert_eq!((st.unknown_cids, st.malformed, st.timeouts), (0, 0, 0));
}

/// A buffer is one IOVA range: buffers of a pool that straddle 2 MiB
/// hugepage boundaries go as one SGL descriptor each and move the right
/// bytes.
#[test]
fn buffers_across_hugepages_are_one_descriptor() {
    let (vfio, ctrl) = open();
    let ns = ctrl.namespaces()[0];
    let bs = ns.block_size as usize;
    // 384 KiB buffers: the sixth spans the first 2 MiB boundary, and so on.
    let size = (384 << 10).min(ctrl.info().max_transfer);
    let pool = BufferPool::new(&vfio, size, 16, PageSize::Huge2M).unwrap();
    let mut qp = ctrl.create_qpair(8).unwrap();
    assert!(qp.uses_sgl());
    let bufs: Vec<DmaBuf> = (0..16).map(|_| pool.alloc().unwrap()).collect();
    let crossing = bufs
        .iter()
        .filter(|b| b.iova().get() / (2 << 20) != (b.iova().get() + size as u64 - 1) / (2 << 20))
        .count();
    assert!(crossing >= 2, "{crossing} buffers cross a 2 MiB boundary");
    let blocks = (size / bs) as u32;
    for (i, buf) in bufs.into_iter().enumerate() {
        write_read_check(&mut qp, buf, 100_000 + i as u64 * blocks as u64, blocks, bs, 0xB16 + i as u64);
    }
}

/// Requests of 2 to 4 times MDTS (and sizes in between) are split into
/// commands over one buffer and complete once, data verified, with SGLs
/// and with PRPs; a request needing more commands than the queue pair
/// holds is refused with its buffer.
#[test]
fn requests_above_mdts_split_and_complete_once() {
    let (vfio, ctrl) = open();
    let ns = ctrl.namespaces()[0];
    let bs = ns.block_size as usize;
    let max = ctrl.info().max_transfer;
    let mb = (max / bs) as u32;
    let pool = BufferPool::new(&vfio, 4 * max, 2, PageSize::Huge2M).unwrap();
    let mut qp = ctrl.create_qpair(16).unwrap();
    let mut buf = pool.alloc().unwrap();
    for (i, mode) in [DataPointer::Sgl, DataPointer::Prp].into_iter().enumerate() {
        qp.set_data_pointer(mode).unwrap();
        let before = qp.stats();
        let sizes = [2 * mb, 2 * mb + 1, 3 * mb - 1, 4 * mb];
        let mut lba = 200_000 + i as u64 * 10 * mb as u64;
        for &blocks in &sizes {
            buf = write_read_check(&mut qp, buf, lba, blocks, bs, 0x5B17 + i as u64);
            lba += blocks as u64;
        }
        let st = qp.stats();
        let commands: u64 = sizes.iter().map(|b| b.div_ceil(mb) as u64).sum();
        assert_eq!(st.submitted - before.submitted, 2 * commands, "{mode:?}");
        assert_eq!(st.completed - before.completed, 2 * sizes.len() as u64, "{mode:?}");
    }
    let mut small = ctrl.create_qpair(3).unwrap(); // 2 commands at once
    let r = small.read(1, 0, 3 * mb, buf, 1).unwrap_err();
    assert!(matches!(r.error, NvmeError::TooLarge { .. }), "{}", r.error);
    let buf = r.buf.expect("the buffer comes back");
    let (_buf, r) = io(&mut small, false, 0, 2 * mb, buf);
    r.unwrap();
}
