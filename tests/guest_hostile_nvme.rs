//! Hostile use of the NVMe driver against QEMU's NVMe controller through
//! real VFIO (issue 8): opening the controller twice, closing and reopening
//! it with live pools, buffers of another container, admin commands that
//! carry device addresses, and open/close/reopen in several orders. Every
//! I/O is checked by reading back a per-block pattern, so a transfer that
//! "completes" without moving data fails. Built with `--features guest`,
//! run in the guest under both IOMMU apertures (`tests/guest/run-all.sh`),
//! one test at a time (`--test-threads=1`).

use std::time::{Duration, Instant};

use fastlane::framework::{BufferPool, DmaBuf, PageSize, UncheckedDma, Vfio};
use fastlane::nvme::spec::{
    admin_opcode, feature, IdentifyController, QueuePriority, SubmissionEntry,
};
use fastlane::nvme::{pattern, Controller, IoQueuePair, NvmeError, Options};

/// Blocks per I/O (QEMU's namespace has 512-byte blocks: 4 KiB).
const BLOCKS: u32 = 8;
const BS: usize = 512;
const LEN: usize = BLOCKS as usize * BS;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set: run through vm/test.sh"))
}

fn open(vfio: &Vfio) -> Controller {
    Controller::open(vfio, &env("FASTLANE_NVME"), Options::default()).expect("open the NVMe controller")
}

fn pool(vfio: &Vfio) -> BufferPool {
    BufferPool::new(vfio, LEN, 8, PageSize::Huge2M).expect("buffer pool")
}

/// Runs one read or write of BLOCKS blocks at `lba` and waits for it.
fn io(qp: &mut IoQueuePair, write: bool, lba: u64, buf: DmaBuf) -> (DmaBuf, Result<(), NvmeError>) {
    let r = if write {
        qp.write(1, lba, BLOCKS, buf, lba)
    } else {
        qp.read(1, lba, BLOCKS, buf, lba)
    };
    if let Err(rej) = r {
        return (rej.buf.expect("a refused submission hands its buffer back"), Err(rej.error));
    }
    qp.submit();
    let start = Instant::now();
    loop {
        let mut out = None;
        qp.poll(1, |c| out = Some(c));
        if let Some(c) = out {
            assert_eq!(c.tag, lba);
            return (c.buf.expect("a completion hands its buffer back"), c.result);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "I/O at {lba} never completed");
    }
}

/// Writes the pattern of `seed` at `lba` from `buf`.
fn put(qp: &mut IoQueuePair, mut buf: DmaBuf, lba: u64, seed: u64) -> DmaBuf {
    let mut data = vec![0u8; LEN];
    pattern::fill(&mut data, BS, lba, seed);
    buf.write(0, &data).unwrap();
    let (buf, r) = io(qp, true, lba, buf);
    r.unwrap_or_else(|e| panic!("write at {lba}: {e}"));
    buf
}

/// Reads `lba` into `buf` (filled with junk first) and checks the pattern
/// of `seed`: a read that moved no data fails here.
fn check(qp: &mut IoQueuePair, mut buf: DmaBuf, lba: u64, seed: u64) -> DmaBuf {
    buf.fill(0xee);
    let (buf, r) = io(qp, false, lba, buf);
    r.unwrap_or_else(|e| panic!("read at {lba}: {e}"));
    let mut data = vec![0u8; LEN];
    buf.read(0, &mut data).unwrap();
    if let Err((block, off)) = pattern::check(&data, BS, lba, seed) {
        panic!("read at {lba} (seed {seed}): block {block} differs at byte {off}");
    }
    buf
}

/// "0000:00:04.0" and "00:04.0": the same controller, spelt two ways.
fn spellings(bdf: &str) -> [String; 2] {
    [bdf.to_string(), bdf.trim_start_matches("0000:").to_string()]
}

fn expect_busy(r: Result<Controller, NvmeError>, what: &str) {
    match r {
        Err(e) if e.is_busy() => assert!(e.to_string().contains("busy"), "{e}"),
        Err(e) => panic!("{what}: expected Busy, got {e}"),
        Ok(_) => panic!("{what}: a second handle on an open controller"),
    }
}

