//! NVMe specification definitions, each declared once: controller registers
//! (NVMe base spec 2.0, section 3.1 "Controller Registers"), submission and
//! completion queue entries (section 4.2 and 4.6), the admin and NVM commands
//! this driver issues (section 5 and the NVM Command Set spec), the Identify
//! data structures (figures "Identify Controller Data Structure" and
//! "Identify Namespace Data Structure, NVM Command Set") and the completion
//! status field (section 4.6.1).
//!
//! All structures are little-endian on the wire and are declared with native
//! integers, so the crate only builds for little-endian targets. Identify data
//! is written by the device: every accessor here is total over arbitrary
//! bytes and reports nonsense as `None` instead of panicking.

#[cfg(target_endian = "big")]
compile_error!("fastlane-nvme declares NVMe structures with native integers: little-endian only");

mod command;
mod completion;
mod identify;
mod log;
mod regs;
mod sgl;

pub use command::*;
pub use completion::*;
pub use identify::*;
pub use log::*;
pub use regs::*;
pub use sgl::*;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn register_fields() {
        // MQES 1023, CQR, TO 0x14, DSTRD 1, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = Cap(0x3FF | 1 << 16 | 0x14 << 24 | 1 << 32 | 1 << 37 | 4 << 52);
        assert_eq!(cap.mqes(), 1023);
        assert_eq!(cap.max_queue_entries(), 1024);
        assert!(cap.cqr());
        assert_eq!(cap.timeout(), Duration::from_secs(10));
        assert_eq!(cap.doorbell_stride(), 8);
        assert!(cap.supports_nvm_command_set());
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.max_page_size(), 65536);
        assert_eq!(Cap(u64::MAX).max_page_size(), 1 << 27);

        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(3, 1), 0x1000 + 6 * 8);
        assert_eq!(cq_head_doorbell(3, 1), 0x1000 + 7 * 8);

        let cc = Cc::nvm(0).with_en(true);
        assert_eq!(cc.0, 0x0046_0001);
        assert_eq!(
            (cc.iosqes(), cc.iocqes(), cc.mps(), cc.en()),
            (6, 4, 0, true)
        );
        let cc = cc.with_shn(Shutdown::Normal).with_en(false);
        assert_eq!(cc.shn(), 1);
        assert!(!cc.en());

        assert_eq!(Csts(0b1001).shst(), ShutdownStatus::Complete);
        assert!(Csts(0b1001).rdy() && !Csts(0b1001).cfs());
        assert!(Csts(u32::MAX).is_all_ones());
        assert_eq!(aqa(32, 64), Some(63 << 16 | 31));
        assert_eq!(aqa(1, 64), None);
        assert_eq!(aqa(4097, 64), None);
        assert_eq!(Version(0x0001_0400).to_string(), "1.4.0");
    }

    #[test]
    fn command_encoding() {
        let mut e = SubmissionEntry::read(1, 0x1_2345_6789, 7, 0x1000, 0x2000);
        e.set_cid(0xBEEF);
        let bytes: &[u8] = bytemuck::bytes_of(&e);
        assert_eq!(bytes[0], 0x02);
        assert_eq!(&bytes[2..4], &[0xEF, 0xBE]);
        assert_eq!(&bytes[4..8], &[1, 0, 0, 0]);
        assert_eq!(&bytes[24..32], &0x1000u64.to_le_bytes());
        assert_eq!(&bytes[32..40], &0x2000u64.to_le_bytes());
        assert_eq!(&bytes[40..48], &0x1_2345_6789u64.to_le_bytes());
        assert_eq!(&bytes[48..52], &[7, 0, 0, 0]);
        assert_eq!((e.opcode(), e.cid()), (0x02, 0xBEEF));

        let cq = SubmissionEntry::create_io_cq(3, 256, 0xA000);
        assert_eq!(
            (cq.opcode(), cq.cdw10, cq.cdw11, cq.prp1),
            (0x05, 255 << 16 | 3, 1, 0xA000)
        );
        // IEN (bit 1) and IV (bits 31:16), PC kept.
        let cq = cq.with_interrupt_vector(7);
        assert_eq!((cq.cdw10, cq.cdw11), (255 << 16 | 3, 7 << 16 | 0b11));
        assert_eq!(cq.with_interrupt_vector(0xffff).cdw11, 0xffff << 16 | 0b11);
        let sq = SubmissionEntry::create_io_sq(3, 256, 0xB000, 3, QueuePriority::Medium);
        assert_eq!(
            (sq.opcode(), sq.cdw10, sq.cdw11),
            (0x01, 255 << 16 | 3, 3 << 16 | 2 << 1 | 1)
        );
        assert_eq!(SubmissionEntry::delete_io_sq(5).cdw10, 5);
        assert_eq!(SubmissionEntry::delete_io_cq(5).opcode(), 0x04);
        let nq = SubmissionEntry::set_num_queues(4, 2);
        assert_eq!((nq.opcode(), nq.cdw10, nq.cdw11), (0x09, 0x07, 1 << 16 | 3));
        assert_eq!(
            NumQueues::from_dw0(0x0003_0007),
            NumQueues {
                sq_count: 8,
                cq_count: 4
            }
        );
        let gf =
            SubmissionEntry::get_features(feature::VOLATILE_WRITE_CACHE, FeatureSelect::Saved, 0);
        assert_eq!((gf.opcode(), gf.cdw10), (0x0A, 2 << 8 | 6));
        let ab = SubmissionEntry::abort(2, 77);
        assert_eq!((ab.opcode(), ab.cdw10), (0x08, 77 << 16 | 2));
        let id = SubmissionEntry::identify_namespace(1, 0x5000);
        assert_eq!(
            (id.opcode(), id.nsid, id.cdw10, id.prp1),
            (0x06, 1, 0, 0x5000)
        );
        assert_eq!(SubmissionEntry::identify_controller(0).cdw10, 1);
        assert_eq!(SubmissionEntry::identify_active_ns_list(0, 0).cdw10, 2);
        let db = SubmissionEntry::doorbell_buffer_config(0x1000, 0x2000);
        assert_eq!((db.opcode(), db.prp1, db.prp2), (0x7C, 0x1000, 0x2000));
        let wz = SubmissionEntry::write_zeroes(1, 10, 3, true);
        assert_eq!(
            (wz.opcode(), wz.cdw10, wz.cdw12),
            (0x08, 10, 3 | CDW12_DEAC)
        );
        let dsm = SubmissionEntry::deallocate(1, 0x3000, 255);
        assert_eq!(
            (dsm.opcode(), dsm.cdw10, dsm.cdw11, dsm.prp1),
            (0x09, 255, DSM_AD, 0x3000)
        );
        assert_eq!(SubmissionEntry::flush(1).opcode(), 0x00);
        assert_eq!(SubmissionEntry::write(1, 0, 0, 0, 0).opcode(), 0x01);

        let r = DsmRange::new(0x10, 8);
        assert_eq!(bytemuck::bytes_of(&r)[4..8], [8, 0, 0, 0]);
        assert_eq!(bytemuck::bytes_of(&r)[8], 0x10);
    }

    #[test]
    fn status_decoding() {
        let raw: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 9, 0, 0, 0];
        let mut cqe: CompletionEntry = bytemuck::pod_read_unaligned(&raw);
        assert_eq!((cqe.dw0, cqe.sq_head, cqe.sq_id, cqe.cid), (1, 5, 1, 9));
        assert!(!cqe.phase());
        assert_eq!(cqe.status().result(), Ok(()));

        // Phase 1, SCT 0, SC 0x80 (LBA Out of Range), DNR.
        cqe.status = 1 | 0x80 << 1 | 1 << 15;
        let s = cqe.status();
        assert!(s.phase() && s.dnr() && !s.more() && !s.is_success());
        let err = s.result().unwrap_err();
        assert_eq!((err.sct, err.sc), (0, 0x80));
        assert_eq!(err.to_string(), "LBA Out of Range (SCT 0x0, SC 0x80, DNR)");

        // SCT 1, SC 1: Invalid Queue Identifier; CRD 2, More.
        let s = Status(1 << 1 | 1 << 9 | 2 << 12 | 1 << 14);
        assert_eq!((s.sct(), s.sc(), s.crd(), s.more()), (1, 1, 2, true));
        assert_eq!(
            s.result().unwrap_err().name(),
            Some("Invalid Queue Identifier")
        );
        assert!(Status(1 | 2 << 12).is_success());

        // Every raw value decodes and formats without panicking.
        for raw in 0..=u16::MAX {
            if let Err(e) = Status(raw).result() {
                assert!(!e.to_string().is_empty());
            }
        }
        assert!(Status(0x17 << 1)
            .result()
            .unwrap_err()
            .to_string()
            .starts_with("Unknown"));
    }

    fn controller_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        b[4..24].copy_from_slice(b"deadbeef            ");
        b[24..64].copy_from_slice(b"QEMU NVMe Ctrl                          ");
        b[64..72].copy_from_slice(b"8.2.0   ");
        b[77] = 7;
        b[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes());
        b[256..258].copy_from_slice(&0x0100u16.to_le_bytes());
        b[516..520].copy_from_slice(&256u32.to_le_bytes());
        b[520..522].copy_from_slice(&0x000Cu16.to_le_bytes());
        b[525] = 1;
        b
    }

    #[test]
    fn identify_controller() {
        let id = IdentifyController::from_bytes(&controller_bytes()).unwrap();
        assert_eq!(id.vid, 0x1b36);
        assert_eq!(id.serial(), "deadbeef");
        assert_eq!(id.model(), "QEMU NVMe Ctrl");
        assert_eq!(id.firmware(), "8.2.0");
        assert_eq!(id.version(), Version(0x0001_0400));
        assert_eq!(id.nn, 256);
        assert_eq!(id.mdts_bytes(4096), Some(512 * 1024));
        assert!(id.supports_doorbell_buffer_config());
        assert!(id.supports_dsm() && id.supports_write_zeroes());
        assert!(id.has_volatile_write_cache());
        assert!(format!("{id:?}").contains("QEMU NVMe Ctrl"));
        assert!(IdentifyController::from_bytes(&[0; 4095]).is_none());

        let mut odd = IdentifyController::from_bytes(&[0xFF; 4096]).unwrap();
        assert_eq!(odd.serial(), "?".repeat(20));
        assert_eq!(odd.mdts_bytes(4096), None);
        odd.mdts = 0;
        assert_eq!(odd.mdts_bytes(4096), None);
        odd.sn = [b' '; 20];
        assert_eq!(odd.serial(), "");
    }

    #[test]
    fn identify_namespace() {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&1000u64.to_le_bytes());
        b[25] = 1; // two formats
        b[26] = 1; // format 1 in use
        b[128..132].copy_from_slice(&[0, 0, 9, 0]); // 512 B
        b[132..136].copy_from_slice(&[8, 0, 12, 0x81]); // 4 KiB + 8 B metadata
        let mut ns = IdentifyNamespace::from_bytes(&b).unwrap();
        assert_eq!(ns.nsze, 1000);
        assert_eq!(ns.lba_size(), Some(4096));
        assert_eq!(ns.metadata_size(), Some(8));
        assert_eq!(ns.lba_format().unwrap().relative_performance(), 1);
        ns.flbas = 0;
        assert_eq!(ns.lba_size(), Some(512));
        ns.flbas = 2; // beyond NLBAF
        assert_eq!(ns.lba_size(), None);
        ns.flbas = 0x60 | 0xF; // index 63
        ns.nlbaf = 63;
        assert_eq!(ns.lba_format_index(), 63);
        assert_eq!(ns.lba_size(), None); // LBADS 0: unsupported
        ns.lbaf[63].lbads = 200;
        assert_eq!(ns.lba_size(), None);
        ns.lbaf[63].lbads = 13;
        assert_eq!(ns.lba_size(), Some(8192));

        // No byte content panics.
        for fill in [0x00u8, 0x5A, 0xFF] {
            let ns = IdentifyNamespace::from_bytes(&[fill; 4096]).unwrap();
            let _ = (ns.lba_size(), ns.metadata_size(), format!("{ns:?}"));
        }
    }

    #[test]
    fn ns_list() {
        let mut b = vec![0u8; 4096];
        for (i, id) in [1u32, 2, 7].iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
        }
        assert_eq!(active_ns_ids(&b).collect::<Vec<_>>(), [1, 2, 7]);
        assert_eq!(active_ns_ids(&[0xFF; 4096]).count(), 1024);
        assert_eq!(active_ns_ids(&[1, 0, 0]).count(), 0);
    }
}
