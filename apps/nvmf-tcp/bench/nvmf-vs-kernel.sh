#!/usr/bin/env bash
# The nvmf-tcp target against the Linux kernel's own NVMe/TCP target (nvmet +
# nvmet-tcp), both exporting the same emulated NVMe controller of one QEMU
# guest, both read by the same client: Linux's nvme-tcp initiator over
# loopback and Debian's fio (io_uring, direct) on its block device.
#
#   ours    nvmf-tcp (this crate, static build), controller on vfio-pci
#   kernel  nvmet with the namespace's device_path on the kernel nvme
#           driver's block device, nvmet-tcp port 127.0.0.1:4420
#
# One boot; per case the targets run interleaved, ours kernel kernel ours
# ours kernel ... (each switch moves the controller between vfio-pci and the
# kernel nvme driver and reconnects the initiator). Cases: 4 KiB random read
# at queue depth 1 and 32, 128 KiB sequential read at queue depth 32. The
# table reports medians over the rounds.
#
# CPU per I/O: non-idle guest CPU time (both vCPUs, /proc/stat, 10 ms ticks)
# over a steady-state window inside each fio run (from 0.5 s after fio forks
# its job process, BENCH_TIME - 1.6 s long) divided by fio's IOPS times the
# window: target, initiator and fio together, the same client for both, so
# the difference is the target's.
#
#   apps/nvmf-tcp/bench/nvmf-vs-kernel.sh
#   BENCH_ROUNDS=2 BENCH_TIME=4 FASTLANE_NVME_BACKEND=null apps/nvmf-tcp/bench/nvmf-vs-kernel.sh
#
# Environment: FASTLANE_NVME_BACKEND (image: vm/run.sh's sparse 256 MiB
# image file, default; null: QEMU's null-co, reads return zeroes),
# BENCH_ROUNDS (3), BENCH_TIME (seconds per fio run, 5, at least 3),
# BENCH_CASES (all three: randread4k_qd1 randread4k_qd32 seqread128k_qd32),
# BENCH_TARGET_ARGS (extra nvmf-tcp arguments, default "--io-queues 2"),
# BENCH_TARGET_ARGS_B (a second nvmf-tcp configuration, "ours-b", measured
# in the same rounds: A/B of target options against the same kernel runs),
# BENCH_CONNECT_EXTRA (appended to the initiator's connect options for both
# targets, e.g. ",nr_io_queues=1"), BENCH_DIAG (1: DIAG lines in the console
# log: per-vCPU time, interrupts, threads), BENCH_SOURCE (head: build the
# last commit from a snapshot, default; tree: the working tree),
# BENCH_NVMF_BIN (measure this static nvmf-tcp binary instead),
# BENCH_TARGET_CPUS (guest CPUs for nvmf-tcp, taskset list, e.g. 0),
# BENCH_FIO_CPUS (fio --cpus_allowed, for both targets, e.g. 1). Takes
# /tmp/fastlane-vm.lock itself.
# Results: .cache/bench/nvmf-vs-kernel/<time>/{console.log,results.md}
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cd "$repo"

backend="${FASTLANE_NVME_BACKEND:-image}"
rounds="${BENCH_ROUNDS:-3}"
secs="${BENCH_TIME:-5}"
cases="${BENCH_CASES:-randread4k_qd1 randread4k_qd32 seqread128k_qd32}"
target_args="${BENCH_TARGET_ARGS:---io-queues 2}"
target_args_b="${BENCH_TARGET_ARGS_B:-}"
connect_extra="${BENCH_CONNECT_EXTRA:-}"
case "$rounds$secs" in *[!0-9]*) echo "nvmf-vs-kernel: BENCH_ROUNDS and BENCH_TIME are whole numbers" >&2; exit 2 ;; esac
[ "$secs" -ge 3 ] || { echo "nvmf-vs-kernel: BENCH_TIME must be at least 3 (the CPU window starts about 1 s in)" >&2; exit 2; }
case "$backend" in
    image) drive="" ;;
    null) drive="driver=null-co,read-zeroes=on,size=1G" ;;
    *) echo "nvmf-vs-kernel: FASTLANE_NVME_BACKEND is image or null" >&2; exit 2 ;;
