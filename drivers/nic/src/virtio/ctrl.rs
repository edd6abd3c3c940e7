//! The control virtqueue (controlq, virtio spec §5.1.6.5): one command at a
//! time, polled to completion. Used for the receive mode (promiscuous) and
//! the RSS setup of a multi-queue port.
//!
//! A command is a device-readable `class, command, data` buffer followed by
//! a device-writable one-byte `ack`, both in a small area carved out of
//! the queue region for the control queue alone.

use std::time::{Duration, Instant};

use fastlane_framework::DmaArray;

use super::ring::Ring;
use super::spec::VIRTIO_NET_OK;
use super::virtqueue::Segment;
use crate::{NicError, Result};

/// Longest command data the driver sends: an RSS setup with a 128-entry
/// table and a 40-byte key takes 8 + 256 + 3 + 40.
pub const MAX_DATA: usize = 446;
/// Bytes of the command area: command, then the ack at [`ACK_AT`].
pub const AREA_LEN: usize = 512;
const ACK_AT: usize = 448;

pub struct CtrlQueue {
    vq: Ring<()>,
    /// The command area: command at 0, ack at [`ACK_AT`].
    area: DmaArray<u8>,
}

impl CtrlQueue {
    /// `area`: at least [`AREA_LEN`] bytes for commands.
    pub fn new(vq: impl Into<Ring<()>>, area: DmaArray<u8>) -> Result<CtrlQueue> {
        if area.len() < AREA_LEN {
            return Err(NicError::InvalidArgument(format!(
                "a control area of {} bytes",
                area.len()
            )));
        }
        Ok(CtrlQueue {
            vq: vq.into(),
            area,
        })
    }

    /// Sends one command and waits for the device's ack.
    pub fn command(
        &mut self,
        class: u8,
        command: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<()> {
        if data.len() > MAX_DATA {
            return Err(NicError::InvalidArgument(format!(
                "control command data of {} bytes",
                data.len()
            )));
        }
        if self.vq.in_flight() != 0 {
            // A previous command timed out and the device still holds it.
            self.collect(Duration::ZERO)?;
        }
        self.area.copy_from(0, &[class, command])?;
        self.area.copy_from(2, data)?;
        self.area.write(ACK_AT, 0xff);
        let segs = [
            Segment {
                addr: self.area.iova(),
                len: 2 + data.len() as u32,
                device_writes: false,
            },
            Segment {
                addr: self.area.iova_of(ACK_AT),
                len: 1,
                device_writes: true,
            },
        ];
        if self.vq.add(&segs, ()).is_err() {
            return Err(NicError::InvalidArgument("control queue is full".into()));
        }
        self.vq.kick();
        self.collect(timeout)?;
        let ack = self.area.read(ACK_AT);
        if ack != VIRTIO_NET_OK {
            return Err(NicError::Negotiation(format!(
                "the device refused control command class {class} command {command} (ack {ack})"
            )));
        }
        Ok(())
    }

    /// Waits until the device returned the command in flight.
    fn collect(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while self.vq.pop_used()?.is_none() {
            if start.elapsed() >= timeout {
                return Err(NicError::Timeout {
                    what: "virtio-net control command",
                });
            }
            std::thread::yield_now();
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::super::sim::queue_pair;
    use super::super::spec::{VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC};
    use super::*;
    use fastlane_framework::{DmaRegion, PageSize};

    #[test]
    fn a_command_is_acked_refused_or_times_out() {
        let (vq, mut dev) = queue_pair(4);
        let region = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        let mut ctrl = CtrlQueue::new(vq, region.carve(256, AREA_LEN).unwrap()).unwrap();
        let dev_thread = std::thread::spawn(move || {
            for ack in [VIRTIO_NET_OK, 1] {
                let (head, chain) = loop {
                    if let Some(c) = dev.pop_avail() {
                        break c;
                    }
                    std::thread::yield_now();
                };
                assert_eq!(
                    dev.read_buf(&chain[0]),
                    [VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, 1]
                );
                dev.write_buf(&chain[1], &[ack]);
                dev.push_used(head as u32, 1);
            }
            dev
        });
        let t = Duration::from_secs(5);
        ctrl.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1], t)
            .unwrap();
        let refused = ctrl.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1], t);
        assert!(matches!(refused, Err(NicError::Negotiation(_))));
        let _dev = dev_thread.join().unwrap();
        let silent = ctrl.command(
            VIRTIO_NET_CTRL_RX,
            VIRTIO_NET_CTRL_RX_PROMISC,
            &[0],
            Duration::from_millis(10),
        );
        assert!(matches!(silent, Err(NicError::Timeout { .. })));
    }
}