/// Item 2: a second open of the same controller in one container is Busy,
/// however the address is spelt, and leaves the first handle working: its
/// queue pair made before and a new one both move verified data.
#[test]
fn second_open_is_busy_and_the_first_handle_keeps_working() {
    let vfio = Vfio::new().unwrap();
    let ctrl = open(&vfio);
    let pool = pool(&vfio);
    let mut qp = ctrl.create_qpair(8).unwrap();
    let buf = put(&mut qp, pool.alloc().unwrap(), 1000, 1);
    for s in spellings(&env("FASTLANE_NVME")) {
        expect_busy(Controller::open(&vfio, &s, Options::default()), &s);
    }
    // Nothing reset or disabled the controller under the first handle.
    assert!(ctrl.csts().rdy() && !ctrl.csts().cfs(), "{:?}", ctrl.csts());
    assert_eq!(ctrl.resets(), 0);
    let buf = check(&mut qp, buf, 1000, 1);
    let buf = put(&mut qp, buf, 1016, 2);
    let mut qp2 = ctrl.create_qpair(8).unwrap();
    let buf = check(&mut qp2, buf, 1016, 2);
    let buf = check(&mut qp, buf, 1000, 1);
    assert_eq!(qp.stats().malformed + qp.stats().unknown_cids, 0);
    drop(buf);
    // Once the first handle is gone, the address opens again.
    drop((qp, qp2, ctrl));
    let again = Controller::open(&vfio, &spellings(&env("FASTLANE_NVME"))[1], Options::default())
        .expect("open after the first handle closed");
    let mut qp = again.create_qpair(8).unwrap();
    check(&mut qp, pool.alloc().unwrap(), 1016, 2);
}

/// Item 3: closing the controller (the container's only device) and
/// opening it again keeps every earlier pool mapped: data written through
/// the old pool before the close reads back through it after, writes
/// through it land, and a pool made while no device was open works too.
#[test]
fn pools_keep_moving_data_across_close_and_reopen() {
    let vfio = Vfio::new().unwrap();
    let ctrl = open(&vfio);
    let old = pool(&vfio);
    let mut qp = ctrl.create_qpair(8).unwrap();
    let a = put(&mut qp, old.alloc().unwrap(), 2000, 0xa);
    drop(qp);
    drop(ctrl);

    // No device open in the container now.
    let between = pool(&vfio);
    let ctrl = open(&vfio);
    let mut qp = ctrl.create_qpair(8).unwrap();
    // Pattern A, written by the first handle, read through the old pool.
    let a = check(&mut qp, a, 2000, 0xa);
    // Pattern B written through the old pool, read through both pools.
    let a = put(&mut qp, a, 2016, 0xb);
    let b = check(&mut qp, between.alloc().unwrap(), 2016, 0xb);
    let a = check(&mut qp, a, 2016, 0xb);
    // Pattern C written through the pool made while nothing was open.
    let b = put(&mut qp, b, 2032, 0xc);
    check(&mut qp, a, 2032, 0xc);
    check(&mut qp, b, 2032, 0xc);
}

