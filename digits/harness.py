"""``teacache-eval``: the speed / quality trade-off on the bundled digits model, against honest
baselines at equal compute.

Every policy renders the same digits (same labels, same seed) through the exported graphs:

- ``teacache-upstream``  TeaCache with the upstream FLUX coefficients, over a threshold sweep;
- ``teacache-calibrated`` TeaCache with coefficients fitted to this model (teacache-calibrate);
- ``uniform``            the same number of computed steps, evenly spaced, with the same
                          residual reuse (the schedule TeaCache must beat to be worth it);
- ``fewer-steps``        a plain sampler with that many steps and no caching.

Quality is measured against the uncached full-step render: PSNR and SSIM per image, and the
accuracy of a classifier trained on the real digits.  Wall ratios are measured in this process
against the uncached render.  Output: a markdown table, a JSON file, a PNG plot (PSNR against
computed steps, one line per policy) and grids of digits with and without TeaCache.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import TeaCacheError
from ..manifest import atomic_write_bytes
from .calibration import CALIBRATION_FILE
from .data import NUM_CLASSES, NUM_TEXT_TOKENS

POLICIES = ("teacache-upstream", "teacache-calibrated", "uniform", "fewer-steps")
# Sweeps chosen to land on 3+ distinct compute levels each within the main job's time budget.
UPSTREAM_THRESHOLDS = (0.2, 0.45, 0.8)
CALIBRATED_THRESHOLDS = (0.05, 0.1, 0.2, 0.4)
GRID_THRESHOLD = 0.1  # calibrated coefficients: about half the steps computed on this model
# The exported profile: CFG runs cond and uncond as separate calls of up to 100 digits each.
DIGITS_AXES = {"batch": (1, 100, 200), "img_seq": (64, 64, 64), "txt_seq": (NUM_TEXT_TOKENS,) * 3}


@dataclass
class Row:
    policy: str
    setting: str  # threshold or step count
    computed: float  # computed steps per branch (mean over cond / uncond)
    wall_s: float
    wall_ratio: float
    psnr: float
    ssim: float
    accuracy: float


def export_bundled(art_dir: Path, log=print):
    """Export the bundled model (reused when up to date) and store its calibrated coefficients."""
    from ..export.exporter import export_model
    from .pipeline import DEFAULT_MODEL_DIR

    return export_model(DEFAULT_MODEL_DIR / "transformer", art_dir, axes=DIGITS_AXES, build="none", log=log)


def load_calibrated(path: Path | None = None) -> list[float]:
    from .pipeline import DEFAULT_MODEL_DIR

    path = Path(path) if path else DEFAULT_MODEL_DIR / CALIBRATION_FILE
    if not path.is_file():
        raise TeaCacheError(
            f"{path} does not exist: run `teacache-calibrate ART_DIR --driver digits --json {path}` first"
        )
    return list(json.loads(path.read_text())["coefficients"])


class Renderer:
    """One enabled pipeline; renders the evaluation digits under a given policy."""

    def __init__(self, art_dir: Path, steps: int, guidance: float, per_class: int, seed: int, backend: str):
        import teacache_trt

        from .pipeline import DigitsPipeline

        self.pipe = DigitsPipeline.from_pretrained()
        self.transformer = teacache_trt.enable(self.pipe, art_dir, threshold=0, backend=backend, device="cpu")
        self.steps, self.guidance, self.seed = steps, guidance, seed
        self.labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)

    def render(self, policy, steps: int | None = None) -> tuple[torch.Tensor, float, float]:
        """(images, wall seconds, computed steps per branch)."""
        self.transformer.policy = policy
        t0 = time.perf_counter()
        images = self.pipe(self.labels, num_inference_steps=steps or self.steps,
                           guidance_scale=self.guidance, seed=self.seed).images
        wall = time.perf_counter() - t0
        stats = self.transformer.stats
        return images, wall, stats["blocks_runs"] / max(len(stats["contexts"]), 1)


def evaluate(art_dir: Path, *, steps: int = 20, guidance: float = 3.0, per_class: int = 10, seed: int = 0,
             upstream: Sequence[float] = UPSTREAM_THRESHOLDS, calibrated: Sequence[float] = CALIBRATED_THRESHOLDS,
             calibrated_coefficients: Sequence[float] | None = None, backend: str = "onnxruntime",
             grid_threshold: float = GRID_THRESHOLD, log=print) -> dict:
    from ..manifest import load_manifest
    from ..runtime.controller import FixedSchedule, TeaCache
    from ..tools.quality import psnr, ssim
    from .classifier import accuracy

    manifest = load_manifest(art_dir)
    crit = manifest.criterion
    from ..families.flux import Flux

    coefficients = {
        "teacache-upstream": list(Flux.variants["FLUX.1"].coefficients),
        "teacache-calibrated": list(calibrated_coefficients) if calibrated_coefficients else load_calibrated(),
    }
    r = Renderer(art_dir, steps, guidance, per_class, seed, backend)
    full = FixedSchedule(frozenset(range(steps)))
    # Warm-up with a full render: the first renders at a new batch size pay for sessions,
    # allocator growth and thread pools, which would flatter every policy timed later.
    r.render(full)
    reference, base_wall, _ = r.render(full)
    images = {"uncached": reference}
    rows = [Row("uncached", str(steps), float(steps), base_wall, 1.0, float("inf"), 1.0,
                accuracy(reference, r.labels))]

    def add(policy: str, setting: str, rule, n_steps=None):
        out, wall, computed = r.render(rule, n_steps)
        rows.append(Row(policy, setting, computed, wall, 0.0,
                        float(psnr(out, reference).clamp(max=99).mean()),
                        float(ssim(out, reference).mean()), accuracy(out, r.labels)))
        log(f"[eval] {policy:20s} {setting:>6s}: {computed:5.1f} computed, PSNR {rows[-1].psnr:6.2f} dB, "
            f"acc {rows[-1].accuracy:.3f}, {wall:.2f}s")
        return out

    for policy, thresholds in (("teacache-upstream", upstream), ("teacache-calibrated", calibrated)):
        for t in thresholds:
            rule = TeaCache(tuple(coefficients[policy]), t, crit.forced)
            out = add(policy, f"{t:g}", rule)
            if policy == "teacache-calibrated" and abs(t - grid_threshold) < 1e-12:
                images["teacache"] = out
    levels = sorted({max(2, round(row.computed)) for row in rows if row.policy.startswith("teacache")} - {steps})
    for k in levels:
        add("uniform", str(k), FixedSchedule.uniform(steps, k))
        add("fewer-steps", str(k), full, n_steps=k)
    if "teacache" not in images:  # the grid's threshold was not in the sweep: render it too
        images["teacache"] = add("teacache-calibrated", f"{grid_threshold:g}",
                                 TeaCache(tuple(coefficients["teacache-calibrated"]), grid_threshold, crit.forced))
    # The baseline again at the end: its mean with the first brackets the drift of a shared
    # machine over the run; every wall ratio is taken against that mean.
    _, base_wall_end, _ = r.render(full)
    rows[0].wall_s = (base_wall + base_wall_end) / 2
    for row in rows:
        row.wall_ratio = rows[0].wall_s / row.wall_s
    log(f"[eval] uncached wall {base_wall:.2f}s at the start, {base_wall_end:.2f}s at the end")
    return {"rows": rows, "images": images, "labels": r.labels, "coefficients": coefficients,
            "settings": {"steps": steps, "guidance": guidance, "per_class": per_class, "seed": seed,
                         "backend": backend, "grid_threshold": grid_threshold}}


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| policy | setting | computed steps | wall ratio | PSNR (dB) | SSIM | accuracy |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (-r.computed, POLICIES.index(r.policy) if r.policy in POLICIES else -1)):
        lines.append(f"| {row.policy} | {row.setting} | {row.computed:.1f} | {row.wall_ratio:.2f} | "
                     f"{row.psnr:.2f} | {row.ssim:.4f} | {row.accuracy:.3f} |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: Path, steps: int) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for policy, marker in zip(POLICIES, "osD^"):
        pts = sorted((r.computed, r.psnr) for r in rows if r.policy == policy)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=policy)
    ax.set_xlabel(f"computed steps (of {steps}, per CFG branch)")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title("digits: quality at equal compute")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_outputs(result: dict, out_dir: Path) -> dict[str, Path]:
    import io

    from .pipeline import make_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    paths = {"table": out_dir / "table.md", "json": out_dir / "eval.json", "plot": out_dir / "psnr.png"}
    atomic_write_bytes(paths["table"], (markdown_table(rows) + "\n").encode())
    data = {"settings": result["settings"], "coefficients": result["coefficients"],
            "rows": [asdict(r) for r in rows]}
    atomic_write_bytes(paths["json"], json.dumps(data, indent=2).encode())
    plot(rows, paths["plot"], result["settings"]["steps"])
    for name, images in result["images"].items():
        buf = io.BytesIO()
        make_grid(images).save(buf, format="PNG")
        paths[f"grid_{name}"] = out_dir / f"grid_{name}.png"
        atomic_write_bytes(paths[f"grid_{name}"], buf.getvalue())
    return paths


def main(argv=None) -> int:
    from ..tools.bench import parse_thresholds

    p = argparse.ArgumentParser(prog="teacache-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/digits", help="folder for the table, JSON, plot and grids")
    p.add_argument("--art", help="exported digits artifacts (default: export the bundled model to OUT/art)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--upstream", type=parse_thresholds, default=list(UPSTREAM_THRESHOLDS), help="thresholds, comma-separated")
    p.add_argument("--calibrated", type=parse_thresholds, default=list(CALIBRATED_THRESHOLDS), help="thresholds, comma-separated")
    p.add_argument("--coefficients", help="calibration JSON (default: the one shipped with the model)")
    p.add_argument("--grid-threshold", type=float, default=GRID_THRESHOLD,
                   help="threshold (calibrated coefficients) of the TeaCache grid image")
    p.add_argument("--backend", default="onnxruntime")
    args = p.parse_args(argv)
    try:
        t0 = time.perf_counter()
        out = Path(args.out)
        art = Path(args.art) if args.art else out / "art"
        if not args.art:
            export_bundled(art)
        result = evaluate(art, steps=args.steps, guidance=args.guidance, per_class=args.per_class,
                          seed=args.seed, upstream=args.upstream, calibrated=args.calibrated,
                          calibrated_coefficients=load_calibrated(args.coefficients) if args.coefficients else None,
                          backend=args.backend, grid_threshold=args.grid_threshold)
        paths = write_outputs(result, out)
    except TeaCacheError as exc:
        print(f"teacache-eval: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(markdown_table(result["rows"]))
    print()
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"[done] in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
