#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with teacache-trt, its test extras
# (ONNX Runtime CPU, TensorRT-RTX for ahead-of-time engine builds) and the digits demo's
# (scikit-learn, for scripts/run.sh's teacache-eval), and cpp_ext built where a C++ compiler
# (and nvcc, for the kernel) exists. Idempotent, and quick when nothing changed: the install
# is skipped while the hash of what it depends on matches the stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# torch first, pinned to the CPU build: a bare `torch` requirement would pull a multi-GB
# CUDA build on machines without a GPU. A torch already in the range is kept.
if ! python -c 'import torch, sys; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(not ((2, 5) <= v <= (2, 13)))' 2>/dev/null; then
  python -m pip install -q --upgrade pip >/dev/null
  python -m pip install -q "torch==2.13.0"
fi
# What the editable install depends on: the build files and cpp_ext's sources (Python sources
# are linked, not copied). The stamp also lists the extensions built, which must still exist.
STAMP=.venv/teacache-install.stamp
HASH=$(cat setup.py pyproject.toml $(find cpp_ext -type f | LC_ALL=C sort) | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$HASH" ] && \
   tail -n +2 "$STAMP" | while read -r so; do [ -f "$so" ] || exit 1; done; then
  echo "setup: teacache-trt install is up to date (setup.py, pyproject.toml, cpp_ext unchanged)"
  exit 0
fi
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q -e ".[test,demo]"
{ echo "$HASH"; ls teacache_trt/_criterion*.so 2>/dev/null || true; } > "$STAMP"
