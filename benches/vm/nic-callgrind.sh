#!/usr/bin/env bash
# Instructions per packet, counted by valgrind's callgrind inside the test
# guest (Debian's valgrind from the peer sysroot, vm/peers.sh), for
# fastlane's igb driver and DPDK's dpdk-testpmd (Debian's dpdk-dev 22.11,
# igb PMD through vfio-pci, --iova-mode=va) on the same igb ports. Under
# valgrind both tools run some 50 times slower than the emulated NICs, so
# every poll finds a full burst: the counts are the saturated per-packet
# cost, the same for both, and do not depend on how busy the host is.
#
#   benches/vm/nic-callgrind.sh
#   CG_MODES=tx CG_TOOLS=ours benches/vm/nic-callgrind.sh
#
#   tx   ours: pktgen --count N on port 0      testpmd: --forward-mode=txonly on port 0
#   rx   ours: rxcount --count N on port 1     testpmd: --forward-mode=rxonly on port 1
#        the load (not under valgrind): our pktgen on port 0, from the
#        moment the receiver is up
#   fwd  ours: fwd --time T on ports 0 and 1   testpmd: --forward-mode=io on ports 0 and 1
#        seeded with FWD_SEED (4096) frames from the virtio-net port; the
#        hub loops forwarded frames back (see nic-vs-testpmd.sh)
#
# Each tool and mode runs twice under callgrind, a short and a long run;
# the per-packet figure is (Ir long - Ir short) / (packets long - packets
# short), so that start-up and teardown cancel. Packets: pktgen's and
# rxcount's --count (fixed), fwd's forwarded total, testpmd's own final
# statistics (TX-packets or RX-packets, summed over its ports) after it is
# stopped with SIGINT once it has printed CG_SECS statistics periods (short,
# long). The whole process is counted (testpmd: its main lcore, which
# prints the statistics, too). The callgrind files come back over the
# console (gzip, base64); callgrind_annotate on the host gives the
# inclusive cost per packet of the top functions.
#
# Environment: CG_MODES ("tx rx fwd"), CG_TOOLS ("ours testpmd"), CG_SIZE
# (60), CG_PKTS ("20000 100000": pktgen/rxcount counts), CG_SECS ("4 12":
# testpmd statistics periods; fwd seconds), CG_TIMEOUT (1500).
# Results: .cache/bench/nic-callgrind/<time>/{results.md,console.log,cg/*.out}
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

. "$here/lib-nic.sh"
modes="${CG_MODES:-tx rx fwd}" tools="${CG_TOOLS:-ours testpmd}" size="${CG_SIZE:-60}"
pkts="${CG_PKTS:-20000 100000}" secs="${CG_SECS:-4 12}"
nic_init nic-callgrind
NIC_WHOLE_VARS="CG_SIZE, CG_PKTS, CG_SECS" nic_whole "$size" "$pkts" "$secs"
command -v callgrind_annotate >/dev/null || { log "callgrind_annotate not found (apt-get install valgrind)"; exit 1; }

nic_build "$out"

