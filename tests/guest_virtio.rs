//! virtio-net driver tests against QEMU's virtio-net-pci port through real
//! VFIO. Built with `--features guest`, run in the guest by
//! tests/guest/virtio.sh with the virtio port and the first igb port bound
//! to vfio-pci and, when the kernel's igb module was provided, the second
//! igb port on the kernel driver (its interface in FASTLANE_PEER_IF).
//!
//! All three ports share a QEMU hub. The peers the virtio port exchanges
//! frames with: the igb port through fastlane's igb driver, and the kernel's
//! igb port through an AF_PACKET socket. Test frames carry EtherType 0x88B5
//! (local experimental), a per-test tag, a sequence number and the sent
//! length; everything after them is a pattern checked byte by byte. Frames
//! of other tests (QEMU queues frames for a port that is closed) or of the
//! kernel are recognised and set aside.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

mod common;

use common::{frame_meta, ETHERTYPE, HEADER, META};
use fastlane::framework::Vfio;
use fastlane::nic::igb::Igb;
use fastlane::nic::virtio::{spec, VirtioNet, RX_HEADROOM};
use fastlane::nic::{alloc_packet, Nic, NicConfig, NicError, Packet, PacketPool, Stats, MAX_FRAME, MIN_FRAME};

const DEADLINE: Duration = Duration::from_secs(60);
/// Frames in flight at once between the ports (kernel socket buffers and
/// QEMU's queues stay small).
const WINDOW: usize = 32;

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} not set: run in the guest (tests/guest/virtio.sh)"))
}

fn payload_byte(tag: u32, seq: u32, i: usize) -> u8 {
    (seq.wrapping_mul(131) ^ tag.rotate_left(7)).wrapping_add(i as u32 * 3) as u8
}

/// Test frame `seq` of `tag`, `len` bytes (at least HEADER + META).
fn frame_bytes(dst: [u8; 6], src: [u8; 6], tag: u32, seq: u32, len: usize) -> Vec<u8> {
    common::frame_bytes(dst, src, tag, seq, len, |i| payload_byte(tag, seq, i))
}

/// A packet of `bytes` from `nic`'s own cache: several buffers for a
/// frame longer than MAX_FRAME (the port must be open at a large MTU).
fn jumbo_packet(nic: &mut dyn Nic, bytes: &[u8]) -> Packet {
    let mut p = nic.alloc_packet(bytes.len()).unwrap();
    p.write(bytes).unwrap();
    p
}

fn packet(pool: &PacketPool, bytes: &[u8]) -> Packet {
    let mut p = alloc_packet(pool.pool(), 0).unwrap();
    p.write(bytes).unwrap();
    p
}

/// A received frame of `tag`: (sequence number, sent length), after
/// checking every byte. A frame sent shorter than 60 bytes must arrive
/// padded with zeros to 60 when `padded` (virtio-net pads in the driver),
/// else may also arrive as sent (QEMU's igb model does not pad what it
/// sends). Frames of other tests or protocols give `None`.
fn parse(f: &[u8], tag: u32, padded: bool) -> Option<(u32, usize)> {
    let (seq, sent) = match frame_meta(f)? {
        (t, seq, sent) if t == tag => (seq, sent),
        _ => return None,
    };
    assert!(
        f.len() == sent.max(MIN_FRAME) || (!padded && f.len() == sent),
        "frame {seq} of tag {tag:#x}: {} bytes, sent {sent}",
        f.len()
    );
    for (i, &b) in f.iter().enumerate().skip(HEADER + META) {
        let want = if i < sent { payload_byte(tag, seq, i) } else { 0 };
        assert_eq!(b, want, "frame {seq} of {sent} bytes, tag {tag:#x}: byte {i}");
    }
    Some((seq, sent))
}

/// The other end of the wire.
trait Peer {
    fn name(&self) -> String;
    fn mac(&self) -> [u8; 6];
    /// Sends `frames`; returns how many it took.
    fn send(&mut self, frames: &[Vec<u8>]) -> usize;
    /// Appends what has arrived, without waiting.
    fn recv(&mut self, out: &mut Vec<Vec<u8>>);
}

/// A kernel network interface through an AF_PACKET socket.
struct KernelPort {
    ifname: String,
    fd: OwnedFd,
    mac: [u8; 6],
}

impl KernelPort {
    /// Sets the interface's MTU (SIOCSIFMTU; root in the guest).
    fn set_mtu(&self, mtu: u16) {
        // SAFETY: all-zero is a valid ifreq.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(self.ifname.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_mtu = i32::from(mtu);
        // SAFETY: an ifreq of its size, on our socket.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCSIFMTU, &req) };
        assert_eq!(rc, 0, "MTU {mtu} on {}: {}", self.ifname, std::io::Error::last_os_error());
    }

