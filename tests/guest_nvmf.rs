//! The NVMe/TCP target (apps/nvmf-tcp, `/bin/nvmf-tcp` in the guest) on
//! QEMU's NVMe controller through real VFIO, against Linux's own nvme-tcp
//! initiator and against a std-only test host (apps/nvmf-tcp/tests/client)
//! that can misbehave. Needs the fabrics modules run.sh puts in
//! /lib/modules-fabrics and the NVMe controller bound to vfio-pci.

#[path = "../apps/nvmf-tcp/tests/client/mod.rs"]
mod client;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::{pattern, Client, Cmd};
use fastlane::framework::{BufferPool, PageSize, Vfio};
use fastlane::nvme::{Controller, Options};

const NQN: &str = "nqn.2026-01.io.fastlane:guest";
const ADDR: &str = "127.0.0.1:4420";
const TARGET: &str = "/bin/nvmf-tcp";

fn bdf() -> String {
    std::env::var("FASTLANE_NVME").expect("FASTLANE_NVME not set: run in the guest")
}

fn sh(cmd: &str) -> (bool, String) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    let mut s = String::from_utf8_lossy(&o.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

/// Fabrics modules (dependencies first, already loaded ones skipped) and
/// loopback up.
fn setup() {
    let order = fs::read_to_string("/lib/modules-fabrics/ORDER").expect("no /lib/modules-fabrics (vm/run.sh)");
    for m in order.split_whitespace() {
        let (ok, out) = sh(&format!("insmod /lib/modules-fabrics/{m}.ko"));
        assert!(ok || out.contains("exists"), "insmod {m}: {out}");
    }
    assert!(sh("ip link set lo up").0);
    assert!(fs::metadata("/dev/nvme-fabrics").is_ok(), "/dev/nvme-fabrics missing");
}

struct Target(Child);

impl Target {
    fn start(extra: &[&str]) -> Target {
        let child = Command::new(TARGET)
            .args(["--listen", ADDR, "--nqn", NQN, "--device", &bdf(), "--io-queues", "2", "--until-stdin-closes"])
            .args(extra)
            .stdin(Stdio::piped())
            .spawn()
            .expect("start nvmf-tcp");
        let t = Target(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(ADDR).is_err() {
            assert!(start.elapsed() < Duration::from_secs(60), "target never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    /// Clean stop (stdin closed); returns whether it exited 0.
    fn stop(mut self) -> bool {
        drop(self.0.stdin.take());
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.0.try_wait() {
                return st.success();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.0.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            drop(self.0.stdin.take());
            std::thread::sleep(Duration::from_secs(2));
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Connects the kernel initiator; returns the controller instance.
fn kernel_connect(extra: &str) -> u32 {
    let mut f = OpenOptions::new().read(true).write(true).open("/dev/nvme-fabrics").unwrap();
    let opts = format!("transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn={NQN}{extra}");
    f.write_all(opts.as_bytes()).unwrap_or_else(|e| panic!("connect {opts}: {e}"));
    let mut reply = String::new();
    f.read_to_string(&mut reply).unwrap();
    let inst = reply
        .split([',', '\n'])
        .find_map(|kv| kv.strip_prefix("instance="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("reply {reply:?}"));
    eprintln!("kernel initiator: {}", reply.trim());
    inst
}

fn kernel_disconnect(inst: u32) {
    fs::write(format!("/sys/class/nvme/nvme{inst}/delete_controller"), "1").unwrap();
}

/// The block device of instance `inst`, once it appears.
fn block_device(inst: u32) -> String {
    let start = Instant::now();
    loop {
        for e in fs::read_dir("/sys/block").unwrap().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            // nvme<N>n1 (native multipath may also name a hidden nvme<N>c<M>n1).
            if n.starts_with(&format!("nvme{inst}n")) && !n.contains('c') && fs::metadata(format!("/dev/{n}")).is_ok() {
                return n;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no block device for nvme{inst}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dd(args: &str) {
    let (ok, out) = sh(&format!("dd {args} 2>&1"));
    assert!(ok, "dd {args}: {out}");
}

/// Namespace 1's size in bytes and block size, via the test host.
fn ns_size() -> (u64, u32) {
    let mut a = Client::admin_queue(ADDR, NQN, "nqn.test.size", 0).unwrap();
    let (c, id) = a.identify(0, 1).unwrap();
    assert!(c.ok());
    let blocks = u64::from_le_bytes(id[0..8].try_into().unwrap());
    let bs = 1u32 << id[130];
    (blocks * bs as u64, bs)
}

/// Reads `len` bytes at `offset` through fastlane's own NVMe path.
fn read_direct(offset: u64, len: usize) -> Vec<u8> {
    let vfio = Vfio::new().unwrap();
    let ctrl = Controller::open(&vfio, &bdf(), Options::default()).unwrap();
    let bs = ctrl.namespaces()[0].block_size as usize;
    let pool = BufferPool::new(&vfio, 64 << 10, 2, PageSize::Huge2M).unwrap();
    let mut qp = ctrl.create_qpair(8).unwrap();
    let mut out = Vec::with_capacity(len);
    let mut buf = pool.alloc().unwrap();
    while out.len() < len {
        let n = (len - out.len()).min(64 << 10);
        let lba = (offset as usize + out.len()) / bs;
        qp.read(1, lba as u64, (n / bs) as u32, buf, 1).map_err(|r| r.error).unwrap();
        qp.submit();
        let start = Instant::now();
        let mut got = None;
        while got.is_none() {
            qp.poll(1, |c| {
                c.result.unwrap();
                got = c.buf;
            });
            assert!(start.elapsed() < Duration::from_secs(30));
        }
        buf = got.unwrap();
        let mut chunk = vec![0u8; n];
        buf.read(0, &mut chunk).unwrap();
        out.extend_from_slice(&chunk);
    }
    out
}

const MIB: usize = 1 << 20;

#[test]
fn kernel_initiator_writes_and_reads_through_the_target() {
    setup();
    let target = Target::start(&[]);
    let (size, _bs) = ns_size();
    let inst = kernel_connect("");
    let dev = block_device(inst);
    let sectors: u64 = fs::read_to_string(format!("/sys/block/{dev}/size")).unwrap().trim().parse().unwrap();
    assert_eq!(sectors * 512, size, "block device size");
    // 4 MiB of a known pattern at 1 MiB, direct I/O both ways.
    let data = pattern(2048, 8192, 512, 0x5eed);
    fs::write("/tmp/nvmf-pattern", &data).unwrap();
    let t0 = Instant::now();
    dd(&format!("if=/tmp/nvmf-pattern of=/dev/{dev} bs=64k seek=16 oflag=direct conv=notrunc"));
    dd(&format!("if=/dev/{dev} of=/tmp/nvmf-back bs=64k skip=16 count=64 iflag=direct"));
    eprintln!("4 MiB written and read back through the kernel initiator in {:?}", t0.elapsed());
    assert!(fs::read("/tmp/nvmf-back").unwrap() == data, "read back differs");
    // Larger than MDTS (128 KiB) requests are split by the initiator.
    dd(&format!("if=/dev/{dev} of=/tmp/nvmf-back bs=1M skip=1 count=4 iflag=direct"));
    assert!(fs::read("/tmp/nvmf-back").unwrap() == data, "1 MiB reads differ");
    kernel_disconnect(inst);
    assert!(target.stop(), "target did not exit cleanly");
    // The same range through fastlane's own NVMe path.
    assert!(read_direct(MIB as u64, 4 * MIB) == data, "direct read differs");
    let _ = fs::remove_file("/tmp/nvmf-pattern");
    let _ = fs::remove_file("/tmp/nvmf-back");
}

#[test]
fn two_hosts_keep_alive_bad_peers_and_restart() {
    setup();
    let target = Target::start(&[]);
    let inst = kernel_connect(",reconnect_delay=1,ctrl_loss_tmo=60");
    let dev = block_device(inst);
    let kdata = pattern(16384, 2048, 512, 1);
    fs::write("/tmp/nvmf-k", &kdata).unwrap();
    dd(&format!("if=/tmp/nvmf-k of=/dev/{dev} bs=64k seek=128 oflag=direct conv=notrunc"));

    // A second host at the same time, on its own controller and queue.
    let mut a = Client::admin_queue(ADDR, NQN, "nqn.test.second", 0).unwrap();
    let mut q = Client::connect(ADDR, (false, false)).unwrap();
    assert!(q.fabrics_connect(1, 31, a.cntlid, NQN, "nqn.test.second", 0).unwrap().ok());
    let cdata = pattern(32768, 256, 512, 2);
    assert!(q.write(1, 32768, &cdata, 512, false).unwrap().ok());
    dd(&format!("if=/dev/{dev} of=/tmp/nvmf-back bs=64k skip=128 count=16 iflag=direct"));
    assert!(fs::read("/tmp/nvmf-back").unwrap() == kdata);
    let (c, back) = q.read(1, 32768, 256, 512).unwrap();
    assert!(c.ok() && back == cdata);
    assert!(a.exec(Cmd::new(0x18, 0), &[]).unwrap().0.ok());

    // Keep-alive expiry: a host that stops sending loses its controller.
    let mut ka = Client::admin_queue(ADDR, NQN, "nqn.test.silent", 1000).unwrap();
    let mut kq = Client::connect(ADDR, (false, false)).unwrap();
    assert!(kq.fabrics_connect(1, 31, ka.cntlid, NQN, "nqn.test.silent", 0).unwrap().ok());
    assert!(ka.closed_within(Duration::from_secs(15)), "keep-alive expiry did not close the admin queue");
    assert!(kq.closed_within(Duration::from_secs(15)), "I/O queue of an expired controller still open");

    // Bad peers: each is cut off (C2HTermReq or error status), no panic.
    let mut w = Client::connect(ADDR, (false, false)).unwrap();
    w.raw().write_all(&[4, 0, 60, 0, 60, 0, 0, 0]).unwrap(); // wrong HLEN
    assert_eq!(w.recv().unwrap().ty, 3);
    assert!(w.closed_within(Duration::from_secs(5)));
    let mut u = Client::connect(ADDR, (false, false)).unwrap();
    u.raw().write_all(&[0x0C, 0, 24, 0, 24, 0, 0, 0]).unwrap(); // unknown type
    assert_eq!(u.recv().unwrap().ty, 3);
    let mut p = Client::connect(ADDR, (false, false)).unwrap();
    p.raw().write_all(&[4, 0, 72, 0, 0xFF, 0xFF, 0xFF, 0x7F]).unwrap(); // PLEN 2 GiB
    assert!(p.closed_within(Duration::from_secs(5)));
    let mut t = Client::connect(ADDR, (false, false)).unwrap();
    t.raw().write_all(&[4, 0, 72, 0, 72, 0, 0, 0, 1, 2, 3]).unwrap(); // truncated, then gone
    drop(t);
    let mut g = std::net::TcpStream::connect(ADDR).unwrap();
    g.write_all(&[0xFF; 200]).unwrap(); // garbage instead of ICReq
    drop(g);
    // Vanishing mid-transfer: half the data of an R2T, then gone.
    let mut m = Client::connect(ADDR, (false, false)).unwrap();
    assert!(m.fabrics_connect(2, 31, a.cntlid, NQN, "nqn.test.second", 0).unwrap().ok());
    let cid = m.send_cmd(Cmd::new(0x01, 1).sgl(0, 65536, 0x5A).cdw(10, 60000).cdw(12, 127), &[]).unwrap();
    let r2t = m.recv().unwrap();
    assert_eq!(r2t.ty, 9);
    m.send_h2c(cid, u16::from_le_bytes([r2t.header[10], r2t.header[11]]), 0, &[1u8; 4096], false).unwrap();
    drop(m);
    // Too many queues: 2 granted by default, queue 3 refused.
    let mut x = Client::connect(ADDR, (false, false)).unwrap();
    let c = x.fabrics_connect(3, 31, a.cntlid, NQN, "nqn.test.second", 0).unwrap();
    assert_eq!((c.sct(), c.sc()), (1, 0x82), "{c:?}");
    // Unknown admin and I/O opcodes get Invalid Command Opcode.
    assert_eq!(a.exec(Cmd::new(0xC1, 0), &[]).unwrap().0.sc(), 0x01);
    assert_eq!(q.exec(Cmd::new(0x7E, 1), &[]).unwrap().0.sc(), 0x01);
    // The other hosts still work.
    let (c, back) = q.read(1, 32768, 256, 512).unwrap();
    assert!(c.ok() && back == cdata);
    dd(&format!("if=/dev/{dev} of=/tmp/nvmf-back bs=64k skip=128 count=16 iflag=direct"));
    assert!(fs::read("/tmp/nvmf-back").unwrap() == kdata);
    drop((a, q, x));

    // Restart: the kernel initiator reconnects and reads its data again.
    assert!(target.stop(), "target did not exit cleanly");
    std::thread::sleep(Duration::from_secs(1));
    let target = Target::start(&[]);
    let start = Instant::now();
    let mut ok = false;
    while start.elapsed() < Duration::from_secs(60) {
        let (r, _) = sh(&format!("dd if=/dev/{dev} of=/tmp/nvmf-back bs=64k skip=128 count=16 iflag=direct 2>&1"));
        if r && fs::read("/tmp/nvmf-back").unwrap() == kdata {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(ok, "no I/O after the target restarted");
    eprintln!("kernel initiator reconnected after {:?}", start.elapsed());
    kernel_disconnect(inst);
    assert!(target.stop());
    let _ = fs::remove_file("/tmp/nvmf-k");
    let _ = fs::remove_file("/tmp/nvmf-back");
}

#[test]
fn kernel_initiator_with_header_and_data_digests() {
    setup();
    let target = Target::start(&["--digests"]);
    let inst = kernel_connect(",hdr_digest,data_digest");
    let dev = block_device(inst);
    let data = pattern(40960, 2048, 512, 3);
    fs::write("/tmp/nvmf-d", &data).unwrap();
    dd(&format!("if=/tmp/nvmf-d of=/dev/{dev} bs=128k seek=160 oflag=direct conv=notrunc"));
    dd(&format!("if=/dev/{dev} of=/tmp/nvmf-back bs=128k skip=160 count=8 iflag=direct"));
    assert!(fs::read("/tmp/nvmf-back").unwrap() == data, "read back with digests differs");
    kernel_disconnect(inst);
    assert!(target.stop());
    let _ = fs::remove_file("/tmp/nvmf-d");
    let _ = fs::remove_file("/tmp/nvmf-back");
}
