#!/bin/sh
# hugepages.sh - prepare a Linux machine for fastlane's userspace drivers:
# reserve hugepages, mount hugetlbfs, bind PCI devices to vfio-pci and undo
# all of it again. POSIX sh (runs under busybox sh, dash and bash).
#
# What it changes is remembered under $FASTLANE_STATE_DIR (default
# /var/run/fastlane) so that 'unbind' and 'reset' put the machine back:
#   hugepages-<kB>kB.orig   nr_hugepages before the first 'setup'
#   mounted                 the hugetlbfs mount point this script created
#   bound/<BDF>             the driver a device had before 'bind' (empty: none)

set -u

HUGEMNT="${HUGEMNT:-/mnt/huge}"
STATE="${FASTLANE_STATE_DIR:-/var/run/fastlane}"
HP_SYS="${FASTLANE_HUGEPAGES_SYS:-/sys/kernel/mm/hugepages}"
MEMINFO="${FASTLANE_MEMINFO:-/proc/meminfo}"
PCI_SYS=/sys/bus/pci
PROG="${0##*/}"

usage() {
    cat <<EOF
usage: $PROG COMMAND [ARGS]

Prepare this machine for fastlane's userspace drivers (run as root).

Commands:
  setup [N] [--size 2M|1G] [--no-vfio]
          reserve N hugepages of the given size (default: 512 of 2M), mount
          hugetlbfs at \$HUGEMNT (default /mnt/huge) unless one is mounted
          there, and load the vfio-pci driver (skipped with --no-vfio).
          N is a whole number from 1 to what MemTotal holds at that size.
          If fewer than N pages can be reserved, nr_hugepages is set back
          to its previous value and setup fails.
  bind BDF...
          bind PCI devices to vfio-pci, remembering their current driver.
          BDF is 0000:00:04.0 or 00:04.0. Prints the IOMMU group and the
          /dev/vfio/<group> file a driver opens.
  unbind BDF...
          give devices back to the driver they had before 'bind' (or leave
          them without a driver if they had none); clears driver_override.
  reset   unbind every device bound by this script, unmount the hugetlbfs
          it mounted, and set nr_hugepages back to its value before 'setup'
          (0 for sizes never changed by 'setup').
  status  hugepages per size and NUMA node, hugetlbfs mounts, and storage
          and network PCI devices with their driver and IOMMU group.
  help    this text.

Environment:
  HUGEMNT             hugetlbfs mount point (default /mnt/huge)
  FASTLANE_STATE_DIR  where changes are remembered (default /var/run/fastlane)
  FASTLANE_HUGEPAGES_SYS, FASTLANE_MEMINFO
                      stand-ins for /sys/kernel/mm/hugepages and /proc/meminfo
                      (tests)

Exit codes: 0 done, 1 failed, 2 bad command or arguments.

Examples:
  $PROG setup 1024            # 2 GiB of 2 MiB pages
  $PROG setup 2 --size 1G
  $PROG bind 00:04.0 0000:01:00.0
  $PROG status
  $PROG reset
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
# A bad command line: exit code 2.
usage_err() { echo "$PROG: error: $* (see '$PROG help')" >&2; exit 2; }
warn() { echo "$PROG: warning: $*" >&2; }
say() { echo "$PROG: $*"; }

# Write a value to a sysfs/procfs file, failing with a readable message.
sysw() {
    [ -e "$2" ] || die "$2 does not exist"
    if ! { printf '%s\n' "$1" > "$2"; } 2>/dev/null; then
        if [ "$(id -u)" != 0 ]; then
            die "cannot write '$1' to $2: must run as root"
        fi
        die "cannot write '$1' to $2"
    fi
}

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }

# Page size argument (2M, 2MB, 1G, 2048kB, ...) -> size in kB.
size_kb() {
    s="$(echo "$1" | tr 'A-Z' 'a-z')"
    s="${s%b}"; s="${s%i}"
    case "$s" in
        *k) n="${s%k}"; m=1 ;;
        *m) n="${s%m}"; m=1024 ;;
        *g) n="${s%g}"; m=1048576 ;;
        *) n=""; m=0 ;;
    esac
    is_uint "$n" && [ "$n" -gt 0 ] || usage_err "bad page size '$1' (expected e.g. 2M or 1G)"
    echo $((n * m))
}