    fn open(ifname: &str) -> KernelPort {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket call.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        assert!(raw >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex != 0, "no interface {ifname}");
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: binds our socket to a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind to {ifname}: {}", std::io::Error::last_os_error());
        let size: libc::c_int = 8 << 20;
        // SAFETY: an int option of its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                4,
            )
        };
        let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address")).unwrap();
        let hex: Vec<u8> = text.trim().split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
        let mut port = KernelPort {
            ifname: ifname.to_string(),
            fd,
            mac: hex.try_into().unwrap(),
        };
        // Whatever queued up before this test.
        let mut old = Vec::new();
        port.recv(&mut old);
        port
    }
}

impl Peer for KernelPort {
    fn name(&self) -> String {
        format!("kernel igb {}", self.ifname)
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn send(&mut self, frames: &[Vec<u8>]) -> usize {
        let mut n = 0;
        for f in frames {
            // SAFETY: sends from a buffer of its length.
            let rc = unsafe { libc::send(self.fd.as_raw_fd(), f.as_ptr().cast(), f.len(), libc::MSG_DONTWAIT) };
            if rc != f.len() as isize {
                break;
            }
            n += 1;
        }
        n
    }

    fn recv(&mut self, out: &mut Vec<Vec<u8>>) {
        let mut buf = vec![0u8; 16384];
        loop {
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: receives into buffers of their lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return;
            }
            // The socket also sees what the interface sends.
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                out.push(buf[..n as usize].to_vec());
            }
        }
    }
}

/// A port driven by one of fastlane's drivers, with the pool it sends from.
struct DriverPort<N: Nic> {
    nic: N,
    pool: PacketPool,
    label: String,
    vfio: Vfio,
}

/// The virtio port under test.
type Port = DriverPort<VirtioNet>;

impl<N: Nic> Peer for DriverPort<N> {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn mac(&self) -> [u8; 6] {
        self.nic.mac_address()
    }

    fn send(&mut self, frames: &[Vec<u8>]) -> usize {
        let mut pkts: Vec<Packet> = frames
            .iter()
            .map(|f| match f.len() > MAX_FRAME {
                // A jumbo frame: a multi-buffer packet from the port's cache.
                true => jumbo_packet(&mut self.nic, f),
                false => packet(&self.pool, f),
            })
            .collect();
        self.nic.tx_burst(&mut pkts)
    }

    fn recv(&mut self, out: &mut Vec<Vec<u8>>) {
        let mut pkts = Vec::with_capacity(64);
        self.nic.rx_burst(&mut pkts, 64);
        out.extend(pkts.iter().map(Packet::to_vec));
    }
}

fn open_port(cfg: &NicConfig) -> Port {
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 4096).unwrap();
    let nic = VirtioNet::open(&vfio, &env("FASTLANE_VIRTIO"), &pool, cfg).unwrap();
    let mut p = Port { pool, nic, label: "virtio".into(), vfio };
    drain(&mut p.nic);
    p
}

/// Receives and drops frames until none came for a while.
fn drain(nic: &mut dyn Nic) -> usize {
    let mut v = Vec::with_capacity(64);
    let (mut quiet, start, mut n) = (Instant::now(), Instant::now(), 0);
    while quiet.elapsed() < Duration::from_millis(300) && start.elapsed() < DEADLINE {
        if nic.rx_burst(&mut v, 64) > 0 {
            quiet = Instant::now();
            n += v.len();
            v.clear();
        }
    }
    n
}

/// Waits until the device has sent everything queued.
fn flush(nic: &mut dyn Nic) {
    let start = Instant::now();
    while nic.tx_in_flight() > 0 {
        nic.tx_burst(&mut Vec::new());
        assert!(start.elapsed() < DEADLINE, "{} frames never reported sent", nic.tx_in_flight());
    }
}

fn delta(a: Stats, b: Stats) -> Stats {
    Stats {
        rx_packets: a.rx_packets - b.rx_packets,
        rx_bytes: a.rx_bytes - b.rx_bytes,
        tx_packets: a.tx_packets - b.tx_packets,
        tx_bytes: a.tx_bytes - b.tx_bytes,
        rx_dropped: a.rx_dropped - b.rx_dropped,
        rx_errors: a.rx_errors - b.rx_errors,
        tx_errors: a.tx_errors - b.tx_errors,
    }
}

/// Frame sizes of an exchange: every boundary, and a sweep from the
/// minimum to the maximum.
fn sizes() -> Vec<usize> {
    let mut s: Vec<usize> = vec![24, 59, 60, 61, 64, 127, 128, 1023, 1024, 1513, 1514];
    s.extend((MIN_FRAME..=MAX_FRAME).step_by(37));
    s
}

