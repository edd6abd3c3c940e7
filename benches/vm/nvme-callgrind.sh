#!/usr/bin/env bash
# Instructions per I/O, counted by valgrind's callgrind inside the test
# guest, for fastlane's nvme_read and SPDK's spdk_nvme_perf on the same
# emulated controller (Debian's valgrind 3.19 from the peer sysroot,
# vm/peers.sh). Instruction counts do not depend on how busy the host is,
# except for one thing: both tools poll, and an empty poll of the completion
# queue while the emulated device is still working costs instructions too.
# The table therefore gives the whole process's instructions per I/O and,
# from callgrind_annotate on the host, the inclusive cost per I/O of the
# tools' submit and completion functions with their calls per I/O (an
# empty poll shows up as calls to the completion function beyond one per
# I/O batch).
#
#   benches/vm/nvme-callgrind.sh SPDK_SRC        (SPDK_SRC as for nvme-vs-spdk.sh)
#
# Each tool and case runs twice under callgrind, a short and a long run; the
# per-I/O figure is (Ir long - Ir short) / (I/Os long - I/Os short), so that
# start-up and teardown cancel:
#   ours  nvme_read --json --quiet --time 1|4 --queue-depth QD --io-size BS --pattern P $CG_OURS_ARGS
#   spdk  spdk_nvme_perf -q QD -o BS -w W -t 2|6 -c 0x1 --iova-mode=pa ...  (I/Os: IOPS x time
#         from its Total line; with -d N instead, the QD32 run under
#         valgrind never finished)
# nvme_read's --time is far longer than asked under valgrind (its clock
# reads are sampled every so many I/Os): the I/O counts differ, the
# subtraction still holds.
# Cases: CG_CASES (default: 4 KiB random read QD1 and QD32, 128 KiB
# sequential read QD32); tools: CG_TOOLS (ours spdk); backend null-co.
# The callgrind output files come back over the console (gzip, base64).
# Results: .cache/bench/nvme-callgrind/<time>/{results.md,console.log,cg/*.out}
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

spdk_src="${1:?usage: benches/vm/nvme-callgrind.sh SPDK_SRC}"
tools="${CG_TOOLS:-ours spdk}"
cases="${CG_CASES:-randread4k_qd1 randread4k_qd32 seqread128k_qd32}"
out="$repo/.cache/bench/nvme-callgrind/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out/cg"
log() { echo "nvme-callgrind: $*" >&2; }
command -v callgrind_annotate >/dev/null || { log "callgrind_annotate not found (apt-get install valgrind)"; exit 1; }

spdk="$("$here/spdk/spdk-dir.sh" "$spdk_src")"
. "$here/lib-build-nvme-read.sh"
. "$here/lib-cg.sh"
build_nvme_read "$out"
log "nvme_read: $built"

{
cat <<'GUEST'
#!/bin/sh
set -u
GUEST
cg_guest_fns
cat <<'GUEST'
N="$FASTLANE_NVME"
OURS_ARGS="$(echo "${CG_OURS_ARGS:-}" | tr , ' ')"
hugepages.sh setup 256 >/dev/null || exit 1
hugepages.sh bind "$N" >/dev/null || exit 1
mkdir -p /var/tmp
VG="valgrind --tool=callgrind --dump-instr=no"
for name in $(echo "$CG_CASES" | tr , ' '); do
    case $name in
        randread4k_qd1) qd=1 bs=4096 pat=rand w=randread ;;
        randread4k_qd32) qd=32 bs=4096 pat=rand w=randread ;;
        seqread128k_qd32) qd=32 bs=131072 pat=seq w=read ;;
        *) echo "unknown case $name"; exit 2 ;;
    esac
    for tool in $(echo "$CG_TOOLS" | tr , ' '); do
        for len in short long; do
            f="/tmp/cg-$tool-$name-$len.out"
            s0="$(cut -d' ' -f1 /proc/uptime)"
            if [ $tool = ours ]; then
                t=1; [ $len = long ] && t=4
                # shellcheck disable=SC2086
                $VG --callgrind-out-file="$f" /bin/nvme_read --json --quiet --time $t --queue-depth $qd \
                    --io-size $bs --pattern $pat $OURS_ARGS > /tmp/out 2> /tmp/err
                rc=$?
                ios="$(sed -n 's/.*"ios": *\([0-9]*\).*/\1/p' /tmp/out)"
            else
                t=2; [ $len = long ] && t=6
                $VG --callgrind-out-file="$f" /usr/local/bin/spdk_nvme_perf -q $qd -o $bs -w $w -t $t -c 0x1 \
                    --iova-mode=pa -r "trtype:PCIe traddr:$N" > /tmp/out 2> /tmp/err
                rc=$?
                ios="$(awk -v t=$t '/^Total *:/ { sub(/^Total *: */, ""); printf "%.0f", $1 * t }' /tmp/out)"
                [ -n "$ios" ] || rc=99
            fi
            s1="$(cut -d' ' -f1 /proc/uptime)"
            ir="$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$f" 2>/dev/null)"
            [ $rc = 0 ] || { echo "$tool $name $len failed (rc $rc):"; tail -15 /tmp/err; tail -8 /tmp/out; }
            echo "CG-RUN tool=$tool case=$name len=$len rc=$rc ios=${ios:-0} ir=${ir:-0} secs=$s0,$s1"
            cg_send "$f"
        done
    done
