#!/usr/bin/env bash
# Where the time goes per I/O, from the emulated controller's own trace
# timestamps, for fastlane's nvme_read and SPDK's spdk_nvme_perf on the same
# emulated NVMe controller in one boot (the approach of nvme-trace-counts.sh:
# the same config-space marks bracket each run).
#
#   benches/vm/nvme-trace-timeline.sh SPDK_SRC    (SPDK_SRC as for nvme-vs-spdk.sh)
#
# QEMU runs with -msg timestamp=on, so its log trace backend stamps every
# event with the wall clock (gettimeofday: 1 us resolution) and the host
# thread that raised it. Per I/O (matched by the SQ slot, the command id and
# the order of completions), the script reports medians and p90 of
#   doorbell -> cmd      SQ tail doorbell written -> the controller reads the
#                        command (pci_nvme_io_cmd; a bottom half on QEMU's
#                        main loop thread)
#   cmd -> backend       -> the block layer gets the read (bdrv_co_preadv_part)
#   backend              -> the backend finished it (pci_nvme_rw_cb)
#   -> CQE posted        -> the completion entry written (pci_nvme_irq_masked,
#                        the end of the CQ bottom half; queues are polled)
#   CQE -> CQ doorbell   -> the guest's CQ head doorbell that releases it
#   CQE -> next SQ db    -> the guest's next SQ tail doorbell (how long the
#                        tool takes to see a completion and submit again)
#   SQ db -> next SQ db  the whole cycle (QD1: one I/O)
# and, per I/O, which of the two doorbells came first after its completion.
# Tracing costs QEMU a few us per event: compare the tools, not the absolute
# figures with untraced runs. The first and last 10% of each run's I/Os are
# left out (start-up, teardown).
#
# Environment: TIMELINE_BACKEND null (default, null-co) or image;
# TIMELINE_CASES (default "randread4k_qd1 randread4k_qd32 seqread128k_qd32");
# TIMELINE_ROUNDS (1; rounds run A B, B A, ... and are listed apart);
# TIMELINE_TIME (nvme_read seconds, 1.5); TIMELINE_SPDK_IOS (spdk_nvme_perf
# -d, 6000); TIMELINE_OURS_ARGS (extra nvme_read options);
# TIMELINE_OURS_VARIANT (a third tool "ours+" with these options added).
# Results: .cache/bench/nvme-trace-timeline/<time>/{results.md,console.log,
# trace.log.gz (unless TIMELINE_KEEP=0)}.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

spdk_src="${1:?usage: benches/vm/nvme-trace-timeline.sh SPDK_SRC | --analyze DIR}"
backend="${TIMELINE_BACKEND:-null}"
cases="${TIMELINE_CASES:-randread4k_qd1 randread4k_qd32 seqread128k_qd32}"
log() { echo "nvme-trace-timeline: $*" >&2; }

