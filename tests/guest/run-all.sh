#!/bin/sh
# Guest side of vm/test.sh.
#   39-bit IOMMU aperture (regions at a constant IOVA offset): everything.
#   48-bit aperture (identity mapping): the mapping paths and the NICs.
# Device binding follows what the tests expect: first the NVMe and the
# first igb (the second igb unbound and virtio-net on its kernel driver, for
# the framework's error tests), then the second igb and virtio-net too.
set -u
fail=0
run() { echo "=== $*"; "$@" || { echo "FAILED: $*"; fail=1; }; }
have() { [ -x "/bin/$1" ]; }

if [ "${FASTLANE_AW_BITS:-39}" = 39 ]; then
    run sh /opt/hugepages.sh
fi
hugepages.sh setup 192 || exit 1
hugepages.sh bind "$FASTLANE_NVME" "$FASTLANE_IGB0" || exit 1

if [ "${FASTLANE_AW_BITS:-39}" = 39 ]; then
    for t in guest_framework guest_nvme guest_nvme_sgl guest_nvme_identify guest_nvme_async guest_nvme_irq guest_nvme_pi guest_nvme_read guest_reliability guest_hostile guest_hostile_nvme guest_nvmf; do
        have "$t" && run "/bin/$t" --test-threads=1
    done
    run sh /opt/reliability.sh --shell-only
else
    run /bin/guest_framework --test-threads=1 regions_are
    run /bin/guest_nvme --test-threads=1 identify
    # The hostile-use suites run under both apertures (issue 8).
    for t in guest_hostile guest_hostile_nvme; do
        have "$t" && run "/bin/$t" --test-threads=1
    done
fi

hugepages.sh bind "$FASTLANE_IGB1" "$FASTLANE_VIRTIO" || exit 1
for t in guest_igb guest_virtio; do
    have "$t" && run "/bin/$t" --test-threads=1
done
# Multi-queue virtio-net with RSS: a second virtio port, on a host tap
# (vm/run.sh sets FASTLANE_VIRTIO_MQ when it could make one).
if [ -n "${FASTLANE_VIRTIO_MQ:-}" ] && have guest_virtio_mq; then
    hugepages.sh bind "$FASTLANE_VIRTIO_MQ" && run /bin/guest_virtio_mq --test-threads=1
fi
# virtio-net checksum offload by the device: the tap port offers
# VIRTIO_NET_F_CSUM (the hub port does not); bound just above.
if [ -n "${FASTLANE_VIRTIO_MQ:-}" ] && have guest_virtio; then
    run /bin/guest_virtio --test-threads=1 on_a_tap
fi
# Quiet rings, a link down/up of IGB0 driven from the host (vm/test.sh), and
# a 20 s verified-traffic soak over the three ports.
have guest_nic_faults && run sh /opt/nic-soak.sh
# The network tools against the kernel's own stack (~35 s): IGB0 moves
# between vfio-pci and the kernel's igb driver (loaded from
# /lib/modules-net) as each test needs, so this runs after the other NIC
# suites. One aperture is enough: no new mapping paths.
if [ "${FASTLANE_AW_BITS:-39}" = 39 ] && have guest_net_stack; then
    run /bin/guest_net_stack --test-threads=1
fi

# NVMe surprise removal and hot add of the second controller (vm/test.sh
# plugs it behind a hot-pluggable root port and drives QMP from the host).
if [ -n "${FASTLANE_NVME_HOTPLUG:-}" ] && have guest_nvme_removal; then
    hugepages.sh bind "$FASTLANE_NVME_HOTPLUG" && run /bin/guest_nvme_removal --test-threads=1 --nocapture
fi

hugepages.sh reset
[ "$fail" = 0 ] && echo "=== guest: all passed"
exit "$fail"