/// Buffers of another container (and unmapped ones) are refused by every
/// submission path with ForeignBuffer and handed back untouched; nothing
/// reaches the device, and the memory their IOVA would name here is not
/// written either.
#[test]
fn buffers_of_another_container_are_refused_and_handed_back() {
    let vfio = Vfio::new().unwrap();
    let ctrl = open(&vfio);
    let mine = pool(&vfio);
    let mut bystanders: Vec<DmaBuf> = (0..4).map(|_| mine.alloc().unwrap()).collect();
    for b in &mut bystanders {
        b.fill(0xc3);
    }
    let other = Vfio::new().unwrap();
    // A device of its own keeps the other container's IOMMU set up.
    let _igb = other.open(&env("FASTLANE_IGB0")).unwrap();
    let foreign = pool(&other);
    let unmapped = BufferPool::new_unmapped(LEN, 2, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(8).unwrap();
    for (what, p) in [("other container", &foreign), ("unmapped", &unmapped)] {
        for write in [false, true] {
            let mut buf = p.alloc().unwrap();
            buf.fill(0x5a);
            let index = buf.index();
            let (mut buf, r) = io(&mut qp, write, 3000, buf);
            assert!(
                matches!(r, Err(NvmeError::ForeignBuffer)),
                "{what}, write {write}: {r:?}"
            );
            assert_eq!(buf.index(), index, "{what}: another buffer came back");
            let mut data = vec![0u8; LEN];
            buf.read(0, &mut data).unwrap();
            assert!(data.iter().all(|&x| x == 0x5a), "{what}: a refused buffer changed");
            match ctrl.admin_command_buf(SubmissionEntry::identify_controller(0), &mut buf) {
                Err(NvmeError::ForeignBuffer) => {}
                other => panic!("{what}: admin_command_buf took a foreign buffer: {other:?}"),
            }
        }
    }
    assert_eq!(qp.outstanding(), 0);
    assert_eq!(qp.stats().submitted, 0, "a foreign buffer reached the device");
    for b in &bystanders {
        let mut data = vec![0u8; LEN];
        b.read(0, &mut data).unwrap();
        assert!(data.iter().all(|&x| x == 0xc3), "a buffer of this container was written");
    }
    // The queue pair still works with buffers of its own container.
    let buf = put(&mut qp, bystanders.pop().unwrap(), 3000, 3);
    check(&mut qp, buf, 3000, 3);
}

/// Item 7: admin commands with address fields the driver did not fill
/// (Host Memory Buffer descriptors, a metadata pointer, caller-written
/// PRPs, queue bases, doorbell buffers) are refused by the safe API before
/// they reach the controller, which goes on working; Identify and Get Log
/// Page work, and the raw path takes an `UncheckedDma` promise.
#[test]
fn admin_commands_with_address_fields_are_refused() {
    let vfio = Vfio::new().unwrap();
    let ctrl = open(&vfio);
    let pool = BufferPool::new(&vfio, 4096, 4, PageSize::Huge2M).unwrap();
    let mut target = pool.alloc().unwrap();
    target.fill(0x77);
    let at = target.iova().get();

    let mut hmb = SubmissionEntry::set_features(feature::HOST_MEMORY_BUFFER, 1, false);
    hmb.cdw12 = 16; // HSIZE: 16 pages
    hmb.cdw13 = at as u32; // descriptor list address, low
    hmb.cdw14 = (at >> 32) as u32; // and high
    hmb.cdw15 = 1; // one descriptor
    let mut mptr = SubmissionEntry::identify_controller(0);
    mptr.mptr = at;
    let cases = [
        ("Set Features - Host Memory Buffer", hmb),
        ("metadata pointer", mptr),
        ("caller-written PRP1", SubmissionEntry::identify_controller(at)),
        ("Create I/O CQ", SubmissionEntry::create_io_cq(7, 16, at)),
        ("Create I/O SQ", SubmissionEntry::create_io_sq(7, 16, at, 7, QueuePriority::Low)),
        ("Delete I/O SQ", SubmissionEntry::delete_io_sq(1)),
        ("Doorbell Buffer Config", SubmissionEntry::doorbell_buffer_config(at, at)),
        ("Namespace Attachment", SubmissionEntry::new(admin_opcode::NAMESPACE_ATTACHMENT, 1)),
        ("Get Log Page over 4 KiB", SubmissionEntry::get_log_page(0x02, u32::MAX, 4096)),
    ];
    for (what, cmd) in cases {
        let mut data = vec![0u8; 4096];
        for r in [
            ctrl.admin_command(cmd, Some(&mut data)),
            ctrl.admin_command(cmd, None),
            ctrl.admin_command_buf(cmd, &mut target),
        ] {
            match r {
                Err(NvmeError::UnsafeCommand { opcode, .. }) => assert_eq!(opcode, cmd.opcode()),
                other => panic!("{what} went through the safe API: {other:?}"),
            }
        }
    }
    let mut data = vec![0u8; 4096];
    target.read(0, &mut data).unwrap();
    assert!(data.iter().all(|&x| x == 0x77), "the device wrote the target buffer");

    // The safe API's commands work on the real controller.
    let mut raw = vec![0u8; 4096];
    ctrl.admin_command(SubmissionEntry::identify_controller(0), Some(&mut raw)).unwrap();
    assert_eq!(IdentifyController::from_bytes(&raw).unwrap().serial(), "fastlane0001");
    let mut smart = vec![0xffu8; 512];
    ctrl.admin_command(SubmissionEntry::get_log_page(0x02, u32::MAX, 128), Some(&mut smart)).unwrap();
    // SMART / Health: composite temperature (bytes 1-2, kelvin) is plausible.
    let kelvin = u16::from_le_bytes([smart[1], smart[2]]);
    assert!((200..400).contains(&kelvin), "SMART temperature {kelvin} K");
    target.fill(0);
    ctrl.admin_command_buf(SubmissionEntry::get_log_page(0x02, u32::MAX, 128), &mut target).unwrap();
    let wc = SubmissionEntry::get_features(feature::VOLATILE_WRITE_CACHE, fastlane::nvme::spec::FeatureSelect::Current, 0);
    ctrl.admin_command(wc, None).unwrap();

    // The raw path sends the caller's PRP, given the promise.
    target.fill(0);
    // SAFETY: PRP1 is the IOVA of `target`, a 4 KiB buffer of this
    // container that nothing else uses until the command completes.
    let promise = unsafe { UncheckedDma::promise() };
    ctrl.admin_command_raw(SubmissionEntry::identify_controller(at), &promise).unwrap();
    target.read(0, &mut raw).unwrap();
    assert_eq!(IdentifyController::from_bytes(&raw).unwrap().serial(), "fastlane0001");

    // I/O is unaffected.
    let mut qp = ctrl.create_qpair(8).unwrap();
    let buf = put(&mut qp, pool.alloc().unwrap(), 4000, 4);
    check(&mut qp, buf, 4000, 4);
    assert_eq!(ctrl.resets(), 0);
}

/// Open, close and reopen in several orders (queue pair or controller
/// handle dropped first, pools dropped before or after), with pools made
/// before the first open, while open, while closed and after reopening:
/// every combination moves verified data, and an open while a queue pair
/// still holds the controller is Busy without disturbing it.
#[test]
fn open_close_reopen_in_any_order_with_pools_from_every_phase() {
    for order in 0..3u64 {
        let vfio = Vfio::new().unwrap();
        let lba = 5000 + order * 64;
        let seed = 100 + order * 10;
        let before = pool(&vfio);
        let c1 = open(&vfio);
        let during = pool(&vfio);
        let mut q1 = c1.create_qpair(8).unwrap();
        let b0 = put(&mut q1, before.alloc().unwrap(), lba, seed);
        let d0 = put(&mut q1, during.alloc().unwrap(), lba + 8, seed + 1);
        match order {
            0 => drop((q1, c1)),
            1 => {
                // The queue pair keeps the controller open after its handle
                // drops: a new open is Busy and the queue pair still works.
                drop(c1);
                expect_busy(
                    Controller::open(&vfio, &env("FASTLANE_NVME"), Options::default()),
                    "open while a queue pair holds the controller",
                );
                check(&mut q1, before.alloc().unwrap(), lba + 8, seed + 1);
                drop(q1);
            }
            _ => {
                // Buffers of both pools go back before the close.
                drop((b0, d0));
                drop(q1);
                drop(c1);
                let between = pool(&vfio);
                let c2 = open(&vfio);
                let mut q2 = c2.create_qpair(8).unwrap();
                let x = check(&mut q2, between.alloc().unwrap(), lba, seed);
                put(&mut q2, x, lba + 16, seed + 2);
                // Pools dropped while the controller is open, then it closes.
                drop(between);
                drop((q2, c2));
                let c3 = open(&vfio);
                let after = pool(&vfio);
                let mut q3 = c3.create_qpair(8).unwrap();
                check(&mut q3, before.alloc().unwrap(), lba + 16, seed + 2);
                check(&mut q3, during.alloc().unwrap(), lba + 8, seed + 1);
                let y = put(&mut q3, after.alloc().unwrap(), lba + 24, seed + 3);
                check(&mut q3, before.alloc().unwrap(), lba + 24, seed + 3);
                drop(y);
                continue;
            }
        }
        let between = pool(&vfio);
        let c2 = open(&vfio);
        let after = pool(&vfio);
        let mut q2 = c2.create_qpair(8).unwrap();
        check(&mut q2, between.alloc().unwrap(), lba, seed);
        check(&mut q2, after.alloc().unwrap(), lba + 8, seed + 1);
        drop(put(&mut q2, after.alloc().unwrap(), lba + 16, seed + 2));
        check(&mut q2, before.alloc().unwrap(), lba + 16, seed + 2);
        check(&mut q2, during.alloc().unwrap(), lba + 16, seed + 2);
        let w = put(&mut q2, between.alloc().unwrap(), lba + 24, seed + 3);
        check(&mut q2, during.alloc().unwrap(), lba + 24, seed + 3);
        drop(w);
        // The old pools' buffers from before the close, too.
        if order == 0 {
            let b0 = check(&mut q2, b0, lba, seed);
            let d0 = check(&mut q2, d0, lba + 24, seed + 3);
            put(&mut q2, b0, lba + 32, seed + 4);
            check(&mut q2, d0, lba + 32, seed + 4);
        }
    }
}
