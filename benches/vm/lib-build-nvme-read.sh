# Sourced by the benchmark scripts: build_nvme_read OUT builds the static
# examples/nvme_read into OUT/nvme_read and sets $built to what it measured.
# BENCH_SOURCE: auto (the working tree, and if it does not compile, the last
# commit), tree, head. Needs $repo.
build_nvme_read() {
    local out="$1" target=x86_64-unknown-linux-gnu mode="${BENCH_SOURCE:-auto}" snap
    _build() {   # source dir, target dir
        (cd "$1" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_TARGET_DIR="$2" \
            cargo build --release --quiet --target "$target" --example nvme_read)
    }
    built=""
    if [ "$mode" != head ]; then
        echo "building nvme_read from the working tree" >&2
        if _build "$repo" "$repo/target"; then
            cp "$repo/target/$target/release/examples/nvme_read" "$out/nvme_read"
            built="working tree at $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- . || echo ' + local changes')"
        elif [ "$mode" = tree ]; then
            return 1
        else
            echo "WARNING: the working tree does not compile (someone mid-edit?); measuring the last commit instead" >&2
        fi
    fi
    if [ -z "$built" ]; then
        snap="$repo/.cache/bench/head-src"
        rm -rf "$snap"; mkdir -p "$snap"
        git -C "$repo" archive HEAD | tar -x -C "$snap"
        _build "$snap" "$repo/.cache/bench/head-target"
        cp "$repo/.cache/bench/head-target/$target/release/examples/nvme_read" "$out/nvme_read"
        built="commit $(git -C "$repo" rev-parse --short HEAD)"
    fi
}
