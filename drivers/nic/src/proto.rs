//! Header layouts of the protocols the tools speak, declared once:
//! Ethernet II, ARP for IPv4 over Ethernet (RFC 826), IPv4 (RFC 791), ICMP
//! echo (RFC 792) and UDP (RFC 768); the internet checksum (RFC 1071) with
//! the UDP pseudo-header; and parsers that take a frame from the wire and
//! say what is wrong with it ([`ProtoError`]) instead of panicking.
//!
//! Headers are `#[repr(C)]` byte-aligned Pod types (big-endian fields as
//! [`Be16`]), read from and written to byte slices with bytemuck, so a frame
//! at any alignment can be parsed. Parsers check every length against the
//! bytes actually present; Ethernet padding after the IP datagram is
//! allowed and left out of the payload.

use bytemuck::{Pod, Zeroable};

/// A 16-bit field in network byte order.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Be16([u8; 2]);

impl Be16 {
    /// From a host value.
    pub const fn new(v: u16) -> Be16 {
        Be16(v.to_be_bytes())
    }

    /// The host value.
    pub const fn get(self) -> u16 {
        u16::from_be_bytes(self.0)
    }
}

/// A MAC address.
pub type Mac = [u8; 6];
/// An IPv4 address, network order.
pub type Ipv4Addr = [u8; 4];

/// The broadcast MAC address.
pub const BROADCAST: Mac = [0xff; 6];

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// Ethernet II header (no VLAN tag).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EthHdr {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// EtherType.
    pub ethertype: Be16,
}
const _: () = assert!(std::mem::size_of::<EthHdr>() == ETH_HLEN);
/// Bytes of an Ethernet header.
pub const ETH_HLEN: usize = 14;

/// ARP hardware type Ethernet.
pub const ARP_HTYPE_ETHERNET: u16 = 1;
/// ARP operation: request.
pub const ARP_OP_REQUEST: u16 = 1;
/// ARP operation: reply.
pub const ARP_OP_REPLY: u16 = 2;

/// ARP packet for IPv4 over Ethernet (hardware length 6, protocol length 4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ArpIpv4 {
    /// Hardware type (1: Ethernet).
    pub htype: Be16,
    /// Protocol type (0x0800: IPv4).
    pub ptype: Be16,
    /// Hardware address length (6).
    pub hlen: u8,
    /// Protocol address length (4).
    pub plen: u8,
    /// Operation (request, reply).
    pub oper: Be16,
    /// Sender hardware address.
    pub sha: Mac,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: Mac,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}
/// Bytes of an IPv4-over-Ethernet ARP packet.
pub const ARP_LEN: usize = 28;
const _: () = assert!(std::mem::size_of::<ArpIpv4>() == ARP_LEN);

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 flags: don't fragment.
pub const IPV4_DF: u16 = 0x4000;
/// IPv4 flags: more fragments.
pub const IPV4_MF: u16 = 0x2000;
/// IPv4 fragment offset mask (8-byte units).
pub const IPV4_OFFSET_MASK: u16 = 0x1fff;
/// TTL of the headers the tools build.
pub const DEFAULT_TTL: u8 = 64;

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Ipv4Hdr {
    /// Version (high nibble, 4) and header length in 32-bit words (IHL).
    pub ver_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Header plus payload, bytes.
    pub total_len: Be16,
    /// Identification.
    pub id: Be16,
    /// Flags (DF, MF) and fragment offset.
    pub frag: Be16,
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub proto: u8,
    /// Header checksum.
    pub csum: Be16,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
}
/// Bytes of an IPv4 header without options (IHL 5).
pub const IPV4_HLEN: usize = 20;
const _: () = assert!(std::mem::size_of::<Ipv4Hdr>() == IPV4_HLEN);

impl Ipv4Hdr {
    /// A header of IHL 5 for `payload_len` bytes of `proto`, DF set,
    /// checksum filled in.
    pub fn new(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        payload_len: usize,
    ) -> Result<Ipv4Hdr, ProtoError> {
        let total = payload_len
            .checked_add(IPV4_HLEN)
            .and_then(|t| u16::try_from(t).ok())
            .ok_or(ProtoError::BadLength {
                what: "IPv4 total length",
                len: payload_len,
            })?;
        let mut h = Ipv4Hdr {
            ver_ihl: 0x45,
            tos: 0,
            total_len: Be16::new(total),
            id: Be16::new(0),
            frag: Be16::new(IPV4_DF),
            ttl: DEFAULT_TTL,
            proto,
            csum: Be16::new(0),
            src,
            dst,
        };
        h.csum = Be16::new(internet_checksum(bytemuck::bytes_of(&h)));
        Ok(h)
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.ver_ihl & 0x0f) * 4
    }
}

