//! Metadata and end-to-end protection against the model: extended and
//! separate layouts, PRACT insert/strip, host-built PI, controller and
//! driver checks, corrupted tags as typed errors, and the refusals of
//! impossible requests with both buffers handed back.

use std::time::{Duration, Instant};

use fastlane_framework::{BufferPool, DmaBuf, PageSize};
use fastlane_nvme::protection::{self, guard};
use fastlane_nvme::sim::{SimConfig, SimController, SimMetaNamespace};
use fastlane_nvme::{
    Controller, IoQueuePair, MetadataLayout, Namespace, NvmeError, Options, PiCheck, PiChecker,
    PiError, PiField, PiType, Protection, RejectedMeta,
};

/// NSID 2: 512+8 extended, PI type 1. NSID 3: 512+8 separate, PI type 1.
/// NSID 4: 512+16 separate, PI type 1 in the first 8 bytes. NSID 5: 512+8
/// extended, no PI. NSID 6: 512+16 extended, PI type 1 in the last 8 bytes
/// (the guard covers the 8 metadata bytes before it).
const EXT: u32 = 2;
const SEP: u32 = 3;
const SEP16: u32 = 4;
const PLAIN_MD: u32 = 5;
const EXT16: u32 = 6;
const BLOCKS: u32 = 8;

fn meta_ns(ms: u16, extended: bool, pi_type: u8, pi_first: bool) -> SimMetaNamespace {
    SimMetaNamespace {
        blocks: 4096,
        lba_size: 512,
        ms,
        extended,
        pi_type,
        pi_first,
    }
}

/// Namespace, first LBA, blocks.
type At = (u32, u64, u32);
/// Data buffer, separate metadata buffer.
type Bufs = (DmaBuf, Option<DmaBuf>);

/// A completion and its metadata buffer.
struct Done {
    buf: Option<DmaBuf>,
    meta: Option<DmaBuf>,
    result: Result<(), NvmeError>,
}

/// Fields drop in order: the queue pair and controller before the model.
struct Rig {
    qp: IoQueuePair,
    ctrl: Controller,
    pool: BufferPool,
    sim: SimController,
}

fn rig() -> Rig {
    let cfg = SimConfig {
        namespace_blocks: 1 << 16,
        metadata_namespaces: vec![
            meta_ns(8, true, 1, false),
            meta_ns(8, false, 1, false),
            meta_ns(16, false, 1, true),
            meta_ns(8, true, 0, false),
            meta_ns(16, true, 1, false),
        ],
        ..SimConfig::default()
    };
    let (sim, mmio) = SimController::start(cfg);
    let ctrl = Controller::with_registers(mmio, Options::default()).expect("bring-up");
    let qp = ctrl.create_qpair(16).expect("queue pair");
    let pool = BufferPool::new_unmapped(16 << 10, 16, PageSize::Small).expect("pool");
    Rig {
        sim,
        ctrl,
        qp,
        pool,
    }
}

impl Rig {
    fn ns(&self, id: u32) -> Namespace {
        self.ctrl.namespace(id).unwrap()
    }

    fn buf(&self) -> DmaBuf {
        let mut b = self.pool.alloc().unwrap();
        b.fill(0);
        b
    }

    /// The next completion, with its metadata buffer taken back.
    fn wait(&mut self) -> Done {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = None;
        while got.is_none() {
            assert!(Instant::now() < deadline, "no completion");
            self.qp.poll(1, |c| got = Some(c));
        }
        let c = got.unwrap();
        Done {
            meta: self.qp.take_meta(c.tag),
            buf: c.buf,
            result: c.result,
        }
    }

    fn write(&mut self, at: At, (buf, meta): Bufs, pi: Protection) -> Done {
        let r = self.qp.write_with_meta(at.0, at.1, at.2, buf, meta, pi, 1);
        self.done(r)
    }

    fn read(&mut self, at: At, (buf, meta): Bufs, pi: Protection) -> Done {
        let r = self.qp.read_with_meta(at.0, at.1, at.2, buf, meta, pi, 2);
        self.done(r)
    }

    fn done(&mut self, submitted: Result<(), RejectedMeta>) -> Done {
        submitted.map_err(|r| r.error).expect("submitted");
        self.wait()
    }
}