# analyze OUT TRACE: the tables, from console.log's TRACE-RUN lines and the
# trace (plain or .gz). Re-run on a kept result with
#   benches/vm/nvme-trace-timeline.sh --analyze .cache/bench/nvme-trace-timeline/<time>
analyze() {
python3 - "$1" "$2" <<'PY'
import bisect, collections, gzip, re, statistics, sys
out, trace = sys.argv[1:3]
runs = []
for line in open(f"{out}/console.log", errors="replace"):
    m = re.search(r"TRACE-RUN (.*)", line)
    if m:
        runs.append(dict(f.split("=", 1) for f in m.group(1).split()))
ev = re.compile(r"^(\d+)@(\d+)\.(\d+):(\w+) ?(.*)$")

class Seg:
    def __init__(self):
        self.size = {"sq": 0, "cq": 0}
        self.db = {"sq": [], "cq": []}          # (commands/completions released so far, t)
        self.prev = {"sq": 0, "cq": 0}
        self.total = {"sq": 0, "cq": 0}
        self.cmds = []                           # in SQ order: dict of event times
        self.open = {}                           # cid -> index in cmds
        self.to_issue = collections.deque()      # read, backend not yet seen
        self.enqueued = []                       # completion queued, CQE not yet written
        self.posted = []                         # indices in CQ order
        self.threads = collections.defaultdict(set)
    def doorbell(self, kind, new, t):
        size = self.size[kind] or 65536
        self.total[kind] += (new - self.prev[kind]) % size
        self.prev[kind] = new
        self.db[kind].append((self.total[kind], t))

segs, cur = [], None
opener = gzip.open if trace.endswith(".gz") else open
for line in opener(trace, "rt", errors="replace"):
    m = ev.match(line.strip())
    if not m:
        continue
    tid, sec, usec, name, rest = m.groups()
    t = int(sec) * 1_000_000 + int(usec)
    if name == "pci_cfg_read":
        if "virtio" in rest and "@0xf8 " in rest and cur is None:
            cur = Seg()
        elif "virtio" in rest and "@0xfc " in rest and cur is not None:
            segs.append(cur); cur = None
        continue
    if cur is None:
        continue
    s = cur
    if name in ("pci_nvme_create_sq", "pci_nvme_create_cq"):
        kind = name[-2:]
        if int(re.search(r"(?:sq|cq)id=(\d+)", rest).group(1)) != 0:
            s.size[kind] = int(re.search(r"qsize=(\d+)", rest).group(1)) + 1
    elif name == "pci_nvme_mmio_doorbell_sq":
        q, new = map(int, re.search(r"sqid (\d+) new_tail (\d+)", rest).groups())
        if q != 0:
            s.doorbell("sq", new, t); s.threads["doorbells"].add(tid)
    elif name == "pci_nvme_mmio_doorbell_cq":
        q, new = map(int, re.search(r"cqid (\d+) new_head (\d+)", rest).groups())
        if q != 0:
            s.doorbell("cq", new, t)
    elif name == "pci_nvme_io_cmd":
        cid = int(re.search(r"cid (\d+)", rest).group(1))
        s.open[cid] = len(s.cmds)
        s.cmds.append({"cmd": t})
        s.threads["command reads"].add(tid)
    elif name == "pci_nvme_read":
        cid, nlb, count, lba = re.search(r"cid (\d+) nsid \d+ nlb (\d+) count (\d+) lba 0x([0-9a-f]+)", rest).groups()
        i = s.open.get(int(cid))
        if i is not None:
            s.cmds[i].update(lba=int(lba, 16), bytes=int(count))
            s.to_issue.append(i)
    elif name == "bdrv_co_preadv_part":
        if s.to_issue:      # the first layer of the block graph to see it
            s.cmds[s.to_issue.popleft()]["backend"] = t
    elif name == "pci_nvme_rw_cb":
        i = s.open.get(int(re.search(r"cid (\d+)", rest).group(1)))
        if i is not None:
            s.cmds[i]["done"] = t
    elif name == "pci_nvme_enqueue_req_completion":
        cid, cq = map(int, re.search(r"cid (\d+) cqid (\d+)", rest).groups())
        if cq != 0 and cid in s.open:
            i = s.open.pop(cid)
            s.cmds[i]["enq"] = t
            s.enqueued.append(i)
    elif name in ("pci_nvme_irq_masked", "pci_nvme_irq_msix"):
        for i in s.enqueued:
            s.cmds[i]["cqe"] = t
            s.posted.append(i)
        s.enqueued = []
        s.threads["CQE posts"].add(tid)
if len(segs) != len(runs):
    sys.exit(f"nvme-trace-timeline: {len(segs)} traced segments for {len(runs)} runs (markers lost?)")

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))] if v else float("nan")
cols = [("SQ db -> cmd read", "sqdb", "cmd"), ("cmd -> backend", "cmd", "backend"), ("backend", "backend", "done"),
        ("done -> CQE", "done", "cqe"), ("CQE -> CQ db", "cqe", "cqdb"), ("CQE -> next SQ db", "cqe", "nextsq"),
        ("SQ db -> CQE", "sqdb", "cqe")]
