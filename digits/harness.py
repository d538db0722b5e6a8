"""``teacache-eval``: the speed / quality trade-off on the bundled digits model, against honest
baselines at equal compute.

Every policy renders the same digits (same labels, same seed) through the exported graphs:

- ``teacache-upstream``  TeaCache with the upstream FLUX coefficients, over a threshold sweep;
- ``teacache-calibrated`` TeaCache with coefficients fitted to this model (teacache-calibrate);
- ``uniform``            the same number of computed steps, evenly spaced, with the same
                          residual reuse (the schedule TeaCache must beat to be worth it);
- ``fewer-steps``        a plain sampler with that many steps and no caching.

Quality is measured against the uncached full-step render: PSNR and SSIM per image, and the
accuracy of a classifier trained on the real digits.  Wall ratios come from separate, smaller
timing renders (one digit per class): each policy's render is paired with the uncached render
next to it, and the ratio is the median over interleaved repeats, so a machine whose load
drifts during the run moves both sides of every pair alike.  Output: a markdown table, a JSON
file, a PNG plot (PSNR against computed steps, one line per policy) and grids of digits with
and without TeaCache.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

from ..errors import TeaCacheError
from ..files import atomic_write_bytes
from .constants import CALIBRATION_FILE, NUM_CLASSES  # torch is imported where it is used: --help at once

POLICIES = ("teacache-upstream", "teacache-calibrated", "uniform", "fewer-steps")
# Sweeps chosen to land on 3+ distinct compute levels each within the main job's time budget.
UPSTREAM_THRESHOLDS = (0.2, 0.45, 0.8)
CALIBRATED_THRESHOLDS = (0.05, 0.1, 0.2, 0.4)
GRID_THRESHOLD = 0.1  # calibrated coefficients: about half the steps computed on this model
TIMING_REPEATS = 3  # interleaved (uncached, policy) timing pairs per row; the ratio is their median
TIMING_PER_CLASS = 1  # digits per class in the timing renders (the quality renders use --per-class)
# Digits per class in the quality renders: 40 digits keep the main job under 5 minutes on 2 cores
# (100 took 5.7 min) and, at equal computed steps, every policy's PSNR within 0.5 dB of the 100-digit one.
PER_CLASS = 4


@dataclass
class Row:
    policy: str
    setting: str  # threshold or step count
    computed: float  # computed steps per branch (mean over cond / uncond)
    wall_s: float  # the quality render (one run; not what the ratio is taken from)
    wall_ratio: float  # median over the timing pairs of uncached / policy wall time
    ratio_range: tuple[float, float]  # min and max of those pair ratios: the noise, in plain sight
    psnr: float
    ssim: float
    accuracy: float


def export_bundled(cache_dir: Path | None = None, log=print) -> Path:
    """The bundled model's artifacts, exported on first use into the cache ``teacache-render``
    uses (reused when up to date)."""
    from ..tools.render.artifacts import default_cache_dir, ensure_artifacts
    from .driver import DRIVER

    return ensure_artifacts(DRIVER, DRIVER.default_model(), batch_size=1, backend="onnxruntime",
                            cache_dir=cache_dir or default_cache_dir(), log=log)


def load_calibrated(path: Path | None = None) -> list[float]:
    from ..families import check_coefficients
    from .pipeline import DEFAULT_MODEL_DIR

    path = Path(path) if path else DEFAULT_MODEL_DIR / CALIBRATION_FILE
    if not path.is_file():
        raise TeaCacheError(
            f"{path} does not exist: run `teacache-calibrate ART_DIR --driver digits --json {path}` first"
        )
    try:
        coefficients = json.loads(path.read_bytes())["coefficients"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TeaCacheError(f"{path} is not a calibration JSON with 'coefficients' ({type(exc).__name__}: {exc}): "
                            f"write one with `teacache-calibrate ART_DIR --json {path}`") from exc
    return check_coefficients(coefficients, str(path))


class Renderer:
    """One enabled pipeline; renders the evaluation digits under a given policy."""

    def __init__(self, art_dir: Path, steps: int, guidance: float, per_class: int, seed: int, backend: str):
        import torch

        import teacache_trt

        from .pipeline import DigitsPipeline

        self.pipe = DigitsPipeline.from_pretrained()
        self.transformer = teacache_trt.enable(self.pipe, art_dir, threshold=0, backend=backend, device="cpu")
        self.steps, self.guidance, self.seed = steps, guidance, seed
        self.labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
        self.never_skipped = None  # the last render's stats["never_skipped"]

    def render(self, policy, steps: int | None = None, labels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, float, float]:
        """(images, wall seconds, computed steps per branch) of the evaluation digits (or ``labels``)."""
        self.transformer.policy = policy
        t0 = time.perf_counter()
        images = self.pipe(self.labels if labels is None else labels, num_inference_steps=steps or self.steps,
                           guidance_scale=self.guidance, seed=self.seed).images
        wall = time.perf_counter() - t0
        stats = self.transformer.stats
        self.never_skipped = stats.get("never_skipped")
        return images, wall, stats["blocks_runs"] / max(len(stats["contexts"]), 1)


def evaluate(art_dir: Path, *, steps: int = 20, guidance: float = 3.0, per_class: int = PER_CLASS, seed: int = 0,
             upstream: Sequence[float] = UPSTREAM_THRESHOLDS, calibrated: Sequence[float] = CALIBRATED_THRESHOLDS,
             calibrated_coefficients: Sequence[float] | None = None, backend: str = "onnxruntime",
             grid_threshold: float = GRID_THRESHOLD, repeats: int = TIMING_REPEATS, policy=None, log=print) -> dict:
    """The table's rows, the images and the settings; ``policy`` (a policy, a name or a spec)
    joins the comparison as one more row, with uniform and fewer-step rows at its compute."""
    from ..families.flux import Flux
    from ..policies import Schedule, TeaCache, from_spec
    from ..tools.quality import psnr, ssim
    from .classifier import accuracy

    coefficients = {
        "teacache-upstream": list(Flux.variants["FLUX.1"].coefficients),
        "teacache-calibrated": list(calibrated_coefficients) if calibrated_coefficients else load_calibrated(),
    }
    extra = None if policy is None else from_spec(policy)  # (the loops below reuse the name `policy`)
    r = Renderer(art_dir, steps, guidance, per_class, seed, backend)
    full = Schedule.uniform(steps, steps)  # every step: the uncached render
    t0 = time.perf_counter()
    reference, base_wall, _ = r.render(full)
    images = {"uncached": reference}
    rows = [Row("uncached", str(steps), float(steps), base_wall, 1.0, (1.0, 1.0), float("inf"), 1.0,
                accuracy(reference, r.labels))]
    timed = []  # (row, rule, steps) of every policy row, for the timing pairs
    planned = [1 + len(upstream) + len(calibrated) + (policy is not None)]  # the baselines join later

    def add(policy: str, setting: str, rule, n_steps=None):
        out, wall, computed = r.render(rule, n_steps)
        rows.append(Row(policy, setting, computed, wall, 0.0, (0.0, 0.0),
                        float(psnr(out, reference).clamp(max=99).mean()),
                        float(ssim(out, reference).mean()), accuracy(out, r.labels)))
        timed.append((rows[-1], rule, n_steps))
        log(f"[eval quality {len(rows)}/{planned[0]}] {policy:20s} {setting:>6s}: {computed:5.1f} computed, "
            f"PSNR {rows[-1].psnr:6.2f} dB, acc {rows[-1].accuracy:.3f} ({time.perf_counter() - t0:.0f}s)")
        if r.never_skipped:
            log(f"[eval] {policy} {setting}: {r.never_skipped}")
        return out

    for policy, thresholds in (("teacache-upstream", upstream), ("teacache-calibrated", calibrated)):
        for t in thresholds:
            rule = TeaCache(threshold=t, coefficients=coefficients[policy])  # the artifact's forced steps
            out = add(policy, f"{t:g}", rule)
            if policy == "teacache-calibrated" and abs(t - grid_threshold) < 1e-12:
                images["teacache"] = out
    if extra is not None:
        add(extra.name, _setting(extra), extra)
    baselines = ("uncached", "uniform", "fewer-steps")
    levels = sorted({max(2, round(row.computed)) for row in rows if row.policy not in baselines} - {steps})
    planned[0] += 2 * len(levels) + ("teacache" not in images)
    for k in levels:
        add("uniform", str(k), Schedule.uniform(steps, k))
        add("fewer-steps", str(k), Schedule.uniform(k, k), n_steps=k)
    if "teacache" not in images:  # the grid's threshold was not in the sweep: render it too
        images["teacache"] = add("teacache-calibrated", f"{grid_threshold:g}",
                                 TeaCache(threshold=grid_threshold, coefficients=coefficients["teacache-calibrated"]))
    time_ratios(r, full, timed, repeats, log)
    return {"rows": rows, "images": images, "labels": r.labels, "coefficients": coefficients,
            "settings": {"steps": steps, "guidance": guidance, "per_class": per_class, "seed": seed,
                         "backend": backend, "grid_threshold": grid_threshold, "timing_repeats": repeats,
                         "timing_digits": NUM_CLASSES * TIMING_PER_CLASS}}


def _setting(policy) -> str:
    """A policy's row setting: its threshold, else its parameters in short."""
    params = policy.params
    if set(params) == {"threshold"}:
        return f"{params['threshold']:g}"
    return json.dumps(params, separators=(",", ":"))[:40]


