#!/usr/bin/env bash
# fastlane's NVMe driver (examples/nvme_read) against the kernel NVMe driver
# driven by Debian's fio with io_uring, in the same QEMU guest, on the same
# emulated controller. Software emulation varies a lot from boot to boot, so
# both run in one boot, interleaved (ours, fio, ours, fio, ...), and the
# table reports medians and ratios.
#
#   benches/vm/nvme-vs-fio.sh                   both backends, 3 rounds of 5 s
#   BENCH_BACKENDS=null BENCH_ROUNDS=2 BENCH_TIME=3 benches/vm/nvme-vs-fio.sh
#
# Order within a case: ours fio, fio ours, ours fio, ... (each switch moves
# the controller between vfio-pci and the kernel driver).
# One guest boot per NVMe backend and case (as nvme-vs-spdk.sh: a case's
# place in a boot mattered):
#   image  the raw sparse image file vm/run.sh creates (256 MiB)
#   null   QEMU's null-co driver (reads return zeroes at almost no cost)
# Cases: 4 KiB random read at queue depth 1 and 32, 128 KiB sequential read
# at queue depth 32. One queue, one thread for both.
#
#   ours  nvme_read --json, controller bound to vfio-pci, 2 MiB hugepages
#   fio   kernel nvme driver loaded with poll_queues=1, fio --ioengine=io_uring
#         --hipri --direct=1 on /dev/nvmeXn1 (the only polled path on this
#         kernel; the guest checks queue/io_poll)
#
# IOPS come from runs with nothing else in the guest meanwhile (under
# single-threaded TCG a process the script starts during a run takes the
# polling vCPU's time); nvme_read runs --quiet there. CPU time per I/O
# comes from one more run per tool and case after the IOPS rounds (its
# IOPS are not counted): non-idle guest CPU time (all vCPUs, /proc/stat,
# 10 ms ticks), the same measure for both tools:
#   steady    over a window inside the tool's measured run (BENCH_TIME - 1.6
#             s long, from nvme_read's first progress line, 1 s into its run,
#             and from 0.5 s after fio forks its job process), divided by the
#             tool's IOPS times the window length
#   whole     from the start to the exit of the command, divided by the I/Os
#             it reports: includes start-up and teardown (controller reset
#             and queue creation for ours; loading about 100 shared libraries
#             and job setup for fio, which is slow under emulation)
#
# Environment: BENCH_BACKENDS (image null), BENCH_CASES (randread4k_qd1
# randread4k_qd32 seqread128k_qd32), BENCH_ROUNDS (3), BENCH_TIME
# (seconds per run, 5, at least 3), BENCH_SOURCE (auto: build the working tree, and if it
# does not compile, the last commit; tree; head), FASTLANE_VM_CACHE.
# Results: .cache/bench/nvme-vs-fio/<time>/{console-*.log,results.md}
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

backends="${BENCH_BACKENDS:-image null}"
cases="${BENCH_CASES:-randread4k_qd1 randread4k_qd32 seqread128k_qd32}"
rounds="${BENCH_ROUNDS:-3}"
secs="${BENCH_TIME:-5}"
case "$rounds$secs" in *[!0-9]*) echo "nvme-vs-fio: BENCH_ROUNDS and BENCH_TIME are whole numbers" >&2; exit 2 ;; esac
[ "$secs" -ge 3 ] || { echo "nvme-vs-fio: BENCH_TIME must be at least 3 (the CPU window starts 1 s in)" >&2; exit 2; }
out="$repo/.cache/bench/nvme-vs-fio/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
log() { echo "nvme-vs-fio: $*" >&2; }

# --- our binary (static: the guest has no libc of its own for it) ------------
. "$here/lib-build-nvme-read.sh"
build_nvme_read "$out"
log "nvme_read: $built"

# --- the guest script ----------------------------------------------------------
cat > "$out/guest.sh" <<'GUEST'
#!/bin/sh
# Runs in the guest (busybox sh). Prints one "BENCH ..." line per run.
set -u
N="$FASTLANE_NVME"
T="$BENCH_TIME"
ROUNDS="$BENCH_ROUNDS"