label = {"randread4k_qd1": "4K QD1", "randread4k_qd32": "4K QD32", "seqread128k_qd32": "128K QD32"}
tname = {"ours": "nvme_read", "ours+": "nvme_read (variant)", "spdk": "spdk_nvme_perf"}
rows, means, notes, lbas = [], [], [], []
rounds = max(int(r.get("round", 1)) for r in runs) if runs else 1
case_order = list(label)
key = lambda rs: (case_order.index(rs[0]["case"]) if rs[0]["case"] in case_order else 9, list(tname).index(rs[0]["tool"]), int(rs[0].get("round", 1)))
for r, s in sorted(zip(runs, segs), key=key):
    who = f"{label.get(r['case'], r['case'])} | {tname.get(r['tool'], r['tool'])}" + (f" #{r.get('round', 1)}" if rounds > 1 else "")
    if r["rc"] != "0" or not s.cmds:
        rows.append(f"| {who} | failed (rc {r['rc']}) |"); continue
    sq_n = [n for n, _ in s.db["sq"]]; sq_t = [t for _, t in s.db["sq"]]
    cq_n = [n for n, _ in s.db["cq"]]; cq_t = [t for _, t in s.db["cq"]]
    for k, c in enumerate(s.cmds):       # the doorbell that released SQ slot k
        j = bisect.bisect_right(sq_n, k)
        if j < len(sq_t):
            c["sqdb"] = sq_t[j]
    for k, i in enumerate(s.posted):     # the CQ doorbell that released CQE k, the next SQ doorbell after it
        c = s.cmds[i]
        j = bisect.bisect_right(cq_n, k)
        if j < len(cq_t):
            c["cqdb"] = cq_t[j]
        j = bisect.bisect_right(sq_t, c["cqe"])
        if j < len(sq_t):
            c["nextsq"] = sq_t[j]
    n = len(s.cmds)
    mid = s.cmds[n // 10: n - n // 10]
    span = [c for c in mid if "sqdb" in c and "cqe" in c]
    us_per_io = (span[-1]["cqe"] - span[0]["cqe"]) / max(1, len(span) - 1) if len(span) > 1 else float("nan")
    cells, avg = [], []
    for _, a, b in cols:
        d = [c[b] - c[a] for c in mid if a in c and b in c]
        cells.append(f"{pct(d, 0.5):.0f} / {pct(d, 0.9):.0f}" if d else "-")
        avg.append(f"{statistics.mean(d):.1f} / {pct(d, 0.99):.0f}" if d else "-")
    both = [c for c in mid if "cqdb" in c and "nextsq" in c]
    sq_first = sum(c["nextsq"] < c["cqdb"] for c in both)
    same = sum(c["nextsq"] == c["cqdb"] for c in both)
    order = f"{100 * sq_first / len(both):.0f}%" if both else "-"
    dbs = len([t for t in sq_t if mid[0]["cmd"] <= t <= mid[-1]["cmd"]])
    rows.append(f"| {who} | {len(mid)} | {us_per_io:.1f} | " + " | ".join(cells) + f" | {order} | {dbs / max(1, len(mid)):.3f} |")
    means.append(f"| {who} | {us_per_io:.1f} | " + " | ".join(avg) + " |")
    if s.total["sq"] != n:
        notes.append(f"{who}: {n} commands read, SQ doorbells released {s.total['sq']} (queue size {s.size['sq']})")
    if same:
        notes.append(f"{who}: {same} I/Os with both doorbells in the same microsecond (counted CQ first)")
    l = [c["lba"] for c in mid if "lba" in c]
    if l:
        lbas.append(f"| {who} | {len(set(l))} | {min(l)} | {max(l)} | {statistics.median([c['bytes'] for c in mid if 'bytes' in c]):.0f} | SQ {s.size['sq']} / CQ {s.size['cq']} | "
                    + "; ".join(f"{k}: {','.join(sorted(v))}" for k, v in sorted(s.threads.items())) + " |")
print(open(f"{out}/about.txt").read().strip() if __import__("os").path.exists(f"{out}/about.txt") else "")
print("\nPer I/O, µs, median / p90 (QEMU trace timestamps, 1 µs resolution; middle 80% of each run's I/Os).")
print("µs/I/O: the run's time per completed I/O in that window. SQ first: the I/Os whose next SQ doorbell")
print("came before the CQ doorbell releasing their completion. SQ db/I/O: SQ doorbells per I/O.\n")
print("| case | tool | I/Os | µs/I/O | " + " | ".join(c for c, _, _ in cols) + " | SQ first | SQ db/I/O |")
print("|---|---|" + "---:|" * (len(cols) + 4))
print("\n".join(rows))
print("\nMean / p99 of the same intervals, µs (at QD1 the means of the first four and CQE -> next SQ db")
print("add up to µs/I/O: where the tail time goes):\n")
print("| case | tool | µs/I/O | " + " | ".join(c for c, _, _ in cols) + " |")
print("|---|---|" + "---:|" * (len(cols) + 1))
print("\n".join(means))
print("\nLBAs read (middle 80%), queue sizes, host threads (TIDs) raising the events:\n")
print("| case | tool | distinct LBAs | lowest | highest | bytes | queue entries | threads |")
print("|---|---|---:|---:|---:|---:|---|---|")
print("\n".join(lbas))
if notes:
    print("\nNotes:\n" + "\n".join(f"- {x}" for x in notes))
PY
}
if [ "${1:-}" = --analyze ]; then
    d="${2:?--analyze DIR}"
    analyze "$d" "$(ls "$d"/trace.log* | head -1)"
    exit 0
