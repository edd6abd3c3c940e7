#!/usr/bin/env bash
# Runs one example inside the QEMU test guest, where an emulated NVMe
# controller, two igb ports and a virtio-net port sit behind an emulated
# IOMMU. The examples call this themselves when the machine has no device
# bound to vfio-pci; it can also be run by hand:
#
#   vm/example.sh nvme_read --queue-depth 32 --time 5
#
# FASTLANE_NVME_BACKEND=null backs the NVMe with QEMU's null-co driver
# (reads return zeroes at almost no cost), to measure the driver rather than
# the image file. The guest reserves hugepages and binds the devices first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
example="${1:?usage: vm/example.sh EXAMPLE [ARGS...]}"; shift
cd "$repo"
[ -f "examples/$example.rs" ] || { echo "vm/example.sh: no example $example" >&2; exit 2; }

"$here/install-host.sh" >&2
bindir="$repo/.cache/example-bin"
mkdir -p "$bindir"
echo "vm/example.sh: building $example for the guest (static)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --quiet --target x86_64-unknown-linux-gnu --example "$example"
cp "target/x86_64-unknown-linux-gnu/release/examples/$example" "$bindir/$example"

quoted=""
for a in "$@"; do quoted="$quoted '${a//\'/\'\\\'\'}'"; done
script="$repo/.cache/example-guest.sh"
cat > "$script" <<GUEST
#!/bin/sh
hugepages.sh setup 256 >/dev/null || exit 1
hugepages.sh bind "\$FASTLANE_NVME" "\$FASTLANE_IGB0" "\$FASTLANE_IGB1" >/dev/null || exit 1
/bin/$example$quoted
GUEST
if [ "${FASTLANE_NVME_BACKEND:-image}" = null ]; then
    export FASTLANE_NVME_DRIVE="driver=null-co,read-zeroes=on,size=1G"
fi
exec "$here/run.sh" --mem 2G --timeout "${FASTLANE_VM_TIMEOUT:-900}" --bin "$bindir/$example" --script "$script"