/// Block `i` of a pattern: distinct per LBA and seed.
fn block(lba: u64, seed: u8) -> Vec<u8> {
    (0..512)
        .map(|j| (lba as usize * 7 + j * 13 + seed as usize) as u8)
        .collect()
}

/// Writes the pattern into `buf` with `stride` bytes per block.
fn put_pattern(buf: &mut DmaBuf, lba: u64, blocks: u32, stride: usize, seed: u8) {
    for i in 0..blocks as usize {
        buf.write(i * stride, &block(lba + i as u64, seed)).unwrap();
    }
}

fn assert_pattern(buf: &DmaBuf, lba: u64, blocks: u32, stride: usize, seed: u8) {
    let mut got = vec![0u8; 512];
    for i in 0..blocks as usize {
        buf.read(i * stride, &mut got).unwrap();
        assert_eq!(got, block(lba + i as u64, seed), "block {i}");
    }
}

/// Buffers holding the pattern of `seed` at `lba`, with PI built for
/// `pi_lba`.
fn filled(r: &Rig, ns: &Namespace, lba: u64, pi_lba: u64, seed: u8) -> Bufs {
    let mut data = r.buf();
    put_pattern(
        &mut data,
        lba,
        BLOCKS,
        ns.metadata.data_stride(512, false),
        seed,
    );
    let mut meta = (ns.metadata.layout == MetadataLayout::Separate).then(|| r.buf());
    protection::fill(ns, pi_lba, BLOCKS, &mut data, meta.as_mut(), 0).unwrap();
    (data, meta)
}

fn pi_error(r: &Result<(), NvmeError>) -> PiError {
    let e = r.as_ref().expect_err("a protection error");
    *e.protection().unwrap_or_else(|| panic!("not a protection error: {e}"))
}

#[test]
fn formats_are_read_from_identify() {
    let r = rig();
    assert_eq!(r.ctrl.namespaces().len(), 6);
    assert_eq!(r.ns(EXT16).metadata.pi_offset(), 8);
    assert_eq!(r.ns(1).metadata.layout, MetadataLayout::None);
    let ext = r.ns(EXT).metadata;
    assert_eq!(
        (ext.size, ext.layout, ext.pi, ext.pi_first),
        (8, MetadataLayout::Extended, Some(PiType::Type1), false)
    );
    let sep = r.ns(SEP).metadata;
    assert_eq!((sep.size, sep.layout), (8, MetadataLayout::Separate));
    let sep16 = r.ns(SEP16).metadata;
    assert_eq!(
        (sep16.size, sep16.pi_first, sep16.pi_offset()),
        (16, true, 0)
    );
    assert_eq!(r.ns(PLAIN_MD).metadata.pi, None);
    assert_eq!(r.ns(EXT).block_size, 512);
}

/// PRACT: the controller inserts the PI on write and strips it on read
/// (8 bytes of metadata: only data moves); with PRCHK it checks all of it.
#[test]
fn pract_insert_and_strip_both_layouts() {
    let mut r = rig();
    for nsid in [EXT, SEP] {
        let lba = 100;
        let mut data = r.buf();
        put_pattern(&mut data, lba, BLOCKS, 512, 1);
        let pi = Protection::by_controller(PiCheck::ALL).with_app_tag(0x5a5a, 0xFFFF);
        let c = r.write((nsid, lba, BLOCKS), (data, None), pi);
        assert!(c.result.is_ok(), "ns {nsid}: {:?}", c.result);
        assert!(c.meta.is_none());
        let c = r.read((nsid, lba, BLOCKS), (r.buf(), None), pi);
        assert!(c.result.is_ok(), "ns {nsid}: {:?}", c.result);
        assert_pattern(c.buf.as_ref().unwrap(), lba, BLOCKS, 512, 1);
        // The stored tuples, read without PRACT: guard, tag, LBA.
        let ns = r.ns(nsid);
        let (buf, meta) = match ns.metadata.layout {
            MetadataLayout::Extended => (r.buf(), None),
            _ => (r.buf(), Some(r.buf())),
        };
        let c = r.read((nsid, lba, BLOCKS), (buf, meta), Protection::NONE);
        assert!(c.result.is_ok());
        let (buf, meta) = (c.buf.unwrap(), c.meta);
        let stride = ns.metadata.data_stride(512, false);
        assert_pattern(&buf, lba, BLOCKS, stride, 1);
        for i in 0..BLOCKS {
            let t = protection::tuple(&ns, BLOCKS, i, &buf, meta.as_ref()).unwrap();
            let want = guard(&block(lba + i as u64, 1), &[]);
            assert_eq!(
                (t.guard(), t.app_tag(), t.ref_tag()),
                (want, 0x5a5a, (lba + i as u64) as u32)
            );
        }
        // A different expected application tag fails the controller's check.
        let wrong = Protection::by_controller(PiCheck::APP_TAG).with_app_tag(0x1234, 0xFFFF);
        let c = r.read((nsid, lba, BLOCKS), (r.buf(), None), wrong);
        let e = pi_error(&c.result);
        assert_eq!((e.field, e.by), (PiField::AppTag, PiChecker::Controller));
        // Under a mask that ignores the differing bits it passes.
        let masked = wrong.with_app_tag(0x1a5a, 0x0FFF);
        let c = r.read((nsid, lba, BLOCKS), (r.buf(), None), masked);
        assert!(c.result.is_ok(), "{:?}", c.result);
    }
}