fi
out="$repo/.cache/bench/nvme-trace-timeline/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

spdk="$("$here/spdk/spdk-dir.sh" "$spdk_src")"
. "$here/lib-build-nvme-read.sh"
build_nvme_read "$out"
log "nvme_read: $built"

cat > "$out/guest.sh" <<'GUEST'
#!/bin/sh
set -u
N="$FASTLANE_NVME"
OURS_ARGS="$(echo "${TL_OURS_ARGS:-}" | tr , ' ')"
VARIANT="$(echo "${TL_OURS_VARIANT:-}" | tr , ' ')"
CASES="$(echo "$TL_CASES" | tr , ' ')"
hugepages.sh setup 256 >/dev/null || exit 1
hugepages.sh bind "$N" >/dev/null || exit 1
mkdir -p /var/tmp
CFG="/sys/bus/pci/devices/$FASTLANE_VIRTIO/config"
mark() { dd if="$CFG" of=/dev/null bs=4 skip="$1" count=1 2>/dev/null; }   # 62: 0xf8, 63: 0xfc
tools="ours spdk"
[ -z "$VARIANT" ] || tools="ours ours+ spdk"
round=1
while [ $round -le "$TL_ROUNDS" ]; do
for name in $CASES; do
    # A B B A ...: odd rounds in the listed order, even rounds reversed.
    order="$tools"
    [ $((round % 2)) = 0 ] && order="$(echo "$tools" | tr ' ' '\n' | sed -n '1!G;h;$p' | tr '\n' ' ')"
    case $name in
        randread4k_qd1) qd=1 bs=4096 pat=rand w=randread ;;
        randread4k_qd32) qd=32 bs=4096 pat=rand w=randread ;;
        seqread128k_qd32) qd=32 bs=131072 pat=seq w=read ;;
        *) echo "unknown case $name"; exit 2 ;;
    esac
    for tool in $order; do
        mark 62
        case $tool in
            ours|ours+)
                extra=""; [ $tool = ours+ ] && extra="$VARIANT"
                # shellcheck disable=SC2086
                /bin/nvme_read --json --quiet --time "$TL_TIME" --queue-depth "$qd" --io-size "$bs" --pattern "$pat" \
                    $OURS_ARGS $extra > /tmp/out 2> /tmp/err
                rc=$?
                ios="$(sed -n 's/.*"ios": *\([0-9]*\).*/\1/p' /tmp/out)" ;;
            spdk)
                /usr/local/bin/spdk_nvme_perf -q "$qd" -o "$bs" -w "$w" -d "$TL_SPDK_IOS" -t 60 -c 0x1 --iova-mode=pa \
                    -r "trtype:PCIe traddr:$N" > /tmp/out 2> /tmp/err
                rc=$?
                ios=$TL_SPDK_IOS ;;
        esac
        mark 63
        [ $rc = 0 ] || { echo "$tool $name failed (rc $rc)"; tail -5 /tmp/err; tail -5 /tmp/out; }
        echo "TRACE-RUN tool=$tool case=$name round=$round rc=$rc ios=${ios:-0}"
    done
