//! An in-process igb model for benchmarks and tests: the device side of one
//! receive and one transmit queue, played synchronously by the caller
//! between driver calls (no thread). It follows the 82576 datasheet where
//! the driver relies on it:
//!
//! - receive (7.1.3, 7.1.5): descriptors from RDH up to, not including, RDT
//!   belong to the device; [`SimIgb::receive`] takes them in order, writes
//!   an advanced write-back (DD | EOP and the frame length) over each, and
//!   advances RDH. Frames that find no descriptor are counted as missed.
//!   The frame bytes are not written: the buffer keeps what it held.
//! - transmit (7.2.2.3, 7.2.3): [`SimIgb::transmit`] fetches descriptors
//!   from TDH up to TDT, checks each is a one-buffer advanced data
//!   descriptor, writes DD back where RS asks for it (WTHRESH 1, the
//!   driver's mode), and advances TDH. The frame bytes are not read.
//!
//! Queues are served only while enabled (RXDCTL/TXDCTL.ENABLE and
//! RCTL/TCTL.EN), so once the driver has disabled them (as `Igb`'s drop
//! does) the model no longer touches the rings. Bring-up registers are
//! preset: STATUS reports a 1000 Mb/s full-duplex link, RAL0/RAH0 hold the
//! MAC address. Statistics registers are not kept.
//!
//! The model reaches the rings through the framework's
//! [`SimDma`](fastlane_framework::sim::SimDma), as a device reaches memory
//! through an IOMMU: only live unmapped regions (IOVA == address) are
//! there, and any other address a driver programs is counted in
//! [`SimStats::dma_faults`] instead of touched.

use fastlane_framework::sim::SimDma;
use fastlane_framework::Mmio;

use super::desc::{rx, tx, RxDescRead, RxDescWb, TxDescRead, TxDescWb};
use super::regs::{self, dctl, rctl, status, tctl};
use crate::MAX_FRAME;

/// MAC address the model reports.
pub const SIM_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x5e, 0x10, 0xc9];

/// What the model did, since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Frames written back to receive descriptors, and their bytes.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames that found no free receive descriptor (or a disabled queue).
    pub rx_missed: u64,
    /// Transmit descriptors processed as frames, and their bytes.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Transmit descriptors that were not a one-buffer advanced data
    /// descriptor of 1..=MAX_FRAME bytes (skipped, DD still written back).
    pub tx_malformed: u64,
    /// Advanced context descriptors taken (offload requests; never a
    /// frame, no status written back).
    pub tx_contexts: u64,
    /// Register values the model could not follow (ring length, head or
    /// tail out of range); the queue is left alone.
    pub bad_registers: u64,
    /// Descriptor accesses outside every live unmapped region (the queue
    /// stops there, as a device would on an IOMMU fault).
    pub dma_faults: u64,
}

/// The device side of queue 0 of an igb port, over a register block in
/// memory.
pub struct SimIgb {
    regs: Mmio,
    dma: SimDma,
    stats: SimStats,
}

/// A ring as the registers describe it: base address, descriptors, head
/// and tail; `None` when the values are out of range.
fn ring(r: &Mmio, bal: usize, bah: usize, len: usize, head: usize, tail: usize) -> Option<(u64, u32, u32, u32)> {
    let base = u64::from(r.read32(bah)) << 32 | u64::from(r.read32(bal));
    let bytes = r.read32(len);
    let count = bytes / 16;
    let (h, t) = (r.read32(head), r.read32(tail));
    let ok = base != 0 && base.is_multiple_of(128) && count > 0 && bytes.is_multiple_of(128) && h < count && t < count;
    ok.then_some((base, count, h, t))
}

