//! Transmit offloads asked for a burst ([`TxOffload`]): the IPv4 header
//! checksum, the TCP or UDP checksum, a VLAN tag. The headers a frame must
//! have for them are checked here, once for every driver; a NIC that does
//! the work gets the header lengths and a checksum field seeded with the
//! pseudo-header sum (what Intel NICs add the segment to), one that cannot
//! gets the same result in software ([`apply_in_software`]).

use crate::proto::{
    checksum_add, checksum_fold, pseudo_header_sum, EthHdr, Ipv4Hdr, ETHERTYPE_IPV4, ETH_HLEN,
    IPV4_HLEN,
};
use crate::{NicError, Packet, Result};

/// EtherType of an IEEE 802.1Q tag (TPID).
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// Bytes of an 802.1Q tag.
pub const VLAN_HLEN: usize = 4;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// Where the checksum is in a TCP header.
const TCP_CSUM_AT: usize = 16;
/// Where the checksum is in a UDP header.
const UDP_CSUM_AT: usize = 6;
/// Where the checksum is in an IPv4 header.
const IPV4_CSUM_AT: usize = 10;

/// A layer-4 protocol whose checksum the NIC fills in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl L4 {
    /// The IP protocol number.
    pub const fn proto(self) -> u8 {
        match self {
            L4::Tcp => IPPROTO_TCP,
            L4::Udp => crate::proto::IPPROTO_UDP,
        }
    }

    const fn csum_at(self) -> usize {
        match self {
            L4::Tcp => TCP_CSUM_AT,
            L4::Udp => UDP_CSUM_AT,
        }
    }
}

/// Work asked of the NIC for every frame of a burst
/// ([`crate::Nic::tx_burst_offload`]). The default asks for nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOffload {
    /// Fill in the IPv4 header checksum (whatever the field holds).
    pub ip_checksum: bool,
    /// Fill in the TCP or UDP checksum (whatever the field holds): the
    /// frame must be IPv4 carrying that protocol.
    pub l4_checksum: Option<L4>,
    /// Insert this 802.1Q tag (TCI: priority, DEI, VLAN id) after the
    /// source address. igb needs [`crate::NicConfig::vlan`].
    pub vlan: Option<u16>,
}

impl TxOffload {
    /// True when nothing is asked.
    pub fn is_empty(&self) -> bool {
        !self.ip_checksum && self.l4_checksum.is_none() && self.vlan.is_none()
    }

    /// Checksums asked for.
    pub fn checksums(&self) -> bool {
        self.ip_checksum || self.l4_checksum.is_some()
    }
}

/// Where a frame's headers are, as a NIC's context needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes before the IP header (14, or 18 with a tag in the frame).
    pub l2_len: usize,
    /// Bytes of the IPv4 header (IHL × 4); 0 when no checksum is asked.
    pub l3_len: usize,
}

fn refuse(why: &'static str) -> NicError {
    NicError::Offload(why)
}

