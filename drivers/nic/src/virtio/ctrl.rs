//! The control virtqueue (controlq, virtio spec §5.1.6.5): one command at a
//! time, polled to completion. Used for the receive mode (promiscuous).
//!
//! A command is a device-readable `class, command, data` buffer followed by
//! a device-writable one-byte `ack`, both in a small area of the queue
//! region that nothing else uses.

use std::time::{Duration, Instant};

use fastlane_framework::DmaRegion;

use super::spec::VIRTIO_NET_OK;
use super::virtqueue::{Segment, Virtqueue};
use crate::{NicError, Result};

/// Longest command data the driver sends.
const MAX_DATA: usize = 62;
/// Bytes of the command area: command, then the ack at [`ACK_AT`].
pub const AREA_LEN: usize = 128;
const ACK_AT: usize = 64;

pub struct CtrlQueue {
    vq: Virtqueue<()>,
    region: DmaRegion,
    /// Offset of the command area in `region`.
    area: usize,
}

impl CtrlQueue {
    /// `area`: [`AREA_LEN`] bytes of `region` for commands.
    pub fn new(vq: Virtqueue<()>, region: DmaRegion, area: usize) -> CtrlQueue {
        CtrlQueue { vq, region, area }
    }

    /// Sends one command and waits for the device's ack.
    pub fn command(&mut self, class: u8, command: u8, data: &[u8], timeout: Duration) -> Result<()> {
        if data.len() > MAX_DATA {
            return Err(NicError::InvalidArgument(format!("control command data of {} bytes", data.len())));
        }
        if self.vq.in_flight() != 0 {
            // A previous command timed out and the device still holds it.
            self.collect(Duration::ZERO)?;
        }
        self.region.write(self.area, &[class, command])?;
        self.region.write(self.area + 2, data)?;
        self.region.write(self.area + ACK_AT, &[0xff])?;
        let segs = [
            Segment {
                addr: self.region.iova_at(self.area),
                len: 2 + data.len() as u32,
                device_writes: false,
            },
            Segment {
                addr: self.region.iova_at(self.area + ACK_AT),
                len: 1,
                device_writes: true,
            },
        ];
        if self.vq.add(&segs, ()).is_err() {
            return Err(NicError::InvalidArgument("control queue is full".into()));
        }
        self.vq.kick();
        self.collect(timeout)?;
        let mut ack = [0u8];
        self.region.read(self.area + ACK_AT, &mut ack)?;
        if ack[0] != VIRTIO_NET_OK {
            return Err(NicError::Negotiation(format!(
                "the device refused control command class {class} command {command} (ack {})",
                ack[0]
            )));
        }
        Ok(())
    }

    /// Waits until the device returned the command in flight.
    fn collect(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while self.vq.used_pending()? == 0 {
            if start.elapsed() >= timeout {
                return Err(NicError::Timeout { what: "virtio-net control command" });
            }
            std::thread::yield_now();
        }
        self.vq.pop_used()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::{queue_pair, read_buf, write_buf};
    use super::super::spec::{VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC};
    use super::*;
    use fastlane_framework::PageSize;

    #[test]
    fn a_command_is_acked_refused_or_times_out() {
        let (vq, mut dev) = queue_pair(4);
        let region = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        let mut ctrl = CtrlQueue::new(vq, region, 256);
        let dev_thread = std::thread::spawn(move || {
            for ack in [VIRTIO_NET_OK, 1] {
                let (head, chain) = loop {
                    if let Some(c) = dev.pop_avail() {
                        break c;
                    }
                    std::thread::yield_now();
                };
                assert_eq!(read_buf(&chain[0]), [VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, 1]);
                write_buf(&chain[1], &[ack]);
                dev.push_used(head as u32, 1);
            }
            dev
        });
        let t = Duration::from_secs(5);
        ctrl.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1], t).unwrap();
        let refused = ctrl.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1], t);
        assert!(matches!(refused, Err(NicError::Negotiation(_))));
        let _dev = dev_thread.join().unwrap();
        let silent = ctrl.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[0], Duration::from_millis(10));
        assert!(matches!(silent, Err(NicError::Timeout { .. })));
    }
}
