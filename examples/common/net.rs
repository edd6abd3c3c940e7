//! Shared by the network tools (pktgen, rxcount, udp_echo, l2fwd): value
//! parsers for addresses and ports, a transmit pacer and the per-flow
//! sequence tracker, as pure code (tests/net_tools_args.rs drives it
//! without a device).

use std::collections::BTreeSet;
use std::time::Duration;

/// Most packets per second `--rate` takes (far above any port here).
pub const MAX_RATE: u64 = 1_000_000_000;
/// Most flows `--flows` takes: one per UDP source port above the base.
pub const MAX_FLOWS: u16 = 4096;

/// A MAC address: six hex bytes separated by `:` or `-`.
pub fn mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    let bad = || format!("{s:?} is not a MAC address (six hex bytes, e.g. 02:00:00:00:00:01)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An IPv4 address in dotted decimal.
pub fn ipv4(s: &str) -> Result<[u8; 4], String> {
    s.trim()
        .parse::<std::net::Ipv4Addr>()
        .map(|a| a.octets())
        .map_err(|_| format!("{s:?} is not an IPv4 address (e.g. 10.0.0.1)"))
}

/// `--ip SRC,DST`: two IPv4 addresses.
pub fn ip_pair(s: &str) -> Result<([u8; 4], [u8; 4]), String> {
    match s.split(',').collect::<Vec<_>>()[..] {
        [a, b] => Ok((ipv4(a)?, ipv4(b)?)),
        _ => Err("expected SRC,DST: two IPv4 addresses separated by a comma".into()),
    }
}

/// `--udp SPORT,DPORT`: two UDP ports, 1 to 65535.
pub fn udp_ports(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|&v| v != 0)
            .ok_or_else(|| format!("{p:?} is not a UDP port (1 to 65535)"))
    };
    match s.split(',').collect::<Vec<_>>()[..] {
        [a, b] => Ok((port(a)?, port(b)?)),
        _ => Err("expected SPORT,DPORT: two UDP ports separated by a comma".into()),
    }
}

/// `--eth-dest PORT,MAC` (l2fwd): a port index and the MAC its frames go to.
pub fn eth_dest(s: &str) -> Result<(usize, [u8; 6]), String> {
    let Some((p, m)) = s.split_once(',') else {
        return Err("expected PORT,MAC (a port index, a MAC address)".into());
    };
    let port = p
        .trim()
        .parse::<usize>()
        .map_err(|_| format!("{p:?} is not a port index"))?;
    Ok((port, mac(m)?))
}

/// Source ports of `flows` flows from `base` must all be ports (no wrap
/// past 65535).
pub fn check_flows(base: u16, flows: u16) -> Result<(), String> {
    if flows == 0 || u32::from(base) + u32::from(flows) - 1 > u32::from(u16::MAX) {
        return Err(format!(
            "--flows {flows} from source port {base}: the source ports {base}..{} pass 65535",
            u32::from(base) + u32::from(flows) - 1
        ));
    }
    Ok(())
}

/// Paces transmission to `rate` packets per second: how many more packets
/// may go now, given the time since the start and the packets made so far.
pub struct Pacer {
    rate: u64,
}

impl Pacer {
    /// `rate` packets per second (at least 1).
    pub fn new(rate: u64) -> Pacer {
        Pacer { rate: rate.max(1) }
    }

    /// Packets that may be made now, `elapsed` after the start, when `made`
    /// were made already (never more than `max`).
    pub fn allowed(&self, elapsed: Duration, made: u64, max: u64) -> u64 {
        let due = (u128::from(self.rate) * elapsed.as_nanos() / 1_000_000_000)
            .min(u128::from(u64::MAX)) as u64;
        due.saturating_sub(made).min(max)
    }
}

/// Most missing sequence numbers a flow remembers (to tell a late packet
/// from a duplicate); beyond that, missing numbers are counted lost.
pub const MAX_MISSING: usize = 1 << 16;

/// Sequence numbers of one flow: which arrived in order, late
/// (reordered), twice (duplicates), and which are still missing (lost).
/// Numbers start at 0.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    /// The next number expected: one past the highest seen (u128: past
    /// u64::MAX too).
    next: u128,
    missing: BTreeSet<u64>,
    /// Missing numbers not remembered (gaps past [`MAX_MISSING`]).
    forgotten: u64,
    /// Arrived as the highest so far.
    pub in_order: u64,
    /// Arrived after a higher one (filled a gap).
    pub reordered: u64,
    /// Arrived again, or too late to tell.
    pub duplicates: u64,
}

impl SeqTracker {
    /// Records the arrival of `seq`.
    pub fn see(&mut self, seq: u64) {
        if u128::from(seq) >= self.next {
            // Below 2^64: seq >= next.
            let next = self.next as u64;
            let gap = seq - next;
            let room = (MAX_MISSING - self.missing.len()) as u64;
            if gap <= room {
                self.missing.extend(next..seq);
            } else {
                self.forgotten = self.forgotten.saturating_add(gap);
            }
            self.next = u128::from(seq) + 1;
            self.in_order += 1;
        } else if self.missing.remove(&seq) {
            self.reordered += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Numbers below the highest seen that never arrived.
    pub fn lost(&self) -> u64 {
        self.missing.len() as u64 + self.forgotten
    }

    /// One past the highest number seen (how many the sender had sent),
    /// at most u64::MAX.
    pub fn next(&self) -> u64 {
        u64::try_from(self.next).unwrap_or(u64::MAX)
    }
}
