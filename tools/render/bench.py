"""What batching buys and what it costs, on one model in one process (a report, not a test):

(a) one job at a time, (b) batches with one decision per batch (``--decisions batch``, upstream),
(c) batches with a decision per job (``--decisions sample``).  Per setting: images/s (median of
interleaved repeats), mean computed steps per job, and against (a): PSNR, the largest pixel
difference and how many jobs computed exactly the same steps.

    python -m teacache_trt.tools.render.bench [--jobs 64] [--batch-size 8] [--repeats 3] [--json]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ...errors import TeaCacheError
from ..drivers import default_render_model, render_driver_for
from ..quality import psnr
from .artifacts import default_cache_dir, ensure_artifacts
from .batching import batch_key, make_batches
from .jobs import Job
from .worker import Worker, WorkerSpec

THRESHOLDS = (0.0, 0.2, 0.45, 0.8)  # mixed: from "never skip" to "skip most"


def digit_jobs(n: int, steps: int = 20, guidance: float = 3.0) -> list[Job]:
    return [Job(f"b{i:03d}", i + 1, str(i % 10), i, steps, guidance, THRESHOLDS[i % len(THRESHOLDS)])
            for i in range(n)]


def decode(png: bytes) -> torch.Tensor:
    """PNG bytes -> (C, H, W) float in [0, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        a = np.asarray(im, dtype=np.float64) / 255.0
    return torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1)


def render_all(worker: Worker, jobs: list[Job], size: int, decisions: str, driver) -> tuple[float, dict]:
    """(wall seconds, id -> outcome) for every job, in batches as teacache-render forms them."""
    batches = make_batches(jobs, batch_key(driver.batch_key, decisions), size)
    t0 = time.perf_counter()
    outcomes = {o.id: o for batch in batches for o in worker.render(batch)}
    wall = time.perf_counter() - t0
    failed = [o for o in outcomes.values() if not o.ok]
    if failed:
        raise TeaCacheError(f"bench job {failed[0].id} failed: {failed[0].error}")
    return wall, outcomes


def bench(art_dir: Path, model_dir: Path, jobs: list[Job], batch_size: int = 8, repeats: int = 3,
          backend: str = "onnxruntime", log=print) -> dict:
    driver = render_driver_for(model_dir)
    workers = {d: Worker(WorkerSpec(driver.name, str(model_dir), str(art_dir), backend, "cpu", d))
               for d in ("sample", "batch")}
    settings = {"a: one job at a time": ("sample", 1), f"b: batches of {batch_size}, batch decisions": ("batch", batch_size),
                f"c: batches of {batch_size}, sample decisions": ("sample", batch_size)}
    outputs, walls = {}, {name: [] for name in settings}
    for name, (decisions, size) in settings.items():  # warm-up: sessions and allocators at each batch size
        render_all(workers[decisions], jobs[:size], size, decisions, driver)
    for r in range(repeats):
        names = list(settings)
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate: no setting always runs first
            decisions, size = settings[name]
            wall, outputs[name] = render_all(workers[decisions], jobs, size, decisions, driver)
            walls[name].append(wall)
            log(f"[bench] round {r + 1}/{repeats} {name}: {wall:.2f}s")
    first = next(iter(settings))
    reference = outputs[first]
    rows = []
    for name in settings:
        # speed-up over (a) within each round, then the median: a load that drifts between
        # rounds moves both sides of a round's ratio alike
        paired = [a / x for a, x in zip(walls[first], walls[name])]
        out = outputs[name]
        images = torch.stack([decode(out[j.id].data) for j in jobs])
        ref_images = torch.stack([decode(reference[j.id].data) for j in jobs])
        same_steps = sum(out[j.id].computed_steps == reference[j.id].computed_steps for j in jobs)
        rows.append({
            "setting": name, "images_per_s": len(jobs) / statistics.median(walls[name]),
            "speedup_vs_a": statistics.median(paired), "speedup_range": (min(paired), max(paired)),
            "wall_s": walls[name], "mean_computed_steps": sum(len(out[j.id].computed_steps) for j in jobs) / len(jobs),
            # over all pixels of all jobs at once: identical sets give inf, printed as such
            "psnr_vs_a": float(psnr(images.reshape(1, -1), ref_images.reshape(1, -1), data_range=1.0)[0]),
            "max_pixel_diff_vs_a": int(round(float((images - ref_images).abs().max()) * 255)),
            "same_steps_as_a": same_steps, "identical_images_as_a": sum(
                out[j.id].data == reference[j.id].data for j in jobs),
        })
    return {"jobs": len(jobs), "batch_size": batch_size, "repeats": repeats, "backend": backend, "rows": rows}


def table(result: dict) -> str:
    n = result["jobs"]
    lines = [f"{n} jobs, thresholds {', '.join(map(str, THRESHOLDS))}; images/s: median of {result['repeats']} "
             f"interleaved repeats; speed-up: median over the repeats of t(a) / t(setting) within a repeat "
             f"(range beside it); PSNR over all pixels of all jobs",
             "| setting | images/s | speed-up vs (a) | mean computed steps | PSNR vs (a) (dB) | "
             "max pixel diff vs (a) | same steps as (a) | identical images |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lo, hi = r["speedup_range"]
        lines.append(f"| {r['setting']} | {r['images_per_s']:.2f} | {r['speedup_vs_a']:.2f} ({lo:.2f}-{hi:.2f}) | "
                     f"{r['mean_computed_steps']:.2f} | "
                     f"{r['psnr_vs_a']:.2f} | {r['max_pixel_diff_vs_a']}/255 | {r['same_steps_as_a']}/{n} | "
                     f"{r['identical_images_as_a']}/{n} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m teacache_trt.tools.render.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=64, help="digit jobs, thresholds mixed (default 64)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--artifacts", type=Path, help="default: the bundled model, exported on first use")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.jobs < 1 or args.batch_size < 1 or args.repeats < 1 or args.steps < 1:
            raise TeaCacheError("--jobs, --steps, --batch-size and --repeats must be >= 1")
        model = default_render_model()
        art = args.artifacts or ensure_artifacts(render_driver_for(model), model, batch_size=args.batch_size,
                                                 backend="onnxruntime", cache_dir=args.cache_dir or default_cache_dir(),
                                                 log=lambda m: print(m, file=sys.stderr))
        result = bench(art, model, digit_jobs(args.jobs, args.steps), args.batch_size, args.repeats,
                       log=lambda m: print(m, file=sys.stderr))
    except TeaCacheError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
