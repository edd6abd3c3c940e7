#!/bin/sh
# NIC faults and soak in the test guest (busybox sh), with /bin/guest_nic_faults:
#
#   0. the hostile-use tests (/bin/guest_hostile_nic, when present: foreign
#      pools and packets, double opens, one-frame virtio bursts, reopen
#      orders, two containers); skipped with NIC_HOSTILE_TESTS=0;
#   1. the quiet-ring tests (igb and virtio-net: seconds of empty polls, then
#      a verified burst); skipped with NIC_FAULT_TESTS=0;
#   2. link down/up under traffic, only when NIC_LINK_FLAP=<token> is set and
#      the host runs tests/guest/link-flap-host.sh with that token;
#   3. the soak: NIC_SOAK_SECONDS (default 20) of verified traffic between
#      both igb ports and virtio-net (NIC_SOAK_VIRTIO=0: igb only), every
#      direction, zero lost/duplicated/corrupted frames, VmRSS flat (checked
#      by the test, NIC_SOAK_RSS_SLACK_KIB, default 1024), and HugePages_Free
#      back to its value from before once the process is gone.
#
# Short run (CI, from run-all.sh or alone):
#   vm/run.sh --timeout 600 --bin .cache/guest-bin-nicf/guest_nic_faults \
#       --script tests/guest/nic-soak.sh
# Long run (documented in docs/reliability.md):
#   FASTLANE_GUEST_ENV="NIC_SOAK_SECONDS=300" vm/run.sh --timeout 900 \
#       --bin .cache/guest-bin-nicf/guest_nic_faults --script tests/guest/nic-soak.sh
# With the link flap: see tests/guest/link-flap-host.sh.
set -u
BIN="${NIC_FAULTS_BIN:-/bin/guest_nic_faults}"
fail=0
run() { echo "=== $*"; "$@" || { echo "FAILED: $*"; fail=1; }; }
free_2m() { awk '/^HugePages_Free:/ {print $2}' /proc/meminfo; }

[ -x "$BIN" ] || { echo "NIC SOAK FAIL: $BIN missing"; exit 1; }
total="$(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo)"
[ "${total:-0}" -ge 128 ] || hugepages.sh setup 128 >/dev/null || { echo "hugepages.sh setup failed"; exit 1; }
hugepages.sh bind "$FASTLANE_IGB0" "$FASTLANE_IGB1" "$FASTLANE_VIRTIO" >/dev/null || { echo "hugepages.sh bind failed"; exit 1; }
free0="$(free_2m)"

if [ "${NIC_HOSTILE_TESTS:-1}" != 0 ] && [ -x /bin/guest_hostile_nic ]; then
    run /bin/guest_hostile_nic --test-threads=1
fi
if [ "${NIC_FAULT_TESTS:-1}" != 0 ]; then
    run "$BIN" --test-threads=1 --nocapture quiet_ring
fi
if [ -n "${NIC_LINK_FLAP:-}" ]; then
    run "$BIN" --test-threads=1 --nocapture --ignored --exact link_down_and_up_while_traffic_flows
fi

echo "=== nic soak: ${NIC_SOAK_SECONDS:-20} s"
"$BIN" --test-threads=1 --nocapture --ignored --exact soak &
pid=$!
rss_max=0
while kill -0 "$pid" 2>/dev/null; do
    r="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
    [ -n "$r" ] && [ "$r" -gt "$rss_max" ] && rss_max="$r"
    sleep 1
done
wait "$pid" || { echo "FAILED: nic soak"; fail=1; }
echo "nic soak: VmRSS max $rss_max KiB"

n=0
while [ "$(free_2m)" != "$free0" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
if [ "$(free_2m)" = "$free0" ]; then
    echo "nic soak: HugePages_Free $free0 before, $(free_2m) after: all returned"
else
    echo "FAILED: HugePages_Free $(free_2m) after exit, $free0 before"; fail=1
fi

[ "$fail" = 0 ] && echo "=== NIC faults and soak: all passed"
exit "$fail"
