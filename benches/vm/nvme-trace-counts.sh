#!/usr/bin/env bash
# Device interactions per I/O, counted by the emulated devices themselves
# (QEMU trace events), for fastlane's nvme_read and SPDK's spdk_nvme_perf on
# the same emulated NVMe controller behind the same emulated VT-d, in one
# boot. Unlike IOPS these counts do not depend on how busy the host is.
#
#   benches/vm/nvme-trace-counts.sh SPDK_SRC      (SPDK_SRC as for nvme-vs-spdk.sh)
#
# QEMU runs with -trace for the NVMe controller's MMIO, doorbell, mapping,
# DMA and shadow-doorbell events and the VT-d IOTLB and context-cache events
# (every DMA translation the vIOMMU makes is one IOTLB hit or one IOTLB miss
# with a page walk, "update"). The guest brackets each run with a read of
# two config-space dwords of the idle virtio-net device that nothing else
# reads (0xf8 before, 0xfc after: pci_cfg_read events), so that every event
# in between belongs to that run. Each tool and case runs twice, a short and a long run; the
# difference of the counts divided by the difference of the I/Os completed
# is the per-I/O figure, with start-up (controller reset, queue creation,
# Identify) and teardown cancelled out:
#
#   ours  nvme_read --json --time 0.3|1 --queue-depth QD --io-size BS --pattern P $TRACE_OURS_ARGS
#         (if $TRACE_OURS_VARIANT is set, e.g. "--shadow-doorbells", a third
#         tool "ours+" runs with it added)
#   spdk  spdk_nvme_perf -q QD -o BS -w W -d 1000|4000 -t 60 -c 0x1 --iova-mode=pa ...
#         (SPDK turns shadow doorbells on when the controller offers them)
#
# Cases: 4 KiB random read QD1 and QD32, 128 KiB sequential read QD32.
# Backend: TRACE_BACKEND null (default: null-co, reads cost QEMU nothing)
# or image. Results: .cache/bench/nvme-trace-counts/<time>/{results.md,
# console.log,trace.log.gz (unless TRACE_KEEP=0)}.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

spdk_src="${1:?usage: benches/vm/nvme-trace-counts.sh SPDK_SRC}"
backend="${TRACE_BACKEND:-null}"
out="$repo/.cache/bench/nvme-trace-counts/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
log() { echo "nvme-trace-counts: $*" >&2; }

spdk="$("$here/spdk/spdk-dir.sh" "$spdk_src")"
. "$here/lib-build-nvme-read.sh"
build_nvme_read "$out"
log "nvme_read: $built"
"$out/nvme_read" --help > "$out/nvme_read-help.txt" 2>&1 || true

cat > "$out/guest.sh" <<'GUEST'
#!/bin/sh
set -u
N="$FASTLANE_NVME"
OURS_ARGS="$(echo "${TRACE_OURS_ARGS:-}" | tr , ' ')"
VARIANT="$(echo "${TRACE_OURS_VARIANT:-}" | tr , ' ')"
hugepages.sh setup 256 >/dev/null || exit 1
hugepages.sh bind "$N" >/dev/null || exit 1
mkdir -p /var/tmp
CFG="/sys/bus/pci/devices/$FASTLANE_VIRTIO/config"
mark() { dd if="$CFG" of=/dev/null bs=4 skip="$1" count=1 2>/dev/null; }   # 62: 0xf8, 63: 0xfc
tools="ours spdk"
[ -z "$VARIANT" ] || tools="ours ours+ spdk"
for spec in "randread4k_qd1 1 4096 rand randread" "randread4k_qd32 32 4096 rand randread" "seqread128k_qd32 32 131072 seq read"; do
    set -- $spec
    name=$1 qd=$2 bs=$3 pat=$4 w=$5
    for tool in $tools; do
        for len in short long; do
            mark 62
            case $tool in
                ours|ours+)
                    t=0.3; [ $len = long ] && t=1
                    extra=""; [ $tool = ours+ ] && extra="$VARIANT"
                    # shellcheck disable=SC2086
                    /bin/nvme_read --json --quiet --time $t --queue-depth "$qd" --io-size "$bs" --pattern "$pat" \
                        $OURS_ARGS $extra > /tmp/out 2> /tmp/err
                    rc=$?
                    ios="$(sed -n 's/.*"ios": *\([0-9]*\).*/\1/p' /tmp/out)" ;;
                spdk)
                    d=1000; [ $len = long ] && d=4000
                    /usr/local/bin/spdk_nvme_perf -q "$qd" -o "$bs" -w "$w" -d $d -t 60 -c 0x1 --iova-mode=pa \
                        -r "trtype:PCIe traddr:$N" > /tmp/out 2> /tmp/err
                    rc=$?
                    ios=$d ;;
            esac
            mark 63
            [ $rc = 0 ] || { echo "$tool $name $len failed (rc $rc)"; tail -5 /tmp/err; tail -5 /tmp/out; }
            echo "TRACE-RUN tool=$tool case=$name len=$len rc=$rc ios=${ios:-0}"
        done
    done
