//! Property tests of the NVMe driver's pure logic: PRP entries and lists
//! (base spec 4.1.1) checked by walking them as a controller would, and the
//! submission/completion rings and command-id table (base spec 3.3.1, 4.6)
//! driven by random command sequences against a small reference model. The
//! fuzz bodies of `fuzz/src/nvme.rs` also run here on random bytes, so the
//! parsers of device-written data are exercised without a fuzzer.

use std::collections::{HashMap, HashSet, VecDeque};

use fastlane_nvme::prp::{build, max_transfer, PrpError, PrpList, Prps};
use fastlane_nvme::queue::{CidTable, CqRing, QueueError, SqRing, UnknownCid};
use fastlane_nvme::spec::CompletionEntry;
use proptest::prelude::*;

#[path = "../../../fuzz/src/nvme.rs"]
mod fuzz_bodies;

// ---------------------------------------------------------------- PRP ----

/// Where the PRP list page sits and how many entries the caller gave it.
#[derive(Clone, Debug)]
struct ListSpec {
    /// Page-aligned list page, plus a qword offset into it (or, rarely, a
    /// misaligned one).
    iova: u64,
    entries: usize,
}

/// Marks list entries the builder must not have written.
const UNTOUCHED: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// What a controller transfers for `len` bytes described by `prps`: the
/// `(address, length)` pieces, read from PRP1, then PRP2 either as the
/// second page or as a pointer to the list in `list` (at `list_iova`).
fn device_walk(prps: Prps, len: usize, ps: u64, list_iova: u64, list: &[u64]) -> Vec<(u64, u64)> {
    let mut pieces = Vec::new();
    let first = (ps - prps.prp1 % ps).min(len as u64);
    pieces.push((prps.prp1, first));
    let mut left = len as u64 - first;
    if left == 0 {
        assert_eq!(prps.prp2, 0, "PRP2 must be 0 when PRP1 covers the transfer");
        return pieces;
    }
    let pages: Vec<u64> = if left <= ps {
        vec![prps.prp2]
    } else {
        assert_eq!(prps.prp2, list_iova, "PRP2 must point at the list");
        assert_eq!(prps.prp2 % 8, 0, "a list pointer is qword aligned");
        let n = left.div_ceil(ps) as usize;
        assert_eq!(prps.list_len, n, "list_len is the entries the device reads");
        list[..n].to_vec()
    };
    for page in pages {
        assert_eq!(page % ps, 0, "entries after PRP1 have no offset");
        let piece = left.min(ps);
        pieces.push((page, piece));
        left -= piece;
    }
    assert_eq!(left, 0);
    pieces
}

