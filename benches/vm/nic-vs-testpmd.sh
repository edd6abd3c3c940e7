#!/usr/bin/env bash
# fastlane's igb driver (examples/pktgen, examples/rxcount) against DPDK's
# dpdk-testpmd (Debian's dpdk-dev 22.11, igb PMD librte_net_e1000 through
# vfio-pci, --iova-mode=va) in the same QEMU guest, on the same two igb ports
# (one QEMU hub: a wire between them). One boot; inside it, interleaved
# (ours, testpmd, ours, testpmd, ...):
#
#   tx  ours: pktgen on port 0          testpmd: --forward-mode=txonly on port 0
#   rx  ours: rxcount on port 1         testpmd: --forward-mode=rxonly on port 1
#       with the same load in both: our pktgen sending on port 0 (vCPU 0)
#
#   fwd ours: fwd on ports 0 and 1      testpmd: --forward-mode=io on ports 0 and 1
#       (both directions; the rate is the sum of the frames sent on both
#       ports). All three ports are on one QEMU hub, so a forwarded frame
#       comes back to the other port and is forwarded again, forever: our
#       pktgen on the virtio-net port seeds the loop with FWD_SEED frames
#       (--count, 4096) once the forwarder is up, and from then on the
#       forwarder alone sets the rate (frames in flight are conserved up to
#       ring overflows), the same loop for both tools. A generator running
#       all along would compete for the emulation's one TCG thread.
#
# for 60- and 1514-byte frames (64 and 1518 bytes on the wire with the CRC).
# Rates are per-second samples (pktgen/rxcount progress lines, testpmd's
# --stats-period 1 Tx-pps/Rx-pps); a run's rate is the median of its samples
# that reach half its best one (leaving out the start-up and the partial
# seconds at either end); the table shows medians over rounds and the ratio.
# The receiving tool runs on vCPU 1 (testpmd: -l 0-1, forwarding lcore 1).
#
#   benches/vm/nic-vs-testpmd.sh
#   BENCH_ROUNDS=2 BENCH_TIME=4 benches/vm/nic-vs-testpmd.sh
#
# Environment: BENCH_ROUNDS (3), BENCH_TIME (seconds per run, 5),
# BENCH_SIZES ("60 1514"), BENCH_MODES ("tx rx fwd"), FASTLANE_VM_CACHE.
# Results: .cache/bench/nic-vs-testpmd/<time>/{console.log,results.md}
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

rounds="${BENCH_ROUNDS:-3}"
secs="${BENCH_TIME:-5}"
sizes="${BENCH_SIZES:-60 1514}"
modes="${BENCH_MODES:-tx rx fwd}"
case "$rounds$secs" in *[!0-9]*) echo "nic-vs-testpmd: BENCH_ROUNDS and BENCH_TIME are whole numbers" >&2; exit 2 ;; esac
out="$repo/.cache/bench/nic-vs-testpmd/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
log() { echo "nic-vs-testpmd: $*" >&2; }

target=x86_64-unknown-linux-gnu
for ex in pktgen rxcount fwd; do
    [ -f "examples/$ex.rs" ] || { log "examples/$ex.rs does not exist yet"; exit 1; }
done
log "building pktgen, rxcount and fwd (static)"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --quiet --target "$target" --example pktgen --example rxcount --example fwd
for ex in pktgen rxcount fwd; do cp "target/$target/release/examples/$ex" "$out/$ex"; done
built="working tree at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . && git diff --quiet HEAD -- examples || echo ' + local changes')"

cat > "$out/guest.sh" <<'GUEST'
#!/bin/sh
# Runs in the guest (busybox sh). Prints one "BENCH ..." line per run with
# the per-second rates.
set -u
T="$BENCH_TIME"
P0="$FASTLANE_IGB0" P1="$FASTLANE_IGB1" V="$FASTLANE_VIRTIO" SEED="${FWD_SEED:-4096}"
hugepages.sh setup 256 >/dev/null || exit 1
hugepages.sh bind "$P0" "$P1" "$V" >/dev/null || exit 1
TESTPMD="dpdk-testpmd -l 0-1 -n 1 --iova-mode=va"
TP_OPTS="--total-num-mbufs=16384 --stats-period 1 --nb-cores=1"

# Per-second rates as "a,b,c": pktgen/rxcount lines "   1.0 s   123456 pkt/s ...".
ours_rates() { sed -n 's/^ *[0-9.]* s  *\([0-9][0-9]*\) pkt\/s.*/\1/p' "$1" | paste -sd, -; }
# testpmd's "Tx-pps:   123456   Tx-bps: ..." (DIR Tx or Rx).
tp_rates() { sed -n "s/.*$2-pps: *\([0-9][0-9]*\).*/\1/p" "$1" | paste -sd, -; }
# fwd's "   1.0 s  A->B   123 pkt/s (0 dropped)  B->A   456 pkt/s (0 dropped)": the sum.
fwd_rates() { sed -n 's/^ *[0-9.]* s  *A->B  *\([0-9][0-9]*\) pkt\/s.*B->A  *\([0-9][0-9]*\) pkt\/s.*/\1 \2/p' "$1" |
    awk '{ printf "%s%d", sep, $1 + $2; sep = "," }'; }
