#!/bin/sh
# Guest side of apps/nvmf-tcp/bench/nvmf-vs-kernel.sh (busybox sh, run by
# vm/run.sh --peers). Linux's nvme-tcp initiator connects over loopback to
#   ours    /bin/nvmf-tcp, the controller on vfio-pci
#   kernel  nvmet + nvmet-tcp (configfs), the controller on the kernel nvme
#           driver, its namespace exported by device path
# and fio (io_uring, direct) reads the initiator's block device. Prints one
# "BENCH ..." line per run; the host script makes the table.
#
# Environment (from the host script): BENCH_BACKEND, BENCH_TIME,
# BENCH_ROUNDS, BENCH_CASES (names below, comma separated),
# BENCH_TARGET_ARGS (extra arguments for nvmf-tcp, comma separated),
# BENCH_CONNECT_EXTRA (appended to the initiator's connect options for both
# targets, e.g. ",nr_io_queues=1"), BENCH_TARGET_CPUS (taskset list for
# nvmf-tcp), BENCH_FIO_CPUS (fio --cpus_allowed, both targets).
set -u
N="$FASTLANE_NVME"
T="$BENCH_TIME"
ROUNDS="$BENCH_ROUNDS"
# Lists come comma-separated (FASTLANE_GUEST_ENV splits on whitespace).
CASES="$(echo "${BENCH_CASES:-randread4k_qd1,randread4k_qd32,seqread128k_qd32}" | tr , ' ')"
TARGET_ARGS="$(echo "${BENCH_TARGET_ARGS:-}" | tr , ' ')"
# A second nvmf-tcp configuration ("ours-b"), measured in the same rounds.
TARGET_ARGS_B="$(echo "${BENCH_TARGET_ARGS_B:-}" | tr , ' ')"
CONNECT_EXTRA="${BENCH_CONNECT_EXTRA:-}"
NQN_OURS=nqn.2026-01.io.fastlane:bench
NQN_KERN=nqn.2026-01.io.linux:bench
CFS=/sys/kernel/config/nvmet
fail() { echo "BENCH-FAIL: $*"; dmesg | tail -20; exit 1; }

hugepages.sh setup 256 >/dev/null || fail "hugepages setup"
hugepages.sh bind "$N" >/dev/null || fail "bind vfio-pci"
# The kernel nvme driver (it leaves the controller alone while vfio-pci has
# it: driver_override), then the fabrics modules; each module once.
loaded() { grep -q "^$(echo "$1" | tr - _) " /proc/modules; }
for dir in /lib/modules-extra /lib/modules-fabrics; do
    for m in $(cat "$dir/ORDER"); do
        loaded "$m" || insmod "$dir/$m.ko" || fail "insmod $m"
    done
done
ip link set lo up || fail "lo up"
grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs none /sys/kernel/config || fail "configfs"
[ -e /dev/nvme-fabrics ] || fail "no /dev/nvme-fabrics"

# The kernel target's subsystem and port, configured once; the namespace is
# enabled and the port linked only while the kernel driver has the device.
S="$CFS/subsystems/$NQN_KERN"
mkdir "$S" && echo 1 > "$S/attr_allow_any_host" && mkdir "$S/namespaces/1" || fail "nvmet subsystem"
mkdir "$CFS/ports/1" || fail "nvmet port"
echo tcp > "$CFS/ports/1/addr_trtype"
echo ipv4 > "$CFS/ports/1/addr_adrfam"
echo 127.0.0.1 > "$CFS/ports/1/addr_traddr"
echo 4420 > "$CFS/ports/1/addr_trsvcid"

# The block device of controller $1 (nvmeN): with native multipath it is the
# subsystem's head disk (the path disk nvmeXcYnZ is hidden).
blockdev_of() {
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [ -e "$s/$1" ] || continue
        for b in "$s"/nvme*n1; do [ -e "$b" ] && { basename "$b"; return 0; }; done
    done
    for b in /sys/class/nvme/"$1"/"$1"n1; do [ -e "$b" ] && { basename "$b"; return 0; }; done
    return 1
}
wait_blockdev() {   # controller -> prints the block device once /dev has it
    i=0
    while [ $i -lt 300 ]; do
        b="$(blockdev_of "$1")" && [ -b "/dev/$b" ] && { echo "$b"; return 0; }
        sleep 0.1; i=$((i + 1))
    done
    return 1
}