/// Builds with `spec`'s list and checks the result against the spec: either
/// the entries cover exactly `[iova, iova + len)`, or the error is one the
/// inputs call for.
fn check_build(iova: u64, len: usize, ps: usize, spec: &ListSpec) {
    let mut list = vec![UNTOUCHED; spec.entries];
    let result = build(
        iova,
        len,
        ps,
        PrpList {
            iova: spec.iova,
            entries: &mut list,
        },
    );
    let ps64 = ps as u64;
    let offset = iova % ps64;
    // Pages after the first one, in u128 so no input overflows the model.
    let first = u128::from(ps64 - offset);
    let after = (len as u128)
        .saturating_sub(first)
        .div_ceil(u128::from(ps64));
    let in_page = (ps64 - spec.iova % ps64) as usize / 8;
    let capacity = spec.entries.min(in_page) as u128;
    let needs_list = after > 1;

    let zero = len == 0;
    let misaligned = iova & 3 != 0; // not dword aligned
    let overflow = len > 0 && u128::from(iova) + len as u128 - 1 > u128::from(u64::MAX);
    let too_large = needs_list && after > capacity;
    let list_misaligned = needs_list && spec.iova & 7 != 0; // not qword aligned

    match result {
        Ok(prps) => {
            assert!(!(zero || misaligned || overflow || too_large || list_misaligned));
            assert_eq!(prps.prp1, iova, "PRP1 is the first byte, offset included");
            let pieces = device_walk(prps, len, ps64, spec.iova, &list);
            let mut next = iova;
            let mut pages = HashSet::new();
            for &(addr, n) in &pieces {
                assert_eq!(addr, next, "pieces are contiguous: {pieces:x?}");
                assert!(pages.insert(addr / ps64), "page {addr:#x} twice");
                next += n;
            }
            assert_eq!(next - iova, len as u64, "pieces cover the whole buffer");
            assert!(list[prps.list_len..].iter().all(|&e| e == UNTOUCHED));
            if !needs_list {
                assert_eq!(prps.list_len, 0);
                assert!(
                    list.iter().all(|&e| e == UNTOUCHED),
                    "no list for <= 2 pages"
                );
            }
        }
        Err(PrpError::ZeroLength) => assert!(zero),
        Err(PrpError::Misaligned { iova: i }) => assert!(misaligned && i == iova),
        Err(PrpError::AddressOverflow { iova: i, len: l }) => {
            assert!(overflow && (i, l) == (iova, len))
        }
        Err(PrpError::ListMisaligned { iova: i }) => assert!(list_misaligned && i == spec.iova),
        Err(PrpError::TooLarge { len: l, max }) => {
            assert!(too_large && l == len);
            // `max` is the limit at this offset: it builds, one more does not.
            assert_eq!(max, max_transfer(ps, offset as usize, capacity as usize));
            if !overflow
                && !misaligned
                && !list_misaligned
                && u128::from(iova) + (max as u128) <= u128::from(u64::MAX)
            {
                let mut l2 = vec![0; spec.entries];
                let ok = build(
                    iova,
                    max,
                    ps,
                    PrpList {
                        iova: spec.iova,
                        entries: &mut l2,
                    },
                );
                assert!(ok.is_ok(), "max {max} itself fails: {ok:?}");
                assert!(max < len);
            }
        }
        Err(e @ PrpError::InvalidPageSize { .. }) => panic!("valid page size refused: {e}"),
    }
}

fn page_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(4096usize), Just(8192), Just(16384)]
}

/// A list page somewhere, usually qword aligned, sometimes offset into its
/// page, with a full or a short entry slice.
fn list_spec(ps: usize) -> impl Strategy<Value = ListSpec> {
    let full = ps / 8;
    (
        0u64..1 << 20,
        prop_oneof![
            6 => Just(0u64),
            2 => (0..full as u64).prop_map(|q| q * 8),
            1 => 0..ps as u64,
        ],
        prop_oneof![3 => Just(full), 1 => 0..=full + 8],
    )
        .prop_map(move |(page, off, entries)| ListSpec {
            iova: 0x4000_0000 + page * ps as u64 + off,
            entries,
        })
}

/// A data IOVA: page aligned, dword aligned, or (rarely) anything.
fn data_iova(ps: usize) -> impl Strategy<Value = u64> {
    let ps = ps as u64;
    prop_oneof![
        4 => (0u64..1 << 30).prop_map(move |p| p * ps),
        4 => (0u64..1 << 40).prop_map(|a| a & !3),
        1 => any::<u64>(),
        1 => (0u64..1 << 20).prop_map(|d| u64::MAX - d),
    ]
}

/// Lengths up to a little past the one-list-page maximum.
fn data_len(ps: usize) -> impl Strategy<Value = usize> {
    let max = max_transfer(ps, 0, ps / 8);
    prop_oneof![
        3 => 1..=2 * ps + 1,
        3 => 1..=max + ps,
        1 => max - 8..=max + 8,
        1 => Just(0usize),
    ]
}