/// Sends `sizes` frames from `from` to `to`, WINDOW at a time, and checks
/// that every one arrives, in order, with its content. Returns the frames
/// and bytes `to` received in all (these and any others).
fn one_way(from: &mut dyn Peer, to: &mut dyn Peer, tag: u32, sizes: &[usize], padded: bool) -> (u64, u64) {
    let (src, dst) = (from.mac(), to.mac());
    let (mut got, mut all, mut bytes, mut inbox) = (Vec::new(), 0u64, 0u64, Vec::new());
    for (w, chunk) in sizes.chunks(WINDOW).enumerate() {
        let frames: Vec<Vec<u8>> = chunk
            .iter()
            .enumerate()
            .map(|(i, &n)| frame_bytes(dst, src, tag, (w * WINDOW + i) as u32, n))
            .collect();
        let (mut sent, want, start) = (0, got.len() + chunk.len(), Instant::now());
        while got.len() < want {
            assert!(
                start.elapsed() < DEADLINE,
                "{} -> {}: {} of {} frames arrived, {} of this window not sent",
                from.name(),
                to.name(),
                got.len(),
                sizes.len(),
                frames.len() - sent
            );
            sent += from.send(&frames[sent..]);
            to.recv(&mut inbox);
            for f in inbox.drain(..) {
                all += 1;
                bytes += f.len() as u64;
                got.extend(parse(&f, tag, padded));
            }
        }
    }
    let want: Vec<(u32, usize)> = sizes.iter().enumerate().map(|(i, &n)| (i as u32, n)).collect();
    assert_eq!(got, want, "{} -> {}: frames out of order or missing", from.name(), to.name());
    (all, bytes)
}

/// Sends `sizes` frames virtio -> peer, then peer -> virtio, and checks
/// that the virtio port's counters match what went over the wire.
fn exchange_both_ways(port: &mut Port, peer: &mut dyn Peer, tag: u32, sizes: &[usize]) {
    let before = port.nic.stats();
    // The virtio driver pads runts; QEMU's igb model sends them as they are.
    one_way(port, peer, tag, sizes, true);
    flush(&mut port.nic);
    let (all, all_bytes) = one_way(peer, port, tag | 0x8000_0000, sizes, false);

    let d = delta(port.nic.stats(), before);
    let wire: u64 = sizes.iter().map(|&n| n.max(MIN_FRAME) as u64).sum();
    assert_eq!((d.tx_packets, d.tx_bytes), (sizes.len() as u64, wire), "transmit counters");
    assert_eq!((d.rx_packets, d.rx_bytes), (all, all_bytes), "receive counters");
    assert_eq!((d.rx_errors, d.tx_errors), (0, 0));
    println!(
        "{}: {} frames each way ({wire} bytes), virtio also received {} other frames",
        peer.name(),
        sizes.len(),
        all - sizes.len() as u64
    );
}

#[test]
fn opens_with_qemus_mac_link_up_and_the_iommu_feature() {
    let mut p = open_port(&NicConfig::default());
    let mac = p.nic.mac_address();
    assert_eq!(mac[..3], [0x52, 0x54, 0x00], "QEMU's OUI: {mac:02x?}");
    let link = p.nic.link_status();
    assert!(link.up, "link down");
    let f = p.nic.features();
    assert_ne!(f & spec::VIRTIO_F_VERSION_1, 0);
    assert_ne!(f & spec::VIRTIO_F_ACCESS_PLATFORM, 0);
    assert_eq!(f & spec::VIRTIO_NET_F_MRG_RXBUF, 0);
    // QEMU's rings hold 256 entries: the default 512 is capped.
    assert_eq!(p.nic.rx_posted(), 256);
    assert_eq!(p.nic.tx_in_flight(), 0);
    let s = p.nic.stats();
    assert_eq!((s.tx_packets, s.rx_errors), (0, 0));
    println!(
        "mac {mac:02x?} link {link:?} features {} iova offset {:#x}",
        spec::feature_names(f),
        p.pool.pool().region().iova_offset()
    );
    drop(p.nic);
    drop(p.pool);
    drop(p.vfio);

    // Reopen with small rings: the reset in Drop left the device reusable.
    let small = NicConfig { rx_ring: 32, tx_ring: 16, promiscuous: true, ..NicConfig::default() };
    let p = open_port(&small);
    assert_eq!(p.nic.rx_posted(), 32);
}

#[test]
fn a_device_that_is_not_virtio_net_is_refused() {
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 64).unwrap();
    match VirtioNet::open(&vfio, &env("FASTLANE_IGB0"), &pool, &NicConfig::default()) {
        Err(NicError::Unsupported { vendor, device, .. }) => assert_eq!((vendor, device), (0x8086, 0x10c9)),
        Err(e) => panic!("expected Unsupported, got {e}"),
        Ok(_) => panic!("opened an igb as virtio-net"),
    }
}

