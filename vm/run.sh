#!/usr/bin/env bash
# Boot the fastlane test guest under QEMU (software emulation) and run one
# guest script in it. The guest has real VFIO behind an emulated VT-d:
#
#   0000:00:04.0  NVMe controller (QEMU 1b36:0010), namespace 1 backed by
#                 .cache/vm/nvme.img (512-byte blocks, no metadata); namespaces
#                 2 and 3 (metadata and PI) exist detached, see usage()
#   0000:00:05.0  virtio-net-pci, modern only (1af4:1041)
#   0000:00:09.0  virtio-net-pci with FASTLANE_VIRTIO_MQ_QUEUES (default 4) queue
#                 pairs, RSS and packed rings offered (the driver picks split or
#                 packed), on a multi-queue tap bridged to the hub (root only)
#   0000:01:00.0  igb (8086:10c9) behind root port 00:06.0
#   0000:02:00.0  igb (8086:10c9) behind root port 00:07.0
#
# The three NICs share one QEMU hub, so frames sent by one arrive at the others.
# The guest script's exit code becomes this script's exit code.
#
# Usage: see usage() below. Environment:
#   FASTLANE_QEMU_EXTRA  extra QEMU arguments (split on whitespace)
#   FASTLANE_NVME_DRIVE  replacement -drive value for the NVMe backend, e.g.
#                        driver=null-co,read-zeroes=on,size=1G
#                        (",if=none,id=d0" is added when missing)
#   FASTLANE_GUEST_ENV   space-separated K=V pairs exported in the guest
#   FASTLANE_TCG_THREAD  single (default) or multi: multi-threaded TCG is
#                        faster but QEMU 10 can abort in iotlb_to_section
#                        when a device's memory map changes under a running
#                        vCPU (device open/close, bus-master toggles)
#   FASTLANE_VM_CACHE    cache directory (default: <repo>/.cache/vm)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${FASTLANE_VM_CACHE:-$repo/.cache/vm}"
nvme_img="$cache/nvme.img"           # recreated (empty, 256 MiB sparse) each run
nvme_img_size=256M
# Namespaces 2 and 3 (metadata, protection information): small, recreated too.
pi_ext_img="$cache/nvme-pi-ext.img"
pi_sep_img="$cache/nvme-pi-sep.img"
pi_img_size=1M
console_log="$cache/console.log"

usage() {
    cat <<EOF
usage: vm/run.sh [--aw-bits 39|48] [--timeout SECONDS] [--mem 1G] [--peers]
                 [--spdk SPDK_DIR] [--no-tap] [--bin PATH]... [--file PATH]... --script GUEST_SCRIPT

Boots a QEMU q35 guest with an emulated Intel IOMMU, an NVMe controller, two
igb NICs and a virtio-net NIC, runs GUEST_SCRIPT there with busybox sh and
exits with its exit code.

  --aw-bits N     IOMMU address width: 39 (default, 512 GiB IOVA) or 48
  --timeout S     kill the guest after S seconds (default 600), exit 124
  --mem SIZE      guest memory (default 1G)
  --bin PATH      copy PATH to /bin/ in the guest (repeatable)
  --file PATH     copy PATH to /opt/ in the guest (repeatable)
  --peers         add the peer programs built by vm/peers.sh (Debian's fio,
                  dpdk-testpmd with the igb PMD, their libraries) to the guest;
                  the initramfs grows by about 100 MB: use --mem 2G or more
  --spdk DIR      add SPDK's spdk_nvme_perf built in DIR (DIR/build/bin, its
                  shared libraries DIR/build/lib/libspdk_*.so: see
                  benches/vm/spdk/build-spdk.sh) as /usr/local/bin and
                  /usr/local/lib, and /var/tmp (SPDK's PCI lock files);
                  needs --peers (DPDK, OpenSSL and the other libraries)
  --no-tap        no multi-queue virtio-net on a host tap (below): the
                  benchmarks use it, since the tap's bridge to the hub has the
                  host kernel take a copy of every frame on the hub
  --script PATH   the guest script, run as 'sh /opt/guest-script.sh'

The NVMe controller (in NVM subsystem nqn.2019-08.org.qemu:fastlane0001) has
namespace 1 attached (the drive, 512-byte blocks, no metadata), and two
namespaces formatted with 8 bytes of metadata per 512-byte block and
protection information type 1, created detached so every other test sees one
namespace: 2 (extended LBA: metadata after each block's data) and 3 (metadata
in a separate buffer), 1 MiB images each. A test attaches them with Namespace
Attachment and detaches them when done.

In the guest: FASTLANE_NVME=0000:00:04.0 FASTLANE_IGB0=0000:01:00.0
FASTLANE_IGB1=0000:02:00.0 FASTLANE_VIRTIO=0000:00:05.0 FASTLANE_IN_GUEST=1;
FASTLANE_VIRTIO_MQ=0000:00:09.0 (virtio-net, mq=on,rss=on,packed=on, on a host tap
bridged to the hub; only when run.sh can create taps, i.e. as root) and
FASTLANE_VIRTIO_MQ_QUEUES (its queue pairs, FASTLANE_VIRTIO_MQ_QUEUES on the
host, default 4);
vfio-pci is loaded, no hugepages are reserved, no device is bound;
/usr/bin/hugepages.sh is the repo's hugepages.sh; the kernel nvme driver and
its dependencies are in /lib/modules-extra/ (insmod them in the order listed
in /lib/modules-extra/ORDER); NVMe over Fabrics (nvme-fabrics, nvme-tcp, nvmet,
nvmet-tcp, crc32c) with their dependencies in /lib/modules-fabrics/ (same);
the kernel's igb NIC driver with its dependencies in /lib/modules-net/ (same;
loading it binds every igb port not bound to vfio-pci).

