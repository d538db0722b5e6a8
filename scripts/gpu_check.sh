#!/usr/bin/env bash
# One command for a GPU machine (README "GPU check"): build cpp_ext from the working tree, run
# the tests marked gpu, benchmark the bench model on every installed CUDA backend, and write
# OUT_DIR/report.md (default out/gpu_check). The Python it is started with ($PYTHON or python3)
# provides torch, which is never downloaded: inside a virtual environment the project installs
# there; otherwise into OUT_DIR/venv, made over that Python and seeing its packages, so nothing
# lands in the system's site-packages. Exits 1 at once without CUDA.
set -uo pipefail  # not -e: every stage's outcome goes into the report
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu_check}
PY=${PYTHON:-python3}
die() { echo "gpu_check: $*" >&2; exit 1; }

# --- 0. a CUDA machine with PyTorch, or nothing -------------------------------------------
if ! "$PY" -c 'import torch' 2>/dev/null; then
  # The usual cause: the project's virtual environment exists but is not active, so python3
  # is the system's (without torch); say that rather than blaming torch.
  if [ -x .venv/bin/python ] && ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
    die "$PY is not this project's virtual environment, which is not active: run '. .venv/bin/activate' first (or PYTHON=.venv/bin/python $0)"
  fi
  die "$PY cannot import torch: install a CUDA build of PyTorch first"
fi
"$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' || die "no CUDA device: torch \
$("$PY" -c 'import torch; print(torch.__version__, "built for CUDA", torch.version.cuda)') sees none \
(torch.cuda.is_available() is False); run this on a machine with an NVIDIA GPU and driver"
NVCC=$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")
[ -x "$NVCC" ] || die "nvcc not found (PATH, CUDA_HOME, /usr/local/cuda): cpp_ext's criterion kernel cannot be built"
mkdir -p "$OUT"
echo "gpu_check: writing $OUT" >&2

# --- 1. install from the working tree, keeping the machine's torch ---------------------------
if ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  [ -x "$OUT/venv/bin/python" ] || "$PY" -m venv --system-site-packages "$OUT/venv" \
    || die "$PY -m venv failed: install the venv module (e.g. apt-get install python3-venv)"
  PY="$OUT/venv/bin/python"
fi
# Build requirements first (no build isolation: an isolated build would download them); what
# cannot be installed (no network) is reported, and the tests that need it skip with a reason.
missing=()
need() {  # need MODULE [PACKAGE]
  "$PY" -c "import $1" 2>/dev/null && return 0
  "$PY" -m pip install -q "${2:-$1}" >/dev/null 2>&1 || missing+=("${2:-$1}")
}
need setuptools
need pybind11
need wheel
start=$(date +%s)
"$PY" -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 \
  || die "pip install --no-deps -e . failed; see $OUT/install.log"
echo "$(( $(date +%s) - start ))" > "$OUT/build_seconds.txt"
for spec in numpy diffusers transformers accelerate onnx onnxscript onnxruntime safetensors PIL:pillow \
            sklearn:scikit-learn matplotlib pytest hypothesis; do
  need "${spec%%:*}" "${spec#*:}"
done
printf '%s\n' "${missing[@]}" > "$OUT/missing_packages.txt"

# --- 2. the tests marked gpu (a skip for want of CUDA or the kernel is a failure here) --------
"$PY" -m pytest tests -m gpu --require-gpu -rA -q -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml" \
  > "$OUT/gpu_tests.txt" 2>&1
echo $? > "$OUT/gpu_tests.rc"

# --- 3. the bench model on every installed CUDA backend -------------------------------------
"$PY" scripts/make_bench_model.py "$OUT/bench_model" > "$OUT/bench_export.log" 2>&1 &&
"$PY" -m teacache_trt.export.cli "$OUT/bench_model" --out "$OUT/bench_art" --build auto \
  --axis img_seq=256:256:256 --axis txt_seq=32:32:32 --batch 1:1:1 >> "$OUT/bench_export.log" 2>&1
backends=$("$PY" - "$OUT/bench_art" <<'PY'
import sys
from teacache_trt.artifact import Artifact
out = ["torch"]
try:
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        out.append("onnxruntime")
except ImportError:
    pass
try:
    out += sorted(Artifact.open(sys.argv[1]).manifest.engines)
except Exception:
    pass
print(" ".join(out))
PY
)
latency=(--trtexec)  # trtexec runs once (where it is on PATH); later backends read its logs
for backend in $backends; do
  "$PY" -m teacache_trt.tools.bench "$OUT/bench_art" --backend "$backend" --device cuda --steps 20 \
    --thresholds 0.25,0.4,0.6,0.8 --repeat 3 "${latency[@]}" --report "$OUT/bench_$backend" \
    > "$OUT/bench_$backend.txt" 2>&1
  echo $? > "$OUT/bench_$backend.rc"
  [ -f "$OUT/bench_art/blocks.trtexec.log" ] && latency=(--from-trtexec "$OUT/bench_art")
done

# --- 4. the report ----------------------------------------------------------------------------
"$PY" scripts/gpu_report.py "$OUT" $backends || die "writing the report failed"
echo "gpu_check: report in $OUT/report.md" >&2
[ "$(cat "$OUT/gpu_tests.rc")" = 0 ]
