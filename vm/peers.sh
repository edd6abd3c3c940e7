#!/usr/bin/env bash
# Builds a sysroot with the peer programs this project measures itself
# against, taken from Debian bookworm's binary packages:
#
#   /usr/bin/fio            (package fio: the kernel NVMe driver's load generator)
#   /usr/bin/dpdk-testpmd   (package dpdk-dev; the dpdk package itself holds
#                            only the python helper scripts)
#   DPDK plugins in /usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0/: the igb PMD
#   (librte-net-e1000-23), the ring mempool and the PCI and vdev buses
#   /usr/bin/valgrind       (package valgrind, its wrapper script and valgrind.bin;
#                            callgrind only, the tool and its
#                            preload library, for instructions per I/O)
#   the run-time libraries of SPDK's spdk_nvme_perf built against this DPDK
#   (librte_power and its dependencies, libuuid, libnuma, libaio, OpenSSL)
#   and OpenSSL's /usr/lib/ssl/openssl.cnf (SPDK's env init loads OpenSSL);
#   SPDK itself is built from source (benches/vm/spdk/build-spdk.sh) and added by
#   vm/run.sh --spdk DIR
#
# with every shared library they need, glibc's loader at /lib64/ and an
# /etc/ld.so.cache. vm/run.sh --peers copies the sysroot into the guest's
# initramfs. Nothing is installed on the host: the packages are fetched with
# `apt-get download` into $cache/peers-debs and unpacked with `dpkg-deb -x`.
#
# The package set is the Depends closure of the roots, following library
# packages only (python3, init scripts and -dev packages are left out); the
# sysroot then keeps only the files the ELF dependency closure of the
# binaries and plugins reaches, so docs, man pages and unused libraries are
# not copied. Finally every ELF file in it is resolved with the sysroot's own
# loader; a library missing or found outside the sysroot is an error.
#
# Idempotent: a sysroot built by this version of the script is reused as is
# (delete $cache/peers-root, or pass --force, to rebuild).
#
# Usage: vm/peers.sh [--force]     prints the sysroot path on stdout
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${FASTLANE_VM_CACHE:-$repo/.cache/vm}"
debs="$cache/peers-debs"
stage="$cache/peers-stage"
root="$cache/peers-root"
stamp="$cache/peers-root.stamp"

# Root packages and, from them, the files the guest runs.
packages=(fio dpdk-dev librte-net-e1000-23 librte-mempool-ring23 librte-bus-pci23 librte-bus-vdev23
          valgrind openssl librte-power23 libuuid1 libnuma1 libaio1 libssl3)
binaries=(usr/bin/fio usr/bin/dpdk-testpmd usr/bin/valgrind.bin)
pmddir=usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0
plugins=(librte_net_e1000.so.23 librte_mempool_ring.so.23 librte_bus_pci.so.23 librte_bus_vdev.so.23)
# More shared objects whose closure goes in (SPDK's run-time libraries,
# valgrind's preload library), and plain files (valgrind's callgrind tool is
# a static executable).
libdir=usr/lib/x86_64-linux-gnu
more_elves=($libdir/librte_power.so.23 $libdir/libuuid.so.1 $libdir/libnuma.so.1 $libdir/libaio.so.1
            $libdir/libssl.so.3 $libdir/libcrypto.so.3 usr/libexec/valgrind/vgpreload_core-amd64-linux.so)
more_files=(usr/bin/valgrind usr/libexec/valgrind/callgrind-amd64-linux usr/libexec/valgrind/default.supp
            usr/lib/ssl/openssl.cnf etc/ssl/openssl.cnf)
# Packages not named lib* that hold shared objects the others need.
extra_follow="ibverbs-providers zlib1g"

log() { echo "peers.sh: $*" >&2; }
die() { echo "peers.sh: $*" >&2; exit 1; }

force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
    *) die "unknown argument: $1 (usage: vm/peers.sh [--force])" ;;
esac

