//! Metadata and end-to-end protection against QEMU's controller through
//! real VFIO. vm/run.sh gives the controller two detached namespaces with 8
//! bytes of metadata per 512-byte block and protection information type 1:
//! NSID 2 with extended LBAs, NSID 3 with a separate metadata buffer. Each
//! test attaches them (Namespace Attachment), reopens the controller, and
//! detaches them when done (also on failure), so the other suites keep
//! seeing namespace 1 alone. Covered: PRACT insert/strip with the
//! controller checking, PI built by the driver and checked by the
//! controller and the driver, QEMU's generated tuples equal to the
//! driver's, a corrupted guard and a corrupted reference tag as typed
//! errors from either checker, every read's data verified, and refusals of
//! foreign metadata buffers. Built with `--features guest`, run by
//! tests/guest/run-all.sh.

use std::time::{Duration, Instant};

use fastlane::framework::{BufferPool, DmaBuf, PageSize, UncheckedDma, Vfio};
use fastlane::nvme::protection::{self, guard};
use fastlane::nvme::spec::{sct, SubmissionEntry};
use fastlane::nvme::{
    Completion, Controller, IoQueuePair, MetadataLayout, Namespace, NvmeError, Options, PiCheck,
    PiChecker, PiError, PiField, PiType, Protection, RejectedMeta,
};

const EXT: u32 = 2;
const SEP: u32 = 3;
const BLOCKS: u32 = 8;
// The 1 MiB images hold 2016 blocks of 520 bytes: the LBAs used stay below.

fn open(vfio: &Vfio) -> Controller {
    let bdf = std::env::var("FASTLANE_NVME").expect("FASTLANE_NVME not set: run in the guest");
    Controller::open(vfio, &bdf, Options::default()).expect("open the NVMe controller")
}

/// Attaches (or detaches) namespaces 2 and 3 to this controller; "already
/// attached" / "not attached" (SCT 1h, SC 18h / 1Ah) count as done.
fn attachment(ctrl: &Controller, pool: &BufferPool, detach: bool) {
    let cntlid = ctrl.info().raw.cntlid;
    let mut list = pool.alloc().unwrap();
    list.fill(0);
    // Controller List: a count, then controller ids (little-endian u16s).
    list.write(0, &[1, 0]).unwrap();
    list.write(2, &cntlid.to_le_bytes()).unwrap();
    for nsid in [EXT, SEP] {
        let mut cmd = SubmissionEntry::namespace_attachment(nsid, detach);
        cmd.prp1 = list.iova().get();
        // SAFETY: PRP1 is the IOVA of `list`, a 4 KiB buffer of this
        // container (4 KiB aligned in its hugepage) that nothing else uses
        // until the command completes; the device only reads it.
        let promise = unsafe { UncheckedDma::promise() };
        match ctrl.admin_command_raw(cmd, &promise) {
            Ok(_) => {}
            Err(NvmeError::Status(s))
                if s.sct == sct::COMMAND_SPECIFIC && (s.sc == 0x18 || s.sc == 0x1A) => {}
            Err(e) => panic!("namespace {nsid} attachment (detach {detach}): {e}"),
        }
    }
}

/// The controller with namespaces 2 and 3 attached; detaches them on drop.
struct Attached {
    ctrl: Controller,
    pool: BufferPool,
    _vfio: Vfio,
}

impl Attached {
    fn new() -> Attached {
        let vfio = Vfio::new().unwrap();
        let pool = BufferPool::new(&vfio, 16 << 10, 32, PageSize::Huge2M).unwrap();
        let ctrl = open(&vfio);
        attachment(&ctrl, &pool, false);
        // The namespace list is read at open.
        drop(ctrl);
        let ctrl = open(&vfio);
        Attached {
            ctrl,
            pool,
            _vfio: vfio,
        }
    }

    fn ns(&self, id: u32) -> Namespace {
        self.ctrl.namespace(id).unwrap()
    }

    fn buf(&self) -> DmaBuf {
        let mut b = self.pool.alloc().unwrap();
        b.fill(0xEE);
        b
    }

    /// Fresh buffers for a transfer of `ns` without PRACT.
    fn bufs(&self, ns: &Namespace) -> Bufs {
        let meta = (ns.metadata.layout == MetadataLayout::Separate).then(|| self.buf());
        (self.buf(), meta)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        attachment(&self.ctrl, &self.pool, true);
    }
}