kb_human() {
    if [ $(($1 % 1048576)) = 0 ]; then echo "$(($1 / 1048576))G"
    elif [ $(($1 % 1024)) = 0 ]; then echo "$(($1 / 1024))M"
    else echo "${1}k"; fi
}

default_kb() { awk '/^Hugepagesize:/ {print $2}' "$MEMINFO" 2>/dev/null; }
mem_total_kb() { awk '/^MemTotal:/ {print $2}' "$MEMINFO" 2>/dev/null; }

# The page count for 'setup' ($1) at $2 kB a page, without leading zeros:
# a whole number from 1 to as many pages as MemTotal holds; else exit 2.
check_count() {
    is_uint "$1" || usage_err "setup: bad page count '$1' (a whole number of pages, at least 1)"
    c="$1"
    while [ "${c#0}" != "$c" ]; do c="${c#0}"; done
    [ -n "$c" ] || usage_err "setup: page count must be at least 1"
    mem="$(mem_total_kb)"
    is_uint "$mem" || die "cannot read MemTotal from $MEMINFO"
    max=$((mem / $2))
    # More digits than the bound: too large (and too long for the shell's
    # arithmetic, which the comparison below uses).
    if [ ${#c} -gt ${#max} ] || [ "$c" -gt "$max" ]; then
        usage_err "setup: $1 pages of $(kb_human "$2") do not fit in this machine's memory (MemTotal $((mem / 1024)) MiB holds at most $max)"
    fi
    echo "$c"
}

# Canonical BDF (lower case, with the 0000: domain) or an error.
norm_bdf() {
    b="$(echo "$1" | tr 'A-F' 'a-f')"
    case "$b" in
        [0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7]) b="0000:$b" ;;
    esac
    case "$b" in
        [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-1][0-9a-f].[0-7]) ;;
        *) usage_err "malformed PCI address '$1' (expected DDDD:BB:DD.F or BB:DD.F, e.g. 0000:00:04.0)" ;;
    esac
    [ -d "$PCI_SYS/devices/$b" ] || die "no PCI device $b (see '$PROG status' for the devices present)"
    echo "$b"
}

link_name() { [ -e "$1" ] && basename "$(readlink "$1")"; }
dev_driver() { link_name "$PCI_SYS/devices/$1/driver"; }
dev_group() { link_name "$PCI_SYS/devices/$1/iommu_group"; }

mounted_at() {  # hugetlbfs mounted at $1?
    awk -v m="$1" '$2 == m && $3 == "hugetlbfs" {f=1} END {exit !f}' /proc/mounts
}

# ---------------------------------------------------------------- setup ----
# Set nr_hugepages in $1 back to $2 after a failed reservation; says how
# it went (for the error message) and fails if it could not.
restore_nr() {
    { printf '%s\n' "$2" > "$1/nr_hugepages"; } 2>/dev/null
    now="$(cat "$1/nr_hugepages")"
    if [ "$now" = "$2" ]; then
        echo "nr_hugepages set back to $2"
    else
        echo "nr_hugepages could NOT be set back to $2 (it is $now)"
        return 1
    fi
}

