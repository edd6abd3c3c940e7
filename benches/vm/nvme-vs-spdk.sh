#!/usr/bin/env bash
# fastlane's NVMe driver (examples/nvme_read) against SPDK's spdk_nvme_perf,
# the reference userspace NVMe driver, in the same QEMU guest, on the same
# emulated controller, both through vfio-pci with 2 MiB hugepages. Software
# emulation varies a lot from boot to boot and from run to run, so both run
# in one boot, interleaved A B B A A B ..., and the table reports medians and
# ratios (the structure of nvme-vs-fio.sh).
#
#   benches/vm/nvme-vs-spdk.sh SPDK_SRC                both backends, 3 rounds of 5 s
#   BENCH_BACKENDS=null BENCH_ROUNDS=2 BENCH_TIME=3 benches/vm/nvme-vs-spdk.sh SPDK_SRC
#
# SPDK_SRC: a git clone or mirror of spdk/spdk with its release tags (for
# example the one the developers' guide fetches), or an SPDK tree already
# built by benches/vm/spdk/build-spdk.sh. A clone is built once (about 5
# minutes on 2 cores) into .cache/spdk/src with benches/vm/spdk/build-spdk.sh
# (tag v25.09 against Debian's DPDK 22.11; it apt-get installs the build
# dependencies it lacks: dpdk-dev libdpdk-dev libnuma-dev uuid-dev libssl-dev
# libaio-dev libncurses-dev python3 pkg-config meson ninja-build). Nothing
# goes into the repository.
#
# One guest boot per NVMe backend and case (a case's place in a boot
# mattered: later runs were slower, for each tool by its own amount):
#   image  the raw sparse image file vm/run.sh creates (256 MiB)
#   null   QEMU's null-co driver (reads return zeroes at almost no cost)
#   nullnz null-co with read-zeroes=off: QEMU writes no data at all, so
#          the device's cost per byte (a memset of each buffer) drops out
# Cases: 4 KiB random read at queue depth 1 and 32, 128 KiB sequential read
# at queue depth 32. One queue, one thread for both.
#
#   ours  nvme_read --json --time T --queue-depth QD --io-size BS --pattern rand|seq
#         (plus $BENCH_OURS_ARGS, e.g. a data-mode option)
#   spdk  spdk_nvme_perf -q QD -o BS -w randread|read -t T -c 0x1 --iova-mode=pa
#         -r 'trtype:PCIe traddr:0000:00:04.0'   (plus $BENCH_SPDK_ARGS)
#         --iova-mode=pa: SPDK's base virtual address (2^45) is beyond the
#         39-bit vIOMMU's reach as an IOVA.
#
# IOPS come from runs with nothing else in the guest meanwhile (the tool in
# the foreground): under single-threaded TCG both vCPUs run in one host
# thread, so any process the script starts during a run takes the polling
# vCPU's time. CPU time per I/O comes from one more run per tool and case
# after the IOPS rounds (its IOPS are not counted): non-idle guest CPU time
# (all vCPUs, /proc/stat, 10 ms ticks), the same measure for both tools:
#   steady    over a window inside the tool's measured run (BENCH_TIME - 1.6
#             s long, from nvme_read's first progress line, 1 s into its run,
#             and from 0.5 s after spdk_nvme_perf's "Launching workers."),
#             divided by the tool's IOPS times the window length
#   whole     from the start to the exit of the command, divided by the I/Os
#             it reports (start-up and teardown included: DPDK's EAL init is
#             slow under emulation)
#
# Environment: BENCH_BACKENDS (image null), BENCH_CASES (randread4k_qd1
# randread4k_qd32 seqread128k_qd32), BENCH_ROUNDS (3), BENCH_TIME
# (seconds per run, 5, at least 3), BENCH_SOURCE (auto: build the working
# tree, and if it does not compile, the last commit; tree; head),
# BENCH_OURS_ARGS, BENCH_SPDK_ARGS, FASTLANE_VM_CACHE.
# Results: .cache/bench/nvme-vs-spdk/<time>/{console-*.log,results.md,nvme_read-help.txt}
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

spdk_src="${1:?usage: benches/vm/nvme-vs-spdk.sh SPDK_SRC (a git clone/mirror of spdk/spdk, or a built SPDK tree)}"
backends="${BENCH_BACKENDS:-image null}"
cases="${BENCH_CASES:-randread4k_qd1 randread4k_qd32 seqread128k_qd32}"
rounds="${BENCH_ROUNDS:-3}"
secs="${BENCH_TIME:-5}"
case "$rounds$secs" in *[!0-9]*) echo "nvme-vs-spdk: BENCH_ROUNDS and BENCH_TIME are whole numbers" >&2; exit 2 ;; esac
[ "$secs" -ge 3 ] || { echo "nvme-vs-spdk: BENCH_TIME must be at least 3 (the CPU window starts 1 s in)" >&2; exit 2; }
out="$repo/.cache/bench/nvme-vs-spdk/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
log() { echo "nvme-vs-spdk: $*" >&2; }