esac
out="$repo/.cache/bench/nvmf-vs-kernel/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
log() { echo "nvmf-vs-kernel: $*" >&2; }

# --- the target, static (the guest has no libc of its own for it) -----------
triple=x86_64-unknown-linux-gnu
build() {   # source dir, target dir
    (cd "$1" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_TARGET_DIR="$2" \
        cargo build --release --quiet --target "$triple" -p fastlane-nvmf-tcp) > "$out/build.log" 2>&1 \
        || { tail -30 "$out/build.log" >&2; log "build failed (whole log: $out/build.log)"; exit 1; }
    cp "$2/$triple/release/nvmf-tcp" "$out/nvmf-tcp"
}
if [ -n "${BENCH_NVMF_BIN:-}" ]; then
    cp "$BENCH_NVMF_BIN" "$out/nvmf-tcp"
    built="binary $BENCH_NVMF_BIN"
elif [ "${BENCH_SOURCE:-head}" = tree ]; then
    log "building nvmf-tcp from the working tree"
    build "$repo" "$repo/target"
    built="working tree at $(git rev-parse --short HEAD)"
    git diff --quiet HEAD -- apps/nvmf-tcp/src apps/nvmf-tcp/Cargo.toml drivers/nvme framework Cargo.lock \
        || built="$built + local changes"
else
    # The last commit, whatever others have half-edited in the working tree.
    commit="$(git rev-parse --short HEAD)"
    log "building nvmf-tcp from commit $commit"
    snap="$repo/.cache/bench/nvmf-head-src"
    rm -rf "$snap"; mkdir -p "$snap"
    git archive HEAD | tar -x -C "$snap"
    build "$snap" "$repo/.cache/bench/nvmf-head-target"
    built="at commit $commit"
fi
log "nvmf-tcp: $built"

# --- one boot --------------------------------------------------------------------
ntargets=2; [ -z "$target_args_b" ] || ntargets=3
guest_time=$(( rounds * ntargets * 3 * (secs + 15) + 240 ))
log "booting the guest: backend $backend, $rounds rounds x cases ($cases) x 2 targets x ${secs}s"
# QEMU 10's multi-threaded TCG can abort when the controller moves between
# drivers ("iotlb_to_section: Assertion ... failed"): boot again then.
for try in 1 2 3; do
    set +e
    FASTLANE_NVME_DRIVE="$drive" \
    FASTLANE_GUEST_ENV="BENCH_BACKEND=$backend BENCH_ROUNDS=$rounds BENCH_TIME=$secs BENCH_CASES=${cases// /,} BENCH_TARGET_ARGS=${target_args// /,} BENCH_TARGET_ARGS_B=${target_args_b// /,} BENCH_CONNECT_EXTRA=$connect_extra BENCH_DIAG=${BENCH_DIAG:-} BENCH_TARGET_CPUS=${BENCH_TARGET_CPUS:-} BENCH_FIO_CPUS=${BENCH_FIO_CPUS:-}" \
        flock /tmp/fastlane-vm.lock "$repo/vm/run.sh" --peers --mem 2G --timeout "$guest_time" \
        --bin "$out/nvmf-tcp" --script "$here/guest-nvmf-vs-kernel.sh" > "$out/console.log"
    rc=$?
    set -e
    [ "$rc" = 125 ] && grep -aq 'Assertion' "$out/console.log" || break
    mv "$out/console.log" "$out/console.crash$try.log"
    log "QEMU aborted: $(grep -a Assertion "$out/console.crash$try.log" | head -1); booting again"
done
grep -a -o 'BENCH target=.*\|BENCH backend=.*' "$out/console.log" | cut -c1-140 >&2 || true
[ "$rc" = 0 ] || { log "guest failed (rc $rc), see $out/console.log"; tail -40 "$out/console.log" >&2; exit 1; }