/// Data buffer, separate metadata buffer.
type Bufs = (DmaBuf, Option<DmaBuf>);

/// A completion and its metadata buffer.
struct Done {
    buf: Option<DmaBuf>,
    meta: Option<DmaBuf>,
    result: Result<(), NvmeError>,
}

/// Polls until the one command outstanding completes; takes its metadata
/// buffer back.
fn wait(qp: &mut IoQueuePair, submitted: Result<(), RejectedMeta>) -> Done {
    submitted.map_err(|r| r.error).expect("submitted");
    qp.submit();
    let start = Instant::now();
    let mut got = None;
    while got.is_none() {
        qp.poll(1, |c| got = Some(c));
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "I/O never completed"
        );
    }
    assert_eq!(qp.outstanding(), 0);
    let c: Completion = got.unwrap();
    Done {
        meta: qp.take_meta(c.tag),
        buf: c.buf,
        result: c.result,
    }
}

fn write(qp: &mut IoQueuePair, nsid: u32, lba: u64, (d, m): Bufs, pi: Protection) -> Done {
    let r = qp.write_with_meta(nsid, lba, BLOCKS, d, m, pi, lba);
    wait(qp, r)
}

fn read(qp: &mut IoQueuePair, nsid: u32, lba: u64, (d, m): Bufs, pi: Protection) -> Done {
    let r = qp.read_with_meta(nsid, lba, BLOCKS, d, m, pi, lba);
    wait(qp, r)
}

/// 512 bytes of block `lba` for `seed`.
fn block(lba: u64, seed: u8) -> Vec<u8> {
    (0..512u64)
        .map(|j| (lba.wrapping_mul(31) ^ j.wrapping_mul(7) ^ seed as u64) as u8)
        .collect()
}

fn put(buf: &mut DmaBuf, lba: u64, stride: usize, seed: u8) {
    for i in 0..BLOCKS as usize {
        buf.write(i * stride, &block(lba + i as u64, seed)).unwrap();
    }
}

fn check(buf: &DmaBuf, lba: u64, stride: usize, seed: u8) {
    let mut got = vec![0u8; 512];
    for i in 0..BLOCKS as usize {
        buf.read(i * stride, &mut got).unwrap();
        assert!(
            got == block(lba + i as u64, seed),
            "block {} read back wrong",
            lba + i as u64
        );
    }
}

/// Buffers for `ns` holding the pattern at `lba` with PI built for `pi_lba`.
fn filled(a: &Attached, ns: &Namespace, lba: u64, pi_lba: u64, seed: u8) -> Bufs {
    let (mut data, mut meta) = a.bufs(ns);
    put(&mut data, lba, ns.metadata.data_stride(512, false), seed);
    protection::fill(ns, pi_lba, BLOCKS, &mut data, meta.as_mut(), 0x0F0F).unwrap();
    (data, meta)
}

fn pi_error(r: &Result<(), NvmeError>) -> PiError {
    let e = r.as_ref().expect_err("a protection error");
    *e.protection()
        .unwrap_or_else(|| panic!("not a protection error: {e}"))
}

/// Runs `f` on each metadata namespace (extended, then separate) with a
/// queue pair and an LBA range of its own from `base`.
fn each_layout(base: u64, mut f: impl FnMut(&Attached, &mut IoQueuePair, &Namespace, u64)) {
    let a = Attached::new();
    let mut qp = a.ctrl.create_qpair(8).unwrap();
    for nsid in [EXT, SEP] {
        f(&a, &mut qp, &a.ns(nsid), base + nsid as u64 * 100);
    }
}

#[test]
fn formats_appear_while_attached_and_go_when_detached() {
    {
        let a = Attached::new();
        let ids: Vec<u32> = a.ctrl.namespaces().iter().map(|n| n.id).collect();
        assert_eq!(ids, [1, EXT, SEP]);
        let one = a.ns(1);
        assert_eq!((one.block_size, one.metadata.size), (512, 0));
        for (id, layout) in [
            (EXT, MetadataLayout::Extended),
            (SEP, MetadataLayout::Separate),
        ] {
            let f = a.ns(id).metadata;
            assert_eq!(a.ns(id).block_size, 512);
            assert_eq!((f.size, f.layout, f.pi), (8, layout, Some(PiType::Type1)));
        }
    }
    let vfio = Vfio::new().unwrap();
    let ctrl = open(&vfio);
    let ids: Vec<u32> = ctrl.namespaces().iter().map(|n| n.id).collect();
    assert_eq!(ids, [1], "detached again for the other suites");
}

