//! Fuzz bodies for the NVMe parsers of device-written data: completion
//! queue entries (base spec 4.6) and the Identify data structures (base spec
//! 5.17.2). Each body takes arbitrary bytes, must never panic, and checks
//! what the spec promises about the decoded values; a failed `assert!` is a
//! finding.
//!
//! The same file is compiled into the fuzz targets (through the
//! `fastlane-fuzz` library) and into `drivers/nvme/tests/proptest.rs`
//! (through `#[path]`), so CI runs every body on random bytes even without
//! a fuzzer. It only names `fastlane_nvme` paths, which resolve in both.

use fastlane_nvme::queue::{CidTable, CqRing, SqRing, UnknownCid};
use fastlane_nvme::spec::{
    active_ns_ids, CompletionEntry, IdentifyController, IdentifyNamespace, LbaFormat, Status,
    IDENTIFY_DATA_SIZE,
};

/// Little-endian `u16` at `at`, or `default` past the end of `data`.
fn u16_or(data: &[u8], at: usize, default: u16) -> u16 {
    data.get(at..at + 2)
        .map_or(default, |b| u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

/// A completion entry as the device writes it: the first 16 bytes are the
/// entry, the bytes after it (if any) pick the queue sizes and how many
/// commands are in flight when it arrives.
pub fn completion_entry(data: &[u8]) {
    let Some(raw) = data.get(..16) else { return };
    let cqe: CompletionEntry = bytemuck::pod_read_unaligned(raw);
    let status_bits = u16::from_le_bytes([raw[14], raw[15]]);
    assert_eq!(cqe.status, status_bits, "status is DW3 bits 31:16");
    assert_eq!(cqe.cid, u16::from_le_bytes([raw[12], raw[13]]));
    assert_eq!(cqe.sq_head, u16::from_le_bytes([raw[8], raw[9]]));
    check_status(cqe.status());

    // Phase Tag against a completion queue of a device-independent size.
    let cq_size = u16_or(data, 16, 64);
    match CqRing::new(cq_size) {
        Err(_) => assert!(cq_size < 2),
        Ok(mut cq) => {
            // Zeroed queue memory, first lap: new exactly when P = 1.
            assert_eq!(cq.is_new_entry(&cqe), cqe.phase());
            assert_eq!(cq.is_new(cqe.status), cq.is_new_entry(&cqe));
            // A whole lap later the meaning of the same entry is inverted.
            for _ in 0..cq_size.min(4096) {
                cq.advance();
            }
            if cq_size <= 4096 {
                assert_eq!(cq.head(), 0);
                assert_eq!(cq.is_new_entry(&cqe), !cqe.phase());
            }
        }
    }

    // SQ Head Pointer against a submission queue with `pushed` commands
    // submitted from slot 0: valid exactly when 0 <= sq_head <= pushed.
    let sq_size = u16_or(data, 18, 32).clamp(2, 1024);
    let mut sq = SqRing::new(sq_size).expect("size >= 2");
    let pushed = u16_or(data, 20, 5) % sq_size;
    for i in 0..pushed {
        assert_eq!(sq.push_slot(), Some(i));
    }
    let accepted = sq.update_head(cqe.sq_head).is_ok();
    assert_eq!(
        accepted,
        cqe.sq_head <= pushed,
        "sq_head {} with tail {pushed}",
        cqe.sq_head
    );
    if accepted {
        assert_eq!(sq.head(), cqe.sq_head);
        assert_eq!(sq.len(), pushed - cqe.sq_head);
    } else {
        assert_eq!(
            (sq.head(), sq.tail()),
            (0, pushed),
            "a rejected head changes nothing"
        );
    }

    // CID lookup: with `issued` commands in flight from a fresh table, the
    // completion's CID resolves exactly when it was issued, and only once.
    let capacity = u16_or(data, 22, 63).min(4096);
    let mut cids = CidTable::new(capacity);
    let issued = u16_or(data, 24, 3) % (capacity + 1);
    for i in 0..issued {
        assert_eq!(cids.alloc(u32::from(i) + 1000), Some(i));
    }
    match cids.complete(cqe.cid) {
        Ok(token) => {
            assert!(cqe.cid < issued);
            assert_eq!(token, u32::from(cqe.cid) + 1000, "token of another command");
            assert_eq!(cids.complete(cqe.cid), Err(UnknownCid { cid: cqe.cid }));
            assert_eq!(cids.in_flight(), usize::from(issued) - 1);
        }
        Err(e) => {
            assert!(cqe.cid >= issued);
            assert_eq!(e, UnknownCid { cid: cqe.cid });
            assert!(!e.to_string().is_empty());
            assert_eq!(cids.in_flight(), usize::from(issued));
        }
    }
}

/// Every decoding of the 16-bit Phase Tag + Status Field (base spec 4.6.1)
/// agrees with the bit layout, and errors format without panicking.
fn check_status(s: Status) {
    let raw = s.0;
    assert_eq!(s.phase(), raw & 1 == 1);
    assert_eq!(u16::from(s.sc()), (raw >> 1) & 0xFF);
    assert_eq!(u16::from(s.sct()), (raw >> 9) & 0x7);
    assert_eq!(u16::from(s.crd()), (raw >> 12) & 0x3);
    assert_eq!(s.more(), raw & (1 << 14) != 0);
    assert_eq!(s.dnr(), raw & (1 << 15) != 0);
    // Success is SCT 0 / SC 0 whatever P, CRD, M and DNR say.
    assert_eq!(s.is_success(), (raw >> 1) & 0x7FF == 0);
    match s.result() {
        Ok(()) => assert!(s.is_success()),
        Err(e) => {
            assert!(!s.is_success());
            assert_eq!(
                (e.sct, e.sc, e.crd, e.more, e.dnr),
                (s.sct(), s.sc(), s.crd(), s.more(), s.dnr())
            );
            let text = e.to_string();
            if let Some(name) = e.name() {
                assert!(
                    text.starts_with(name),
                    "{text:?} does not start with {name:?}"
                );
            }
            assert!(text.contains(&format!("SC {:#04x}", e.sc)), "{text:?}");
            assert_eq!(text.ends_with(", DNR)"), e.dnr, "{text:?}");
        }
    }
}

/// An ASCII identify field as the accessors promise: printable ASCII only,
/// no padding at either end, never longer than the field; and when the
/// field is all printable ASCII, exactly the field with its spaces trimmed.
fn check_ascii(trimmed: &str, field: &[u8]) {
    assert!(trimmed.len() <= field.len());
    assert!(
        trimmed.bytes().all(|b| (0x20..0x7F).contains(&b)),
        "{trimmed:?}"
    );
    assert!(
        !trimmed.starts_with(' ') && !trimmed.ends_with(' '),
        "{trimmed:?}"
    );
    if field.iter().all(|b| (0x20..0x7F).contains(b)) {
        let text = std::str::from_utf8(field).expect("ASCII");
        assert_eq!(trimmed, text.trim_matches(' '));
    }
}

/// An Identify Controller data structure (CNS 01h) as the device wrote it.
pub fn identify_controller(data: &[u8]) {
    let parsed = IdentifyController::from_bytes(data);
    assert_eq!(parsed.is_some(), data.len() >= IDENTIFY_DATA_SIZE);
    check_ns_list(data);
    let Some(id) = parsed else { return };

    // Fields come from their spec offsets.
    assert_eq!(id.vid, u16_or(data, 0, 0));
    assert_eq!(id.mdts, data[77]);
    assert_eq!(id.nn, u32_at(data, 516));
    check_ascii(&id.serial(), &data[4..24]);
    check_ascii(&id.model(), &data[24..64]);
    check_ascii(&id.firmware(), &data[64..72]);

    for page_size in [4096usize, 8192, 1 << 16, 1 << 27] {
        match id.mdts_bytes(page_size) {
            Some(bytes) => {
                assert_ne!(id.mdts, 0, "MDTS 0 means no limit");
                assert_eq!(bytes / page_size, 1usize << id.mdts);
                assert_eq!(bytes % page_size, 0);
            }
            None => {
                // No limit, or a limit beyond the address space.
                assert!(
                    id.mdts == 0
                        || id.mdts >= 64
                        || (1u128 << id.mdts) * page_size as u128 > usize::MAX as u128
                );
            }
        }
    }
    let v = id.version();
    assert_eq!(
        v.to_string(),
        format!("{}.{}.{}", v.major(), v.minor(), v.tertiary())
    );
    let _ = (
        id.supports_doorbell_buffer_config(),
        id.supports_dsm(),
        id.supports_write_zeroes(),
        id.has_volatile_write_cache(),
    );
    let debug = format!("{id:?}");
    assert!(debug.starts_with("IdentifyController"));
}

/// An Identify Namespace data structure (CNS 00h, NVM Command Set).
pub fn identify_namespace(data: &[u8]) {
    let parsed = IdentifyNamespace::from_bytes(data);
    assert_eq!(parsed.is_some(), data.len() >= IDENTIFY_DATA_SIZE);
    check_ns_list(data);
    let Some(ns) = parsed else { return };

    assert_eq!(ns.nlbaf, data[25]);
    assert_eq!(ns.flbas, data[26]);
    let idx = ns.lba_format_index();
    // FLBAS bits 3:0 and 6:5 make a 6-bit index; bit 4 and 7 are not part of it.
    assert!(idx < 64);
    assert_eq!(idx & 0xF, ns.flbas & 0xF);
    assert_eq!(idx >> 4, (ns.flbas >> 5) & 0x3);
    assert_eq!(ns.metadata_extended(), ns.flbas & 0x10 != 0);

    let at = 128 + 4 * usize::from(idx);
    let in_data = LbaFormat {
        ms: u16_or(data, at, 0),
        lbads: data[at + 2],
        rp: data[at + 3],
    };
    match ns.lba_format() {
        Some(f) => {
            assert!(idx <= ns.nlbaf, "format {idx} beyond NLBAF {}", ns.nlbaf);
            assert_eq!(f, in_data);
            assert_eq!(ns.metadata_size(), Some(f.ms));
            assert!(f.relative_performance() <= 3);
        }
        None => {
            assert!(idx > ns.nlbaf);
            assert_eq!(ns.metadata_size(), None);
            assert_eq!(ns.lba_size(), None);
        }
    }
    match ns.lba_size() {
        Some(size) => {
            assert!(size.is_power_of_two() && size >= 512, "block size {size}");
            assert_eq!(size.trailing_zeros(), u32::from(in_data.lbads));
        }
        None => assert!(!matches!(ns.lba_format(), Some(f) if (9..=31).contains(&f.lbads))),
    }
    let debug = format!("{ns:?}");
    assert!(debug.starts_with("IdentifyNamespace"));
}

/// The Active Namespace ID list (CNS 02h) over the same bytes: at most 1024
/// ids, none zero, each read from its little-endian slot, stopping at the
/// first zero.
fn check_ns_list(data: &[u8]) {
    let ids: Vec<u32> = active_ns_ids(data).collect();
    assert!(ids.len() <= IDENTIFY_DATA_SIZE / 4);
    assert!(ids.len() <= data.len() / 4);
    for (i, &id) in ids.iter().enumerate() {
        assert_ne!(id, 0);
        assert_eq!(id, u32_at(data, 4 * i));
    }
    // The list ends at a zero entry, at the end of the data, or at 1024.
    let n = ids.len();
    assert!(n == IDENTIFY_DATA_SIZE / 4 || n == data.len() / 4 || u32_at(data, 4 * n) == 0);
}