{
    nic_guest_lib CG
    cat <<'GUEST'
TP_WAIT_MAX=3000   # testpmd starts in about a minute under valgrind
VG="valgrind --tool=callgrind --dump-instr=no"

for mode in $(echo "$CG_MODES" | tr , ' '); do
  for tool in $(echo "$CG_TOOLS" | tr , ' '); do
    for len in short long; do
      n=$NS t=$TS; [ $len = long ] && n=$NL t=$TL
      f="/tmp/cg-$tool-$mode-$len.out"
      rc=0 pk=0 gen=""
      s0="$(cut -d' ' -f1 /proc/uptime)"
      case $mode-$tool in
        tx-ours)
          taskset 2 $VG --callgrind-out-file="$f" /bin/pktgen --device "$P0" --size "$S" --count "$n" > /tmp/out 2>&1 || rc=$?
          pk="$(sed -n 's/^total: \([0-9][0-9]*\) frames.*/\1/p' /tmp/out)" ;;
        tx-testpmd)
          TP_PREFIX="$VG --callgrind-out-file=$f"; tp_start /tmp/out -a "$P0" -- $TP_OPTS --forward-mode=txonly --txpkts="$S"
          tp_wait $((t + 1)) || rc=1
          tp_stop || rc=$?
          pk="$(tp_total /tmp/out TX 1)" ;;
        rx-ours)
          # The load starts once the receiver is up (TCG runs both vCPUs on
          # one host thread: a generator waiting for valgrind's start-up
          # would only slow it).
          taskset 2 $VG --callgrind-out-file="$f" /bin/rxcount --device "$P1" --count "$n" --time 3600 > /tmp/out 2>&1 &
          pid=$!
          wait_line /tmp/out rxcount: $pid
          taskset 1 /bin/pktgen --device "$P0" --size "$S" --time 3600 > /tmp/gen 2>&1 &
          gen=$!
          wait $pid || rc=$?
          kill $gen 2>/dev/null; wait $gen
          pk="$(sed -n 's/^total: \([0-9][0-9]*\) frames.*/\1/p' /tmp/out)" ;;
        rx-testpmd)
          TP_PREFIX="$VG --callgrind-out-file=$f"; tp_start /tmp/out -a "$P1" -- $TP_OPTS --forward-mode=rxonly
          if tp_wait 1; then
              taskset 1 /bin/pktgen --device "$P0" --size "$S" --time 3600 > /tmp/gen 2>&1 &
              gen=$!
              tp_wait $(($(blocks /tmp/out) + t)) || rc=1
              kill $gen 2>/dev/null; wait $gen
          else
              rc=1
          fi
          tp_stop || rc=$?
          pk="$(tp_total /tmp/out RX 1)" ;;
        fwd-ours)
          taskset 2 $VG --callgrind-out-file="$f" /bin/fwd --ports "$P0,$P1" --time "$t" > /tmp/out 2>&1 &
          pid=$!
          wait_line /tmp/out fwd: $pid
          taskset 1 /bin/pktgen --device "$V" --size "$S" --count "$SEED" > /tmp/gen 2>&1 || rc=1
          wait $pid || rc=$?
          pk="$(sed -n 's/^total in .* A->B \([0-9][0-9]*\) forwarded.* B->A \([0-9][0-9]*\) forwarded.*/\1 \2/p' /tmp/out | awk '{ print $1 + $2 }')" ;;
        fwd-testpmd)
          TP_PREFIX="$VG --callgrind-out-file=$f"; tp_start /tmp/out -a "$P0" -a "$P1" -- $TP_OPTS --forward-mode=io
          if tp_wait 2; then
              taskset 1 /bin/pktgen --device "$V" --size "$S" --count "$SEED" > /tmp/gen 2>&1 || rc=1
              tp_wait $(($(blocks /tmp/out) + 2 * t)) || rc=1
          else
              rc=1
          fi
          tp_stop || rc=$?
          pk="$(tp_total /tmp/out TX 2)" ;;
      esac
      s1="$(cut -d' ' -f1 /proc/uptime)"
      ir="$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$f" 2>/dev/null)"
      [ -n "$ir" ] || rc=98
      [ "${pk:-0}" -gt 0 ] 2>/dev/null || rc=99
      [ $rc = 0 ] || { echo "$tool $mode $len failed (rc $rc):"; tail -25 /tmp/out; }
      echo "CG-RUN tool=$tool mode=$mode len=$len rc=$rc pkts=${pk:-0} ir=${ir:-0} secs=$s0,$s1"
      cg_send "$f"
    done
  done
done
hugepages.sh reset >/dev/null
GUEST
} > "$out/guest.sh"

log "booting the guest (modes: $modes; tools: $tools; $size-byte frames)"
nic_boot CG-RUN "${CG_TIMEOUT:-1500}" \
    "CG_MODES=${modes// /,} CG_TOOLS=${tools// /,} CG_SIZE=$size CG_PKTS=${pkts// /,} CG_SECS=${secs// /,}"

