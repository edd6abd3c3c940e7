//! Advanced receive and transmit descriptors (82576 datasheet 7.1.5 and
//! 7.2.2.3), declared once with their sizes checked at compile time. Each
//! descriptor has a "read" format the driver writes and a "write-back"
//! format the device writes over it when done.

use bytemuck::{Pod, Zeroable};

/// Receive descriptor, read format: where the device puts the frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RxDescRead {
    /// Packet buffer address (IOVA).
    pub pkt_addr: u64,
    /// Header buffer address; 0 without header split. Its bit 0 overlays
    /// the write-back DD bit, so writing 0 hands the slot to the device.
    pub hdr_addr: u64,
}

/// Receive descriptor, write-back format.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RxDescWb {
    /// Packet type and RSS type (low half), header length (high half).
    pub pkt_info: u32,
    /// RSS hash, or IP id and fragment checksum.
    pub rss: u32,
    /// Extended status (bits 0-19) and extended errors (bits 20-31).
    pub status_error: u32,
    /// Bytes written to the packet buffer.
    pub length: u16,
    /// Stripped VLAN tag.
    pub vlan: u16,
}

/// Transmit data descriptor, read format (advanced, DTYP = data).
///
/// Two quadwords, so that a descriptor is stored as two plain 64-bit
/// stores (a three-field struct goes through the stack as a volatile copy):
/// the address, then `cmd_type_len` (low half) and `olinfo_status` (high
/// half), as [`TxDescRead::cmd_type_len`] and [`TxDescRead::olinfo_status`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TxDescRead {
    /// Data buffer address (IOVA).
    pub buffer_addr: u64,
    /// Length (bits 0-15), descriptor type (20-23), command (24-31); then
    /// payload length (bits 46-63), options and the DD status bit (bit 32).
    pub cmd_olinfo: u64,
}

/// Transmit context descriptor (advanced, DTYP = context; 7.2.2.2): the
/// header lengths and VLAN tag that the data descriptors after it refer to
/// for checksum offload and VLAN insertion.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TxContextDesc {
    /// IPLEN (bits 0-8), MACLEN (9-15), VLAN tag (16-31).
    pub vlan_macip_lens: u32,
    /// IPsec/TSO seed (unused).
    pub seqnum_seed: u32,
    /// TUCMD (bits 9-19: IPv4, L4 type), DTYP (20-23), DEXT (29).
    pub type_tucmd_mlhl: u32,
    /// Context index (bit 4), L4LEN (8-15), MSS (16-31).
    pub mss_l4len_idx: u32,
}

/// Transmit descriptor, write-back format.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TxDescWb {
    /// Reserved.
    pub rsvd: u64,
    /// Next sequence number / seed (unused by the driver).
    pub nxtseq_seed: u32,
    /// DD in bit 0.
    pub status: u32,
}

const _: () = assert!(std::mem::size_of::<RxDescRead>() == 16);
// `packet_status` moves each write-back bit to its packet flag.
const _: () = {
    use crate::rx_status as s;
    const fn f(bit: u32) -> u16 {
        RxStatus::packet_status(bit as u64).0
    }
    assert!(f(rx::VP) == s::VLAN && f(rx::UDPCS) == s::UDP && f(rx::L4I) == s::L4_CHECKED);
    assert!(f(rx::IPCS) == s::IP_CHECKED && f(rx::L4E) == s::L4_BAD && f(rx::IPE) == s::IP_BAD);
    assert!(f(rx::DD | rx::EOP | rx::ERR_FRAME) == 0);
};
const _: () = assert!(std::mem::size_of::<RxDescWb>() == 16);
const _: () = assert!(std::mem::size_of::<TxDescRead>() == 16);
const _: () = assert!(std::mem::size_of::<TxDescWb>() == 16);
const _: () = assert!(std::mem::size_of::<TxContextDesc>() == 16);

/// Byte offset of the word holding the status bits, in both descriptor
/// kinds: the upper 8 bytes are read as one 64-bit load.
pub const STATUS_QWORD_OFFSET: usize = 8;

