#!/bin/busybox sh
# /init of the fastlane test guest (busybox sh). vm/run.sh copies this file
# into the initramfs. It prepares a minimal system with the VFIO modules
# loaded, runs /opt/guest-script.sh and reports its exit code on the serial
# console as "FASTLANE-GUEST-RESULT rc=N" before powering off.
#
# It deliberately does NOT reserve hugepages or bind devices: the tests do
# that themselves (through /usr/bin/hugepages.sh), so they start from the
# state a user's machine would be in.

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt/huge /var /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
[ -e /var/run ] || ln -s /run /var/run

# Kernel modules, listed in dependency order by run.sh.
while read -r mod; do
    [ -n "$mod" ] || continue
    if ! insmod "/lib/modules-boot/$mod.ko" 2>/tmp/insmod.err; then
        echo "guest-init: insmod $mod failed: $(cat /tmp/insmod.err)"
    fi
done < /lib/modules-boot/ORDER

export FASTLANE_NVME=0000:00:04.0
export FASTLANE_IGB0=0000:01:00.0
export FASTLANE_IGB1=0000:02:00.0
export FASTLANE_VIRTIO=0000:00:05.0
export FASTLANE_IN_GUEST=1
export HOME=/tmp
# FASTLANE_AW_BITS and FASTLANE_GUEST_ENV pairs, written by run.sh.
[ -f /etc/fastlane.env ] && . /etc/fastlane.env

cd /opt
sh /opt/guest-script.sh
rc=$?

sync
echo
echo "FASTLANE-GUEST-RESULT rc=$rc"
# Let the serial line drain before the machine goes away.
sleep 0.3
poweroff -f