CTRL=""   # the initiator's controller (nvmeN) while connected
connect() {   # NQN
    exec 3<>/dev/nvme-fabrics || return 1
    echo "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=$1$CONNECT_EXTRA" >&3 || { exec 3>&-; return 1; }
    read -r reply <&3
    exec 3>&-
    inst="$(echo "$reply" | tr ',' '\n' | sed -n 's/^instance=//p')"
    [ -n "$inst" ] || return 1
    CTRL="nvme$inst"
    DEV="/dev/$(wait_blockdev "$CTRL")" || return 1
    echo "connected to $1: $reply, $DEV, $(ls /sys/class/nvme/$CTRL 2>/dev/null | grep -c '^nvme') paths, queues $(cat /sys/class/nvme/$CTRL/queue_count 2>/dev/null)" >&2
}
disconnect() {
    [ -n "$CTRL" ] || return 0
    echo 1 > "/sys/class/nvme/$CTRL/delete_controller"
    i=0
    while [ -e "/sys/class/nvme/$CTRL" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    CTRL=""
}

TPID=""
start_ours() {   # nvmf-tcp arguments
    hugepages.sh bind "$N" >/dev/null || return 1
    rm -f /tmp/tgt.in /tmp/tgt.err; mkfifo /tmp/tgt.in
    # Stops cleanly when its stdin (the fifo, held open by fd 4) closes.
    pin=""; [ -z "${BENCH_TARGET_CPUS:-}" ] || pin="taskset -c $BENCH_TARGET_CPUS"
    $pin /bin/nvmf-tcp --listen 127.0.0.1:4420 --nqn "$NQN_OURS" --device "$N" --until-stdin-closes "$@" \
        < /tmp/tgt.in 2> /tmp/tgt.err &
    TPID=$!
    exec 4> /tmp/tgt.in
    i=0
    until grep -q 'listening on' /tmp/tgt.err; do
        kill -0 $TPID 2>/dev/null && [ $i -lt 600 ] || { cat /tmp/tgt.err; return 1; }
        sleep 0.1; i=$((i + 1))
    done
    cat /tmp/tgt.err >&2
    connect "$NQN_OURS"
}
stop_ours() {
    disconnect
    exec 4>&-
    wait $TPID || { echo "nvmf-tcp exited with $?:"; cat /tmp/tgt.err; return 1; }
    TPID=""
    hugepages.sh unbind "$N" >/dev/null
}
start_kernel() {
    echo "$N" > /sys/bus/pci/drivers/nvme/bind || return 1
    i=0
    while [ $i -lt 300 ]; do
        lc="$(ls "/sys/bus/pci/devices/$N/nvme" 2>/dev/null | head -1)"
        [ -n "$lc" ] && break
        sleep 0.1; i=$((i + 1))
    done
    [ -n "$lc" ] || return 1
    local_dev="$(wait_blockdev "$lc")" || return 1
    printf %s "/dev/$local_dev" > "$S/namespaces/1/device_path" || return 1
    echo 1 > "$S/namespaces/1/enable" || return 1
    ln -s "$S" "$CFS/ports/1/subsystems/$NQN_KERN" || return 1
    echo "nvmet exports /dev/$local_dev (controller $lc)" >&2
    connect "$NQN_KERN"
}
stop_kernel() {
    disconnect
    rm "$CFS/ports/1/subsystems/$NQN_KERN"
    echo 0 > "$S/namespaces/1/enable"
    echo "$N" > /sys/bus/pci/drivers/nvme/unbind
}

cpu() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# Steady-state window: opens half a second after fio forks its job process
# and lasts BENCH_TIME - 1.6 s, so that it closes before the run does.
WIN="$(awk -v t="$T" 'BEGIN { print t - 1.6 }')"
ready_fio() { awk -v p="$pid" '$4 == p { f = 1 } END { exit !f }' /proc/[0-9]*/stat 2>/dev/null && sleep 0.5; }

# BENCH_DIAG=1: per-vCPU busy time, interrupts and where the threads run,
# over the window (for finding out where the time goes).
diag() {
    [ -n "${BENCH_DIAG:-}" ] || return 0
    echo "DIAG $1 $(awk '/^cpu[0-9]/ { printf "%s=%d/%d ", $1, $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)"
    echo "DIAG $1 $(awk '$1 ~ /^(LOC|RES|CAL|TLB):$/ { printf "%s%s,%s ", $1, $2, $3 }' /proc/interrupts)"
    echo "DIAG $1 $(awk '$1 ~ /^(NET_RX|NET_TX|TIMER|SCHED|RCU):$/ { printf "%s%s,%s ", $1, $2, $3 }' /proc/softirqs)"
    for t in /proc/${TPID:-none}/task/[0-9]* /proc/$pid/task/[0-9]*; do
        [ -e "$t/stat" ] || continue
        awk '{ sub(/^[0-9]+ /, ""); n = $1; sub(/^\([^)]*\) /, ""); printf "DIAG T %s state=%s cpu=%s utime=%s stime=%s\n", n, $1, $37, $12, $13 }' "$t/stat"
    done
}

# measure TARGET CASE ROUND FIO-ARGS...
measure() {
    tgt=$1 case=$2 round=$3; shift 3
    rm -f /tmp/fio.json /tmp/fio.err
    c0="$(cpu)"; u0="$(uptime_s)"
    fio --name=x --filename="$DEV" --direct=1 --ioengine=io_uring --time_based --runtime="$T" \
        --norandommap --randrepeat=0 --output-format=json --output=/tmp/fio.json \
        ${BENCH_FIO_CPUS:+--cpus_allowed=$BENCH_FIO_CPUS} "$@" 2> /tmp/fio.err &
    pid=$!
    w0="- -" w1="- -" uw0=- uw1=- inside=0
    while kill -0 $pid 2>/dev/null; do
        if ready_fio; then
            diag "$tgt-$case-$round-start"
            w0="$(cpu)"; uw0="$(uptime_s)"
            sleep "$WIN"
            w1="$(cpu)"; uw1="$(uptime_s)"
            diag "$tgt-$case-$round-end"
            kill -0 $pid 2>/dev/null && inside=1
            break
        fi
        sleep 0.05
    done
    wait $pid
    rc=$?
    c1="$(cpu)"; u1="$(uptime_s)"
    [ $rc = 0 ] || { echo "$tgt $case round $round: fio failed (rc $rc):"; tail -5 /tmp/fio.err; }
    echo "BENCH backend=$BENCH_BACKEND target=$tgt case=$case round=$round rc=$rc cpu0=${c0% *},${c0#* } cpu1=${c1% *},${c1#* } up=$u0,$u1 win0=${w0% *},${w0#* } win1=${w1% *},${w1#* } winup=$uw0,$uw1 inside=$inside hz=100 dev=${DEV#/dev/} json=$(tr -d '\n' < /tmp/fio.json 2>/dev/null)"
}

owner=none   # whose target is up: none, ours, ours-b, kernel
switch_to() {
    [ "$owner" = "$1" ] && return 0
    case "$owner" in ours|ours-b) stop_ours || fail "stopping nvmf-tcp" ;; kernel) stop_kernel ;; esac
    owner=none
    case "$1" in
        # shellcheck disable=SC2086
        ours) start_ours $TARGET_ARGS || fail "starting nvmf-tcp and connecting" ;;
        # shellcheck disable=SC2086
        ours-b) start_ours $TARGET_ARGS_B || fail "starting nvmf-tcp (b) and connecting" ;;
        kernel) start_kernel || fail "starting nvmet and connecting" ;;
    esac
    owner=$1
}
# The first switch to ours binds vfio-pci again: drop the boot-time binding.
hugepages.sh unbind "$N" >/dev/null

for name in $CASES; do
    case $name in
        randread4k_qd1) args="--rw=randread --bs=4096 --iodepth=1" ;;
        randread4k_qd32) args="--rw=randread --bs=4096 --iodepth=32" ;;
        seqread128k_qd32) args="--rw=read --bs=131072 --iodepth=32" ;;
        *) fail "unknown case $name" ;;
    esac
    r=1
    while [ "$r" -le "$ROUNDS" ]; do
        # A B B A A B ...: whoever is up goes first (half the switches of A B A B).
        if [ -n "${BENCH_TARGET_ARGS_B:-}" ]; then
            if [ "$owner" = kernel ]; then order="kernel ours-b ours"; else order="ours ours-b kernel"; fi
            [ "$owner" = ours-b ] && order="ours-b ours kernel"
        elif [ "$owner" = kernel ]; then order="kernel ours"; else order="ours kernel"; fi
        for tgt in $order; do
            switch_to $tgt
            # shellcheck disable=SC2086
            measure $tgt "$name" $r $args
        done
        r=$((r + 1))
    done
done
switch_to none
hugepages.sh reset >/dev/null
exit 0