cmd_setup() {
    n=512 have_n="" kb="" size="" vfio=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --size) [ $# -ge 2 ] || usage_err "--size needs a value (2M or 1G)"
                    [ -z "$size" ] || usage_err "setup: --size given twice"; size="$2"; shift 2 ;;
            --size=*) [ -z "$size" ] || usage_err "setup: --size given twice"; size="${1#--size=}"; shift ;;
            --no-vfio) vfio=0; shift ;;
            -[0-9]*) usage_err "setup: bad page count '$1' (a whole number of pages, at least 1)" ;;
            -*) usage_err "setup: unknown option '$1'" ;;
            *) [ -z "$have_n" ] || usage_err "setup: more than one page count ('$n', '$1')"; n="$1"; have_n=1; shift ;;
        esac
    done
    if [ -n "$size" ]; then kb="$(size_kb "$size")" || exit $?; fi
    [ -d "$HP_SYS" ] || die "$HP_SYS missing: kernel without hugetlbfs support"
    dkb="$(default_kb)"
    [ -n "$kb" ] || kb="${dkb:-2048}"
    n="$(check_count "$n" "$kb")" || exit $?
    dir="$HP_SYS/hugepages-${kb}kB"
    [ -d "$dir" ] || die "this machine has no $(kb_human "$kb") hugepages (available: $(cd "$HP_SYS" && ls | sed 's/hugepages-//' | tr '\n' ' '))"

    mkdir -p "$STATE" || die "cannot create state directory $STATE"
    before="$(cat "$dir/nr_hugepages")"
    orig="$STATE/hugepages-${kb}kB.orig" new_orig=0
    [ -f "$orig" ] || { echo "$before" > "$orig"; new_orig=1; }
    if [ "$before" != "$n" ]; then
        # The kernel reserves what it can and may stop part-way: take
        # what is not all of it back.
        if ! ( sysw "$n" "$dir/nr_hugepages" ); then
            back="$(restore_nr "$dir" "$before")" && { [ $new_orig = 0 ] || rm -f "$orig"; }
            die "setup: $back"
        fi
    fi
    got="$(cat "$dir/nr_hugepages")"
    if [ "$got" -lt "$n" ]; then
        back="$(restore_nr "$dir" "$before")" && { [ $new_orig = 0 ] || rm -f "$orig"; }
        die "asked for $n hugepages of $(kb_human "$kb") but the kernel reserved only $got (not enough free contiguous memory; reserve at boot with hugepages=$n, or use fewer); $back"
    fi
    say "$got hugepages of $(kb_human "$kb") reserved ($(($got * kb / 1024)) MiB, $(cat "$dir/free_hugepages") free)"

    if mounted_at "$HUGEMNT"; then
        say "hugetlbfs already mounted at $HUGEMNT"
    else
        mkdir -p "$HUGEMNT" || die "cannot create $HUGEMNT"
        opt=""
        [ "$kb" = "$dkb" ] || opt="-o pagesize=$(kb_human "$kb")"
        # shellcheck disable=SC2086
        mount -t hugetlbfs $opt nodev "$HUGEMNT" || die "cannot mount hugetlbfs at $HUGEMNT"
        echo "$HUGEMNT" > "$STATE/mounted"
        say "mounted hugetlbfs at $HUGEMNT${opt:+ ($opt)}"
    fi

    [ "$vfio" = 1 ] || return 0
    if [ ! -d "$PCI_SYS/drivers/vfio-pci" ]; then
        if ! command -v modprobe >/dev/null 2>&1; then
            warn "modprobe not found, cannot load vfio-pci"
        elif ! modprobe vfio-pci; then
            warn "'modprobe vfio-pci' failed"
        fi
    fi
    [ -d "$PCI_SYS/drivers/vfio-pci" ] || die "the vfio-pci driver is not available (load it, or use --no-vfio for hugepages only)"
    say "vfio-pci driver loaded"
    if [ -z "$(ls /sys/kernel/iommu_groups 2>/dev/null)" ]; then
        warn "no IOMMU groups: enable the IOMMU (boot with intel_iommu=on or amd_iommu=on) before binding devices"
    fi
}

# ----------------------------------------------------------------- bind ----
bind_one() {
    bdf="$(norm_bdf "$1")" || exit 1
    group="$(dev_group "$bdf")"
    [ -n "$group" ] || die "$bdf has no IOMMU group: no IOMMU: boot with intel_iommu=on (or amd_iommu=on)"
    [ -d "$PCI_SYS/drivers/vfio-pci" ] || die "the vfio-pci driver is not loaded (run '$PROG setup' or 'modprobe vfio-pci')"
    drv="$(dev_driver "$bdf")"
    if [ "$drv" = vfio-pci ]; then
        say "$bdf already bound to vfio-pci, IOMMU group $group, /dev/vfio/$group"
        return 0
    fi
    mkdir -p "$STATE/bound" || die "cannot create $STATE/bound"
    [ -f "$STATE/bound/$bdf" ] || echo "$drv" > "$STATE/bound/$bdf"
    if [ -n "$drv" ]; then
        sysw "$bdf" "$PCI_SYS/devices/$bdf/driver/unbind"
    fi
    sysw vfio-pci "$PCI_SYS/devices/$bdf/driver_override"
    sysw "$bdf" "$PCI_SYS/drivers_probe"
    now="$(dev_driver "$bdf")"
    [ "$now" = vfio-pci ] || die "$bdf: binding to vfio-pci failed (driver now: ${now:-none}; see dmesg)"
    i=0
    while [ ! -e "/dev/vfio/$group" ] && [ $i -lt 5 ]; do sleep 1; i=$((i + 1)); done
    [ -e "/dev/vfio/$group" ] || warn "/dev/vfio/$group did not appear"
    say "$bdf bound to vfio-pci (was: ${drv:-no driver}), IOMMU group $group, /dev/vfio/$group"
    for other in /sys/kernel/iommu_groups/"$group"/devices/*; do
        o="${other##*/}"
        [ "$o" != "$bdf" ] || continue
        case "$(dev_driver "$o")" in
            ''|vfio-pci|pcieport) ;;
            *) warn "IOMMU group $group also holds $o (driver $(dev_driver "$o")): VFIO needs it unbound or bound to vfio-pci too" ;;
        esac
    done
}

