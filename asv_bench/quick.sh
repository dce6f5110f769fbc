#!/usr/bin/env bash
# Record one quick asv run of the installed checkout and publish the site:
#   asv_bench/quick.sh                      # every benchmark, one sample each
#   asv_bench/quick.sh --bench SDPASuite    # extra arguments go to `asv run`
# Needs nn_core installed (or built in place) and asv (`pip install -e ".[bench]"`).
# The site is written to asv_bench/.asv/html; `asv preview` (from asv_bench/) serves it.
set -euo pipefail
cd "$(dirname "$0")"
asv machine --yes                        # record this machine (once; asv asks otherwise)
asv run --python=same --quick --set-commit-hash="$(git rev-parse HEAD)" "$@"
asv publish
if [ -z "$(find .asv/html/graphs -name '*.json' 2>/dev/null | head -1)" ]; then
    echo "asv published no results" >&2
    exit 1
fi
