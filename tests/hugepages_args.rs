//! Host tests of hugepages.sh's command line: no command, unknown commands
//! and bad arguments exit 2 with a message, and `setup` refuses page counts
//! that are not a whole number from 1 to what MemTotal holds, before
//! touching anything. Needs no root: the script is pointed at a stand-in
//! hugepage sysfs directory and meminfo in a temporary directory
//! (FASTLANE_HUGEPAGES_SYS, FASTLANE_MEMINFO), so even a run as root cannot
//! change the machine. Runs under `sh` and, where installed, busybox's ash
//! (the QEMU test guest's shell).
//!
//! The rollback of a reservation that fails part-way needs root and real
//! hugepages: tests/guest/hugepages.sh checks it in the guest.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hugepages.sh");

/// A stand-in machine: 1 GiB of memory, 2 MiB and 1 GiB hugepage sizes,
/// none reserved. Removed on drop.
struct Fake {
    root: PathBuf,
}

impl Fake {
    fn new() -> Fake {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "fastlane-hugepages-args-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        for kb in [2048, 1048576] {
            let dir = root.join(format!("hugepages/hugepages-{kb}kB"));
            fs::create_dir_all(&dir).unwrap();
            for f in ["nr_hugepages", "free_hugepages", "surplus_hugepages"] {
                fs::write(dir.join(f), "0\n").unwrap();
            }
        }
        fs::write(root.join("meminfo"), "MemTotal:        1048576 kB\nHugepagesize:       2048 kB\n").unwrap();
        Fake { root }
    }

    fn nr(&self, kb: u32) -> String {
        fs::read_to_string(self.root.join(format!("hugepages/hugepages-{kb}kB/nr_hugepages"))).unwrap()
    }

    fn run(&self, shell: &[&str], args: &[&str]) -> Output {
        Command::new(shell[0])
            .args(&shell[1..])
            .arg(SCRIPT)
            .args(args)
            .env("FASTLANE_HUGEPAGES_SYS", self.root.join("hugepages"))
            .env("FASTLANE_MEMINFO", self.root.join("meminfo"))
            .env("FASTLANE_STATE_DIR", self.root.join("state"))
            .env("HUGEMNT", self.root.join("mnt"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {shell:?}: {e}"))
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// `sh`, and busybox's ash where busybox is installed.
fn shells() -> Vec<Vec<&'static str>> {
    let mut v = vec![vec!["sh"]];
    let busybox = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join("busybox").is_file()))
        .unwrap_or(false);
    if busybox {
        v.push(vec!["busybox", "sh"]);
    }
    v
}

/// `hugepages.sh args` must exit 2 with an error containing every string
/// of `says`, and change nothing.
fn rejects(args: &[&str], says: &[&str]) {
    for sh in shells() {
        let fake = Fake::new();
        let out = fake.run(&sh, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sh:?} hugepages.sh {args:?}: expected exit 2:\n{err}");
        assert!(err.contains("error"), "{sh:?} hugepages.sh {args:?}: no error message:\n{err}");
        for s in says {
            assert!(err.contains(s), "{sh:?} hugepages.sh {args:?}: message does not say {s:?}:\n{err}");
        }
        assert_eq!(fake.nr(2048), "0\n", "{sh:?} hugepages.sh {args:?} changed nr_hugepages");
        assert_eq!(fake.nr(1048576), "0\n", "{sh:?} hugepages.sh {args:?} changed nr_hugepages (1G)");
        assert!(!fake.root.join("state").exists(), "{sh:?} hugepages.sh {args:?} wrote state");
    }
}

#[test]
fn no_command_prints_usage_and_exits_2() {
    for sh in shells() {
        let out = Fake::new().run(&sh, &[]);
        assert_eq!(out.status.code(), Some(2), "{sh:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: hugepages.sh COMMAND"), "{sh:?}");
    }
}

#[test]
fn help_exits_0() {
    for sh in shells() {
        let out = Fake::new().run(&sh, &["help"]);
        assert_eq!(out.status.code(), Some(0), "{sh:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("usage: hugepages.sh COMMAND"), "{sh:?}");
    }
}

#[test]
fn unknown_commands_and_stray_arguments_exit_2() {
    rejects(&["frobnicate"], &["unknown command 'frobnicate'"]);
    rejects(&["--setup"], &["unknown command"]);
    rejects(&["status", "now"], &["takes no arguments"]);
    rejects(&["reset", "all"], &["takes no arguments"]);
    rejects(&["bind"], &["PCI address"]);
    rejects(&["unbind"], &["PCI address"]);
    rejects(&["bind", "zz:zz.z"], &["malformed PCI address"]);
}

#[test]
fn setup_refuses_counts_memory_cannot_hold() {
    // 1 GiB of MemTotal holds 512 pages of 2 MiB and one of 1 GiB.
    rejects(&["setup", "4294967296"], &["4294967296", "MemTotal", "at most 512"]);
    rejects(&["setup", "513"], &["at most 512"]);
    rejects(&["setup", "99999999999999999999999999"], &["at most 512"]);
    rejects(&["setup", "2", "--size", "1G"], &["at most 1"]);
}

#[test]
fn setup_refuses_malformed_counts_and_options() {
    for bad in ["0", "000", "-1", "-5", "abc", "1.5", "1e3", "+8", ""] {
        rejects(&["setup", bad], &["page count"]);
    }
    rejects(&["setup", "8", "16"], &["more than one page count"]);
    rejects(&["setup", "8", "--size", "2M", "--size", "1G"], &["--size given twice"]);
    rejects(&["setup", "8", "--size"], &["--size needs a value"]);
    rejects(&["setup", "8", "--size", "huge"], &["bad page size"]);
    rejects(&["setup", "--bogus"], &["unknown option '--bogus'"]);
}
