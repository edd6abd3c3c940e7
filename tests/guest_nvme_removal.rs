//! NVMe surprise removal and hot add (issue 10, part 1) against QEMU's
//! controller through real VFIO. The guest has a second NVMe behind a
//! hot-pluggable PCIe root port (`FASTLANE_NVME_HOTPLUG`); the host unplugs
//! it over QMP (`device_del`) while reads run, when this test prints a token
//! (tests/guest/hotplug-host.sh), and plugs it back in later. Checked: the
//! process does not crash; every command submitted ends exactly once, with
//! its data or `Removed`, within a bounded time; new submissions are refused
//! with `Removed` and hand their buffer back; no buffer is lost; the kernel
//! finishes the removal (we let the device go); after the device comes
//! back, the old container refuses it (`Error::Released`: it let the group
//! go) while its pool stays valid memory, and a new container opens it and
//! reads back, verified, what was written before the removal. And
//! `nvme_read` unplugged mid-run reports the removal and exits with status 3
//! and what it completed.
//! Built with `--features guest`, run by tests/guest/run-all.sh.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use fastlane::framework::{BufferPool, PageSize, Vfio};
use fastlane::nvme::{pattern, Controller, NvmeError, Options};

const SEED: u64 = 0x5eed_0f4e;
const BLOCKS: u64 = 256;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set: run through vm/test.sh"))
}

/// Asks the host (tests/guest/hotplug-host.sh watches the console) for
/// an unplug or a plug-in. Straight to stdout, past the test harness's
/// output capture, which would hold the line until the test ended.
fn ask_host(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{what}: after {:?}", start.elapsed());
}

#[test]
fn removal_under_load_ends_every_command_and_the_device_comes_back() {
    let addr = env("FASTLANE_NVME_HOTPLUG");
    let token = env("NVME_HOTPLUG_TOKEN");
    let sysfs = format!("/sys/bus/pci/devices/{addr}");
    let vfio = Vfio::new().unwrap();
    let ctrl = Controller::open(&vfio, &addr, Options { io_queues: 2, ..Options::default() }).unwrap();
    let bs = ctrl.namespace(1).unwrap().block_size as usize;
    let pool = BufferPool::new(&vfio, 8 * bs, 64, PageSize::Huge2M).unwrap();
    let mut qp = ctrl.create_qpair(32).unwrap();

    // Data to find again after the device comes back.
    for lba in (0..BLOCKS).step_by(8) {
        let mut data = vec![0u8; 8 * bs];
        pattern::fill(&mut data, bs, lba, SEED);
        let mut buf = pool.alloc().unwrap();
        buf.write(0, &data).unwrap();
        qp.write(1, lba, 8, buf, lba).map_err(|r| r.error).unwrap();
        qp.submit();
        let mut done = false;
        while !done {
            qp.poll(1, |c| {
                c.result.unwrap();
                done = true;
            });
        }
    }

    // Reads at queue depth 16 until the controller is gone.
    let mut in_flight: HashSet<u64> = HashSet::new();
    let (mut next, mut ok, mut removed, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let mut asked = false;
    let mut unseen = 0u64;
    let start = Instant::now();
    let mut removed_at = None;
    loop {
        while in_flight.len() < 16 {
            let Ok(buf) = pool.alloc() else { break };
            match qp.read(1, (next * 8) % BLOCKS, 8, buf, next) {
                Ok(()) => {
                    in_flight.insert(next);
                    next += 1;
                }
                Err(rej) => {
                    assert!(rej.error.is_removed(), "refused with {}", rej.error);
                    assert!(rej.buf.is_some(), "a refused submission hands its buffer back");
                    refused += 1;
                    break;
                }
            }
        }
        qp.submit();
        qp.poll(32, |c| {
            assert!(in_flight.remove(&c.tag), "tag {} completed twice or never submitted", c.tag);
            assert!(c.buf.is_some(), "the buffer comes back");
            match c.result {
                Ok(()) => ok += 1,
                Err(e) if e.is_removed() => removed += 1,
                Err(e) => panic!("command {} ended with {e}", c.tag),
            }
        });
        if !asked && ok >= 500 {
            // Queue reads the device will never see (no doorbell yet), ask
            // for the unplug and wait for the notice without polling: they
            // must end with `Removed`, like anything the device dropped.
            let mut late = 0;
            while in_flight.len() < qp.capacity() {
                let buf = pool.alloc().unwrap();
                qp.read(1, (next * 8) % BLOCKS, 8, buf, next).map_err(|r| r.error).unwrap();
                in_flight.insert(next);
                next += 1;
                late += 1;
            }
            ask_host(&format!("NVME-HOTPLUG-DEL {token}"));
            asked = true;
            let t = Instant::now();
            while !ctrl.removal().is_removed() {
                assert!(t.elapsed() < Duration::from_secs(60), "no removal notice within 60 s");
                std::thread::sleep(Duration::from_millis(1));
            }
            println!("removal notice {:?} after the ask; {late} reads queued unseen", t.elapsed());
            unseen = late;
        }
        if ctrl.removal().is_removed() && removed_at.is_none() {
            removed_at = Some(Instant::now());
        }
        if removed_at.is_some() && in_flight.is_empty() && refused > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no removal seen (ok {ok}, removed {removed})");
    }
    let removed_at = removed_at.unwrap();
    println!(
        "removal: {ok} reads done, {removed} ended Removed, {refused} refused; outstanding ended {:?} after the notice",
        removed_at.elapsed()
    );
    assert!(ok >= 500);
    assert!(removed >= unseen && unseen > 0, "the {unseen} unseen reads end Removed ({removed})");
    // Everything after the removal is refused the same way.
    let rej = qp.read(1, 0, 8, pool.alloc().unwrap(), 1 << 40).unwrap_err();
    assert!(rej.error.is_removed());
    drop(rej);
    assert!(matches!(ctrl.reset(), Err(NvmeError::Removed)));
    assert!(ctrl.create_qpair(4).is_err());
    let t = Instant::now();
    drop(qp);
    drop(ctrl);
    assert!(t.elapsed() < Duration::from_secs(2), "closing a removed controller waited {:?}", t.elapsed());
    assert_eq!(pool.available(), 64, "no buffer lost");

    // We let go: the kernel finishes the removal; then it comes back.
    wait_until("device gone from the bus", Duration::from_secs(30), || !Path::new(&sysfs).exists());
    assert!(Controller::open(&vfio, &addr, Options::default()).is_err());
    plug_back_in(&addr, &token);
    // The old container let the device's group go: it refuses the device
    // back with a clear error; a new container takes it.
    let again = Controller::open(&vfio, &addr, Options::default());
    assert!(
        matches!(again, Err(NvmeError::Framework(fastlane::framework::Error::Released(_)))),
        "the old container must refuse the returning device: {:?}",
        again.err()
    );
    // The old pool is still valid memory.
    let mut old = pool.alloc().unwrap();
    old.fill(0x3c);
    let mut back = vec![0u8; 8 * bs];
    old.read(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x3c));
    drop(old);
    let vfio2 = Vfio::new().unwrap();
    let ctrl = Controller::open(&vfio2, &addr, Options::default()).unwrap();
    let pool2 = BufferPool::new(&vfio2, 8 * bs, 8, PageSize::Huge2M).unwrap();
    // A buffer of the old container is foreign to the new one.
    let mut qp = ctrl.create_qpair(8).unwrap();
    let foreign = qp.read(1, 0, 8, pool.alloc().unwrap(), 0).unwrap_err();
    assert!(matches!(foreign.error, NvmeError::ForeignBuffer) && foreign.buf.is_some());
    drop(foreign);
    for lba in (0..BLOCKS).step_by(8) {
        let mut buf = pool2.alloc().unwrap();
        buf.fill(0xee);
        qp.read(1, lba, 8, buf, lba).map_err(|r| r.error).unwrap();
        qp.submit();
        let mut got = None;
        while got.is_none() {
            qp.poll(1, |c| got = Some(c));
        }
        let c = got.unwrap();
        c.result.unwrap();
        let mut data = vec![0u8; 8 * bs];
        c.buf.unwrap().read(0, &mut data).unwrap();
        pattern::check(&data, bs, lba, SEED).unwrap_or_else(|(b, o)| panic!("lba {lba}: block {b} byte {o}"));
    }
    drop(qp);
    drop(ctrl);
    assert_eq!(pool.available(), 64, "no buffer of the old pool lost");
    println!("after the hot add: refused by the old container, {BLOCKS} blocks read back verified through a new one");
}