# --- table -------------------------------------------------------------------------
python3 - "$out" "$built" "$backend" "$target_args" "$connect_extra" "${BENCH_TARGET_CPUS:-}" "${BENCH_FIO_CPUS:-}" "$target_args_b" > "$out/results.md" <<'PY'
import json, re, statistics, sys
out, built, backend, targs, cextra = sys.argv[1:6]
targs_b = sys.argv[8]
nan = float("nan")
runs = []
for line in open(f"{out}/console.log", errors="replace"):
    m = re.search(r"BENCH (backend=.*)", line)
    if not m:
        continue
    head, _, js = m.group(1).rstrip("\n").partition(" json=")
    kv = dict(f.split("=", 1) for f in head.split())
    if kv["rc"] != "0":
        print(f"failed run: {head}", file=sys.stderr)
        continue
    rd = json.loads(js)["jobs"][0]["read"]
    iops, ios = rd["iops"], rd["total_ios"]
    hz = int(kv["hz"])
    busy = lambda a, b: (int(kv[b].split(",")[0]) - int(kv[a].split(",")[0])) / hz
    steady = win = wbusy = nan
    if kv["inside"] == "1":
        w0, w1 = map(float, kv["winup"].split(","))
        win, wbusy = w1 - w0, busy("win0", "win1")
        steady = wbusy * 1e6 / (iops * win)
    runs.append(dict(target=kv["target"], case=kv["case"], round=int(kv["round"]), iops=iops, ios=ios,
                     lat=rd["clat_ns"]["mean"] / 1000, win=win, wbusy=wbusy, steady=steady,
                     cpu=wbusy / win * 100 if win == win else nan, dev=kv.get("dev", "")))

def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else nan

cases = ["randread4k_qd1", "randread4k_qd32", "seqread128k_qd32"]
label = {"randread4k_qd1": "4 KiB rand read QD1", "randread4k_qd32": "4 KiB rand read QD32",
         "seqread128k_qd32": "128 KiB seq read QD32"}
pins = " ".join(f"{k}={v}" for k, v in (("nvmf-tcp on CPUs", sys.argv[6]), ("fio on CPUs", sys.argv[7])) if v)
if targs_b:
    print(f"ours-b: nvmf-tcp with {targs_b}, in the same rounds.")
print(f"nvmf-tcp {built} ({targs or 'defaults'}{'; ' + pins if pins else ''}) against nvmet-tcp; client: Linux nvme-tcp over loopback"
      f"{' (' + cextra + ')' if cextra else ''}, Debian fio 3.33 io_uring --direct=1. Backend: {backend}.")
print("Medians over the rounds. CPU: non-idle guest CPU time (2 vCPUs: target, initiator and fio) per I/O,")
print("steady state inside each fio run.\n")
print("| case | ours IOPS | kernel IOPS | IOPS ours/kernel | ours CPU µs/IO | kernel CPU µs/IO | CPU ours/kernel | rounds |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for c in cases:
    for ours in ("ours", "ours-b"):
        o = [r for r in runs if r["case"] == c and r["target"] == ours]
        k = [r for r in runs if r["case"] == c and r["target"] == "kernel"]
        if not o:
            continue
        oi, ki = med([r["iops"] for r in o]), med([r["iops"] for r in k])
        oc, kc = med([r["steady"] for r in o]), med([r["steady"] for r in k])
        name = label[c] + (" (ours-b)" if ours == "ours-b" else "")
        print(f"| {name} | {oi:,.0f} | {ki:,.0f} | {oi / ki:.2f} | {oc:.0f} | {kc:.0f} | {oc / kc:.2f} | {len(o)}+{len(k)} |")
print("\nEvery run (window: the steady-state CPU sample; busy: non-idle CPU % of the 2 vCPUs in it).\n")
print("| case | round | target | IOPS | I/Os | mean latency µs | window s | busy % | CPU µs/IO | device |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
for r in runs:
    print(f"| {r['case']} | {r['round']} | {r['target']} | {r['iops']:,.0f} | {r['ios']} | {r['lat']:,.0f} "
          f"| {r['win']:.2f} | {r['cpu'] / 2:.0f} | {r['steady']:.0f} | {r['dev']} |")
PY
cat "$out/results.md"
log "results in $out/results.md"
