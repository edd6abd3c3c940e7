//! NIC test traffic over `dyn Nic` ports: test frames with a checked
//! pattern, sent windowed and verified on the receiving port (lost,
//! duplicated, reordered or corrupted frames fail the test).

use std::time::{Duration, Instant};

use super::{frame_bytes, frame_meta, HEADER, META};
use fastlane::nic::{alloc_packet, Nic, Packet, PacketPool};

/// Where test frames go: every port on the hub takes them.
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// How long any one exchange may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A guest environment variable (the devices' PCI addresses).
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} not set: run in the guest (tests/guest/*.sh)"))
}

pub fn payload_byte(tag: u32, seq: u32, i: usize) -> u8 {
    (seq.wrapping_mul(0x9e37_79b1) ^ tag.rotate_left(11)).wrapping_add(i as u32 * 7) as u8 ^ (seq >> 8) as u8
}

/// A test frame; lengths below 60 are not used (no padding questions).
pub fn frame(pool: &PacketPool, src: [u8; 6], tag: u32, seq: u32, len: usize) -> Packet {
    assert!((60..=1514).contains(&len));
    let f = frame_bytes(BROADCAST, src, tag, seq, len, |i| payload_byte(tag, seq, i));
    let mut p = alloc_packet(pool.pool(), 0).unwrap();
    p.write(&f).unwrap();
    p
}

/// Length of frame `seq` of `tag`: 60..=1514, varied.
pub fn len_of(tag: u32, seq: u32) -> usize {
    60 + (seq.wrapping_mul(2_654_435_761) ^ tag) as usize % 1455
}

/// A received test frame: (tag, sequence number, length), every byte
/// checked. `None` for frames that are not ours (other EtherType).
pub fn parse(p: &Packet) -> Option<(u32, u32, usize)> {
    let f = p.to_vec();
    let (tag, seq, sent) = frame_meta(&f)?;
    assert_eq!(f.len(), sent, "frame {seq} of tag {tag:#x}: length");
    for (i, &b) in f.iter().enumerate().skip(HEADER + META) {
        assert_eq!(b, payload_byte(tag, seq, i), "frame {seq} of tag {tag:#x}, {sent} bytes: byte {i} corrupted");
    }
    Some((tag, seq, sent))
}

/// Receives and drops frames until none came for 300 ms.
pub fn drain(port: &mut dyn Nic) -> usize {
    let mut v = Vec::with_capacity(64);
    let (mut quiet, start, mut n) = (Instant::now(), Instant::now(), 0);
    while quiet.elapsed() < Duration::from_millis(300) && start.elapsed() < DEADLINE {
        let got = port.rx_burst(&mut v, 64);
        if got > 0 {
            n += got;
            quiet = Instant::now();
            v.clear();
        }
    }
    n
}

/// Sends `n` frames of `tag` from `tx` while receiving on `rx`, at most
/// `window` unreceived at once; requires all to arrive, in order, intact,
/// and nothing more. Frames of other tags are ignored.
pub fn exchange(pool: &PacketPool, tx: &mut dyn Nic, rx: &mut dyn Nic, tag: u32, n: u32, window: u32) {
    let src = tx.mac_address();
    let (mut sent, mut got) = (0u32, 0u32);
    let mut stage = Vec::with_capacity(64);
    let mut inbox = Vec::with_capacity(64);
    let start = Instant::now();
    let mut receive = |rx: &mut dyn Nic, got: &mut u32| {
        rx.rx_burst(&mut inbox, 64);
        for p in inbox.drain(..) {
            if let Some((t, seq, len)) = parse(&p) {
                if t != tag {
                    continue;
                }
                assert_eq!(seq, *got, "tag {tag:#x}: frame {seq} arrived where {} was next (lost/duplicated/reordered)", *got);
                assert_eq!(len, len_of(tag, seq));
                *got += 1;
            }
        }
    };
    while got < n {
        assert!(start.elapsed() < DEADLINE, "tag {tag:#x}: {got} of {n} frames arrived, {sent} sent");
        while stage.len() < 32 && sent + (stage.len() as u32) < n && sent + (stage.len() as u32) - got < window {
            let seq = sent + stage.len() as u32;
            stage.push(frame(pool, src, tag, seq, len_of(tag, seq)));
        }
        sent += tx.tx_burst(&mut stage) as u32;
        receive(rx, &mut got);
    }
    assert!(stage.is_empty());
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(200) {
        receive(rx, &mut got);
    }
    assert_eq!(got, n, "tag {tag:#x}: extra frames");
}

