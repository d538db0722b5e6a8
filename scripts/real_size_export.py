"""Export each family's real-size config at default options; print wall time and peak RAM.

    python scripts/real_size_export.py [--only flux,cogvideox_15] [--work DIR] [--json FILE]

A real-size config (``REAL_CONFIG`` / ``REAL_CONFIG_<SUFFIX>`` of ``tests/models/<family>.py``)
has a real checkpoint's widths, heads, channels and patch sizes with 1-2 layers of each kind,
so its export meets the default profiles, the real weight shapes and real activations.  Each
config is built with random weights and saved in one process, then exported in a fresh one
exactly as ``teacache-export MODEL_DIR --out ART_DIR`` does with no options, which records,
per stage (load, each graph, verification), the wall time and the peak resident memory
(Linux: VmHWM, reset between stages).
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
# A log line of the exporter that ends a stage -> the stage's name.
STAGE_ENDS = [
    (re.compile(r"^\[export 1/\d+\] \w+\.onnx at"), "load"),  # the first graph (context or embed) starts
    (re.compile(r"^\[export \d+/\d+\] (\w+)\.onnx in"), "export {}"),
    (re.compile(r"^\[verify (\d+)/\d+\] PyTorch"), "verify PyTorch at point {}"),  # parts vs forward
    (re.compile(r"^\[verify\] (\w+) graph vs PyTorch"), "verify {} graph"),  # ONNX Runtime at every point
    (re.compile(r"^\[done\]"), "manifest + commit"),
]


def real_configs(only: set[str] | None = None) -> list[tuple[str, str, dict]]:
    """(label, family, constructor kwargs) for every REAL_CONFIG* of the tiny-model modules."""
    sys.path.insert(0, str(TESTS))
    from models import FAMILIES

    found = []
    for name in FAMILIES:
        module = importlib.import_module(f"models.{name}")
        for attr in sorted(vars(module)):
            if attr == "REAL_CONFIG" or attr.startswith("REAL_CONFIG_"):
                label = name + attr[len("REAL_CONFIG"):].lower()
                if only is None or label in only:
                    found.append((label, module.FAMILY, dict(getattr(module, attr))))
    return found


def _peak_rss_gb(reset: bool) -> float:
    """This process's peak resident memory since the last reset (VmHWM), in GB."""
    status = Path("/proc/self/status").read_text()
    kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    if reset:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return kb * 1024 / 1e9


def make_model_dir(family: str, kwargs: dict, model_dir: str) -> int:
    """Save a seeded random model of ``family`` built from ``kwargs``; its parameter count."""
    import torch

    from teacache_trt.families import get_family

    torch.manual_seed(0)
    model = get_family(family).model_class()(**kwargs).eval()
    model.save_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def _export(model_dir: str, art_dir: str) -> dict:
    import torch

    from teacache_trt import TeaCacheError
    from teacache_trt.export.exporter import export_model

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    stages: list[dict] = []
    lines: list[str] = []
    start = [time.perf_counter()]

    def log(line: str) -> None:
        lines.append(line)
        for pattern, name in STAGE_ENDS:
            m = pattern.match(line)
            if m:
                now = time.perf_counter()
                stages.append({"stage": name.format(*m.groups()), "wall_s": round(now - start[0], 2),
                               "peak_rss_gb": round(_peak_rss_gb(reset=True), 2)})
                start[0] = now

    try:
        manifest = export_model(model_dir, art_dir, log=log)  # teacache-export's defaults
        error = None
        verification = {g: s.verification for g, s in manifest.graphs.items()}
        axes = manifest.axes
    except TeaCacheError as exc:
        error, verification, axes = str(exc), None, None
    # The stage resets clear the kernel's peak (ru_maxrss too): the whole run's is the largest.
    peak = max([s["peak_rss_gb"] for s in stages] + [_peak_rss_gb(reset=False)])
    return {"stages": stages, "log": lines, "error": error, "verification": verification,
            "axes": axes, "peak_rss_gb": peak}


CHILD_TASKS = {"make": make_model_dir, "export": _export}


def _in_child(task: str, *args):
    """``CHILD_TASKS[task](*args)`` in a fresh interpreter (its peak memory is its own)."""
    proc = subprocess.run([sys.executable, __file__, "--child", task, json.dumps(args)],
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(f"the {task} process failed (exit {proc.returncode}); see its output above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_in_child(model_dir: str, art_dir: str) -> dict:
    """The default export of ``model_dir`` in a fresh process: stages, log, manifest parts,
    ``peak_rss_gb``, ``error`` (a TeaCacheError's text, or None) and ``export_s``."""
    t0 = time.perf_counter()
    out = _in_child("export", model_dir, art_dir)
    out["export_s"] = round(time.perf_counter() - t0, 1)
    return out


def run(label: str, family: str, kwargs: dict, work: Path) -> dict:
    folder = work / label
    params = _in_child("make", family, kwargs, str(folder / "model"))
    out = export_in_child(str(folder / "model"), str(folder / "art"))
    out.update(label=label, family=family, params=params)
    return out


def format_rows(results: list[dict]) -> str:
    rows = ["| config | parameters | stage | wall (s) | peak RSS (GB) |", "|---|---|---|---|---|"]
    for r in results:
        for s in r["stages"]:
            rows.append(f"| {r['label']} | {r['params'] / 1e6:.0f} M | {s['stage']} | {s['wall_s']:.1f} "
                        f"| {s['peak_rss_gb']:.2f} |")
        status = "ok" if r["error"] is None else f"FAILED: {r['error'][:200]}"
        rows.append(f"| {r['label']} | | whole export ({status}) | {r['export_s']:.1f} | {r['peak_rss_gb']:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated labels (family[_suffix]), e.g. flux,cogvideox_15")
    p.add_argument("--work", help="folder for the models and artifacts (default: a temporary one, removed)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # internal: TASK JSON_ARGS
    args = p.parse_args(argv)
    if args.child:
        task, task_args = args.child
        print(json.dumps(CHILD_TASKS[task](*json.loads(task_args))))
        return 0
    only = set(args.only.split(",")) if args.only else None
    configs = real_configs(only)
    if not configs or (only and len(configs) != len(only)):
        print(f"real_size_export: no REAL_CONFIG for {sorted(only or [])}; found "
              f"{[c[0] for c in real_configs()]}", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="real-size-"))
    results = []
    try:
        for label, family, kwargs in configs:
            results.append(run(label, family, kwargs, work))
            print(format_rows(results[-1:]).splitlines()[-1], flush=True)
            if not args.work:
                shutil.rmtree(work / label, ignore_errors=True)  # GBs of weights per config
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(format_rows(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["error"] is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