proptest! {
    #[test]
    fn prp_entries_cover_exactly_the_buffer(
        (ps, iova, len, spec) in page_size().prop_flat_map(|ps| {
            (Just(ps), data_iova(ps), data_len(ps), list_spec(ps))
        })
    ) {
        check_build(iova, len, ps, &spec);
    }

    /// Page-aligned buffers with a full list page: every length up to the
    /// documented maximum builds, the next one does not.
    #[test]
    fn prp_page_aligned_lengths_up_to_max(ps in page_size(), page in 1u64..1 << 28, len in 1usize..=1 << 22) {
        let full = ListSpec { iova: 0x8000_0000, entries: ps / 8 };
        check_build(page * ps as u64, len, ps, &full);
        let max = max_transfer(ps, 0, ps / 8);
        let mut list = vec![0; ps / 8];
        let res = build(page * ps as u64, len, ps, PrpList { iova: full.iova, entries: &mut list });
        prop_assert_eq!(res.is_ok(), len <= max);
    }

    /// Anything at all: an error or a valid description, never a panic.
    #[test]
    fn prp_build_never_panics(
        iova in any::<u64>(),
        len in any::<usize>(),
        ps in prop_oneof![any::<usize>(), (12u32..=27).prop_map(|s| 1usize << s)],
        list_iova in any::<u64>(),
        entries in 0usize..600,
    ) {
        let mut list = vec![0; entries];
        let res = build(iova, len, ps, PrpList { iova: list_iova, entries: &mut list });
        let valid_ps = ps.is_power_of_two() && (4096..=1 << 27).contains(&ps);
        if !valid_ps {
            prop_assert_eq!(res, Err(PrpError::InvalidPageSize { page_size: ps }));
        } else if ps <= 1 << 16 {
            check_build(iova, len, ps, &ListSpec { iova: list_iova, entries });
        }
    }
}

// -------------------------------------------------------------- rings ----

/// One step of a host and controller sharing an SQ, a CQ and a CID table.
#[derive(Clone, Debug)]
enum Step {
    /// The host submits a command (if the SQ and CID table have room).
    Submit,
    /// The controller fetches up to `n` commands from the SQ.
    Fetch(u8),
    /// The controller posts a completion for the `k`-th fetched command,
    /// reporting its current SQ head.
    Complete(u8),
    /// The host polls the CQ for at most `n` entries.
    Poll(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Submit),
        2 => (1u8..8).prop_map(Step::Fetch),
        3 => any::<u8>().prop_map(Step::Complete),
        2 => (1u8..16).prop_map(Step::Poll),
    ]
}

