#!/usr/bin/env bash
# Instructions per packet of the igb driver, receive and transmit, counted
# by callgrind (stable on a noisy machine, unlike time).
#
# Runs the `nic` bench binary in its `--callgrind` mode twice, with N1 and N2
# packets per direction (FASTLANE_BENCH_ITERS), and subtracts, so setup
# (bring-up, ring fill) cancels out:
# - rx: inclusive Ir of `cg_rx` (one `rx_burst(out, 32)`), per packet;
# - tx: inclusive Ir of `cg_tx` (one `tx_burst` of 32, with the reclaim of
#   the previous burst), per packet;
# - l2fwd: inclusive Ir of `cg_l2fwd_igb` (on `Igb`) and `cg_l2fwd_dyn`
#   (through `&mut dyn Nic`), per packet: rx_burst, both MACs rewritten in
#   place, tx_burst of the same packets (one packet received and sent);
# - floor: inclusive Ir of `Floor::cg_floor`, per packet (a volatile 8-byte
#   status read and a 16-byte descriptor write);
# - everything: the program total per packet, rx + tx + the model's work
#   (descriptor write-backs) + the bench's packet allocation and recycling.
#
# Usage: benches/callgrind-nic.sh            (N1=100000 N2=50000 by default)
#        N1=200000 N2=100000 benches/callgrind-nic.sh
#        BENCH_BIN=path/to/nic-<hash> benches/callgrind-nic.sh   (skip cargo)
set -euo pipefail
cd "$(dirname "$0")/.."

bench=nic
. benches/callgrind-common.sh

# Packets per direction the run really did (rounded up to whole bursts).
pkts() { sed -n 's/^callgrind mode: \([0-9]*\) packets.*/\1/p' "$out/log.$1"; }

start=$(date +%s)
run "$N1"
run "$N2"
D=$(( $(pkts "$N1") - $(pkts "$N2") ))
(( D > 0 )) || { echo "N1 must be larger than N2" >&2; exit 1; }
per_pkt() { echo "scale=1; ($1) / $D" | bc; }
diff_of() { echo "$(incl "$N1" "$1") - $(incl "$N2" "$1")"; }
rx=$(per_pkt "$(diff_of nic::cg_rx)")
tx=$(per_pkt "$(diff_of nic::cg_tx)")
fwd_igb=$(per_pkt "$(diff_of nic::cg_l2fwd_igb)")
fwd_dyn=$(per_pkt "$(diff_of nic::cg_l2fwd_dyn)")
flr=$(per_pkt "$(diff_of nic::Floor::cg_floor)")
all=$(per_pkt "$(total "$N1") - $(total "$N2")")
for v in "$rx" "$tx" "$fwd_igb" "$fwd_dyn" "$flr"; do
    [[ "$v" != "0" && "$v" != ".0" && "$v" != "0.0" ]] || {
        echo "a function was not found in the annotation (inlined or renamed?)" >&2; exit 1; }
done
ratio() { echo "scale=1; $1 / $flr" | bc; }

echo
echo "Instructions (Ir) per packet, igb driver against the in-process model, bursts of 32, callgrind, runs of $(pkts "$N1") and $(pkts "$N2") packets per direction ($(( $(date +%s) - start )) s):"
echo
echo "| what | Ir per packet | vs floor |"
echo "|---|---:|---:|"
echo "| rx: \`rx_burst(out, 32)\` (cg_rx) | $rx | $(ratio "$rx")x |"
echo "| tx: \`tx_burst\` of 32 incl. reclaim (cg_tx) | $tx | $(ratio "$tx")x |"
echo "| l2fwd on \`Igb\`: rx_burst + MACs rewritten in place + tx_burst (cg_l2fwd_igb) | $fwd_igb | $(ratio "$fwd_igb")x |"
echo "| l2fwd through \`&mut dyn Nic\`: the same (cg_l2fwd_dyn) | $fwd_dyn | $(ratio "$fwd_dyn")x |"
echo "| floor: 8-byte status read + 16-byte descriptor write | $flr | 1.0x |"
echo "| everything: rx + tx + both l2fwd + model + bench's packet alloc/recycle + floor | $all | $(ratio "$all")x |"