Exit codes: the guest script's rc; 124 timeout; 125 no result marker (guest
crashed or QEMU failed); 2 usage error.
Console output is also written to $console_log.
EOF
}

die() { echo "run.sh: $*" >&2; exit 2; }

aw=39 timeout_s=600 mem=1G script="" peers=0 spdk="" tap=1
bins=() files=()
while [ $# -gt 0 ]; do
    case "$1" in
        --aw-bits) aw="${2:?--aw-bits needs a value}"; shift 2 ;;
        --timeout) timeout_s="${2:?--timeout needs a value}"; shift 2 ;;
        --mem) mem="${2:?--mem needs a value}"; shift 2 ;;
        --bin) bins+=("${2:?--bin needs a path}"); shift 2 ;;
        --file) files+=("${2:?--file needs a path}"); shift 2 ;;
        --script) script="${2:?--script needs a path}"; shift 2 ;;
        --peers) peers=1; shift ;;
        --no-tap) tap=0; shift ;;
        --spdk) spdk="${2:?--spdk needs a directory}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[ -n "$script" ] || { usage >&2; die "--script is required"; }
[ -f "$script" ] || die "guest script not found: $script"
case "$aw" in 39|48) ;; *) die "--aw-bits must be 39 or 48, got $aw" ;; esac
case "$timeout_s" in ''|*[!0-9]*) die "--timeout must be a number of seconds" ;; esac
for f in "${bins[@]}" "${files[@]}"; do [ -f "$f" ] || die "file not found: $f"; done
if [ -n "$spdk" ]; then
    [ "$peers" = 1 ] || die "--spdk needs --peers (SPDK's libraries come from the peer sysroot)"
    [ -x "$spdk/build/bin/spdk_nvme_perf" ] || die "no $spdk/build/bin/spdk_nvme_perf (benches/vm/spdk/build-spdk.sh builds it)"
fi

"$here/install-host.sh" >&2

mkdir -p "$cache"
# One guest at a time per cache: nvme.img, the initramfs and console.log are shared.
exec 9>"$cache/run.lock"
if ! flock -n 9; then
    echo "run.sh: another guest is running with cache $cache, waiting" >&2
    flock 9
fi
peers_root=""
[ "$peers" = 0 ] || peers_root="$(FASTLANE_VM_CACHE="$cache" "$here/peers.sh")"

kdir="$cache/kernel"
vmlinuz="$(ls "$kdir"/boot/vmlinuz-* | head -1)"
kver="${vmlinuz##*/vmlinuz-}"
moddir="$kdir/lib/modules/$kver"
[ -d "$moddir" ] || die "no modules for kernel $kver in $moddir"

# --- kernel modules -------------------------------------------------------
# No depmod on the host: find a module's .ko.xz by name and read its
# depends= field, and emit modules in dependency order (dependencies first).
modcache="$cache/modules-$kver"
mkdir -p "$modcache"
declare -A seen=()

mod_path() {            # name -> path of its .ko.xz ('-' and '_' are the same)
    local dash under
    dash="$(echo "$1" | tr _ -)"; under="$(echo "$1" | tr - _)"
    find "$moddir/kernel" \( -name "$dash.ko.xz" -o -name "$under.ko.xz" \) -print -quit
}

mod_ko() {              # name -> decompressed .ko in the cache
    local n="$1" src
    if [ ! -f "$modcache/$n.ko" ]; then
        src="$(mod_path "$n")"
        [ -n "$src" ] || die "kernel module $n not found under $moddir"
        xz -dc "$src" > "$modcache/$n.ko.tmp" && mv "$modcache/$n.ko.tmp" "$modcache/$n.ko"
    fi
    echo "$modcache/$n.ko"
}

