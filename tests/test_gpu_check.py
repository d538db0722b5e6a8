"""scripts/gpu_check.sh: stops clearly without CUDA; its report assembly reads what it leaves."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would run for real")
def test_gpu_check_fails_clearly_without_cuda(tmp_path):
    out = tmp_path / "gc"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "gpu_check: no CUDA device" in proc.stderr
    assert "torch.cuda.is_available() is False" in proc.stderr
    assert not out.exists()  # nothing installed or written before the check


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv in this checkout (scripts/setup.sh makes it)")
def test_gpu_check_says_the_venv_is_not_active(tmp_path):
    """Started with the system's python (no torch) while .venv exists: the cause is the
    inactive environment, not a missing torch."""
    system = tmp_path / "bin" / "python3"
    system.parent.mkdir()
    system.write_text("#!/bin/sh\n# a system python without torch\n"
                      "case \"$2\" in *'import torch'*) exit 1;; *sys.prefix*) exit 1;; esac\nexit 0\n")
    system.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "gc")], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": str(system)}, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is not this project's virtual environment, which is not active: run '. .venv/bin/activate'" in proc.stderr
    assert "cannot import torch" not in proc.stderr


def test_report_reads_the_test_results_and_bench_output(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "scripts" / "gpu_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    (tmp_path / "gpu_tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.cpp_ext.test_device_criterion" name="test_no_host_sync_per_step"/>'
        '<testcase classname="tests.runtime.test_cuda" name="test_x[onnxruntime]">'
        '<skipped message="onnxruntime has no CUDAExecutionProvider"/></testcase>'
        '<testcase classname="tests.runtime.test_cuda" name="test_y"><failure message="boom"/></testcase>'
        '</testsuite></testsuites>')
    (tmp_path / "gpu_tests.txt").write_text("host syncs per call (torch backend on CUDA, batch mode, 8 calls): 0.88\n")
    lines = report.tests(tmp_path)
    assert lines[0].startswith("1 passed, 1 failed, 1 skipped")
    assert "- FAILED tests.runtime.test_cuda::test_y" in lines
    assert any("no CUDAExecutionProvider" in line for line in lines)
    assert lines[-1] == "- host syncs per call (torch backend on CUDA, batch mode, 8 calls): 0.88"
    (tmp_path / "bench_torch.txt").write_text("teacache-bench ...table...")
    (tmp_path / "bench_torch.rc").write_text("0\n")
    assert report.bench(tmp_path, "torch")[:4] == ["### teacache-bench, backend torch on cuda (exit 0)", "", "```",
                                                  "teacache-bench ...table..."]