/// ICMP type echo reply.
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMP type echo request.
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// ICMP echo request/reply header (the data follows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IcmpEcho {
    /// Type (8 request, 0 reply).
    pub icmp_type: u8,
    /// Code (0).
    pub code: u8,
    /// Checksum over the whole ICMP message.
    pub csum: Be16,
    /// Identifier.
    pub id: Be16,
    /// Sequence number.
    pub seq: Be16,
}
/// Bytes of an ICMP echo header.
pub const ICMP_ECHO_LEN: usize = 8;
const _: () = assert!(std::mem::size_of::<IcmpEcho>() == ICMP_ECHO_LEN);

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct UdpHdr {
    /// Source port.
    pub sport: Be16,
    /// Destination port.
    pub dport: Be16,
    /// Header plus payload, bytes.
    pub len: Be16,
    /// Checksum over pseudo-header, header and payload (0: none sent).
    pub csum: Be16,
}
/// Bytes of a UDP header.
pub const UDP_HLEN: usize = 8;
const _: () = assert!(std::mem::size_of::<UdpHdr>() == UDP_HLEN);

/// Where the headers of an untagged IPv4/UDP frame with IHL 5 start.
pub const IPV4_OFFSET: usize = ETH_HLEN;
/// Offset of the UDP header in such a frame.
pub const UDP_OFFSET: usize = ETH_HLEN + IPV4_HLEN;
/// Offset of the UDP payload in such a frame.
pub const UDP_PAYLOAD_OFFSET: usize = UDP_OFFSET + UDP_HLEN;

/// What is wrong with a frame. Parsers return this; they never panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Fewer bytes than the header needs.
    #[error("truncated {what}: {have} bytes, {need} needed")]
    Truncated {
        /// Which header.
        what: &'static str,
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not the EtherType / protocol the parser handles.
    #[error("not {0}")]
    WrongProtocol(&'static str),
    /// IP version other than 4.
    #[error("IP version {0}, not 4")]
    BadVersion(u8),
    /// IHL below 5 words.
    #[error("IPv4 header length {0} words, below 5")]
    BadIhl(u8),
    /// A length field that disagrees with the bytes present or its header.
    #[error("bad {what}: {len}")]
    BadLength {
        /// Which field.
        what: &'static str,
        /// Its value.
        len: usize,
    },
    /// A fragment (MF set or offset non-zero): not reassembled.
    #[error("IPv4 fragment (not reassembled)")]
    Fragment,
    /// ARP for something other than IPv4 over Ethernet.
    #[error("ARP for other than IPv4 over Ethernet")]
    BadArp,
    /// The IPv4 header checksum does not verify.
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    /// The UDP or ICMP checksum does not verify.
    #[error("bad {0} checksum")]
    BadChecksum(&'static str),
}

/// Reads a `T` from the front of `bytes` (any alignment).
fn read_hdr<T: Pod>(bytes: &[u8], what: &'static str) -> Result<T, ProtoError> {
    let need = std::mem::size_of::<T>();
    match bytes.get(..need) {
        Some(b) => Ok(bytemuck::pod_read_unaligned(b)),
        None => Err(ProtoError::Truncated {
            what,
            have: bytes.len(),
            need,
        }),
    }
}

/// Adds `data` to a one's complement sum in progress (big-endian 16-bit
/// words; an odd last byte is padded with zero). Start from 0 and finish
/// with [`checksum_fold`]. Sums stay exact for any input below 2^48 bytes.
pub fn checksum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum from [`checksum_add`] to 16 bits and complements it: the
/// value for a checksum field.
pub fn checksum_fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The internet checksum of `data` (RFC 1071). Over data that includes
/// its own correct checksum field this is 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    checksum_fold(checksum_add(0, data))
}

/// Sum of the UDP pseudo-header (source, destination, protocol, UDP
/// length), to continue with [`checksum_add`] over the UDP header and
/// payload.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u64 {
    let s = checksum_add(0, &src);
    let s = checksum_add(s, &dst);
    s + u64::from(proto) + u64::from(len)
}

