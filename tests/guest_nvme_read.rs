//! `nvme_read` (the tool, /bin/nvme_read) against QEMU's NVMe controller
//! through real VFIO (issue 10, part 6): exact `--count` / `--passes`
//! totals, the range's tail, `--read-percent`, a write then verify over an
//! exact range with zero mismatches, each class of bad block planted
//! through the driver (absent, misplaced, corrupt) and found by verify with
//! its count and lowest LBAs, and one controller named twice or held by
//! another process refused. Built with `--features guest`, run in the guest
//! by `vm/test.sh` (tests/guest/run-all.sh), one test at a time.
//!
//! With a second controller (not in CI's guest), e.g.
//! `FASTLANE_QEMU_EXTRA="-drive file=/tmp/n2.img,format=raw,if=none,id=d1
//! -device nvme,serial=n2,drive=d1,addr=08.0"
//! FASTLANE_GUEST_ENV=FASTLANE_NVME2=0000:00:08.0 vm/run.sh ...` (the
//! guest script binding it too), two controllers run at once as well.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fastlane::framework::{BufferPool, PageSize, Vfio};
use fastlane::nvme::{pattern, Controller, Options};
use serde_json::Value;

fn nvme() -> String {
    std::env::var("FASTLANE_NVME").expect("FASTLANE_NVME not set: run through vm/test.sh")
}

/// The tool: $FASTLANE_NVME_READ, else /bin/nvme_read (vm/build-guest.sh).
fn tool() -> String {
    std::env::var("FASTLANE_NVME_READ").unwrap_or_else(|_| "/bin/nvme_read".into())
}

/// Runs the tool with `args` as given, printing what it said.
fn raw(args: &[&str]) -> Output {
    let out = Command::new(tool())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool()));
    eprintln!(
        "nvme_read {args:?}: exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the tool on $FASTLANE_NVME, quietly.
fn run(args: &[&str]) -> Output {
    let dev = nvme();
    raw(&[&["--device", dev.as_str(), "--quiet"][..], args].concat())
}

/// Runs with `--json`; the exit code must be `code`.
fn json(args: &[&str], code: i32) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = run(&a);
    assert_eq!(out.status.code(), Some(code), "nvme_read {args:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no integer {k} in {v}"))
}

/// Field `key` of each entry of one verify class's list.
fn list(v: &Value, class: &str, key: &str) -> Vec<u64> {
    v["verify"][class]["first"]
        .as_array()
        .expect("list")
        .iter()
        .map(|e| u(e, key))
        .collect()
}

/// LBAs of one verify class's list.
fn lbas(v: &Value, class: &str) -> Vec<u64> {
    list(v, class, "lba")
}

/// Writes `blocks` (whole blocks) at `lba` through the driver, then closes
/// the controller so the tool can open it.
fn write_raw(lba: u64, data: &[u8]) {
    let vfio = Vfio::new().unwrap();
    let ctrl = Controller::open(&vfio, &nvme(), Options::default()).unwrap();
    let ns = ctrl.namespace(1).unwrap();
    let bs = ns.block_size as usize;
    assert_eq!(data.len() % bs, 0);
    let pool = BufferPool::new(&vfio, data.len(), 1, PageSize::Huge2M).unwrap();
    let mut buf = pool.alloc().unwrap();
    buf.write(0, data).unwrap();
    let mut qp = ctrl.create_qpair(4).unwrap();
    qp.write(1, lba, (data.len() / bs) as u32, buf, 0)
        .map_err(|r| r.error)
        .unwrap();
    qp.submit();
    let start = Instant::now();
    let mut done = None;
    while done.is_none() {
        qp.poll(1, |c| done = Some(c.result));
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "write never completed"
        );
    }
    done.unwrap().unwrap();
}

fn block_size() -> usize {
    let v = json(&["--count", "1"], 0);
    u(&v["devices"][0], "block_size") as usize
}

