"""``--help`` and option errors answer at once: no CLI imports torch or diffusers before it has
parsed its arguments (they took 1.4-10 s to import on a new user's machine)."""
from __future__ import annotations

import subprocess
import sys

import pytest

CLIS = {  # entry points as setup.py declares them
    "teacache-export": "teacache_trt.export.cli",
    "teacache-render": "teacache_trt.tools.render.cli",
    "teacache-bench": "teacache_trt.tools.bench",
    "teacache-calibrate": "teacache_trt.tools.calibrate",
    "teacache-eval": "teacache_trt.tools.eval",
}
PROBE = """
import sys, importlib
module = importlib.import_module(sys.argv[1])
try:
    module.main(sys.argv[2:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "diffusers", "onnx", "onnxruntime", "transformers") if m in sys.modules)
print("HEAVY", ",".join(heavy))
"""


@pytest.mark.parametrize("prog", sorted(CLIS))
@pytest.mark.parametrize("argv", [["--help"], ["--no-such-option"]], ids=["help", "bad-option"])
def test_help_and_option_errors_import_nothing_heavy(prog, argv):
    child = subprocess.run([sys.executable, "-c", PROBE, CLIS[prog], *argv], capture_output=True, text=True,
                           timeout=120)
    assert child.stdout.strip().splitlines()[-1] == "HEAVY", (child.stdout[-500:], child.stderr[-500:])
    if argv == ["--help"]:
        assert "usage:" in child.stdout and "(default" in child.stdout  # defaults are shown
    else:
        assert child.stderr.strip().startswith(f"{prog}: error: ") and child.stderr.count("\n") == 1


def test_names_offered_without_torch_match_the_real_tables():
    from teacache_trt import options, policies
    from teacache_trt.dtypes import PRECISIONS
    from teacache_trt.runtime.backends import BACKENDS
    from teacache_trt.tools.policy_options import policy_names

    assert options.BACKEND_NAMES == BACKENDS
    assert list(options.PRECISION_NAMES) == sorted(PRECISIONS)
    assert policy_names() == sorted(policies.registered())


@pytest.mark.parametrize("argv", [["--model", "video", "--help"], ["--model=video", "--frames", "3"]],
                         ids=["help", "bad-option"])
def test_the_video_evaluation_answers_at_once(argv):
    """teacache-eval --model video: the video model's own options, nothing heavy imported."""
    child = subprocess.run([sys.executable, "-c", PROBE, "teacache_trt.tools.eval", *argv], capture_output=True,
                           text=True, timeout=120)
    assert child.stdout.strip().splitlines()[-1] == "HEAVY", (child.stdout[-500:], child.stderr[-500:])
    if "--help" in argv:
        assert "usage: teacache-eval --model video" in child.stdout and "--magcache" in child.stdout
    else:
        assert child.stderr.strip().startswith("teacache-eval --model video: error: argument --frames")


def test_an_evaluation_that_does_not_exist_is_named():
    child = subprocess.run([sys.executable, "-c", PROBE, "teacache_trt.tools.eval", "--model", "audio"],
                           capture_output=True, text=True, timeout=120)
    assert child.stderr.strip() == ("teacache-eval: error: --model 'audio' has no evaluation: give one of digits, video "
                                    "(installed drivers with an evaluation)")