done
round=$((round + 1))
done
GUEST

events="pci_cfg_read pci_nvme_mmio_doorbell_sq pci_nvme_mmio_doorbell_cq pci_nvme_create_sq pci_nvme_create_cq
pci_nvme_io_cmd pci_nvme_read bdrv_co_preadv_part pci_nvme_rw_cb pci_nvme_enqueue_req_completion pci_nvme_irq_masked
pci_nvme_irq_msix"
echo "$events" | tr ' ' '\n' | grep . > "$out/trace-events"
trace="$out/trace.log"
case "$backend" in
    image) drive="" ;;
    null) drive="driver=null-co,read-zeroes=on,size=1G" ;;
    *) log "unknown backend $backend (image, null)"; exit 2 ;;
esac
log "booting the guest with timestamped QEMU tracing into $trace"
set +e
FASTLANE_NVME_DRIVE="$drive" \
FASTLANE_QEMU_EXTRA="-msg timestamp=on -trace events=$out/trace-events,file=$trace" \
FASTLANE_GUEST_ENV="TL_CASES=$(echo "$cases" | tr ' ' ,) TL_ROUNDS=${TIMELINE_ROUNDS:-1} TL_TIME=${TIMELINE_TIME:-1.5} TL_SPDK_IOS=${TIMELINE_SPDK_IOS:-6000} TL_OURS_ARGS=$(echo "${TIMELINE_OURS_ARGS:-}" | tr ' ' ,) TL_OURS_VARIANT=$(echo "${TIMELINE_OURS_VARIANT:-}" | tr ' ' ,)" \
    "$repo/vm/run.sh" --peers --no-tap --spdk "$spdk" --mem 2G --timeout 900 --bin "$out/nvme_read" --script "$out/guest.sh" \
    > "$out/console.log"
rc=$?
set -e
grep -a 'TRACE-RUN' "$out/console.log" >&2 || true
[ "$rc" = 0 ] || { log "guest failed (rc $rc), see $out/console.log"; tail -30 "$out/console.log" >&2; exit 1; }

echo "nvme_read: $built. SPDK $(git -C "$spdk" describe --tags 2>/dev/null || echo '?') spdk_nvme_perf. QEMU $backend backend. ${TIMELINE_OURS_ARGS:+nvme_read options: $TIMELINE_OURS_ARGS. }${TIMELINE_OURS_VARIANT:+ours+: $TIMELINE_OURS_VARIANT.}" > "$out/about.txt"
analyze "$out" "$trace" > "$out/results.md"
[ "${TIMELINE_KEEP:-1}" = 0 ] && rm -f "$trace" || gzip -f "$trace"
cat "$out/results.md"
log "results in $out/results.md"
