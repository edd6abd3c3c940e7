#!/usr/bin/env bash
# Host-side checks beyond `cargo test` (part of vm/test.sh):
#   1. clippy on every crate and target, warnings denied (the lint policy in
#      the workspace Cargo.toml, missing docs included);
#   2. the drivers and apps contain no `unsafe` (they forbid it; this
#      catches a removed `forbid` too);
#   3. loom: every interleaving of the buffer pool's lifetime protocol;
#   4. AddressSanitizer and ThreadSanitizer (nightly, std rebuilt with the
#      sanitizer for TSan) over the framework's tests, which include the
#      concurrent last-handle / last-buffer drop.
# Sanitizers are skipped with a notice when no nightly toolchain is present.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
target=x86_64-unknown-linux-gnu

echo "=== clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "=== no unsafe in the drivers and apps"
for c in drivers/nvme drivers/nic apps/nvmf-tcp; do
    grep -q '^#!\[forbid(unsafe_code)\]' "$c/src/lib.rs" || { echo "$c does not forbid unsafe_code"; exit 1; }
done
if grep -rnw --include='*.rs' 'unsafe' drivers/ apps/ | grep -v '^\S*:\s*//' | grep -v 'forbid(unsafe_code)'; then
    echo "unsafe found in drivers/ or apps/"; exit 1
fi

echo "=== loom: pool lifetime protocol"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -q -p fastlane-framework --release --lib lifetime_model

if cargo +nightly --version >/dev/null 2>&1; then
    echo "=== AddressSanitizer: framework tests"
    RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan \
        cargo +nightly test -q -p fastlane-framework --features sim --lib --tests --target "$target"
    rustup component add rust-src --toolchain nightly >/dev/null 2>&1 || true
    if [ -d "$(rustc +nightly --print sysroot)/lib/rustlib/src/rust/library" ]; then
        echo "=== ThreadSanitizer: framework tests"
        RUSTFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR=target/tsan TSAN_OPTIONS="halt_on_error=1" \
            cargo +nightly test -q -Zbuild-std -p fastlane-framework --features sim --lib --target "$target"
    else
        echo "=== ThreadSanitizer skipped: nightly rust-src (for -Zbuild-std) not installable here"
    fi
else
    echo "=== sanitizers skipped: no nightly toolchain"
fi