mod_order() {           # name... -> names in load order
    local n d deps
    for n in "$@"; do
        [ -z "${seen[$n]:-}" ] || continue
        seen[$n]=1
        deps="$(strings "$(mod_ko "$n")" | sed -n 's/^depends=//p' | head -1 | tr ',' ' ')"
        for d in $deps; do mod_order "$d"; done
        echo "$n"
    done
}

boot_mods="$(seen=(); mod_order irqbypass vfio vfio_iommu_type1 vfio-pci-core vfio-pci)"
extra_mods="$(seen=(); mod_order nvme-core nvme nvme-keyring)"
# NVMe over Fabrics with TCP: the kernel initiator and target (and crc32c
# for digests), for the nvmf-tcp target's tests and benchmarks.
fabrics_mods="$(seen=(); mod_order crc32c_generic nvme-fabrics nvme-tcp nvmet nvmet-tcp)"
# The kernel's own igb driver (dca, i2c-algo-bit), so a guest test can put
# one igb port on the kernel's network stack as a peer.
net_mods="$(seen=(); mod_order igb)"

# --- initramfs --------------------------------------------------------------
root="$cache/initramfs-root"
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,opt,mnt/huge,lib/modules-boot,lib/modules-extra,lib/modules-fabrics,lib/modules-net}
[ -z "$peers_root" ] || cp -a "$peers_root/." "$root/"
if [ -n "$spdk" ]; then
    mkdir -p "$root/usr/local/bin" "$root/usr/local/lib" "$root/var/tmp"
    install -m 755 "$spdk/build/bin/spdk_nvme_perf" "$root/usr/local/bin/"
    cp -a "$spdk"/build/lib/libspdk_*.so* "$root/usr/local/lib/"
    echo /usr/local/lib >> "$root/etc/ld.so.conf"
    ldconfig -X -r "$root" 2>/dev/null || echo "run.sh: ldconfig -r failed (set LD_LIBRARY_PATH=/usr/local/lib in the guest)" >&2
fi
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$root/dev/null" c 1 3 2>/dev/null || true
install -m 755 "$here/guest-init.sh" "$root/init"
for m in $boot_mods; do cp "$(mod_ko "$m")" "$root/lib/modules-boot/$m.ko"; done
for m in $extra_mods; do cp "$(mod_ko "$m")" "$root/lib/modules-extra/$m.ko"; done
echo "$boot_mods" > "$root/lib/modules-boot/ORDER"
echo "$extra_mods" > "$root/lib/modules-extra/ORDER"
for m in $fabrics_mods; do cp "$(mod_ko "$m")" "$root/lib/modules-fabrics/$m.ko"; done
echo "$fabrics_mods" > "$root/lib/modules-fabrics/ORDER"
for m in $net_mods; do cp "$(mod_ko "$m")" "$root/lib/modules-net/$m.ko"; done
echo "$net_mods" > "$root/lib/modules-net/ORDER"
for f in "${bins[@]}"; do install -m 755 "$f" "$root/bin/$(basename "$f")"; done
for f in "${files[@]}"; do cp "$f" "$root/opt/$(basename "$f")"; done
[ -f "$repo/hugepages.sh" ] && install -m 755 "$repo/hugepages.sh" "$root/usr/bin/hugepages.sh"
install -m 755 "$script" "$root/opt/guest-script.sh"
mkdir -p "$root/etc"
{ echo "export FASTLANE_AW_BITS=$aw"
  for kv in ${FASTLANE_GUEST_ENV:-}; do echo "export $kv"; done; } > "$root/etc/fastlane.env"
# virtio-net with several queue pairs and RSS (0000:00:09.0): a hubport
# cannot carry queues, a multi-queue tap can. Its frames reach hub 0 through
# a host bridge joining it to a second tap on a hubport. Needs CAP_NET_ADMIN;
# without it the guest has no FASTLANE_VIRTIO_MQ and its suite skips.
vmq_queues="${FASTLANE_VIRTIO_MQ_QUEUES:-4}"
vmq_if="flmq$$"   # + a (multi-queue, the device's), b (on the hub), br
vmq_qemu=()
vmq_cleanup() { for i in "${vmq_if}a" "${vmq_if}b" "${vmq_if}br"; do ip link del "$i" 2>/dev/null || true; done; }
if [ "$tap" = 1 ] && ip tuntap add dev "${vmq_if}a" mode tap multi_queue 2>/dev/null \
    && ip tuntap add dev "${vmq_if}b" mode tap && ip link add "${vmq_if}br" type bridge; then
    trap vmq_cleanup EXIT
    for i in "${vmq_if}a" "${vmq_if}b" "${vmq_if}br"; do   # no host traffic on them
        ip link set "$i" addrgenmode none; sysctl -qw "net.ipv6.conf.$i.disable_ipv6=1" || true
    done
    ip link set "${vmq_if}a" master "${vmq_if}br"; ip link set "${vmq_if}b" master "${vmq_if}br"
    for i in "${vmq_if}a" "${vmq_if}b" "${vmq_if}br"; do ip link set "$i" up; done
    vmq_qemu=(-netdev "tap,id=pmq,ifname=${vmq_if}a,queues=$vmq_queues,script=no,downscript=no,vhost=off"
        -device "virtio-net-pci,netdev=pmq,addr=09.0,disable-legacy=on,romfile=,iommu_platform=on,mq=on,rss=on,packed=on"
        -netdev "tap,id=pmqb,ifname=${vmq_if}b,script=no,downscript=no,vhost=off" -netdev hubport,id=p3,hubid=0,netdev=pmqb)
    echo "export FASTLANE_VIRTIO_MQ=0000:00:09.0 FASTLANE_VIRTIO_MQ_QUEUES=$vmq_queues" >> "$root/etc/fastlane.env"