/// Receive write-back status and error bits (in `status_error`).
pub mod rx {
    /// Descriptor done.
    pub const DD: u32 = 1 << 0;
    /// End of packet.
    pub const EOP: u32 = 1 << 1;
    /// A VLAN tag was stripped (VP); it is in the write-back's `vlan`.
    pub const VP: u32 = 1 << 3;
    /// UDP checksum checked (UDPCS).
    pub const UDPCS: u32 = 1 << 4;
    /// TCP/UDP checksum checked (L4I, TCPCS).
    pub const L4I: u32 = 1 << 5;
    /// IPv4 header checksum checked (IPCS).
    pub const IPCS: u32 = 1 << 6;
    /// TCP/UDP checksum error (L4E, TCPE).
    pub const L4E: u32 = 1 << 29;
    /// IPv4 header checksum error (IPE).
    pub const IPE: u32 = 1 << 30;
    /// Frame errors: CRC, symbol, sequence, carrier extension, RX data error
    /// (checksum errors, IPE/TCPE, are left to the application).
    pub const ERR_FRAME: u32 = (1 << 24) | (1 << 25) | (1 << 26) | (1 << 28) | (1 << 31);
}

/// Transmit descriptor command, type and status bits.
pub mod tx {
    /// Descriptor type: advanced data descriptor.
    pub const DTYP_DATA: u32 = 0x3 << 20;
    /// End of packet.
    pub const DCMD_EOP: u32 = 1 << 24;
    /// Insert FCS.
    pub const DCMD_IFCS: u32 = 1 << 25;
    /// Report status: write DD back when done.
    pub const DCMD_RS: u32 = 1 << 27;
    /// Descriptor extension: advanced format.
    pub const DCMD_DEXT: u32 = 1 << 29;
    /// Insert the context's VLAN tag (VLE; needs CTRL.VME).
    pub const DCMD_VLE: u32 = 1 << 30;
    /// Payload length field of `olinfo_status`.
    pub const PAYLEN_SHIFT: u32 = 14;
    /// `olinfo_status` POPTS: insert the IPv4 header checksum (IXSM).
    pub const POPTS_IXSM: u32 = 1 << 8;
    /// `olinfo_status` POPTS: insert the TCP/UDP checksum (TXSM).
    pub const POPTS_TXSM: u32 = 1 << 9;
    /// Descriptor type: advanced context descriptor.
    pub const DTYP_CTXT: u32 = 0x2 << 20;
    /// Context `vlan_macip_lens`: MACLEN field.
    pub const MACLEN_SHIFT: u32 = 9;
    /// Context `vlan_macip_lens`: VLAN tag field.
    pub const VLAN_SHIFT: u32 = 16;
    /// Context TUCMD: the IP header is IPv4.
    pub const TUCMD_IPV4: u32 = 1 << 10;
    /// Context TUCMD: the L4 header is TCP (00 is UDP).
    pub const TUCMD_L4T_TCP: u32 = 1 << 11;
    /// Descriptor done, in the write-back `status`.
    pub const STA_DD: u32 = 1 << 0;
}

impl RxDescRead {
    /// A descriptor handing the buffer at `iova` to the device.
    #[inline(always)]
    pub const fn new(iova: u64) -> RxDescRead {
        RxDescRead {
            pkt_addr: iova,
            hdr_addr: 0,
        }
    }
}

/// What the driver needs from a receive write-back: decoded from the
/// descriptor's upper 64 bits, read in one load so status and length agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxStatus {
    /// Extended status (bits 0-19) and errors (bits 20-31).
    pub status_error: u32,
    /// Bytes written to the packet buffer.
    pub length: u16,
}

impl RxStatus {
    /// Decodes the upper quadword (`status_error`, `length`, `vlan`).
    #[inline(always)]
    pub const fn from_qword(q: u64) -> RxStatus {
        RxStatus {
            status_error: q as u32,
            length: (q >> 32) as u16,
        }
    }

    /// What a [`crate::Packet`] keeps of the upper quadword `q`: the
    /// [`crate::rx_status`] flags (VP, UDPCS, L4I, IPCS shifted down to
    /// bits 0-3, L4E and IPE to 4-5) and the stripped tag (the write-back's
    /// `vlan`, bits 48-63).
    #[inline(always)]
    pub const fn packet_status(q: u64) -> (u16, u16) {
        let se = q as u32;
        (((se >> 3) & 0xf | (se >> 25) & 0x30) as u16, (q >> 48) as u16)
    }

    #[inline(always)]
    /// Descriptor done: the device wrote this back.
    pub const fn done(self) -> bool {
        self.status_error & rx::DD != 0
    }

