#!/usr/bin/env bash
# Device interactions per packet, counted by QEMU's emulated igb and VT-d
# themselves (trace events), for fastlane's igb driver and DPDK's
# dpdk-testpmd (Debian's dpdk-dev 22.11, igb PMD through vfio-pci,
# --iova-mode=va) on the same two igb ports, in one boot. Unlike packets per
# second these counts do not depend on how busy the host is (except where a
# tool's batching depends on timing: doorbells per packet; see below).
#
#   benches/vm/nic-trace-counts.sh
#   TRACE_MODES="tx fwd" benches/vm/nic-trace-counts.sh
#
#   tx   ours: pktgen --count N on port 0    testpmd: --forward-mode=txonly on port 0
#   rx   ours: rxcount on port 1             testpmd: --forward-mode=rxonly on port 1
#        the same load for both: our pktgen on the virtio-net port (--count
#        N), so that every igb event belongs to the receiver
#   fwd  ours: fwd on ports 0 and 1          testpmd: --forward-mode=io on ports 0 and 1
#        seeded as in nic-vs-testpmd.sh: our pktgen sends FWD_SEED (4096)
#        frames from the virtio-net port and the hub loops forwarded
#        frames back forever
#
# QEMU runs with -trace for the igb register reads and writes
# (e1000e_core_read/write: igb's core uses the e1000e events; the offset
# names the register), the descriptor fetches (e1000e_tx_descr, which shows
# each descriptor's command bits, so RS = a status write-back;
# e1000e_rx_descr), receive buffer writes, frames written to or dropped for
# lack of descriptors, MSI-X notifications, and the VT-d IOTLB (every DMA
# access the vIOMMU translates is one IOTLB hit or one miss; only the igb
# ports' requester ids 01:00.0 and 02:00.0 are counted). A translation
# inside a descriptor ring (its base and length from the TDBAL/RDBAL/TDLEN/
# RDLEN writes of the same run) is descriptor DMA, any other is packet data.
# The guest brackets each run with reads of two config-space dwords of the
# virtio-net port that nothing else reads (0xf8 before, 0xfc after), so
# every event in between belongs to that run. Each tool and mode runs
# twice, short and long; the per-packet figure is (long - short) / (packets
# long - packets short), start-up and teardown cancelled. Packets are
# counted by the device: transmitted data descriptors with EOP (tx, fwd:
# both ports), frames written to the receive ring (rx).
#
# Environment: TRACE_MODES ("tx rx fwd"), TRACE_SIZE (frame bytes without
# CRC, 60), TRACE_PKTS ("20000 80000": pktgen counts, short and long),
# TRACE_SECS ("1 3": seconds of testpmd's and fwd's steady state, after
# start-up and seeding, short and long; both are stopped with SIGINT),
# TRACE_KEEP (1: keep trace.log.gz). The instruction counts are
# nic-callgrind.sh's.
# Results: .cache/bench/nic-trace-counts/<time>/{results.md,console.log,trace.log.gz}
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

. "$here/lib-nic.sh"
modes="${TRACE_MODES:-tx rx fwd}" size="${TRACE_SIZE:-60}"
pkts="${TRACE_PKTS:-20000 80000}" secs="${TRACE_SECS:-1 3}"
nic_init nic-trace-counts
NIC_WHOLE_VARS="TRACE_SIZE, TRACE_PKTS, TRACE_SECS" nic_whole "$size" "$pkts" "$secs"

nic_build "$out"

