//! Reliability tests in the QEMU guest, through real VFIO and the emulated
//! VT-d: what the IOMMU confines, what another process holding the device
//! looks like, what a SIGKILL in the middle of I/O leaves behind, and what a
//! too-small locked-memory limit says. Built with `--features guest`, run in
//! the guest by `tests/guest/reliability.sh` (NVMe bound to vfio-pci,
//! hugepages reserved), one test at a time (`--test-threads=1`).
//!
//! Several tests need a second process. They start this same binary again
//! with `CHILD_ENV` naming a role and the filter `child_role --exact`; the
//! `child_role` test does nothing when that variable is unset.
//!
//! Safe API and foreign addresses: the I/O path only takes [`DmaBuf`]s, a
//! `DmaBuf` only comes out of a [`BufferPool`], and the queue pair refuses
//! a buffer that is not mapped in its controller's container
//! (`NvmeError::ForeignBuffer`: an unmapped pool, or another container's,
//! whose IOVA may name an unrelated buffer here). The safe
//! `Controller::admin_command` refuses data pointers; `admin_command_raw`,
//! given an `UncheckedDma` promise made in `unsafe` code, sends whatever PRP
//! the caller wrote, which is how
//! the isolation test hands the device a heap address.
//!
//! What a blocked DMA looks like depends on the device. QEMU's NVMe model
//! ignores the failed transfer and completes the command successfully; the
//! emulated VT-d records the fault, which the guest kernel logs as
//! `DMAR: [DMA Write ...] ... fault addr <iova>` (QEMU drops a fault that
//! arrives while an earlier one is pending, so not every blocked command
//! leaves a line). So the isolation tests require: no byte of process
//! memory changed (and no process memory reached the disk), IOMMU faults of
//! the device in the kernel log, the controller going on working; and they
//! accept any completion (success, an NVMe error status, a driver timeout).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{fs, thread};

use fastlane::framework::{self, BufferPool, DmaBuf, PageSize, UncheckedDma, Vfio};
use fastlane::nvme::spec::{IdentifyController, SubmissionEntry};
use fastlane::nvme::{pattern, Controller, IoQueuePair, NvmeError, Options};

/// Selects the role of a child process (see the module doc).
const CHILD_ENV: &str = "FASTLANE_RELIABILITY_CHILD";
/// The unprivileged user the non-root children switch to.
const USER_ID: u32 = 1000;
const BS: usize = 512;
/// LBA ranges of this file, clear of the ones `guest_nvme` uses (below 420k).
const WRITER_FIRST: u64 = 440_000;
const WRITER_BLOCKS: u64 = 32_768;
const ISOLATION_LBA: u64 = 500_000;
const CHILD_IO_LBA: u64 = 510_000;

fn bdf() -> String {
    std::env::var("FASTLANE_NVME")
        .expect("FASTLANE_NVME not set: run through tests/guest/reliability.sh")
}

fn open() -> (Vfio, Controller) {
    let vfio = Vfio::new().unwrap();
    let ctrl = Controller::open(&vfio, &bdf(), Options::default()).unwrap();
    (vfio, ctrl)
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not set"))
}

/// COMMAND register as the kernel sees it (sysfs config), not through VFIO.
fn sysfs_command(bdf: &str) -> u16 {
    let cfg = fs::read(format!("/sys/bus/pci/devices/{bdf}/config")).expect("sysfs config");
    u16::from_le_bytes([cfg[4], cfg[5]])
}