done
GUEST

events="pci_nvme_mmio_read pci_nvme_mmio_write pci_nvme_mmio_doorbell_sq pci_nvme_mmio_doorbell_cq
pci_nvme_map_prp pci_nvme_map_sgl pci_nvme_map_addr pci_nvme_dma_read pci_nvme_io_cmd
pci_nvme_update_cq_eventidx pci_nvme_update_sq_eventidx pci_nvme_irq_msix pci_nvme_irq_pin pci_nvme_irq_masked
vtd_iotlb_page_hit vtd_iotlb_page_update vtd_iotlb_cc_hit vtd_iotlb_cc_update vtd_dmar_translate pci_cfg_read"
# One -trace option takes one pattern: the events go in an events file.
echo "$events" | tr ' ' '\n' | grep . > "$out/trace-events"
trace="$out/trace.log"
case "$backend" in
    image) drive="" ;;
    null) drive="driver=null-co,read-zeroes=on,size=1G" ;;
    *) log "unknown backend $backend (image, null)"; exit 2 ;;
esac
log "booting the guest with QEMU tracing into $trace"
set +e
FASTLANE_NVME_DRIVE="$drive" \
FASTLANE_QEMU_EXTRA="-trace events=$out/trace-events,file=$trace" \
FASTLANE_GUEST_ENV="TRACE_OURS_ARGS=$(echo "${TRACE_OURS_ARGS:-}" | tr ' ' ,) TRACE_OURS_VARIANT=$(echo "${TRACE_OURS_VARIANT:-}" | tr ' ' ,)" \
    "$repo/vm/run.sh" --peers --no-tap --spdk "$spdk" --mem 2G --timeout 900 --bin "$out/nvme_read" --script "$out/guest.sh" \
    > "$out/console.log"
rc=$?
set -e
grep -a 'TRACE-RUN' "$out/console.log" >&2 || true
[ "$rc" = 0 ] || { log "guest failed (rc $rc), see $out/console.log"; tail -30 "$out/console.log" >&2; exit 1; }

python3 - "$out" "$trace" "$built" "$(git -C "$spdk" describe --tags 2>/dev/null || echo '?')" "$backend" "${TRACE_OURS_ARGS:-}" "${TRACE_OURS_VARIANT:-}" > "$out/results.md" <<'PY'
import collections, re, sys
out, trace, built, spdk_ver, backend, ours_args, variant = sys.argv[1:8]
runs = []
for line in open(f"{out}/console.log", errors="replace"):
    m = re.search(r"TRACE-RUN (.*)", line)
    if m:
        runs.append(dict(f.split("=", 1) for f in m.group(1).split()))
# NVMe register names by BAR offset (NVMe base spec, controller registers).
regs = {0x0: "CAP", 0x4: "CAP+4", 0x8: "VS", 0xc: "INTMS", 0x10: "INTMC", 0x14: "CC", 0x1c: "CSTS",
        0x20: "NSSR", 0x24: "AQA", 0x28: "ASQ", 0x2c: "ASQ+4", 0x30: "ACQ", 0x34: "ACQ+4"}
segs, cur = [], None
ev = re.compile(r"^(?:\d+@[\d.]+:)?(\w+) ?(.*)$")
for line in open(trace, errors="replace"):
    m = ev.match(line.strip())
    if not m:
        continue
    name, rest = m.groups()
    if name == "pci_cfg_read":
        if "virtio" in rest and "@0xf8 " in rest:
            if cur is None:
                cur = collections.Counter()
            continue
        if "virtio" in rest and "@0xfc " in rest:
            if cur is not None:
                segs.append(cur); cur = None
            continue
        continue
    if cur is None:
        continue
    key = name
    if name in ("pci_nvme_mmio_read", "pci_nvme_mmio_write"):
        a = re.search(r"addr 0x([0-9a-f]+)", rest)
        off = int(a.group(1), 16) if a else -1
        key = f"{name} {'doorbell' if off >= 0x1000 else regs.get(off, hex(off))}"
    elif name in ("pci_nvme_mmio_doorbell_sq", "pci_nvme_mmio_doorbell_cq"):
        q = re.search(r"(?:sqid|cqid) (\d+)", rest)
        key = f"{name} q{q.group(1) if q else '?'}"
        key = key.replace(" q0", " admin").replace(" q1", " io")
        key = key if key.endswith(("admin", "io")) else f"{name} other"
    cur[key] += 1