# The guest prints one "TRACE-RUN ..." line per bracketed run.
{
    nic_guest_lib TRACE
    cat <<'GUEST'
CFG="/sys/bus/pci/devices/$V/config"
mark() { dd if="$CFG" of=/dev/null bs=4 skip="$1" count=1 2>/dev/null; }   # 62: 0xf8, 63: 0xfc

for mode in $(echo "$TRACE_MODES" | tr , ' '); do
  for tool in ours testpmd; do
    for len in short long; do
      n=$NS t=$TS; [ $len = long ] && n=$NL t=$TL
      rc=0 told=""
      mark 62
      case $mode-$tool in
        tx-ours)
          taskset 2 /bin/pktgen --device "$P0" --size "$S" --count "$n" > /tmp/out 2>&1 || rc=1
          told=$n ;;
        tx-testpmd)
          tp_start /tmp/out -a "$P0" -- $TP_OPTS --forward-mode=txonly --txpkts="$S"
          tp_wait 1 || rc=1
          sleep "$t"
          tp_stop
          told="$(tp_total /tmp/out TX)" ;;
        rx-ours)
          taskset 2 /bin/rxcount --device "$P1" --count "$n" --time 120 > /tmp/out 2>&1 &
          pid=$!
          wait_line /tmp/out rxcount: $pid
          taskset 1 /bin/pktgen --device "$V" --size "$S" --count "$n" > /tmp/gen 2>&1 || rc=1
          # rxcount stops at n frames; if some were dropped, it waits: stop it.
          sleep 2; kill $pid 2>/dev/null; wait $pid
          told="$(sed -n 's/^total: \([0-9][0-9]*\) frames.*/\1/p' /tmp/out)" ;;
        rx-testpmd)
          tp_start /tmp/out -a "$P1" -- $TP_OPTS --forward-mode=rxonly
          if tp_wait 1; then
              taskset 1 /bin/pktgen --device "$V" --size "$S" --count "$n" > /tmp/gen 2>&1 || rc=1
              sleep 2
          else
              rc=1
          fi
          tp_stop
          told="$(tp_total /tmp/out RX)" ;;
        fwd-ours)
          taskset 2 /bin/fwd --ports "$P0,$P1" --time 120 > /tmp/out 2>&1 &
          pid=$!
          wait_line /tmp/out fwd: $pid
          sleep 1
          taskset 1 /bin/pktgen --device "$V" --size "$S" --count "$SEED" > /tmp/gen 2>&1 || rc=1
          sleep "$t"
          # SIGTERM: a background job of a script ignores SIGINT.
          kill $pid 2>/dev/null; wait $pid ;;
        fwd-testpmd)
          tp_start /tmp/out -a "$P0" -a "$P1" -- $TP_OPTS --forward-mode=io
          if tp_wait 2; then
              taskset 1 /bin/pktgen --device "$V" --size "$S" --count "$SEED" > /tmp/gen 2>&1 || rc=1
              sleep "$t"
          else
              rc=1
          fi
          tp_stop
          told="$(tp_total /tmp/out TX)" ;;
      esac
      mark 63
      [ $rc = 0 ] || { echo "$tool $mode $len failed:"; tail -8 /tmp/out; tail -3 /tmp/gen 2>/dev/null; }
      echo "TRACE-RUN tool=$tool mode=$mode len=$len rc=$rc told=${told:-0}"
    done
  done
done   # the guest powers off: no hugepage reset needed
GUEST
} > "$out/guest.sh"

events="e1000e_core_write e1000e_core_read e1000e_tx_descr e1000e_rx_descr igb_rx_desc_buff_write
e1000e_rx_written_to_guest e1000e_rx_not_written_to_guest e1000e_irq_msix_notify_vec e1000e_irq_msi_notify
vtd_iotlb_page_hit vtd_iotlb_page_update pci_cfg_read"
echo "$events" | tr ' ' '\n' | grep . > "$out/trace-events"
trace="$out/trace.log"
log "booting the guest with QEMU tracing into $trace (modes: $modes; $size-byte frames)"
FASTLANE_QEMU_EXTRA="-trace events=$out/trace-events,file=$trace" nic_boot TRACE-RUN "${TRACE_TIMEOUT:-900}" \
    "TRACE_MODES=${modes// /,} TRACE_SIZE=$size TRACE_PKTS=${pkts// /,} TRACE_SECS=${secs// /,}"

python3 - "$out" "$trace" "$built" "$size" > "$out/results.md" <<'PY'
import collections, re, sys
out, trace, built, size = sys.argv[1:5]
runs = [dict(kv.split("=", 1) for kv in line.split("TRACE-RUN ", 1)[1].split())
        for line in open(f"{out}/console.log", errors="replace") if "TRACE-RUN " in line]
# igb register offsets (82576 datasheet 8.x; QEMU prints the canonical offset).
regs = {0x0: "CTRL", 0x8: "STATUS", 0x100: "RCTL", 0x400: "TCTL", 0x1500: "ICR", 0x1508: "IMS", 0x150c: "IMC",
        0x1520: "EICS", 0x1524: "EIMS", 0x1528: "EIMC", 0x1580: "EICR",
        0xc000: "RDBAL", 0xc004: "RDBAH", 0xc008: "RDLEN", 0xc00c: "SRRCTL", 0xc010: "RDH", 0xc018: "RDT", 0xc028: "RXDCTL",
        0xe000: "TDBAL", 0xe004: "TDBAH", 0xe008: "TDLEN", 0xe010: "TDH", 0xe018: "TDT", 0xe028: "TXDCTL",
        0xe038: "TDWBAL", 0xe03c: "TDWBAH"}