/// The UDP checksum for `segment` (header and payload, its checksum field
/// zero) between `src` and `dst`: 0 is sent as 0xffff (RFC 768).
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> Result<u16, ProtoError> {
    let len = u16::try_from(segment.len()).map_err(|_| ProtoError::BadLength {
        what: "UDP length",
        len: segment.len(),
    })?;
    let c = checksum_fold(checksum_add(
        pseudo_header_sum(src, dst, IPPROTO_UDP, len),
        segment,
    ));
    Ok(if c == 0 { 0xffff } else { c })
}

/// An IPv4 datagram inside a frame.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4<'a> {
    /// The fixed header.
    pub hdr: Ipv4Hdr,
    /// The whole header, options included (what the checksum covers).
    pub header: &'a [u8],
    /// The payload, `total_len - IHL*4` bytes (Ethernet padding left out).
    pub payload: &'a [u8],
}

impl<'a> Ipv4<'a> {
    /// Parses an IPv4 datagram from the start of `bytes` (an Ethernet
    /// payload): version 4, IHL ≥ 5, header and total length within
    /// `bytes`, not a fragment. The checksum is not checked here
    /// ([`Ipv4::checksum_ok`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Ipv4<'a>, ProtoError> {
        let hdr: Ipv4Hdr = read_hdr(bytes, "IPv4 header")?;
        let version = hdr.ver_ihl >> 4;
        if version != 4 {
            return Err(ProtoError::BadVersion(version));
        }
        let ihl = hdr.ver_ihl & 0x0f;
        if ihl < 5 {
            return Err(ProtoError::BadIhl(ihl));
        }
        let hlen = hdr.header_len();
        let total = usize::from(hdr.total_len.get());
        let Some(header) = bytes.get(..hlen) else {
            return Err(ProtoError::Truncated {
                what: "IPv4 options",
                have: bytes.len(),
                need: hlen,
            });
        };
        if total < hlen || total > bytes.len() {
            return Err(ProtoError::BadLength {
                what: "IPv4 total length",
                len: total,
            });
        }
        let frag = hdr.frag.get();
        if frag & IPV4_MF != 0 || frag & IPV4_OFFSET_MASK != 0 {
            return Err(ProtoError::Fragment);
        }
        // In range: hlen <= total <= bytes.len(), checked above.
        let payload = bytes.get(hlen..total).unwrap_or_default();
        Ok(Ipv4 {
            hdr,
            header,
            payload,
        })
    }

    /// Whether the header checksum verifies.
    pub fn checksum_ok(&self) -> bool {
        internet_checksum(self.header) == 0
    }
}

/// A UDP datagram inside an IPv4 datagram.
#[derive(Clone, Copy, Debug)]
pub struct Udp<'a> {
    /// The header.
    pub hdr: UdpHdr,
    /// Header and payload (what the checksum covers besides the
    /// pseudo-header).
    pub segment: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
}

/// What a received UDP checksum says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpChecksum {
    /// It verifies.
    Good,
    /// It does not.
    Bad,
    /// The sender sent none (0).
    Absent,
}

impl<'a> Udp<'a> {
    /// Parses the UDP datagram carried by `ip`: protocol 17, the UDP
    /// length at least 8 and equal to the IP payload length.
    pub fn parse(ip: &Ipv4<'a>) -> Result<Udp<'a>, ProtoError> {
        if ip.hdr.proto != IPPROTO_UDP {
            return Err(ProtoError::WrongProtocol("UDP"));
        }
        let hdr: UdpHdr = read_hdr(ip.payload, "UDP header")?;
        let len = usize::from(hdr.len.get());
        if len < UDP_HLEN || len != ip.payload.len() {
            return Err(ProtoError::BadLength {
                what: "UDP length",
                len,
            });
        }
        Ok(Udp {
            hdr,
            segment: ip.payload,
            payload: ip.payload.get(UDP_HLEN..).unwrap_or_default(),
        })
    }

    /// Verifies the checksum against the pseudo-header of `ip`.
    pub fn checksum(&self, ip: &Ipv4<'_>) -> UdpChecksum {
        if self.hdr.csum.get() == 0 {
            return UdpChecksum::Absent;
        }
        // The length fits u16: it equals the UDP length field.
        let len = self.segment.len() as u16;
        let sum = checksum_add(
            pseudo_header_sum(ip.hdr.src, ip.hdr.dst, IPPROTO_UDP, len),
            self.segment,
        );
        if checksum_fold(sum) == 0 {
            UdpChecksum::Good
        } else {
            UdpChecksum::Bad
        }
    }
}

/// A frame, parsed as far as the tools need.
#[derive(Clone, Copy, Debug)]
pub enum Parsed<'a> {
    /// An ARP packet for IPv4 over Ethernet.
    Arp(EthHdr, ArpIpv4),
    /// An IPv4 datagram (any protocol; checksum not yet checked).
    Ipv4(EthHdr, Ipv4<'a>),
    /// Another EtherType.
    Other(EthHdr),
}

/// Parses the Ethernet header and, for ARP and IPv4, the next layer.
pub fn parse(frame: &[u8]) -> Result<Parsed<'_>, ProtoError> {
    let eth: EthHdr = read_hdr(frame, "Ethernet header")?;
    let rest = frame.get(ETH_HLEN..).unwrap_or_default();
    match eth.ethertype.get() {
        ETHERTYPE_ARP => {
            let arp: ArpIpv4 = read_hdr(rest, "ARP packet")?;
            if arp.htype.get() != ARP_HTYPE_ETHERNET
                || arp.ptype.get() != ETHERTYPE_IPV4
                || arp.hlen != 6
                || arp.plen != 4
            {
                return Err(ProtoError::BadArp);
            }
            Ok(Parsed::Arp(eth, arp))
        }
        ETHERTYPE_IPV4 => Ok(Parsed::Ipv4(eth, Ipv4::parse(rest)?)),
        _ => Ok(Parsed::Other(eth)),
    }
}

