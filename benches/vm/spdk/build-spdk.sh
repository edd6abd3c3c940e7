#!/usr/bin/env bash
# Builds SPDK's spdk_nvme_perf against Debian bookworm's DPDK 22.11 (the
# libdpdk-dev package), with every optional component off.
#
#   SPDK_MIRROR=<git dir of spdk/spdk> build-spdk.sh DIR   clone, patch, configure, build in DIR
#
# The benchmark scripts call it through spdk-dir.sh with DIR under the
# repository's .cache/ (nothing is vendored). Installs the build dependencies
# it lacks with apt-get (root).
#
# SPDK tag: v25.09 (newest release; every release from v23.01 to v25.09 still
# carries the DPDK 22.11 PCI ABI table, fn_table_2211). Three patches
# (spdk-v25.09.patch next to this script):
#   lib/env_dpdk/pci_dpdk.c  accept DPDK 22.11.x up to .11 (upstream accepts
#                            22.11.0-22.11.4 only and refuses bookworm's 22.11.11
#                            at run time: "DPDK version 22.11.11 is not supported")
#   configure                SPDK_NO_ISAL=1 skips ISA-L (a submodule we do not
#                            have; configure has no --without-isal on x86_64)
#   app/spdk_nvme_perf/perf.c  fflush(stdout) after "Launching workers." so that
#                            the benchmark can see when the measured run starts
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:?usage: build-spdk.sh DIR}"
tag="${SPDK_TAG:-v25.09}"
mirror="${SPDK_MIRROR:?set SPDK_MIRROR to a git clone or mirror of spdk/spdk with its tags}"
log() { echo "build-spdk: $*" >&2; }

if [ -x "$dir/build/bin/spdk_nvme_perf" ] && [ -f "$dir/.peer-build-ok" ]; then
    log "spdk_nvme_perf already built in $dir"; exit 0
fi
pkgs=(dpdk-dev libdpdk-dev libnuma-dev uuid-dev libssl-dev libaio-dev libncurses-dev python3 pkg-config meson ninja-build)
if ! dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then
    log "installing build dependencies: ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null
fi
log "system DPDK $(pkg-config --modversion libdpdk)"
if [ ! -d "$dir/.git" ]; then
    git clone -q "$mirror" "$dir"
fi
cd "$dir"
git checkout -q -f "$tag"
git reset -q --hard "$tag"
git apply "$here/spdk-$tag.patch"
SPDK_NO_ISAL=1 ./configure --with-dpdk \
    --disable-tests --disable-unit-tests --disable-examples \
    --without-crypto --without-vhost --without-virtio --without-vfio-user --without-ocf \
    --without-xnvme --without-fio --without-idxd --without-rdma --without-uring --without-fsdev \
    --without-nvme-cuse --without-usdt --without-rbd --without-ublk --without-iscsi-initiator \
    --without-fc --without-daos --without-sma --without-avahi --without-golang \
    --without-aio-fsdev --without-dpdk-compressdev >&2
# Only what spdk_nvme_perf links: the libraries, the posix sock module, the
# keyring modules, the app. (configure turns CONFIG_SHARED on with a packaged
# DPDK, so the SPDK libraries are shared objects in build/lib.)
make include/spdk/config.h include/spdk/version.h build_dir >&2
make -j2 -C lib >&2
make -j2 -C module/sock >&2
make -j2 -C module/keyring >&2
make -j2 -C app/spdk_nvme_perf >&2
touch .peer-build-ok
log "built $dir/build/bin/spdk_nvme_perf"