/// PRACT: QEMU generates the PI on write and strips it on read, checking
/// all of it; read without PRACT its tuples are the driver's: the guard is
/// our CRC-16 T10-DIF of the data, the reference tag the LBA.
#[test]
fn pract_insert_strip_and_qemu_tuples_match_ours() {
    each_layout(10, |a, qp, ns, lba| {
        let nsid = ns.id;
        let mut data = a.buf();
        put(&mut data, lba, 512, 1);
        let pi = Protection::by_controller(PiCheck::ALL).with_app_tag(0x5a5a, 0xFFFF);
        let c = write(qp, nsid, lba, (data, None), pi);
        assert!(c.result.is_ok(), "ns {nsid} write: {:?}", c.result);
        let c = read(qp, nsid, lba, (a.buf(), None), pi);
        assert!(c.result.is_ok(), "ns {nsid} read: {:?}", c.result);
        check(c.buf.as_ref().unwrap(), lba, 512, 1);

        let pi = Protection::NONE
            .verified(PiCheck::ALL)
            .with_app_tag(0x5a5a, 0xFFFF);
        let c = read(qp, nsid, lba, a.bufs(ns), pi);
        assert!(c.result.is_ok(), "ns {nsid} driver check: {:?}", c.result);
        let (buf, meta) = (c.buf.unwrap(), c.meta);
        check(&buf, lba, ns.metadata.data_stride(512, false), 1);
        for i in 0..BLOCKS {
            let t = protection::tuple(ns, BLOCKS, i, &buf, meta.as_ref()).unwrap();
            let at = lba + i as u64;
            assert_eq!(
                (t.guard(), t.app_tag(), t.ref_tag()),
                (guard(&block(at, 1), &[]), 0x5a5a, at as u32),
                "ns {nsid} LBA {at}"
            );
        }
        // Another expected application tag fails QEMU's check.
        let wrong = Protection::by_controller(PiCheck::APP_TAG).with_app_tag(0x1234, 0xFFFF);
        let c = read(qp, nsid, lba, (a.buf(), None), wrong);
        let e = pi_error(&c.result);
        assert_eq!((e.field, e.by), (PiField::AppTag, PiChecker::Controller));
    });
}

/// PI built by the driver, checked by QEMU on write and on read and by the
/// driver once the data is in.
#[test]
fn driver_built_pi_checked_by_both() {
    each_layout(500, |a, qp, ns, lba| {
        let nsid = ns.id;
        let all = Protection::by_host(PiCheck::ALL).with_app_tag(0x0F0F, 0xFFFF);
        let c = write(qp, nsid, lba, filled(a, ns, lba, lba, 2), all);
        assert!(c.result.is_ok(), "ns {nsid} write: {:?}", c.result);
        let c = read(qp, nsid, lba, a.bufs(ns), all.verified(PiCheck::ALL));
        assert!(c.result.is_ok(), "ns {nsid} read: {:?}", c.result);
        check(
            c.buf.as_ref().unwrap(),
            lba,
            ns.metadata.data_stride(512, false),
            2,
        );
        // Stripped by QEMU after its check: data only.
        let strip = Protection::by_controller(PiCheck::ALL).with_app_tag(0x0F0F, 0xFFFF);
        let c = read(qp, nsid, lba, (a.buf(), None), strip);
        assert!(c.result.is_ok(), "ns {nsid} stripped read: {:?}", c.result);
        check(c.buf.as_ref().unwrap(), lba, 512, 2);
    });
}

