#!/bin/sh
# Guest side of the igb tests: the Rust guest tests, then the examples
# (pktgen, rxcount, fwd) as smoke tests and a rate measurement. Boot with:
#
#   FASTLANE_GUEST_BIN_DIR=$PWD/.cache/guest-bin-igb vm/build-guest.sh
#   vm/run.sh --timeout 900 --bin .cache/guest-bin-igb/guest_igb \
#       --bin .cache/guest-bin-igb/pktgen --bin .cache/guest-bin-igb/rxcount \
#       --bin .cache/guest-bin-igb/fwd --script tests/guest/nic.sh
#
# Binaries missing from /bin are skipped. Prints "=== guest: all passed"
# and exits 0 when everything passed.
set -u
fail=0
run() { echo "=== $*"; "$@" || { echo "FAILED: $*"; fail=1; }; }
# A command that must fail with exit code 2 (bad arguments).
rejects() {
    echo "=== (must be rejected) $*"
    "$@" >/tmp/out 2>&1
    rc=$?
    cat /tmp/out
    [ "$rc" = 2 ] && grep -q error /tmp/out || { echo "FAILED: '$*' gave rc $rc"; fail=1; }
}
have() { [ -x "/bin/$1" ]; }

hugepages.sh setup 128 || exit 1
hugepages.sh bind "$FASTLANE_IGB0" "$FASTLANE_IGB1" "$FASTLANE_NVME" || exit 1

have guest_igb && run /bin/guest_igb --test-threads=1 ${FASTLANE_IGB_TESTS:-}

if have pktgen && have rxcount; then
    rejects /bin/pktgen
    rejects /bin/pktgen --device "$FASTLANE_IGB0" --size 1515
    rejects /bin/pktgen --device "$FASTLANE_IGB0" --count 10 --time 1
    rejects /bin/rxcount --device "$FASTLANE_IGB1" --time -1
    run /bin/pktgen --help
    # Rate on one port: nothing reads the other one.
    for size in 60 1514; do
        run /bin/pktgen --device "$FASTLANE_IGB0" --size "$size" --time 5 --json
    done
    # A fixed count, received and counted on the other port. First let
    # rxcount swallow what QEMU queued for the closed port meanwhile.
    /bin/rxcount --device "$FASTLANE_IGB1" --time 2 >/dev/null
    /bin/rxcount --device "$FASTLANE_IGB1" --time 30 --json >/tmp/rx.log 2>&1 &
    rxpid=$!
    sleep 4
    run /bin/pktgen --device "$FASTLANE_IGB0" --count 100000 --burst 64 --json
    wait "$rxpid" || { echo "FAILED: rxcount"; fail=1; }
    cat /tmp/rx.log
    # The driver's count must agree with the device's; QEMU's hub may drop
    # frames when the receiver falls behind (a queue of 10000), so the count
    # itself is reported, not required.
    got="$(sed -n 's/.*"packets":\([0-9]*\),.*/\1/p' /tmp/rx.log)"
    dev="$(sed -n 's/.*"device_rx_packets":\([0-9]*\),.*/\1/p' /tmp/rx.log)"
    echo "rxcount: $got of 100000 frames received (device counted $dev)"
    [ -n "$got" ] && [ "$got" = "$dev" ] && [ "$got" -le 100000 ] || { echo "FAILED: rxcount counts"; fail=1; }
fi
if have fwd; then
    rejects /bin/fwd --ports "$FASTLANE_IGB0"
    # Smoke test only: both ports sit on one hub, so traffic would loop.
    run /bin/fwd --ports "$FASTLANE_IGB0,$FASTLANE_IGB1" --time 3
fi

hugepages.sh reset
[ "$fail" = 0 ] && echo "=== guest: all passed"
exit "$fail"