elif [ "$tap" = 1 ]; then
    vmq_cleanup
    echo "run.sh: no multi-queue tap (needs CAP_NET_ADMIN): no multi-queue virtio-net in the guest" >&2
fi
initrd="$cache/initramfs.cpio.gz"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > "$initrd.tmp")
mv "$initrd.tmp" "$initrd"

# --- NVMe backend -----------------------------------------------------------
rm -f "$nvme_img" "$pi_ext_img" "$pi_sep_img"
truncate -s "$nvme_img_size" "$nvme_img"
truncate -s "$pi_img_size" "$pi_ext_img" "$pi_sep_img"
drive="${FASTLANE_NVME_DRIVE:-file=$nvme_img,format=raw,discard=unmap}"
case ",$drive," in *,id=*) ;; *) drive="$drive,id=d0" ;; esac
case ",$drive," in *,if=*) ;; *) drive="$drive,if=none" ;; esac

# --- QEMU -------------------------------------------------------------------
qemu=(qemu-system-x86_64
    -accel "tcg,thread=${FASTLANE_TCG_THREAD:-single}" -cpu max -m "$mem" -smp 2
    -machine q35,kernel-irqchip=split
    -device "intel-iommu,intremap=on,aw-bits=$aw"
    -vga none -nic none
    -drive "$drive"
    -drive "file=$pi_ext_img,format=raw,if=none,id=dpi2"
    -drive "file=$pi_sep_img,format=raw,if=none,id=dpi3"
    -device nvme-subsys,id=subsys0,nqn=fastlane0001
    -device nvme,id=nvme0,serial=fastlane0001,subsys=subsys0,addr=04.0
    -device nvme-ns,drive=d0,bus=nvme0,nsid=1,shared=off
    -device nvme-ns,drive=dpi2,bus=nvme0,nsid=2,ms=8,mset=1,pi=1,detached=on
    -device nvme-ns,drive=dpi3,bus=nvme0,nsid=3,ms=8,mset=0,pi=1,detached=on
    -netdev hubport,id=p2,hubid=0
    -device virtio-net-pci,netdev=p2,addr=05.0,disable-legacy=on,romfile=,iommu_platform=on
    "${vmq_qemu[@]}"
    -device pcie-root-port,id=rp1,chassis=1,addr=06.0
    -device pcie-root-port,id=rp2,chassis=2,addr=07.0
    -netdev hubport,id=p0,hubid=0 -device igb,netdev=p0,bus=rp1
    -netdev hubport,id=p1,hubid=0 -device igb,netdev=p1,bus=rp2
    -kernel "$vmlinuz" -initrd "$initrd"
    -append "console=ttyS0 intel_iommu=on quiet panic=-1 rdinit=/init"
    -nographic -no-reboot)
# shellcheck disable=SC2206  # word splitting is the interface
[ -z "${FASTLANE_QEMU_EXTRA:-}" ] || qemu+=(${FASTLANE_QEMU_EXTRA})

echo "run.sh: booting guest (aw-bits $aw, mem $mem, timeout ${timeout_s}s), console in $console_log" >&2
start=$(date +%s)
set +e
timeout -k 5 "$timeout_s" "${qemu[@]}" </dev/null 2>&1 | sed -u 's/\r$//' | tee "$console_log"
qrc=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - start ))

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    echo "run.sh: TIMEOUT: guest still running after ${timeout_s}s, QEMU killed (see $console_log)" >&2
    exit 124
fi
rc="$(sed -n 's/^.*FASTLANE-GUEST-RESULT rc=\([0-9][0-9]*\).*$/\1/p' "$console_log" | tail -1)"
if [ -z "$rc" ]; then
    echo "run.sh: FAIL: no FASTLANE-GUEST-RESULT marker (QEMU rc $qrc after ${elapsed}s; guest panic or QEMU error?), see $console_log" >&2
    exit 125
fi
echo "run.sh: guest script exited with rc=$rc after ${elapsed}s" >&2
exit "$rc"
