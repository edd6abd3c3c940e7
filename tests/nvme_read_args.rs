//! Host tests of `nvme_read`'s planning (examples/nvme_read/plan.rs, pure
//! code): the range and its tail, the exact I/O sequence of `--count` and
//! `--passes` (each slot once per pass, shuffled by a seeded permutation),
//! the `--read-percent` mix, the `--device` list, and how verify sorts a
//! bad block. Then the tool's command line: the new options' bad values
//! are usage errors (exit 2) before any device is looked at.

#[allow(dead_code)]
#[path = "../examples/nvme_read/plan.rs"]
mod plan;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use fastlane::nvme::pattern;
use plan::{BlockCheck, Class, Mismatches, Order, Plan, Range, Shuffle};

#[test]
fn header_fields_are_where_the_pattern_writes_them() {
    let mut b = vec![0u8; 512];
    pattern::fill_block(&mut b, 0x1122_3344_5566_7788, 0x99AA_BBCC_DDEE_FF00);
    assert_eq!(b[plan::HEADER_LBA], 0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(b[plan::HEADER_SEED], 0x99AA_BBCC_DDEE_FF00u64.to_le_bytes());
}

#[test]
fn range_reports_its_tail_and_refuses_what_does_not_fit() {
    // 1000 blocks of 8 per I/O: 125 whole I/Os, no tail.
    let r = Range::new(4096, 0, 1000, 8).unwrap();
    assert_eq!((r.slots(), r.tail()), (125, 0));
    assert!(r.describe().contains("no tail"), "{}", r.describe());
    // 1003 blocks from LBA 100: 125 I/Os, LBAs 1100..=1102 not covered.
    let r = Range::new(4096, 100, 1003, 8).unwrap();
    assert_eq!((r.slots(), r.tail(), r.tail_start()), (125, 3, 1100));
    assert_eq!((r.lba(0), r.lba(124)), (100, 1092));
    let d = r.describe();
    assert!(
        d.contains("tail of 3 block(s), LBAs 1100 to 1102, not covered"),
        "{d}"
    );
    // 0 blocks: up to the namespace's end.
    let r = Range::new(4096, 4000, 0, 8).unwrap();
    assert_eq!((r.blocks, r.slots(), r.tail()), (96, 12, 0));
    // The last block exactly.
    assert_eq!(Range::new(4096, 4095, 1, 1).unwrap().slots(), 1);
    let e = Range::new(4096, 4096, 0, 8).unwrap_err();
    assert!(
        e.contains("--start-lba 4096") && e.contains("4096 blocks"),
        "{e}"
    );
    let e = Range::new(4096, 4000, 97, 8).unwrap_err();
    assert!(e.contains("--blocks 97") && e.contains("at most 96"), "{e}");
    let e = Range::new(4096, 0, 7, 8).unwrap_err();
    assert!(e.contains("shorter than one I/O"), "{e}");
    // Near u64::MAX nothing overflows.
    let r = Range::new(u64::MAX, u64::MAX - 16, 0, 8).unwrap();
    assert_eq!((r.slots(), r.tail()), (2, 0));
    assert!(Range::new(u64::MAX, 5, u64::MAX, 1).is_err());
}

#[test]
fn shares_cover_every_slot_once() {
    for (total, parts) in [(10, 3), (7, 7), (3, 8), (1 << 40, 5), (u64::MAX, 3)] {
        let mut next = 0;
        for i in 0..parts {
            let (lo, hi) = plan::share(total, parts, i);
            assert_eq!(lo, next, "{total}/{parts} part {i}");
            assert!(hi - lo <= total / parts + 1);
            next = hi;
        }
        assert_eq!(next, total);
    }
}

#[test]
fn read_percent_is_exact_over_any_prefix() {
    for p in [0u8, 1, 30, 50, 70, 99, 100] {
        let mut reads = 0u64;
        for i in 0..1000u64 {
            reads += u64::from(plan::is_read(i, p));
            assert_eq!(
                reads,
                (i + 1) * u64::from(p) / 100,
                "p {p} after {} I/Os",
                i + 1
            );
        }
    }
    // Spread, not bunched: 50% alternates.
    assert!((0..10).all(|i| plan::is_read(i, 50) == (i % 2 == 1)));
}

fn check_permutation(n: u64, key: u64) -> Vec<u64> {
    let s = Shuffle::new(n, key);
    let out: Vec<u64> = (0..n).map(|i| s.apply(i)).collect();
    let seen: HashSet<u64> = out.iter().copied().collect();
    assert_eq!(seen.len() as u64, n, "n {n} key {key}: not one-to-one");
    assert!(out.iter().all(|&x| x < n), "n {n} key {key}: out of range");
    out
}

#[test]
fn shuffle_is_a_permutation_for_any_size_and_key() {
    for n in [1u64, 2, 3, 5, 7, 8, 9, 31, 64, 65, 100, 1000, 4097] {
        for key in [0, 1, 2, 0xdead_beef, u64::MAX] {
            check_permutation(n, key);
        }
    }
    // It shuffles: not the identity, and another key gives another order.
    let a = check_permutation(1000, 1);
    let b = check_permutation(1000, 2);
    assert_ne!(a, (0..1000).collect::<Vec<_>>());
    assert_ne!(a, b);
    // Spread: few slots keep their place.
    assert!(
        a.iter()
            .enumerate()
            .filter(|(i, &x)| *i as u64 == x)
            .count()
            < 20
    );
    // Huge domains work without a table.
    let s = Shuffle::new(u64::MAX, 7);
    assert!(s.apply(u64::MAX - 1) < u64::MAX);
}

fn plan(order: Order, total: u64, read_percent: u8) -> Plan {
    Plan {
        range: Range::new(1 << 20, 64, 1003, 8).unwrap(),
        order,
        seed: 5,
        total,
        read_percent,
    }
}

#[test]
fn passes_touch_every_slot_exactly_once_each() {
    for order in [Order::Sequential, Order::Shuffled] {
        let p = plan(order, 3 * 125, 100);
        let mut passes = Vec::new();
        for pass in 0..3 {
            let lbas: Vec<u64> = (pass * 125..(pass + 1) * 125)
                .map(|i| p.io(i).lba)
                .collect();
            let set: HashSet<u64> = lbas.iter().copied().collect();
            let want: HashSet<u64> = (0..125).map(|s| 64 + 8 * s).collect();
            assert_eq!(set, want, "{order:?} pass {pass}");
            passes.push(lbas);
        }
        if order == Order::Shuffled {
            assert_ne!(passes[0], passes[1], "every pass its own order");
            assert_ne!(passes[0], (0..125).map(|s| 64 + 8 * s).collect::<Vec<_>>());
        } else {
            assert_eq!(passes[0], passes[2]);
            assert_eq!(passes[0][..3], [64, 72, 80]);
        }
        // The tail (LBAs 1064..=1066) is never touched.
        assert!((0..3 * 125).all(|i| p.io(i).lba + 8 <= 1064));
    }
    // Queues taking every q-th I/O together do each I/O once.
    let p = plan(Order::Shuffled, 250, 70);
    let queues = 3u64;
    let mut all: Vec<(u64, bool)> = Vec::new();
    for q in 0..queues {
        all.extend(
            (q..p.total)
                .step_by(queues as usize)
                .map(|i| (p.io(i).lba, p.io(i).read)),
        );
    }
    assert_eq!(all.len(), 250);
    assert_eq!(all.iter().filter(|(_, r)| *r).count(), 175);
    let per_lba = all
        .iter()
        .fold(std::collections::HashMap::new(), |mut m, (l, _)| {
            *m.entry(*l).or_insert(0) += 1;
            m
        });
    assert!(
        per_lba.values().all(|&c| c == 2),
        "250 I/Os over 125 slots: each slot twice"
    );
}

#[test]
fn total_ios_from_count_or_passes() {
    assert_eq!(plan::total_ios(Some(7), None, 125), Ok(Some(7)));
    assert_eq!(plan::total_ios(None, Some(3), 125), Ok(Some(375)));
    assert_eq!(plan::total_ios(None, None, 125), Ok(None));
    assert!(plan::total_ios(None, Some(u64::MAX), 2)
        .unwrap_err()
        .contains("--passes"));
}

#[test]
fn verify_tells_absent_misplaced_and_corrupt_apart() {
    let bs = 512;
    let mut b = vec![0u8; bs];
    pattern::fill_block(&mut b, 40, 9);
    assert_eq!(plan::classify(&b, 40, 9), BlockCheck::Good);
    // Another seed, or never written (zeroes): absent.
    assert_eq!(plan::classify(&b, 40, 10), BlockCheck::Absent);
    assert_eq!(plan::classify(&vec![0u8; bs], 40, 9), BlockCheck::Absent);
    assert_eq!(plan::classify(&[0u8; 10], 40, 9), BlockCheck::Absent);
    // This seed, another LBA: misplaced, naming it.
    assert_eq!(
        plan::classify(&b, 41, 9),
        BlockCheck::Misplaced { names: 40 }
    );
    // Header right, one byte flipped: corrupt, at that byte.
    let mut c = b.clone();
    c[300] ^= 0x80;
    assert_eq!(
        plan::classify(&c, 40, 9),
        BlockCheck::Corrupt { offset: 300 }
    );
    // A damaged seed field is absent, a damaged LBA field misplaced.
    let mut d = b.clone();
    d[plan::HEADER_SEED.start] ^= 1;
    assert_eq!(plan::classify(&d, 40, 9), BlockCheck::Absent);
    let mut e = b;
    e[plan::HEADER_LBA.start] ^= 1;
    assert_eq!(
        plan::classify(&e, 40, 9),
        BlockCheck::Misplaced { names: 41 }
    );
}

#[test]
fn mismatches_count_every_block_and_list_the_lowest() {
    let bs = 512;
    // 4 blocks from LBA 100: good, zeroes, block 100's copy, corrupt.
    let mut data = vec![0u8; 4 * bs];
    pattern::fill(&mut data, bs, 100, 3);
    data[bs..2 * bs].fill(0);
    let first = data[..bs].to_vec();
    data[2 * bs..3 * bs].copy_from_slice(&first);
    data[3 * bs + 20] ^= 1;
    let mut m = Mismatches::default();
    assert_eq!(m.check(&data, bs, 100, 3), 3);
    assert_eq!(
        (m.absent.count, m.misplaced.count, m.corrupt.count),
        (1, 1, 1)
    );
    assert_eq!(m.absent.first, [(101, 0)]);
    assert_eq!(m.misplaced.first, [(102, 100)]);
    assert_eq!(m.corrupt.first, [(103, 20)]);
    let text = m.describe().join("\n");
    assert!(
        text.contains("LBA 102 holds LBA 100") && text.contains("LBA 103 at byte 20"),
        "{text}"
    );

    // The list keeps the lowest LBAs whatever the order they came in.
    let mut c = Class::default();
    for lba in (0..50u64).rev().chain([3, 3]) {
        c.add(lba * 7, 0);
    }
    assert_eq!(c.count, 52);
    assert_eq!(
        c.first.iter().map(|e| e.0).collect::<Vec<_>>(),
        (0..plan::FIRST_FEW as u64)
            .map(|l| l * 7)
            .collect::<Vec<_>>()
    );
    let mut other = Class::default();
    other.add(1, 9);
    c.merge(&other);
    assert_eq!((c.count, c.first[1]), (53, (1, 9)));
    assert_eq!(c.first.len(), plan::FIRST_FEW);
    assert!(m.describe().iter().all(|l| !l.contains("...")));
    let mut many = Mismatches::default();
    many.check(&vec![0u8; 20 * bs], bs, 0, 3);
    assert_eq!(many.absent.count, 20);
    assert!(
        many.describe()[0].ends_with("6, 7, ..."),
        "{:?}",
        many.describe()
    );
}

#[test]
fn device_lists_refuse_one_controller_named_twice() {
    let d = plan::devices("0000:01:00.0,02:00.0").unwrap();
    assert_eq!(d.0.len(), 2);
    for same in [
        "0000:01:00.0,01:00.0",
        "01:00.0,02:00.0,0000:01:00.0",
        "0a:00.0,0A:00.0",
    ] {
        let e = plan::devices(same).unwrap_err();
        assert!(e.contains("named twice"), "{same}: {e}");
    }
    for bad in ["", "01:00.0,", "zz:00.0", "01:00.0,,02:00.0"] {
        assert!(plan::devices(bad).is_err(), "{bad}");
    }
}

/// target/<profile>/examples/nvme_read, built (or found up to date) by
/// cargo once per test run: a binary left from an older build is never
/// what is tested.
fn tool() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // This test runs as target/[<triple>/]<profile>/deps/nvme_read_args-<hash>.
        let exe = std::env::current_exe().expect("current_exe");
        let profile = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>");
        let release = profile.file_name().is_some_and(|n| n == "release");
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.args(["build", "--quiet", "--example", "nvme_read"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            c.arg("--release");
        }
        assert!(
            c.status().expect("cargo").success(),
            "cargo build --example nvme_read failed"
        );
        profile.join("examples/nvme_read")
    })
    .clone()
}

