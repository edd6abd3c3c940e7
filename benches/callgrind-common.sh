# Sourced by benches/callgrind.sh and benches/callgrind-nic.sh, from the
# repository root with $bench set to the bench target: builds that bench (or
# takes $BENCH_BIN), and defines run N (callgrind over N operations in the
# bench's --callgrind mode, annotated), incl N FUNC (inclusive Ir of FUNC)
# and total N (the program's total Ir).

N1=${N1:-100000}
N2=${N2:-50000}
if [[ -z "${BENCH_BIN:-}" ]]; then
    BENCH_BIN=$(cargo bench --bench "$bench" --no-run 2>&1 | tee /dev/stderr |
        sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
fi
[[ -x "$BENCH_BIN" ]] || { echo "no bench binary (got '$BENCH_BIN')" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() {
    FASTLANE_BENCH_ITERS=$1 valgrind --tool=callgrind --callgrind-out-file="$out/cg.$1" \
        "$BENCH_BIN" --callgrind >"$out/log.$1" 2>&1 || { cat "$out/log.$1" >&2; exit 1; }
    grep '^callgrind mode' "$out/log.$1"
    callgrind_annotate --inclusive=yes --threshold=100 "$out/cg.$1" >"$out/ann.$1" 2>/dev/null
}
# Inclusive Ir of the function named $2 (whole-function lines end in "[binary]").
incl() {
    awk -v f=":$2 [" 'index($0, f) { gsub(",", "", $1); s += $1 } END { print s + 0 }' "$out/ann.$1"
}
total() {
    awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' "$out/ann.$1"
}
