#!/bin/sh
# Guest reliability checks (busybox sh), see docs/reliability.md:
#   1. /bin/guest_reliability: IOMMU isolation, busy device, SIGKILL in the
#      middle of I/O, the locked-memory limit;
#   2. the read benchmark as an ordinary user: refused without access to
#      /dev/vfio/N, refused with a clear message under `ulimit -l 64`, and
#      a verified run with the group device and a raised limit;
#   3. the short soak (tests/guest/soak.sh, SOAK_SECONDS, default 20).
#
#   FASTLANE_GUEST_BIN_DIR=.cache/guest-bin-rel vm/build-guest.sh
#   vm/run.sh --timeout 900 --bin .cache/guest-bin-rel/guest_reliability \
#       --bin .cache/guest-bin-rel/nvme_read --file tests/guest/soak.sh \
#       --script tests/guest/reliability.sh
#
# --shell-only skips step 1 (tests/guest/run-all.sh runs every /bin/guest_*
# itself). RELIABILITY_GAPS=1 (through FASTLANE_GUEST_ENV) also runs the
# tests of known gaps (#[ignore]d), reported but not counted.
# Prints "=== reliability: all passed" and exits 0, or exits 1.
set -u
shell_only=0
[ "${1:-}" = --shell-only ] && shell_only=1
NVME="${FASTLANE_NVME:-0000:00:04.0}"
USER_NAME=bench
USER_ID=1000
VFIO_GID=990
fail=0
run() { echo "=== $*"; "$@" || { echo "FAILED: $*"; fail=1; }; }
bad() { echo "FAILED: $*"; fail=1; }
free_2m() { awk '/^HugePages_Free:/ {print $2}' /proc/meminfo; }
dmar_faults() { dmesg | grep -c 'DMAR: \[DMA' ; }

hugepages.sh setup 128 || exit 1
# IGB0 gives the ignored cross-container test a second container.
hugepages.sh bind "$NVME" "${FASTLANE_IGB0:-0000:01:00.0}" || exit 1
group="$(basename "$(readlink "/sys/bus/pci/devices/$NVME/iommu_group")")"
dev="/dev/vfio/$group"
free0="$(free_2m)"

# --- 1. the Rust tests -------------------------------------------------------
if [ "$shell_only" = 0 ]; then
    faults0="$(dmar_faults)"
    run /bin/guest_reliability --test-threads=1 --nocapture
    echo "IOMMU faults the kernel logged during the tests: $(( $(dmar_faults) - faults0 ))"
    dmesg | grep 'DMAR: \[DMA' | tail -4
    if [ "${RELIABILITY_GAPS:-0}" = 1 ]; then
        echo "=== known gaps (not counted)"
        /bin/guest_reliability --test-threads=1 --nocapture --ignored \
            && echo "known gaps: now passing" || echo "known gaps: still failing"
    fi
fi

# --- 2. the benchmark as an ordinary user -------------------------------------
echo "=== nvme_read as an ordinary user ($USER_NAME, uid $USER_ID)"
[ -f /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
[ -f /etc/group ] || echo 'root:x:0:' > /etc/group
grep -q "^$USER_NAME:" /etc/passwd || echo "$USER_NAME:x:$USER_ID:$USER_ID::/tmp:/bin/sh" >> /etc/passwd
grep -q "^$USER_NAME:" /etc/group || echo "$USER_NAME:x:$USER_ID:" >> /etc/group
grep -q "^vfio:" /etc/group || echo "vfio:x:$VFIO_GID:$USER_NAME" >> /etc/group
ls -l "$dev" /dev/vfio/vfio

# as_user LIMIT_KIB ARGS...: nvme_read as the user, under `ulimit -l LIMIT_KIB`;
# its stdout+stderr in $out, its exit code in $rc.
as_user() {
    lim="$1"; shift
    out="$( (ulimit -l "$lim" && exec su -s /bin/sh "$USER_NAME" -c "id; ulimit -l; /bin/nvme_read --device $NVME $*") 2>&1)"
    rc=$?
    echo "$out" | sed 's/^/    /'
}
bench_args="--time 2 --json --quiet --queues 2"

echo "--- without access to $dev: refused, pointing at the README"
as_user 65536 $bench_args
[ "$rc" != 0 ] || bad "nvme_read ran without access to $dev"
echo "$out" | grep -q "permission denied on $dev" || bad "no 'permission denied on $dev' message"

chgrp vfio "$dev" && chmod 660 "$dev" || bad "chgrp/chmod $dev"
ls -l "$dev"

echo "--- group access, ulimit -l 64: refused, naming the limit"
as_user 64 $bench_args
[ "$rc" != 0 ] || bad "nvme_read ran under a 64 KiB memlock limit"
echo "$out" | grep -q "locked-memory limit too small (64 KiB)" || bad "no memlock message naming the 64 KiB limit"
echo "$out" | grep -q "ulimit -l" || bad "memlock message does not say 'ulimit -l'"

echo "--- group access, ulimit -l 65536: reads"
as_user 65536 $bench_args
[ "$rc" = 0 ] || bad "nvme_read as $USER_NAME exited $rc"
echo "$out" | grep -q "uid=$USER_ID($USER_NAME)" || bad "not run as $USER_NAME"
echo "$out" | grep -q '"errors":0,"mismatches":0' || bad "errors in the non-root read run"
ios="$(echo "$out" | sed -n 's/.*"ios":\([0-9]*\).*/\1/p')"
[ "${ios:-0}" -gt 0 ] || bad "no I/O in the non-root read run"

echo "--- group access, ulimit -l 65536: write then verify"
as_user 65536 --workload write --pattern seq --blocks 8192 --time 3 --json --quiet
[ "$rc" = 0 ] || bad "non-root write run exited $rc"
as_user 65536 --workload verify --blocks 8192 --time 2 --json --quiet
[ "$rc" = 0 ] || bad "non-root verify run exited $rc"
echo "$out" | grep -q '"errors":0,"mismatches":0' || bad "errors in the non-root verify run"

chown root:root "$dev" && chmod 600 "$dev"

# --- 3. short soak ------------------------------------------------------------
if [ -f /opt/soak.sh ]; then
    run sh /opt/soak.sh
else
    bad "/opt/soak.sh missing: pass --file tests/guest/soak.sh to vm/run.sh"
fi

# Everything the tests reserved came back.
n=0
while [ "$(free_2m)" != "$free0" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
[ "$(free_2m)" = "$free0" ] || bad "HugePages_Free $(free_2m) at the end, $free0 at the start"
echo "HugePages_Free: $free0 before, $(free_2m) after"

[ "$fail" = 0 ] && echo "=== reliability: all passed"
exit "$fail"
