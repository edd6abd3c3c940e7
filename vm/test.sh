#!/usr/bin/env bash
# The project's test command: host tests, then the guest tests against
# QEMU's devices through real VFIO, under a 39-bit IOMMU aperture (regions
# placed at a constant IOVA offset) and a 48-bit one (identity mapped).
# Fails when any of them fails.
#
#   vm/test.sh            everything
#   vm/test.sh --guest    guest tests only
#   vm/test.sh --host     host tests only
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
mode="${1:-all}"

if [ "$mode" != --guest ]; then
    echo "=== host tests"
    cargo test --workspace --all-targets
    cargo test --workspace --doc
    "$here/host-checks.sh"
fi
[ "$mode" = --host ] && exit 0

echo "=== building static guest binaries"
"$here/build-guest.sh"
bins=()
for b in "$repo"/.cache/guest-bin/*; do bins+=(--bin "$b"); done

for aw in 39 48; do
    echo "=== guest tests, IOMMU aperture $aw bits"
    # The host side of the NIC link down/up test: it waits for the guest to
    # ask (a token on the console), then toggles IGB0's link over QMP.
    qmp="/tmp/fastlane-qmp.$$.sock" token="flap-$$-$aw-$(date +%s)"
    rm -f "$qmp"
    tests/guest/link-flap-host.sh --qmp "$qmp" --token "$token" --cycles 2 --timeout 3600 &
    flapper=$!
    # The host side of the NVMe removal test: a second NVMe behind a
    # hot-pluggable root port (guest 0000:03:00.0), unplugged and plugged
    # back over a second QMP socket when the guest asks.
    hqmp="/tmp/fastlane-hqmp.$$.sock" htoken="hotplug-$$-$aw-$(date +%s)"
    rm -f "$hqmp"
    himg="${FASTLANE_VM_CACHE:-$repo/.cache/vm}/nvme-hotplug.img"
    rm -f "$himg"; truncate -s 64M "$himg"
    tests/guest/hotplug-host.sh --qmp "$hqmp" --token "$htoken" --timeout 3600 &
    plugger=$!
    hotplug_qemu_args="-qmp unix:$hqmp,server=on,wait=off
        -device pcie-root-port,id=rphp,chassis=3,addr=08.0
        -blockdev driver=file,filename=$himg,node-name=hpfile
        -blockdev driver=raw,file=hpfile,node-name=dhp
        -device nvme,id=nvmehp,serial=fastlanehp01,drive=dhp,bus=rphp"
    rc=0
    FASTLANE_QEMU_EXTRA="${FASTLANE_QEMU_EXTRA:-} -qmp unix:$qmp,server=on,wait=off $hotplug_qemu_args" \
    FASTLANE_GUEST_ENV="${FASTLANE_GUEST_ENV:-} NIC_LINK_FLAP=$token NIC_LINK_FLAP_CYCLES=2 FASTLANE_NVME_HOTPLUG=0000:03:00.0 NVME_HOTPLUG_TOKEN=$htoken" \
        "$here/run.sh" --aw-bits "$aw" --timeout 900 "${bins[@]}" \
        --file tests/guest/hugepages.sh --file tests/guest/reliability.sh \
        --file tests/guest/soak.sh --file tests/guest/nic-soak.sh \
        --script tests/guest/run-all.sh || rc=$?
    if kill -0 "$flapper" 2>/dev/null; then
        kill "$flapper"; wait "$flapper" || true
        echo "=== link flapper: the guest never asked for the link flap"; [ "$rc" != 0 ] || rc=1
    elif ! wait "$flapper"; then
        echo "=== link flapper failed"; [ "$rc" != 0 ] || rc=1
    fi
    if kill -0 "$plugger" 2>/dev/null; then
        kill "$plugger"; wait "$plugger" || true
    elif ! wait "$plugger"; then
        echo "=== NVMe hot-plug host side failed"; [ "$rc" != 0 ] || rc=1
    fi
    rm -f "$qmp" "$hqmp" "$himg"
    [ "$rc" = 0 ] || exit "$rc"
done
echo "=== all tests passed"