/// Checks that `p` has the headers `off` needs and prepares them for a NIC
/// that computes the checksums: the IPv4 checksum field zeroed, the TCP or
/// UDP one seeded with the pseudo-header sum (uncomplemented, as 82576
/// 7.2.5 and DPDK's Intel drivers expect). Returns the header lengths. A
/// refused frame is not changed.
pub fn prepare(p: &mut Packet, off: &TxOffload) -> Result<Layout> {
    // The whole frame (all buffers of a jumbo one); the headers must be in
    // the first buffer, `f`.
    let frame_len = p.len();
    let f = p.data_mut();
    let eth: EthHdr = read(f, 0).ok_or(refuse("shorter than an Ethernet header"))?;
    let mut l2_len = ETH_HLEN;
    let mut ethertype = eth.ethertype.get();
    if ethertype == ETHERTYPE_VLAN {
        let inner: [u8; 2] = read(f, ETH_HLEN + 2).ok_or(refuse("truncated VLAN tag"))?;
        ethertype = u16::from_be_bytes(inner);
        l2_len += VLAN_HLEN;
    }
    if !off.checksums() {
        return Ok(Layout { l2_len, l3_len: 0 });
    }
    if ethertype != ETHERTYPE_IPV4 {
        return Err(refuse("checksums asked for a frame that is not IPv4"));
    }
    let ip: Ipv4Hdr = read(f, l2_len).ok_or(refuse("truncated IPv4 header"))?;
    let l3_len = ip.header_len();
    let total = usize::from(ip.total_len.get());
    let l4_at = l2_len + l3_len;
    if ip.ver_ihl >> 4 != 4 || l3_len < IPV4_HLEN || total < l3_len || l2_len + total > frame_len {
        return Err(refuse("bad IPv4 header (version, IHL or total length)"));
    }
    if let Some(l4) = off.l4_checksum {
        if ip.proto != l4.proto() {
            return Err(refuse("the IPv4 payload is not the TCP/UDP asked for"));
        }
        if ip.frag.get() & (crate::proto::IPV4_MF | crate::proto::IPV4_OFFSET_MASK) != 0 {
            return Err(refuse(
                "a fragment: its TCP/UDP checksum covers other frames too",
            ));
        }
        let at = l4_at + l4.csum_at();
        let l4_len = total - l3_len;
        if at + 2 > l2_len + total {
            return Err(refuse("truncated TCP/UDP header"));
        }
        if at + 2 > f.len() {
            return Err(refuse("the TCP/UDP header is not in the frame's first buffer"));
        }
        // `total` fits 16 bits, so does `l4_len`.
        let seed = !checksum_fold(pseudo_header_sum(ip.src, ip.dst, l4.proto(), l4_len as u16));
        f[at..at + 2].copy_from_slice(&seed.to_be_bytes());
    }
    if off.ip_checksum {
        f[l2_len + IPV4_CSUM_AT..l2_len + IPV4_CSUM_AT + 2].fill(0);
    }
    Ok(Layout { l2_len, l3_len })
}

