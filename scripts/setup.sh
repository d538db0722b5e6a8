#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with teacache-trt and its test
# extras (ONNX Runtime CPU, TensorRT-RTX for ahead-of-time engine builds). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch first, pinned to the CPU build: a bare `torch` requirement would pull a multi-GB
# CUDA build on machines without a GPU. A torch already in the range is kept.
if ! python -c 'import torch, sys; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(not ((2, 5) <= v <= (2, 13)))' 2>/dev/null; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[test]"
