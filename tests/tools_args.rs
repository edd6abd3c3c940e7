//! Host tests of the tools' command lines (examples/nvme_read, nvme_identify,
//! pktgen, rxcount, fwd): every bad command line ends with exit code 2 and
//! an error naming the problem, never a panic (exit 101), and before any
//! device is looked at. Nothing here needs a device, root or the QEMU guest.
//!
//! The examples are built first (`cargo build --examples`, same profile and
//! target as this test) when the test runs under cargo; `cargo test` and
//! `cargo test --all-targets` build them too.
//!
//! The value parsers themselves (examples/common/args.rs) are pure
//! functions; their unit tests run here as well, including the check of
//! `--queue-depth` against a controller's CAP.MQES, which needs a
//! controller in the tools.

#[allow(dead_code)]
#[path = "../examples/common/args.rs"]
mod args;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// target/<profile>/examples, after building the examples there.
fn examples_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // This test runs as target/[<triple>/]<profile>/deps/tools_args-<hash>.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test binary outside target/<profile>/deps")
            .to_path_buf();
        if let Some(cargo) = std::env::var_os("CARGO") {
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--examples", "--quiet", "--manifest-path"])
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
            match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => {}
                Some("release") => {
                    cmd.arg("--release");
                }
                Some(profile) => {
                    cmd.args(["--profile", profile]);
                }
            }
            // target/<triple>/<profile>: the target directory itself has
            // CACHEDIR.TAG, a triple directory does not.
            if let Some(parent) = profile_dir.parent() {
                if !parent.join("CACHEDIR.TAG").exists() {
                    if let Some(triple) = parent.file_name() {
                        cmd.arg("--target").arg(triple);
                    }
                }
            }
            // Its output (other crates' warnings) only when it fails.
            let out = cmd.output().expect("cannot run cargo build --examples");
            assert!(
                out.status.success(),
                "cargo build --examples failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        profile_dir.join("examples")
    })
}

/// Runs example `tool` with `args`. Should a command line get past the
/// option checks, the tools fail fast instead of looking for devices or
/// booting the QEMU guest: FASTLANE_IN_GUEST makes `nvme_read` and
/// `nvme_identify` exit 1 where they would start the guest.
fn run(tool: &str, args: &[&str]) -> Output {
    let bin = examples_dir().join(tool);
    assert!(
        bin.exists(),
        "{} missing: build the examples first (cargo build --examples)",
        bin.display()
    );
    Command::new(&bin)
        .args(args)
        .env("FASTLANE_IN_GUEST", "1")
        .env_remove("FASTLANE_NVME")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// `tool args` must exit 2 with an error on stderr that contains every
/// string of `says`.
fn rejects(tool: &str, args: &[&str], says: &[&str]) {
    let out = run(tool, args);
    let err = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert_ne!(code, Some(101), "{tool} {args:?} panicked:\n{err}");
    assert_eq!(code, Some(2), "{tool} {args:?}: exit {code:?}, expected 2 (usage error):\n{err}");
    assert!(!err.contains("panicked"), "{tool} {args:?}:\n{err}");
    assert!(err.contains("error"), "{tool} {args:?}: no error message:\n{err}");
    for s in says {
        assert!(err.contains(s), "{tool} {args:?}: message does not say {s:?}:\n{err}");
    }
}

const DEV: &str = "0000:01:00.0";
const BAD_TIMES: [&str; 7] = ["-1", "nan", "inf", "-inf", "1e30", "0", "31536001"];

#[test]
fn bad_run_times_are_usage_errors() {
    for t in BAD_TIMES {
        let says = ["--time", t];
        rejects("nvme_read", &["--time", t], &says);
        rejects("pktgen", &["--device", DEV, "--time", t], &says);
        rejects("rxcount", &["--device", DEV, "--time", t], &says);
        rejects("fwd", &["--ports", "0000:01:00.0,0000:02:00.0", "--time", t], &says);
    }
    rejects("nvme_read", &["--time", "1e30"], &["one year"]);
    rejects("nvme_read", &["--time", "nan"], &["finite"]);
    rejects("pktgen", &["--device", DEV, "--time", "ten"], &["not a number"]);
}

#[test]
fn queue_depth_beyond_a_u16_queue_is_refused_before_any_device() {
    for d in ["65535", "65536", "4294967297", "0", "-1", "1e30", "nan"] {
        rejects("nvme_read", &["--queue-depth", d], &["--queue-depth", "1 to 65534"]);
    }
}

#[test]
fn bad_numbers_are_usage_errors() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("nvme_read", &["--io-size", "1e30"], "--io-size"),
        ("nvme_read", &["--io-size", "0"], "--io-size"),
        ("nvme_read", &["--io-size", "99999999999999999999999"], "--io-size"),
        ("nvme_read", &["--queues", "0"], "--queues"),
        ("nvme_read", &["--queues", "65536"], "--queues"),
        ("nvme_read", &["--nsid", "-1"], "--nsid"),
        ("nvme_read", &["--nsid", "4294967296"], "--nsid"),
        ("nvme_read", &["--blocks", "-1"], "--blocks"),
        ("nvme_read", &["--seed", "nan"], "--seed"),
        ("nvme_read", &["--pattern", "zigzag"], "--pattern"),
        ("nvme_read", &["--workload", "erase"], "--workload"),
        ("nvme_read", &["--device", "zz:zz.z"], "--device"),
        ("nvme_identify", &["--device", "0000:00:04.8"], "--device"),
        ("pktgen", &["--device", DEV, "--count", "0"], "--count"),
        ("pktgen", &["--device", DEV, "--count", "-1"], "--count"),
        ("pktgen", &["--device", DEV, "--count", "1e30"], "--count"),
        ("pktgen", &["--device", DEV, "--count", "18446744073709551616"], "--count"),
        ("pktgen", &["--device", DEV, "--size", "59"], "--size"),
        ("pktgen", &["--device", DEV, "--size", "9015"], "--size"),
        ("pktgen", &["--device", DEV, "--size", "1e30"], "--size"),
        ("pktgen", &["--device", DEV, "--burst", "0"], "--burst"),
        ("pktgen", &["--device", DEV, "--burst", "65536"], "--burst"),
        ("pktgen", &["--device", DEV, "--count", "10", "--time", "1"], "--count"),
        ("pktgen", &["--size", "60"], "--device"),
        ("rxcount", &["--device", "not-a-bdf"], "--device"),
        ("fwd", &["--ports", "0000:01:00.0,0000:02:00.0", "--burst", "-1"], "--burst"),
        ("fwd", &["--ports", "0000:01:00.0,0000:02:00.0", "--burst", "513"], "--burst"),
        ("fwd", &["--ports", DEV], "--ports"),
        ("fwd", &["--time", "1"], "--ports"),
    ];
    for (tool, args, says) in cases {
        rejects(tool, args, &[says]);
    }
}