def reg(off):
    if 0xc000 <= off < 0xc400 or 0xe000 <= off < 0xe400:   # queue n at +0x40 n
        base = off & ~0x3c0
        return regs.get(base, hex(base)) + (f"[{(off >> 6) & 0xf}]" if off & 0x3c0 else "")
    if 0x4000 <= off < 0x4400:
        return "stats"   # the statistics counters
    return regs.get(off, hex(off))
IGB_SIDS = {0x100, 0x200}
RS, EOP, DEXT = 1 << 27, 1 << 24, 1 << 29
DTYP = 0xf << 20
segs, cur = [], None
for line in open(trace, errors="replace"):
    # "[pid@time:]event rest": the log backend's prefix is optional.
    name, _, rest = line.strip().partition(" ")
    name = name.rpartition(":")[2]
    if name == "pci_cfg_read" and "virtio" in rest:
        if "@0xf8 " in rest:   # a run starts
            cur = {"c": collections.Counter(), "w": {}, "rings": set(), "tr": []}
        elif "@0xfc " in rest and cur is not None:   # and ends
            segs.append(cur)
            cur = None
        continue
    if cur is None:
        continue
    c = cur["c"]
    if name in ("e1000e_core_write", "e1000e_core_read"):
        a = re.search(r"register 0x([0-9a-f]+), \d+ byte\(s\), value: 0x([0-9a-f]+)", rest)
        if not a:
            continue
        off, val = int(a.group(1), 16), int(a.group(2), 16)
        r = reg(off)
        c[("write " if name.endswith("write") else "read ") + r] += 1
        if name.endswith("write"):
            w = cur["w"]
            w[off] = val
            # A ring: base and length as they stand after any write of
            # one of them (drivers write them in either order; a passing
            # mix of two ports' values is one of the real rings or harmless).
            q = off & ~0x3c0
            if q in (0xc000, 0xc004, 0xc008, 0xe000, 0xe004, 0xe008):
                b = off - (q & 0xf)
                base, n = (w.get(b + 4, 0) << 32) | w.get(b, 0), w.get(b + 8, 0)
                if base and n:
                    cur["rings"].add((base, n))
    elif name == "e1000e_tx_descr":
        f = rest.split()
        try:
            cmd = int(f[2], 16)
        except (IndexError, ValueError):
            continue
        c["tx descriptor fetch"] += 1
        if cmd & DEXT and cmd & DTYP == 0x2 << 20:
            c["tx context descriptor"] += 1
        elif cmd & EOP:
            c["tx packets"] += 1
        if cmd & RS:
            c["tx status write-back (RS)"] += 1
    elif name == "e1000e_rx_descr":
        c["rx descriptor fetch"] += 1
    elif name == "igb_rx_desc_buff_write":
        c["rx buffer write"] += 1
    elif name == "e1000e_rx_written_to_guest":
        c["rx packets"] += 1
    elif name == "e1000e_rx_not_written_to_guest":
        c["rx dropped (no descriptor)"] += 1
    elif name in ("e1000e_irq_msix_notify_vec", "e1000e_irq_msi_notify"):
        c["interrupts"] += 1
    elif name in ("vtd_iotlb_page_hit", "vtd_iotlb_page_update"):
        a = re.search(r"sid 0x([0-9a-f]+) iova 0x([0-9a-f]+)", rest)
        if a and int(a.group(1), 16) in IGB_SIDS:
            cur["tr"].append(int(a.group(2), 16))
            if name.endswith("update"):
                c["IOTLB misses"] += 1
# Translations: descriptor ring or packet data.
for s in segs:
    for iova in s["tr"]:
        inring = any(b <= iova < b + n for b, n in s["rings"])
        s["c"]["translations: descriptors" if inring else "translations: packet data"] += 1
    s["c"]["translations"] = len(s["tr"])
if len(segs) != len(runs):
    sys.exit(f"nic-trace-counts: {len(segs)} traced segments for {len(runs)} runs (markers lost?)")
for r, s in zip(runs, segs):
    r["counts"] = s["c"]
def pkts(r):
    c = r["counts"]
    return c["rx packets"] if r["mode"] == "rx" else c["tx packets"]