hugepages.sh setup 256 >/dev/null || exit 1
hugepages.sh bind "$N" >/dev/null || exit 1
# The kernel NVMe driver, with a polled queue for io_uring --hipri. It does
# not take the controller while vfio-pci has it (driver_override).
while read -r m; do
    [ -n "$m" ] || continue
    arg=""; [ "$m" = nvme ] && arg="poll_queues=1"
    insmod "/lib/modules-extra/$m.ko" $arg || { echo "insmod $m failed"; exit 1; }
done < /lib/modules-extra/ORDER

cpu() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

to_kernel() {
    hugepages.sh unbind "$N" >/dev/null || return 1
    echo "$N" > /sys/bus/pci/drivers/nvme/bind || return 1
    i=0
    while [ $i -lt 200 ]; do
        DEV="$(ls /dev/nvme[0-9]*n1 2>/dev/null | head -1)"
        [ -n "$DEV" ] && [ -b "$DEV" ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    echo "no /dev/nvme*n1 after binding the kernel driver"; return 1
}
to_vfio() {
    echo "$N" > /sys/bus/pci/drivers/nvme/unbind || return 1
    hugepages.sh bind "$N" >/dev/null
}

# Steady-state window: from the moment READY says the tool's measured run
# has begun for WIN seconds, so that it ends before the run does.
WIN="$(awk -v t="$T" 'BEGIN { print t - 1.6 }')"
# nvme_read prints "[  1.0 s] ... IOPS" on stderr (unbuffered) a second into its run.
ready_ours() { grep -q -E ' s\] .*IOPS' /tmp/err 2>/dev/null; }
# fio forks its job process just before the job runs (its status output is
# stdio-buffered, so no use here); wait half a second more for job setup.
ready_fio() { awk -v p="$pid" '$4 == p { f = 1 } END { exit !f }' /proc/[0-9]*/stat 2>/dev/null && sleep 0.5; }

# measure TOOL CASE ROUND READY WINDOW RESULT-FILE CMD...: runs CMD (stdout
# to /tmp/out, stderr to /tmp/err), samples /proc/stat at its start and end
# and, with WINDOW=1, over the window that opens when the shell function
# READY succeeds; prints the marker line with RESULT-FILE's JSON. WINDOW=0:
# nothing else runs in the guest until CMD exits.
measure() {
    tool=$1 case=$2 round=$3 ready=$4 window=$5 result=$6; shift 6
    rm -f /tmp/out /tmp/err "$result"
    c0="$(cpu)"; u0="$(uptime_s)"
    "$@" > /tmp/out 2> /tmp/err &
    pid=$!
    # nvme_read measures from its start, and every check below forks: none
    # in its first second (single-threaded TCG runs both vCPUs in one host
    # thread, so a process started on the other vCPU takes the polling one's
    # time; the peers' checks fall in their start-up, outside their runs).
    [ "$window" = 1 ] && [ $tool = ours ] && sleep 1.1
    w0="- -" w1="- -" uw0=- uw1=- inside=0
    while [ "$window" = 1 ] && kill -0 $pid 2>/dev/null; do
        if $ready; then
            w0="$(cpu)"; uw0="$(uptime_s)"
            sleep "$WIN"
            w1="$(cpu)"; uw1="$(uptime_s)"
            kill -0 $pid 2>/dev/null && inside=1
            break
        fi
        sleep 0.05
    done
    wait $pid
    rc=$?
    c1="$(cpu)"; u1="$(uptime_s)"
    [ $rc = 0 ] || { echo "$tool $case round $round failed (rc $rc):"; tail -5 /tmp/err; }
    echo "BENCH backend=$BENCH_BACKEND tool=$tool case=$case round=$round window=$window rc=$rc cpu0=${c0% *},${c0#* } cpu1=${c1% *},${c1#* } up=$u0,$u1 win0=${w0% *},${w0#* } win1=${w1% *},${w1#* } winup=$uw0,$uw1 inside=$inside hz=100 extra=${EXTRA:-} json=$(tr -d '\n' < "$result")"
}

owner=vfio   # who has the controller: vfio (ours) or kernel (fio)
# name queue-depth io-size pattern fio-rw
for spec in "randread4k_qd1 1 4096 rand randread" "randread4k_qd32 32 4096 rand randread" "seqread128k_qd32 32 131072 seq read"; do
    set -- $spec
    name=$1 qd=$2 bs=$3 pat=$4 rw=$5
    case " $BENCH_CASES " in *" $name "*) ;; *) continue ;; esac
    r=1
    # ROUNDS rounds for IOPS, then one with the CPU window.
    while [ $r -le $((ROUNDS + 1)) ]; do
        window=0; quiet=--quiet
        [ $r -gt "$ROUNDS" ] && { window=1; quiet=""; }
        # Interleaved A B B A A B ...: half the driver switches of A B A B.
        if [ "$owner" = vfio ]; then order="ours fio"; else order="fio ours"; fi
        for tool in $order; do
            if [ $tool = ours ]; then
                [ "$owner" = vfio ] || { to_vfio || exit 1; owner=vfio; }
                EXTRA=""
                # shellcheck disable=SC2086
                measure ours "$name" $r ready_ours $window /tmp/out \
                    /bin/nvme_read --json $quiet --time "$T" --queue-depth "$qd" --io-size "$bs" --pattern "$pat"
            else
                [ "$owner" = kernel ] || { to_kernel || exit 1; owner=kernel; }
                b="${DEV#/dev/}"
                EXTRA="dev=$b,io_poll=$(cat /sys/block/$b/queue/io_poll 2>/dev/null)"
                measure fio "$name" $r ready_fio $window /tmp/fio.json \
                    fio --name=x --filename="$DEV" --direct=1 --ioengine=io_uring --hipri \
                    --rw="$rw" --bs="$bs" --iodepth="$qd" --time_based --runtime="$T" --norandommap --randrepeat=0 \
                    --output-format=json --output=/tmp/fio.json
            fi
        done
        r=$((r + 1))
    done