fn iommu_group(bdf: &str) -> String {
    let link =
        fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group")).expect("iommu_group");
    link.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------- I/O helpers

/// Submits one read or write and polls until it completes (30 s at most).
fn io(
    qp: &mut IoQueuePair,
    write: bool,
    lba: u64,
    blocks: u32,
    buf: DmaBuf,
) -> (DmaBuf, Result<(), NvmeError>) {
    let r = if write {
        qp.write(1, lba, blocks, buf, lba)
    } else {
        qp.read(1, lba, blocks, buf, lba)
    };
    if let Err(rej) = r {
        return (
            rej.buf.expect("rejected buffer handed back"),
            Err(rej.error),
        );
    }
    qp.submit();
    let start = Instant::now();
    loop {
        let mut out = None;
        qp.poll(1, |c| out = Some(c));
        if let Some(c) = out {
            return (c.buf.expect("buffer handed back"), c.result);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "I/O at {lba} never completed"
        );
    }
}

/// Writes the pattern of `seed` over `blocks` blocks at `lba`.
fn write_pattern(
    qp: &mut IoQueuePair,
    mut buf: DmaBuf,
    lba: u64,
    blocks: u32,
    seed: u64,
) -> DmaBuf {
    let mut data = vec![0u8; blocks as usize * BS];
    pattern::fill(&mut data, BS, lba, seed);
    buf.write(0, &data).unwrap();
    let (buf, r) = io(qp, true, lba, blocks, buf);
    r.unwrap();
    buf
}

/// Reads `blocks` blocks at `lba` and returns them.
fn read_blocks(qp: &mut IoQueuePair, mut buf: DmaBuf, lba: u64, blocks: u32) -> (DmaBuf, Vec<u8>) {
    buf.fill(0xee);
    let (buf, r) = io(qp, false, lba, blocks, buf);
    r.unwrap();
    let mut data = vec![0u8; blocks as usize * BS];
    buf.read(0, &mut data).unwrap();
    (buf, data)
}

/// Runs writes (with the pattern of `seed`) or reads over `[first, first +
/// blocks)` in `chunk`-block commands, `depth` in flight; every read chunk
/// goes to `check(lba, data)`. Any failed command fails the test.
fn sweep(
    qp: &mut IoQueuePair,
    pool: &BufferPool,
    write: bool,
    (first, blocks, chunk): (u64, u64, u32),
    seed: u64,
    mut check: impl FnMut(u64, &[u8]),
) {
    let n = blocks / chunk as u64;
    let depth = qp.capacity().min(pool.capacity() as usize);
    let (mut next, mut done) = (0u64, 0u64);
    let mut data = vec![0u8; chunk as usize * BS];
    let start = Instant::now();
    while done < n {
        while next < n && qp.outstanding() < depth {
            let lba = first + next * chunk as u64;
            let mut buf = pool.alloc().unwrap();
            let r = if write {
                pattern::fill(&mut data, BS, lba, seed);
                buf.write(0, &data).unwrap();
                qp.write(1, lba, chunk, buf, lba)
            } else {
                qp.read(1, lba, chunk, buf, lba)
            };
            r.map_err(|rej| rej.error).unwrap();
            next += 1;
        }
        qp.poll(64, |c| {
            if let Err(e) = c.result {
                panic!(
                    "{} at LBA {} failed: {e}",
                    if write { "write" } else { "read" },
                    c.tag
                );
            }
            if !write {
                c.buf.as_ref().unwrap().read(0, &mut data).unwrap();
                check(c.tag, &data);
            }
            done += 1;
        });
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "sweep stuck at {done}/{n}"
        );
    }
}

/// Writes the pattern of `seed` over the range and reads it back verified.
fn write_and_verify(qp: &mut IoQueuePair, pool: &BufferPool, range: (u64, u64, u32), seed: u64) {
    sweep(qp, pool, true, range, seed, |_, _| {});
    let mut verified = 0;
    sweep(qp, pool, false, range, seed, |lba, data| {
        if let Err((b, off)) = pattern::check(data, BS, lba, seed) {
            panic!("block {b} differs at byte {off} after the write");
        }
        verified += 1;
    });
    assert_eq!(verified, range.1 / range.2 as u64);
}

// ------------------------------------------------------------ child processes

/// A child process running this binary in `role`, its stdout lines
/// arriving on a channel (so the parent can wait with a timeout).
struct ChildProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ChildProc {
    fn spawn(role: &str, env: &[(&str, String)]) -> ChildProc {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args(["child_role", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line starting with `marker`; returns it.
    fn expect(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(hit) = marked(&line, marker) {
                        return hit;
                    }
                }
                Err(e) => panic!(
                    "child: no {marker:?} line ({e:?}); its output:\n{}",
                    self.output()
                ),
            }
        }
    }