/// The host builds the PI, the controller checks it on write, the read
/// checks it at the controller and again in the driver; 16 bytes of
/// metadata with the tuple first keep the other 8 bytes as written.
#[test]
fn host_built_pi_checked_everywhere() {
    let mut r = rig();
    for nsid in [EXT, SEP, SEP16, EXT16] {
        let ns = r.ns(nsid);
        let lba = 7;
        let stride = ns.metadata.data_stride(512, false);
        let mut data = r.buf();
        put_pattern(&mut data, lba, BLOCKS, stride, 2);
        let mut meta = (ns.metadata.layout == MetadataLayout::Separate).then(|| r.buf());
        if let Some(m) = meta.as_mut() {
            if nsid == SEP16 {
                for i in 0..BLOCKS as usize {
                    m.write(i * 16 + 8, &[0xA0 + i as u8; 8]).unwrap();
                }
            }
        }
        protection::fill(&ns, lba, BLOCKS, &mut data, meta.as_mut(), 0x0042).unwrap();
        let c = r.write(
            (nsid, lba, BLOCKS),
            (data, meta),
            Protection::by_host(PiCheck::ALL),
        );
        assert!(c.result.is_ok(), "ns {nsid}: {:?}", c.result);
        let meta = (ns.metadata.layout == MetadataLayout::Separate).then(|| r.buf());
        let pi = Protection::by_host(PiCheck::ALL)
            .with_app_tag(0x0042, 0xFFFF)
            .verified(PiCheck::ALL);
        let c = r.read((nsid, lba, BLOCKS), (r.buf(), meta), pi);
        assert!(c.result.is_ok(), "ns {nsid}: {:?}", c.result);
        assert_pattern(c.buf.as_ref().unwrap(), lba, BLOCKS, stride, 2);
        if nsid == SEP16 {
            let m = c.meta.as_ref().unwrap();
            let mut rest = [0u8; 8];
            for i in 0..BLOCKS as usize {
                m.read(i * 16 + 8, &mut rest).unwrap();
                assert_eq!(rest, [0xA0 + i as u8; 8]);
            }
        }
    }
}

/// A corrupted guard and a corrupted reference tag: the controller refuses
/// the write with the field's status, typed.
#[test]
fn corrupted_tags_fail_at_the_controller() {
    let mut r = rig();
    for nsid in [EXT, SEP] {
        let ns = r.ns(nsid);
        let stride = ns.metadata.data_stride(512, false);
        let separate = ns.metadata.layout == MetadataLayout::Separate;
        // Data changed after its guard was computed.
        let (mut data, meta) = filled(&r, &ns, 200, 200, 3);
        data.write(5 * stride + 17, &[0xEE]).unwrap();
        let all = Protection::by_host(PiCheck::ALL);
        let c = r.write((nsid, 200, BLOCKS), (data, meta), all);
        let e = pi_error(&c.result);
        assert_eq!((e.field, e.by), (PiField::Guard, PiChecker::Controller));
        assert!(c.buf.is_some() && c.meta.is_some() == separate);
        // PI built for another LBA: the reference tags are wrong.
        let c = r.write((nsid, 300, BLOCKS), filled(&r, &ns, 300, 301, 3), all);
        let e = pi_error(&c.result);
        assert_eq!((e.field, e.by), (PiField::RefTag, PiChecker::Controller));
        // The guard alone is fine there.
        let guard_only = Protection::by_host(PiCheck::GUARD);
        let c = r.write(
            (nsid, 300, BLOCKS),
            filled(&r, &ns, 300, 301, 3),
            guard_only,
        );
        assert!(c.result.is_ok(), "{:?}", c.result);
    }
}