def time_ratios(r: Renderer, full, timed, repeats: int, log=print) -> None:
    """Set every row's wall ratio: the median over ``repeats`` rounds of t(uncached) / t(policy),
    each policy render timed right after an uncached one (shared by two neighbouring rows), on
    one digit per class.  A load that drifts over the run moves both sides of a pair alike."""
    import statistics

    import torch

    labels = torch.arange(NUM_CLASSES).repeat_interleave(TIMING_PER_CLASS)
    r.render(full, labels=labels)  # warm-up: sessions and allocators at this batch size
    ratios = {id(row): [] for row, _, _ in timed}
    t0 = time.perf_counter()
    for k in range(repeats):
        for i, (row, rule, n_steps) in enumerate(timed):
            if i % 2 == 0:
                _, base, _ = r.render(full, labels=labels)
            _, wall, _ = r.render(rule, n_steps, labels=labels)
            ratios[id(row)].append(base / wall)
        elapsed = time.perf_counter() - t0
        log(f"[eval timing {k + 1}/{repeats}] {len(timed)} policies against the uncached render on {len(labels)} "
            f"digits ({elapsed:.0f}s, about {elapsed / (k + 1) * (repeats - k - 1):.0f}s left)")
    for row, _, _ in timed:
        pair = ratios[id(row)]
        row.wall_ratio = statistics.median(pair)
        row.ratio_range = (min(pair), max(pair))