#[test]
fn oversized_and_runt_frames_give_typed_errors_and_stay_unsent() {
    let mut p = open_port(&NicConfig::default());
    // A QEMU hub holds back what no port can take: a peer must listen.
    let mut peer = igb_peer(&p);
    assert!(matches!(VirtioNet::check_frame(MAX_FRAME + 1), Err(NicError::FrameTooLarge { len: 1515, max: 1514 })));
    assert!(VirtioNet::check_frame(MAX_FRAME).is_ok());
    // A Packet cannot even hold an oversized frame.
    let buf = p.pool.pool().alloc().unwrap();
    assert!(matches!(Packet::new(buf, MAX_FRAME + 1), Err(NicError::FrameTooLarge { .. })));
    let mut ok = packet(&p.pool, &frame_bytes(peer.mac(), p.nic.mac_address(), 0x77, 0, 100));
    assert!(matches!(ok.set_len(MAX_FRAME + 1), Err(NicError::FrameTooLarge { .. })));

    // A frame shorter than an Ethernet header stops the burst at it.
    let mut runt = packet(&p.pool, &[0u8; 24]);
    runt.set_len(10).unwrap();
    let before = p.nic.stats();
    let mut pkts = vec![ok, runt, packet(&p.pool, &[0u8; 60])];
    assert_eq!(p.nic.tx_burst(&mut pkts), 1);
    assert_eq!(p.nic.tx_burst(&mut pkts), 0);
    assert_eq!(pkts.len(), 2);
    assert!(matches!(
        VirtioNet::check_packet(&pkts[0]),
        Err(NicError::FrameTooShort { len: 10, min: 14 })
    ));
    flush(&mut p.nic);
    let d = delta(p.nic.stats(), before);
    assert_eq!((d.tx_packets, d.tx_bytes, d.tx_errors), (1, 100, 0));
    // Only the valid frame crossed the wire.
    let (mut inbox, mut got) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        peer.recv(&mut inbox);
        got.extend(inbox.drain(..).filter(|f| f[12..14] == ETHERTYPE.to_be_bytes()));
    }
    assert_eq!(got.len(), 1);
    assert_eq!(parse(&got[0], 0x77, true), Some((0, 100)));
}

#[test]
fn a_stream_larger_than_the_rings_is_sent_whole_and_buffers_come_home() {
    let small = NicConfig { rx_ring: 64, tx_ring: 64, promiscuous: true, ..NicConfig::default() };
    let mut p = open_port(&small);
    let mut peer = igb_peer(&p);
    let (vm, pm, tag) = (p.nic.mac_address(), peer.mac(), 0x5151);
    let total = 3000u32;
    let len = |i: u32| 60 + (i as usize * 13) % 1400;
    let mut pkts: Vec<Packet> = (0..total).map(|i| packet(&p.pool, &frame_bytes(pm, vm, tag, i, len(i)))).collect();
    // Frames without headroom take two descriptors: 32 fit in 64.
    assert_eq!(p.nic.tx_burst(&mut pkts), 32);
    let (mut inbox, mut got) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while got.len() < total as usize {
        assert!(
            start.elapsed() < DEADLINE,
            "{} frames not taken, {} of {total} arrived",
            pkts.len(),
            got.len()
        );
        p.nic.tx_burst(&mut pkts);
        peer.recv(&mut inbox);
        got.extend(inbox.drain(..).filter_map(|f| parse(&f, tag, true)));
    }
    let want: Vec<(u32, usize)> = (0..total).map(|i| (i, len(i))).collect();
    assert_eq!(got, want, "frames out of order or missing");
    flush(&mut p.nic);
    let s = p.nic.stats();
    assert_eq!(s.tx_packets, total as u64);
    assert_eq!(s.tx_bytes, want.iter().map(|&(_, n)| n as u64).sum::<u64>());
    println!("sent {total} frames through a 64-entry ring ({} bytes)", s.tx_bytes);
    // Every buffer is home, in the port's cache or posted for receive.
    drop(pkts);
    assert!(p.pool.pool().available() + 256 + p.nic.rx_posted() >= 4096, "buffers leaked");
    drop(p.nic);
    assert_eq!(p.pool.pool().available(), 4096, "the device's buffers returned when the port closed");
}

#[test]
fn exchanges_frames_with_a_kernel_igb_port() {
    let Ok(ifname) = std::env::var("FASTLANE_PEER_IF") else {
        println!("SKIP: FASTLANE_PEER_IF not set (no kernel igb peer in this guest)");
        return;
    };
    let mut p = open_port(&NicConfig::default());
    let mut peer = KernelPort::open(&ifname);
    exchange_both_ways(&mut p, &mut peer, 0x11, &sizes());
}

/// The first igb port through fastlane's igb driver, with its own pool.
fn igb_peer(p: &Port) -> DriverPort<Igb> {
    let pool = PacketPool::new(&p.vfio, 2048).unwrap();
    let igb = Igb::open(&p.vfio, &env("FASTLANE_IGB0"), &pool, &NicConfig::default()).unwrap();
    let mut peer = DriverPort {
        nic: igb,
        pool,
        label: format!("igb driver {}", env("FASTLANE_IGB0")),
        vfio: p.vfio.clone(),
    };
    drain(&mut peer.nic);
    peer
}