done
GUEST
} > "$out/guest.sh"

log "booting the guest (tools: $tools; cases: $cases)"
set +e
FASTLANE_NVME_DRIVE="driver=null-co,read-zeroes=on,size=1G" \
FASTLANE_GUEST_ENV="CG_TOOLS=${tools// /,} CG_CASES=${cases// /,} CG_OURS_ARGS=$(echo "${CG_OURS_ARGS:-}" | tr ' ' ,)" \
    "$repo/vm/run.sh" --peers --no-tap --spdk "$spdk" --mem 2G --timeout "${CG_TIMEOUT:-1500}" --bin "$out/nvme_read" --script "$out/guest.sh" \
    > "$out/console.log"
rc=$?
set -e
grep -a 'CG-RUN' "$out/console.log" >&2 || true
[ "$rc" = 0 ] || { log "guest failed (rc $rc), see $out/console.log"; tail -30 "$out/console.log" >&2; exit 1; }

cg_files "$out"
# Inclusive cost per function, for the long and the short runs.
for f in "$out"/cg/*.out; do
    callgrind_annotate --inclusive=yes --tree=none --auto=no --threshold=99.9 "$f" > "${f%.out}.incl.txt" 2>/dev/null || true
    callgrind_annotate --inclusive=no --tree=none --auto=no --threshold=99.9 "$f" > "${f%.out}.self.txt" 2>/dev/null || true
done

python3 - "$out" "$built" "$(git -C "$spdk" describe --tags 2>/dev/null || echo '?')" "${CG_OURS_ARGS:-}" > "$out/results.md" <<'PY'
import glob, os, re, sys
out, built, spdk_ver, ours_args = sys.argv[1:5]
runs = {}
for line in open(f"{out}/console.log", errors="replace"):
    m = re.search(r"CG-RUN (.*)", line)
    if m:
        kv = dict(f.split("=", 1) for f in m.group(1).split())
        runs[(kv["tool"], kv["case"], kv["len"])] = kv
def incl(path):
    """file:function -> Ir from callgrind_annotate's function list."""
    res, on = {}, False
    if not os.path.exists(path):
        return res
    for line in open(path, errors="replace"):
        if re.match(r"^Ir\s+file:function", line):
            on = True
            continue
        m = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.+?)(?:\s+\[[^]]*\])?$", line)
        if on and m:
            fn = re.sub(r"^/rustc/[0-9a-f]+/|^/root/.cargo/registry/src/[^/]+/|^/work/main/", "", m.group(2).strip())
            res[fn] = res.get(fn, 0) + int(m.group(1).replace(",", ""))
    return res
label = {"randread4k_qd1": "4 KiB rand read QD1", "randread4k_qd32": "4 KiB rand read QD32",
         "seqread128k_qd32": "128 KiB seq read QD32"}
tname = {"ours": "nvme_read" + (f" {ours_args}" if ours_args else ""), "spdk": "spdk_nvme_perf"}
print(f"nvme_read: {built}. SPDK {spdk_ver} spdk_nvme_perf. valgrind --tool=callgrind in the guest, QEMU null-co backend.")
print("Ir per I/O = (Ir long run - Ir short run) / (I/Os long - I/Os short): start-up and teardown cancel.\n")
print("| case | tool | Ir per I/O (whole process) | I/Os short / long | Ir short / long |")
print("|---|---|---:|---:|---:|")
pairs = []
for (tool, case, ln), kv in runs.items():
    if ln != "short":
        continue
    l = runs.get((tool, case, "long"))
    if not l or kv["rc"] != "0" or l["rc"] != "0":
        why = "failed: see console.log"
        print(f"| {label.get(case, case)} | {tname[tool]} | {why} | {kv['ios']} / {l['ios'] if l else '-'} | |")
        continue
    dios = int(l["ios"]) - int(kv["ios"])
    d = (int(l["ir"]) - int(kv["ir"])) / dios
    print(f"| {label.get(case, case)} | {tname[tool]} | {d:,.0f} | {kv['ios']} / {l['ios']} | {int(kv['ir']):,} / {int(l['ir']):,} |")
    pairs.append((tool, case, dios))
print("\nTop functions, inclusive Ir per I/O ((long - short) / (I/Os long - I/Os short)), at least 2% of the whole:\n")
for tool, case, dios in pairs:
    s = incl(f"{out}/cg/cg-{tool}-{case}-short.incl.txt")
    l = incl(f"{out}/cg/cg-{tool}-{case}-long.incl.txt")
    tot = (int(runs[(tool, case, 'long')]["ir"]) - int(runs[(tool, case, 'short')]["ir"])) / dios
    rows = sorted(((l.get(f, 0) - s.get(f, 0)) / dios, f) for f in l)
    rows = [r for r in rows[::-1] if r[0] >= 0.02 * tot][:25]
    print(f"{label.get(case, case)}, {tname[tool]}:\n")
    print("| Ir per I/O | function |")
    print("|---:|---|")
    for v, f in rows:
        print(f"| {v:,.1f} | `{f[:110]}` |")
    print()
PY
cat "$out/results.md"
log "results in $out/results.md"
