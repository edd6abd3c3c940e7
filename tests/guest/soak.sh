#!/bin/sh
# NVMe soak in the test guest (busybox sh): verified I/O on several queues
# for SOAK_SECONDS, with the process's memory and the hugepage pool watched.
#
#   1. nvme_read --workload write --pattern seq: the verification pattern
#      over the first SOAK_BLOCKS blocks (every block, checked from the I/O
#      count);
#   2. nvme_read --workload verify --pattern rand for SOAK_SECONDS: every
#      read checked against the pattern (LBA, seed, contents);
#   3. zero errors and zero mismatches (from --json), VmRSS flat between an
#      early and a late sample (SOAK_RSS_SLACK_KIB, default 1024), and
#      HugePages_Free back to its value from before once the process is gone.
#
# CI runs the short one (SOAK_SECONDS=20) from tests/guest/reliability.sh.
# The long one, a documented command (docs/reliability.md):
#
#   vm/run.sh --timeout 900 --bin .cache/guest-bin-rel/nvme_read \
#       --script tests/guest/soak.sh        # with FASTLANE_GUEST_ENV=SOAK_SECONDS=300
#
# NIC soak: to come with the igb driver (same shape: frames with a sequence
# number and checksum over the hub, zero loss beyond the ring, flat RSS).
set -u
SOAK_SECONDS="${SOAK_SECONDS:-20}"
SOAK_QUEUES="${SOAK_QUEUES:-3}"
SOAK_DEPTH="${SOAK_DEPTH:-32}"
SOAK_BLOCKS="${SOAK_BLOCKS:-65536}"        # 32 MiB of 512-byte blocks
SOAK_RSS_SLACK_KIB="${SOAK_RSS_SLACK_KIB:-1024}"
NVME="${FASTLANE_NVME:-0000:00:04.0}"
NVME_READ="${NVME_READ:-/bin/nvme_read}"
SEED="${SOAK_SEED:-$(date +%s)}"

fail() { echo "SOAK FAIL: $*"; exit 1; }
free_2m() { awk '/^HugePages_Free:/ {print $2}' /proc/meminfo; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$2"; }

# Idempotent: already done when run from reliability.sh.
hugepages.sh setup 128 >/dev/null || fail "hugepages.sh setup"
hugepages.sh bind "$NVME" >/dev/null || fail "hugepages.sh bind $NVME"
free0="$(free_2m)"
echo "soak: $SOAK_SECONDS s of verified 4 KiB I/O, $SOAK_QUEUES queues x depth $SOAK_DEPTH," \
     "over $SOAK_BLOCKS blocks, seed $SEED; HugePages_Free $free0"

# --- 1. write the pattern over the whole range ----------------------------------
# Each queue writes its share sequentially; the run must make at least one
# full pass (io count >= 4 KiB slots in the range).
slots=$((SOAK_BLOCKS / 8 / SOAK_QUEUES * SOAK_QUEUES))
wtime=5
while :; do
    "$NVME_READ" --device "$NVME" --workload write --pattern seq --blocks "$SOAK_BLOCKS" \
        --queues "$SOAK_QUEUES" --queue-depth "$SOAK_DEPTH" --seed "$SEED" \
        --time "$wtime" --json --quiet > /tmp/soak-write.json || { cat /tmp/soak-write.json; fail "write pass"; }
    wios="$(field ios /tmp/soak-write.json)"
    [ "${wios:-0}" -ge $((slots * 2)) ] && break
    [ "$wtime" -ge 80 ] && fail "write pass: $wios I/Os in $wtime s, fewer than two passes over $slots slots"
    wtime=$((wtime * 2))
done
echo "soak: write pass: $wios I/Os in $wtime s ($(field iops /tmp/soak-write.json) IOPS), $(field errors /tmp/soak-write.json) errors"

# --- 2. verify, random, with RSS samples ---------------------------------------
"$NVME_READ" --device "$NVME" --workload verify --pattern rand --blocks "$SOAK_BLOCKS" \
    --queues "$SOAK_QUEUES" --queue-depth "$SOAK_DEPTH" --seed "$SEED" \
    --time "$SOAK_SECONDS" --json --quiet > /tmp/soak-verify.json 2> /tmp/soak-verify.err &
pid=$!
# First sample once set-up is over, last one shortly before the end.
early=$((SOAK_SECONDS / 10)); [ "$early" -ge 2 ] || early=2
late=$((SOAK_SECONDS - 2))
t=0 rss_first="" rss_last="" rss_max=0
while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    t=$((t + 1))
    r="$(rss_kib "$pid")"
    [ -n "$r" ] || break
    [ "$r" -gt "$rss_max" ] && rss_max="$r"
    [ "$t" = "$early" ] && rss_first="$r"
    [ "$t" -le "$late" ] && rss_last="$r"
    [ $((t % 30)) = 0 ] && echo "soak: ${t} s, VmRSS $r KiB"
done
wait "$pid"
rc=$?
cat /tmp/soak-verify.err
cat /tmp/soak-verify.json
[ "$rc" = 0 ] || fail "verify run exited $rc"

ios="$(field ios /tmp/soak-verify.json)"
errors="$(field errors /tmp/soak-verify.json)"
mismatches="$(field mismatches /tmp/soak-verify.json)"
secs="$(field seconds /tmp/soak-verify.json)"
[ "${ios:-0}" -gt 0 ] || fail "no I/O"
[ "$errors" = 0 ] || fail "$errors I/O errors"
[ "$mismatches" = 0 ] || fail "$mismatches verify mismatches"
[ -n "$rss_first" ] && [ -n "$rss_last" ] || fail "no VmRSS samples (run too short?)"
growth=$((rss_last - rss_first))
[ "$growth" -le "$SOAK_RSS_SLACK_KIB" ] || fail "VmRSS grew $growth KiB ($rss_first -> $rss_last KiB)"

# --- 3. hugepages back -----------------------------------------------------------
n=0
while [ "$(free_2m)" != "$free0" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
[ "$(free_2m)" = "$free0" ] || fail "HugePages_Free $(free_2m) after exit, $free0 before"

echo "SOAK PASS: $ios verified I/Os in $secs s ($(field iops /tmp/soak-verify.json) IOPS) on $SOAK_QUEUES queues," \
     "$errors errors, $mismatches mismatches; VmRSS $rss_first -> $rss_last KiB (max $rss_max);" \
     "HugePages_Free $free0 before, $(free_2m) after"
