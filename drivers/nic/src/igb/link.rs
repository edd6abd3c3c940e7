//! Link bring-up and state: the internal PHY reached through MDIC (82576
//! datasheet 8.2.4), auto-negotiation restart, and STATUS decoding.

use std::time::Duration;

use fastlane_framework::Mmio;

use super::regs::{self, ctrl, ctrl_ext, mdic, phy, status};
use super::poll;
use crate::{LinkStatus, NicError, Result};

/// How long one MDIC transaction may take.
const MDIC_TIMEOUT: Duration = Duration::from_millis(100);

fn mdic(r: &Mmio, cmd: u32) -> Result<u16> {
    r.write32(regs::MDIC, cmd);
    let mut v = 0;
    poll("PHY access (MDIC)", MDIC_TIMEOUT, || {
        v = r.read32(regs::MDIC);
        v & mdic::READY != 0
    })?;
    if v & mdic::ERROR != 0 {
        return Err(NicError::Malformed("PHY access failed (MDIC error bit)"));
    }
    Ok((v & mdic::DATA_MASK) as u16)
}

fn phy_cmd(op: u32, reg: u32, data: u16) -> u32 {
    op | mdic::INTERNAL_PHY << mdic::PHY_SHIFT | reg << mdic::REG_SHIFT | u32::from(data)
}

/// Reads PHY register `reg`.
pub fn read_phy(r: &Mmio, reg: u32) -> Result<u16> {
    mdic(r, phy_cmd(mdic::OP_READ, reg, 0))
}

/// Writes PHY register `reg`.
pub fn write_phy(r: &Mmio, reg: u32, data: u16) -> Result<()> {
    mdic(r, phy_cmd(mdic::OP_WRITE, reg, data)).map(|_| ())
}

/// After a device reset: take the link out of reset, force link-up from the
/// MAC side, tell firmware a driver is loaded, and restart
/// auto-negotiation on the PHY (a reset leaves the link down until it
/// completes).
pub fn bring_up(r: &Mmio) -> Result<()> {
    let c = r.read32(regs::CTRL);
    r.write32(regs::CTRL, (c | ctrl::SLU) & !(ctrl::LRST | ctrl::PHY_RST));
    r.write32(regs::CTRL_EXT, r.read32(regs::CTRL_EXT) | ctrl_ext::DRV_LOAD);
    let bmcr = read_phy(r, phy::BMCR)?;
    write_phy(r, phy::BMCR, bmcr | phy::BMCR_ANENABLE | phy::BMCR_ANRESTART)
}

/// Link state from a STATUS register value.
pub fn decode(st: u32) -> LinkStatus {
    let up = st & status::LU != 0;
    let speed = match (st >> status::SPEED_SHIFT) & status::SPEED_MASK {
        0 => 10,
        1 => 100,
        _ => 1000,
    };
    LinkStatus {
        up,
        speed_mbps: up.then_some(speed),
        full_duplex: up && st & status::FD != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_decodes() {
        let l = decode(status::LU | status::FD | 2 << status::SPEED_SHIFT);
        assert_eq!(l, LinkStatus { up: true, speed_mbps: Some(1000), full_duplex: true });
        let l = decode(status::LU | 1 << status::SPEED_SHIFT);
        assert_eq!(l, LinkStatus { up: true, speed_mbps: Some(100), full_duplex: false });
        assert!(!decode(status::FD).up);
        assert_eq!(decode(0).speed_mbps, None);
    }

    #[test]
    fn phy_commands_address_the_internal_phy() {
        let c = phy_cmd(mdic::OP_WRITE, phy::BMCR, 0x1340);
        assert_eq!(c & 0xffff, 0x1340);
        assert_eq!(c >> mdic::REG_SHIFT & 0x1f, 0);
        assert_eq!(c >> mdic::PHY_SHIFT & 0x1f, 1);
        assert_eq!(c & (3 << 26), mdic::OP_WRITE);
    }

    #[test]
    fn mdic_times_out_without_ready_and_reports_errors() {
        let r = Mmio::simulated(regs::REGS_LEN);
        // Plain memory: the written command never shows READY.
        assert!(matches!(read_phy(&r, 1), Err(NicError::Timeout { .. })));
        // A "device" that already set READY | ERROR: the command write
        // replaces it, so emulate by a write with both bits.
        let v = mdic::READY | mdic::ERROR;
        assert!(mdic(&r, v).is_err());
        assert_eq!(mdic(&r, mdic::READY | 0x1234).unwrap(), 0x1234);
    }
}