/// Corrupted PI stored without checks: the controller's read check and the
/// driver's own check each find it, naming the field (and, in the driver,
/// the block).
#[test]
fn corrupted_tags_fail_on_read_at_controller_and_driver() {
    let mut r = rig();
    for nsid in [EXT, SEP] {
        let ns = r.ns(nsid);
        let stride = ns.metadata.data_stride(512, false);
        let separate = ns.metadata.layout == MetadataLayout::Separate;
        let lba = 400;
        let mut data = r.buf();
        put_pattern(&mut data, lba, BLOCKS, stride, 4);
        let mut meta = separate.then(|| r.buf());
        protection::fill(&ns, lba, BLOCKS, &mut data, meta.as_mut(), 0).unwrap();
        // Block 3: one data bit flipped; block 6: reference tag of LBA 0.
        data.write(3 * stride + 100, &[block(lba + 3, 4)[100] ^ 1])
            .unwrap();
        let bad_ref = 0u32.to_be_bytes();
        match meta.as_mut() {
            Some(m) => m.write(6 * 8 + 4, &bad_ref).unwrap(),
            None => data.write(6 * stride + 512 + 4, &bad_ref).unwrap(),
        }
        let c = r.write((nsid, lba, BLOCKS), (data, meta), Protection::NONE);
        assert!(c.result.is_ok(), "unchecked write stores anything");

        let fresh = |r: &Rig| separate.then(|| r.buf());
        let m = fresh(&r);
        let c = r.read(
            (nsid, lba, BLOCKS),
            (r.buf(), m),
            Protection::by_host(PiCheck::GUARD),
        );
        let e = pi_error(&c.result);
        assert_eq!((e.field, e.by), (PiField::Guard, PiChecker::Controller));
        let m = fresh(&r);
        let c = r.read(
            (nsid, lba, BLOCKS),
            (r.buf(), m),
            Protection::by_host(PiCheck::REF_TAG),
        );
        assert_eq!(pi_error(&c.result).field, PiField::RefTag);

        let m = fresh(&r);
        let pi = Protection::NONE.verified(PiCheck::ALL);
        let c = r.read((nsid, lba, BLOCKS), (r.buf(), m), pi);
        let e = pi_error(&c.result);
        assert_eq!(
            (e.field, e.by, e.lba),
            (PiField::Guard, PiChecker::Driver, Some(lba + 3))
        );
        assert!(
            c.buf.is_some() && c.meta.is_some() == separate,
            "buffers back"
        );
        let m = fresh(&r);
        let pi = Protection::NONE.verified(PiCheck::REF_TAG);
        let c = r.read((nsid, lba, BLOCKS), (r.buf(), m), pi);
        let e = pi_error(&c.result);
        assert_eq!(
            (e.field, e.by, e.lba, e.mismatch),
            (
                PiField::RefTag,
                PiChecker::Driver,
                Some(lba + 6),
                Some(((lba + 6) as u32, 0))
            )
        );
        // The untouched blocks around them are fine.
        let m = fresh(&r);
        let pi = Protection::by_host(PiCheck::ALL).verified(PiCheck::ALL);
        assert!(r.read((nsid, lba, 3), (r.buf(), m), pi).result.is_ok());
    }
}

