#!/usr/bin/env bash
# kvstore device check: proves the GPU path in one short run (docs/gpu.md).
#
#   scripts/gpu_check.sh [--device cuda|cpu] [--out DIR] [--quick] [--budget S] [--skip ...]
#
# Runs from a checkout of this repository (it needs tests/, benchmarks/ and
# pyproject.toml) and writes gpu_check.json and gpu_check.md under $OUT (or
# --out DIR; default ./gpu-check-out). About 6-8 minutes on an H100/H200;
# --budget (default 510 s) keeps it under 9. `--device cpu` runs everything
# that needs no CUDA (CI: tests/benchmarks/test_gpu_check.py).
#
# The GPU machine has python3 with torch (CUDA 13), cupy-cuda13x,
# transformers, grpcio, msgpack, xxhash and prometheus-client, and no
# network. Prepare, on a machine with network, from the repository root:
#
#   python -m build --wheel --outdir dist/                      # kvstore-*.whl
#   pip download lz4 pytest --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#       --implementation cp -d dist/                            # lz4, pytest (+ pluggy,
#                                                               #  iniconfig, packaging)
#
# and bring the checkout with dist/ to the GPU machine. This script installs
# dist/*.whl (pip --no-index --no-deps --target, a private folder put on
# PYTHONPATH; the image's packages stay) when `import kvstore.kernels` does
# not work yet, then runs `python -m benchmarks.gpu_check`. Without
# pytest the tests section is skipped (and says so); without
# compute-sanitizer (CUDA toolkit) the sanitizer section is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [[ "$PY" == */* ]]; then  # a path: absolute, as the script changes directory
    PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/kvstore-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# `tests` and `benchmarks` importable by name, but not the checkout's root:
# there `kvstore/` is only the core package (the wheel or an editable install
# maps kernels/, client/, ... under it), so Python runs with -P.
mkdir -p "$WORK/path"
ln -s "$ROOT/tests" "$WORK/path/tests"
ln -s "$ROOT/benchmarks" "$WORK/path/benchmarks"
export PYTHONPATH="$WORK/path${PYTHONPATH:+:$PYTHONPATH}"

if ! (cd "$WORK" && "$PY" -P -c "import kvstore.kernels, kvstore.client" 2>/dev/null); then
    shopt -s nullglob
    wheels=("$ROOT"/dist/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "kvstore is not importable and $ROOT/dist has no wheels: see this script's header" >&2
        exit 2
    fi
    # a private target folder (no venv needed): the image's torch, CuPy and
    # transformers stay where they are
    "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "${wheels[@]}"
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
    (cd "$WORK" && "$PY" -P -c "import kvstore.kernels, kvstore.client") || {
        echo "kvstore does not import after installing dist/*.whl" >&2; exit 2; }
fi

cd "$ROOT"
exec "$PY" -P -m benchmarks.gpu_check --root "$ROOT" "$@"
