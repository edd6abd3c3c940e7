//! The SMART / health log read through the driver's safe admin API against
//! QEMU's NVMe controller through real VFIO (issue 10, part 4). Built with
//! `--features guest`, run in the guest by `vm/test.sh` (tests/guest/run-all.sh).

use std::time::{Duration, Instant};

use fastlane::framework::{BufferPool, PageSize, Vfio};
use fastlane::nvme::spec::{log_id, SmartLog, SubmissionEntry, SMART_LOG_SIZE};
use fastlane::nvme::{pattern, Controller, IoQueuePair, NvmeError, Options};

fn open() -> (Vfio, Controller) {
    let bdf =
        std::env::var("FASTLANE_NVME").expect("FASTLANE_NVME not set: run through vm/test.sh");
    let vfio = Vfio::new().unwrap();
    let ctrl = Controller::open(&vfio, &bdf, Options::default()).unwrap();
    (vfio, ctrl)
}

fn smart_cmd() -> SubmissionEntry {
    SubmissionEntry::get_log_page(log_id::SMART_HEALTH, u32::MAX, SMART_LOG_SIZE as u32 / 4)
}

/// The health log through the driver's own admin page.
fn smart(ctrl: &Controller) -> SmartLog {
    let mut page = [0u8; SMART_LOG_SIZE];
    ctrl.admin_command(smart_cmd(), Some(&mut page)).unwrap();
    SmartLog::from_bytes(&page).unwrap()
}

/// Runs `count` commands of `blocks` blocks from LBA `first`, one at a
/// time, writing the pattern or reading and checking it.
fn run(
    qp: &mut IoQueuePair,
    pool: &BufferPool,
    write: bool,
    first: u64,
    blocks: u32,
    count: u64,
    bs: usize,
) {
    let mut buf = pool.alloc().unwrap();
    let len = blocks as usize * bs;
    let mut data = vec![0u8; len];
    for i in 0..count {
        let lba = first + i * blocks as u64;
        let r = if write {
            pattern::fill(&mut data, bs, lba, 77);
            buf.write(0, &data).unwrap();
            qp.write(1, lba, blocks, buf, lba)
        } else {
            qp.read(1, lba, blocks, buf, lba)
        };
        r.map_err(|rej| rej.error).unwrap();
        qp.submit();
        let start = Instant::now();
        let mut done = None;
        while done.is_none() {
            qp.poll(1, |c| done = Some((c.buf.unwrap(), c.result)));
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "I/O never completed"
            );
        }
        let (b, res) = done.unwrap();
        res.unwrap();
        buf = b;
        if !write {
            buf.read(0, &mut data).unwrap();
            if let Err((bad, off)) = pattern::check(&data, bs, lba, 77) {
                panic!("read at {lba}: block {bad} differs at byte {off}");
            }
        }
    }
}

#[test]
fn health_log_is_plausible_and_counts_io() {
    let (vfio, ctrl) = open();
    let before = smart(&ctrl);
    let t = before.temperature_kelvin();
    assert!((273..=373).contains(&t), "composite temperature {t} K");
    assert!(
        before.available_spare <= 100,
        "available spare {}",
        before.available_spare
    );
    assert!(before.available_spare_threshold <= 100);
    assert_eq!(
        before.critical_warning, 0,
        "QEMU's fresh controller warns of nothing"
    );
    assert_eq!(before.media_errors(), 0);

    // The same log into a caller's DMA buffer.
    let page_pool = BufferPool::new(&vfio, 4096, 1, PageSize::Huge2M).unwrap();
    let mut page = page_pool.alloc().unwrap();
    page.fill(0xEE);
    ctrl.admin_command_buf(smart_cmd(), &mut page).unwrap();
    let mut bytes = [0u8; SMART_LOG_SIZE];
    page.read(0, &mut bytes).unwrap();
    let via_buf = SmartLog::from_bytes(&bytes).unwrap();
    assert_eq!(via_buf.data_units_read(), before.data_units_read());
    assert_eq!(via_buf.power_cycles(), before.power_cycles());
    assert!((273..=373).contains(&via_buf.temperature_kelvin()));

    // A log page longer than the admin page is refused by the safe API.
    let long = SubmissionEntry::get_log_page(log_id::SMART_HEALTH, u32::MAX, 4096 / 4 + 1);
    assert!(matches!(
        ctrl.admin_command(long, None),
        Err(NvmeError::UnsafeCommand { .. })
    ));

    // 4 MiB written then read back in 128 KiB commands.
    let ns = ctrl.namespace(1).unwrap();
    let bs = ns.block_size as usize;
    let blocks = (128 * 1024 / bs) as u32;
    let count = (4u64 << 20) / (128 * 1024);
    let pool = BufferPool::new(&vfio, 128 * 1024, 1, PageSize::Huge2M).unwrap();
    let mut qp = ctrl.create_qpair(16).unwrap();
    run(&mut qp, &pool, true, 0, blocks, count, bs);
    run(&mut qp, &pool, false, 0, blocks, count, bs);
    drop(qp);

    let after = smart(&ctrl);
    // Data units are thousands of 512-byte units, rounded up: 4 MiB is
    // 8192 such units, so each counter grows by at least 8.
    let units = (4u128 << 20) / 512 / 1000;
    assert!(
        after.data_units_written() >= before.data_units_written() + units,
        "data units written {} -> {}",
        before.data_units_written(),
        after.data_units_written()
    );
    assert!(
        after.data_units_read() >= before.data_units_read() + units,
        "data units read {} -> {}",
        before.data_units_read(),
        after.data_units_read()
    );
    assert!(after.host_write_commands() >= before.host_write_commands() + count as u128);
    assert!(after.host_read_commands() >= before.host_read_commands() + count as u128);
    assert_eq!(after.media_errors(), 0);
    println!(
        "health: {} K, spare {}%, used {}%, units read {} -> {}, written {} -> {}, error log entries {}",
        t,
        after.available_spare,
        after.percentage_used,
        before.data_units_read(),
        after.data_units_read(),
        before.data_units_written(),
        after.data_units_written(),
        after.error_log_entries()
    );
}
