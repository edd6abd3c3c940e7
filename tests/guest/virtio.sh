#!/bin/sh
# Guest side of the virtio-net tests: binds the virtio-net port and the
# first igb port to vfio-pci and, when the kernel's igb modules were passed
# with --file (dca.ko, i2c-algo-bit.ko, igb.ko), brings the second igb port
# up on the kernel driver as a peer (FASTLANE_PEER_IF), then runs
# /bin/guest_virtio. VIRTIO_TESTS (through FASTLANE_GUEST_ENV) narrows the
# run to the tests whose names contain it.
#
#   vm/run.sh --bin .cache/guest-bin-virtio/guest_virtio \
#       --file .../dca.ko --file .../i2c-algo-bit.ko --file .../igb.ko \
#       --script tests/guest/virtio.sh
set -u
hugepages.sh setup 128 || exit 1
hugepages.sh bind "$FASTLANE_VIRTIO" "$FASTLANE_IGB0" || exit 1

if [ -f /opt/igb.ko ]; then
    for m in dca i2c-algo-bit igb; do
        insmod "/opt/$m.ko" || echo "virtio.sh: insmod $m failed"
    done
    ifc=""
    for _ in $(seq 50); do
        ifc="$(ls "/sys/bus/pci/devices/$FASTLANE_IGB1/net" 2>/dev/null | head -1)"
        [ -n "$ifc" ] && break
        sleep 0.2
    done
    if [ -n "$ifc" ]; then
        # No IPv6 chatter from the kernel on the wire.
        echo 1 > "/proc/sys/net/ipv6/conf/$ifc/disable_ipv6" 2>/dev/null
        ip link set "$ifc" up 2>/dev/null || ifconfig "$ifc" up
        for _ in $(seq 50); do
            [ "$(cat "/sys/class/net/$ifc/carrier" 2>/dev/null)" = 1 ] && break
            sleep 0.2
        done
        echo "virtio.sh: kernel igb peer $ifc on $FASTLANE_IGB1, carrier $(cat "/sys/class/net/$ifc/carrier")"
        export FASTLANE_PEER_IF="$ifc"
    else
        echo "virtio.sh: no kernel igb interface on $FASTLANE_IGB1"
    fi
fi

/bin/guest_virtio --test-threads=1 --show-output ${VIRTIO_TESTS:-}
rc=$?
hugepages.sh reset >/dev/null 2>&1
exit $rc