# Callgrind files back from the console; each one's functions with their
# inclusive Ir, as "Ir<TAB>function" lines.
nic_cg_files "$out"
for f in "$out"/cg/*.out; do
    [ -f "$f" ] || continue
    callgrind_annotate --inclusive=yes --tree=none --auto=no --threshold=99.9 "$f" 2>/dev/null |
        sed -n '/^Ir *file:function/,$p' | sed 1d |
        awk '$1 ~ /^[0-9,]+$/ && $2 ~ /^\(/ { ir = $1; gsub(",", "", ir); $1 = $2 = ""; sub(/^ +/, ""); print ir "\t" $0 }' \
        > "${f%.out}.incl.tsv" || true
done

python3 - "$out" "$built" "$size" > "$out/results.md" <<'PY'
import os, re, sys
out, built, size = sys.argv[1:4]
runs = {(r["tool"], r["mode"], r["len"]): r
        for r in (dict(kv.split("=", 1) for kv in line.split("CG-RUN ", 1)[1].split())
                  for line in open(f"{out}/console.log", errors="replace") if "CG-RUN " in line)}
def incl(path):
    """function -> inclusive Ir (the .incl.tsv files written above)."""
    res = {}
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            ir, _, fn = line.rstrip("\n").partition("\t")
            fn = re.sub(r"^/rustc/[0-9a-f]+/|^/root/.cargo/registry/src/[^/]+/|^/work/main/|\s+\[[^]]*\]$", "", fn)
            res[fn] = res.get(fn, 0) + int(ir or 0)
    return res
label = {"tx": "tx (pktgen / txonly)", "rx": "rx (rxcount / rxonly)", "fwd": "io forwarding (fwd / io)"}
tname = {"ours": "fastlane", "testpmd": "testpmd"}
print(f"fastlane: {built}. testpmd: Debian dpdk-dev 22.11, igb PMD, vfio-pci, --iova-mode=va. {size}-byte frames.")
print("valgrind --tool=callgrind in the guest, whole process. Ir per packet = (Ir long - Ir short) / (packets long - packets short).\n")
print("| mode | tool | Ir per packet | packets short / long | Ir short / long |")
print("|---|---|---:|---:|---:|")
pairs = []
for mode in ["tx", "rx", "fwd"]:
    for tool in ["ours", "testpmd"]:
        s, l = runs.get((tool, mode, "short")), runs.get((tool, mode, "long"))
        if not s and not l:
            continue
        if not s or not l or s["rc"] != "0" or l["rc"] != "0":
            print(f"| {label[mode]} | {tname[tool]} | failed: see console.log | {s and s['pkts']} / {l and l['pkts']} | |")
            continue
        dp = int(l["pkts"]) - int(s["pkts"])
        if dp <= 0:
            print(f"| {label[mode]} | {tname[tool]} | no more packets in the long run | {s['pkts']} / {l['pkts']} | |")
            continue
        d = (int(l["ir"]) - int(s["ir"])) / dp
        print(f"| {label[mode]} | {tname[tool]} | {d:,.1f} | {s['pkts']} / {l['pkts']} | {int(s['ir']):,} / {int(l['ir']):,} |")
        pairs.append((tool, mode, dp, d))
print("\nWhere the instructions go: the top functions by inclusive Ir per packet ((long - short) / (packets long -")
print("packets short)), those with at least 2% of the whole, for each tool and mode.\n")
for tool, mode, dp, tot in pairs:
    short = incl(f"{out}/cg/cg-{tool}-{mode}-short.incl.tsv")
    long_ = incl(f"{out}/cg/cg-{tool}-{mode}-long.incl.tsv")
    per = {fn: (ir - short.get(fn, 0)) / dp for fn, ir in long_.items()}
    top = [fn for fn in sorted(per, key=per.get, reverse=True) if per[fn] >= 0.02 * tot][:25]
    print(f"| {label[mode]}, {tname[tool]} | Ir per packet | share |\n|---|---:|---:|")
    print("\n".join(f"| `{fn[:110]}` | {per[fn]:,.1f} | {per[fn] / tot:.0%} |" for fn in top) + "\n")
PY
cat "$out/results.md"
log "results in $out/results.md"