done
GUEST

# --- one boot per backend --------------------------------------------------------
for be in $backends; do
    case "$be" in
        image) drive="" ;;
        null) drive="driver=null-co,read-zeroes=on,size=1G" ;;
        *) log "unknown backend $be (image, null)"; exit 2 ;;
    esac
  for c in $cases; do
    con="$out/console-$be-$c.log"
    log "backend $be, $c: booting the guest ($rounds + 1 rounds x 2 tools x ${secs}s)"
    # QEMU 10's multi-threaded TCG sometimes aborts when the controller moves
    # between drivers ("iotlb_to_section: Assertion ... failed"): boot again.
    for try in 1 2 3 4; do
        set +e
        FASTLANE_NVME_DRIVE="$drive" \
        FASTLANE_GUEST_ENV="BENCH_BACKEND=$be BENCH_CASES=$c BENCH_ROUNDS=$rounds BENCH_TIME=$secs" \
            "$repo/vm/run.sh" --peers --no-tap --mem 2G --timeout 1200 --bin "$out/nvme_read" --script "$out/guest.sh" \
            > "$con"
        rc=$?
        set -e
        [ "$rc" = 125 ] && grep -aq 'Assertion' "$con" || break
        mv "$con" "${con%.log}.crash$try.log"
        log "QEMU aborted: $(grep -a Assertion "${con%.log}.crash$try.log" | head -1); booting again"
    done
    grep -a -o 'BENCH backend=.*' "$con" | cut -c1-150 >&2 || true
    [ "$rc" = 0 ] || { log "guest failed (rc $rc), see $con"; tail -30 "$con" >&2; exit 1; }
  done
done