    #[inline(always)]
    /// Last descriptor of a frame.
    pub const fn end_of_packet(self) -> bool {
        self.status_error & rx::EOP != 0
    }

    #[inline(always)]
    /// The device reported a frame error (CRC, symbol, sequence, RX data).
    pub const fn frame_error(self) -> bool {
        self.status_error & rx::ERR_FRAME != 0
    }

    #[inline(always)]
    /// Done, and a whole frame in this one descriptor (EOP) without a
    /// frame error, of at most [`crate::MAX_FRAME`] bytes: one test on the
    /// common receive path.
    pub const fn done_and_good(self) -> bool {
        self.status_error & (rx::DD | rx::EOP | rx::ERR_FRAME) == rx::DD | rx::EOP
            && self.length as usize <= crate::MAX_FRAME
    }
}

impl TxDescRead {
    /// A one-descriptor frame of `len` bytes at `iova`: end of packet,
    /// insert FCS, report status.
    #[inline(always)]
    pub const fn frame(iova: u64, len: u16) -> TxDescRead {
        TxDescRead::frame_unreported(iova, len).reported()
    }

    /// One buffer of a frame spread over several descriptors (82576
    /// 7.2.1.1): `len` bytes at `iova`; the payload length (`total`, the
    /// whole frame) in every one; end of packet on the last. Each asks for
    /// status (RS), so any of them may end a reclaim batch.
    pub const fn piece(iova: u64, len: u16, total: u16, last: bool) -> TxDescRead {
        let eop = if last { tx::DCMD_EOP } else { 0 };
        let cmd_type_len = len as u32 | tx::DTYP_DATA | tx::DCMD_DEXT | eop | tx::DCMD_IFCS | tx::DCMD_RS;
        let olinfo_status = (total as u32) << tx::PAYLEN_SHIFT;
        TxDescRead {
            buffer_addr: iova,
            cmd_olinfo: cmd_type_len as u64 | (olinfo_status as u64) << 32,
        }
    }

    /// This data descriptor with command bits `cmd` (VLE) and options
    /// `popts` (IXSM, TXSM) added: the first one of an offloaded frame.
    pub const fn with_options(self, cmd: u32, popts: u32) -> TxDescRead {
        TxDescRead {
            buffer_addr: self.buffer_addr,
            cmd_olinfo: self.cmd_olinfo | cmd as u64 | (popts as u64) << 32,
        }
    }

    /// [`TxDescRead::frame`] without RS: the device writes no status back
    /// for it (one DMA write fewer); a later descriptor with RS reports it,
    /// since descriptors complete in order.
    #[inline(always)]
    pub const fn frame_unreported(iova: u64, len: u16) -> TxDescRead {
        let cmd_type_len = len as u32 | tx::DTYP_DATA | tx::DCMD_DEXT | tx::DCMD_EOP | tx::DCMD_IFCS;
        let olinfo_status = (len as u32) << tx::PAYLEN_SHIFT;
        TxDescRead {
            buffer_addr: iova,
            cmd_olinfo: cmd_type_len as u64 | (olinfo_status as u64) << 32,
        }
    }

    /// This descriptor with RS: DD is written back when it is done.
    #[inline(always)]
    pub const fn reported(self) -> TxDescRead {
        TxDescRead {
            buffer_addr: self.buffer_addr,
            cmd_olinfo: self.cmd_olinfo | tx::DCMD_RS as u64,
        }
    }

    /// Whether the device will write DD back for this descriptor (RS).
    pub const fn is_reported(&self) -> bool {
        self.cmd_type_len() & tx::DCMD_RS != 0
    }

    /// A frame that uses the context written just before it: `cmd` and
    /// `popts` are added to [`TxDescRead::frame`]'s (VLE; IXSM, TXSM).
    #[inline]
    pub const fn frame_with(iova: u64, len: u16, cmd: u32, popts: u32) -> TxDescRead {
        TxDescRead::frame(iova, len).with_options(cmd, popts)
    }

