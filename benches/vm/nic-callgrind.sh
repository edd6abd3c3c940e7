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
# Ours runs twice under callgrind, a short and a long run; the per-packet
# figure is (Ir long - Ir short) / (packets long - packets short), so that
# start-up and teardown cancel (packets: pktgen's and rxcount's --count,
# fixed; fwd's forwarded total), the whole process counted. testpmd runs
# once (under valgrind and TCG its start-up takes minutes), with
# --separate-threads=yes: its figure is the forwarding lcore's thread (the
# busiest; start-up and statistics are on the main lcore) divided by the
# packets of its own final statistics (accumulated TX- or RX-packets) after
# it is stopped with SIGINT once it has printed CG_SECS[0] statistics
# periods after the load started. The callgrind files come back over the
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
    lens="short long"; [ $tool = testpmd ] && lens=one
    for len in $lens; do
      n=$NS t=$TS; [ $len = long ] && n=$NL t=$TL
      f="/tmp/cg-$tool-$mode-$len.out"
      rc=0 pk=0 gen=""
      s0="$(cut -d' ' -f1 /proc/uptime)"
      case $mode-$tool in
        tx-ours)
          taskset 2 $VG --callgrind-out-file="$f" /bin/pktgen --device "$P0" --size "$S" --count "$n" > /tmp/out 2>&1 || rc=$?
          pk="$(sed -n 's/^total: \([0-9][0-9]*\) frames.*/\1/p' /tmp/out)" ;;
        tx-testpmd)
          TP_PREFIX="$VG --separate-threads=yes --callgrind-out-file=$f"; tp_start /tmp/out -a "$P0" -- $TP_OPTS --forward-mode=txonly --txpkts="$S"
          tp_wait $((t + 1)) || rc=1
          tp_stop || rc=$?
          pk="$(tp_total /tmp/out TX)" ;;
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
          TP_PREFIX="$VG --separate-threads=yes --callgrind-out-file=$f"; tp_start /tmp/out -a "$P1" -- $TP_OPTS --forward-mode=rxonly
          if tp_wait 1; then
              taskset 1 /bin/pktgen --device "$P0" --size "$S" --time 3600 > /tmp/gen 2>&1 &
              gen=$!
              tp_wait $(($(blocks /tmp/out) + t)) || rc=1
              kill $gen 2>/dev/null; wait $gen
          else
              rc=1
          fi
          tp_stop || rc=$?
          pk="$(tp_total /tmp/out RX)" ;;
        fwd-ours)
          taskset 2 $VG --callgrind-out-file="$f" /bin/fwd --ports "$P0,$P1" --time "$t" > /tmp/out 2>&1 &
          pid=$!
          wait_line /tmp/out fwd: $pid
          taskset 1 /bin/pktgen --device "$V" --size "$S" --count "$SEED" > /tmp/gen 2>&1 || rc=1
          wait $pid || rc=$?
          pk="$(sed -n 's/^total in .* A->B \([0-9][0-9]*\) forwarded.* B->A \([0-9][0-9]*\) forwarded.*/\1 \2/p' /tmp/out | awk '{ print $1 + $2 }')" ;;
        fwd-testpmd)
          TP_PREFIX="$VG --separate-threads=yes --callgrind-out-file=$f"; tp_start /tmp/out -a "$P0" -a "$P1" -- $TP_OPTS --forward-mode=io
          if tp_wait 2; then
              taskset 1 /bin/pktgen --device "$V" --size "$S" --count "$SEED" > /tmp/gen 2>&1 || rc=1
              tp_wait $(($(blocks /tmp/out) + 2 * t)) || rc=1
          else
              rc=1
          fi
          tp_stop || rc=$?
          pk="$(tp_total /tmp/out TX)" ;;
      esac
      s1="$(cut -d' ' -f1 /proc/uptime)"
      if [ $tool = testpmd ]; then
          # One file per thread: keep the forwarding lcore's, the busiest.
          best=0
          for g in "$f"-*; do
              v="$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$g" 2>/dev/null)"
              if [ "${v:-0}" -gt "$best" ]; then best=$v; mv "$g" "$f"; else rm -f "$g"; fi
          done
      fi
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
cg_files "$out"
for f in "$out"/cg/*.out; do
    [ -f "$f" ] || continue
    callgrind_annotate --inclusive=yes --tree=none --auto=no --threshold=99.9 "$f" 2>/dev/null |
        sed -n '/^Ir *file:function/,$p' | sed 1d |
        awk 'match($0, /^ *[0-9,]+ +\( *[0-9.]+%\) +/) { ir = $1; gsub(",", "", ir); print ir "\t" substr($0, RLENGTH + 1) }' \
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
            # Paths shortened; an unnamed function keeps its object's name.
            fn = re.sub(r"^/rustc/[0-9a-f]+/|^/root/.cargo/registry/src/[^/]+/|^/work/main/", "", fn)
            fn = re.sub(r"\s+\[(?:[^]]*/)?([^]/]*)\]$", r" [\1]" if fn.startswith("???") else "", fn)
            res[fn] = res.get(fn, 0) + int(ir or 0)
    return res
