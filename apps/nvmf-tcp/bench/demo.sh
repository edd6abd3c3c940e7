#!/usr/bin/env bash
# One-command demo of the nvmf-tcp target with Linux's own NVMe/TCP
# initiator, in the QEMU test guest: the emulated NVMe controller goes to
# vfio-pci, nvmf-tcp serves it on 127.0.0.1:4420, the kernel connects
# (the same options nvme-cli writes to /dev/nvme-fabrics), and the block
# device it creates gets 4 MiB written, read back and compared; then the
# initiator disconnects and the target stops cleanly.
#
#   apps/nvmf-tcp/bench/demo.sh
#
# Takes /tmp/fastlane-vm.lock (one guest at a time). About a minute.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cd "$repo"
triple=x86_64-unknown-linux-gnu
echo "demo: building nvmf-tcp (static)" >&2
bin="$repo/.cache/demo-bin"
mkdir -p "$bin"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --quiet --target "$triple" -p fastlane-nvmf-tcp > "$bin/build.log" 2>&1 \
    || { tail -30 "$bin/build.log" >&2; echo "demo: build failed ($bin/build.log)" >&2; exit 1; }
cp "target/$triple/release/nvmf-tcp" "$bin/nvmf-tcp"
script="$repo/.cache/nvmf-demo-guest.sh"
cat > "$script" <<'GUEST'
#!/bin/sh
set -eu
NQN=nqn.2026-01.io.fastlane:demo
say() { echo "demo\$ $*"; }
hugepages.sh setup 192 >/dev/null
say hugepages.sh bind "$FASTLANE_NVME"
hugepages.sh bind "$FASTLANE_NVME" | head -1
for m in $(cat /lib/modules-fabrics/ORDER); do insmod "/lib/modules-fabrics/$m.ko"; done
ip link set lo up
say nvmf-tcp --listen 127.0.0.1:4420 --nqn $NQN --device "$FASTLANE_NVME" '&'
mkfifo /tmp/in
/bin/nvmf-tcp --listen 127.0.0.1:4420 --nqn $NQN --device "$FASTLANE_NVME" --until-stdin-closes < /tmp/in &
tpid=$!
exec 4> /tmp/in
sleep 2
say "echo transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=$NQN > /dev/nvme-fabrics   # what 'nvme connect' does"
exec 3<>/dev/nvme-fabrics
echo "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=$NQN" >&3
read -r reply <&3
exec 3>&-
echo "$reply"
c="nvme$(echo "$reply" | tr ',' '\n' | sed -n 's/^instance=//p')"
sleep 1
for f in transport address subsysnqn model serial firmware_rev queue_count; do
    printf '  %-12s %s\n' "$f" "$(cat /sys/class/nvme/$c/$f)"
done
# Native multipath: the block device is the subsystem's head (nvmeXn1).
dev=""
for s in /sys/class/nvme-subsystem/*; do
    if [ -e "$s/$c" ]; then dev="$(ls "$s" | grep -x 'nvme[0-9]*n1' | head -1)"; fi
done
echo "  block device /dev/$dev, $(( $(cat /sys/block/$dev/size) / 2048 )) MiB"
say dd if=/dev/urandom of=/tmp/pattern bs=1M count=4
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
say dd if=/tmp/pattern of=/dev/$dev bs=64k oflag=direct
dd if=/tmp/pattern of=/dev/$dev bs=64k oflag=direct 2>&1 | tail -1
say dd if=/dev/$dev of=/tmp/back bs=1M count=4 iflag=direct
dd if=/dev/$dev of=/tmp/back bs=1M count=4 iflag=direct 2>&1 | tail -1
say cmp /tmp/pattern /tmp/back
cmp /tmp/pattern /tmp/back && echo "  identical: $(md5sum < /tmp/back | cut -c1-32)"
say "echo 1 > /sys/class/nvme/$c/delete_controller"
echo 1 > /sys/class/nvme/$c/delete_controller
sleep 1
exec 4>&-
wait $tpid
echo "demo: nvmf-tcp stopped cleanly"
hugepages.sh reset >/dev/null
GUEST
exec flock /tmp/fastlane-vm.lock "$repo/vm/run.sh" --mem 1G --timeout 300 --bin "$bin/nvmf-tcp" --script "$script"