# --- SPDK ----------------------------------------------------------------------
spdk="$("$here/spdk/spdk-dir.sh" "$spdk_src")"
log "spdk_nvme_perf: $spdk ($(git -C "$spdk" describe --tags 2>/dev/null || echo '?'))"

# --- our binary (static: the guest has no libc of its own for it) ------------
. "$here/lib-build-nvme-read.sh"
build_nvme_read "$out"
log "nvme_read: $built"
"$out/nvme_read" --help > "$out/nvme_read-help.txt" 2>&1 || true

# --- the guest script ----------------------------------------------------------
cat > "$out/guest.sh" <<'GUEST'
#!/bin/sh
# Runs in the guest (busybox sh). Prints one "BENCH ..." line per run.
set -u
N="$FASTLANE_NVME"
T="$BENCH_TIME"
ROUNDS="$BENCH_ROUNDS"
OURS_ARGS="$(echo "${BENCH_OURS_ARGS:-}" | tr , ' ')"
SPDK_ARGS="$(echo "${BENCH_SPDK_ARGS:-}" | tr , ' ')"

hugepages.sh setup 256 >/dev/null || exit 1
hugepages.sh bind "$N" >/dev/null || exit 1
mkdir -p /var/tmp

cpu() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

WIN="$(awk -v t="$T" 'BEGIN { print t - 1.6 }')"
# nvme_read prints "[  1.0 s] ... IOPS" on stderr (unbuffered) a second into its run.
ready_ours() { grep -q -E ' s\] .*IOPS' /tmp/err 2>/dev/null; }
# spdk_nvme_perf flushes "Launching workers." (build-spdk.sh's patch) as the
# measured run starts; half a second more for the workers to get going.
ready_spdk() { grep -q 'Launching workers' /tmp/out 2>/dev/null && sleep 0.5; }

# measure TOOL CASE ROUND READY WINDOW COMMAND...: WINDOW 1 samples the CPU
# window inside the run, 0 runs the command alone in the foreground.
measure() {
    tool=$1 case=$2 round=$3 ready=$4 window=$5; shift 5
    rm -f /tmp/out /tmp/err
    c0="$(cpu)"; u0="$(uptime_s)"
    w0="- -" w1="- -" uw0=- uw1=- inside=0
    "$@" > /tmp/out 2> /tmp/err &
    pid=$!
    # nvme_read measures from its start: no check in its first second (the
    # peers' checks fall in their start-up, outside their runs).
    [ "$window" = 1 ] && [ $tool = ours ] && sleep 1.1
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
    if [ $tool = ours ]; then
        json="$(tr -d '\n' < /tmp/out)"
    else
        # "Total    :   IOPS   MiB/s   avg   min   max"
        json="$(awk -v t="$T" '/^Total *:/ { sub(/^Total *: */, ""); printf "{\"iops\":%s,\"ios\":%.0f,\"seconds\":%s,\"avg_us\":%s}", $1, $1 * t, t, $3 }' /tmp/out)"
        [ -n "$json" ] || rc=99
    fi
    [ $rc = 0 ] || { echo "$tool $case round $round failed (rc $rc):"; tail -8 /tmp/err; tail -8 /tmp/out; }
    echo "BENCH backend=$BENCH_BACKEND tool=$tool case=$case round=$round window=$window rc=$rc cpu0=${c0% *},${c0#* } cpu1=${c1% *},${c1#* } up=$u0,$u1 win0=${w0% *},${w0#* } win1=${w1% *},${w1#* } winup=$uw0,$uw1 inside=$inside hz=100 json=$json"
}