#[test]
fn exchanges_frames_with_the_igb_driver() {
    let mut p = open_port(&NicConfig::default());
    let mut peer = igb_peer(&p);
    let before = peer.nic.stats();
    // Every size from a runt to the maximum.
    let sizes: Vec<usize> = (HEADER + META..=MAX_FRAME).collect();
    exchange_both_ways(&mut p, &mut peer, 0x22, &sizes);
    // The igb's counters agree about what crossed the wire.
    flush(&mut peer.nic);
    let d = delta(peer.nic.stats(), before);
    let n = sizes.len() as u64;
    assert_eq!(d.tx_packets, n, "igb transmit counter");
    assert!(d.rx_packets >= n, "igb receive counter: {} < {n}", d.rx_packets);
}

#[test]
fn received_frames_are_sent_back_from_their_own_buffers() {
    // The virtio port as a reflector: what it receives goes back out from
    // the same buffer, the transmit header in the receive headroom.
    let mut p = open_port(&NicConfig::default());
    let mut peer = igb_peer(&p);
    let (vm, pm) = (p.nic.mac_address(), peer.mac());
    let tag = 0x44;
    let sizes: Vec<usize> = (60..=MAX_FRAME).step_by(11).collect();
    let frames: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| frame_bytes(vm, pm, tag, i as u32, n)).collect();
    let (mut sent, mut back, mut pkts, mut inbox) = (0, Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    while back.len() < frames.len() {
        assert!(start.elapsed() < DEADLINE, "{} of {} frames came back", back.len(), frames.len());
        if sent < frames.len() && sent - back.len() < WINDOW {
            sent += peer.send(&frames[sent..(sent + 8).min(frames.len())]);
        }
        p.nic.rx_burst(&mut pkts, 32);
        pkts.retain(|x: &Packet| parse(&x.to_vec(), tag, false).is_some());
        for x in &mut pkts {
            assert_eq!(x.offset(), RX_HEADROOM);
            let off = x.offset();
            x.buf_mut().write(off, &pm).unwrap();
            x.buf_mut().write(off + 6, &vm).unwrap();
        }
        while !pkts.is_empty() {
            p.nic.tx_burst(&mut pkts);
        }
        peer.recv(&mut inbox);
        back.extend(inbox.drain(..).filter_map(|f| parse(&f, tag, true)));
    }
    let want: Vec<(u32, usize)> = sizes.iter().enumerate().map(|(i, &n)| (i as u32, n)).collect();
    assert_eq!(back, want);
    flush(&mut p.nic);
    assert_eq!(p.nic.stats().tx_packets, sizes.len() as u64);
}

#[test]
fn with_promiscuous_off_only_our_unicast_and_broadcast_arrive() {
    let mut p = open_port(&NicConfig { promiscuous: false, ..NicConfig::default() });
    let mut peer = igb_peer(&p);
    let (vm, pm) = (p.nic.mac_address(), peer.mac());
    let other = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let tag = 0x33;
    let send_and_collect = |p: &mut Port, peer: &mut DriverPort<Igb>, dsts: &[[u8; 6]]| {
        let frames: Vec<Vec<u8>> = dsts.iter().enumerate().map(|(i, d)| frame_bytes(*d, pm, tag, i as u32, 100)).collect();
        assert_eq!(peer.send(&frames), frames.len());
        let mut got = Vec::new();
        let mut pkts = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            p.nic.rx_burst(&mut pkts, 64);
            got.extend(pkts.drain(..).filter_map(|x| parse(&x.to_vec(), tag, false)).map(|(s, _)| s));
        }
        got
    };
    let got = send_and_collect(&mut p, &mut peer, &[other, vm, [0xff; 6], other]);
    assert_eq!(got, [1, 2], "filtering: only our address and broadcast");
    p.nic.set_promiscuous(true).unwrap();
    let got = send_and_collect(&mut p, &mut peer, &[other, vm]);
    assert_eq!(got, [0, 1], "promiscuous: everything");
}

/// Jumbo frame sizes: every boundary of virtio-net's mergeable buffers
/// (1514 frame bytes in each, with the header in the first), of igb's
/// 2 KiB buffers, and the largest frame at MTU 9000.
fn jumbo_sizes() -> Vec<usize> {
    let mut s = vec![1514, 1515, 1800, 2047, 2048, 2049, 3028, 3029, 3030, 4095, 4096, 4097];
    s.extend([4542, 4543, 6056, 6057, 6143, 6144, 7570, 7571, 8191, 8192, 8193, 9000, 9013, 9014]);
    s.extend((1515..=9014).step_by(389));
    s
}

/// A port at MTU 9000.
fn jumbo() -> NicConfig {
    NicConfig { rx_ring: 256, tx_ring: 256, mtu: 9000, ..NicConfig::default() }
}