    /// The newest line with `marker` among those already printed.
    fn latest(&mut self, marker: &str) -> Option<String> {
        let mut last = None;
        while let Ok(line) = self.lines.try_recv() {
            if let Some(hit) = marked(&line, marker) {
                last = Some(hit);
            }
            self.seen.push(line);
        }
        last
    }

    /// The last lines the child printed, for failure messages.
    fn output(&self) -> String {
        self.seen[self.seen.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL (what `Child::kill` sends) and reap.
    fn sigkill(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "child exited before the kill:\n{}",
            self.output()
        );
        self.child.kill().unwrap();
        let st = self.child.wait().unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "child status {st:?}");
    }

    /// Waits for a normal exit and requires status 0.
    fn success(mut self) -> Vec<String> {
        let st = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        assert!(st.success(), "child failed ({st:?}):\n{}", self.output());
        std::mem::take(&mut self.seen)
    }
}

/// The part of `line` from `marker` on. Markers may follow libtest's
/// "test child_role ... " on the same line.
fn marked(line: &str, marker: &str) -> Option<String> {
    line.find(marker).map(|i| line[i..].to_string())
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a child process; does nothing in the parent's own run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    match role.as_str() {
        "holder" => holder(),
        "writer" => writer(),
        "memlock" => memlock_child(),
        r => panic!("unknown child role {r:?}"),
    }
}