if len(segs) != len(runs):
    sys.exit(f"nvme-trace-counts: {len(segs)} traced segments for {len(runs)} runs (markers lost?)")
for r, c in zip(runs, segs):
    r["counts"] = c
def per_io(tool, case):
    s = next(r for r in runs if r["tool"] == tool and r["case"] == case and r["len"] == "short")
    l = next(r for r in runs if r["tool"] == tool and r["case"] == case and r["len"] == "long")
    if s["rc"] != "0" or l["rc"] != "0":
        return None, 0
    dios = int(l["ios"]) - int(s["ios"])
    keys = set(s["counts"]) | set(l["counts"])
    return {k: (l["counts"][k] - s["counts"][k]) / dios for k in keys}, dios
cases = ["randread4k_qd1", "randread4k_qd32", "seqread128k_qd32"]
label = {"randread4k_qd1": "4 KiB rand read QD1", "randread4k_qd32": "4 KiB rand read QD32",
         "seqread128k_qd32": "128 KiB seq read QD32"}
tools = [t for t in ["ours", "ours+", "spdk"] if any(r["tool"] == t for r in runs)]
tname = {"ours": "nvme_read" + (f" {ours_args}" if ours_args else ""), "ours+": f"nvme_read {ours_args} {variant}".replace("  ", " "),
         "spdk": "spdk_nvme_perf"}
cols = [("MMIO writes: SQ doorbell", lambda d: d.get("pci_nvme_mmio_doorbell_sq io", 0)),
        ("CQ doorbell", lambda d: d.get("pci_nvme_mmio_doorbell_cq io", 0)),
        ("admin doorbells", lambda d: d.get("pci_nvme_mmio_doorbell_sq admin", 0) + d.get("pci_nvme_mmio_doorbell_cq admin", 0)),
        ("other MMIO writes", lambda d: sum(v for k, v in d.items() if k.startswith("pci_nvme_mmio_write") and not k.endswith("doorbell"))),
        ("MMIO reads", lambda d: sum(v for k, v in d.items() if k.startswith("pci_nvme_mmio_read"))),
        ("PRP maps", lambda d: d.get("pci_nvme_map_prp", 0)),
        ("SGL maps", lambda d: d.get("pci_nvme_map_sgl", 0)),
        ("mapped segments", lambda d: d.get("pci_nvme_map_addr", 0)),
        ("controller DMA reads", lambda d: d.get("pci_nvme_dma_read", 0)),
        ("shadow-doorbell EventIdx updates", lambda d: d.get("pci_nvme_update_sq_eventidx", 0) + d.get("pci_nvme_update_cq_eventidx", 0)),
        ("vIOMMU translations (IOTLB hit + miss)", lambda d: d.get("vtd_iotlb_page_hit", 0) + d.get("vtd_iotlb_page_update", 0)),
        ("of which IOTLB misses", lambda d: d.get("vtd_iotlb_page_update", 0)),
        ("interrupts", lambda d: d.get("pci_nvme_irq_msix", 0) + d.get("pci_nvme_irq_pin", 0))]
print(f"nvme_read: {built}. SPDK {spdk_ver} spdk_nvme_perf. QEMU {backend} backend. Per I/O: (long run - short run) / (I/Os long - I/Os short);")
print("a small negative figure is start-up noise (e.g. CSTS polls while the controller resets, which depend on timing).\n")
def fmt(v):
    return "0" if abs(v) < 0.0005 else f"{v:.3f}".rstrip("0").rstrip(".")
print("| case | tool | " + " | ".join(c for c, _ in cols) + " | I/Os |")
print("|---|---|" + "---:|" * (len(cols) + 1))
detail = []
for c in cases:
    for t in tools:
        d, dios = per_io(t, c)
        if d is None:
            print(f"| {label[c]} | {tname[t]} | failed |"); continue
        print(f"| {label[c]} | {tname[t]} | " + " | ".join(fmt(f(d)) for _, f in cols) + f" | {dios} |")
        detail.append((c, t, d))
print("\nEvery event per I/O (MMIO by register):\n")
print("| case | tool | event | per I/O |")
print("|---|---|---|---:|")
for c, t, d in detail:
    for k in sorted(d):
        if abs(d[k]) >= 0.0005:
            print(f"| {label[c]} | {tname[t]} | {k} | {d[k]:.3f} |")
PY
[ "${TRACE_KEEP:-1}" = 0 ] && rm -f "$trace" || gzip -f "$trace"
cat "$out/results.md"
log "results in $out/results.md"
