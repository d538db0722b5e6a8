#!/usr/bin/env bash
# Set-up, then the whole test suite (CPU only; TensorRT-RTX builds engines without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