/// Runs the tool; should a command line pass the checks, it fails fast
/// instead of booting the guest (FASTLANE_IN_GUEST).
fn run(args: &[&str]) -> Output {
    Command::new(tool())
        .args(args)
        .env("FASTLANE_IN_GUEST", "1")
        .env_remove("FASTLANE_NVME")
        .output()
        .expect("run nvme_read")
}

#[test]
fn new_options_refuse_bad_values_before_any_device() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--count", "0"], &["--count"]),
        (&["--count", "-1"], &["--count"]),
        (&["--count", "18446744073709551616"], &["--count"]),
        (&["--passes", "0"], &["--passes"]),
        (&["--count", "5", "--time", "1"], &["--count", "--time"]),
        (&["--passes", "2", "--time", "1"], &["--passes", "--time"]),
        (&["--count", "5", "--passes", "1"], &["--count", "--passes"]),
        (&["--read-percent", "101"], &["--read-percent", "0 to 100"]),
        (&["--read-percent", "-1"], &["--read-percent"]),
        (&["--start-lba", "-1"], &["--start-lba"]),
        (&["--start-lba", "1e9"], &["--start-lba"]),
        (
            &["--device", "0000:00:04.0,00:04.0"],
            &["--device", "named twice"],
        ),
        (&["--device", "0000:00:04.0,"], &["--device"]),
        (
            &["--count", "1", "--count", "2"],
            &["--count", "cannot be used multiple times"],
        ),
    ];
    for (args, says) in cases {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for s in *says {
            assert!(err.contains(s), "{args:?}: does not say {s:?}:\n{err}");
        }
    }
    // Good command lines get past the checks (and stop at the missing device).
    for args in [
        &["--count", "5"][..],
        &["--passes", "1", "--pattern", "seq"],
        &["--device", "0000:00:04.0,0000:00:05.0"],
        &["--read-percent", "70", "--start-lba", "8"],
    ] {
        let out = run(args);
        assert_ne!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    for s in [
        "--start-lba",
        "--count",
        "--passes",
        "--read-percent",
        "tail",
        "absent",
        "misplaced",
        "corrupt",
    ] {
        assert!(help.contains(s), "--help does not mention {s}");
    }
}