impl SimIgb {
    /// A model with its register block (BAR0, [`regs::REGS_LEN`] bytes) to
    /// hand to the driver ([`super::Igb::with_registers`]): link up at
    /// 1000 Mb/s full duplex, [`SIM_MAC`] in RAL0/RAH0, queues off until the
    /// driver enables them. The model reads and writes the descriptor rings
    /// the driver programs, through [`SimDma`]: only memory of live
    /// unmapped regions, never anything else.
    pub fn new() -> (SimIgb, Mmio) {
        let r = Mmio::simulated(regs::REGS_LEN);
        r.write32(regs::STATUS, status::LU | status::FD | 2 << status::SPEED_SHIFT);
        let m = SIM_MAC;
        r.write32(regs::RAL0, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        r.write32(regs::RAH0, u32::from_le_bytes([m[4], m[5], 0, 0]) | regs::RAH_AV);
        let sim = SimIgb { regs: r.clone(), dma: SimDma::new(), stats: SimStats::default() };
        (sim, r)
    }

    /// What the model did so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Receives `frames` frames of `len` bytes (without CRC, as RCTL.SECRC
    /// strips it): one descriptor each while the device owns any; returns
    /// how many found a descriptor (the rest are counted missed).
    pub fn receive(&mut self, frames: usize, len: u16) -> usize {
        let r = &self.regs;
        let on = r.read32(regs::RCTL) & rctl::EN != 0 && r.read32(regs::rxdctl(0)) & dctl::ENABLE != 0;
        let ring = ring(r, regs::rdbal(0), regs::rdbah(0), regs::rdlen(0), regs::rdh(0), regs::rdt(0));
        let (base, count, mut head, tail) = match (on, ring) {
            (true, Some(ring)) => ring,
            (true, None) => {
                self.stats.bad_registers += 1;
                self.stats.rx_missed += frames as u64;
                return 0;
            }
            (false, _) => {
                self.stats.rx_missed += frames as u64;
                return 0;
            }
        };
        let mut done = 0;
        while done < frames && head != tail {
            // Owned by the device from RDH to RDT.
            let slot = base + u64::from(head) * 16;
            let Ok(d) = self.dma.read_obj::<RxDescRead>(slot) else {
                self.stats.dma_faults += 1;
                break;
            };
            debug_assert_ne!(d.pkt_addr, 0, "receive descriptor without a buffer");
            let wb = RxDescWb {
                status_error: rx::DD | rx::EOP,
                length: len,
                ..RxDescWb::default()
            };
            // The write-back replaces the read format.
            if self.dma.write_obj(slot, wb).is_err() {
                self.stats.dma_faults += 1;
                break;
            }
            head = (head + 1) % count;
            done += 1;
        }
        r.write32(regs::rdh(0), head);
        self.stats.rx_frames += done as u64;
        self.stats.rx_bytes += done as u64 * u64::from(len);
        self.stats.rx_missed += (frames - done) as u64;
        done
    }

    /// Sends what the driver queued, up to `max` descriptors: DD written
    /// back to those with RS, TDH moved past them; returns how many.
    pub fn transmit(&mut self, max: usize) -> usize {
        let r = &self.regs;
        let on = r.read32(regs::TCTL) & tctl::EN != 0 && r.read32(regs::txdctl(0)) & dctl::ENABLE != 0;
        if !on {
            return 0;
        }
        let Some((base, count, mut head, tail)) =
            ring(r, regs::tdbal(0), regs::tdbah(0), regs::tdlen(0), regs::tdh(0), regs::tdt(0))
        else {
            self.stats.bad_registers += 1;
            return 0;
        };
        let mut done = 0;
        while done < max && head != tail {
            // Owned by the device from TDH to TDT.
            let slot = base + u64::from(head) * 16;
            let Ok(d) = self.dma.read_obj::<TxDescRead>(slot) else {
                self.stats.dma_faults += 1;
                break;
            };
            let want = tx::DTYP_DATA | tx::DCMD_DEXT | tx::DCMD_EOP;
            let len = d.cmd_type_len() & 0xffff;
            if d.cmd_type_len() & (0xf << 20 | tx::DCMD_DEXT) == tx::DTYP_CTXT | tx::DCMD_DEXT {
                self.stats.tx_contexts += 1;
            } else if d.cmd_type_len() & want == want && (1..=MAX_FRAME as u32).contains(&len) && d.buffer_addr != 0 {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += u64::from(len);
            } else {
                self.stats.tx_malformed += 1;
            }
            if d.cmd_type_len() & tx::DCMD_RS != 0 {
                let wb = TxDescWb {
                    status: tx::STA_DD,
                    ..TxDescWb::default()
                };
                // The write-back replaces the read format.
                if self.dma.write_obj(slot, wb).is_err() {
                    self.stats.dma_faults += 1;
                    break;
                }
            }
            head = (head + 1) % count;
            done += 1;
        }
        r.write32(regs::tdh(0), head);
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::igb::Igb;
    use crate::{Nic, NicConfig, PacketPool};

    fn port(ring: u16) -> (Igb, SimIgb, PacketPool) {
        let pool = PacketPool::new_unmapped(4 * ring as u32 + 1024).unwrap();
        let (sim, regs) = SimIgb::new();
        let cfg = NicConfig { rx_ring: ring, tx_ring: ring, promiscuous: true, ..NicConfig::default() };
        let igb = Igb::with_registers(regs, &pool, &cfg).unwrap();
        (igb, sim, pool)
    }

    #[test]
    fn bring_up_completes_against_the_model() {
        let (igb, _sim, _pool) = port(64);
        assert_eq!(igb.mac_address(), SIM_MAC);
        let l = igb.link_status();
        assert!(l.up && l.full_duplex && l.speed_mbps == Some(1000));
    }

    #[test]
    fn frames_go_round_both_rings_many_times() {
        let (mut igb, mut sim, pool) = port(64);
        let mut out = Vec::new();
        for round in 0..20u16 {
            let len = 60 + round;
            assert_eq!(sim.receive(32, len), 32);
            assert_eq!(igb.rx_burst(&mut out, 64), 32);
            assert!(out.iter().all(|p| p.len() == len as usize));
            assert_eq!(igb.tx_burst(&mut out), 32);
            assert!(out.is_empty());
            assert_eq!(sim.transmit(usize::MAX), 32);
        }
        // The device owns at most 63 of 64 receive descriptors.
        assert_eq!(sim.receive(100, 60), 63);
        assert_eq!(igb.rx_burst(&mut out, 100), 63);
        igb.recycle(&mut out);
        igb.tx_burst(&mut out); // reclaims the last batch
        assert_eq!(igb.tx_in_flight(), 0);
        let s = sim.stats();
        assert_eq!((s.rx_frames, s.rx_missed, s.tx_frames, s.tx_malformed), (703, 37, 640, 0));
        assert_eq!(s.tx_bytes, (0..20).map(|r| 32 * (60 + r)).sum::<u64>());
        drop(igb);
        // Disabled queues: the model leaves the (freed) rings alone.
        assert_eq!(sim.receive(1, 60), 0);
        assert_eq!(sim.transmit(1), 0);
        assert_eq!((sim.stats().bad_registers, sim.stats().dma_faults), (0, 0));
        drop(pool);
    }

    /// An application on the trait forwards without copying: the frames
    /// it sends are the buffers it received, rewritten in place, and what
    /// it allocates comes from the port's cache with headroom.
    #[test]
    fn frames_are_forwarded_through_the_trait_in_place() {
        let (mut igb, mut sim, pool) = port(64);
        let nic: &mut dyn Nic = &mut igb;
        let mut pkts = Vec::new();
        assert_eq!(sim.receive(8, 60), 8);
        assert_eq!(nic.rx_burst(&mut pkts, 32), 8);
        let mut iovas = Vec::new();
        for (i, p) in pkts.iter_mut().enumerate() {
            assert_eq!((p.headroom(), p.len()), (0, 60), "igb receives at the buffer start");
            assert!(matches!(p.prepend(1), Err(crate::NicError::NoRoom { .. })));
            p.trim_front(4).unwrap();
            p.prepend(4).unwrap().copy_from_slice(b"vlan");
            p.data_mut()[..12].copy_from_slice(&[i as u8; 12]);
            iovas.push(p.iova().get());
        }
        assert_eq!(nic.tx_burst(&mut pkts), 8);
        // The descriptors point at the received buffers, frame first.
        let sent: Vec<u64> = (0..8).map(|slot| igb.tx.ring_read(slot).buffer_addr).collect();
        assert_eq!(sent, iovas);
        for (i, &iova) in iovas.iter().enumerate() {
            let mut b = [0u8; 12];
            sim.dma.read(iova, &mut b).unwrap();
            assert_eq!(b, [i as u8; 12], "rewritten in the received buffer");
        }
        assert_eq!(sim.transmit(usize::MAX), 8);
        // Allocation and recycling through the trait: the port's cache.
        let nic: &mut dyn Nic = &mut igb;
        let mut mine: Vec<_> = (0..4).map(|_| nic.alloc_packet(100).unwrap()).collect();
        assert!(mine.iter().all(|p| p.headroom() == crate::HEADROOM && p.len() == 100));
        assert!(matches!(nic.alloc_packet(crate::MAX_FRAME + 1), Err(crate::NicError::FrameTooLarge { .. })));
        let other = PacketPool::new_unmapped(2).unwrap();
        mine.push(other.alloc().unwrap());
        nic.recycle(&mut mine);
        assert!(mine.is_empty());
        assert_eq!(other.pool().available(), 2, "a stranger goes home, not into the port's cache");
        nic.tx_burst(&mut mine); // reclaims
        drop(igb);
        assert_eq!(pool.pool().available(), pool.pool().capacity() as usize);
    }

    #[test]
    fn a_ring_outside_dma_memory_is_a_fault_not_an_access() {
        let (mut sim, r) = SimIgb::new();
        // A "ring" on the heap, not in any DMA region.
        let heap = vec![0xa5u8; 8192];
        let base = (heap.as_ptr() as u64).next_multiple_of(128);
        r.write32(regs::rdbal(0), base as u32);
        r.write32(regs::rdbah(0), (base >> 32) as u32);
        r.write32(regs::rdlen(0), 16 * 16);
        r.write32(regs::rdh(0), 0);
        r.write32(regs::rdt(0), 8);
        r.write32(regs::rxdctl(0), dctl::ENABLE);
        r.write32(regs::RCTL, rctl::EN);
        assert_eq!(sim.receive(4, 60), 0);
        assert_eq!(sim.stats().dma_faults, 1);
        assert!(heap.iter().all(|&b| b == 0xa5), "the model wrote outside DMA memory");
    }
}