/// Blocks never written carry an application tag of FFFFh: checks skip
/// them, at the controller and in the driver.
#[test]
fn unwritten_blocks_escape_checks() {
    let mut r = rig();
    let pi = Protection::by_host(PiCheck::ALL).verified(PiCheck::ALL);
    assert!(r
        .read((EXT, 4000, BLOCKS), (r.buf(), None), pi)
        .result
        .is_ok());
    let m = Some(r.buf());
    assert!(r.read((SEP, 4000, BLOCKS), (r.buf(), m), pi).result.is_ok());
}

/// The plain read/write path: an extended namespace moves data and
/// metadata per block (520 bytes), a separate one is refused (its metadata
/// would go to address 0).
#[test]
fn plain_path_on_metadata_namespaces() {
    let mut r = rig();
    let mut data = r.buf();
    put_pattern(&mut data, 10, BLOCKS, 520, 5);
    r.qp.write(PLAIN_MD, 10, BLOCKS, data, 1).unwrap();
    assert!(r.wait().result.is_ok());
    r.qp.read(PLAIN_MD, 10, BLOCKS, r.buf(), 2).unwrap();
    let c = r.wait();
    assert!(c.result.is_ok());
    assert_pattern(c.buf.as_ref().unwrap(), 10, BLOCKS, 520, 5);
    // A buffer sized for the data alone is too small.
    let small = r.pool.alloc().unwrap();
    let blocks = (small.len() / 512) as u32;
    let e = r.qp.read(PLAIN_MD, 0, blocks, small, 3).unwrap_err();
    assert!(matches!(
        e.error,
        NvmeError::BufferTooSmall { need, .. } if need == blocks as usize * 520
    ));
    assert!(e.buf.is_some());
    let e = r.qp.read(SEP, 0, 1, r.buf(), 4).unwrap_err();
    assert!(
        matches!(e.error, NvmeError::InvalidArgument(_)),
        "{}",
        e.error
    );
    assert!(e.buf.is_some());
    let e = r.qp.write(SEP, 0, 1, r.buf(), 4).unwrap_err();
    assert!(matches!(e.error, NvmeError::InvalidArgument(_)));
    assert!(matches!(
        r.qp.read(9, 0, 1, r.buf(), 4).unwrap_err().error,
        NvmeError::InvalidNamespace(9)
    ));
    assert_eq!(r.qp.outstanding(), 0);
}