/// A corrupted guard and a corrupted reference tag, each as a typed error:
/// from QEMU when it checks the write, from QEMU when it checks the read of
/// blocks stored unchecked, and from the driver's own check.
#[test]
fn corrupted_guard_and_ref_tag_are_typed_errors() {
    each_layout(1000, |a, qp, ns, lba| {
        let nsid = ns.id;
        let stride = ns.metadata.data_stride(512, false);
        let all = Protection::by_host(PiCheck::ALL).with_app_tag(0x0F0F, 0xFFFF);

        // Written with checks: refused by QEMU.
        let (mut data, meta) = filled(a, ns, lba, lba, 3);
        data.write(4 * stride + 9, &[!block(lba + 4, 3)[9]])
            .unwrap();
        let c = write(qp, nsid, lba, (data, meta), all);
        let e = pi_error(&c.result);
        assert_eq!(
            (e.field, e.by),
            (PiField::Guard, PiChecker::Controller),
            "ns {nsid}"
        );
        let c = write(qp, nsid, lba, filled(a, ns, lba, lba + 1, 3), all);
        let e = pi_error(&c.result);
        assert_eq!(
            (e.field, e.by),
            (PiField::RefTag, PiChecker::Controller),
            "ns {nsid}"
        );

        // Stored without checks: block 4's data changed, block 6's
        // reference tag that of LBA 0.
        let (mut data, mut meta) = filled(a, ns, lba, lba, 3);
        data.write(4 * stride + 9, &[!block(lba + 4, 3)[9]])
            .unwrap();
        let zero = 0u32.to_be_bytes();
        match meta.as_mut() {
            Some(m) => m.write(6 * 8 + 4, &zero).unwrap(),
            None => data.write(6 * stride + 512 + 4, &zero).unwrap(),
        }
        let c = write(qp, nsid, lba, (data, meta), Protection::NONE);
        assert!(
            c.result.is_ok(),
            "ns {nsid} unchecked write: {:?}",
            c.result
        );

        for (check, field) in [
            (PiCheck::GUARD, PiField::Guard),
            (PiCheck::REF_TAG, PiField::RefTag),
        ] {
            let c = read(qp, nsid, lba, a.bufs(ns), Protection::by_host(check));
            let e = pi_error(&c.result);
            assert_eq!((e.field, e.by), (field, PiChecker::Controller), "ns {nsid}");
        }

        let c = read(
            qp,
            nsid,
            lba,
            a.bufs(ns),
            Protection::NONE.verified(PiCheck::ALL),
        );
        let e = pi_error(&c.result);
        assert_eq!(
            (e.field, e.by, e.lba),
            (PiField::Guard, PiChecker::Driver, Some(lba + 4))
        );
        assert!(
            c.buf.is_some() && c.meta.is_some() == (nsid == SEP),
            "buffers back"
        );
        let v = Protection::NONE.verified(PiCheck::REF_TAG);
        let c = read(qp, nsid, lba, a.bufs(ns), v);
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
        // The data itself came back as stored.
        let c = read(qp, nsid, lba, a.bufs(ns), Protection::NONE);
        assert!(c.result.is_ok());
        let buf = c.buf.unwrap();
        let mut b = vec![0u8; 512];
        buf.read(0, &mut b).unwrap();
        assert!(b == block(lba, 3));
    });
}

/// Buffers of another container (or none) are refused, the metadata
/// buffer as much as the data buffer, both handed back; a separate-layout
/// namespace is refused to the plain path (its metadata would go to
/// address 0); the extended one moves 520 bytes a block there.
#[test]
fn foreign_metadata_buffers_and_the_plain_path() {
    let a = Attached::new();
    let mut qp = a.ctrl.create_qpair(8).unwrap();
    let stranger = BufferPool::new_unmapped(4096, 2, PageSize::Small).unwrap();
    let none = Protection::NONE;
    let refusals = [
        qp.read_with_meta(SEP, 0, 1, a.buf(), Some(stranger.alloc().unwrap()), none, 0),
        qp.write_with_meta(SEP, 0, 1, stranger.alloc().unwrap(), Some(a.buf()), none, 0),
    ];
    for r in refusals {
        let rej = r.unwrap_err();
        assert!(
            matches!(rej.error, NvmeError::ForeignBuffer),
            "{}",
            rej.error
        );
        assert!(rej.buf.is_some() && rej.meta.is_some(), "both buffers back");
    }
    assert_eq!(qp.outstanding(), 0);

    let rej = qp.read(SEP, 0, 1, a.buf(), 0).unwrap_err();
    assert!(
        matches!(rej.error, NvmeError::InvalidArgument(_)),
        "{}",
        rej.error
    );
    let mut data = a.buf();
    put(&mut data, 1800, 520, 4);
    qp.write(EXT, 1800, BLOCKS, data, 1).unwrap();
    let c = wait(&mut qp, Ok(()));
    assert!(c.result.is_ok(), "{:?}", c.result);
    qp.read(EXT, 1800, BLOCKS, a.buf(), 2).unwrap();
    let c = wait(&mut qp, Ok(()));
    assert!(c.result.is_ok(), "{:?}", c.result);
    check(c.buf.as_ref().unwrap(), 1800, 520, 4);
}
