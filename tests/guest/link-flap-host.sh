#!/usr/bin/env bash
# Host side of the NIC link down/up test (guest_nic_faults
# link_down_and_up_while_traffic_flows): toggles QEMU's netdev p0 (the
# first igb port, FASTLANE_IGB0) off and on through QMP, once the guest test
# says it is ready. Run it in the background before vm/run.sh:
#
#   sock=/tmp/fl-qmp.$$.sock token=flap$$
#   tests/guest/link-flap-host.sh --qmp "$sock" --token "$token" &
#   flapper=$!
#   FASTLANE_QEMU_EXTRA="-qmp unix:$sock,server=on,wait=off" \
#   FASTLANE_GUEST_ENV="NIC_LINK_FLAP=$token" \
#       vm/run.sh --timeout 600 --bin .cache/guest-bin-nicf/guest_nic_faults \
#       --script tests/guest/nic-soak.sh
#   wait "$flapper"
#
# The guest prints "NIC-LINK-FLAP-READY <token>" on its console (vm/run.sh
# tees it to .cache/vm/console.log); the token keeps a marker of an earlier
# or another guest from triggering it. Then, per cycle: wait --delay
# seconds, `set_link p0 off`, wait --down seconds, `set_link p0 on`.
# Exit 0 when every cycle was sent, 1 on a QMP error or timeout.
#
# Options (defaults): --qmp SOCKET (required) --token T (required)
#   --console FILE (.cache/vm/console.log, or $FASTLANE_VM_CACHE/console.log)
#   --netdev p0 --cycles 1 --delay 2 --down 3 --timeout 900
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
qmp="" token="" console="${FASTLANE_VM_CACHE:-$repo/.cache/vm}/console.log"
netdev=p0 cycles=1 delay=2 down=3 timeout_s=900
while [ $# -gt 0 ]; do
    case "$1" in
        --qmp) qmp="$2"; shift 2 ;;
        --token) token="$2"; shift 2 ;;
        --console) console="$2"; shift 2 ;;
        --netdev) netdev="$2"; shift 2 ;;
        --cycles) cycles="$2"; shift 2 ;;
        --delay) delay="$2"; shift 2 ;;
        --down) down="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "link-flap-host.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$qmp" ] && [ -n "$token" ] || { echo "link-flap-host.sh: --qmp and --token are required" >&2; exit 2; }

exec python3 - "$qmp" "$token" "$console" "$netdev" "$cycles" "$delay" "$down" "$timeout_s" <<'EOF'
import json, os, socket, sys, time

qmp, token, console, netdev = sys.argv[1:5]
cycles, delay, down, timeout = int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
deadline = time.monotonic() + timeout
marker = ("NIC-LINK-FLAP-READY " + token).encode()

def log(msg):
    print(f"link-flap-host: {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

def fail(msg):
    log("FAIL: " + msg)
    sys.exit(1)

# 1. The marker on the console (vm/run.sh may first wait for another guest).
log(f"waiting for '{marker.decode()}' in {console}")
while True:
    if time.monotonic() > deadline:
        fail("no marker before the timeout")
    try:
        with open(console, "rb") as f:
            if marker in f.read():
                break
    except FileNotFoundError:
        pass
    time.sleep(0.2)

# 2. QMP: greeting, capabilities.
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
try:
    s.connect(qmp)
except OSError as e:
    fail(f"connect {qmp}: {e}")
rf = s.makefile("r")

def reply():
    while True:
        line = rf.readline()
        if not line:
            fail("QMP connection closed")
        m = json.loads(line)
        if "return" in m:
            return m["return"]
        if "error" in m:
            fail(f"QMP error: {m['error']}")
        # events (NIC_RX_FILTER_CHANGED, ...) are skipped

def cmd(execute, **args):
    msg = {"execute": execute}
    if args:
        msg["arguments"] = args
    s.sendall((json.dumps(msg) + "\n").encode())
    return reply()

greeting = json.loads(rf.readline())
if "QMP" not in greeting:
    fail(f"not a QMP greeting: {greeting}")
cmd("qmp_capabilities")
log("QMP connected, marker seen")

for i in range(cycles):
    time.sleep(delay)
    cmd("set_link", name=netdev, up=False)
    log(f"cycle {i + 1}/{cycles}: set_link {netdev} off")
    time.sleep(down)
    cmd("set_link", name=netdev, up=True)
    log(f"cycle {i + 1}/{cycles}: set_link {netdev} on")
log("done")
EOF
