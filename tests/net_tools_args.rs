//! Host tests of the network tools' new options (pktgen's MACs, IPv4/UDP,
//! flows and rate; rxcount's count; udp_echo; l2fwd): bad command lines
//! end with exit code 2 and an error naming the option, before any device
//! is looked at. Also the pure parts they share (examples/common/net.rs):
//! address parsers, the pacer and the per-flow sequence tracker.

#[allow(dead_code)]
#[path = "../examples/common/net.rs"]
mod net;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use net::{Pacer, SeqTracker};

/// The examples, built for this test's profile (the test binary lives in
/// target/<profile>/deps; the examples in target/<profile>/examples).
fn example(tool: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>/deps")
            .to_path_buf();
        if let Some(cargo) = std::env::var_os("CARGO") {
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "--manifest-path",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ]);
            for t in ["pktgen", "rxcount", "udp_echo", "l2fwd"] {
                cmd.args(["--example", t]);
            }
            if profile.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let triple = profile
                .parent()
                .filter(|p| !p.join("CACHEDIR.TAG").exists())
                .and_then(|p| p.file_name());
            if let Some(t) = triple {
                cmd.arg("--target").arg(t);
            }
            let out = cmd.output().expect("cargo build");
            assert!(
                out.status.success(),
                "building the examples failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        profile.join("examples")
    });
    dir.join(tool)
}

fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(example(tool))
        .args(args)
        .env("FASTLANE_IN_GUEST", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

/// `tool args` exits 2 with an error that mentions every string of `says`.
fn refused(tool: &str, args: &[&str], says: &[&str]) {
    let out = run(tool, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{tool} {args:?}: expected a usage error:\n{err}"
    );
    assert!(
        err.contains("error") && !err.contains("panicked"),
        "{tool} {args:?}:\n{err}"
    );
    for s in says {
        assert!(
            err.contains(s),
            "{tool} {args:?}: does not say {s:?}:\n{err}"
        );
    }
}

const DEV: &str = "0000:01:00.0";
const PAIR: &str = "0000:01:00.0,0000:02:00.0";

#[test]
fn pktgen_refuses_bad_addresses_ports_flows_and_rates() {
    let cases: &[(&[&str], &str)] = &[
        (&["--dst-mac", "02:00:00:00:00"], "--dst-mac"),
        (&["--dst-mac", "02:00:00:00:00:100"], "--dst-mac"),
        (&["--src-mac", "zz:00:00:00:00:01"], "--src-mac"),
        (&["--src-mac", ""], "--src-mac"),
        (&["--ip", "10.0.0.1"], "--ip"),
        (&["--ip", "10.0.0.1,10.0.0.256"], "--ip"),
        (&["--ip", "10.0.0.1,10.0.0.2,10.0.0.3"], "--ip"),
        (&["--udp", "0,9"], "--udp"),
        (&["--udp", "9,65536"], "--udp"),
        (&["--udp", "9"], "--udp"),
        (&["--flows", "0"], "--flows"),
        (&["--flows", "4097"], "--flows"),
        (&["--flows", "-1"], "--flows"),
        (&["--udp", "65000,9", "--flows", "1000"], "65535"),
        (&["--rate", "0"], "--rate"),
        (&["--rate", "1e30"], "--rate"),
        (&["--rate", "-5"], "--rate"),
        (&["--size", "9015", "--ip", "10.0.0.1,10.0.0.2"], "--size"),
    ];
    for (args, says) in cases {
        let mut a = vec!["--device", DEV];
        a.extend_from_slice(args);
        refused("pktgen", &a, &[says]);
    }
}

#[test]
fn rxcount_udp_echo_and_l2fwd_refuse_bad_command_lines() {
    refused("rxcount", &["--device", DEV, "--count", "0"], &["--count"]);
    refused(
        "rxcount",
        &["--device", DEV, "--show-flows", "-1"],
        &["--show-flows"],
    );
    refused("udp_echo", &["--device", DEV], &["--ip"]);
    refused(
        "udp_echo",
        &["--device", DEV, "--ip", "300.1.1.1"],
        &["--ip"],
    );
    refused(
        "udp_echo",
        &["--device", DEV, "--ip", "10.0.0.1", "--queues", "0"],
        &["--queues"],
    );
    refused(
        "udp_echo",
        &["--device", DEV, "--ip", "10.0.0.1", "--queues", "9"],
        &["--queues"],
    );
    refused(
        "udp_echo",
        &["--device", DEV, "--ip", "10.0.0.1", "--time", "nan"],
        &["--time"],
    );
    refused("udp_echo", &["--ip", "10.0.0.1"], &["--device"]);
    refused("l2fwd", &["--ports", DEV], &["--ports", "even"]);
    refused(
        "l2fwd",
        &["--ports", "0000:01:00.0,01:00.0"],
        &["--ports", "twice"],
    );
    refused(
        "l2fwd",
        &["--ports", "0000:01:00.0,0000:02:00.0,0000:03:00.0"],
        &["--ports", "even"],
    );
    refused(
        "l2fwd",
        &["--ports", PAIR, "--eth-dest", "2,02:00:00:00:00:09"],
        &["--eth-dest", "port 2"],
    );
    refused(
        "l2fwd",
        &["--ports", PAIR, "--eth-dest", "0,02:00:00"],
        &["--eth-dest"],
    );
    refused(
        "l2fwd",
        &["--ports", PAIR, "--eth-dest", "x"],
        &["--eth-dest"],
    );
    refused("l2fwd", &["--ports", PAIR, "--queues", "0"], &["--queues"]);
    refused("l2fwd", &["--ports", PAIR, "--burst", "513"], &["--burst"]);
    refused("l2fwd", &["--time", "1"], &["--ports"]);
}

#[test]
fn the_new_tools_explain_themselves() {
    for (tool, says) in [
        ("udp_echo", "--ip"),
        ("l2fwd", "--eth-dest"),
        ("pktgen", "--flows"),
        ("rxcount", "--count"),
    ] {
        let out = run(tool, &["--help"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{tool} --help:\n{text}");
        assert!(
            text.contains(says),
            "{tool} --help does not mention {says}:\n{text}"
        );
    }
}

#[test]
fn addresses_and_ports_parse_strictly() {
    assert_eq!(net::mac("02:00:00:00:00:0a"), Ok([2, 0, 0, 0, 0, 10]));
    assert_eq!(
        net::mac("52-54-00-12-34-56"),
        Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
    );
    assert_eq!(
        net::fmt_mac(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]),
        "52:54:00:12:34:56"
    );
    for bad in [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:00:00",
        "002:00:00:00:00:00",
        "02::00:00:00:00",
        "g2:00:00:00:00:00",
        "+2:00:00:00:00:00",
    ] {
        assert!(net::mac(bad).is_err(), "{bad}");
    }
    assert_eq!(
        net::ip_pair("10.0.0.1,10.0.0.2"),
        Ok(([10, 0, 0, 1], [10, 0, 0, 2]))
    );
    for bad in [
        "10.0.0.1",
        "10.0.0.1,",
        "10.0.0.1,10.0.0.2,10.0.0.3",
        "10.0.0.1,::1",
        "1.2.3,4.5.6.7",
    ] {
        assert!(net::ip_pair(bad).is_err(), "{bad}");
    }
    assert_eq!(net::udp_ports("9,65535"), Ok((9, 65535)));
    for bad in ["0,9", "9,0", "9", "9,65536", "-1,9", "a,b"] {
        assert!(net::udp_ports(bad).is_err(), "{bad}");
    }
    assert_eq!(
        net::eth_dest("1,02:00:00:00:00:01"),
        Ok((1, [2, 0, 0, 0, 0, 1]))
    );
    assert!(net::eth_dest("-1,02:00:00:00:00:01").is_err());
    assert!(net::check_flows(65535, 1).is_ok());
    assert!(net::check_flows(65535, 2).is_err());
    assert!(net::check_flows(1, 0).is_err());
    assert!(net::check_flows(1, net::MAX_FLOWS).is_ok());
}

#[test]
fn the_pacer_allows_what_the_rate_makes_due() {
    let p = Pacer::new(1000);
    assert_eq!(p.allowed(Duration::ZERO, 0, 32), 0);
    assert_eq!(p.allowed(Duration::from_millis(10), 0, 32), 10);
    assert_eq!(p.allowed(Duration::from_millis(10), 10, 32), 0);
    assert_eq!(
        p.allowed(Duration::from_secs(1), 0, 32),
        32,
        "never more than a burst"
    );
    assert_eq!(
        p.allowed(Duration::from_millis(10), 50, 32),
        0,
        "ahead of the rate: nothing"
    );
    let fast = Pacer::new(net::MAX_RATE);
    assert_eq!(
        fast.allowed(Duration::from_secs(365 * 86400), 0, 7),
        7,
        "no overflow"
    );
}

#[test]
fn sequence_gaps_are_told_apart() {
    let mut s = SeqTracker::default();
    for i in 0..10 {
        s.see(i);
    }
    assert_eq!(
        (s.in_order, s.lost(), s.reordered, s.duplicates, s.next()),
        (10, 0, 0, 0, 10)
    );
    // 10 and 11 go missing, 12 arrives; then 11 arrives late, 11 again, 5 again.
    s.see(12);
    assert_eq!(s.lost(), 2);
    s.see(11);
    s.see(11);
    s.see(5);
    assert_eq!(
        (s.in_order, s.lost(), s.reordered, s.duplicates),
        (11, 1, 1, 2)
    );
    // A first packet that is not 0: the ones before it are missing.
    let mut t = SeqTracker::default();
    t.see(3);
    assert_eq!(t.lost(), 3);
}

#[test]
fn hostile_sequence_numbers_cost_bounded_memory() {
    let mut s = SeqTracker::default();
    s.see(u64::MAX - 1);
    assert_eq!(s.lost(), u64::MAX - 1, "counted, not remembered");
    s.see(u64::MAX);
    s.see(u64::MAX);
    s.see(0);
    assert_eq!(s.duplicates, 2);
    assert_eq!(s.in_order, 2);
    // Many small gaps fill the memory; further ones are still counted.
    let mut g = SeqTracker::default();
    for i in 0..(net::MAX_MISSING as u64 + 10) {
        g.see(2 * i + 1);
    }
    assert_eq!(g.lost(), net::MAX_MISSING as u64 + 10);
}
