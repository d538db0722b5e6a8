#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with teacache-trt, its test
# extras (ONNX Runtime CPU, TensorRT-RTX for ahead-of-time engine builds) and the digits demo's
# (scikit-learn, for scripts/run.sh's teacache-eval), and cpp_ext built
# where a C++ compiler (and nvcc, for the kernel) exists. Idempotent, and quick when nothing
# changed: the install is skipped while the hash of what it depends on matches the stamp.
# It says what it installs and names each package as pip collects it; pip's own output (and
# the build backend's banners) go to .venv/setup.log, shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
say() { echo "setup [$(( SECONDS - START ))s]: $*"; }
if [ ! -x .venv/bin/python ]; then
  say "1/3 creating the virtual environment .venv ($("$PY" --version 2>&1))"
  "$PY" -m venv .venv
else
  say "1/3 virtual environment .venv exists"
fi
. .venv/bin/activate
LOG=.venv/setup.log
: > "$LOG"
pip_install() {  # pip install ARGS...: one line per package collected; the rest into $LOG
  python -m pip install --progress-bar off "$@" 2>>"$LOG" | while IFS= read -r line; do
    echo "$line" >> "$LOG"
    case "$line" in
      Collecting*) line=${line#Collecting }; echo "setup [$(( SECONDS - START ))s]:     ${line%% (from*}" ;;
      "Installing collected packages"*) say "    installing the packages collected" ;;
    esac
  done
  return "${PIPESTATUS[0]}"
}
failed() { echo "setup: $* failed; the end of $LOG:" >&2; tail -n 40 "$LOG" >&2; exit 1; }
# torch first, pinned to the CPU build: a bare `torch` requirement would pull a multi-GB
# CUDA build on machines without a GPU. A torch already in the range is kept.
if ! python -c 'import torch, sys; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(not ((2, 5) <= v <= (2, 13)))' 2>/dev/null; then
  say "2/3 installing PyTorch 2.13.0, CPU build (about 200 MB)"
  pip_install --upgrade pip >/dev/null || failed "upgrading pip"
  pip_install "torch==2.13.0" || failed "installing torch"
else
  say "2/3 PyTorch $(python -c 'import torch; print(torch.__version__)') is installed"
fi
# What the editable install depends on: the extras installed, the build files and cpp_ext's
# sources (Python sources are linked, not copied). The stamp also lists the extensions built,
# which must still exist.
EXTRAS=test,demo
STAMP=.venv/teacache-install.stamp
HASH=$( (echo "$EXTRAS"; cat setup.py pyproject.toml $(find cpp_ext -type f | LC_ALL=C sort)) | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$HASH" ] && \
   tail -n +2 "$STAMP" | while read -r so; do [ -f "$so" ] || exit 1; done; then
  say "3/3 teacache-trt install is up to date (setup.py, pyproject.toml, cpp_ext unchanged)"
  exit 0
fi
say "3/3 installing teacache-trt (editable) with its test and demo extras: diffusers, transformers, ONNX," \
    "ONNX Runtime, TensorRT-RTX, Ray, imageio-ffmpeg, scikit-learn, pytest ...; building cpp_ext's criterion where a C++ compiler exists"
pip_install --upgrade pip >/dev/null || failed "upgrading pip"
pip_install -e ".[$EXTRAS]" || failed "installing teacache-trt"
{ echo "$HASH"; ls teacache_trt/_criterion*.so 2>/dev/null || true; } > "$STAMP"
built=$(ls teacache_trt/_criterion*.so 2>/dev/null | wc -l)
say "done: teacache-trt installed, $built native criterion librar$([ "$built" = 1 ] && echo y || echo ies) built (log: $LOG)"
