//! The device's statistics registers (82576 datasheet 8.19). They clear on
//! read, so every read is added to 64-bit totals; [`HwCounters::merge`]
//! turns the totals and the driver's own counts into [`Stats`].

use fastlane_framework::Mmio;

use super::regs::{self, stat, FCS_LEN};
use super::rx::RxCounters;
use crate::Stats;

/// Totals of the statistics registers since the port was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwCounters {
    /// Good packets received (GPRC).
    pub gprc: u64,
    /// Good packets transmitted (GPTC).
    pub gptc: u64,
    /// Octets including each frame's CRC.
    pub gorc: u64,
    /// Good octets transmitted (GOTC), without CRC.
    pub gotc: u64,
    /// Missed packets: no descriptor or FIFO full (MPC).
    pub mpc: u64,
    /// Packets dropped per queue for lack of descriptors (RQDPC, all queues).
    pub rqdpc: u64,
    /// CRC errors (CRCERRS).
    pub crcerrs: u64,
    /// Receive errors (RXERRC).
    pub rxerrc: u64,
    /// Length errors (RLEC).
    pub rlec: u64,
    /// Excessive collisions (ECOL).
    pub ecol: u64,
    /// Late collisions (LATECOL).
    pub latecol: u64,
}

impl HwCounters {
    /// Reads (and so clears) the registers, adding them to the totals; the
    /// per-queue drop counters of queues `0..queues`.
    pub fn accumulate(&mut self, r: &Mmio, queues: usize) {
        let rd = |off| u64::from(r.read32(off));
        // Low half first: reading the high half clears both.
        let rd64 = |lo, hi| rd(lo) | rd(hi) << 32;
        self.gprc += rd(stat::GPRC);
        self.gptc += rd(stat::GPTC);
        self.gorc += rd64(stat::GORCL, stat::GORCH);
        self.gotc += rd64(stat::GOTCL, stat::GOTCH);
        self.mpc += rd(stat::MPC);
        self.rqdpc += (0..queues).map(|n| rd(regs::rqdpc(n))).sum::<u64>();
        self.crcerrs += rd(stat::CRCERRS);
        self.rxerrc += rd(stat::RXERRC);
        self.rlec += rd(stat::RLEC);
        self.ecol += rd(stat::ECOL);
        self.latecol += rd(stat::LATECOL);
    }

    /// The device's counts, in [`Stats`] terms: byte counts without the CRC
    /// (as frames are handed to and taken from the caller), drops and errors
    /// from the device plus the frames the driver itself dropped.
    pub fn merge(&self, rx: &RxCounters) -> Stats {
        Stats {
            rx_packets: self.gprc,
            rx_bytes: self.gorc.saturating_sub(self.gprc * FCS_LEN),
            tx_packets: self.gptc,
            tx_bytes: self.gotc.saturating_sub(self.gptc * FCS_LEN),
            rx_dropped: self.mpc + self.rqdpc,
            rx_errors: self.crcerrs + self.rxerrc + self.rlec + rx.errors,
            tx_errors: self.ecol + self.latecol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_accumulate_and_bytes_exclude_the_crc() {
        let r = Mmio::simulated(regs::REGS_LEN);
        let mut hw = HwCounters::default();
        let set = |gprc: u32, gorc: u64| {
            r.write32(stat::GPRC, gprc);
            r.write32(stat::GORCL, gorc as u32);
            r.write32(stat::GORCH, (gorc >> 32) as u32);
            r.write32(stat::GPTC, 1);
            r.write32(stat::GOTCL, 64);
        };
        set(10, 10 * 64);
        hw.accumulate(&r, 1);
        // A simulated block does not clear on read: the second read adds again,
        // as a second interval would on the device.
        set(3, (1u64 << 32) + 3 * 1518);
        hw.accumulate(&r, 1);
        assert_eq!(hw.gprc, 13);
        assert_eq!(hw.gorc, 640 + (1 << 32) + 3 * 1518);
        let s = hw.merge(&RxCounters { errors: 2, ..Default::default() });
        assert_eq!(s.rx_packets, 13);
        assert_eq!(s.rx_bytes, 10 * 60 + (1 << 32) + 3 * 1514);
        assert_eq!((s.tx_packets, s.tx_bytes), (2, 120));
        assert_eq!(s.rx_errors, 2);
        // Drops are summed over the port's queues.
        let mut hw = HwCounters::default();
        for (n, v) in [(0, 1), (1, 2), (2, 4)] {
            r.write32(regs::rqdpc(n), v);
        }
        hw.accumulate(&r, 2);
        assert_eq!(hw.rqdpc, 3);
    }
}