first=1
# name queue-depth io-size pattern spdk-workload
for spec in "randread4k_qd1 1 4096 rand randread" "randread4k_qd32 32 4096 rand randread" "seqread128k_qd32 32 131072 seq read"; do
    set -- $spec
    name=$1 qd=$2 bs=$3 pat=$4 w=$5
    case ",$BENCH_CASES," in *",$name,"*) ;; *) continue ;; esac
    r=1
    # ROUNDS rounds for IOPS, then one with the CPU window.
    while [ $r -le $((ROUNDS + 1)) ]; do
        # A B B A A B ...
        if [ $((r % 2)) = 1 ]; then order="ours spdk"; else order="spdk ours"; fi
        # Silent like spdk_nvme_perf, except where the CPU window needs
        # nvme_read's first progress line.
        window=0 quiet=--quiet; [ $r -gt "$ROUNDS" ] && window=1 quiet=

        for tool in $order; do
            if [ $tool = ours ]; then
                # shellcheck disable=SC2086
                measure ours "$name" $r ready_ours $window \
                    /bin/nvme_read --json $quiet --time "$T" --queue-depth "$qd" --io-size "$bs" --pattern "$pat" $OURS_ARGS
            else
                # shellcheck disable=SC2086
                measure spdk "$name" $r ready_spdk $window \
                    /usr/local/bin/spdk_nvme_perf -q "$qd" -o "$bs" -w "$w" -t "$T" -c 0x1 --iova-mode=pa \
                    -r "trtype:PCIe traddr:$N" $SPDK_ARGS
                if [ $first = 1 ]; then first=0; echo "--- first spdk_nvme_perf output:"; head -40 /tmp/out; tail -5 /tmp/err; echo "---"; fi
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
        nullnz) drive="driver=null-co,read-zeroes=off,size=1G" ;;
        *) log "unknown backend $be (image, null, nullnz)"; exit 2 ;;
    esac
  # A fresh guest per case: later runs in one boot were slower for both
  # tools, by different amounts (SPDK at 128 KiB on the image: 24k IOPS in
  # its first round, 16k in its sixth), so a case's place in the boot
  # mattered.
  for c in $cases; do
    con="$out/console-$be-$c.log"
    log "backend $be, $c: booting the guest ($rounds + 1 rounds x 2 tools x ${secs}s)"
    for try in 1 2 3 4; do
        set +e
        FASTLANE_NVME_DRIVE="$drive" \
        FASTLANE_GUEST_ENV="BENCH_BACKEND=$be BENCH_CASES=$c BENCH_ROUNDS=$rounds BENCH_TIME=$secs BENCH_OURS_ARGS=$(echo "${BENCH_OURS_ARGS:-}" | tr ' ' ,) BENCH_SPDK_ARGS=$(echo "${BENCH_SPDK_ARGS:-}" | tr ' ' ,)" \
            "$repo/vm/run.sh" --peers --no-tap --spdk "$spdk" --mem 2G --timeout 1200 --bin "$out/nvme_read" --script "$out/guest.sh" \
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
python3 - "$out" "$built" "$(git -C "$spdk" describe --tags 2>/dev/null || echo '?')" "${BENCH_OURS_ARGS:-}" "${BENCH_SPDK_ARGS:-}" $backends > "$out/results.md" <<'PY'
import glob, json, re, statistics, sys
out, built, spdk_ver, ours_args, spdk_args, backends = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
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
        ios, iops = d["ios"], d["iops"]
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
                         window=kv.get("window", "1") == "1",
                         iops=iops, ios=ios, wall=u1 - u0, win=win, steady=steady,
                         whole=whole * 1e6 / ios if ios else nan))

def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else nan

cases = ["randread4k_qd1", "randread4k_qd32", "seqread128k_qd32"]
label = {"randread4k_qd1": "4 KiB random read, QD1", "randread4k_qd32": "4 KiB random read, QD32",
         "seqread128k_qd32": "128 KiB sequential read, QD32"}
bename = {"image": "image", "null": "null-co", "nullnz": "null-co, no data"}
print(f"nvme_read: {built}{' ' + ours_args if ours_args else ''}. SPDK {spdk_ver} spdk_nvme_perf (Debian DPDK 22.11, "
      f"--iova-mode=pa{' ' + spdk_args if spdk_args else ''}).")
print("IOPS: medians over the rounds (A B B A), each tool alone in the guest. CPU: guest non-idle CPU time (2 vCPUs)")
print("per I/O from one more run per tool with the CPU window, steady state inside the run;")
print("in parentheses over the whole command, start-up included. Best: each tool's fastest round (interference from")
print("the host only ever slows a run down, so the best round is the least disturbed one).\n")
print("| case | backend | ours IOPS | SPDK IOPS | ours/SPDK | best ours/SPDK | ours CPU µs/IO | SPDK CPU µs/IO | rounds |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for be in backends:
    for c in cases:
        oa = [r for r in runs if r["backend"] == be and r["case"] == c and r["tool"] == "ours"]
        sa = [r for r in runs if r["backend"] == be and r["case"] == c and r["tool"] == "spdk"]
        if not oa and not sa:
            continue
        # IOPS from the runs without the CPU window (all of them in results from before it).
        o = [r for r in oa if not r["window"]] or oa
        s = [r for r in sa if not r["window"]] or sa
        oi, si = med([r["iops"] for r in o]), med([r["iops"] for r in s])
        oc, sc = med([r["steady"] for r in oa]), med([r["steady"] for r in sa])
        ow, sw = med([r["whole"] for r in oa]), med([r["whole"] for r in sa])
        ob, sb = max([r["iops"] for r in o], default=nan), max([r["iops"] for r in s], default=nan)
        print(f"| {label[c]} | {bename[be]} | {oi:,.0f} | {si:,.0f} | {oi / si:.2f} | {ob / sb:.2f} | {oc:.1f} ({ow:.1f}) | {sc:.1f} ({sw:.1f}) "
              f"| {len(o)}+{len(s)} |")
print("\nEvery run:\n")
print("| backend | case | round | tool | IOPS | I/Os | wall s | CPU window s | CPU µs/IO steady | CPU µs/IO whole |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
for r in runs:
    print(f"| {r['backend']} | {r['case']} | {r['round']} | {r['tool']} | {r['iops']:,.0f} | {r['ios']} "
          f"| {r['wall']:.2f} | {r['win']:.2f} | {r['steady']:.1f} | {r['whole']:.1f} |")
PY
cat "$out/results.md"
log "results in $out/results.md"