/// Waits for the controller to come back after `NVME-HOTPLUG-ADD` and binds
/// it to vfio-pci again.
fn plug_back_in(addr: &str, token: &str) {
    let sysfs = format!("/sys/bus/pci/devices/{addr}");
    wait_until("device gone from the bus", Duration::from_secs(30), || !Path::new(&sysfs).exists());
    ask_host(&format!("NVME-HOTPLUG-ADD {token}"));
    wait_until("device back on the bus", Duration::from_secs(30), || Path::new(&sysfs).exists());
    let bind = std::process::Command::new("hugepages.sh").args(["bind", addr]).status().unwrap();
    assert!(bind.success());
}

#[test]
fn nvme_read_reports_the_removal_and_exits_with_what_it_completed() {
    let addr = env("FASTLANE_NVME_HOTPLUG");
    let token = env("NVME_HOTPLUG_TOKEN");
    let child = std::process::Command::new("/bin/nvme_read")
        .args(["--device", &addr, "--time", "60", "--queue-depth", "8", "--json", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    ask_host(&format!("NVME-HOTPLUG-DEL {token}"));
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("nvme_read ended {:?} after the ask, status {:?}: {stdout}", t.elapsed(), out.status.code());
    assert_eq!(out.status.code(), Some(3), "status 3: a controller was removed");
    assert!(t.elapsed() < Duration::from_secs(30), "it stopped at the removal, not at --time");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(json["ios"].as_u64().unwrap() > 0, "what completed before is reported");
    assert!(json["removed"].as_u64().unwrap() > 0, "the I/Os the removal ended are reported");
    assert_eq!(json["errors"].as_u64(), Some(0));
    plug_back_in(&addr, &token);
}
