#!/usr/bin/env bash
# Set-up, then the main job on the bundled digits model: export it (embed / blocks / head),
# render 100 digits with and without TeaCache and at equal-compute baselines, print the
# quality / speed table, and save the table, JSON, PSNR plot and digit grids in out/digits/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
teacache-eval --out out/digits "$@"