#[test]
fn jumbo_frames_cross_to_and_from_a_kernel_igb_port_at_mtu_9000() {
    let Ok(ifname) = std::env::var("FASTLANE_PEER_IF") else {
        println!("SKIP: FASTLANE_PEER_IF not set (no kernel igb peer in this guest)");
        return;
    };
    let mut p = open_port(&jumbo());
    assert_ne!(p.nic.features() & spec::VIRTIO_NET_F_MRG_RXBUF, 0, "mergeable buffers for MTU 9000");
    let mut peer = KernelPort::open(&ifname);
    peer.set_mtu(9000);
    let sizes = jumbo_sizes();
    let before = p.nic.stats();
    one_way(&mut p, &mut peer, 0x51, &sizes, true);
    flush(&mut p.nic);
    let (all, bytes) = one_way(&mut peer, &mut p, 0x52, &sizes, false);
    let d = delta(p.nic.stats(), before);
    let wire: u64 = sizes.iter().map(|&n| n as u64).sum();
    assert_eq!((d.tx_packets, d.tx_bytes), (sizes.len() as u64, wire));
    assert_eq!((d.rx_packets, d.rx_bytes, d.rx_errors), (all, bytes, 0));
    peer.set_mtu(1500);
    // Every buffer home when the port closes: none kept by a multi-buffer
    // frame.
    drop(p.nic);
    assert_eq!(p.pool.pool().available(), 4096);
    println!("{} jumbo frames each way with the kernel's igb ({wire} bytes)", sizes.len());
}

#[test]
fn jumbo_frames_cross_to_and_from_the_igb_driver_at_mtu_9000() {
    let mut p = open_port(&jumbo());
    let pool = PacketPool::new(&p.vfio, 2048).unwrap();
    let igb = Igb::open(&p.vfio, &env("FASTLANE_IGB0"), &pool, &jumbo()).unwrap();
    let mut peer = DriverPort { nic: igb, pool, label: "igb driver, MTU 9000".into(), vfio: p.vfio.clone() };
    drain(&mut peer.nic);
    let sizes = jumbo_sizes();
    let (all, _) = one_way(&mut p, &mut peer, 0x61, &sizes, true);
    assert!(all >= sizes.len() as u64);
    flush(&mut p.nic);
    // The other way: igb sends multi-buffer packets (a descriptor per
    // buffer), virtio-net receives them over mergeable buffers.
    one_way(&mut peer, &mut p, 0x62, &sizes, false);
    println!("{} jumbo frames each way with the igb driver (1514-9014 bytes)", sizes.len());
    let s = p.nic.stats();
    assert_eq!((s.rx_errors, s.tx_errors), (0, 0));
}

#[test]
fn a_jumbo_frame_on_a_standard_port_is_refused_and_an_mtu_above_9000_too() {
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 1024).unwrap();
    let addr = env("FASTLANE_VIRTIO");
    let mut jumbo_port = VirtioNet::open(&vfio, &addr, &pool, &jumbo()).unwrap();
    let big = jumbo_packet(&mut jumbo_port, &[0x5a; 3000]);
    assert_eq!(big.segment_count(), 2);
    drop(jumbo_port);
    // The same frame on a port at MTU 1500: FrameTooLarge, never sent.
    let mut std_port = VirtioNet::open(&vfio, &addr, &pool, &NicConfig::default()).unwrap();
    assert!(matches!(std_port.check_tx(&big), Err(NicError::FrameTooLarge { len: 3000, max: 1514 })));
    let mut pkts = vec![big];
    assert_eq!(std_port.tx_burst(&mut pkts), 0);
    assert_eq!(pkts.len(), 1);
    assert!(matches!(std_port.alloc_packet(1515), Err(NicError::FrameTooLarge { .. })));
    drop(std_port);
    let bad = NicConfig { mtu: 9001, ..jumbo() };
    assert!(matches!(VirtioNet::open(&vfio, &addr, &pool, &bad), Err(NicError::InvalidArgument(_))));
    // Too short a receive ring for one jumbo frame (6 buffers).
    let short = NicConfig { rx_ring: 4, ..jumbo() };
    assert!(matches!(VirtioNet::open(&vfio, &addr, &pool, &short), Err(NicError::InvalidArgument(_))));
    // After the refusals the port opens and works.
    let again = VirtioNet::open(&vfio, &addr, &pool, &jumbo()).unwrap();
    assert!(again.link_status().up);
    drop(pkts);
}