# testpmd with two ports prints one block per port per period: Tx-pps of
# ports 0 and 1 summed per period.
tp_fwd_rates() { awk '/Tx-pps:/ { s += $2; n++; if (n % 2 == 0) { printf "%s%d", sep, s; sep = ","; s = 0 } }' "$1"; }
blocks() { n="$(grep -c 'Throughput (since last show)' "$1" 2>/dev/null)"; echo "${n:-0}"; }

# tp_start LOG ARGS...: testpmd in the background (pid in $tp); tp_wait N: until
# it has printed N statistics blocks (0: failed); tp_stop: SIGINT, wait.
tp_start() { tplog=$1; shift; $TESTPMD "$@" > "$tplog" 2>&1 & tp=$!; }
# Once a second: each check forks, and testpmd is measuring meanwhile
# (single-threaded TCG runs the checking vCPU in the polling one's host
# thread); ours are measured with no checks running.
tp_wait() {
    i=0
    while [ "$(blocks "$tplog")" -lt "$1" ]; do
        kill -0 $tp 2>/dev/null || { echo "testpmd exited:"; tail -20 "$tplog"; return 1; }
        i=$((i + 1)); [ $i -lt 180 ] || { echo "testpmd: no statistics after 180 s"; return 1; }
        sleep 1
    done
}
tp_stop() { kill -INT $tp 2>/dev/null; wait $tp; }

marker() {  # tool mode size round rc rates [generator rates]
    echo "BENCH tool=$1 mode=$2 size=$3 round=$4 rc=$5 rates=${6:-} gen=${7:-}"
}

# run.sh splits FASTLANE_GUEST_ENV on spaces: the lists come comma-separated.
for size in $(echo "$BENCH_SIZES" | tr , ' '); do
  for mode in $(echo "$BENCH_MODES" | tr , ' '); do
    r=1
    while [ $r -le "$BENCH_ROUNDS" ]; do
      if [ "$mode" = tx ]; then
        taskset 2 /bin/pktgen --device "$P0" --size "$size" --time "$T" > /tmp/ours 2>&1
        rc=$?
        [ $rc = 0 ] || tail -5 /tmp/ours
        marker ours tx "$size" $r $rc "$(ours_rates /tmp/ours)"

        rc=0
        tp_start /tmp/tp -a "$P0" -- $TP_OPTS --forward-mode=txonly --txpkts="$size"
        tp_wait $((T + 1)) || rc=1
        tp_stop
        marker testpmd tx "$size" $r $rc "$(tp_rates /tmp/tp Tx)"
      elif [ "$mode" = fwd ]; then
        rc=0
        taskset 2 /bin/fwd --ports "$P0,$P1" --time $((T + 3)) > /tmp/ours 2>&1 &
        fw=$!
        i=0
        while ! grep -q '^fwd:' /tmp/ours 2>/dev/null && kill -0 $fw 2>/dev/null && [ $i -lt 300 ]; do
            sleep 0.1; i=$((i + 1))
        done
        sleep 1
        taskset 1 /bin/pktgen --device "$V" --size "$size" --count "$SEED" > /tmp/gen 2>&1 || rc=1
        wait $fw || rc=1
        [ $rc = 0 ] || { tail -5 /tmp/ours; tail -5 /tmp/gen; }
        marker ours fwd "$size" $r $rc "$(fwd_rates /tmp/ours)" "$(ours_rates /tmp/gen)"

        rc=0
        tp_start /tmp/tp -a "$P0" -a "$P1" -- $TP_OPTS --forward-mode=io
        if tp_wait 2; then
            taskset 1 /bin/pktgen --device "$V" --size "$size" --count "$SEED" > /tmp/gen 2>&1 || rc=1
            tp_wait $(($(blocks /tmp/tp) + 2 * (T + 1))) || rc=1
        else
            rc=1
        fi
        tp_stop
        marker testpmd fwd "$size" $r $rc "$(tp_fwd_rates /tmp/tp)" "$(ours_rates /tmp/gen)"
      else
        # Receiver first; the generator starts when it is up.
        rc=0
        taskset 2 /bin/rxcount --device "$P1" --time $((T + 3)) > /tmp/ours 2>&1 &
        rx=$!
        i=0
        while ! grep -q '^rxcount:' /tmp/ours 2>/dev/null && kill -0 $rx 2>/dev/null && [ $i -lt 300 ]; do
            sleep 0.1; i=$((i + 1))
        done
        sleep 1   # a first, idle, sample (it also drains frames QEMU queued)
        taskset 1 /bin/pktgen --device "$P0" --size "$size" --time "$T" > /tmp/gen 2>&1 || rc=1
        wait $rx || rc=1
        [ $rc = 0 ] || { tail -5 /tmp/ours; tail -5 /tmp/gen; }
        marker ours rx "$size" $r $rc "$(ours_rates /tmp/ours)" "$(ours_rates /tmp/gen)"

        rc=0
        tp_start /tmp/tp -a "$P1" -- $TP_OPTS --forward-mode=rxonly
        if tp_wait 1; then
            taskset 1 /bin/pktgen --device "$P0" --size "$size" --time "$T" > /tmp/gen 2>&1 || rc=1
            tp_wait $(($(blocks /tmp/tp) + 1)) || rc=1
        else
            rc=1
        fi
        tp_stop
        marker testpmd rx "$size" $r $rc "$(tp_rates /tmp/tp Rx)" "$(ours_rates /tmp/gen)"
      fi
      [ $r = 1 ] && [ "$size" = "${BENCH_SIZES%%,*}" ] && grep -E 'EAL|igb|e1000|Port 0' /tmp/tp | head -8
      r=$((r + 1))
    done
  done
