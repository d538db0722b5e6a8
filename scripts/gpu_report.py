"""Assemble OUT/report.md from what scripts/gpu_check.sh left in OUT (see that script).

    python scripts/gpu_report.py OUT BACKEND...
"""
from __future__ import annotations

import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def read(path: Path, default: str = "") -> str:
    return path.read_text(errors="replace").strip() if path.is_file() else default


def environment() -> list[str]:
    import torch

    from teacache_trt.runtime import criterion
    from teacache_trt.runtime.experimental import device_criterion

    lines = [
        f"- GPU: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), Python {platform.python_version()}",
        f"- host criterion: {criterion.BACKEND} ({criterion.NATIVE_STATUS})",
        f"- device criterion kernel (experimental, no runtime code uses it): {device_criterion.KERNEL_STATUS}",
    ]
    for module in ("tensorrt", "tensorrt_rtx", "onnxruntime"):
        try:
            mod = __import__(module)
            extra = f", providers {mod.get_available_providers()}" if module == "onnxruntime" else ""
            lines.append(f"- {module} {mod.__version__}{extra}")
        except ImportError:
            lines.append(f"- {module}: not installed")
    return lines


def tests(out: Path) -> list[str]:
    xml = out / "gpu_tests.xml"
    if not xml.is_file():
        return [f"no test results ({xml} missing); see gpu_tests.txt"]
    cases = list(ET.parse(xml).getroot().iter("testcase"))
    status = {"passed": [], "failed": [], "skipped": []}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            status["failed"].append(name)
        elif case.find("skipped") is not None:
            status["skipped"].append(f"{name}: {case.find('skipped').get('message', '')}")
        else:
            status["passed"].append(name)
    lines = [f"{len(status['passed'])} passed, {len(status['failed'])} failed, {len(status['skipped'])} skipped "
             f"(pytest -m gpu --require-gpu; full output in gpu_tests.txt)", ""]
    lines += [f"- FAILED {n}" for n in status["failed"]] + [f"- skipped {n}" for n in status["skipped"]]
    lines += [f"- {line.strip()}" for line in read(out / "gpu_tests.txt").splitlines() if "host syncs per call" in line]
    return lines


def bench(out: Path, backend: str) -> list[str]:
    rc = read(out / f"bench_{backend}.rc", "not run")
    text = read(out / f"bench_{backend}.txt")
    lines = [f"### teacache-bench, backend {backend} on cuda (exit {rc})", "", "```", text, "```"]
    png = out / f"bench_{backend}" / "latency.png"
    if png.is_file():
        lines += ["", f"![latency and speedup, {backend}](bench_{backend}/latency.png)"]
    return lines


def main(argv: list[str]) -> int:
    from teacache_trt.files import atomic_write_bytes

    out, backends = Path(argv[0]), argv[1:]
    missing = read(out / "missing_packages.txt")
    parts = [
        "# GPU check", "",
        *environment(),
        f"- cpp_ext build (pip install --no-deps --no-build-isolation -e .): {read(out / 'build_seconds.txt', '?')} s",
        f"- packages that could not be installed: {missing.replace(chr(10), ', ') if missing else 'none'}",
        "", "## Tests marked gpu", "", *tests(out),
        "", "## Bench model (scripts/make_bench_model.py, 20 steps, repeat 3)", "",
        "The transformer takes its decision on the host (one host wait per call, for the two sums) and "
        "captures no CUDA graph; the device criterion kernel is experimental "
        "(teacache_trt.runtime.experimental) and no runtime code uses it, so there is no device-decision "
        "run to set beside it.", "",
    ]
    for backend in backends:
        parts += bench(out, backend) + [""]
    atomic_write_bytes(out / "report.md", ("\n".join(parts) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
