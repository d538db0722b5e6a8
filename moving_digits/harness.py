"""``teacache-eval --model video``: what each caching policy does to the bundled video model's
clips, against honest baselines at equal compute.

Every policy renders the same clips (one per digit, the directions and both speeds among them,
the same seeds) through the exported graphs, with classifier-free guidance (cond and uncond
each decide for themselves, as in WanPipeline):

- ``teacache``    TeaCache with the coefficients calibrated for this model (shipped beside its
                  weights), over a threshold sweep;
- ``magcache``    MagCache with the magnitude ratios calibrated for this model (likewise);
- ``easycache``   EasyCache (no offline data), over a threshold sweep;
- ``uniform``     the same number of computed steps, evenly spaced, with the same residual reuse;
- ``fewer-steps`` a plain sampler with that many steps and no caching.

Quality against the uncached full-step clips: PSNR and SSIM per frame; temporal consistency as
the RMS error of the frame-to-frame differences against the uncached clips' (0-1 pixel scale:
flicker or motion the uncached clip does not have); the per-frame accuracy of the classifier
trained on real digits, and the share of clips passing the motion check.  Wall ratios come from
interleaved (uncached, policy) timing renders in one process: the median of the pairs, with
their range.  Output: a markdown table, a JSON file, a PNG plot (PSNR against computed steps,
one line per policy) and an animated GIF of the worst clip, uncached | policy side by side.
"""
from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .. import strict_json
from ..errors import TeaCacheError
from ..files import atomic_write_bytes
from .constants import DEFAULT_GUIDANCE, DEFAULT_STEPS, DIRECTION_NAMES, MAX_FRAMES, MIN_FRAMES, NUM_CLASSES, SPEEDS

PROG = "teacache-eval --model video"
CACHING = ("teacache", "magcache", "easycache")  # the adaptive policies
POLICIES = (*CACHING, "uniform", "fewer-steps")
# Sweeps chosen to land on several compute levels each (of 20 steps per branch) on this model.
SWEEPS = {"teacache": (0.05, 0.1, 0.2), "magcache": (0.06, 0.15, 0.4), "easycache": (0.02, 0.1)}
CLIPS_PER_CLASS = 2  # 20 clips: every direction and both speeds among them
TIMING_REPEATS = 3  # interleaved (uncached, policy) timing pairs per row; the ratio is their median
TIMING_CLIPS = NUM_CLASSES  # clips of each timing render (the first of the evaluation clips)
MAX_CLIPS_PER_CLASS = 4  # 40 clips: the exported batch profile of one branch
GIF_SCALE = 4  # the side-by-side GIF's pixels per model pixel


@dataclass
class Row:
    policy: str
    setting: str  # threshold or step count
    computed: float  # computed steps per branch (mean over cond / uncond)
    wall_ratio: float  # median over the timing pairs of uncached / policy wall time
    ratio_range: tuple[float, float]  # min and max of those pair ratios: the noise, in plain sight
    psnr: float  # dB, mean over frames; inf for clips equal to the uncached ones
    ssim: float  # mean over frames
    temporal: float  # RMS error of frame differences against the uncached clips', 0-1 pixels
    accuracy: float  # frames classified as their clip's digit
    motion: float  # clips passing the motion check