    /// A context descriptor (context 0) in the ring's slot type: MAC and
    /// IPv4 header lengths, VLAN tag, whether the L4 header is TCP.
    pub fn context(l2_len: usize, l3_len: usize, vlan: u16, ipv4: bool, tcp: bool) -> TxDescRead {
        let mut tucmd = tx::DTYP_CTXT | tx::DCMD_DEXT;
        if ipv4 {
            tucmd |= tx::TUCMD_IPV4;
        }
        if tcp {
            tucmd |= tx::TUCMD_L4T_TCP;
        }
        let c = TxContextDesc {
            // IPLEN is 9 bits, MACLEN 7: the offload checks bound both.
            vlan_macip_lens: (l3_len as u32 & 0x1ff)
                | (l2_len as u32 & 0x7f) << tx::MACLEN_SHIFT
                | u32::from(vlan) << tx::VLAN_SHIFT,
            seqnum_seed: 0,
            type_tucmd_mlhl: tucmd,
            mss_l4len_idx: 0,
        };
        bytemuck::cast(c)
    }

    /// Length, descriptor type and command.
    pub const fn cmd_type_len(&self) -> u32 {
        self.cmd_olinfo as u32
    }

    /// Payload length, options and the DD status bit.
    pub const fn olinfo_status(&self) -> u32 {
        (self.cmd_olinfo >> 32) as u32
    }
}

/// Whether the upper quadword of a transmit descriptor shows DD.
#[inline(always)]
pub const fn tx_done(qword: u64) -> bool {
    // `status` is the upper half of the quadword.
    (qword >> 32) as u32 & tx::STA_DD != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_write_back_decodes_from_its_upper_quadword() {
        let wb = RxDescWb {
            pkt_info: 0x1234,
            rss: 0,
            status_error: rx::DD | rx::EOP,
            length: 1514,
            vlan: 7,
        };
        let bytes = bytemuck::bytes_of(&wb);
        let q = u64::from_le_bytes(bytes[STATUS_QWORD_OFFSET..16].try_into().unwrap());
        let s = RxStatus::from_qword(q);
        assert!(s.done() && s.end_of_packet() && !s.frame_error());
        assert_eq!(s.length, 1514);
        assert!(s.done_and_good());
        let bad = RxStatus::from_qword(q | (1 << 24));
        assert!(bad.frame_error() && !bad.done_and_good());
        assert!(!RxStatus::from_qword(q & !u64::from(rx::EOP)).done_and_good(), "no EOP");
        assert!(!RxStatus::from_qword(q & !u64::from(rx::DD)).done_and_good(), "not done");
        let long = RxStatus { length: crate::MAX_FRAME as u16 + 1, ..s };
        assert!(!long.done_and_good(), "longer than MAX_FRAME");
        assert!(RxStatus { length: crate::MAX_FRAME as u16, ..s }.done_and_good());
        // A freshly written read descriptor is not done.
        let r = RxDescRead::new(0xdead_b000);
        let b = bytemuck::bytes_of(&r);
        let q = u64::from_le_bytes(b[8..16].try_into().unwrap());
        assert!(!RxStatus::from_qword(q).done());
    }

    #[test]
    fn tx_frame_descriptor_fields() {
        let d = TxDescRead::frame(0x1000, 60);
        assert_eq!(d.cmd_type_len() & 0xffff, 60);
        assert_eq!(d.cmd_type_len() >> 20 & 0xf, 3, "advanced data descriptor");
        for bit in [tx::DCMD_EOP, tx::DCMD_IFCS, tx::DCMD_RS, tx::DCMD_DEXT] {
            assert_ne!(d.cmd_type_len() & bit, 0);
        }
        assert_eq!(d.olinfo_status() >> tx::PAYLEN_SHIFT, 60);
        let u = TxDescRead::frame_unreported(0x1000, 60);
        assert!(d.is_reported() && !u.is_reported());
        assert_eq!(u.cmd_type_len(), d.cmd_type_len() & !tx::DCMD_RS, "only RS differs");
        assert_eq!((u.buffer_addr, u.olinfo_status()), (d.buffer_addr, d.olinfo_status()));
        assert_eq!(u.reported(), d);
        assert_eq!(d.olinfo_status() & tx::STA_DD, 0, "a new descriptor is not done");
        let b = bytemuck::bytes_of(&d);
        assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 0x1000);
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), d.cmd_type_len(), "bytes 8..12");
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), d.olinfo_status(), "bytes 12..16");
        let q = u64::from_le_bytes(b[8..16].try_into().unwrap());
        assert!(!tx_done(q));
        let wb = TxDescWb { status: tx::STA_DD, ..Default::default() };
        let b = bytemuck::bytes_of(&wb);
        assert!(tx_done(u64::from_le_bytes(b[8..16].try_into().unwrap())));
    }
}