/// IPv4/UDP frames (and jumbo ones) with both checksums zeroed, sent with
/// `tx_burst_offload` through `nic::open`: the peer verifies them in
/// software. Behind QEMU's hub the device offers no VIRTIO_NET_F_CSUM, so
/// the driver computes them; on a device that offers it the TCP/UDP one is
/// the device's (see the driver's unit tests).
#[test]
fn offloaded_udp_checksums_arrive_right_at_the_igb_driver() {
    use fastlane::nic::proto::{build_udp, parse_udp_frame, IPV4_OFFSET, UDP_OFFSET};
    use fastlane::nic::{TxOffload, L4};
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 4096).unwrap();
    let cfg = NicConfig { rx_checksum: true, ..jumbo() };
    let mut v = fastlane::nic::open(&vfio, &env("FASTLANE_VIRTIO"), &pool, &cfg).unwrap();
    drain(v.as_mut());
    let igb_pool = PacketPool::new(&vfio, 2048).unwrap();
    let mut igb = Igb::open(&vfio, &env("FASTLANE_IGB0"), &igb_pool, &jumbo()).unwrap();
    drain(&mut igb);
    let (vm, im) = (v.mac_address(), igb.mac_address());
    let payloads: Vec<usize> = vec![0, 1, 18, 100, 1000, 1472, 1473, 4000, 8972];
    let off = TxOffload { ip_checksum: true, l4_checksum: Some(L4::Udp), vlan: None };
    let mut pkts = Vec::new();
    for (i, &n) in payloads.iter().enumerate() {
        let data: Vec<u8> = (0..n).map(|b| (b * 7 + i) as u8).collect();
        let mut f = Vec::new();
        build_udp(&mut f, im, vm, [10, 9, 0, 1], [10, 9, 0, 2], 4000 + i as u16, 9, &data).unwrap();
        f[IPV4_OFFSET + 10..IPV4_OFFSET + 12].fill(0);
        f[UDP_OFFSET + 6..UDP_OFFSET + 8].fill(0);
        pkts.push(jumbo_packet(v.as_mut(), &f));
    }
    let start = Instant::now();
    while !pkts.is_empty() {
        v.tx_burst_offload(&mut pkts, &off);
        assert!(start.elapsed() < DEADLINE, "{} frames not taken: {:?}", pkts.len(), v.check_tx(&pkts[0]));
    }
    let mut got = Vec::new();
    let mut rx = Vec::new();
    while got.len() < payloads.len() && start.elapsed() < DEADLINE {
        igb.rx_burst(&mut rx, 32);
        for p in rx.drain(..) {
            let f = p.to_vec();
            if let Ok(u) = parse_udp_frame(&f) {
                if u.ip.hdr.src == [10, 9, 0, 1] {
                    got.push((u.udp.hdr.sport.get() - 4000, u.udp.payload.len()));
                }
            }
        }
    }
    let want: Vec<(u16, usize)> = payloads.iter().enumerate().map(|(i, &n)| (i as u16, n)).collect();
    assert_eq!(got, want, "every datagram with both checksums right, in order");
    println!("{} UDP datagrams of 0-8972 bytes, both checksums right at the peer", payloads.len());
}

#[test]
fn behind_the_hub_no_checksum_features_and_no_verdicts() {
    // QEMU's virtio-net offers VIRTIO_NET_F_CSUM / GUEST_CSUM only with a
    // vnet header on its peer (a tap); behind a hub it writes flags 0, so
    // received frames carry no verdict even when asked.
    let mut p = open_port(&NicConfig { rx_checksum: true, ..NicConfig::default() });
    let f = p.nic.features();
    assert_eq!(f & (spec::VIRTIO_NET_F_CSUM | spec::VIRTIO_NET_F_GUEST_CSUM), 0, "{}", spec::feature_names(f));
    let mut peer = igb_peer(&p);
    let frames = vec![frame_bytes(p.nic.mac_address(), peer.mac(), 0x71, 0, 200)];
    assert_eq!(peer.send(&frames), 1);
    let (mut pkts, start) = (Vec::new(), Instant::now());
    while start.elapsed() < DEADLINE {
        p.nic.rx_burst(&mut pkts, 32);
        if let Some(x) = pkts.iter().find(|x| frame_meta(&x.to_vec()).is_some_and(|m| m.0 == 0x71)) {
            assert_eq!(x.rx_status(), 0);
            assert_eq!(x.rx_l4_checksum(), fastlane::nic::RxChecksum::NotChecked);
            return;
        }
        pkts.clear();
    }
    panic!("the frame never arrived");
}