/// Does in software what a NIC would do for `off` (after [`prepare`]):
/// checksums computed and written, the VLAN tag inserted (the frame grows
/// by 4 bytes into the headroom: the addresses move, the rest stays).
pub fn apply_in_software(p: &mut Packet, off: &TxOffload, layout: Layout) -> Result<()> {
    if let Some(tci) = off.vlan {
        if p.headroom() < VLAN_HLEN {
            return Err(refuse("no headroom for a VLAN tag"));
        }
        if p.len() < ETH_HLEN {
            return Err(refuse("shorter than an Ethernet header"));
        }
        p.prepend(VLAN_HLEN)?;
        let f = p.data_mut();
        f.copy_within(VLAN_HLEN..VLAN_HLEN + 12, 0);
        f[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f[14..16].copy_from_slice(&tci.to_be_bytes());
    }
    if !off.checksums() {
        return Ok(());
    }
    let l2_len = layout.l2_len + if off.vlan.is_some() { VLAN_HLEN } else { 0 };
    let multi = p.is_multi();
    let whole = if multi { p.to_vec() } else { Vec::new() };
    let f = p.data_mut();
    let ip: Ipv4Hdr = read(f, l2_len).ok_or(refuse("truncated IPv4 header"))?;
    let (l4_at, end) = (
        l2_len + layout.l3_len,
        l2_len + usize::from(ip.total_len.get()),
    );
    if let Some(l4) = off.l4_checksum {
        // The field holds the pseudo-header sum: adding the segment and
        // complementing gives the checksum, as the NIC would. A jumbo
        // frame's segment spans buffers: summed from a copy (a slow path).
        let at = l4_at + l4.csum_at();
        let sum = if multi {
            checksum_add(0, whole.get(l4_at..end).ok_or(refuse("truncated IPv4 payload"))?)
        } else {
            checksum_add(0, f.get(l4_at..end).ok_or(refuse("truncated IPv4 payload"))?)
        };
        let mut c = checksum_fold(sum);
        if c == 0 && l4 == L4::Udp {
            c = 0xffff;
        }
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    if off.ip_checksum {
        let c = checksum_fold(checksum_add(0, &f[l2_len..l4_at]));
        f[l2_len + IPV4_CSUM_AT..l2_len + IPV4_CSUM_AT + 2].copy_from_slice(&c.to_be_bytes());
    }
    Ok(())
}

/// Takes back a tag [`apply_in_software`] inserted (the frame was not
/// sent): the addresses move back, the frame shrinks by 4 bytes.
pub fn remove_vlan(p: &mut Packet) -> Result<()> {
    let f = p.data_mut();
    if f.len() < ETH_HLEN + VLAN_HLEN || f[12..14] != ETHERTYPE_VLAN.to_be_bytes() {
        return Err(refuse("no VLAN tag to remove"));
    }
    f.copy_within(0..12, VLAN_HLEN);
    p.trim_front(VLAN_HLEN)
}

/// [`crate::Nic::tx_burst_offload`] for a port whose NIC does none of it:
/// one frame at a time, each changed just before it is queued and changed
/// back (its tag removed) if the ring refuses it, so a frame left over is
/// never treated twice.
pub fn tx_burst_in_software<N: crate::Nic + ?Sized>(
    port: &mut N,
    pkts: &mut Vec<Packet>,
    off: &TxOffload,
) -> usize {
    if off.is_empty() {
        return port.tx_burst(pkts);
    }
    let mut one = Vec::with_capacity(1);
    let mut sent = 0;
    while !pkts.is_empty() {
        let p = &mut pkts[0];
        let ready = port
            .check_tx(p)
            .and_then(|()| prepare(p, off))
            .and_then(|l| apply_in_software(p, off, l));
        if ready.is_err() || port.check_tx(&pkts[0]).is_err() {
            break;
        }
        one.push(pkts.remove(0));
        if port.tx_burst(&mut one) == 1 {
            sent += 1;
            continue;
        }
        let mut back = one.remove(0);
        if off.vlan.is_some() {
            // Inserted above, so it is there to remove.
            let _ = remove_vlan(&mut back);
        }
        pkts.insert(0, back);
        break;
    }
    sent
}

/// A `T` at `at` in `f`, if it is all there.
fn read<T: bytemuck::Pod>(f: &[u8], at: usize) -> Option<T> {
    f.get(at..at.checked_add(std::mem::size_of::<T>())?)
        .map(bytemuck::pod_read_unaligned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{internet_checksum, parse_udp_frame, IPPROTO_UDP};
    use crate::{PacketPool, HEADROOM};

    const SRC: [u8; 4] = [10, 0, 0, 1];
    const DST: [u8; 4] = [10, 0, 0, 2];

    /// An IPv4 frame with `payload` after a `proto` header of `l4_hlen`
    /// bytes, both checksums zero; IHL 5 or, with `options`, 6.
    fn frame(proto: u8, l4_hlen: usize, payload: &[u8], options: bool) -> Vec<u8> {
        let ihl = if options { 24 } else { 20 };
        let l4_len = l4_hlen + payload.len();
        let mut f = vec![0u8; 14 + ihl + l4_len];
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x40 | (ihl / 4) as u8;
        f[16..18].copy_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = proto;
        f[26..30].copy_from_slice(&SRC);
        f[30..34].copy_from_slice(&DST);
        let l4 = 14 + ihl;
        f[l4..l4 + 2].copy_from_slice(&1234u16.to_be_bytes());
        f[l4 + 2..l4 + 4].copy_from_slice(&5678u16.to_be_bytes());
        if proto == IPPROTO_UDP {
            f[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            f[l4 + 12] = 5 << 4; // data offset
        }
        f[l4 + l4_hlen..].copy_from_slice(payload);
        f
    }

    fn packet(pool: &PacketPool, f: &[u8]) -> Packet {
        let mut p = Packet::with_offset(pool.pool().alloc().unwrap(), HEADROOM, 0).unwrap();
        p.write(f).unwrap();
        p
    }

    /// The TCP/UDP checksum of a frame as a receiver checks it: 0 over
    /// pseudo-header, header and payload when right.
    fn l4_sum_ok(f: &[u8], l2: usize, proto: u8) -> bool {
        let ihl = usize::from(f[l2] & 15) * 4;
        let seg = &f[l2 + ihl..];
        checksum_fold(checksum_add(
            pseudo_header_sum(SRC, DST, proto, seg.len() as u16),
            seg,
        )) == 0
    }

    #[test]
    fn jumbo_frames_get_the_checksum_of_every_buffer() {
        let pool = PacketPool::new_unmapped(16).unwrap();
        let off = TxOffload { ip_checksum: true, l4_checksum: Some(L4::Udp), vlan: None };
        for n in [1473usize, 2000, 4001, 8972] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 13 + i / 256) as u8).collect();
            let f = frame(IPPROTO_UDP, 8, &payload, false);
            let alloc = || pool.pool().alloc().map_err(NicError::from);
            let mut p = crate::packet::alloc_frame(alloc, HEADROOM, f.len(), crate::MAX_JUMBO_FRAME).unwrap();
            p.write(&f).unwrap();
            // The first buffer takes 1920 bytes after the headroom.
            assert_eq!(p.is_multi(), f.len() > 2048 - HEADROOM, "{n}");
            let layout = prepare(&mut p, &off).unwrap();
            apply_in_software(&mut p, &off, layout).unwrap();
            let out = p.to_vec();
            assert!(l4_sum_ok(&out, 14, IPPROTO_UDP), "{n}-byte payload over {} buffers", p.segment_count());
            assert_eq!(internet_checksum(&out[14..34]), 0);
            assert_eq!(&out[42..], &payload[..], "payload untouched");
        }
        // Headers that are not all in the first buffer: refused, unchanged.
        let f = frame(IPPROTO_UDP, 8, &[5; 3000], false);
        let mut p = Packet::with_offset(pool.pool().alloc().unwrap(), 0, 0).unwrap();
        p.write(&f[..30]).unwrap();
        let mut tail = Packet::with_offset(pool.pool().alloc().unwrap(), 0, 0).unwrap();
        tail.write(&f[30..1500]).unwrap();
        p.push_segment(tail).map_err(|(_, e)| e).unwrap();
        let mut buf = pool.pool().alloc().unwrap();
        buf.write(0, &f[1500..]).unwrap();
        p.push_segment(Packet::piece(buf, f.len() - 1500).unwrap()).map_err(|(_, e)| e).unwrap();
        assert_eq!(p.to_vec(), f);
        assert!(matches!(prepare(&mut p, &off), Err(NicError::Offload(_))));
        assert_eq!(p.to_vec(), f);
    }

    #[test]
    fn software_checksums_match_a_receivers_check_for_udp_and_tcp() {
        let pool = PacketPool::new_unmapped(8).unwrap();
        for (l4, hlen) in [(L4::Udp, 8), (L4::Tcp, 20)] {
            for options in [false, true] {
                for n in [0usize, 1, 2, 17, 1000] {
                    let payload: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
                    let mut p = packet(&pool, &frame(l4.proto(), hlen, &payload, options));
                    let off = TxOffload {
                        ip_checksum: true,
                        l4_checksum: Some(l4),
                        vlan: None,
                    };
                    let layout = prepare(&mut p, &off).unwrap();
                    assert_eq!(
                        layout,
                        Layout {
                            l2_len: 14,
                            l3_len: if options { 24 } else { 20 }
                        }
                    );
                    apply_in_software(&mut p, &off, layout).unwrap();
                    let f = p.to_vec();
                    assert_eq!(
                        internet_checksum(&f[14..14 + layout.l3_len]),
                        0,
                        "{l4:?} IPv4 header"
                    );
                    assert!(
                        l4_sum_ok(&f, 14, l4.proto()),
                        "{l4:?} {n} bytes, options {options}"
                    );
                    if l4 == L4::Udp && !options {
                        assert!(parse_udp_frame(&f).is_ok(), "proto.rs agrees");
                    }
                }
            }
        }
    }

    /// What the NIC computes from the seeded field equals the checksum.
    #[test]
    fn the_seed_is_what_the_nic_adds_the_segment_to() {
        let pool = PacketPool::new_unmapped(2).unwrap();
        let mut p = packet(&pool, &frame(IPPROTO_UDP, 8, b"some payload", false));
        let off = TxOffload {
            l4_checksum: Some(L4::Udp),
            ..TxOffload::default()
        };
        prepare(&mut p, &off).unwrap();
        let f = p.to_vec();
        // The NIC: sum of the segment from the UDP header on, field included.
        let nic = checksum_fold(checksum_add(0, &f[34..]));
        let mut zeroed = f.clone();
        zeroed[40..42].fill(0);
        let want = crate::proto::udp_checksum(SRC, DST, &zeroed[34..]).unwrap();
        assert_eq!(nic, want);
    }

    #[test]
    fn a_vlan_tag_goes_after_the_addresses_and_the_checksums_still_hold() {
        let pool = PacketPool::new_unmapped(2).unwrap();
        let plain = frame(IPPROTO_UDP, 8, &[9; 50], false);
        let mut p = packet(&pool, &plain);
        let off = TxOffload {
            ip_checksum: true,
            l4_checksum: Some(L4::Udp),
            vlan: Some(0x2064),
        };
        let layout = prepare(&mut p, &off).unwrap();
        apply_in_software(&mut p, &off, layout).unwrap();
        let f = p.to_vec();
        assert_eq!(f.len(), plain.len() + 4);
        assert_eq!(&f[..12], &plain[..12]);
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x20, 0x64]);
        assert_eq!(&f[16..18], &plain[12..14]);
        assert!(l4_sum_ok(&f, 18, IPPROTO_UDP));
        assert_eq!(internet_checksum(&f[18..38]), 0);
        // A frame already tagged: its IP header is found behind the tag.
        let mut q = packet(&pool, &f);
        let off = TxOffload {
            l4_checksum: Some(L4::Udp),
            ..TxOffload::default()
        };
        assert_eq!(
            prepare(&mut q, &off).unwrap(),
            Layout {
                l2_len: 18,
                l3_len: 20
            }
        );
    }

    /// A port without offloads whose ring takes `room` frames.
    struct Plain {
        room: usize,
        sent: Vec<Vec<u8>>,
    }

    impl crate::Nic for Plain {
        fn rx_burst(&mut self, _: &mut Vec<Packet>, _: usize) -> usize {
            0
        }
        fn tx_burst(&mut self, pkts: &mut Vec<Packet>) -> usize {
            let n = pkts.len().min(self.room);
            self.room -= n;
            self.sent.extend(pkts.drain(..n).map(|p| p.to_vec()));
            n
        }
        fn mac_address(&self) -> [u8; 6] {
            [2, 0, 0, 0, 0, 9]
        }
        fn link_status(&self) -> crate::LinkStatus {
            crate::LinkStatus {
                up: true,
                speed_mbps: None,
                full_duplex: true,
            }
        }
        fn set_promiscuous(&mut self, _: bool) -> Result<()> {
            Ok(())
        }
        fn stats(&mut self) -> crate::Stats {
            crate::Stats::default()
        }
        fn tx_in_flight(&self) -> usize {
            0
        }
        fn check_tx(&self, p: &Packet) -> Result<()> {
            crate::igb::check_frame(p)
        }
        fn alloc_packet(&mut self, _: usize) -> Result<Packet> {
            Err(NicError::Offload("no pool"))
        }
        fn recycle(&mut self, pkts: &mut Vec<Packet>) {
            pkts.clear();
        }
    }

    /// The trait's software path: right checksums, one tag per frame even
    /// when the ring fills, and a frame left over is left as it was.
    #[test]
    fn the_software_path_treats_each_frame_once() {
        let pool = PacketPool::new_unmapped(8).unwrap();
        let plain: Vec<Vec<u8>> = (0..5)
            .map(|i| frame(IPPROTO_UDP, 8, &[i; 30], false))
            .collect();
        let mut pkts: Vec<Packet> = plain.iter().map(|f| packet(&pool, f)).collect();
        let off = TxOffload {
            ip_checksum: true,
            l4_checksum: Some(L4::Udp),
            vlan: Some(7),
        };
        let mut port = Plain {
            room: 3,
            sent: Vec::new(),
        };
        let nic: &mut dyn crate::Nic = &mut port;
        assert_eq!(nic.tx_burst_offload(&mut pkts, &off), 3);
        assert_eq!(pkts.len(), 2);
        // Untagged again (its checksums filled in: doing that twice is harmless).
        let left = pkts[0].to_vec();
        assert_eq!(
            (left.len(), &left[..14]),
            (plain[3].len(), &plain[3][..14]),
            "the refused frame is untagged again"
        );
        port.room = 10;
        let nic: &mut dyn crate::Nic = &mut port;
        assert_eq!(nic.tx_burst_offload(&mut pkts, &off), 2);
        for (f, orig) in port.sent.iter().zip(&plain) {
            assert_eq!(f.len(), orig.len() + 4);
            assert_eq!(&f[12..16], &[0x81, 0, 0, 7], "exactly one tag");
            assert_eq!(internet_checksum(&f[18..38]), 0);
            assert!(l4_sum_ok(f, 18, IPPROTO_UDP));
        }
        // A frame the offload does not fit stops the burst.
        let mut arp = packet(&pool, &[0u8; 60]);
        arp.data_mut()[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut pkts = vec![arp];
        let nic: &mut dyn crate::Nic = &mut port;
        assert_eq!(
            nic.tx_burst_offload(
                &mut pkts,
                &TxOffload {
                    ip_checksum: true,
                    ..TxOffload::default()
                }
            ),
            0
        );
        assert_eq!(pkts.len(), 1);
    }

    #[test]
    fn frames_the_offload_does_not_fit_are_refused_unchanged() {
        let pool = PacketPool::new_unmapped(4).unwrap();
        let udp = TxOffload {
            l4_checksum: Some(L4::Udp),
            ..TxOffload::default()
        };
        let mut cases: Vec<(&str, Vec<u8>, TxOffload)> = Vec::new();
        let mut arp = frame(IPPROTO_UDP, 8, &[1; 20], false);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        cases.push(("not IPv4", arp, udp));
        cases.push((
            "TCP asked of UDP",
            frame(IPPROTO_UDP, 8, &[1; 20], false),
            TxOffload {
                l4_checksum: Some(L4::Tcp),
                ..udp
            },
        ));
        let mut long = frame(IPPROTO_UDP, 8, &[1; 20], false);
        long[16..18].copy_from_slice(&2000u16.to_be_bytes());
        cases.push(("total length past the frame", long, udp));
        let mut short_ihl = frame(IPPROTO_UDP, 8, &[1; 20], false);
        short_ihl[14] = 0x44;
        cases.push(("IHL 4", short_ihl, udp));
        let mut v6 = frame(IPPROTO_UDP, 8, &[1; 20], false);
        v6[14] = 0x65;
        cases.push(("version 6 in an IPv4 frame", v6, udp));
        let mut frag = frame(IPPROTO_UDP, 8, &[1; 20], false);
        frag[20] = 0x20; // MF
        cases.push(("a fragment", frag, udp));
        let mut tiny = frame(IPPROTO_UDP, 8, &[], false);
        tiny[16..18].copy_from_slice(&24u16.to_be_bytes()); // 4 bytes of UDP
        cases.push(("truncated UDP header", tiny, udp));
        cases.push(("runt", vec![0; 10], udp));
        for (what, f, off) in cases {
            let mut p = packet(&pool, &f);
            assert!(
                matches!(prepare(&mut p, &off), Err(NicError::Offload(_))),
                "{what}"
            );
            assert_eq!(p.to_vec(), f, "{what}: changed");
        }
        // Nothing asked: any frame goes.
        let mut p = packet(&pool, &[0u8; 60]);
        assert_eq!(
            prepare(&mut p, &TxOffload::default()).unwrap(),
            Layout {
                l2_len: 14,
                l3_len: 0
            }
        );
    }
}