done
hugepages.sh reset >/dev/null
GUEST

log "booting the guest ($rounds rounds, sizes $sizes, modes $modes, ${secs}s per run)"
set +e
FASTLANE_GUEST_ENV="FWD_SEED=${FWD_SEED:-4096} BENCH_ROUNDS=$rounds BENCH_TIME=$secs BENCH_SIZES=${sizes// /,} BENCH_MODES=${modes// /,}" \
    "$repo/vm/run.sh" --peers --no-tap --mem 2G --timeout 1500 --bin "$out/pktgen" --bin "$out/rxcount" --bin "$out/fwd" \
    --script "$out/guest.sh" > "$out/console.log"
rc=$?
set -e
grep -a -o 'BENCH tool=.*' "$out/console.log" >&2 || true
[ "$rc" = 0 ] || { log "guest failed (rc $rc), see $out/console.log"; tail -30 "$out/console.log" >&2; exit 1; }

python3 - "$out" "$built" > "$out/results.md" <<'PY'
import re, statistics, sys
out, built = sys.argv[1], sys.argv[2]
nan = float("nan")
runs = []
def rate(csv):
    xs = [int(x) for x in csv.split(",") if x]
    if not xs or max(xs) == 0:
        return nan
    return statistics.median([x for x in xs if x >= max(xs) / 2])
for line in open(f"{out}/console.log", errors="replace"):
    m = re.search(r"BENCH (tool=.*)", line)
    if not m:
        continue
    kv = dict(f.split("=", 1) for f in m.group(1).split())
    if kv["rc"] != "0":
        print(f"failed run: {m.group(1)}", file=sys.stderr)
        continue
    runs.append(dict(kv, pps=rate(kv["rates"]), gen=rate(kv.get("gen", ""))))
def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else nan
print(f"pktgen/rxcount: {built}. testpmd: Debian dpdk-dev 22.11.11, igb PMD, vfio-pci, --iova-mode=va.")
print("Packets per second, medians over rounds (frame size without CRC; +4 bytes on the wire).\n")
print("| mode | frame | ours pps | testpmd pps | ours/testpmd | offered load (pktgen) ours / testpmd run | rounds |")
print("|---|---:|---:|---:|---:|---:|---:|")
seen = []
for r in runs:
    k = (r["mode"], r["size"])
    if k not in seen:
        seen.append(k)
for mode, size in seen:
    o = [r for r in runs if (r["mode"], r["size"], r["tool"]) == (mode, size, "ours")]
    t = [r for r in runs if (r["mode"], r["size"], r["tool"]) == (mode, size, "testpmd")]
    op, tp = med([r["pps"] for r in o]), med([r["pps"] for r in t])
    load = "-" if mode != "rx" else f"{med([r['gen'] for r in o]):,.0f} / {med([r['gen'] for r in t]):,.0f}"
    what = {"tx": "tx (pktgen vs txonly)", "rx": "rx (rxcount vs rxonly)",
            "fwd": "io forwarding, both directions (fwd vs io)"}[mode]
    print(f"| {what} | {size} B | {op:,.0f} | {tp:,.0f} | {op / tp:.2f} | {load} | {len(o)}+{len(t)} |")
print("\nEvery run (per-second samples):\n")
print("| mode | frame | round | tool | pps | samples | generator samples |")
print("|---|---:|---:|---|---:|---|---|")
for r in runs:
    print(f"| {r['mode']} | {r['size']} | {r['round']} | {r['tool']} | {r['pps']:,.0f} | {r['rates']} | {r.get('gen', '')} |")
PY
cat "$out/results.md"
log "results in $out/results.md"