def conditions(per_class: int) -> tuple[list[int], list[str], list[int]]:
    """``per_class`` clips per digit; directions and speeds cycle so that all appear."""
    n = NUM_CLASSES * per_class
    digits = [i % NUM_CLASSES for i in range(n)]
    directions = [DIRECTION_NAMES[(i + 3 * (i // NUM_CLASSES)) % len(DIRECTION_NAMES)] for i in range(n)]
    speeds = [SPEEDS[(i + i // NUM_CLASSES) % len(SPEEDS)] for i in range(n)]
    return digits, directions, speeds


def frame_scores(clips, reference) -> dict[str, float]:
    """Per-frame PSNR and SSIM (means over every frame), and the temporal error.  PSNR is
    infinite for clips equal to the reference (the uncached row), as in the digits table; in a
    mean over frames one frame equal to its reference counts as 99 dB, so that it does not
    make the mean infinite."""
    import torch

    from ..tools.quality import psnr, ssim

    frames = clips.flatten(0, 2).unsqueeze(1)  # (B*F, 1, H, W)
    ref = reference.flatten(0, 2).unsqueeze(1)
    diff, ref_diff = clips.diff(dim=2), reference.diff(dim=2)  # pixels in [-1, 1]: halve for 0-1
    same = torch.equal(clips, reference)
    return {"psnr": math.inf if same else float(psnr(frames, ref).clamp(max=99).mean()), "ssim": float(ssim(frames, ref).mean()),
            "temporal": float(((diff - ref_diff) / 2).pow(2).mean().sqrt())}


class Renderer:
    """One enabled pipeline; renders the evaluation clips under a given policy."""

    def __init__(self, art_dir: Path, steps: int, guidance: float, frames: int, per_class: int, seed: int,
                 backend: str):
        import teacache_trt

        from .pipeline import MovingDigitsPipeline

        self.pipe = MovingDigitsPipeline.from_pretrained()
        self.transformer = teacache_trt.enable(self.pipe, art_dir, threshold=0, backend=backend, device="cpu")
        self.steps, self.guidance, self.frames, self.seed = steps, guidance, frames, seed
        self.digits, self.directions, self.speeds = conditions(per_class)

    def render(self, policy, steps: int | None = None, clips: int | None = None):
        """(clips (B,1,F,32,32), wall seconds, computed steps per branch); ``clips``: the first n only."""
        n = clips or len(self.digits)
        self.transformer.policy = policy
        t0 = time.perf_counter()
        out = self.pipe(self.digits[:n], self.directions[:n], self.speeds[:n], num_frames=self.frames,
                        num_inference_steps=steps or self.steps, guidance_scale=self.guidance, seed=self.seed).frames
        wall = time.perf_counter() - t0
        stats = self.transformer.stats
        return out, wall, stats["blocks_runs"] / max(len(stats["contexts"]), 1)


def shipped_policies(art_dir: Path) -> None:
    """The artifact must carry this model's calibrations (a default export of the bundled model does)."""
    from ..artifact import Artifact

    manifest = Artifact.open(art_dir).manifest
    if manifest.variant != "moving-digits" or "magcache" not in manifest.policy_data:
        raise TeaCacheError(f"{art_dir} is not an export of the bundled video model with its MagCache ratios "
                            f"(variant {manifest.variant!r}): leave --art out (teacache-render's export is used)")


def evaluate(art_dir: Path, *, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
             frames: int = MAX_FRAMES, per_class: int = CLIPS_PER_CLASS, seed: int = 0,
             sweeps: dict | None = None, backend: str = "onnxruntime", repeats: int = TIMING_REPEATS,
             timing_clips: int = TIMING_CLIPS, log=print) -> dict:
    """The table's rows, the clips of every row and the settings."""
    from ..policies import Schedule, make
    from .classifier import frame_accuracy
    from .motion import motion_report

    shipped_policies(art_dir)
    sweeps = dict(SWEEPS if sweeps is None else sweeps)
    r = Renderer(art_dir, steps, guidance, frames, per_class, seed, backend)
    full = Schedule.uniform(steps, steps)  # every step: the uncached render
    t0 = time.perf_counter()
    reference, _, _ = r.render(full)

    def row(policy: str, setting: str, clips, computed: float) -> Row:
        return Row(policy, setting, computed, 1.0, (1.0, 1.0), **frame_scores(clips, reference),
                   accuracy=frame_accuracy(clips, r.digits), motion=motion_report(clips, r.directions, r.speeds)["pass_rate"])

    rows = [row("uncached", str(steps), reference, float(steps))]
    clips = {id(rows[0]): reference}
    timed = []  # (row, rule, steps) of every policy row, for the timing pairs

    def add(policy: str, setting: str, rule, n_steps=None) -> None:
        out, _, computed = r.render(rule, n_steps)
        rows.append(row(policy, setting, out, computed))
        clips[id(rows[-1])] = out
        timed.append((rows[-1], rule, n_steps))
        log(f"[eval quality {len(rows) - 1}] {policy:11s} {setting:>5s}: {computed:4.1f} computed, PSNR "
            f"{rows[-1].psnr:5.2f} dB, temporal {rows[-1].temporal:.4f}, acc {rows[-1].accuracy:.3f} "
            f"({time.perf_counter() - t0:.0f}s)")

    for policy in CACHING:
        for threshold in sweeps.get(policy, ()):
            add(policy, f"{threshold:g}", make(policy, threshold=threshold))  # the artifact's data for the rest
    levels = sorted({max(2, round(x.computed)) for x in rows if x.policy in CACHING} - {steps})
    for k in levels:
        add("uniform", str(k), Schedule.uniform(steps, k))
        add("fewer-steps", str(k), Schedule.uniform(k, k), n_steps=k)
    timing_clips = min(timing_clips, len(r.digits))
    time_ratios(r, full, timed, repeats, log, timing_clips)
    return {"rows": rows, "clips": clips, "reference": reference,
            "settings": {"steps": steps, "guidance": guidance, "frames": frames, "clips": len(r.digits),
                         "seed": seed, "backend": backend, "timing_repeats": repeats, "timing_clips": timing_clips,
                         "sweeps": sweeps}}


def time_ratios(r: Renderer, full, timed, repeats: int, log=print, clips: int = NUM_CLASSES) -> None:
    """Every row's wall ratio: the median over ``repeats`` rounds of t(uncached) / t(policy), each
    policy render timed right after an uncached one (shared by two neighbouring rows), on the
    first ``clips`` clips.  A load that drifts over the run moves both sides of a pair alike."""
    r.render(full, clips=clips)  # warm-up: sessions and allocators at this batch size
    ratios = {id(row): [] for row, _, _ in timed}
    t0 = time.perf_counter()
    for k in range(repeats):
        for i, (row, rule, n_steps) in enumerate(timed):
            if i % 2 == 0:
                _, base, _ = r.render(full, clips=clips)
            _, wall, _ = r.render(rule, n_steps, clips=clips)
            ratios[id(row)].append(base / wall)
        log(f"[eval timing {k + 1}/{repeats}] {len(timed)} policies against the uncached render on {clips} clips "
            f"({time.perf_counter() - t0:.0f}s)")
    for row, _, _ in timed:
        pair = ratios[id(row)]
        row.wall_ratio, row.ratio_range = statistics.median(pair), (min(pair), max(pair))


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| policy | setting | computed steps | wall ratio (range) | PSNR (dB) | SSIM | temporal err. | "
             "accuracy | motion |", "|---|---|---|---|---|---|---|---|---|"]
    order = {p: i for i, p in enumerate(("uncached", *POLICIES))}
    for x in sorted(rows, key=lambda x: (-round(x.computed), order.get(x.policy, len(order)), -x.computed)):
        lo, hi = x.ratio_range
        lines.append(f"| {x.policy} | {x.setting} | {x.computed:.1f} | {x.wall_ratio:.2f} ({lo:.2f}-{hi:.2f}) | "
                     f"{x.psnr:.2f} | {x.ssim:.4f} | {x.temporal:.4f} | {x.accuracy:.3f} | {x.motion:.2f} |")
    return "\n".join(lines)


def notes(settings: dict) -> str:
    return (f"{settings['clips']} clips of {settings['frames']} frames, {settings['steps']} steps, guidance "
            f"{settings['guidance']:g}, seed {settings['seed']}. PSNR / SSIM per frame against the uncached clip; "
            f"temporal err.: RMS error of frame-to-frame differences against the uncached clip's (0-1 pixels); "
            f"accuracy: frames classified as their digit; motion: clips passing the motion check. Wall ratio: median "
            f"of {settings['timing_repeats']} interleaved (uncached, policy) renders of {settings['timing_clips']} clips in one "
            f"process, the range beside it their spread.")


def winners(rows: Sequence[Row]) -> list[str]:
    """At each compute level (rounded computed steps), the policy with the best PSNR."""
    best: dict[int, Row] = {}
    for x in rows:
        level = round(x.computed)
        if x.policy != "uncached" and (level not in best or x.psnr > best[level].psnr):
            best[level] = x
    return [f"{level} steps: {x.policy} {x.setting} ({x.psnr:.2f} dB)" for level, x in sorted(best.items())]


def plot(rows: Sequence[Row], path: Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for policy, marker in zip(POLICIES, "osD^v"):
        pts = sorted((x.computed, x.psnr) for x in rows if x.policy == policy)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=policy)
    ax.set_xlabel(f"computed steps (of {steps}, per CFG branch)")
    ax.set_ylabel("per-frame PSNR vs uncached (dB)")
    ax.set_title("moving digits (Wan video model): quality at equal compute")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def worst_case(result: dict) -> tuple[Row, int]:
    """The caching-policy row with the lowest PSNR, and its clip furthest from the uncached one."""
    from ..tools.quality import psnr

    rows = [x for x in result["rows"] if x.policy in CACHING] or result["rows"][1:]
    if not rows:
        raise TeaCacheError("no policy rows to compare: give at least one threshold")
    worst = min(rows, key=lambda x: x.psnr)
    clips, ref = result["clips"][id(worst)], result["reference"]
    per_clip = psnr(clips.flatten(1), ref.flatten(1)).clamp(max=99)
    return worst, int(per_clip.argmin())


def side_by_side_gif(reference, clip, fps: float = 6.0) -> bytes:
    """An endlessly looping GIF: uncached | policy, each frame enlarged ``GIF_SCALE`` times."""
    from PIL import Image

    from .pipeline import to_uint8

    left, right = to_uint8(reference[None])[0], to_uint8(clip[None])[0]  # (F, H, W)
    h, w = left.shape[1:]
    gap = 2
    frames = []
    for a, b in zip(left, right):
        canvas = Image.new("L", (2 * w + gap, h), color=128)
        canvas.paste(Image.fromarray(a), (0, 0))
        canvas.paste(Image.fromarray(b), (w + gap, 0))
        frames.append(canvas.resize((canvas.width * GIF_SCALE, canvas.height * GIF_SCALE), Image.NEAREST))
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=max(20, round(100 / fps) * 10), optimize=False)
    return buf.getvalue()


def write_outputs(result: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    paths = {"table": out_dir / "table.md", "json": out_dir / "eval.json", "plot": out_dir / "psnr.png",
             "worst_gif": out_dir / "worst_side_by_side.gif"}
    worst, clip = worst_case(result)
    text = "\n\n".join([markdown_table(rows), notes(result["settings"]),
                        "Best PSNR per compute level: " + "; ".join(winners(rows)) + ".",
                        f"Worst case ({paths['worst_gif'].name}, uncached | policy): {worst.policy} {worst.setting}, "
                        f"clip {clip}."])
    atomic_write_bytes(paths["table"], (text + "\n").encode())
    data = {"settings": result["settings"], "rows": [asdict(x) for x in rows],
            "worst_case": {"policy": worst.policy, "setting": worst.setting, "clip": clip}}
    atomic_write_bytes(paths["json"], strict_json.dumps(data, indent=2).encode())  # inf PSNR: null, with a note
    plot(rows, paths["plot"], result["settings"]["steps"])
    atomic_write_bytes(paths["worst_gif"], side_by_side_gif(result["reference"][clip], result["clips"][id(worst)][clip]))
    return paths


def export_bundled(cache_dir: Path | None = None, log=print) -> Path:
    """The bundled model's artifacts, exported on first use into the cache ``teacache-render``
    uses (reused when up to date), with the model's shipped calibrations."""
    from ..tools.render.artifacts import default_cache_dir, ensure_artifacts
    from .driver import DRIVER

    return ensure_artifacts(DRIVER, DRIVER.default_model(), batch_size=1, backend="onnxruntime",
                            cache_dir=cache_dir or default_cache_dir(), log=log)


def main(argv=None) -> int:
    from .. import options

    p = options.Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/video", type=options.output_folder,
                   help="folder for the table, JSON, plot and GIF (default: out/video)")
    p.add_argument("--art", help="exported artifacts of the bundled video model (default: teacache-render's export, "
                                 "made on first use)")
    p.add_argument("--cache-dir", type=options.output_folder, help="that export's cache (default: teacache-render's)")
    p.add_argument("--steps", type=options.integer(2, 1000), default=DEFAULT_STEPS, help="(default: %(default)s)")
    p.add_argument("--guidance", type=options.number(0.0), default=DEFAULT_GUIDANCE,
                   help="classifier-free guidance scale (default: %(default)s)")
    p.add_argument("--frames", type=options.integer(MIN_FRAMES, MAX_FRAMES), default=MAX_FRAMES,
                   help="frames per clip (default: %(default)s)")
    p.add_argument("--per-class", type=options.integer(1, MAX_CLIPS_PER_CLASS), default=CLIPS_PER_CLASS,
                   help="clips per digit (default: %(default)s)")
    p.add_argument("--seed", type=options.integer(0, 2**63 - 1), default=0, help="(default: %(default)s)")
    for policy in CACHING:
        p.add_argument(f"--{policy}", type=options.thresholds, default=list(SWEEPS[policy]),
                       help=f"{policy} thresholds, comma-separated (default: {','.join(map(str, SWEEPS[policy]))})")
    p.add_argument("--backend", default="onnxruntime", choices=options.BACKEND_NAMES, help="(default: %(default)s)")
    p.add_argument("--repeats", type=options.integer(1, 1000), default=TIMING_REPEATS,
                   help="interleaved timing pairs per policy; the wall ratio is their median (default: %(default)s)")
    p.add_argument("--timing-clips", type=options.integer(1, NUM_CLASSES * MAX_CLIPS_PER_CLASS), default=TIMING_CLIPS,
                   help="clips of each timing render (default: %(default)s)")
    args = p.parse_args(argv)

    def body() -> int:
        t0 = time.perf_counter()
        art = Path(args.art) if args.art else export_bundled(args.cache_dir)
        result = evaluate(art, steps=args.steps, guidance=args.guidance, frames=args.frames,
                          per_class=args.per_class, seed=args.seed, backend=args.backend, repeats=args.repeats,
                          timing_clips=args.timing_clips,
                          sweeps={policy: getattr(args, policy) for policy in CACHING})
        paths = write_outputs(result, args.out)
        options.emit("\n" + paths["table"].read_text())
        for name, path in paths.items():
            print(f"{name}: {path}")
        print(f"[done] in {time.perf_counter() - t0:.0f}s")
        return 0

    return options.run("teacache-eval", body)


if __name__ == "__main__":
    sys.exit(main())
