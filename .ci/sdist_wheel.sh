#!/usr/bin/env bash
# The sdist is complete: build it, build a wheel from it (pip's build isolation fetches
# the build requirements from the package index), install the wheel into a fresh venv
# that has never seen the source tree, and run .ci/smoke.py there from outside the tree.
# Usage: .ci/sdist_wheel.sh [WORKDIR]   (default: a new temporary directory)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
python="${PYTHON:-python3}"

"$python" -m venv "$work/build-env"
"$work/build-env/bin/python" -m pip install --quiet --upgrade pip build
"$work/build-env/bin/python" -m build --sdist --outdir "$work/dist" "$root"
sdist=("$work"/dist/nn_core-*.tar.gz)
echo "sdist: ${sdist[0]}"
listing="$(tar -tzf "${sdist[0]}")"      # (not piped into grep -q: pipefail + SIGPIPE)
for member in src_pyx/_attention.pyx src_pyx/_blas.pxd src_pyx/_vmath.h nn_core/py.typed LICENSE; do
    grep -q "/$member\$" <<<"$listing" || { echo "sdist lacks $member"; exit 1; }
done

"$python" -m venv "$work/wheel-env"
"$work/wheel-env/bin/python" -m pip install --quiet --upgrade pip
"$work/wheel-env/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "${sdist[0]}"
wheel=("$work"/wheels/nn_core-*.whl)
echo "wheel: ${wheel[0]}"
case "${wheel[0]}" in
    *-none-any.whl) echo "the wheel is pure Python: the kernels were not built"; exit 1 ;;
esac

"$work/wheel-env/bin/python" -m pip install --quiet "${wheel[0]}"
cd "$work"
"$work/wheel-env/bin/python" "$root/.ci/smoke.py"
