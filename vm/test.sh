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
fi
[ "$mode" = --host ] && exit 0

echo "=== building static guest binaries"
"$here/build-guest.sh"
bins=()
for b in "$repo"/.cache/guest-bin/*; do bins+=(--bin "$b"); done

for aw in 39 48; do
    echo "=== guest tests, IOMMU aperture $aw bits"
    "$here/run.sh" --aw-bits "$aw" --timeout 900 "${bins[@]}" \
        --file tests/guest/hugepages.sh --file tests/guest/reliability.sh \
        --file tests/guest/soak.sh --script tests/guest/run-all.sh
done
echo "=== all tests passed"