def markdown_table(rows: Sequence[Row]) -> str:
    """The table; wall ratio: median of the timing pairs, with their range (the noise) beside it."""
    lines = ["| policy | setting | computed steps | wall ratio (range) | PSNR (dB) | SSIM | accuracy |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (-r.computed, POLICIES.index(r.policy) if r.policy in POLICIES else -1)):
        lo, hi = row.ratio_range
        lines.append(f"| {row.policy} | {row.setting} | {row.computed:.1f} | {row.wall_ratio:.2f} "
                     f"({lo:.2f}-{hi:.2f}) | {row.psnr:.2f} | {row.ssim:.4f} | {row.accuracy:.3f} |")
    return "\n".join(lines)


def timing_note(settings: dict) -> str:
    return (f"Wall ratio: median of {settings['timing_repeats']} interleaved repeats of (uncached, policy) renders "
            f"of {settings['timing_digits']} digits, in one process; the range beside it is their spread.")


def plot(rows: Sequence[Row], path: Path, steps: int) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    names = [*POLICIES, *dict.fromkeys(r.policy for r in rows if r.policy not in POLICIES and r.policy != "uncached")]
    for policy, marker in zip(names, "osD^vP*X"):
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
    atomic_write_bytes(paths["table"], (markdown_table(rows) + "\n\n" + timing_note(result["settings"]) + "\n").encode())
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
    from .. import options
    from .constants import DIGITS_AXES

    max_per_class = DIGITS_AXES["batch"][2] // NUM_CLASSES  # cond rows of one call within the profile
    p = options.Parser(prog="teacache-eval", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/digits", type=options.output_folder,
                   help="folder for the table, JSON, plot and grids")
    p.add_argument("--art", help="exported digits artifacts (default: the bundled model, exported on first use "
                                 "into the cache teacache-render uses)")
    p.add_argument("--cache-dir", type=options.output_folder, help="that cache (default: ~/.cache/teacache-trt/artifacts)")
    p.add_argument("--steps", type=options.integer(2, 1000), default=20)
    p.add_argument("--guidance", type=options.number(0.0), default=3.0,
                   help="classifier-free guidance scale (<= 1: no guidance)")
    p.add_argument("--per-class", type=options.integer(1, max_per_class), default=PER_CLASS,
                   help=f"digits per class (at most {max_per_class}: the exported batch profile)")
    p.add_argument("--seed", type=options.integer(0, 2**63 - 1), default=0)
    p.add_argument("--upstream", type=options.thresholds, default=list(UPSTREAM_THRESHOLDS), help="thresholds, comma-separated")
    p.add_argument("--calibrated", type=options.thresholds, default=list(CALIBRATED_THRESHOLDS), help="thresholds, comma-separated")
    p.add_argument("--coefficients", help="calibration JSON (default: the one shipped with the model)")
    p.add_argument("--grid-threshold", type=options.number(0.0), default=GRID_THRESHOLD,
                   help="threshold (calibrated coefficients) of the TeaCache grid image")
    p.add_argument("--backend", default="onnxruntime", choices=options.BACKEND_NAMES)
    p.add_argument("--repeats", type=options.integer(1, 1000), default=TIMING_REPEATS,
                   help="interleaved timing pairs per policy; the wall ratio is their median")
    from ..tools import policy_options

    policy_options.add_arguments(p, " to compare as one more row (with uniform and fewer-step rows at its compute)")
    args = p.parse_args(argv)

    def body() -> int:
        t0 = time.perf_counter()
        coefficients = load_calibrated(args.coefficients) if args.coefficients else None  # before any export
        policy = policy_options.from_args(args)
        art = Path(args.art) if args.art else export_bundled(args.cache_dir)
        result = evaluate(art, steps=args.steps, guidance=args.guidance, per_class=args.per_class,
                          seed=args.seed, upstream=args.upstream, calibrated=args.calibrated,
                          calibrated_coefficients=coefficients, backend=args.backend,
                          grid_threshold=args.grid_threshold, repeats=args.repeats, policy=policy)
        paths = write_outputs(result, args.out)
        print()
        print(markdown_table(result["rows"]))
        print()
        print(timing_note(result["settings"]))
        for name, path in paths.items():
            print(f"{name}: {path}")
        print(f"[done] in {time.perf_counter() - t0:.0f}s")
        return 0

    return options.run("teacache-eval", body)


if __name__ == "__main__":
    sys.exit(main())
