//! Transmit with offloads (82576 datasheet 7.2.2.2, 7.2.5): a context
//! descriptor (header lengths, VLAN tag) before each frame's data
//! descriptor, which asks for the IPv4 and TCP/UDP checksums (IXSM, TXSM)
//! and the VLAN insertion (VLE). Kept apart from the plain burst so that
//! path stays as it is.

use std::sync::atomic::{fence, Ordering};

use fastlane_framework::PoolCache;

use super::desc::{tx, TxDescRead};
use super::regs;
use super::tx::TxQueue;
use crate::offload::{self, TxOffload, L4};
use crate::Packet;

impl TxQueue {
    /// [`TxQueue::burst`] with `off` asked of the NIC for every frame: a
    /// context descriptor, then the data descriptor, per frame (two
    /// slots). Stops at a frame `check` or [`offload::prepare`] refuses,
    /// which stays first. Not the fast path: one frame at a time.
    #[inline(never)]
    pub fn burst_offload(
        &mut self,
        cache: &mut PoolCache,
        pkts: &mut Vec<Packet>,
        off: &TxOffload,
    ) -> usize {
        self.reclaim_with(cache, |c, slots| c.free_slots(slots));
        let (mut n, mut bytes) = (0, 0);
        let (vlan, cmd, popts) = data_bits(off);
        for p in pkts.iter_mut() {
            if self.index.free() < 2 || self.check(p).is_err() {
                break;
            }
            let Ok(l) = offload::prepare(p, off) else {
                break;
            };
            let Some(first) = self.index.reserve(2) else {
                break;
            };
            let ctx = context(off, l, vlan);
            let data = TxDescRead::frame_with(p.iova().get(), p.len() as u16, cmd, popts);
            let second = self.index.ring().add(first, 1);
            // Both slots are the device's only once the tail moves.
            self.ring.write(first, ctx);
            self.ring.write(second, data);
            bytes += p.len() as u64;
            n += 1;
        }
        if n == 0 {
            return 0;
        }
        // The buffers into the data slots, in the order written.
        let size = self.bufs.len();
        let mut slot = (self.index.tail() as usize + 2 * (size - n)) % size;
        for p in pkts.drain(..n) {
            self.bufs[slot] = None;
            self.bufs[(slot + 1) % size] = Some(p.into_buf());
            slot = (slot + 2) % size;
        }
        self.counters.packets += n as u64;
        self.counters.bytes += bytes;
        fence(Ordering::Release);
        self.regs
            .write32(regs::tdt(self.queue), self.index.tail() as u32);
        n
    }
}

/// What a frame's data descriptors carry for `off`: the VLAN tag for the
/// context, the VLE command bit, the IXSM/TXSM options.
pub(super) fn data_bits(off: &TxOffload) -> (u16, u32, u32) {
    let (vlan, cmd) = match off.vlan {
        Some(tci) => (tci, tx::DCMD_VLE),
        None => (0, 0),
    };
    let ip = if off.ip_checksum { tx::POPTS_IXSM } else { 0 };
    let l4 = if off.l4_checksum.is_some() { tx::POPTS_TXSM } else { 0 };
    (vlan, cmd, ip | l4)
}

/// The context descriptor of a frame prepared for `off` (layout `l`).
pub(super) fn context(off: &TxOffload, l: offload::Layout, vlan: u16) -> TxDescRead {
    TxDescRead::context(l.l2_len, l.l3_len, vlan, off.checksums(), off.l4_checksum == Some(L4::Tcp))
}
