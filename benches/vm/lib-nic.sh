# Sourced by benches/vm/nic-trace-counts.sh and benches/vm/nic-callgrind.sh
# (from the repository root, with $repo set):
#
#   nic_init NAME      $out = .cache/bench/NAME/<time> (created), log()
#                      prefixing messages with NAME
#   nic_whole WHAT...  exits (2) unless every WHAT is a list of whole numbers
#   nic_build OUT      builds examples pktgen, rxcount and fwd (static) into
#                      OUT and sets $built (what was built, for the results)
#   nic_guest_lib PREFIX  prints the start of a guest script (busybox sh):
#                      sizes and counts from PREFIX_SIZE, PREFIX_PKTS and
#                      PREFIX_SECS, port variables, hugepages and binding,
#                      testpmd in the background, cg_send
#   nic_boot MARKER TIMEOUT GUEST_ENV
#                      boots the guest (vm/run.sh --peers) on $out/guest.sh
#                      with the three tools, console into $out/console.log;
#                      shows the console's MARKER lines, exits if it failed
#
# and lib-cg.sh (cg_send in the guest script, cg_files on the host).

. "$(dirname "${BASH_SOURCE[0]}")/lib-cg.sh"

nic_init() {
    out="$repo/.cache/bench/$1/$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$out"
    NIC_BENCH=$1
}
log() { echo "$NIC_BENCH: $*" >&2; }
nic_whole() {
    case "$*" in *[!0-9\ ]*) log "$NIC_WHOLE_VARS are whole numbers"; exit 2 ;; esac
}

nic_build() {
    local target=x86_64-unknown-linux-gnu ex
    log "building pktgen, rxcount and fwd (static)"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --quiet --target "$target" --example pktgen --example rxcount --example fwd
    for ex in pktgen rxcount fwd; do cp "target/$target/release/examples/$ex" "$1/$ex"; done
    built="working tree at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- drivers examples framework || echo ' + local changes')"
}

nic_guest_lib() {
    echo '#!/bin/sh'
    echo 'set -u'
    # The script's PREFIX_SIZE, PREFIX_PKTS and PREFIX_SECS ("short,long").
    echo "S=\"\$${1}_SIZE\""
    echo "set -- \$(echo \"\$${1}_PKTS\" | tr , ' '); NS=\$1 NL=\$2"
    echo "set -- \$(echo \"\$${1}_SECS\" | tr , ' '); TS=\$1 TL=\$2"
    cat <<'LIB'
P0="$FASTLANE_IGB0" P1="$FASTLANE_IGB1" V="$FASTLANE_VIRTIO" SEED="${FWD_SEED:-4096}"
hugepages.sh setup 256 >/dev/null || exit 1
hugepages.sh bind "$P0" "$P1" "$V" >/dev/null || exit 1
TESTPMD="dpdk-testpmd -l 0-1 -n 1 --iova-mode=va"
TP_OPTS="--total-num-mbufs=16384 --stats-period 1 --nb-cores=1"
# TP_PREFIX (a command testpmd runs under) and TP_WAIT_MAX (5ths of a second
# tp_wait waits at most) may be set by the script.
TP_PREFIX="${TP_PREFIX:-}" TP_WAIT_MAX="${TP_WAIT_MAX:-900}"
blocks() { n="$(grep -c 'Throughput (since last show)' "$1" 2>/dev/null)"; echo "${n:-0}"; }
# tp_start LOG ARGS...: testpmd in the background (pid in $tp); tp_wait N: until
# it has printed N statistics blocks (1: failed); tp_stop: SIGINT, wait.
tp_start() { tplog=$1; shift; $TP_PREFIX $TESTPMD "$@" > "$tplog" 2>&1 & tp=$!; }
tp_wait() {
    i=0
    while [ "$(blocks "$tplog")" -lt "$1" ]; do
        kill -0 $tp 2>/dev/null || { echo "testpmd exited:"; tail -20 "$tplog"; return 1; }
        i=$((i + 1)); [ $i -lt "$TP_WAIT_MAX" ] || { echo "testpmd: no statistics in time"; return 1; }
        sleep 0.2
    done
}
tp_stop() { kill -INT $tp 2>/dev/null; wait $tp; }
# testpmd's final "Accumulated forward statistics for all ports" (DIR TX or RX).
tp_total() { sed -n "s/.*$2-packets: *\([0-9][0-9]*\).*/\1/p" "$1" | tail -n 1; }
# wait_line FILE PREFIX PID: until FILE has a line starting with PREFIX (or PID
# is gone, or a minute has passed).
wait_line() {
    i=0
    while ! grep -q "^$2" "$1" 2>/dev/null && kill -0 "$3" 2>/dev/null && [ $i -lt 300 ]; do
        sleep 0.2; i=$((i + 1))
    done
}
LIB
    cg_guest_fns
}

nic_boot() {
    local rc=0
    FASTLANE_GUEST_ENV="FWD_SEED=${FWD_SEED:-4096} $3" "$repo/vm/run.sh" --peers --no-tap --mem 2G --timeout "$2" \
        --bin "$out/pktgen" --bin "$out/rxcount" --bin "$out/fwd" --script "$out/guest.sh" > "$out/console.log" || rc=$?
    grep -a "$1" "$out/console.log" >&2 || true
    [ "$rc" = 0 ] || { log "guest failed (rc $rc), see $out/console.log"; tail -30 "$out/console.log" >&2; exit 1; }
}

