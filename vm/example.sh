#!/usr/bin/env bash
# Runs one example inside the QEMU test guest, where an emulated NVMe
# controller, two igb ports and a virtio-net port sit behind an emulated
# IOMMU. The examples call this themselves when the machine has no device
# bound to vfio-pci; it can also be run by hand:
#
#   vm/example.sh nvme_read --queue-depth 32 --time 5
#
# It prints one line saying the guest boots, then only the example's own
# output: its stdout on stdout, its stderr on stderr (each line is tagged in
# the guest and picked out of the serial console here). The firmware's and
# kernel's console output stays in the console log (.cache/vm/console.log),
# which errors point to. The exit code is the example's.
#
# FASTLANE_NVME_BACKEND=null backs the NVMe with QEMU's null-co driver
# (reads return zeroes at almost no cost), to measure the driver rather than
# the image file. The guest reserves hugepages and binds the devices first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
example="${1:?usage: vm/example.sh EXAMPLE [ARGS...]}"; shift
cd "$repo"
# An example is examples/NAME.rs or examples/NAME/main.rs (cargo's two forms).
[ -f "examples/$example.rs" ] || [ -f "examples/$example/main.rs" ] \
    || { echo "vm/example.sh: no example $example" >&2; exit 2; }
console_log="${FASTLANE_VM_CACHE:-$repo/.cache/vm}/console.log"

mkdir -p "$repo/.cache"
host_log="$repo/.cache/example-host.log"
"$here/install-host.sh" > "$host_log" 2>&1 || { cat "$host_log" >&2; exit 1; }
bindir="$repo/.cache/example-bin"
mkdir -p "$bindir"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --quiet --target x86_64-unknown-linux-gnu --example "$example"
cp "target/x86_64-unknown-linux-gnu/release/examples/$example" "$bindir/$example"

quoted=""
for a in "$@"; do quoted="$quoted '${a//\'/\'\\\'\'}'"; done
script="$repo/.cache/example-guest.sh"
# In the guest: every line the example writes is tagged FASTLANE-OUT (its
# stdout) or FASTLANE-ERR (its stderr) on the console; the shell's own
# `echo` writes each line at once, so progress lines arrive as they happen.
cat > "$script" <<GUEST
#!/bin/sh
# End whatever the firmware left on the console's last line.
echo
tag() { while IFS= read -r l || [ -n "\$l" ]; do echo "\$1 \$l"; done; }
fail() { echo "FASTLANE-ERR vm/example.sh: \$* in the guest (see $console_log)"; exit 1; }
hugepages.sh setup 256 >/dev/null 2>&1 || fail "hugepages.sh setup failed"
hugepages.sh bind "\$FASTLANE_NVME" "\$FASTLANE_IGB0" "\$FASTLANE_IGB1" >/dev/null 2>&1 || fail "hugepages.sh bind failed"
exec 4>&1
{ { /bin/$example$quoted; echo \$? > /tmp/example.rc; } 2>&1 1>&3 3>&- | tag FASTLANE-ERR >&4; } 3>&1 | tag FASTLANE-OUT
[ -f /tmp/example.rc ] || fail "$example did not finish"
exit "\$(cat /tmp/example.rc)"
GUEST
if [ "${FASTLANE_NVME_BACKEND:-image}" = null ]; then
    export FASTLANE_NVME_DRIVE="driver=null-co,read-zeroes=on,size=1G"
fi

echo "vm/example.sh: booting the QEMU test guest to run $example (console in $console_log)" >&2
# run.sh's console copy (its stdout) is reduced to the example's tagged
# lines; of its own messages on stderr, only the failures pass.
set +e
"$here/run.sh" --mem 2G --timeout "${FASTLANE_VM_TIMEOUT:-900}" --bin "$bindir/$example" --script "$script" \
    2> >(grep --line-buffered -v -e '^run\.sh: booting guest' -e '^run\.sh: guest script exited' -e '^install-host:' >&2) \
    | while IFS= read -r line; do
        case "$line" in
            # (anything before a tag, such as the firmware's escape codes
            # left without a newline, is dropped)
            *"FASTLANE-OUT "*) printf '%s\n' "${line#*FASTLANE-OUT }" ;;
            *"FASTLANE-ERR "*) printf '%s\n' "${line#*FASTLANE-ERR }" >&2 ;;
        esac
    done
rc=${PIPESTATUS[0]}
# Let the stderr filter (the process substitution) finish before returning.
wait 2>/dev/null || true
exit "$rc"