want="$(sha256sum "$0" | cut -c1-16)"
if [ "$force" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$root/usr/bin/fio" ]; then
    echo "$root"
    exit 0
fi
for t in apt-get apt-cache dpkg-deb python3 ldconfig; do
    command -v "$t" >/dev/null || die "$t not found (a Debian host is expected)"
done

# --- package closure ----------------------------------------------------------
# `apt-cache depends` for one level of the closure at a time: the first
# alternative of each Depends/PreDepends, the first provider of a virtual
# package; only library packages (lib*, not -dev/-bin) are followed.
closure() {
    python3 - "$extra_follow" "$@" <<'PY'
import re, subprocess, sys
extra = set(sys.argv[1].split())
roots = sys.argv[2:]
def follow(n):
    return n in extra or (n.startswith("lib") and not n.endswith(("-dev", "-bin", "-common-dev")))
seen, todo = set(roots), list(roots)
while todo:
    out = subprocess.run(["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                          "--no-breaks", "--no-replaces", "--no-enhances"] + todo,
                         capture_output=True, text=True, check=True).stdout
    todo, alt, want_provider = [], False, False
    def add(n):
        n = n.split(":")[0]
        if follow(n) and n not in seen:
            seen.add(n); todo.append(n)
    for line in out.splitlines():
        m = re.match(r"^ ([| ])(?:Pre)?Depends: (\S+)", line)
        if m:
            skip, alt = alt, m.group(1) == "|"
            want_provider = False
            if skip:
                continue
            if m.group(2).startswith("<"):
                want_provider = True
            else:
                add(m.group(2))
        elif line.startswith("    ") and want_provider:
            add(line.strip()); want_provider = False
        elif not line.startswith(" "):
            alt = want_provider = False
print("\n".join(sorted(seen)))
PY
}

log "resolving the package closure of ${packages[*]}"
mapfile -t all < <(closure "${packages[@]}")
[ "${#all[@]}" -gt 0 ] || die "apt-cache found nothing (run apt-get update?)"

# --- download (cached) -------------------------------------------------------
mkdir -p "$debs"
missing=()
while read -r pkg ver; do
    v="${ver//:/%3a}"
    ls "$debs/${pkg}_${v}_"*.deb >/dev/null 2>&1 || missing+=("$pkg")
done < <(apt-cache show --no-all-versions "${all[@]}" | awk '/^Package:/ {p=$2} /^Version:/ {print p, $2}')
if [ "${#missing[@]}" -gt 0 ]; then
    log "downloading ${#missing[@]} of ${#all[@]} packages into $debs"
    # _apt cannot write into a root-owned cache directory: download as the caller.
    (cd "$debs" && apt-get download -o APT::Sandbox::User="$(id -un)" "${missing[@]}" >/dev/null)
fi

# --- unpack everything into a staging tree -------------------------------------
rm -rf "$stage"
mkdir -p "$stage"
for pkg in "${all[@]}"; do
    deb="$(ls -t "$debs/${pkg}_"*.deb 2>/dev/null | head -1)"
    [ -n "$deb" ] || die "no .deb for $pkg in $debs"
    dpkg-deb -x "$deb" "$stage"
done
for b in "${binaries[@]}"; do [ -f "$stage/$b" ] || die "$b not in the packages"; done
for p in "${plugins[@]}"; do [ -e "$stage/$pmddir/$p" ] || die "$pmddir/$p not in the packages"; done
for f in "${more_elves[@]}" "${more_files[@]}"; do [ -e "$stage/$f" ] || die "$f not in the packages"; done

# --- copy the ELF closure into the sysroot -----------------------------------
# Symbolic links are kept as links, so that a DPDK plugin loaded from the
# plugin directory and the same library linked by name are one file (one
# inode) and glibc loads it once.
rm -rf "$root"
mkdir -p "$root"
python3 - "$stage" "$root" "$pmddir" "${binaries[@]}" "${more_elves[@]}" -- "${plugins[@]}" -- "${more_files[@]}" <<'PY'
import os, shutil, subprocess, sys
stage, root, pmddir = sys.argv[1:4]
rest = sys.argv[4:]
cut = rest.index("--")
binaries, rest = rest[:cut], rest[cut + 1:]
cut = rest.index("--")
plugins, files = rest[:cut], rest[cut + 1:]
loader = "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"

def lib_dirs(top):
    dirs = set()
    for d, _, files in os.walk(top):
        if any(".so" in f for f in files):
            dirs.add(d)
    return ":".join(sorted(dirs))

path = lib_dirs(stage)

def needed(elf):
    out = subprocess.run([os.path.join(stage, loader), "--inhibit-cache", "--library-path", path, "--list", elf],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"peers.sh: cannot resolve {elf}: {out.stderr.strip() or out.stdout.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target == "not":
                sys.exit(f"peers.sh: {elf}: {parts[0]} not found in the packages")
            libs.append(target)
    return libs

def copy_chain(rel):
    """Copies stage/rel into root, link by link."""
    while True:
        src, dst = os.path.join(stage, rel), os.path.join(root, rel)
        if os.path.lexists(dst):
            return
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src):
            link = os.readlink(src)
            os.symlink(link, dst)
            rel = os.path.normpath(link.lstrip("/") if link.startswith("/") else os.path.join(os.path.dirname(rel), link))
        else:
            shutil.copy2(src, dst)
            return

elves = [os.path.join(stage, b) for b in binaries] + [os.path.join(stage, pmddir, p) for p in plugins]
for e in elves:
    copy_chain(os.path.relpath(e, stage))
    for lib in needed(e):
        lib = os.path.realpath(lib) if not lib.startswith(stage) else lib
        if not lib.startswith(stage + "/"):
            sys.exit(f"peers.sh: {e}: {lib} resolved outside the packages")
        copy_chain(os.path.relpath(lib, stage))
for f in files:
    copy_chain(f)
copy_chain(loader)
os.makedirs(os.path.join(root, "lib64"), exist_ok=True)
os.symlink("/" + loader, os.path.join(root, "lib64/ld-linux-x86-64.so.2"))
PY

# ld.so.cache for the guest, over every directory holding a library.
mkdir -p "$root/etc"
(cd "$root" && find . -path ./lib64 -prune -o -name 'lib*.so*' -printf '%h\n' | sed 's|^\.||' | sort -u) > "$root/etc/ld.so.conf"
ldconfig -X -r "$root" 2>/dev/null || log "ldconfig -r failed; the guest's loader searches its default directories"

# --- verify ---------------------------------------------------------------------
# Every ELF file resolves with the sysroot's loader to files inside the
# sysroot, symbols included; fio runs. (dpdk-testpmd is not run here: EAL
# would leave files in the host's /var/run/dpdk.)
ld="$root/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
libpath="$(sed "s|^|$root|" "$root/etc/ld.so.conf" | paste -sd:)"
bad=0 n=0
while IFS= read -r -d '' f; do
    head -c4 "$f" | grep -q $'\x7fELF' || continue
    [ "$f" = "$ld" ] && continue
    # Static executables (valgrind's tools) need nothing.
    LC_ALL=C readelf -d "$f" 2>/dev/null | grep -q 'no dynamic section' && continue
    n=$((n + 1))
    # As `ldd -r`: bind every symbol now and report what does not resolve.
    out="$(LD_WARN=yes LD_BIND_NOW=yes "$ld" --inhibit-cache --library-path "$libpath" --list "$f" 2>&1)" \
        || { log "cannot resolve $f: $out"; bad=1; continue; }
    while read -r name arrow target _; do
        case "$name" in undefined|symbol*) log "${f#"$root"}: $name $arrow $target"; bad=1; continue ;; esac
        [ "$arrow" = "=>" ] || continue
        case "$target" in
            "$root"/*) ;;
            *) log "${f#"$root"}: $name => $target"; bad=1 ;;
        esac
    done <<<"$out"
done < <(find "$root" -type f -print0)
[ "$bad" = 0 ] || die "unresolved libraries in $root"
"$ld" --inhibit-cache --library-path "$libpath" "$root/usr/bin/fio" --version >/dev/null \
    || die "fio from the sysroot does not run"

rm -rf "$stage"
echo "$want" > "$stamp"
log "sysroot $root: $n ELF files resolved, $(du -sh "$root" | cut -f1); fio $("$ld" --library-path "$libpath" "$root/usr/bin/fio" --version)"
echo "$root"
