#!/usr/bin/env bash
# Instructions per 4 KiB read of the NVMe driver, counted by callgrind
# (stable on a noisy machine, unlike time).
#
# Runs the `nvme` bench binary in its `--callgrind` mode twice, with N1 and
# N2 reads (FASTLANE_BENCH_ITERS), and subtracts, so setup (bring-up, queue
# creation) cancels out:
# - driver: inclusive Ir of `cg_submit` (32 x `qp.read` + `qp.submit`) and
#   `cg_poll` (`qp.poll` with the bench's small callback), per I/O. The
#   model runs synchronously on the same thread between them (`cg_model`,
#   one pass executing the batch), so every poll finds the batch done;
# - floor: inclusive Ir of `Floor::cg_floor`, per I/O (a volatile 64-byte
#   SQE write and a 16-byte CQE read);
# - model: inclusive Ir of `cg_model`, per I/O (the in-process controller
#   model's own work, not the driver's);
# - async: the same reads through `AsyncQueue` with 32 tasks on a
#   `LocalExecutor`: inclusive Ir of `cg_async_tasks` (one executor round:
#   each task takes its result and submits its next read, then the
#   doorbell) and `cg_async_poll` (`AsyncQueue::poll`: completions to their
#   slots, tasks woken), per I/O, and the difference to the callback path;
# - allocations: calls of malloc in the whole program, longer run minus
#   shorter (both paths did the extra I/Os): 0 when nothing is allocated
#   per I/O.
#
# Usage: benches/callgrind.sh            (N1=100000 N2=50000 by default)
#        N1=200000 N2=100000 benches/callgrind.sh
#        BENCH_BIN=path/to/nvme-<hash> benches/callgrind.sh   (skip cargo)
set -euo pipefail
cd "$(dirname "$0")/.."

bench=nvme
. benches/callgrind-common.sh

# Reads the run really did (rounded up to whole batches of 32).
ios() { sed -n 's/^callgrind mode: \([0-9]*\) I\/Os.*/\1/p' "$out/log.$1"; }

start=$(date +%s)
run "$N1"
run "$N2"
D=$(( $(ios "$N1") - $(ios "$N2") ))
per_io() { echo "scale=1; ($1) / $D" | bc; }
drv1=$(( $(incl "$N1" nvme::cg_submit) + $(incl "$N1" nvme::cg_poll) ))
drv2=$(( $(incl "$N2" nvme::cg_submit) + $(incl "$N2" nvme::cg_poll) ))
sub=$(per_io "$(incl "$N1" nvme::cg_submit) - $(incl "$N2" nvme::cg_submit)")
pol=$(per_io "$(incl "$N1" nvme::cg_poll) - $(incl "$N2" nvme::cg_poll)")
drv=$(per_io "$drv1 - $drv2")
flr=$(per_io "$(incl "$N1" nvme::Floor::cg_floor) - $(incl "$N2" nvme::Floor::cg_floor)")
mdl=$(per_io "$(incl "$N1" nvme::cg_model) - $(incl "$N2" nvme::cg_model)")
diff_of() { echo "$(incl "$N1" "$1") - $(incl "$N2" "$1")"; }
# Calls of malloc: the call counts of its callers in the caller tree.
mallocs() {
    callgrind_annotate --tree=caller --threshold=100 "$out/cg.$1" 2>/dev/null | awk '
        /^ *$/ { s = 0; next }
        / < / { if (match($0, /\([0-9]+x\)/)) s += substr($0, RSTART + 1, RLENGTH - 3) }
        / \* .*malloc\.c:malloc \[/ && !found { n = s; found = 1 }
        END { print n + 0 }'
}
allocs=$(( $(mallocs "$N1") - $(mallocs "$N2") ))
asub=$(per_io "$(diff_of nvme::cg_async_tasks)")
apol=$(per_io "$(diff_of nvme::cg_async_poll)")
adrv=$(per_io "$(diff_of nvme::cg_async_tasks) + $(diff_of nvme::cg_async_poll)")
for v in "$asub" "$apol"; do
    [[ "$v" != "0" && "$v" != ".0" && "$v" != "0.0" ]] || {
        echo "an async function was not found in the annotation (inlined or renamed?)" >&2; exit 1; }
done

echo
echo "Instructions (Ir) per 4 KiB read, callgrind, runs of $(ios "$N1") and $(ios "$N2") reads ($(( $(date +%s) - start )) s):"
echo
echo "| what | Ir per I/O | vs floor |"
echo "|---|---:|---:|"
echo "| driver: \`read\` + \`submit\` (cg_submit) | $sub | $(echo "scale=1; $sub / $flr" | bc)x |"
echo "| driver: \`poll\` + callback (cg_poll) | $pol | $(echo "scale=1; $pol / $flr" | bc)x |"
echo "| driver total | $drv | $(echo "scale=1; $drv / $flr" | bc)x |"
echo "| floor: 64-byte SQE write + 16-byte CQE read | $flr | 1.0x |"
echo "| async: executor round, results taken + \`read\`s submitted + doorbell (cg_async_tasks) | $asub | $(echo "scale=1; $asub / $flr" | bc)x |"
echo "| async: \`AsyncQueue::poll\`, completions to slots + wakes (cg_async_poll) | $apol | $(echo "scale=1; $apol / $flr" | bc)x |"
echo "| async total | $adrv | $(echo "scale=1; $adrv / $flr" | bc)x |"
echo "| async minus callback (the async layer and executor per I/O) | $(echo "scale=1; $adrv - $drv" | bc) | |"
echo "| model pass (cg_model, not driver work) | $mdl | $(echo "scale=1; $mdl / $flr" | bc)x |"
echo
echo "Allocations (malloc calls) in the run of $(ios "$N1") reads per path minus the run of $(ios "$N2"): $allocs"