#[test]
fn count_and_passes_are_exact() {
    let v = json(
        &["--count", "1000", "--queues", "2", "--queue-depth", "16"],
        0,
    );
    assert_eq!(
        (
            u(&v, "ios"),
            u(&v, "reads"),
            u(&v, "writes"),
            u(&v, "errors")
        ),
        (1000, 1000, 0, 0)
    );
    assert_eq!(u(&v["devices"][0], "planned_ios"), 1000);
    // Fewer I/Os than queues x depth: each still done once.
    let v = json(&["--count", "7", "--queues", "2", "--queue-depth", "32"], 0);
    assert_eq!(u(&v, "ios"), 7);

    // 1003 blocks from LBA 8192 in I/Os of 4 KiB: with 512-byte blocks 125
    // whole I/Os and a 3-block tail, whatever the block size the same rule.
    let bs = block_size() as u64;
    let io_blocks = 4096 / bs;
    let (slots, tail) = (1003 / io_blocks, 1003 % io_blocks);
    let v = json(
        &[
            "--workload",
            "write",
            "--passes",
            "3",
            "--pattern",
            "seq",
            "--start-lba",
            "8192",
            "--blocks",
            "1003",
            "--seed",
            "31",
        ],
        0,
    );
    let d = &v["devices"][0];
    assert_eq!(
        (u(d, "ios_per_pass"), u(d, "tail_blocks"), u(d, "start_lba")),
        (slots, tail, 8192)
    );
    assert_eq!(
        (u(&v, "ios"), u(&v, "writes"), u(&v, "reads")),
        (3 * slots, 3 * slots, 0)
    );
    if tail > 0 {
        assert_eq!(u(d, "tail_first_lba"), 8192 + slots * io_blocks);
    }
    // Shuffled passes with several queues: the same exact total.
    let v = json(
        &[
            "--passes",
            "2",
            "--queues",
            "3",
            "--start-lba",
            "8192",
            "--blocks",
            "1003",
        ],
        0,
    );
    assert_eq!(u(&v, "ios"), 2 * slots);
    assert_eq!(v["order"], "shuffled");
    // The text report says what happens to the tail.
    let out = run(&["--count", "10", "--start-lba", "8192", "--blocks", "1003"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(text.contains("10 I/Os of 10 planned"), "{text}");
    if tail > 0 {
        assert!(
            text.contains(&format!("tail of {tail} block(s)")) && text.contains("not covered"),
            "{text}"
        );
    }
    // A range past the namespace is refused, naming it.
    let out = run(&["--count", "1", "--start-lba", "999999999999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--start-lba 999999999999"));
}

#[test]
fn read_percent_mixes_exactly() {
    // Writes of the pattern, so the region is first written whole.
    let r = ["--start-lba", "16384", "--blocks", "800", "--seed", "41"];
    json(
        &[&r[..], &["--workload", "write", "--passes", "1"]].concat(),
        0,
    );
    let v = json(
        &[&r[..], &["--count", "100", "--read-percent", "70"]].concat(),
        0,
    );
    assert_eq!(
        (u(&v, "reads"), u(&v, "writes"), u(&v, "read_percent")),
        (70, 30, 70)
    );
    // Verify under a mixed load: writes keep the pattern, reads check it.
    let v = json(
        &[
            &r[..],
            &[
                "--workload",
                "verify",
                "--passes",
                "2",
                "--read-percent",
                "50",
                "--queues",
                "2",
            ],
        ]
        .concat(),
        0,
    );
    assert_eq!(u(&v, "reads") + u(&v, "writes"), u(&v, "ios"));
    assert_eq!(u(&v, "reads"), u(&v, "ios") / 2);
    assert_eq!(u(&v, "mismatches"), 0);
}

#[test]
fn write_then_verify_an_exact_range_is_clean() {
    let r = [
        "--start-lba",
        "32768",
        "--blocks",
        "4096",
        "--seed",
        "51",
        "--queue-depth",
        "8",
    ];
    let w = json(
        &[
            &r[..],
            &["--workload", "write", "--passes", "1", "--pattern", "rand"],
        ]
        .concat(),
        0,
    );
    let slots = u(&w["devices"][0], "ios_per_pass");
    assert_eq!(u(&w, "writes"), slots);
    let v = json(
        &[
            &r[..],
            &["--workload", "verify", "--passes", "2", "--queues", "2"],
        ]
        .concat(),
        0,
    );
    assert_eq!(
        (u(&v, "reads"), u(&v, "mismatches"), u(&v, "errors")),
        (2 * slots, 0, 0)
    );
    for class in ["absent", "misplaced", "corrupt"] {
        assert_eq!(u(&v["verify"][class], "count"), 0, "{class}");
    }
    // Another seed: every block is absent, none misplaced or corrupt.
    let v = json(
        &[
            &["--start-lba", "32768", "--blocks", "4096", "--seed", "52"][..],
            &["--workload", "verify", "--passes", "1"],
        ]
        .concat(),
        1,
    );
    assert_eq!(u(&v["verify"]["absent"], "count"), 4096);
    assert_eq!(
        u(&v["verify"]["misplaced"], "count") + u(&v["verify"]["corrupt"], "count"),
        0
    );
    assert_eq!(lbas(&v, "absent"), (32768..32776).collect::<Vec<_>>());
}

#[test]
fn verify_sorts_planted_bad_blocks_into_their_classes() {
    let bs = block_size();
    let base = 65536u64;
    let seed = 0x5EED_0A11u64;
    let s = seed.to_string();
    let b = base.to_string();
    let r = [
        "--start-lba",
        &b,
        "--blocks",
        "256",
        "--seed",
        &s,
        "--io-size",
        "4096",
    ];
    json(
        &[
            &r[..],
            &["--workload", "write", "--passes", "1", "--pattern", "seq"],
        ]
        .concat(),
        0,
    );

    // Absent: 10 blocks rewritten with another seed.
    let mut d = vec![0u8; 10 * bs];
    pattern::fill(&mut d, bs, base + 16, seed + 1);
    write_raw(base + 16, &d);
    // Misplaced: block base+100 holds base+5's block, base+101 holds base+200's.
    let mut one = vec![0u8; bs];
    pattern::fill_block(&mut one, base + 5, seed);
    write_raw(base + 100, &one);
    pattern::fill_block(&mut one, base + 200, seed);
    write_raw(base + 101, &one);
    // Corrupt: right header, one byte flipped.
    for (lba, off) in [(base + 150, 333usize), (base + 151, bs - 1)] {
        pattern::fill_block(&mut one, lba, seed);
        one[off] ^= 0x40;
        write_raw(lba, &one);
    }

    let v = json(
        &[
            &r[..],
            &["--workload", "verify", "--passes", "1", "--pattern", "seq"],
        ]
        .concat(),
        1,
    );
    assert_eq!(u(&v, "mismatches"), 14);
    let ver = &v["verify"];
    assert_eq!(u(&ver["absent"], "count"), 10);
    assert_eq!(
        lbas(&v, "absent"),
        (base + 16..base + 24).collect::<Vec<_>>()
    );
    assert_eq!(u(&ver["misplaced"], "count"), 2);
    assert_eq!(lbas(&v, "misplaced"), [base + 100, base + 101]);
    let holds = list(&v, "misplaced", "holds");
    assert_eq!(holds, [base + 5, base + 200]);
    assert_eq!(u(&ver["corrupt"], "count"), 2);
    let offs = list(&v, "corrupt", "offset");
    assert_eq!(
        (lbas(&v, "corrupt"), offs),
        (vec![base + 150, base + 151], vec![333, bs as u64 - 1])
    );
    // The per-device report carries the same.
    assert_eq!(v["devices"][0]["verify"], v["verify"]);

    // Two shuffled passes on two queues read each block twice: the counts
    // double, the lists stay the lowest LBAs.
    let v2 = json(
        &[
            &r[..],
            &["--workload", "verify", "--passes", "2", "--queues", "2"],
        ]
        .concat(),
        1,
    );
    assert_eq!(u(&v2, "mismatches"), 28);
    assert_eq!(lbas(&v2, "absent"), lbas(&v, "absent"));

    // The text report says the same.
    let out = run(&[&r[..], &["--workload", "verify", "--passes", "1"]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("14 blocks mismatched: 10 absent, 2 misplaced, 2 corrupt"),
        "{text}"
    );
    assert!(
        text.contains(&format!("LBA {} holds LBA {}", base + 100, base + 5)),
        "{text}"
    );
    assert!(
        text.contains(&format!("LBA {} at byte 333", base + 150)),
        "{text}"
    );
    assert!(
        text.contains(&format!("LBAs {}, {}", base + 16, base + 17)),
        "{text}"
    );
}

#[test]
fn one_controller_twice_is_refused() {
    let dev = nvme();
    // Named twice in one run: a usage error before anything is opened.
    let short = dev.trim_start_matches("0000:");
    let out = raw(&["--device", &format!("{dev},{short}"), "--count", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("named twice"), "{err}");

    // Held by another process: the framework's Busy, naming the device.
    let mut first = Command::new(tool())
        .args(["--device", &dev, "--time", "3", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its first line comes once the controller is open.
    let mut line = String::new();
    let mut reader = BufReader::new(first.stdout.take().unwrap());
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with(&dev), "{line}");
    let out = run(&["--count", "10"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("busy") && err.contains(&dev), "{err}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(
        first.wait().unwrap().success(),
        "the first run failed:\n{rest}"
    );
}

/// Two controllers in one run, when the guest has a second NVMe
/// ($FASTLANE_NVME2, bound to vfio-pci: QEMU's default guest has one, so
/// CI skips this; see the module doc of tests/guest_nvme_read.rs for the
/// manual run). Each controller gets its own thread(s); the report has a
/// line per device and the total.
#[test]
fn two_controllers_run_at_once_with_totals() {
    let Ok(second) = std::env::var("FASTLANE_NVME2") else {
        eprintln!("skipped: no FASTLANE_NVME2 (a second NVMe bound to vfio-pci)");
        return;
    };
    let both = format!("{},{second}", nvme());
    let two = |args: &[&str]| raw(&[&["--device", both.as_str(), "--quiet"][..], args].concat());
    let out = two(&["--json", "--count", "3000", "--queues", "2"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let devs = v["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[1]["device"].as_str(), Some(second.as_str()));
    for d in devs {
        assert_eq!((u(d, "ios"), u(d, "planned_ios")), (3000, 3000));
    }
    assert_eq!(u(&v, "ios"), 6000);
    // Write on both, verify on both; another seed finds every block absent
    // on both.
    let r = ["--json", "--passes", "1", "--blocks", "2048"];
    assert_eq!(
        two(&[&r[..], &["--workload", "write", "--seed", "61"]].concat())
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        two(&[&r[..], &["--workload", "verify", "--seed", "61"]].concat())
            .status
            .code(),
        Some(0)
    );
    let bad = two(&[&r[..], &["--workload", "verify", "--seed", "62"]].concat());
    assert_eq!(bad.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(u(&v["verify"]["absent"], "count"), 2 * 2048);
    assert_eq!(u(&v["devices"][1]["verify"]["absent"], "count"), 2048);
    // The text report: one row per device and a total.
    let t = two(&["--count", "100"]);
    let text = String::from_utf8_lossy(&t.stdout);
    assert!(
        text.contains(&format!("{second}: 100 I/Os of 100 planned")),
        "{text}"
    );
    assert!(text.contains("total: 200 I/Os of 200 planned"), "{text}");
}
