//! The whole target (workers, sockets, queue pairs) over loopback TCP with
//! the in-process NVMe model behind it, driven by the std-only test
//! client: the protocol end to end and the bad-peer cases, on the host.

mod client;

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use client::{pattern, Client, Cmd, DISCOVERY_NQN};
use fastlane_framework::{BufferPool, PageSize};
use fastlane_nvme::sim::{SimConfig, SimController};
use fastlane_nvme::{Controller, Options};
use fastlane_nvmf_tcp::admin::{Config, NsInfo, Subsystem};
use fastlane_nvmf_tcp::worker::{inbox, Tuning, Worker};

const NQN: &str = "nqn.2026-01.io.fastlane:test";
const BS: u32 = 512;

struct Target {
    addr: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    sub: Arc<Subsystem>,
    _ctrl: Controller,
    _sim: SimController,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn start(allowed: Vec<String>, digests: bool, buffers: u32) -> Target {
    let tuning = Tuning {
        digests,
        ..Tuning::default()
    };
    start_tuned(allowed, buffers, tuning)
}

fn start_tuned(allowed: Vec<String>, buffers: u32, tuning: Tuning) -> Target {
    let (sim, mmio) = SimController::start(SimConfig::default());
    let ctrl = Controller::with_registers(
        mmio,
        Options {
            io_queues: 2,
            ..Options::default()
        },
    )
    .unwrap();
    let ns: Vec<NsInfo> = ctrl
        .namespaces()
        .iter()
        .map(|n| NsInfo {
            id: n.id,
            blocks: n.blocks,
            block_size: n.block_size,
        })
        .collect();
    let sub = Arc::new(Subsystem::new(Config {
        nqn: NQN.into(),
        allowed_hosts: allowed,
        namespaces: ns,
        serial: "sim0001".into(),
        model: "fastlane nvmf-tcp".into(),
        firmware: "1.0".into(),
        max_io_queues: 2,
        queue_depth: 32,
        max_transfer: 128 << 10,
        in_capsule: 8192,
        volatile_write_cache: true,
        write_zeroes: true,
        dsm: true,
        traddr: "127.0.0.1".into(),
        trsvcid: "0".into(),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..2 {
        let qp = ctrl.create_qpair(64).unwrap();
        let pool = BufferPool::new_unmapped(128 << 10, buffers, PageSize::Small).unwrap();
        let (tx, rx) = inbox().unwrap();
        senders.push(tx);
        let w = Worker::new(sub.clone(), qp, pool, rx, stop.clone(), tuning);
        threads.push(std::thread::spawn(move || w.run().unwrap()));
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let s = stop.clone();
    threads.push(std::thread::spawn(move || {
        let mut n = 0;
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((sock, _)) => {
                    let _ = senders[n % 2].send(sock);
                    n += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }));
    Target {
        addr,
        stop,
        threads,
        sub,
        _ctrl: ctrl,
        _sim: sim,
    }
}

/// Admin queue, Number of Queues 2, and I/O queue `qid`.
fn io_queue(t: &Target, host: &str, digests: (bool, bool)) -> (Client, Client) {
    let mut a = Client::admin_queue(&t.addr, NQN, host, 0).unwrap();
    let (c, _) = a
        .exec(Cmd::new(0x09, 0).cdw(10, 7).cdw(11, 1 | 1 << 16), &[])
        .unwrap();
    assert!(c.ok());
    let mut q = Client::connect(&t.addr, digests).unwrap();
    let c = q.fabrics_connect(1, 31, a.cntlid, NQN, host, 0).unwrap();
    assert!(c.ok(), "{c:?}");
    (a, q)
}

#[test]
fn identify_write_read_flush_zeroes_dsm() {
    let t = start(vec![], false, 64);
    let (mut a, mut q) = io_queue(&t, "nqn.host.a", (false, false));
    let (c, id) = a.identify(1, 0).unwrap();
    assert!(c.ok());
    assert_eq!(u16::from_le_bytes([id[78], id[79]]), a.cntlid);
    let (c, ns) = a.identify(0, 1).unwrap();
    assert!(c.ok());
    assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), 1 << 20);

    // In-capsule write (8 KiB), R2T write (128 KiB, two H2CData PDUs).
    let small = pattern(100, 16, BS as usize, 1);
    assert!(q.write(1, 100, &small, BS, true).unwrap().ok());
    let big = pattern(1000, 256, BS as usize, 2);
    assert!(q.write(1, 1000, &big, BS, false).unwrap().ok());
    let (c, back) = q.read(1, 100, 16, BS).unwrap();
    assert!(c.ok() && back == small);
    let (c, back) = q.read(1, 1000, 256, BS).unwrap();
    assert!(c.ok() && back == big);
    assert!(q.exec(Cmd::new(0x00, 1), &[]).unwrap().0.ok());
    // Write Zeroes over 8 blocks of the big range, then read them.
    let (c, _) = q
        .exec(Cmd::new(0x08, 1).cdw(10, 1000).cdw(12, 7), &[])
        .unwrap();
    assert!(c.ok());
    let (_, back) = q.read(1, 1000, 16, BS).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0) && back[4096..] == big[4096..8192]);
    // DSM deallocate one range (in-capsule range list).
    let mut r = [0u8; 16];
    r[4..8].copy_from_slice(&8u32.to_le_bytes());
    r[8..16].copy_from_slice(&2000u64.to_le_bytes());
    let (c, _) = q
        .exec(
            Cmd::new(0x09, 1)
                .sgl(0, 16, 0x01)
                .cdw(10, 0)
                .cdw(11, 1 << 2),
            &r,
        )
        .unwrap();
    assert!(c.ok(), "{c:?}");
    // Errors: out of range, bad namespace, unknown opcode, too large.
    let (c, _) = q.read(1, (1 << 20) - 1, 2, BS).unwrap();
    assert_eq!((c.sct(), c.sc()), (0, 0x80));
    let (c, _) = q.read(7, 0, 1, BS).unwrap();
    assert_eq!(c.sc(), 0x0B);
    let (c, _) = q.exec(Cmd::new(0x7E, 1), &[]).unwrap();
    assert_eq!(c.sc(), 0x01);
    let (c, _) = q.read(1, 0, 512, BS).unwrap();
    assert_eq!(c.sc(), 0x02);
    // Pipelined: 16 reads in flight, answered by cid.
    let cids: Vec<u16> = (0..16)
        .map(|i| {
            q.send_cmd(
                Cmd::new(0x02, 1)
                    .sgl(0, 4096, 0x5A)
                    .cdw(10, 1000 + 8 * i)
                    .cdw(12, 7),
                &[],
            )
            .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    for _ in 0..16 {
        let p = q.recv().unwrap();
        if p.ty == 5 {
            seen.push(u16::from_le_bytes(p.header[20..22].try_into().unwrap()));
        }
    }
    while seen.len() < 16 {
        let p = q.recv().unwrap();
        if p.ty == 5 {
            seen.push(u16::from_le_bytes(p.header[20..22].try_into().unwrap()));
        }
    }
    seen.sort();
    let mut want = cids.clone();
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn digests_end_to_end() {
    let t = start(vec![], true, 64);
    let (_a, mut q) = io_queue(&t, "nqn.host.d", (true, true));
    assert!(q.hd && q.dd);
    let data = pattern(5, 64, BS as usize, 3);
    assert!(q.write(1, 5, &data, BS, false).unwrap().ok());
    assert!(q.write(1, 500, &data[..4096], BS, true).unwrap().ok());
    let (c, back) = q.read(1, 5, 64, BS).unwrap();
    assert!(c.ok() && back == data);
    // A corrupted data digest ends the connection.
    let cmd = Cmd::new(0x01, 1).sgl(0, 512, 0x01).cdw(10, 9).cdw(12, 0);
    q.dd = false; // send without computing the digest...
    let mut h = vec![0u8; 72];
    h[0] = 4;
    h[1] = 3;
    h[2] = 72;
    h[3] = 76;
    h[4..8].copy_from_slice(&(72u32 + 4 + 512 + 4).to_le_bytes());
    h[8..72].copy_from_slice(&cmd.0);
    let c = client::crc32c(&h);
    h.extend_from_slice(&c.to_le_bytes());
    h.extend_from_slice(&[7u8; 512]);
    h.extend_from_slice(&[0u8; 4]); // wrong data digest
    q.raw().write_all(&h).unwrap();
    assert!(q.closed_within(Duration::from_secs(5)));
}

#[test]
fn discovery_and_host_allow_list() {
    let t = start(vec!["nqn.good".into()], false, 16);
    let mut d = Client::admin_queue(&t.addr, DISCOVERY_NQN, "nqn.anyone", 0).unwrap();
    let (c, log) = d
        .exec(
            Cmd::new(0x02, 0)
                .sgl(0, 2048, 0x5A)
                .cdw(10, 0x70 | (511 << 16)),
            &[],
        )
        .unwrap();
    assert!(c.ok());
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), 1);
    assert_eq!(&log[1024 + 256..1024 + 256 + NQN.len()], NQN.as_bytes());
    let mut bad = Client::connect(&t.addr, (false, false)).unwrap();
    let c = bad
        .fabrics_connect(0, 31, 0xFFFF, NQN, "nqn.bad", 0)
        .unwrap();
    assert_eq!((c.sct(), c.sc()), (1, 0x84));
    let mut good = Client::connect(&t.addr, (false, false)).unwrap();
    assert!(good
        .fabrics_connect(0, 31, 0xFFFF, NQN, "nqn.good", 0)
        .unwrap()
        .ok());
}

#[test]
fn bad_peers_are_cut_off_and_others_keep_working() {
    let t = start(vec![], false, 64);
    let (_a, mut q) = io_queue(&t, "nqn.host.ok", (false, false));
    let data = pattern(0, 8, BS as usize, 9);
    assert!(q.write(1, 0, &data, BS, true).unwrap().ok());

    // Garbage instead of an ICReq.
    let mut g = std::net::TcpStream::connect(&t.addr).unwrap();
    g.write_all(&[0xFF; 64]).unwrap();
    let mut gc = Client::connect(&t.addr, (false, false)).unwrap();
    drop(gc.raw().write_all(&[4, 0, 72, 0, 0xFF, 0xFF, 0xFF, 0x7F])); // PLEN 2 GiB
    assert!(gc.closed_within(Duration::from_secs(5)));
    // Wrong HLEN.
    let mut w = Client::connect(&t.addr, (false, false)).unwrap();
    w.raw().write_all(&[4, 0, 60, 0, 60, 0, 0, 0]).unwrap();
    let p = w.recv().unwrap();
    assert_eq!(p.ty, 3, "C2HTermReq expected");
    assert_eq!(u16::from_le_bytes([p.header[8], p.header[9]]), 1);
    assert!(w.closed_within(Duration::from_secs(5)));
    // Truncated PDU, then the host vanishes.
    let mut v = Client::connect(&t.addr, (false, false)).unwrap();
    v.raw()
        .write_all(&[4, 0, 72, 0, 72, 0, 0, 0, 1, 2, 3])
        .unwrap();
    drop(v);
    // A host vanishing mid-transfer: R2T answered with half the data.
    let (_a2, mut m) = io_queue(&t, "nqn.host.vanish", (false, false));
    let cmd = Cmd::new(0x01, 1)
        .sgl(0, 65536, 0x5A)
        .cdw(10, 4000)
        .cdw(12, 127);
    let cid = m.send_cmd(cmd, &[]).unwrap();
    let r2t = m.recv().unwrap();
    assert_eq!(r2t.ty, 9);
    let ttag = u16::from_le_bytes([r2t.header[10], r2t.header[11]]);
    m.send_h2c(cid, ttag, 0, &[1u8; 4096], false).unwrap();
    drop(m);
    // H2CData for a TTAG that was never given.
    let (_a3, mut h) = io_queue(&t, "nqn.host.h2c", (false, false));
    h.send_h2c(1, 7, 0, &[0u8; 512], true).unwrap();
    let p = h.recv().unwrap();
    assert_eq!(p.ty, 3);
    // Unknown PDU type.
    let mut u = Client::connect(&t.addr, (false, false)).unwrap();
    u.raw().write_all(&[0x0C, 0, 24, 0, 24, 0, 0, 0]).unwrap();
    assert_eq!(u.recv().unwrap().ty, 3);
    // Too many queues, twice the same queue.
    let mut a4 = Client::admin_queue(&t.addr, NQN, "nqn.host.many", 0).unwrap();
    a4.exec(Cmd::new(0x09, 0).cdw(10, 7).cdw(11, 0), &[])
        .unwrap();
    let mut q2 = Client::connect(&t.addr, (false, false)).unwrap();
    let c = q2
        .fabrics_connect(2, 31, a4.cntlid, NQN, "nqn.host.many", 0)
        .unwrap();
    assert_eq!((c.sct(), c.sc()), (1, 0x82));
    assert_eq!(c.dw0 >> 16, 42);
    let mut q1 = Client::connect(&t.addr, (false, false)).unwrap();
    assert!(q1
        .fabrics_connect(1, 31, a4.cntlid, NQN, "nqn.host.many", 0)
        .unwrap()
        .ok());
    let mut q1b = Client::connect(&t.addr, (false, false)).unwrap();
    assert!(!q1b
        .fabrics_connect(1, 31, a4.cntlid, NQN, "nqn.host.many", 0)
        .unwrap()
        .ok());

    // The good host still works, with all its data.
    let (c, back) = q.read(1, 0, 8, BS).unwrap();
    assert!(c.ok() && back == data);
    assert!(q.write(1, 8, &data, BS, false).unwrap().ok());
}

#[test]
fn keep_alive_expiry_closes_the_controller() {
    let t = start(vec![], false, 16);
    let mut a = Client::admin_queue(&t.addr, NQN, "nqn.host.ka", 400).unwrap();
    let mut q = Client::connect(&t.addr, (false, false)).unwrap();
    assert!(q
        .fabrics_connect(1, 31, a.cntlid, NQN, "nqn.host.ka", 0)
        .unwrap()
        .ok());
    // Keep alives keep it: 4 x 200 ms.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(200));
        assert!(a.exec(Cmd::new(0x18, 0), &[]).unwrap().0.ok());
    }
    assert_eq!(t.sub.controllers(), 1);
    // Silence: both queues close and the controller is gone.
    assert!(a.closed_within(Duration::from_secs(10)));
    assert!(q.closed_within(Duration::from_secs(10)));
    assert_eq!(t.sub.controllers(), 0);
}

#[test]
fn buffer_shortage_waits_instead_of_failing() {
    // Two buffers for a queue of 16 reads.
    let t = start(vec![], false, 2);
    let (_a, mut q) = io_queue(&t, "nqn.host.short", (false, false));
    let data = pattern(0, 256, BS as usize, 4);
    assert!(q.write(1, 0, &data, BS, false).unwrap().ok());
    for i in 0..16u32 {
        q.send_cmd(
            Cmd::new(0x02, 1)
                .sgl(0, 65536, 0x5A)
                .cdw(10, 0)
                .cdw(12, 127),
            &[],
        )
        .unwrap();
        let _ = i;
    }
    let mut ok = 0;
    while ok < 16 {
        let p = q.recv().unwrap();
        if p.ty == 7 {
            assert_eq!(p.data, data[..65536]);
        }
        if p.ty == 5 {
            assert_eq!(u16::from_le_bytes([p.header[22], p.header[23]]) >> 1, 0);
            ok += 1;
        }
    }
}

/// 15 in-capsule writes, each after a read capsule, as one stream (30
/// commands: within the queue's 31): `chunk`
/// bytes per `write` (0: all at once). Checks every response and the data.
fn pipelined_stream(q: &mut Client, chunk: usize, seed: u64) {
    let old = pattern(3000, 8, BS as usize, seed ^ 0xFF);
    assert!(q.write(1, 3000, &old, BS, false).unwrap().ok());
    let mut stream = Vec::new();
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for k in 0..15u64 {
        let read = Cmd::new(0x02, 1)
            .sgl(0, 8 * BS, 0x5A)
            .cdw(10, 3000)
            .cdw(12, 7);
        let (cid, b) = q.capsule(read, &[]);
        reads.push(cid);
        stream.extend_from_slice(&b);
        let lba = 4000 + k * 8;
        let data = pattern(lba, 8, BS as usize, seed);
        let write = Cmd::new(0x01, 1)
            .sgl(0, 8 * BS, 0x01)
            .cdw(10, lba as u32)
            .cdw(12, 7);
        let (cid, b) = q.capsule(write, &data);
        writes.push(cid);
        stream.extend_from_slice(&b);
    }
    if chunk == 0 {
        q.raw().write_all(&stream).unwrap();
    } else {
        for c in stream.chunks(chunk) {
            q.raw().write_all(c).unwrap();
        }
    }
    let got = q.responses(30).unwrap();
    for cid in &reads {
        let (status, data) = &got[cid];
        assert_eq!(*status >> 1, 0, "read cid {cid}");
        assert!(*data == old, "read cid {cid}: data");
    }
    for cid in &writes {
        assert_eq!(got[cid].0 >> 1, 0, "write cid {cid}");
    }
    for k in 0..15u64 {
        let lba = 4000 + k * 8;
        let (c, back) = q.read(1, lba, 8, BS).unwrap();
        assert!(
            c.ok() && back == pattern(lba, 8, BS as usize, seed),
            "write {k} read back"
        );
    }
}

#[test]
fn pipelined_capsules_in_one_write_and_trickled_bytes() {
    // Many PDUs per recv (headers and in-capsule write data arrive in the
    // stage together), then the same stream 7 bytes at a time (PDUs split
    // at every boundary, short reads), then with digests. The workers nap
    // between completion polls and follow their hosts' CPUs.
    let tuning = Tuning {
        digests: true,
        idle_spin: Duration::from_micros(20),
        device_nap: Duration::from_micros(30),
        follow_host_cpu: true,
    };
    let t = start_tuned(vec![], 64, tuning);
    let (_a, mut q) = io_queue(&t, "nqn.host.pipe", (false, false));
    pipelined_stream(&mut q, 0, 11);
    pipelined_stream(&mut q, 7, 12);
    let (_a2, mut d) = io_queue(&t, "nqn.host.pipe-dgst", (true, true));
    assert!(d.hd && d.dd);
    pipelined_stream(&mut d, 0, 13);
    pipelined_stream(&mut d, 61, 14);
}

#[test]
fn host_that_stops_reading_does_not_stall_others() {
    // One host queues 31 reads of 128 KiB and reads nothing for a while:
    // the target's socket fills and that connection waits for room while
    // another host's I/O goes on; then every response arrives.
    let t = start(vec![], false, 64);
    let (_a, mut slow) = io_queue(&t, "nqn.host.slow", (false, false));
    let (_b, mut fast) = io_queue(&t, "nqn.host.fast", (false, false));
    let data = pattern(0, 256, BS as usize, 21);
    assert!(slow.write(1, 0, &data, BS, false).unwrap().ok());
    let mut stream = Vec::new();
    let mut cids = Vec::new();
    for _ in 0..31 {
        let (cid, b) = slow.capsule(
            Cmd::new(0x02, 1)
                .sgl(0, 256 * BS, 0x5A)
                .cdw(10, 0)
                .cdw(12, 255),
            &[],
        );
        cids.push(cid);
        stream.extend_from_slice(&b);
    }
    slow.raw().write_all(&stream).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for k in 0..8u64 {
        let d = pattern(5000 + k * 16, 16, BS as usize, 22);
        assert!(fast.write(1, 5000 + k * 16, &d, BS, true).unwrap().ok());
        let (c, back) = fast.read(1, 5000 + k * 16, 16, BS).unwrap();
        assert!(c.ok() && back == d);
    }
    let got = slow.responses(31).unwrap();
    for cid in cids {
        let (status, d) = &got[&cid];
        assert_eq!(*status >> 1, 0);
        assert!(*d == data, "cid {cid}: data");
    }
}