/// The controller: SQ head it has fetched up to, commands fetched and not
/// completed, CQ tail and phase, and the CQ memory it writes.
struct Device {
    sq_head: u16,
    fetched: Vec<u16>,
    cq_tail: u16,
    cq_phase: bool,
    cq_mem: Vec<CompletionEntry>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The driver's rings against a controller that follows the spec: every
    /// command completes exactly once with the token it was issued with,
    /// the host sees exactly the entries the device posted, in order, and
    /// full/empty/len agree with a count kept by the model.
    #[test]
    fn rings_follow_a_spec_conforming_controller(
        sq_size in 2u16..12,
        cq_size in 2u16..12,
        steps in prop::collection::vec(step(), 1..300),
    ) {
        let mut sq = SqRing::new(sq_size).unwrap();
        let mut cq = CqRing::new(cq_size).unwrap();
        let mut cids: CidTable<u64> = CidTable::new(sq_size - 1);
        let mut dev = Device {
            sq_head: 0,
            fetched: Vec::new(),
            cq_tail: 0,
            cq_phase: true,
            cq_mem: vec![CompletionEntry::default(); cq_size as usize],
        };
        // Model: SQ slots in submission order, and what the host expects.
        let mut sq_model: VecDeque<(u16, u16)> = VecDeque::new(); // (slot, cid)
        let mut sq_mem = vec![u16::MAX; sq_size as usize]; // slot -> cid
        let mut tokens: HashMap<u16, u64> = HashMap::new();
        let mut posted: VecDeque<(u16, u16)> = VecDeque::new(); // (cid, sq_head)
        let mut next_token = 0u64;
        let mut cq_consumed = 0u64;

        for s in steps {
            match s {
                Step::Submit => {
                    // Commands stay in flight after the controller fetched
                    // them, so the CID table can be full with SQ slots free.
                    if tokens.len() == cids.capacity() {
                        prop_assert!(cids.is_full());
                        prop_assert_eq!(cids.alloc(next_token), None);
                        continue;
                    }
                    let in_ring = sq_model.len() as u16;
                    let slot = sq.push_slot();
                    prop_assert_eq!(slot.is_none(), in_ring == sq_size - 1);
                    let Some(slot) = slot else { continue };
                    let cid = cids.alloc(next_token).expect("CIDs left");
                    prop_assert!(tokens.insert(cid, next_token).is_none(), "cid {} issued twice", cid);
                    next_token += 1;
                    sq_mem[slot as usize] = cid;
                    sq_model.push_back((slot, cid));
                }
                Step::Fetch(n) => {
                    // The controller consumes from its head up to the tail doorbell.
                    for _ in 0..n {
                        if dev.sq_head == sq.tail() {
                            break;
                        }
                        dev.fetched.push(sq_mem[dev.sq_head as usize]);
                        dev.sq_head = (dev.sq_head + 1) % sq_size;
                    }
                }
                Step::Complete(k) => {
                    // Post only if the CQ has room: one slot stays empty.
                    let full = (dev.cq_tail + 1) % cq_size == cq.head();
                    if dev.fetched.is_empty() || full {
                        continue;
                    }
                    let cid = dev.fetched.swap_remove(k as usize % dev.fetched.len());
                    let status = u16::from(dev.cq_phase);
                    dev.cq_mem[dev.cq_tail as usize] = CompletionEntry {
                        sq_head: dev.sq_head,
                        cid,
                        status,
                        ..Default::default()
                    };
                    posted.push_back((cid, dev.sq_head));
                    dev.cq_tail += 1;
                    if dev.cq_tail == cq_size {
                        dev.cq_tail = 0;
                        dev.cq_phase = !dev.cq_phase;
                    }
                }
                Step::Poll(n) => {
                    for _ in 0..n {
                        let e = dev.cq_mem[cq.head() as usize];
                        if !cq.is_new_entry(&e) {
                            prop_assert!(posted.is_empty(), "missed a posted entry");
                            break;
                        }
                        let expect = posted.pop_front();
                        prop_assert_eq!(Some((e.cid, e.sq_head)), expect, "stale or reordered entry");
                        let before = sq.len();
                        sq.update_head(e.sq_head).unwrap();
                        // The head only moves forward, over fetched entries.
                        while sq_model.front().is_some_and(|&(slot, _)| slot != e.sq_head) {
                            sq_model.pop_front();
                        }
                        if sq_model.is_empty() {
                            prop_assert_eq!(e.sq_head, sq.tail());
                        }
                        prop_assert!(sq.len() <= before);
                        let token = cids.complete(e.cid).unwrap();
                        prop_assert_eq!(tokens.remove(&e.cid), Some(token));
                        prop_assert_eq!(cids.complete(e.cid), Err(UnknownCid { cid: e.cid }));
                        let phase_before = cq.phase();
                        let head = cq.advance();
                        cq_consumed += 1;
                        // The phase flips exactly when the head wraps to 0.
                        prop_assert_eq!(cq.phase() != phase_before, head == 0);
                        prop_assert_eq!(u64::from(head), cq_consumed % u64::from(cq_size));
                        prop_assert_eq!(cq.phase(), (cq_consumed / u64::from(cq_size)) & 1 == 0);
                    }
                }
            }
            prop_assert_eq!(sq.len() as usize, sq_model.len());
            prop_assert_eq!(sq.is_empty(), sq_model.is_empty());
            prop_assert_eq!(sq.is_full(), sq_model.len() == sq_size as usize - 1);
            prop_assert_eq!(sq.free_slots() as usize, sq_size as usize - 1 - sq_model.len());
            prop_assert_eq!(cids.in_flight(), tokens.len());
        }
    }

