#!/usr/bin/env bash
# Install what the test guest needs on a fresh Debian bookworm host:
# QEMU 10 from bookworm-backports (it has the igb model), busybox-static and
# cpio for the initramfs, and a Debian guest kernel unpacked into the cache.
# Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${FASTLANE_VM_CACHE:-$here/../.cache/vm}"
mkdir -p "$cache"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

need_apt=0
command -v qemu-system-x86_64 >/dev/null || need_apt=1
[ -x /bin/busybox ] && busybox --list 2>/dev/null | grep -qx ash || need_apt=1
command -v cpio >/dev/null || need_apt=1
if [ "$need_apt" = 1 ]; then
  src=/etc/apt/sources.list.d/fastlane-backports.sources
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uris="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    [ -n "$uris" ] || uris=http://deb.debian.org/debian
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uris" | $SUDO tee "$src" >/dev/null
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq busybox-static cpio xz-utils >/dev/null
fi

if ! ls "$cache"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  pkg="$(apt-cache depends -t bookworm-backports linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
  [ -n "$pkg" ] || { echo "install-host: cannot find the backports guest kernel package" >&2; exit 1; }
  rm -rf "$cache/kernel" "$cache"/linux-image-*.deb
  (cd "$cache" && apt-get download -t bookworm-backports "$pkg" >/dev/null)
  dpkg-deb -x "$cache"/linux-image-*.deb "$cache/kernel"
  rm -f "$cache"/linux-image-*.deb
fi
echo "install-host: qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), kernel $(basename "$cache"/kernel/boot/vmlinuz-*)"
