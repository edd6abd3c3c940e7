#!/usr/bin/env bash
# Prints the directory of a built SPDK (spdk_nvme_perf in build/bin) for the
# benchmark scripts, building it first when needed.
#
#   benches/vm/spdk/spdk-dir.sh SPDK_SRC
#
# SPDK_SRC is either an SPDK tree already built by build-spdk.sh (it has
# build/bin/spdk_nvme_perf and .peer-build-ok: used as is) or a git clone or
# mirror of spdk/spdk with its tags, which build-spdk.sh clones, patches and
# builds into $FASTLANE_SPDK_BUILD (default <repo>/.cache/spdk/src), once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
src="${1:?usage: spdk-dir.sh SPDK_SRC}"
[ -e "$src" ] || { echo "spdk-dir.sh: $src does not exist" >&2; exit 2; }
src="$(cd "$src" && pwd)"
if [ -x "$src/build/bin/spdk_nvme_perf" ] && [ -f "$src/.peer-build-ok" ]; then
    echo "$src"; exit 0
fi
dir="${FASTLANE_SPDK_BUILD:-$repo/.cache/spdk/src}"
mkdir -p "$(dirname "$dir")"
SPDK_MIRROR="$src" "$here/build-spdk.sh" "$dir" >&2
echo "$dir"
