#!/bin/sh
# Guest test of hugepages.sh: setup -> bind -> unbind -> reset round trip,
# with the error paths. Run it in the test guest:
#
#   vm/run.sh --script tests/guest/hugepages.sh
#
# Needs the guest's devices (FASTLANE_NVME, FASTLANE_IGB0, FASTLANE_VIRTIO)
# and /usr/bin/hugepages.sh; exits non-zero with a FAIL line on the first
# wrong step, prints "PASS hugepages.sh round trip" at the end.

set -u
HP="${HP:-/usr/bin/hugepages.sh}"
NVME="${FASTLANE_NVME:-0000:00:04.0}"
IGB0="${FASTLANE_IGB0:-0000:01:00.0}"
VIRTIO="${FASTLANE_VIRTIO:-0000:00:05.0}"
IGB0_SHORT="${IGB0#0000:}"
HUGEMNT="${HUGEMNT:-/mnt/huge}"
NR=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages

fail() { echo "FAIL: $*"; exit 1; }
step() { echo "--- $*"; }
driver_of() { [ -e "/sys/bus/pci/devices/$1/driver" ] && basename "$(readlink "/sys/bus/pci/devices/$1/driver")"; }
group_of() { basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"; }
hugetlbfs_at() { awk -v m="$1" '$2 == m && $3 == "hugetlbfs" {f=1} END {exit !f}' /proc/mounts; }
# run hugepages.sh, show its output, require rc 0
ok() { "$HP" "$@" || fail "'hugepages.sh $*' exited $?"; }
# require a non-zero rc and an error message
rejects() {
    out="$("$HP" "$@" 2>&1)" && fail "'hugepages.sh $*' succeeded, expected an error"
    echo "$out" | grep -q 'error' || fail "'hugepages.sh $*' failed without an error message: $out"
    echo "rejected as expected: $out"
}

[ -x "$HP" ] || fail "$HP missing"
nr0="$(cat "$NR")"
virtio_drv0="$(driver_of "$VIRTIO")"
nvme_drv0="$(driver_of "$NVME")"
igb_drv0="$(driver_of "$IGB0")"
echo "before: nr_hugepages=$nr0 virtio=${virtio_drv0:-none} nvme=${nvme_drv0:-none} igb0=${igb_drv0:-none}"
[ -n "$virtio_drv0" ] || fail "virtio device $VIRTIO has no driver to start with, cannot test restore"

step "usage and error paths"
ok help >/dev/null
rejects bind zz:zz.z
rejects bind 0000:00:04.8
rejects bind 00:1e.0
rejects unbind 12345
rejects setup many
rejects setup 8 --size 3M
rejects bind
rejects frobnicate
[ "$(driver_of "$NVME")" = "$nvme_drv0" ] || fail "a rejected command changed $NVME's driver"
"$HP" >/dev/null 2>&1; rc=$?
[ "$rc" = 2 ] || fail "'hugepages.sh' without a command exited $rc, expected 2"
"$HP" frobnicate >/dev/null 2>&1; rc=$?
[ "$rc" = 2 ] || fail "'hugepages.sh frobnicate' exited $rc, expected 2"
for bad in 0 -1 4294967296 99999999999999999999; do
    rejects setup "$bad"
    [ "$(cat "$NR")" = "$nr0" ] || fail "the rejected 'setup $bad' changed nr_hugepages to $(cat "$NR")"
done

step "setup that cannot reserve every page gives them all back"
# As many 2 MiB pages as MemTotal holds: a count the check lets through,
# but the kernel cannot reserve all of it (it needs memory of its own).
all=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 2048 ))
out="$("$HP" setup "$all" 2>&1)"; rc=$?
echo "$out"
[ "$rc" = 1 ] || fail "'hugepages.sh setup $all' exited $rc, expected 1 (not enough memory)"
[ "$(cat "$NR")" = "$nr0" ] || fail "nr_hugepages is $(cat "$NR") after the failed 'setup $all', expected $nr0 (not rolled back)"
echo "$out" | grep -q "set back to $nr0" || fail "the failed 'setup $all' does not say nr_hugepages was set back to $nr0"

step "setup"
ok setup 64
[ "$(cat "$NR")" = 64 ] || fail "nr_hugepages is $(cat "$NR") after setup 64"
hugetlbfs_at "$HUGEMNT" || fail "hugetlbfs not mounted at $HUGEMNT"
[ -d /sys/bus/pci/drivers/vfio-pci ] || fail "vfio-pci not loaded after setup"
ok setup 64   # idempotent
[ "$(awk -v m="$HUGEMNT" '$2 == m && $3 == "hugetlbfs"' /proc/mounts | wc -l)" = 1 ] || fail "second setup mounted hugetlbfs again"
if [ -d /sys/kernel/mm/hugepages/hugepages-1048576kB ]; then
    # The guest has 1 GiB of RAM: four 1 GiB pages cannot be reserved.
    rejects setup 4 --size 1G
fi

step "status after setup"
ok status

step "bind"
ok bind "$NVME" "$IGB0_SHORT" "$VIRTIO"
for d in "$NVME" "$IGB0" "$VIRTIO"; do
    [ "$(driver_of "$d")" = vfio-pci ] || fail "$d driver is '$(driver_of "$d")' after bind, expected vfio-pci"
    g="$(group_of "$d")"
    [ -c "/dev/vfio/$g" ] || fail "/dev/vfio/$g (IOMMU group of $d) missing after bind"
done
[ -c /dev/vfio/vfio ] || fail "/dev/vfio/vfio missing"
out="$(ok bind "$NVME")" || exit 1
echo "$out"
echo "$out" | grep -q 'already bound' || fail "second bind of $NVME did not say 'already bound'"

step "status after bind"
st="$(ok status)" || exit 1
echo "$st"
for d in "$NVME" "$IGB0" "$VIRTIO"; do
    echo "$st" | grep "^ *$d " | grep -q " vfio-pci .*/dev/vfio/$(group_of "$d")" \
        || fail "status does not show $d on vfio-pci with /dev/vfio/$(group_of "$d")"
done

step "unbind restores the original driver"
ok unbind "${VIRTIO#0000:}"
[ "$(driver_of "$VIRTIO")" = "$virtio_drv0" ] || fail "$VIRTIO driver is '$(driver_of "$VIRTIO")' after unbind, expected $virtio_drv0"
ov="$(cat "/sys/bus/pci/devices/$VIRTIO/driver_override")"
[ "$ov" = "(null)" ] || [ -z "$ov" ] || fail "driver_override of $VIRTIO still '$ov' after unbind"
ok unbind "$VIRTIO"   # idempotent

step "reset"
ok reset
for d in "$NVME" "$IGB0"; do
    [ "$(driver_of "$d")" = "$([ "$d" = "$NVME" ] && echo "$nvme_drv0" || echo "$igb_drv0")" ] \
        || fail "$d driver is '$(driver_of "$d")' after reset, expected its original driver"
    ov="$(cat "/sys/bus/pci/devices/$d/driver_override")"
    [ "$ov" = "(null)" ] || [ -z "$ov" ] || fail "driver_override of $d still '$ov' after reset"
done
[ "$(cat "$NR")" = "$nr0" ] || fail "nr_hugepages is $(cat "$NR") after reset, expected $nr0"
hugetlbfs_at "$HUGEMNT" && fail "hugetlbfs still mounted at $HUGEMNT after reset"
ok reset      # idempotent

step "status after reset"
ok status

echo "PASS hugepages.sh round trip"
