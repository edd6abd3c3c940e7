#!/usr/bin/env bash
# Builds the guest's binaries statically (the guest has no libc) into
# .cache/guest-bin/: every `guest_*` test target and the examples.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
out="${FASTLANE_GUEST_BIN_DIR:-$repo/.cache/guest-bin}"
rm -rf "$out"; mkdir -p "$out"
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
target=x86_64-unknown-linux-gnu
cargo build --release --target "$target" --examples
cargo test --release --features guest --target "$target" --no-run --message-format=json \
    | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"].startswith("guest_"):
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$out"
for ex in "$repo"/examples/*.rs; do
    [ -e "$ex" ] || continue
    n="$(basename "$ex" .rs)"
    cp "target/$target/release/examples/$n" "$out/$n"
done
ls "$out"