    /// `update_head` accepts exactly the heads between the last reported
    /// head and the tail, walking forward around the ring, and leaves the
    /// ring untouched otherwise.
    #[test]
    fn sq_update_head_accepts_exactly_the_reachable_heads(
        size in 2u16..40,
        ops in prop::collection::vec((0u8..40, any::<u16>(), any::<bool>()), 1..60),
    ) {
        let mut sq = SqRing::new(size).unwrap();
        let mut head = 0u16;
        let mut count = 0u16; // entries between head and tail
        for (pushes, raw, in_range) in ops {
            for _ in 0..pushes {
                let got = sq.push_slot();
                if count == size - 1 {
                    prop_assert_eq!(got, None);
                } else {
                    prop_assert_eq!(got, Some((head + count) % size));
                    count += 1;
                }
            }
            // The set of heads the controller could legally report.
            let reachable: Vec<u16> = (0..=count).map(|i| (head + i) % size).collect();
            let candidate = if in_range { raw % size } else { raw };
            let before = sq.clone();
            match sq.update_head(candidate) {
                Ok(()) => {
                    let i = reachable.iter().position(|&h| h == candidate);
                    prop_assert!(i.is_some(), "accepted {} outside {:?}", candidate, reachable);
                    head = candidate;
                    count -= i.unwrap() as u16;
                }
                Err(QueueError::InvalidSqHead { sq_head, head: h, tail, size: s }) => {
                    prop_assert!(!reachable.contains(&candidate), "refused {} in {:?}", candidate, reachable);
                    prop_assert_eq!((sq_head, h, tail, s), (candidate, head, (head + count) % size, size));
                    prop_assert_eq!(&sq, &before);
                }
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
            prop_assert_eq!((sq.head(), sq.len()), (head, count));
        }
    }

    /// The CID table never has one id out twice, resolves exactly the ids
    /// in flight, and refuses never-issued and already-completed ones.
    #[test]
    fn cid_table_matches_a_map(
        capacity in 0u16..20,
        ops in prop::collection::vec((0u8..4, any::<u16>()), 1..200),
    ) {
        let mut t: CidTable<u32> = CidTable::new(capacity);
        let mut model: HashMap<u16, u32> = HashMap::new();
        let mut ever: HashSet<u16> = HashSet::new();
        let mut n = 0u32;
        for (op, raw) in ops {
            match op {
                0 | 1 => {
                    n += 1;
                    match t.alloc(n) {
                        None => prop_assert_eq!(model.len(), capacity as usize),
                        Some(cid) => {
                            prop_assert!(cid < capacity && cid != u16::MAX);
                            prop_assert!(model.insert(cid, n).is_none(), "cid {} out twice", cid);
                            ever.insert(cid);
                        }
                    }
                }
                2 => {
                    // A cid in flight, one completed before, or anything.
                    let cid = match raw % 3 {
                        0 if !model.is_empty() => *model.keys().nth(raw as usize % model.len()).unwrap(),
                        1 if !ever.is_empty() => *ever.iter().nth(raw as usize % ever.len()).unwrap(),
                        _ => raw,
                    };
                    let got = t.complete(cid);
                    match model.remove(&cid) {
                        Some(token) => prop_assert_eq!(got, Ok(token)),
                        None => prop_assert_eq!(got, Err(UnknownCid { cid })),
                    }
                }
                _ => {
                    if raw % 8 == 0 {
                        let mut drained: Vec<(u16, u32)> = t.drain().collect();
                        drained.sort_unstable();
                        let mut expect: Vec<(u16, u32)> = model.drain().collect();
                        expect.sort_unstable();
                        prop_assert_eq!(drained, expect);
                    } else {
                        prop_assert_eq!(t.get(raw), model.get(&raw));
                    }
                }
            }
            prop_assert_eq!(t.in_flight(), model.len());
            prop_assert_eq!(t.is_empty(), model.is_empty());
            prop_assert_eq!(t.is_full(), model.len() == capacity as usize);
        }
    }

    /// The CQ phase over many laps: flips exactly once per lap, and a slot
    /// written in lap `l` is new exactly during lap `l`.
    #[test]
    fn cq_phase_flips_once_per_lap(size in 2u16..300, advances in 0u32..2000) {
        let mut cq = CqRing::new(size).unwrap();
        let mut flips = 0u32;
        for i in 1..=advances {
            let before = cq.phase();
            cq.advance();
            if cq.phase() != before {
                flips += 1;
                prop_assert_eq!(cq.head(), 0);
            }
            prop_assert_eq!(flips, i / u32::from(size));
        }
        let lap_phase = flips & 1 == 0; // even laps expect P = 1
        prop_assert_eq!(cq.phase(), lap_phase);
        prop_assert!(cq.is_new(u16::from(lap_phase)) && !cq.is_new(u16::from(!lap_phase)));
    }

    #[test]
    fn ring_sizes_below_two_are_refused(size in 0u16..2) {
        prop_assert_eq!(SqRing::new(size), Err(QueueError::InvalidSize { size }));
        prop_assert_eq!(CqRing::new(size), Err(QueueError::InvalidSize { size }));
    }
}

// --------------------------------------------- fuzz bodies, no fuzzer ----

/// 4 KiB-ish device buffers from a seed (per-byte strategies are slow in
/// debug builds): uniformly random bytes, space-padded printable text, or
/// mostly zeros with a few random bytes.
fn device_bytes(seed: u64, len: usize, mode: u8) -> Vec<u8> {
    let mut x = seed;
    let mut next = move || {
        // splitmix64
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..len)
        .map(|_| {
            let r = next();
            match mode {
                0 => r as u8,
                1 => match r % 4 {
                    0 => b' ',
                    1 if r % 32 == 1 => 0,
                    _ => 0x20 + (r >> 8) as u8 % 0x5F,
                },
                _ if r % 16 == 0 => (r >> 8) as u8,
                _ => 0,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn fuzz_completion_entry(data in prop::collection::vec(any::<u8>(), 0..40)) {
        fuzz_bodies::completion_entry(&data);
    }

    #[test]
    fn fuzz_identify_controller(seed in any::<u64>(), len in 4090usize..4110, mode in 0u8..3) {
        fuzz_bodies::identify_controller(&device_bytes(seed, len, mode));
    }

    #[test]
    fn fuzz_identify_namespace(
        seed in any::<u64>(),
        len in 4090usize..4110,
        mode in 0u8..3,
        nlbaf in any::<u8>(),
        flbas in any::<u8>(),
        lbads in 0u8..40,
    ) {
        // Random bytes rarely name a valid format; plant one half the time.
        let mut data = device_bytes(seed, len, mode);
        if len >= 4096 && lbads % 2 == 0 {
            data[25] = nlbaf % 64;
            data[26] = flbas;
            let idx = usize::from((flbas & 0xF) | ((flbas >> 5) & 0x3) << 4);
            data[128 + 4 * idx + 2] = lbads;
        }
        fuzz_bodies::identify_namespace(&data);
    }
}

#[test]
fn fuzz_bodies_take_edge_inputs() {
    for data in [
        &[][..],
        &[0u8; 16],
        &[0xFF; 64],
        &[0u8; 4096],
        &[0xFF; 4096],
    ] {
        fuzz_bodies::completion_entry(data);
        fuzz_bodies::identify_controller(data);
        fuzz_bodies::identify_namespace(data);
    }
}