/// The virtio port on a host tap (FASTLANE_VIRTIO_MQ, one queue pair
/// here): QEMU offers VIRTIO_NET_F_CSUM there (the tap has a vnet header),
/// so UDP checksums are left to the device through the net header, and
/// the host kernel finishes them on their way through its bridge to the
/// hub. The igb driver on the other side verifies every datagram in
/// software. Needs the port bound to vfio-pci (run-all.sh binds it before
/// guest_virtio_mq and runs this test then); skipped otherwise.
#[test]
fn on_a_tap_the_device_fills_in_udp_checksums() {
    use fastlane::nic::proto::{build_udp, parse_udp_frame, IPV4_OFFSET, UDP_OFFSET};
    use fastlane::nic::{RxChecksum, TxOffload, L4};
    let Ok(addr) = std::env::var("FASTLANE_VIRTIO_MQ") else {
        println!("SKIP: no virtio-net port on a tap (FASTLANE_VIRTIO_MQ)");
        return;
    };
    let vfio = Vfio::new().unwrap();
    let pool = PacketPool::new(&vfio, 2048).unwrap();
    let cfg = NicConfig { rx_checksum: true, ..NicConfig::default() };
    let mut v = match VirtioNet::open(&vfio, &addr, &pool, &cfg) {
        Ok(v) => v,
        Err(e) => {
            println!("SKIP: {addr} not usable here ({e}); run-all.sh binds it for guest_virtio_mq");
            return;
        }
    };
    let f = v.features();
    println!("{addr}: {}", spec::feature_names(f));
    assert_ne!(f & spec::VIRTIO_NET_F_CSUM, 0, "QEMU offers CSUM with a tap peer");
    assert_ne!(f & spec::VIRTIO_NET_F_GUEST_CSUM, 0, "and GUEST_CSUM, taken when rx_checksum asks");
    let igb_pool = PacketPool::new(&vfio, 2048).unwrap();
    let mut igb = Igb::open(&vfio, &env("FASTLANE_IGB0"), &igb_pool, &NicConfig::default()).unwrap();
    drain(&mut v);
    drain(&mut igb);
    let (vm, im) = (v.mac_address(), igb.mac_address());
    let off = TxOffload { ip_checksum: true, l4_checksum: Some(L4::Udp), vlan: None };
    const N: usize = 200;
    let (mut sent, mut got, mut rx) = (0, Vec::new(), Vec::new());
    let start = Instant::now();
    while got.len() < N && start.elapsed() < Duration::from_secs(20) {
        if sent < N && sent - got.len() < 16 {
            let n = 1 + sent * 7 % 1400;
            let data: Vec<u8> = (0..n).map(|b| (b * 3 + sent) as u8).collect();
            let mut fr = Vec::new();
            build_udp(&mut fr, im, vm, [10, 8, 0, 1], [10, 8, 0, 2], 5000, sent as u16, &data).unwrap();
            fr[IPV4_OFFSET + 10..IPV4_OFFSET + 12].fill(0);
            fr[UDP_OFFSET + 6..UDP_OFFSET + 8].fill(0);
            let mut pkts = vec![jumbo_packet(&mut v, &fr)];
            sent += v.tx_burst_offload(&mut pkts, &off);
        }
        igb.rx_burst(&mut rx, 32);
        for p in rx.drain(..) {
            let fr = p.to_vec();
            let ours = fr.len() > UDP_OFFSET + 8 && fr[IPV4_OFFSET + 12..IPV4_OFFSET + 16] == [10, 8, 0, 1];
            if ours {
                let u = parse_udp_frame(&fr).unwrap_or_else(|e| panic!("datagram {}: {e}", got.len()));
                got.push(u.udp.hdr.dport.get());
            }
        }
    }
    // The host's tap/bridge path may drop a frame now and then (see
    // guest_virtio_mq); every one that arrives must be right.
    assert!(got.len() + 2 >= N, "{} of {N} datagrams arrived", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    // The other way: what the device reports on frames from igb.
    let (mut verdicts, mut pkts) = ([0usize; 3], Vec::new());
    let frames: Vec<Vec<u8>> = (0..32).map(|i| {
        let mut fr = Vec::new();
        build_udp(&mut fr, vm, im, [10, 8, 0, 2], [10, 8, 0, 1], 9, 5000 + i, &[i as u8; 300]).unwrap();
        fr
    }).collect();
    let mut igb_pkts: Vec<Packet> = frames.iter().map(|fr| packet(&igb_pool, fr)).collect();
    while !igb_pkts.is_empty() {
        igb.tx_burst(&mut igb_pkts);
    }
    let start = Instant::now();
    while verdicts.iter().sum::<usize>() < 30 && start.elapsed() < Duration::from_secs(5) {
        v.rx_burst(&mut pkts, 32);
        for p in pkts.drain(..) {
            let fr = p.to_vec();
            if fr.len() > UDP_OFFSET && fr[IPV4_OFFSET + 12..IPV4_OFFSET + 16] == [10, 8, 0, 2] {
                assert!(parse_udp_frame(&fr).is_ok(), "a frame from igb arrived intact");
                let i = match p.rx_l4_checksum() {
                    RxChecksum::Good => 0,
                    RxChecksum::Bad => 1,
                    RxChecksum::NotChecked => 2,
                };
                verdicts[i] += 1;
            }
        }
    }
    assert_eq!(verdicts[1], 0, "no good frame reported bad");
    println!(
        "tap: {} of {N} UDP datagrams with device-filled checksums verified at igb; from igb: {} reported Good (DATA_VALID/NEEDS_CSUM), {} not checked",
        got.len(),
        verdicts[0],
        verdicts[2]
    );
}