cmd_bind() {
    [ $# -gt 0 ] || usage_err "bind: give at least one PCI address"
    for a in "$@"; do norm_bdf "$a" >/dev/null || exit $?; done
    for a in "$@"; do bind_one "$a"; done
}

# --------------------------------------------------------------- unbind ----
unbind_one() {
    bdf="$(norm_bdf "$1")" || exit 1
    drv="$(dev_driver "$bdf")"
    rec="$STATE/bound/$bdf"
    if [ ! -f "$rec" ] && [ "$drv" != vfio-pci ]; then
        say "$bdf is not bound to vfio-pci (driver: ${drv:-none}), nothing to do"
        return 0
    fi
    if [ -n "$drv" ]; then
        sysw "$bdf" "$PCI_SYS/devices/$bdf/driver/unbind"
    fi
    sysw "" "$PCI_SYS/devices/$bdf/driver_override"
    if [ -f "$rec" ]; then
        orig="$(cat "$rec")"
        if [ -z "$orig" ]; then
            rm -f "$rec"
            say "$bdf unbound from ${drv:-nothing}, left without a driver (it had none before bind)"
            return 0
        fi
        if [ -d "$PCI_SYS/drivers/$orig" ]; then
            sysw "$bdf" "$PCI_SYS/drivers/$orig/bind"
        else
            warn "driver $orig is not loaded; letting the kernel choose"
            sysw "$bdf" "$PCI_SYS/drivers_probe"
        fi
        rm -f "$rec"
    else
        # Bound to vfio-pci by someone else: let the kernel pick the driver.
        sysw "$bdf" "$PCI_SYS/drivers_probe"
    fi
    now="$(dev_driver "$bdf")"
    say "$bdf unbound from ${drv:-nothing}, driver now: ${now:-none}"
}

cmd_unbind() {
    [ $# -gt 0 ] || usage_err "unbind: give at least one PCI address"
    for a in "$@"; do norm_bdf "$a" >/dev/null || exit $?; done
    for a in "$@"; do unbind_one "$a"; done
}

# ---------------------------------------------------------------- reset ----
cmd_reset() {
    rc=0
    if [ -d "$STATE/bound" ]; then
        for f in "$STATE/bound"/*; do
            [ -f "$f" ] || continue
            b="${f##*/}"
            if [ -d "$PCI_SYS/devices/$b" ]; then
                ( unbind_one "$b" ) || rc=1
            else
                warn "$b no longer exists, forgetting it"; rm -f "$f"
            fi
        done
    fi
    if [ -f "$STATE/mounted" ]; then
        m="$(cat "$STATE/mounted")"
        if mounted_at "$m"; then
            if umount "$m"; then say "unmounted hugetlbfs at $m"; rm -f "$STATE/mounted"
            else warn "cannot unmount $m (files or mappings still in use?)"; rc=1; fi
        else
            rm -f "$STATE/mounted"
        fi
    fi
    if [ -d "$HP_SYS" ]; then
        for dir in "$HP_SYS"/hugepages-*kB; do
            [ -d "$dir" ] || continue
            name="${dir##*/}"; kb="${name#hugepages-}"; kb="${kb%kB}"
            want=0
            [ -f "$STATE/$name.orig" ] && want="$(cat "$STATE/$name.orig")"
            cur="$(cat "$dir/nr_hugepages")"
            if [ "$cur" != "$want" ]; then
                ( sysw "$want" "$dir/nr_hugepages" ) || { rc=1; continue; }
            fi
            cur="$(cat "$dir/nr_hugepages")"
            if [ "$cur" != "$want" ]; then
                warn "$(kb_human "$kb") hugepages: nr_hugepages is $cur, not $want (pages still in use?)"; rc=1
            else
                [ "$cur" = 0 ] && [ ! -f "$STATE/$name.orig" ] || say "$(kb_human "$kb") hugepages: nr_hugepages = $cur"
                rm -f "$STATE/$name.orig"
            fi
            surplus="$(cat "$dir/surplus_hugepages" 2>/dev/null || echo 0)"
            [ "$surplus" = 0 ] || warn "$(kb_human "$kb") hugepages: $surplus surplus pages still in use (files left in a hugetlbfs mount?)"
        done
    fi
    rmdir "$STATE/bound" "$STATE" 2>/dev/null
    [ $rc = 0 ] && say "reset done"
    return $rc
}

# --------------------------------------------------------------- status ----
cmd_status() {
    echo "Hugepages (default size $(kb_human "$(default_kb || echo 0)")):"
    if [ -d "$HP_SYS" ]; then
        printf '  %-6s %-6s %8s %8s\n' node size total free
        for dir in "$HP_SYS"/hugepages-*kB; do
            name="${dir##*/}"; kb="${name#hugepages-}"; kb="${kb%kB}"
            printf '  %-6s %-6s %8s %8s\n' all "$(kb_human "$kb")" "$(cat "$dir/nr_hugepages")" "$(cat "$dir/free_hugepages")"
        done
        for node in /sys/devices/system/node/node[0-9]*; do
            [ -d "$node/hugepages" ] || continue
            for dir in "$node"/hugepages/hugepages-*kB; do
                name="${dir##*/}"; kb="${name#hugepages-}"; kb="${kb%kB}"
                printf '  %-6s %-6s %8s %8s\n' "${node##*/node}" "$(kb_human "$kb")" "$(cat "$dir/nr_hugepages")" "$(cat "$dir/free_hugepages")"
            done
        done
    else
        echo "  (no hugepage support in this kernel)"
    fi

    echo "hugetlbfs mounts:"
    awk '$3 == "hugetlbfs" {print "  " $2 " (" $4 ")"; f=1} END {if (!f) print "  (none)"}' /proc/mounts

    ngroups="$(ls /sys/kernel/iommu_groups 2>/dev/null | wc -l)"
    vf=no; [ -d "$PCI_SYS/drivers/vfio-pci" ] && vf=yes
    echo "IOMMU groups: $ngroups; vfio-pci loaded: $vf"

    echo "PCI devices (storage, network, and anything bound to vfio-pci):"
    printf '  %-12s %-9s %-6s %-4s %-10s %-5s %-13s %s\n' BDF vendor:dev class node driver group vfio "bound by $PROG (was)"
    for d in "$PCI_SYS"/devices/*; do
        [ -e "$d/class" ] || continue
        bdf="${d##*/}"
        class="$(cat "$d/class")"; class="${class#0x}"
        drv="$(dev_driver "$bdf")"
        case "$class" in
            01*|02*) ;;
            *) [ "$drv" = vfio-pci ] || continue ;;
        esac
        ven="$(cat "$d/vendor")"; dev="$(cat "$d/device")"
        group="$(dev_group "$bdf")"
        node="$(cat "$d/numa_node" 2>/dev/null || echo -)"
        vdev=-
        [ -n "$group" ] && [ -e "/dev/vfio/$group" ] && vdev="/dev/vfio/$group"
        was=-
        if [ -f "$STATE/bound/$bdf" ]; then
            was="$(cat "$STATE/bound/$bdf")"; was="yes (${was:-none})"
        fi
        printf '  %-12s %-9s %-6s %-4s %-10s %-5s %-13s %s\n' "$bdf" "${ven#0x}:${dev#0x}" "$class" "$node" "${drv:--}" "${group:--}" "$vdev" "$was"
    done
}

if [ $# = 0 ]; then
    usage >&2
    exit 2
fi
cmd="$1"
shift
# Commands that take no arguments refuse them.
case "$cmd" in
    reset|status|help|-h|--help) [ $# = 0 ] || usage_err "$cmd takes no arguments (got '$*')" ;;
esac
case "$cmd" in
    setup) cmd_setup "$@" ;;
    bind) cmd_bind "$@" ;;
    unbind) cmd_unbind "$@" ;;
    reset) cmd_reset ;;
    status) cmd_status ;;
    help|-h|--help) usage ;;
    *) usage_err "unknown command '$cmd' (commands: setup bind unbind reset status help)" ;;
esac