/// Impossible requests are refused before the device sees them, with both
/// buffers back, and the queue pair goes on.
#[test]
fn refusals_hand_both_buffers_back() {
    let mut r = rig();
    let check = |rej: RejectedMeta, meta: bool| -> NvmeError {
        assert!(rej.buf.is_some(), "data buffer back");
        assert_eq!(rej.meta.is_some(), meta, "metadata buffer back");
        rej.error
    };
    let none = Protection::NONE;
    let all = Protection::by_host(PiCheck::ALL);
    // Separate layout without a metadata buffer.
    let e =
        r.qp.read_with_meta(SEP, 0, 1, r.buf(), None, all, 0)
            .unwrap_err();
    assert!(matches!(check(e, false), NvmeError::InvalidArgument(_)));
    // A metadata buffer for an extended namespace.
    let e =
        r.qp.read_with_meta(EXT, 0, 1, r.buf(), Some(r.buf()), all, 0)
            .unwrap_err();
    assert!(matches!(check(e, true), NvmeError::InvalidArgument(_)));
    // PRACT with 8 bytes moves no metadata: a buffer for it is a mistake.
    let ctl = Protection::by_controller(PiCheck::ALL);
    let e =
        r.qp.write_with_meta(SEP, 0, 1, r.buf(), Some(r.buf()), ctl, 0)
            .unwrap_err();
    assert!(matches!(check(e, true), NvmeError::InvalidArgument(_)));
    // PI flags on namespaces without PI.
    for nsid in [1, PLAIN_MD] {
        let e =
            r.qp.read_with_meta(nsid, 0, 1, r.buf(), None, all, 0)
                .unwrap_err();
        assert!(
            matches!(check(e, false), NvmeError::InvalidArgument(_)),
            "ns {nsid}"
        );
    }
    // Driver verification of a write, or of PI that PRACT strips.
    let v = none.verified(PiCheck::GUARD);
    let e =
        r.qp.write_with_meta(EXT, 0, 1, r.buf(), None, v, 0)
            .unwrap_err();
    assert!(matches!(check(e, false), NvmeError::InvalidArgument(_)));
    let v = ctl.verified(PiCheck::GUARD);
    let e =
        r.qp.read_with_meta(EXT, 0, 1, r.buf(), None, v, 0)
            .unwrap_err();
    assert!(matches!(check(e, false), NvmeError::InvalidArgument(_)));
    // Buffers too small: data (520 per block), then metadata.
    let blocks = (r.pool.buf_size() / 512) as u32;
    let e =
        r.qp.read_with_meta(EXT, 0, blocks, r.buf(), None, none, 0)
            .unwrap_err();
    assert!(matches!(check(e, false), NvmeError::BufferTooSmall { .. }));
    let small = BufferPool::new_unmapped(64, 1, PageSize::Small).unwrap();
    let e =
        r.qp.read_with_meta(SEP, 0, 9, r.buf(), Some(small.alloc().unwrap()), none, 0)
            .unwrap_err();
    assert!(matches!(
        check(e, true),
        NvmeError::BufferTooSmall { need: 72, have: 64 }
    ));
    // Out of range, zero blocks, more than one command carries.
    let e =
        r.qp.read_with_meta(EXT, 4095, 2, r.buf(), None, none, 0)
            .unwrap_err();
    assert!(matches!(check(e, false), NvmeError::LbaOutOfRange { .. }));
    let e =
        r.qp.read_with_meta(EXT, 0, 0, r.buf(), None, none, 0)
            .unwrap_err();
    assert!(matches!(check(e, false), NvmeError::InvalidArgument(_)));
    let big = BufferPool::new_unmapped(1 << 20, 1, PageSize::Small).unwrap();
    let e =
        r.qp.read_with_meta(EXT, 0, 1024, big.alloc().unwrap(), None, none, 0)
            .unwrap_err();
    assert!(matches!(check(e, false), NvmeError::TooLarge { .. }));
    assert_eq!(r.qp.outstanding(), 0);
    // Still working.
    let c = r.write(
        (EXT, 0, 1),
        (r.buf(), None),
        Protection::by_controller(PiCheck::ALL),
    );
    assert!(c.result.is_ok());
}

/// A full queue of metadata commands: every one completes once with its
/// own buffers.
#[test]
fn a_full_queue_of_metadata_commands() {
    let mut r = rig();
    let n = r.qp.capacity();
    let pool = BufferPool::new_unmapped(4096, 2 * n as u32 + 2, PageSize::Small).unwrap();
    let pi = Protection::by_controller(PiCheck::ALL);
    for i in 0..n {
        let mut d = pool.alloc().unwrap();
        put_pattern(&mut d, i as u64 * 4, 4, 512, 6);
        let m = pool.alloc().unwrap();
        // 16-byte metadata: moved even with PRACT.
        r.qp.write_with_meta(SEP16, i as u64 * 4, 4, d, Some(m), pi, i as u64)
            .map_err(|e| e.error)
            .unwrap();
    }
    let e =
        r.qp.write_with_meta(
            SEP16,
            0,
            1,
            pool.alloc().unwrap(),
            Some(pool.alloc().unwrap()),
            pi,
            99,
        )
        .unwrap_err();
    assert!(matches!(e.error, NvmeError::QueueFull) && e.buf.is_some() && e.meta.is_some());
    let mut seen = vec![false; n];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut done = 0;
    while done < n {
        assert!(Instant::now() < deadline);
        done += r.qp.poll(64, |c| {
            assert!(c.result.is_ok(), "{:?}", c.result);
            assert!(c.buf.is_some());
            assert!(!std::mem::replace(&mut seen[c.tag as usize], true));
        });
    }
    // Each metadata buffer once, by its tag; then none.
    for tag in 0..n as u64 {
        assert!(r.qp.take_meta(tag).is_some(), "metadata of {tag}");
        assert!(r.qp.take_meta(tag).is_none());
    }
    // Never taken back: the queue pair keeps `capacity` of them, the
    // oldest go back to their pool.
    for tag in 100..100 + n as u64 + 2 {
        let m = Some(pool.alloc().unwrap());
        let sub = r.qp.write_with_meta(SEP16, 4000, 1, r.buf(), m, pi, tag);
        sub.map_err(|e| e.error).unwrap();
        while r.qp.poll(1, |c| assert!(c.result.is_ok())) == 0 {
            assert!(Instant::now() < deadline);
        }
    }
    assert!(r.qp.take_meta(100).is_none() && r.qp.take_meta(101).is_none());
    assert!((102..102 + n as u64).all(|t| r.qp.take_meta(t).is_some()));
    for i in 0..n {
        let pi = Protection::by_controller(PiCheck::ALL).verified(PiCheck::ALL);
        let c = r.read((SEP16, i as u64 * 4, 4), (r.buf(), Some(r.buf())), pi);
        assert!(c.result.is_ok(), "{:?}", c.result);
        assert_pattern(c.buf.as_ref().unwrap(), i as u64 * 4, 4, 512, 6);
    }
}