label = {"tx": "tx (pktgen / txonly)", "rx": "rx (rxcount / rxonly)", "fwd": "io forwarding (fwd / io)"}
tname = {"ours": "fastlane", "testpmd": "testpmd"}
print(f"fastlane: {built}. testpmd: Debian dpdk-dev 22.11, igb PMD, vfio-pci, --iova-mode=va. {size}-byte frames.")
print("valgrind --tool=callgrind in the guest. fastlane: whole process, (Ir long - Ir short) / (packets long - packets short);")
print("testpmd: its forwarding lcore's thread, Ir / packets (one run).\n")
print("| mode | tool | Ir per packet | packets | Ir |")
print("|---|---|---:|---:|---:|")
pairs = []
for mode in ["tx", "rx", "fwd"]:
    for tool in ["ours", "testpmd"]:
        got = [runs[k] for k in [(tool, mode, "short"), (tool, mode, "long"), (tool, mode, "one")] if k in runs]
        if not got:
            continue
        pk, ir = " / ".join(r["pkts"] for r in got), " / ".join(f"{int(r['ir']):,}" for r in got)
        if any(r["rc"] != "0" for r in got) or len(got) == 1 and tool == "ours":
            print(f"| {label[mode]} | {tname[tool]} | failed: see console.log | {pk} | {ir} |")
            continue
        # (first, last): the run subtracted (none for testpmd's one run) and the run.
        base = got[0] if len(got) == 2 else {"pkts": "0", "ir": "0", "len": None}
        dp = int(got[-1]["pkts"]) - int(base["pkts"])
        if dp <= 0:
            print(f"| {label[mode]} | {tname[tool]} | no more packets in the long run | {pk} | {ir} |")
            continue
        d = (int(got[-1]["ir"]) - int(base["ir"])) / dp
        print(f"| {label[mode]} | {tname[tool]} | {d:,.1f} | {pk} | {ir} |")
        pairs.append((tool, mode, dp, d, base["len"], got[-1]["len"]))
print("\nWhere the instructions go: the top functions by inclusive Ir per packet (as above), those with at")
print("least 2% of the whole, for each tool and mode (testpmd's Debian build has no symbols: addresses).\n")
for tool, mode, dp, tot, first, last in pairs:
    short = incl(f"{out}/cg/cg-{tool}-{mode}-{first}.incl.tsv") if first else {}
    long_ = incl(f"{out}/cg/cg-{tool}-{mode}-{last}.incl.tsv")
    per = {fn: (ir - short.get(fn, 0)) / dp for fn, ir in long_.items()}
    # Leave out the runtime's frames around main (all of it, or more with recursion).
    outer = re.compile(r"^\?\?\?:\(below main\)|^\?\?\?:main$|^library/(std|core)/src/(rt|sys/backtrace|ops/function)\.rs:std::")
    top = [fn for fn in sorted(per, key=per.get, reverse=True) if per[fn] >= 0.02 * tot and not outer.search(fn)][:25]
    print(f"| {label[mode]}, {tname[tool]} | Ir per packet | share |\n|---|---:|---:|")
    print("\n".join(f"| `{fn[:110]}` | {per[fn]:,.1f} | {per[fn] / tot:.0%} |" for fn in top) + "\n")
PY
cat "$out/results.md"
log "results in $out/results.md"
