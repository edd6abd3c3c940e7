#!/usr/bin/env bash
# Host side of the NVMe surprise-removal test (tests/guest_nvme_removal.rs):
# unplugs the guest's hot-pluggable NVMe controller (QEMU id nvmehp, behind
# root port rphp) over QMP when the guest test asks, and plugs it back in
# when asked again. The asks are tokens on the guest console:
#   "NVME-HOTPLUG-DEL <token>"  -> device_del nvmehp
#   "NVME-HOTPLUG-ADD <token>"  -> device_add nvme id=nvmehp on rphp, same drive
#
#   tests/guest/hotplug-host.sh --qmp SOCKET --token T [--timeout S] &
#
# vm/test.sh starts it beside vm/run.sh (FASTLANE_QEMU_EXTRA adds the root
# port, the drive and the controller; see hotplug_qemu_args there).
# Any number of unplug/plug cycles, in order. Exit 0 when the guest stops
# asking (the test fails on its own if it waited in vain), 1 on a QMP error.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
qmp="" token="" timeout_s=1800
console="${FASTLANE_VM_CACHE:-$repo/.cache/vm}/console.log"
while [ $# -gt 0 ]; do
    case "$1" in
        --qmp) qmp="$2"; shift 2 ;;
        --token) token="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        *) echo "hotplug-host.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$qmp" ] && [ -n "$token" ] || { echo "hotplug-host.sh: --qmp and --token are required" >&2; exit 2; }

exec python3 - "$qmp" "$token" "$console" "$timeout_s" <<'EOF'
import json, socket, sys, time

qmp, token, console, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + timeout

def log(msg):
    print(f"hotplug-host: {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

deleted = False

def command(rf, s, name, fatal=True, **args):
    global deleted
    s.sendall((json.dumps({"execute": name, "arguments": args}) + "\n").encode())
    while True:
        line = rf.readline()
        if not line:
            log(f"FAIL: QMP closed during {name}")
            sys.exit(1)
        r = json.loads(line)
        if r.get("event") == "DEVICE_DELETED" and r.get("data", {}).get("device") == "nvmehp":
            deleted = True
        if "error" in r:
            if not fatal:
                return False
            log(f"FAIL: {name}: {r['error']}")
            sys.exit(1)
        if "return" in r:
            log(f"{name} {args}: ok")
            return True

def count(marker):
    try:
        with open(console, "rb") as f:
            return f.read().count(marker.encode())
    except FileNotFoundError:
        return 0

def wait_count(marker, n):
    while time.monotonic() < deadline:
        if count(marker) >= n:
            return True
        time.sleep(0.2)
    return False

# Any number of cycles, in order: the n-th unplug ask, then the n-th plug ask.
rf = s = None
cycle = 0
while True:
    cycle += 1
    if not wait_count(f"NVME-HOTPLUG-DEL {token}", cycle):
        log(f"done after {cycle - 1} cycle(s)")
        sys.exit(0)
    if s is None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(qmp)
        rf = s.makefile("r")
        json.loads(rf.readline())
        command(rf, s, "qmp_capabilities")
    deleted = False
    command(rf, s, "device_del", id="nvmehp")
    if not wait_count(f"NVME-HOTPLUG-ADD {token}", cycle):
        log("the guest never asked for the plug-in")
        sys.exit(0)
    # The old controller must be gone in QEMU (DEVICE_DELETED) before its
    # drive can be given to a new one: the guest lets go, then QEMU removes it.
    for attempt in range(120):
        if deleted and command(rf, s, "device_add", fatal=False, driver="nvme", id="nvmehp",
                               bus="rphp", drive="dhp", serial="fastlanehp01"):
            break
        command(rf, s, "query-status")
        time.sleep(0.5)
    else:
        log("FAIL: device_add did not succeed within 60 s")
        sys.exit(1)
EOF