#[test]
fn repeated_options_are_refused() {
    let msg = "cannot be used multiple times";
    rejects("nvme_read", &["--time", "1", "--time", "2"], &["--time", msg]);
    rejects("nvme_read", &["--queue-depth", "8", "--queue-depth", "16"], &["--queue-depth", msg]);
    rejects("nvme_read", &["--json", "--json"], &["--json", msg]);
    rejects("nvme_read", &["--device", "0000:00:04.0", "--device", "0000:00:05.0"], &["--device", msg]);
    rejects("nvme_identify", &["--device", "0000:00:04.0", "--device", "0000:00:04.0"], &["--device", msg]);
    rejects("pktgen", &["--device", DEV, "--size", "60", "--size", "61"], &["--size", msg]);
    rejects("pktgen", &["--device", DEV, "--device", "0000:02:00.0"], &["--device", msg]);
    rejects("rxcount", &["--device", DEV, "--time", "1", "--time", "1"], &["--time", msg]);
    rejects("rxcount", &["--device", DEV, "--json", "--json"], &["--json", msg]);
    rejects(
        "fwd",
        &["--ports", "0000:01:00.0,0000:02:00.0", "--ports", "0000:03:00.0,0000:04:00.0"],
        &["--ports", msg],
    );
    rejects("fwd", &["--ports", "0000:01:00.0,0000:02:00.0", "--burst", "8", "--burst", "8"], &["--burst", msg]);
}

#[test]
fn fwd_refuses_one_port_written_two_ways() {
    for ports in ["0000:01:00.0,01:00.0", "01:00.0,0000:01:00.0", "0000:01:00.0,0000:01:00.0", "0000:0a:00.0,0A:00.0"] {
        rejects("fwd", &["--ports", ports], &["--ports", "must differ"]);
    }
}

#[test]
fn help_still_works() {
    for tool in ["nvme_read", "nvme_identify", "pktgen", "rxcount", "fwd"] {
        let out = run(tool, &["--help"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{tool} --help:\n{text}");
        assert!(text.contains("Usage:") && text.contains(tool), "{tool} --help:\n{text}");
    }
}