/// With the tuple last in 16 bytes of metadata, the guard covers the data
/// and the 8 metadata bytes before the tuple: changing one of those bytes
/// after the PI was built fails the guard check, at the controller and in
/// the driver.
#[test]
fn guard_covers_metadata_before_a_trailing_tuple() {
    let mut r = rig();
    let ns = r.ns(EXT16);
    let (mut data, _) = filled(&r, &ns, 50, 50, 8);
    data.write(2 * 528 + 512 + 3, &[0x77]).unwrap();
    let all = Protection::by_host(PiCheck::ALL);
    let c = r.write((EXT16, 50, BLOCKS), (data, None), all);
    assert_eq!(pi_error(&c.result).field, PiField::Guard);
    // Stored unchecked, then read: the driver finds block 2.
    let (mut data, _) = filled(&r, &ns, 50, 50, 8);
    data.write(2 * 528 + 512 + 3, &[0x77]).unwrap();
    let c = r.write((EXT16, 50, BLOCKS), (data, None), Protection::NONE);
    assert!(c.result.is_ok());
    let pi = Protection::NONE.verified(PiCheck::GUARD);
    let c = r.read((EXT16, 50, BLOCKS), (r.buf(), None), pi);
    let e = pi_error(&c.result);
    assert_eq!(
        (e.field, e.by, e.lba),
        (PiField::Guard, PiChecker::Driver, Some(52))
    );
    // Untouched, the same blocks pass everywhere.
    let c = r.write((EXT16, 60, BLOCKS), filled(&r, &ns, 60, 60, 8), all);
    assert!(c.result.is_ok(), "{:?}", c.result);
    let c = r.read(
        (EXT16, 60, BLOCKS),
        (r.buf(), None),
        all.verified(PiCheck::ALL),
    );
    assert!(c.result.is_ok(), "{:?}", c.result);
}

/// A reset while metadata commands are in flight: each ends once with
/// `Reset`, its metadata buffer back through `take_meta`, and no driver
/// check runs on data that never arrived.
#[test]
fn a_reset_hands_metadata_buffers_back() {
    let mut r = rig();
    r.sim.hold_completions(true);
    let pi = Protection::by_controller(PiCheck::ALL).verified(PiCheck::ALL);
    for tag in 0..3u64 {
        let m = Some(r.buf());
        r.qp.read_with_meta(SEP16, tag * 8, 8, r.buf(), m, pi, tag)
            .map_err(|e| e.error)
            .unwrap();
    }
    r.qp.submit();
    r.ctrl.reset().unwrap();
    r.sim.hold_completions(false);
    let mut ended = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ended.len() < 3 {
        assert!(Instant::now() < deadline);
        r.qp.poll(8, |c| {
            assert!(matches!(c.result, Err(NvmeError::Reset)), "{:?}", c.result);
            assert!(c.buf.is_some());
            ended.push(c.tag);
        });
    }
    ended.sort();
    assert_eq!(ended, [0, 1, 2]);
    assert!((0..3).all(|t| r.qp.take_meta(t).is_some()));
    assert_eq!(r.qp.outstanding(), 0);
    // The queue pair goes on.
    let c = r.write(
        (EXT, 0, 1),
        (r.buf(), None),
        Protection::by_controller(PiCheck::ALL),
    );
    assert!(c.result.is_ok(), "{:?}", c.result);
}