/// Opens the controller and keeps it until killed.
fn holder() {
    let (_vfio, ctrl) = open();
    println!("\nREADY {}", ctrl.info().serial);
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

/// Two queue pairs writing the writer range over and over, 63 commands in
/// flight each, until killed; pass `p` writes the pattern of `$SEED + p`,
/// so a block mixing two passes shows. Prints READY, then PROGRESS n.
fn writer() {
    let seed = env_u64("SEED");
    let vfio = Vfio::new().unwrap();
    let ctrl = Arc::new(
        Controller::open(
            &vfio,
            &bdf(),
            Options {
                io_queues: 2,
                ..Options::default()
            },
        )
        .unwrap(),
    );
    let done = Arc::new(AtomicU64::new(0));
    let half = WRITER_BLOCKS / 2;
    for t in 0..2u64 {
        let (vfio, ctrl, done) = (vfio.clone(), ctrl.clone(), done.clone());
        thread::spawn(move || {
            let pool = BufferPool::new(&vfio, 4096, 64, PageSize::Huge2M).unwrap();
            let mut qp = ctrl.create_qpair(64).unwrap();
            let (first, chunks) = (WRITER_FIRST + t * half, half / 8);
            let mut next = 0u64;
            let mut data = vec![0u8; 4096];
            loop {
                while qp.outstanding() < qp.capacity() {
                    let (lba, pass) = (first + next % chunks * 8, next / chunks);
                    next += 1;
                    let mut buf = pool.alloc().unwrap();
                    pattern::fill(&mut data, BS, lba, seed.wrapping_add(pass));
                    buf.write(0, &data).unwrap();
                    if let Err(rej) = qp.write(1, lba, 8, buf, lba) {
                        eprintln!("writer: submit: {}", rej.error);
                        std::process::exit(3);
                    }
                }
                qp.poll(64, |c| {
                    if let Err(e) = c.result {
                        eprintln!("writer: write at {} failed: {e}", c.tag);
                        std::process::exit(3);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
    }
    while done.load(Ordering::Relaxed) < 1000 {
        thread::sleep(Duration::from_millis(10));
    }
    println!("\nREADY");
    loop {
        println!("PROGRESS {}", done.load(Ordering::Relaxed));
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sets RLIMIT_MEMLOCK to `$MEMLOCK_KIB`, switches to `$RUN_AS_UID` when
/// set, then either expects the memlock error (`$EXPECT=memlock`) or runs
/// verified I/O (`$EXPECT=ok`). Prints `RESULT ...` lines.
fn memlock_child() {
    let kib = env_u64("MEMLOCK_KIB");
    let lim = libc::rlimit {
        rlim_cur: kib * 1024,
        rlim_max: kib * 1024,
    };
    // SAFETY: setrlimit reads the struct we pass.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    assert_eq!(rc, 0, "setrlimit");
    if let Ok(uid) = std::env::var("RUN_AS_UID") {
        let uid: libc::uid_t = uid.parse().unwrap();
        // SAFETY: plain credential calls; glibc applies them to every thread.
        unsafe {
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
            assert_eq!(libc::setgid(uid), 0, "setgid");
            assert_eq!(libc::setuid(uid), 0, "setuid");
        }
    }
    // SAFETY: getters without arguments.
    let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    println!("\nRESULT uid={uid} euid={euid} memlock={kib}KiB");
    match std::env::var("EXPECT").unwrap().as_str() {
        "memlock" => {
            // A region allocated once the container is ready is mapped at once.
            {
                let vfio = Vfio::new().unwrap();
                let _dev = vfio.open(&bdf()).unwrap();
                let e = vfio
                    .alloc_region(2 << 20, PageSize::Huge2M)
                    .expect_err("alloc_region under the limit");
                assert!(
                    matches!(e, framework::Error::MemlockLimit { .. }),
                    "alloc_region: {e:?}"
                );
                println!("RESULT alloc_region: {e}");
            }
            // A whole controller bring-up stops at its first queue memory.
            let vfio = Vfio::new().unwrap();
            let e = Controller::open(&vfio, &bdf(), Options::default())
                .err()
                .expect("open under a 64 KiB memlock limit");
            assert!(
                matches!(
                    e,
                    NvmeError::Framework(framework::Error::MemlockLimit { .. })
                ),
                "open: {e:?}"
            );
            let msg = e.to_string();
            for needle in ["locked-memory limit", &format!("({kib} KiB)"), "ulimit -l"] {
                assert!(msg.contains(needle), "{msg:?} does not say {needle:?}");
            }
            println!("RESULT open: {msg}");
        }
        "ok" => {
            let (vfio, ctrl) = open();
            let pool = BufferPool::new(&vfio, 64 * 1024, 16, PageSize::Huge2M).unwrap();
            let mut qp = ctrl.create_qpair(16).unwrap();
            write_and_verify(&mut qp, &pool, (CHILD_IO_LBA, 4096, 128), uid as u64 + 1);
            println!("RESULT verified 4096 blocks");
        }
        e => panic!("EXPECT={e:?}"),
    }
}

// ------------------------------------------------------------------ isolation

/// A page-aligned 4 KiB window of a heap allocation, filled with `byte`.
struct HeapPage {
    v: Vec<u8>,
    off: usize,
}

impl HeapPage {
    fn new(byte: u8) -> HeapPage {
        let v = vec![byte; 3 * 4096];
        let off = v.as_ptr().align_offset(4096);
        HeapPage { v, off }
    }

    fn addr(&self) -> u64 {
        self.v[self.off..].as_ptr() as u64
    }

    /// Bytes of the whole allocation that differ from `byte`, read with
    /// volatile loads (a device write is invisible to the compiler).
    fn changed(&self, byte: u8) -> usize {
        let p = self.v.as_ptr();
        // SAFETY: in bounds of the Vec, which we own.
        (0..self.v.len())
            .filter(|&i| unsafe { p.add(i).read_volatile() } != byte)
            .count()
    }
}

/// The kernel log (`dmesg`), through syslog(2).
fn kernel_log() -> String {
    // SAFETY: SYSLOG_ACTION_SIZE_BUFFER takes no buffer.
    let size = unsafe { libc::klogctl(10, std::ptr::null_mut(), 0) }.max(1 << 16);
    let mut buf = vec![0u8; size as usize];
    // SAFETY: SYSLOG_ACTION_READ_ALL writes at most `size` bytes into buf.
    let n = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), size) };
    assert!(n >= 0, "klogctl: {}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    String::from_utf8_lossy(&buf).into_owned()
}

/// IOMMU fault lines the kernel logged for `bdf` so far.
fn iommu_faults(bdf: &str) -> Vec<String> {
    let dev = format!("Request device [{}]", &bdf[5..]);
    kernel_log()
        .lines()
        .filter(|l| l.contains("DMAR: [DMA") && l.contains(&dev))
        .map(str::to_string)
        .collect()
}

/// Waits (1 s at most) for the kernel to log an IOMMU fault of the device
/// on the page of `iova`, in direction `dir` ("Write": the device writing
/// memory, "Read": reading it); returns the log line.
fn iommu_fault_logged(dir: &str, iova: u64) -> Option<String> {
    let (kind, page) = (
        format!("DMAR: [DMA {dir}"),
        format!("fault addr {:#x}", iova & !0xfff),
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        if let Some(l) = kernel_log()
            .lines()
            .find(|l| l.contains(&kind) && l.contains(&page))
        {
            return Some(l.to_string());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A command whose data pointer the IOMMU does not map: any completion is
/// accepted (see the module doc), and so is a refusal by the driver before
/// the device sees the command. Prints what the device and the IOMMU said;
/// returns whether the command reached the device.
fn report_blocked(what: &str, dir: &str, iova: u64, r: &Result<(), NvmeError>) -> bool {
    let how = match r {
        Ok(()) => "the device reported success".to_string(),
        Err(NvmeError::Status(s)) => format!("device error {s}"),
        Err(NvmeError::Timeout { .. }) => "timed out (handled by the driver)".to_string(),
        Err(e) => {
            println!("{what}: refused by the driver: {e}");
            return false;
        }
    };
    let fault = iommu_fault_logged(dir, iova)
        .unwrap_or_else(|| "no fault line (dropped by QEMU while one was pending)".into());
    println!("{what}: {how}; IOMMU: {}", fault.trim());
    true
}

#[test]
fn iommu_confines_admin_dma_to_mapped_regions() {
    let faults = iommu_faults(&bdf()).len();
    let (vfio, ctrl) = open();
    let heap = HeapPage::new(0xa5);
    assert!(
        vfio.translate(heap.addr() as *const u8).is_none(),
        "heap page inside a mapped region"
    );
    // Identify Controller would write 4 KiB of identify data at prp1.
    // SAFETY: the PRP names a heap page outside every mapping on purpose;
    // the test checks the IOMMU keeps the device from writing it.
    let promise = unsafe { UncheckedDma::promise() };
    let r = ctrl
        .admin_command_raw(SubmissionEntry::identify_controller(heap.addr()), &promise)
        .map(|_| ());
    report_blocked(
        &format!("identify into heap page {:#x}", heap.addr()),
        "Write",
        heap.addr(),
        &r,
    );
    assert_eq!(
        heap.changed(0xa5),
        0,
        "the device wrote process memory outside the mapped regions"
    );

    // A region that was mapped and is gone: its IOVA faults too.
    let pool = BufferPool::new(&vfio, 4096, 512, PageSize::Huge2M).unwrap();
    let stale = pool.region().iova_at(0).get();
    drop(pool);
    // The same promise: the IOVA belonged to a region that is unmapped
    // now; nothing of ours can be there.
    let r = ctrl
        .admin_command_raw(SubmissionEntry::identify_controller(stale), &promise)
        .map(|_| ());
    report_blocked(
        &format!("identify into freed region IOVA {stale:#x}"),
        "Write",
        stale,
        &r,
    );

    // The controller still works: identify into a mapped pool buffer.
    let pool = BufferPool::new(&vfio, 4096, 4, PageSize::Huge2M).unwrap();
    let mut buf = pool.alloc().unwrap();
    buf.fill(0);
    ctrl.admin_command_buf(SubmissionEntry::identify_controller(0), &mut buf)
        .unwrap();
    let mut raw = vec![0u8; 4096];
    buf.read(0, &mut raw).unwrap();
    assert_eq!(
        IdentifyController::from_bytes(&raw).unwrap().serial(),
        "fastlane0001"
    );
    assert_eq!(heap.changed(0xa5), 0, "heap page changed later");
    assert!(
        iommu_faults(&bdf()).len() > faults,
        "the IOMMU logged no fault of the device"
    );
    println!("csts after the faults: {:?}", ctrl.csts());
}

#[test]
fn iommu_confines_io_dma_to_mapped_regions() {
    let faults = iommu_faults(&bdf()).len();
    let (vfio, ctrl) = open();
    let pool = BufferPool::new(&vfio, 4096, 4, PageSize::Huge2M).unwrap();
    let foreign = BufferPool::new_unmapped(4096, 4, PageSize::Small).unwrap();
    let mut qp = ctrl.create_qpair(8).unwrap();
    let (lba, other) = (ISOLATION_LBA, ISOLATION_LBA + 8);
    let mut buf = write_pattern(&mut qp, pool.alloc().unwrap(), lba, 8, 21);
    buf = write_pattern(&mut qp, buf, other, 8, 22);

    // Read into memory no mapping covers (IOVA == its address): the device
    // faults and the buffer keeps its bytes.
    let mut f = foreign.alloc().unwrap();
    f.fill(0x5a);
    let iova = f.iova();
    let (f, r) = io(&mut qp, false, lba, 8, f);
    assert!(
        matches!(r, Err(NvmeError::ForeignBuffer)),
        "an unmapped buffer reached the device: {r:?}"
    );
    let mut got = vec![0u8; 4096];
    f.read(0, &mut got).unwrap();
    let changed = got.iter().filter(|&&b| b != 0x5a).count();
    assert_eq!(
        changed, 0,
        "the device wrote a buffer outside the mapped regions"
    );
    let mut reached = report_blocked(
        &format!("read into unmapped buffer at IOVA {iova}"),
        "Write",
        iova.get(),
        &r,
    );

    // Write from unmapped memory holding the pattern of `other`: the device
    // cannot read it, so the pattern must not reach the disk.
    let mut f = f;
    let mut data = vec![0u8; 4096];
    pattern::fill(&mut data, BS, other, 23);
    f.write(0, &data).unwrap();
    let iova = f.iova();
    let (_f, r) = io(&mut qp, true, other, 8, f);
    assert!(matches!(r, Err(NvmeError::ForeignBuffer)), "{r:?}");
    let (buf, disk) = read_blocks(&mut qp, buf, other, 8);
    assert!(
        pattern::check(&disk, BS, other, 23).is_err(),
        "the device read memory outside the mapped regions"
    );
    reached |= report_blocked(
        &format!("write from unmapped buffer at IOVA {iova}"),
        "Read",
        iova.get(),
        &r,
    );

    // The queue pair goes on working.
    let (buf, disk) = read_blocks(&mut qp, buf, lba, 8);
    assert_eq!(pattern::check(&disk, BS, lba, 21), Ok(()));
    write_pattern(&mut qp, buf, other, 8, 24);
    assert!(
        !reached || iommu_faults(&bdf()).len() > faults,
        "the IOMMU logged no fault of the device"
    );
    println!("queue pair stats: {:?}", qp.stats());
}

/// A buffer mapped in another container carries an IOVA that, in this
/// controller's container, may belong to an unrelated region. The driver
/// refuses it (`NvmeError::ForeignBuffer`), so the device never writes the
/// other region. Needs FASTLANE_IGB0 bound to vfio-pci for the second container.
#[test]
fn buffer_of_another_container_is_refused() {
    let (vfio, ctrl) = open();
    let mut qp = ctrl.create_qpair(8).unwrap();
    let victims = BufferPool::new(&vfio, 4096, 512, PageSize::Huge2M).unwrap();
    let other = Vfio::new().unwrap();
    let _nic = other
        .open(&std::env::var("FASTLANE_IGB0").unwrap())
        .expect("FASTLANE_IGB0 bound to vfio-pci");
    let victim = victims.alloc().unwrap();
    // Pools of the other container until one sits at the victim's IOVA.
    let mut pools = Vec::new();
    let mut twin = None;
    for _ in 0..32 {
        let p = BufferPool::new(&other, 4096, 512, PageSize::Huge2M).unwrap();
        let bufs: Vec<DmaBuf> = (0..512).map(|_| p.alloc().unwrap()).collect();
        twin = bufs.into_iter().find(|b| b.iova() == victim.iova());
        pools.push(p);
        if twin.is_some() {
            break;
        }
    }
    let Some(mut twin) = twin else {
        println!("no buffer of the other container shares IOVA {} (identity mapping): nothing to confuse", victim.iova());
        return;
    };
    let mut victim = victim;
    victim.fill(0x22);
    twin.fill(0x11);
    let buf = write_pattern(&mut qp, victims.alloc().unwrap(), ISOLATION_LBA, 8, 31);
    drop(buf);
    let r = qp.read(1, ISOLATION_LBA, 8, twin, 0);
    let result = match r {
        Err(rej) => Err(rej.error),
        Ok(()) => {
            qp.submit();
            let mut out = None;
            while out.is_none() {
                qp.poll(1, |c| out = Some(c.result));
            }
            out.unwrap()
        }
    };
    let mut got = vec![0u8; 4096];
    victim.read(0, &mut got).unwrap();
    let changed = got.iter().filter(|&&b| b != 0x22).count();
    println!("read into a buffer of another container: {result:?}; unrelated buffer at the same IOVA: {changed} bytes changed");
    assert_eq!(
        changed, 0,
        "a read into another container's buffer overwrote an unrelated buffer"
    );
    assert!(
        result.is_err(),
        "a buffer of another container was accepted"
    );
}

// -------------------------------------------------------------- processes

#[test]
fn a_device_held_by_another_process_is_busy() {
    let mut holder = ChildProc::spawn("holder", &[]);
    holder.expect("READY", Duration::from_secs(60));
    let vfio = Vfio::new().unwrap();
    match Controller::open(&vfio, &bdf(), Options::default()) {
        Ok(_) => panic!("opened a controller another process holds"),
        Err(e) => {
            let msg = e.to_string();
            println!("open while held: {msg}");
            assert!(
                matches!(e, NvmeError::Framework(framework::Error::Busy(_))),
                "{e:?}"
            );
            assert!(msg.contains("busy"), "{msg:?}");
            assert!(msg.contains(&bdf()), "{msg:?}");
        }
    }
    assert!(matches!(vfio.open(&bdf()), Err(framework::Error::Busy(_))));
    holder.sigkill();
    // Released with its process: this one opens it and runs I/O.
    let ctrl = Controller::open(&vfio, &bdf(), Options::default()).unwrap();
    let pool = BufferPool::new(&vfio, 4096, 2, PageSize::Huge2M).unwrap();
    let mut qp = ctrl.create_qpair(4).unwrap();
    let buf = write_pattern(&mut qp, pool.alloc().unwrap(), CHILD_IO_LBA, 8, 5);
    let (_, data) = read_blocks(&mut qp, buf, CHILD_IO_LBA, 8);
    assert_eq!(pattern::check(&data, BS, CHILD_IO_LBA, 5), Ok(()));
}

#[test]
fn sigkill_in_the_middle_of_io_leaves_the_device_usable() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let free_before = PageSize::Huge2M.free_pages();
    let mut writer = ChildProc::spawn("writer", &[("SEED", seed.to_string())]);
    writer.expect("READY", Duration::from_secs(120));
    thread::sleep(Duration::from_secs(1));
    let progress = writer
        .latest("PROGRESS")
        .unwrap_or_else(|| writer.expect("PROGRESS", Duration::from_secs(5)));
    writer.sigkill();
    let bdf = bdf();
    let cmd = sysfs_command(&bdf);
    println!("writer killed at {progress:?} (seed {seed}); COMMAND {cmd:#06x}");
    assert_eq!(cmd & 0x4, 0, "bus mastering still on after the owner died");
    let t = Instant::now();
    while PageSize::Huge2M.free_pages() != free_before && t.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        PageSize::Huge2M.free_pages(),
        free_before,
        "hugepages of the killed process not returned"
    );

    // The next process: open (resets the controller), look at what the
    // writer left, then write and verify the whole range.
    let (vfio, ctrl) = open();
    let pool = BufferPool::new(&vfio, 64 * 1024, 32, PageSize::Huge2M).unwrap();
    let mut qp = ctrl.create_qpair(32).unwrap();
    let range = (WRITER_FIRST, WRITER_BLOCKS, 128);
    let (mut written, mut torn, mut last_pass) = (0u64, 0u64, 0u64);
    sweep(&mut qp, &pool, false, range, 0, |lba, data| {
        for (i, block) in data.chunks(BS).enumerate() {
            let lba = lba + i as u64;
            let head_lba = u64::from_le_bytes(block[..8].try_into().unwrap());
            let pass = u64::from_le_bytes(block[8..16].try_into().unwrap()).wrapping_sub(seed);
            if head_lba == lba && pass < 1 << 20 {
                written += 1;
                last_pass = last_pass.max(pass);
                if pattern::check_block(block, lba, seed.wrapping_add(pass)).is_err() {
                    torn += 1;
                }
            }
        }
    });
    println!("after the kill: {written} of {WRITER_BLOCKS} blocks carry a writer pattern (passes 0..={last_pass}), {torn} torn");
    assert!(written > 0, "the writer wrote nothing before it was killed");
    assert_eq!(
        torn, 0,
        "blocks with the writer's header but other contents"
    );
    write_and_verify(&mut qp, &pool, range, seed ^ 0xffff);
    println!("after restart: wrote and verified {WRITER_BLOCKS} blocks");
}

/// Gives `/dev/vfio/<group>` to [`USER_ID`] and puts it back when dropped.
struct GroupOwner {
    path: String,
    uid: u32,
    gid: u32,
    mode: u32,
}

impl GroupOwner {
    fn give(bdf: &str) -> GroupOwner {
        let path = format!("/dev/vfio/{}", iommu_group(bdf));
        let m = fs::metadata(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(USER_ID), Some(USER_ID)).unwrap();
        GroupOwner {
            path,
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        }
    }
}

impl Drop for GroupOwner {
    fn drop(&mut self) {
        let _ = std::os::unix::fs::chown(&self.path, Some(self.uid), Some(self.gid));
        let _ = fs::set_permissions(&self.path, fs::Permissions::from_mode(self.mode));
    }
}

fn memlock_run(kib: u64, uid: Option<u32>, expect: &str) -> Vec<String> {
    let mut env = vec![
        ("MEMLOCK_KIB", kib.to_string()),
        ("EXPECT", expect.to_string()),
    ];
    if let Some(uid) = uid {
        env.push(("RUN_AS_UID", uid.to_string()));
    }
    let child = ChildProc::spawn("memlock", &env);
    let lines: Vec<String> = child
        .success()
        .iter()
        .filter_map(|l| marked(l, "RESULT"))
        .collect();
    for l in &lines {
        println!("  {l}");
    }
    lines
}

#[test]
fn memlock_limit_too_small_says_so() {
    let _owner = GroupOwner::give(&bdf());
    // Root has CAP_IPC_LOCK: VFIO does not count its pinned pages.
    println!("root, memlock 64 KiB:");
    memlock_run(64, None, "ok");
    println!("uid {USER_ID}, memlock 64 KiB:");
    let lines = memlock_run(64, Some(USER_ID), "memlock");
    assert!(
        lines.iter().any(|l| l.starts_with("RESULT open:")),
        "{lines:?}"
    );
    println!("uid {USER_ID}, memlock 64 MiB:");
    let lines = memlock_run(64 * 1024, Some(USER_ID), "ok");
    assert!(
        lines.iter().any(|l| l.contains(&format!("uid={USER_ID}"))),
        "{lines:?}"
    );
}
