#!/usr/bin/env bash
# Builds the guest's binaries statically (the guest has no libc) into
# .cache/guest-bin/: every `guest_*` test target, the examples and the
# nvmf-tcp target.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
out="${FASTLANE_GUEST_BIN_DIR:-$repo/.cache/guest-bin}"
rm -rf "$out"; mkdir -p "$out"
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
target=x86_64-unknown-linux-gnu
cargo build --release --target "$target" --examples
# The NVMe/TCP target (apps/nvmf-tcp), for tests/guest_nvmf.rs.
cargo build --release --target "$target" -p fastlane-nvmf-tcp --bin nvmf-tcp
cargo test --release --features guest --target "$target" --no-run --message-format=json \
    | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"].startswith("guest_"):
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$out"
# An example is examples/NAME.rs or examples/NAME/main.rs (cargo's two forms).
for ex in "$repo"/examples/*.rs "$repo"/examples/*/main.rs; do
    [ -e "$ex" ] || continue
    case "$ex" in
        */main.rs) n="$(basename "$(dirname "$ex")")" ;;
        *) n="$(basename "$ex" .rs)" ;;
    esac
    cp "target/$target/release/examples/$n" "$out/$n"
done
cp "target/$target/release/nvmf-tcp" "$out/nvmf-tcp"
ls "$out"