def per_pkt(tool, mode):
    sel = [r for r in runs if r["tool"] == tool and r["mode"] == mode]
    s = next((r for r in sel if r["len"] == "short"), None)
    l = next((r for r in sel if r["len"] == "long"), None)
    if not s or not l or s["rc"] != "0" or l["rc"] != "0":
        return None, 0, s, l
    dp = pkts(l) - pkts(s)
    if dp <= 0:
        return None, dp, s, l
    keys = set(s["counts"]) | set(l["counts"])
    return {k: (l["counts"][k] - s["counts"][k]) / dp for k in keys}, dp, s, l
label = {"tx": "tx (pktgen / txonly)", "rx": "rx (rxcount / rxonly)", "fwd": "io forwarding (fwd / io)"}
tname = {"ours": "fastlane", "testpmd": "testpmd"}
cols = [("TDT writes", lambda d: sum(v for k, v in d.items() if k.startswith("write TDT"))),
        ("RDT writes", lambda d: sum(v for k, v in d.items() if k.startswith("write RDT"))),
        ("other register writes", lambda d: sum(v for k, v in d.items() if k.startswith("write ") and not k.startswith(("write TDT", "write RDT")))),
        ("register reads", lambda d: sum(v for k, v in d.items() if k.startswith("read "))),
        ("tx descriptor fetches", lambda d: d.get("tx descriptor fetch", 0)),
        ("tx status write-backs", lambda d: d.get("tx status write-back (RS)", 0)),
        ("rx descriptor fetches", lambda d: d.get("rx descriptor fetch", 0)),
        ("vIOMMU translations", lambda d: d.get("translations", 0)),
        ("of which descriptor DMA", lambda d: d.get("translations: descriptors", 0)),
        ("of which packet data", lambda d: d.get("translations: packet data", 0)),
        ("interrupts", lambda d: d.get("interrupts", 0)),
        ("rx drops", lambda d: d.get("rx dropped (no descriptor)", 0))]
def fmt(v):
    return "0" if abs(v) < 0.0005 else f"{v:.3f}".rstrip("0").rstrip(".")
print(f"fastlane: {built}. testpmd: Debian dpdk-dev 22.11, igb PMD, vfio-pci, --iova-mode=va. {size}-byte frames.")
print("Per packet: (long run - short run) / (packets long - packets short), packets counted by the device")
print("(tx, fwd: transmitted data descriptors with EOP on both ports; rx: frames written to the ring).")
print("QEMU's igb reads each tx descriptor (1 DMA), maps the frame (1), writes status back only when RS is set (1);")
print("for each received frame it reads the descriptor (1), writes the frame (1) and writes the descriptor back (2).\n")
print("| mode | tool | " + " | ".join(c for c, _ in cols) + " | packets (long - short) |")
print("|---|---|" + "---:|" * (len(cols) + 1))
detail = []
for mode in ["tx", "rx", "fwd"]:
    for tool in ["ours", "testpmd"]:
        if not any(r["tool"] == tool and r["mode"] == mode for r in runs):
            continue
        d, dp, s, l = per_pkt(tool, mode)
        if d is None:
            print(f"| {label[mode]} | {tname[tool]} | failed or no packets (see console.log) |"); continue
        print(f"| {label[mode]} | {tname[tool]} | " + " | ".join(fmt(f(d)) for _, f in cols) + f" | {dp} |")
        detail.append((mode, tool, d, s, l))
print("\nEvery counted event per packet (registers by name):\n")
print("| mode | tool | event | per packet |")
print("|---|---|---|---:|")
for mode, tool, d, s, l in detail:
    for k in sorted(d):
        if abs(d[k]) >= 0.0005:
            print(f"| {mode} | {tname[tool]} | {k} | {d[k]:.4f} |")
print("\nRuns (device-counted packets; the tool's own count where it prints one):\n")
print("| mode | tool | run | packets (device) | packets (tool) | rings seen |")
print("|---|---|---|---:|---:|---:|")
for r, s in zip(runs, segs):
    print(f"| {r['mode']} | {tname[r['tool']]} | {r['len']} | {pkts(r)} | {r.get('told', '')} | {len(s['rings'])} |")
PY
if [ "${TRACE_KEEP:-1}" = 0 ]; then rm -f "$trace"; else gzip -f "$trace"; fi
cat "$out/results.md"
log "results in $out/results.md"
