#!/usr/bin/env bash
# Set-up, then the main job on the two bundled models:
#  1. teacache-render renders the bundled job file (100 digits: ten thresholds x ten digits) with
#     TeaCache deciding per job (sample mode), exporting the model on first use; it writes the
#     images, a labelled contact sheet, results.jsonl and summary.json in out/digits/render/;
#  2. teacache-eval prints the quality / speed table at 7 computed steps of 20 (--computed 7: the
#     default, 7 and 10, takes twice as long) against the uncached render and saves it,
#     with JSON, a PSNR plot and digit grids, in out/digits/;
#  3. the same for the moving-digits video model: six clips (uncached, TeaCache, MagCache) as
#     MP4s with GIF previews and a contact sheet of frame strips in out/video/render/, then its
#     table (per-frame PSNR / SSIM, temporal error, accuracy, wall ratios), plot and worst-case
#     side-by-side GIF in out/video/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
teacache-render digits/jobs.jsonl --out out/digits/render --contact-sheet
teacache-eval --out out/digits --computed 7 "$@"
teacache-render moving_digits/jobs.jsonl --model video --out out/video/render --contact-sheet
teacache-eval --model video --out out/video --per-class 1 --teacache 0.05 --magcache 0.15 --easycache 0.1 --timing-clips 2 --repeats 2