/// An IPv4/UDP frame whose IP and UDP checksums both verified.
#[derive(Clone, Copy, Debug)]
pub struct UdpFrame<'a> {
    /// Ethernet header.
    pub eth: EthHdr,
    /// The IP datagram.
    pub ip: Ipv4<'a>,
    /// The UDP datagram.
    pub udp: Udp<'a>,
}

/// Parses an IPv4/UDP frame and verifies both checksums (a UDP checksum of
/// 0, none sent, is accepted as RFC 768 allows).
pub fn parse_udp_frame(frame: &[u8]) -> Result<UdpFrame<'_>, ProtoError> {
    let Parsed::Ipv4(eth, ip) = parse(frame)? else {
        return Err(ProtoError::WrongProtocol("IPv4"));
    };
    if !ip.checksum_ok() {
        return Err(ProtoError::BadIpChecksum);
    }
    let udp = Udp::parse(&ip)?;
    if udp.checksum(&ip) == UdpChecksum::Bad {
        return Err(ProtoError::BadChecksum("UDP"));
    }
    Ok(UdpFrame { eth, ip, udp })
}

/// Appends an Ethernet + IPv4 (IHL 5) + UDP frame carrying `payload` to
/// `out`, with both checksums computed. Returns the frame's length.
#[allow(clippy::too_many_arguments)]
pub fn build_udp(
    out: &mut Vec<u8>,
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Result<usize, ProtoError> {
    let udp_len = payload
        .len()
        .checked_add(UDP_HLEN)
        .filter(|&l| l <= usize::from(u16::MAX) - IPV4_HLEN)
        .ok_or(ProtoError::BadLength {
            what: "UDP length",
            len: payload.len(),
        })?;
    let start = out.len();
    let eth = EthHdr {
        dst: dst_mac,
        src: src_mac,
        ethertype: Be16::new(ETHERTYPE_IPV4),
    };
    let ip = Ipv4Hdr::new(src, dst, IPPROTO_UDP, udp_len)?;
    out.extend_from_slice(bytemuck::bytes_of(&eth));
    out.extend_from_slice(bytemuck::bytes_of(&ip));
    // udp_len <= 65515, checked above.
    let udp = UdpHdr {
        sport: Be16::new(sport),
        dport: Be16::new(dport),
        len: Be16::new(udp_len as u16),
        csum: Be16::new(0),
    };
    let udp_at = out.len();
    out.extend_from_slice(bytemuck::bytes_of(&udp));
    out.extend_from_slice(payload);
    let csum = udp_checksum(src, dst, &out[udp_at..])?;
    out[udp_at + 6..udp_at + 8].copy_from_slice(&csum.to_be_bytes());
    Ok(out.len() - start)
}

/// Writes `hdr` into `bytes` at `at`; `None` when it does not fit.
fn put<T: Pod>(bytes: &mut [u8], at: usize, hdr: &T) -> Option<()> {
    let raw = bytemuck::bytes_of(hdr);
    bytes
        .get_mut(at..at.checked_add(raw.len())?)?
        .copy_from_slice(raw);
    Some(())
}

/// Which request [`respond`] answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// An ARP request for our address.
    Arp,
    /// An ICMP echo request to our address.
    IcmpEcho,
    /// A UDP datagram to our address (echoed).
    Udp,
}