# --- table --------------------------------------------------------------------------
python3 - "$out" "$built" $backends > "$out/results.md" <<'PY'
import glob, json, re, statistics, sys
out, built, backends = sys.argv[1], sys.argv[2], sys.argv[3:]
nan = float("nan")
runs = []
for be in backends:
  # One console per backend and case (per backend in results from before).
  for con in sorted(glob.glob(f"{out}/console-{be}-*.log")) or [f"{out}/console-{be}.log"]:
    if ".crash" in con:
        continue
    for line in open(con, errors="replace"):
        m = re.search(r"BENCH (backend=.*)", line)
        if not m:
            continue
        head, _, js = m.group(1).rstrip("\n").partition(" json=")
        kv = dict(f.split("=", 1) for f in head.split())
        if kv["rc"] != "0":
            print(f"failed run: {head}", file=sys.stderr)
            continue
        d = json.loads(js)
        if kv["tool"] == "ours":
            ios, iops, secs = d["ios"], d["iops"], d["seconds"]
        else:
            job = d["jobs"][0]
            ios, iops, secs = job["read"]["total_ios"], job["read"]["iops"], job["read"]["runtime"] / 1000
        hz = int(kv["hz"])
        busy = lambda a, b: (int(kv[b].split(",")[0]) - int(kv[a].split(",")[0])) / hz
        u0, u1 = map(float, kv["up"].split(","))
        whole = busy("cpu0", "cpu1")
        steady = win = nan
        if kv["inside"] == "1":
            w0, w1 = map(float, kv["winup"].split(","))
            win = w1 - w0
            steady = busy("win0", "win1") * 1e6 / (iops * win)
        runs.append(dict(backend=kv["backend"], tool=kv["tool"], case=kv["case"], round=int(kv["round"]),
                         window=kv.get("window", "1") == "1", iops=iops, ios=ios, secs=secs, wall=u1 - u0, whole_s=whole, win=win,
                         win_busy=busy("win0", "win1") if win == win else nan,
                         steady=steady, whole=whole * 1e6 / ios if ios else nan, extra=kv.get("extra", "")))

def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else nan

cases = ["randread4k_qd1", "randread4k_qd32", "seqread128k_qd32"]
label = {"randread4k_qd1": "4 KiB rand read QD1", "randread4k_qd32": "4 KiB rand read QD32",
         "seqread128k_qd32": "128 KiB seq read QD32"}
print(f"nvme_read: {built}. fio: Debian fio 3.33, io_uring --hipri --direct=1, kernel nvme driver with poll_queues=1.")
print("IOPS: medians over the rounds, each tool alone in the guest. CPU: guest non-idle CPU time (2 vCPUs) per I/O")
print("from one more run per tool with the CPU window, steady state inside the run;")
print("in parentheses over the whole command, start-up included.\n")
print("| case | backend | ours IOPS | fio IOPS | IOPS ours/fio | ours CPU µs/IO | fio CPU µs/IO | CPU ours/fio | rounds |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for be in backends:
    for c in cases:
        o = [r for r in runs if r["backend"] == be and r["case"] == c and r["tool"] == "ours"]
        f = [r for r in runs if r["backend"] == be and r["case"] == c and r["tool"] == "fio"]
        # IOPS from the rounds without the window (all rounds in results from before).
        oq, fq = [r for r in o if not r["window"]] or o, [r for r in f if not r["window"]] or f
        oi, fi = med([r["iops"] for r in oq]), med([r["iops"] for r in fq])
        oc, fc = med([r["steady"] for r in o]), med([r["steady"] for r in f])
        ow, fw = med([r["whole"] for r in o]), med([r["whole"] for r in f])
        print(f"| {label[c]} | {be} | {oi:,.0f} | {fi:,.0f} | {oi / fi:.2f} | {oc:.1f} ({ow:.1f}) | {fc:.1f} ({fw:.1f}) "
              f"| {oc / fc:.2f} ({ow / fw:.2f}) | {len(oq)}+{len(fq)} |")
print("\nEvery run. run s: the tool's measured run; wall s: the whole command; window: the steady-state CPU sample.\n")
print("| backend | case | round | tool | IOPS | I/Os | run s | wall s | window s | busy CPU s in window | CPU µs/IO steady | CPU µs/IO whole | note |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in runs:
    print(f"| {r['backend']} | {r['case']} | {r['round']} | {r['tool']} | {r['iops']:,.0f} | {r['ios']} | {r['secs']:.2f} "
          f"| {r['wall']:.2f} | {r['win']:.2f} | {r['win_busy']:.2f} | {r['steady']:.1f} | {r['whole']:.1f} | {r['extra']} |")
PY
cat "$out/results.md"
log "results in $out/results.md"
