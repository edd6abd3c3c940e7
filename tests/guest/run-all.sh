#!/bin/sh
# Guest side of vm/test.sh: the hugepages.sh round trip, then the Rust guest
# test binaries with the NVMe and first igb bound to vfio-pci (the second
# igb unbound and virtio-net on its kernel driver, for the error tests).
set -u
fail=0
run() { echo "=== $*"; "$@" || { echo "FAILED: $*"; fail=1; }; }

if [ "${FASTLANE_AW_BITS:-39}" = 39 ]; then
    run sh /opt/hugepages.sh
fi
hugepages.sh setup 128 || exit 1
hugepages.sh bind "$FASTLANE_NVME" "$FASTLANE_IGB0" || exit 1

if [ "${FASTLANE_AW_BITS:-39}" = 39 ]; then
    for t in /bin/guest_*; do run "$t" --test-threads=1; done
else
    # 48-bit aperture: the identity-mapping paths.
    run /bin/guest_framework --test-threads=1 regions_are
    [ -x /bin/guest_nvme ] && run /bin/guest_nvme --test-threads=1 identify
fi
hugepages.sh reset
[ "$fail" = 0 ] && echo "=== guest: all passed"
exit "$fail"