/// A responder's answer to one received frame, written over the frame in
/// place: an ARP request for `ip` gets a reply from `mac`; an ICMP echo
/// request to `ip` an echo reply; a UDP datagram to `ip` itself, addresses
/// and ports swapped. Checksums of the reply are computed afresh; the
/// request's own are verified first. Returns what was answered and the
/// reply's length (`frame[..len]`), `Ok(None)` for a frame that needs no
/// answer (another address or protocol, an ARP reply, other ICMP), or why
/// a frame was refused (malformed, fragment, bad checksum).
pub fn respond(
    frame: &mut [u8],
    mac: Mac,
    ip: Ipv4Addr,
) -> Result<Option<(Answered, usize)>, ProtoError> {
    const INTERNAL: ProtoError = ProtoError::BadLength {
        what: "reply",
        len: 0,
    };
    match parse(frame)? {
        Parsed::Other(_) => Ok(None),
        Parsed::Arp(eth, arp) => {
            if arp.oper.get() != ARP_OP_REQUEST || arp.tpa != ip {
                return Ok(None);
            }
            let reply_eth = EthHdr {
                dst: arp.sha,
                src: mac,
                ..eth
            };
            let reply = ArpIpv4 {
                oper: Be16::new(ARP_OP_REPLY),
                sha: mac,
                spa: ip,
                tha: arp.sha,
                tpa: arp.spa,
                ..arp
            };
            put(frame, 0, &reply_eth).ok_or(INTERNAL)?;
            put(frame, ETH_HLEN, &reply).ok_or(INTERNAL)?;
            Ok(Some((Answered::Arp, ETH_HLEN + ARP_LEN)))
        }
        Parsed::Ipv4(eth, v4) => {
            if v4.hdr.dst != ip {
                return Ok(None);
            }
            if !v4.checksum_ok() {
                return Err(ProtoError::BadIpChecksum);
            }
            let (hdr, l4, l4_len) = (v4.hdr, ETH_HLEN + v4.header.len(), v4.payload.len());
            let answered = match hdr.proto {
                IPPROTO_ICMP => {
                    let icmp: IcmpEcho = read_hdr(v4.payload, "ICMP echo header")?;
                    if icmp.icmp_type != ICMP_ECHO_REQUEST || icmp.code != 0 {
                        return Ok(None);
                    }
                    if internet_checksum(v4.payload) != 0 {
                        return Err(ProtoError::BadChecksum("ICMP"));
                    }
                    Answered::IcmpEcho
                }
                IPPROTO_UDP => {
                    let udp = Udp::parse(&v4)?;
                    if udp.checksum(&v4) == UdpChecksum::Bad {
                        return Err(ProtoError::BadChecksum("UDP"));
                    }
                    Answered::Udp
                }
                _ => return Ok(None),
            };
            // Checked: the parsers saw these bytes. Now rewrite in place.
            let msg = frame.get_mut(l4..l4 + l4_len).ok_or(INTERNAL)?;
            if answered == Answered::IcmpEcho {
                msg[0] = ICMP_ECHO_REPLY;
                msg[2..4].fill(0);
                let c = internet_checksum(msg);
                msg[2..4].copy_from_slice(&c.to_be_bytes());
            } else {
                let (sport, dport) = ([msg[0], msg[1]], [msg[2], msg[3]]);
                msg[0..2].copy_from_slice(&dport);
                msg[2..4].copy_from_slice(&sport);
                msg[6..8].fill(0);
                let c = udp_checksum(ip, hdr.src, msg)?;
                msg[6..8].copy_from_slice(&c.to_be_bytes());
            }
            let mut iph = Ipv4Hdr {
                src: ip,
                dst: hdr.src,
                ttl: DEFAULT_TTL,
                csum: Be16::new(0),
                ..hdr
            };
            put(frame, ETH_HLEN, &iph).ok_or(INTERNAL)?;
            // Options (if any) stay as they were; the checksum covers them.
            iph.csum = Be16::new(internet_checksum(frame.get(ETH_HLEN..l4).ok_or(INTERNAL)?));
            put(frame, ETH_HLEN, &iph).ok_or(INTERNAL)?;
            put(
                frame,
                0,
                &EthHdr {
                    dst: eth.src,
                    src: mac,
                    ..eth
                },
            )
            .ok_or(INTERNAL)?;
            Ok(Some((
                answered,
                ETH_HLEN + usize::from(hdr.total_len.get()),
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: Mac = [0x02, 0, 0, 0, 0, 0xaa];
    const MAC_B: Mac = [0x02, 0, 0, 0, 0, 0xbb];
    const IP_A: Ipv4Addr = [192, 168, 0, 1];
    const IP_B: Ipv4Addr = [192, 168, 0, 199];

    fn udp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        build_udp(&mut f, MAC_B, MAC_A, IP_A, IP_B, 1234, 53, payload).unwrap();
        f
    }

    #[test]
    fn checksums_match_known_answers() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // A textbook IPv4 header (192.168.0.1 -> 192.168.0.199, UDP): 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(
            internet_checksum(&h),
            0,
            "a header with its checksum sums to zero"
        );
        assert_eq!(
            Ipv4Hdr::new(IP_A, IP_B, IPPROTO_UDP, 0x73 - 20)
                .unwrap()
                .csum
                .get(),
            0xb861
        );
        // Odd length: the last byte is padded with zero.
        assert_eq!(internet_checksum(&[0x01]), !0x0100);
        // UDP 1234 -> 53 "hello" between the addresses above (computed
        // independently): 0x34e2.
        let f = udp_frame(b"hello");
        assert_eq!(
            u16::from_be_bytes([f[UDP_OFFSET + 6], f[UDP_OFFSET + 7]]),
            0x34e2
        );
        // A checksum that comes out 0 is sent as 0xffff.
        let seg = [0u8; 8];
        let zero_sum = udp_checksum([0; 4], [0; 4], &seg).unwrap();
        assert_ne!(zero_sum, 0);
    }

    #[test]
    fn built_frames_parse_and_verify() {
        for len in [0, 1, 8, 17, 1472] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let f = udp_frame(&payload);
            assert_eq!(f.len(), UDP_PAYLOAD_OFFSET + len);
            let u = parse_udp_frame(&f).unwrap();
            assert_eq!((u.eth.dst, u.eth.src), (MAC_B, MAC_A));
            assert_eq!((u.ip.hdr.src, u.ip.hdr.dst), (IP_A, IP_B));
            assert_eq!((u.udp.hdr.sport.get(), u.udp.hdr.dport.get()), (1234, 53));
            assert_eq!(u.udp.payload, &payload[..]);
            assert_eq!(u.udp.checksum(&u.ip), UdpChecksum::Good);
        }
        // Ethernet padding after a short datagram is not payload.
        let mut f = udp_frame(b"hi");
        f.resize(60, 0);
        assert_eq!(parse_udp_frame(&f).unwrap().udp.payload, b"hi");
        let big = vec![0u8; usize::from(u16::MAX)];
        assert!(matches!(
            build_udp(&mut Vec::new(), MAC_A, MAC_B, IP_A, IP_B, 1, 2, &big),
            Err(ProtoError::BadLength { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_caught_by_a_checksum_or_a_length_check() {
        let f = udp_frame(b"payload of a datagram");
        for byte in ETH_HLEN..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[byte] ^= 1 << bit;
                assert!(
                    parse_udp_frame(&g).is_err(),
                    "byte {byte} bit {bit} went through"
                );
            }
        }
    }

    #[test]
    fn hostile_frames_are_refused_with_a_reason() {
        let good = udp_frame(b"0123456789");
        // Every truncation: a typed error, never a panic.
        for n in 0..good.len() {
            let e = parse_udp_frame(&good[..n]).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProtoError::Truncated { .. } | ProtoError::BadLength { .. }
                ),
                "{n} bytes: {e:?}"
            );
        }
        let with = |at: usize, v: &[u8]| {
            let mut f = good.clone();
            f[at..at + v.len()].copy_from_slice(v);
            f
        };
        assert_eq!(
            parse_udp_frame(&with(14, &[0x44])).unwrap_err(),
            ProtoError::BadIhl(4)
        );
        assert_eq!(
            parse_udp_frame(&with(14, &[0x40])).unwrap_err(),
            ProtoError::BadIhl(0)
        );
        assert_eq!(
            parse_udp_frame(&with(14, &[0x65])).unwrap_err(),
            ProtoError::BadVersion(6)
        );
        // IHL 15: 60 bytes of header in a 38-byte datagram.
        assert!(matches!(
            parse_udp_frame(&with(14, &[0x4f])).unwrap_err(),
            ProtoError::Truncated { .. }
        ));
        // Total length beyond the frame, below the header, zero.
        for total in [0xffffu16, 19, 0] {
            let e = parse_udp_frame(&with(16, &total.to_be_bytes())).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProtoError::BadLength {
                        what: "IPv4 total length",
                        ..
                    }
                ),
                "{total}: {e:?}"
            );
        }
        // Fragments: MF, or an offset.
        for frag in [IPV4_MF, 1, IPV4_DF | 0x100] {
            assert_eq!(
                parse_udp_frame(&with(20, &frag.to_be_bytes())).unwrap_err(),
                ProtoError::Fragment
            );
        }
        // UDP length disagreeing with the IP payload, or below 8.
        for ul in [0u16, 7, 17, 19, 0xffff] {
            let e = parse_udp_frame(&with(UDP_OFFSET + 4, &ul.to_be_bytes())).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProtoError::BadLength {
                        what: "UDP length",
                        ..
                    }
                ),
                "{ul}: {e:?}"
            );
        }
        // A valid IP header whose checksum field is wrong.
        assert_eq!(
            parse_udp_frame(&with(24, &[0, 0])).unwrap_err(),
            ProtoError::BadIpChecksum
        );
        // Not IPv4, not UDP.
        assert_eq!(
            parse_udp_frame(&with(12, &[0x86, 0xdd])).unwrap_err(),
            ProtoError::WrongProtocol("IPv4")
        );
        // Empty and absurd input.
        assert!(parse(&[]).is_err());
        assert!(parse(&[0xff; 13]).is_err());
        for n in 0..64 {
            let _ = parse(&vec![0x45; n]);
            let _ = parse_udp_frame(&vec![0xff; n]);
        }
    }

    #[test]
    fn a_missing_udp_checksum_is_reported_as_absent() {
        let mut f = udp_frame(b"x");
        f[UDP_OFFSET + 6..UDP_OFFSET + 8].copy_from_slice(&[0, 0]);
        let u = parse_udp_frame(&f).unwrap();
        assert_eq!(u.udp.checksum(&u.ip), UdpChecksum::Absent);
    }

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let eth = EthHdr {
            dst: BROADCAST,
            src: MAC_A,
            ethertype: Be16::new(ETHERTYPE_ARP),
        };
        let arp = ArpIpv4 {
            htype: Be16::new(ARP_HTYPE_ETHERNET),
            ptype: Be16::new(ETHERTYPE_IPV4),
            hlen: 6,
            plen: 4,
            oper: Be16::new(ARP_OP_REQUEST),
            sha: MAC_A,
            spa: IP_A,
            tha: [0; 6],
            tpa: target,
        };
        let mut f = bytemuck::bytes_of(&eth).to_vec();
        f.extend_from_slice(bytemuck::bytes_of(&arp));
        f.resize(60, 0);
        f
    }

    #[test]
    fn arp_requests_for_our_address_get_a_reply() {
        let mut f = arp_request(IP_B);
        assert_eq!(
            respond(&mut f, MAC_B, IP_B).unwrap(),
            Some((Answered::Arp, 42))
        );
        let Parsed::Arp(eth, arp) = parse(&f[..42]).unwrap() else {
            panic!("not ARP")
        };
        assert_eq!((eth.dst, eth.src), (MAC_A, MAC_B));
        assert_eq!(
            (arp.oper.get(), arp.sha, arp.spa, arp.tha, arp.tpa),
            (ARP_OP_REPLY, MAC_B, IP_B, MAC_A, IP_A)
        );
        // Another address, a reply, a malformed ARP: no answer or an error.
        let mut other = arp_request([10, 0, 0, 9]);
        assert_eq!(respond(&mut other, MAC_B, IP_B).unwrap(), None);
        assert_eq!(
            respond(&mut f, MAC_A, IP_A).unwrap(),
            None,
            "replies are not answered"
        );
        let mut bad = arp_request(IP_B);
        bad[ETH_HLEN + 4] = 8; // hlen 8
        assert_eq!(
            respond(&mut bad, MAC_B, IP_B).unwrap_err(),
            ProtoError::BadArp
        );
        assert!(respond(&mut arp_request(IP_B)[..30].to_vec(), MAC_B, IP_B).is_err());
    }

    fn ping(data: &[u8]) -> Vec<u8> {
        let mut icmp = bytemuck::bytes_of(&IcmpEcho {
            icmp_type: ICMP_ECHO_REQUEST,
            code: 0,
            csum: Be16::new(0),
            id: Be16::new(0x1234),
            seq: Be16::new(7),
        })
        .to_vec();
        icmp.extend_from_slice(data);
        let c = internet_checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let eth = EthHdr {
            dst: MAC_B,
            src: MAC_A,
            ethertype: Be16::new(ETHERTYPE_IPV4),
        };
        let mut f = bytemuck::bytes_of(&eth).to_vec();
        f.extend_from_slice(bytemuck::bytes_of(
            &Ipv4Hdr::new(IP_A, IP_B, IPPROTO_ICMP, icmp.len()).unwrap(),
        ));
        f.extend_from_slice(&icmp);
        f
    }

    #[test]
    fn echo_requests_get_replies_with_good_checksums() {
        let mut f = ping(b"abcdefghijklmnopqrstuvwxyz");
        let n = f.len();
        assert_eq!(
            respond(&mut f, MAC_B, IP_B).unwrap(),
            Some((Answered::IcmpEcho, n))
        );
        let Parsed::Ipv4(eth, ip) = parse(&f).unwrap() else {
            panic!("not IPv4")
        };
        assert_eq!(
            (eth.dst, eth.src, ip.hdr.src, ip.hdr.dst),
            (MAC_A, MAC_B, IP_B, IP_A)
        );
        assert!(ip.checksum_ok());
        assert_eq!(internet_checksum(ip.payload), 0);
        assert_eq!(
            (ip.payload[0], &ip.payload[4..8], &ip.payload[8..]),
            (
                ICMP_ECHO_REPLY,
                &[0x12, 0x34, 0, 7][..],
                &b"abcdefghijklmnopqrstuvwxyz"[..]
            )
        );
        // A corrupted request is refused, a reply or another host's ignored.
        let mut bad = ping(b"data");
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            respond(&mut bad, MAC_B, IP_B).unwrap_err(),
            ProtoError::BadChecksum("ICMP")
        );
        assert_eq!(respond(&mut f, MAC_A, IP_A).unwrap(), None);
        assert_eq!(respond(&mut ping(b""), MAC_B, [1, 2, 3, 4]).unwrap(), None);
        let mut short = ping(b"");
        short.truncate(ETH_HLEN + IPV4_HLEN + 4);
        short[17] = (IPV4_HLEN + 4) as u8;
        short[24..26].copy_from_slice(&[0, 0]);
        let c = internet_checksum(&short[14..34]);
        short[24..26].copy_from_slice(&c.to_be_bytes());
        assert!(matches!(
            respond(&mut short, MAC_B, IP_B).unwrap_err(),
            ProtoError::Truncated { .. }
        ));
    }

    #[test]
    fn udp_datagrams_come_back_swapped_with_good_checksums() {
        let payload: Vec<u8> = (0..300).map(|i| (i * 7) as u8).collect();
        let mut f = udp_frame(&payload);
        f.resize(f.len() + 4, 0xee); // trailing padding is dropped from the reply
        let n = f.len() - 4;
        assert_eq!(
            respond(&mut f, MAC_B, IP_B).unwrap(),
            Some((Answered::Udp, n))
        );
        let u = parse_udp_frame(&f[..n]).unwrap();
        assert_eq!(
            (u.eth.dst, u.eth.src, u.ip.hdr.src, u.ip.hdr.dst),
            (MAC_A, MAC_B, IP_B, IP_A)
        );
        assert_eq!((u.udp.hdr.sport.get(), u.udp.hdr.dport.get()), (53, 1234));
        assert_eq!(u.udp.checksum(&u.ip), UdpChecksum::Good);
        assert_eq!(u.udp.payload, &payload[..]);
        let mut bad = udp_frame(b"data");
        *bad.last_mut().unwrap() ^= 0x80;
        assert_eq!(
            respond(&mut bad, MAC_B, IP_B).unwrap_err(),
            ProtoError::BadChecksum("UDP")
        );
        let mut frag = udp_frame(b"data");
        frag[20] |= 0x20;
        assert_eq!(
            respond(&mut frag, MAC_B, IP_B).unwrap_err(),
            ProtoError::Fragment
        );
    }

    #[test]
    fn responding_to_garbage_never_panics() {
        // A cheap deterministic generator: frames of every length with
        // valid-looking prefixes and random tails.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let seeds = [udp_frame(b"seed"), ping(b"seed"), arp_request(IP_B)];
        for round in 0..20_000 {
            let mut f = seeds[round % 3].clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % f.len();
            f[at] = (x >> 32) as u8;
            f.truncate(((x >> 40) as usize) % (f.len() + 1));
            let _ = respond(&mut f, MAC_B, IP_B);
        }
    }
}
