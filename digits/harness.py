"""teacache-eval: every caching policy against the others and against honest baselines, at
equal numbers of computed steps, on the bundled digits model.

For each number of computed steps per CFG branch (--computed, default 7 and 10 of 20) the same
digits (same labels, same seed) are rendered through the exported graphs by:

  teacache-upstream     TeaCache with the upstream FLUX coefficients
  teacache-calibrated   TeaCache with coefficients fitted to this model (teacache-calibrate)
  budget                exactly that many steps, chosen offline (teacache-calibrate --policy budget)
  uniform               that many steps, evenly spaced (the baseline a policy must beat)
  fewer-steps           a plain sampler with that many steps and no caching
  magcache              MagCache with the model's calibrated ratios (max_skips 4, retention 0.1)
  easycache             EasyCache (warmup 3), no offline data

each caching policy with both reuse modes: the cached residual as it is ("residual") and its
first-order extrapolation ("taylor").  A threshold policy's threshold is chosen to land on the
number of computed steps: replayed on the uncached render's recorded signal, then corrected by
bisection on real renders (a row that still misses says so).

Quality is measured against the uncached full-step render: PSNR and SSIM per image, and the
accuracy of a classifier trained on the real digits.  Wall ratios come from separate, smaller
timing renders (one digit per class): each policy's render is paired with the uncached render
next to it, and the ratio is the median over interleaved repeats, with their range; a ratio
outside 0.5 to 1.1 times the ideal one (the steps ratio) is flagged unreliable, with the load
average.  Output: a markdown table marking the best policy at each number of computed steps,
a strict JSON file (null where a value is infinite, with a note), a PNG plot (PSNR against
computed steps, one line per policy and reuse) and digit grids.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch

from .. import strict_json
from ..errors import TeaCacheError
from ..files import atomic_write_bytes
from .constants import CALIBRATION_FILE, NUM_CLASSES  # torch is imported where it is used: --help at once

LEVELS = (7, 10)  # computed steps per branch compared by default
REUSES = ("residual", "taylor")
TIMING_REPEATS = 3  # interleaved (uncached, policy) timing pairs per row; the ratio is their median
TIMING_PER_CLASS = 1  # digits per class in the timing renders (the quality renders use --per-class)
# Digits per class in the quality renders: 40 digits keep the main job within its time on 2 cores,
# and at equal computed steps every policy's PSNR within 0.5 dB of the 100-digit one.
PER_CLASS = 4
RELIABLE = (0.5, 1.1)  # a wall ratio outside this times the ideal ratio is flagged unreliable
THRESHOLD_TRIES = 3  # real renders spent correcting a threshold that missed its level
# ... for a policy whose rule cannot be replayed on the recorded signal (EasyCache reads the
# outputs of its own computed steps): its search starts from its default threshold
SEARCH_TRIES = 7
# Policies that take part when this teacache-trt registers them and the artifact has their data,
# with their settings besides the threshold (MagCache: up to 4 skips in a row and 10% of the steps
# computed first reach 7 of 20 steps; its defaults, 2 and 20%, cannot go below about 10.
# EasyCache: 3 warm-up steps of 20; its default 5 spends 7 steps' budget early).
OPTIONAL = {"magcache": {"max_skips": 4, "retention_ratio": 0.1}, "easycache": {"warmup": 3}}
ORDER = ("uncached", "teacache-upstream", "teacache-calibrated", "magcache", "easycache", "budget", "uniform",
         "fewer-steps")


@dataclass
class Row:
    """One render: ``policies.make(row.policy, **row.params)`` rebuilds its policy."""

    label: str  # the row's name in the table (teacache-upstream, budget, uniform, ...)
    policy: str
    params: dict
    sampler_steps: int  # the sampler's steps (fewer-steps: fewer)
    setting: str  # short: threshold, n or step count
    target: int | None  # the number of computed steps the row was made for (None: any)
    computed_steps: float  # computed steps per branch (mean over cond / uncond)
    psnr: float | None  # None: identical to the reference (infinite)
    ssim: float
    accuracy: float
    wall_s: float  # the quality render (one run; not what the ratio is taken from)
    wall_ratio: float | None = None  # median over the timing pairs of uncached / policy wall time
    wall_ratio_range: list[float] | None = None  # min and max of those pair ratios
    ideal_ratio: float = 1.0  # sampler steps of the reference / computed steps
    reliable: bool | None = None  # wall ratio within RELIABLE x the ideal
    best: bool = False  # highest PSNR at its number of computed steps
    notes: list[str] = field(default_factory=list)

    @property
    def reuse(self) -> str:
        return self.params.get("reuse", "residual")

    @property
    def on_target(self) -> bool:
        return self.target is not None and abs(self.computed_steps - self.target) < 1e-9


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
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise TeaCacheError(f"{path} is not a calibration JSON with 'coefficients' ({type(exc).__name__}: "
                            f"{str(exc)[:200]}): write one with `teacache-calibrate ART_DIR --json {path}`") from None
    return check_coefficients(coefficients, str(path))


class Renderer:
    """One enabled pipeline; renders the evaluation digits under a given policy."""

    def __init__(self, art_dir: Path, steps: int, guidance: float, per_class: int, seed: int, backend: str):
        import torch

        import teacache_trt

        from ..policies import Schedule
        from .pipeline import DigitsPipeline

        self.pipe = DigitsPipeline.from_pretrained()
        self.transformer = teacache_trt.enable(self.pipe, art_dir, policy=Schedule.uniform(steps, steps),
                                               backend=backend, device="cpu")
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


@dataclass
class Candidate:
    """A row to render at a level: ``make(threshold)`` for threshold policies, else ``policy``."""

    label: str
    policy: object = None  # a Policy, for rows whose setting is fixed
    make: Callable[[float], object] | None = None  # threshold -> Policy
    sampler_steps: int | None = None

    def setting(self, policy) -> str:
        params = policy.params
        if "threshold" in params:
            return f"{params['threshold']:.3g}"
        if "n" in params:
            return str(params["n"])
        if self.label in ("uniform", "fewer-steps"):
            return str(len(params["steps"]))
        return json.dumps({k: v for k, v in params.items() if k != "reuse"}, separators=(",", ":"))[:40]


def candidates(level: int, steps: int, coefficients: dict, art, notes: list[str]) -> list[Candidate]:
    """The rows of one level: every policy with every reuse mode, then the fewer-step sampler."""
    from .. import policies
    from ..policies import Budget, Schedule, TeaCache

    out = []
    for reuse in REUSES:
        for label in ("teacache-upstream", "teacache-calibrated"):
            out.append(Candidate(label, make=lambda t, c=coefficients[label], r=reuse: TeaCache(
                threshold=t, coefficients=c, reuse=r)))
        for name in OPTIONAL:
            cls = policies.registered().get(name)
            if cls is None:
                continue
            try:  # needs the artifact's data for it (e.g. MagCache's ratios)
                cls(threshold=1.0, **OPTIONAL[name]).bind(art)
            except (TeaCacheError, TypeError) as exc:
                note = f"{name} left out: {exc}"
                if note not in notes:
                    notes.append(note)
                continue
            out.append(Candidate(name, make=lambda t, c=cls, r=reuse, o=OPTIONAL[name]: c(threshold=t, reuse=r, **o)))
        out.append(Candidate("budget", Budget(level, reuse=reuse)))
        out.append(Candidate("uniform", Schedule.uniform(steps, level).replace(reuse=reuse)))
    out.append(Candidate("fewer-steps", Schedule.uniform(level, level), sampler_steps=level))
    return out


class Evaluation:
    """The renders of one evaluation, with the bookkeeping every row shares."""

    def __init__(self, r: Renderer, reference: torch.Tensor, signal, art, notes: list[str], log):
        self.r, self.reference, self.signal, self.art, self.notes, self.log = r, reference, signal, art, notes, log
        self.rows: list[Row] = []
        self.images: dict[int, torch.Tensor] = {}  # id(row) -> its images
        self.timed: list[tuple[Row, object, int | None]] = []
        self.done, self.planned, self.t0 = 0, 0, time.perf_counter()
        # label -> level -> (last threshold, lo, hi) of its search: where the next search of the
        # same policy starts (the other reuse mode at this level, or another level)
        self.searched: dict[str, dict[int, tuple[float, float, float]]] = {}

    def render(self, label: str, policy, target: int | None, sampler_steps: int | None = None,
               setting: str = "") -> Row:
        from ..tools.quality import psnr, ssim
        from .classifier import accuracy

        with warnings.catch_warnings(record=True) as caught:  # e.g. a budget without a search: into the notes
            warnings.simplefilter("always")
            out, wall, computed = self.r.render(policy, sampler_steps)
        for w in caught:
            if str(w.message) not in self.notes:
                self.notes.append(str(w.message))
                self.log(f"[eval] note: {w.message}")
        value = float(psnr(out, self.reference).mean())
        row = Row(label, policy.name, policy.params, sampler_steps or self.r.steps, setting, target, computed,
                  value if math.isfinite(value) else None, float(ssim(out, self.reference).mean()),
                  accuracy(out, self.r.labels), wall, ideal_ratio=self.r.steps / computed)
        self.images[id(row)] = out
        if self.r.never_skipped:
            self.log(f"[eval] {label} {setting}: {self.r.never_skipped}")
        return row

    def keep(self, row: Row, policy, counted: bool = True) -> None:
        self.rows.append(row)
        self.timed.append((row, policy, row.sampler_steps if row.label == "fewer-steps" else None))
        if counted:
            self.done += 1
        where = f"{self.done}/{self.planned}" if counted else "extra"
        self.log(f"[eval quality {where}] {row.label:20s} {row.reuse:8s} {row.setting:>6s}: "
                 f"{row.computed_steps:5.2f} computed, PSNR {_num(row.psnr)} dB, SSIM {row.ssim:.4f}, "
                 f"acc {row.accuracy:.3f} ({time.perf_counter() - self.t0:.0f}s)")

    def at_level(self, c: Candidate, level: int) -> Row:
        """Render candidate ``c`` at ``level`` computed steps (a threshold found for it)."""
        if c.make is None:
            row = self.render(c.label, c.policy, level, c.sampler_steps, c.setting(c.policy))
            self.keep(row, c.policy)
            return row
        from ..tools.suggest import suggest_static_threshold, suggest_threshold

        from ..policies import SIGNAL_SUMS

        bound = c.make(1.0).bind(self.art)
        tries = THRESHOLD_TRIES
        if bound.static:  # its schedule is known from the step count: exact
            contexts = sorted({context for _, context in self.signal.calls})
            found = suggest_static_threshold(bound, contexts, level, self.r.steps)
        elif SIGNAL_SUMS in bound.needs:  # replayed on the uncached render's signal
            found = suggest_threshold(bound, self.signal, level, self.r.steps)
        else:  # nothing to replay: search on real renders from its default threshold
            found, tries = None, SEARCH_TRIES
        lo, hi = 0.0, math.inf  # thresholds known to compute more / fewer steps than the level
        threshold = found["params"]["threshold"] if found else c.make(None).bind(self.art).params.get("threshold") or 0.0
        threshold, lo, hi = self.start(c.label, level, found is not None, (threshold, lo, hi))
        for attempt in range(tries + 1):
            policy = c.make(threshold)
            row = self.render(c.label, policy, level, setting=c.setting(policy))
            if row.on_target or attempt == tries:
                break
            if row.computed_steps > level:
                lo = max(lo, threshold)
            else:
                hi = min(hi, threshold)
            threshold = float(f"{(lo + hi) / 2 if math.isfinite(hi) else max(2 * lo, 1e-3):.4g}")
            self.log(f"[eval] {c.label} {row.reuse}: threshold {row.setting} computed {row.computed_steps:.2f}, "
                     f"not {level}; trying {threshold:g}")
        self.searched.setdefault(c.label, {})[level] = (threshold, lo, hi)
        if not row.on_target:
            row.notes.append(f"no threshold tried gave exactly {level} computed steps")
        self.keep(row, policy)
        return row

    def start(self, label: str, level: int, replayed: bool, default: tuple[float, float, float]):
        """Where a threshold search starts: the same policy's search at this level with the other
        reuse mode (its threshold and bracket: the reuse mode moves the computed steps little), else,
        for a policy whose signal cannot be replayed, its threshold at the nearest level searched;
        else ``default``.  Each start saves real renders (a miss costs one render of every digit)."""
        known = self.searched.get(label, {})
        if level in known:
            return known[level]
        if known and not replayed:
            return known[min(known, key=lambda other: abs(other - level))][0], default[1], default[2]
        return default


def evaluate(art_dir: Path, *, steps: int = 20, guidance: float = 3.0, per_class: int = PER_CLASS, seed: int = 0,
             levels: Sequence[int] = LEVELS, upstream: Sequence[float] = (), calibrated: Sequence[float] = (),
             calibrated_coefficients: Sequence[float] | None = None, backend: str = "onnxruntime",
             repeats: int = TIMING_REPEATS, policy=None, log=print) -> dict:
    """The table's rows, the images and the settings.  ``policy`` (a policy, a name or a spec)
    joins as one more row, with uniform and fewer-step rows at its computed steps; ``upstream`` /
    ``calibrated`` add TeaCache rows at those thresholds."""
    from ..families.flux import Flux
    from ..policies import Schedule, TeaCache, artifact_policies, from_spec
    from ..tools.suggest import SignalRuns
    from .classifier import accuracy

    coefficients = {
        "teacache-upstream": list(Flux.variants["FLUX.1"].coefficients),
        "teacache-calibrated": list(calibrated_coefficients) if calibrated_coefficients else load_calibrated(),
    }
    extra = None if policy is None else from_spec(policy)
    bad = [n for n in levels if not 1 <= n < steps]
    if bad:
        raise TeaCacheError(f"--computed {bad[0]} must be 1 to {steps - 1} (fewer than --steps {steps})")
    log(f"[eval] phase 1/3: the uncached render of {per_class * NUM_CLASSES} digits ({steps} steps)")
    r = Renderer(art_dir, steps, guidance, per_class, seed, backend)
    art = artifact_policies(r.transformer.manifest)
    full = Schedule.uniform(steps, steps)
    signal = SignalRuns()  # the uncached render's signal: where a threshold policy's thresholds are replayed
    r.transformer.observers.append(signal)
    reference, base_wall, _ = r.render(full)
    r.transformer.observers.remove(signal)
    notes: list[str] = []
    ev = Evaluation(r, reference, signal, art, notes, log)
    ev.rows.append(Row("uncached", full.name, full.params, steps, str(steps), None, float(steps), None, 1.0,
                       accuracy(reference, r.labels), base_wall, 1.0, [1.0, 1.0], 1.0, True,
                       notes=["PSNR is infinite (the reference itself): null"]))
    extra_rows = []
    if extra is not None:  # first, so that the counter below knows its baselines
        extra_rows.append(ev.render(extra.name, extra, None, setting=Candidate(extra.name).setting(extra)))
        ev.keep(extra_rows[-1], extra, counted=False)
    for label, thresholds in (("teacache-upstream", upstream), ("teacache-calibrated", calibrated)):
        for t in thresholds:
            p = TeaCache(threshold=t, coefficients=coefficients[label])
            extra_rows.append(ev.render(label, p, None, setting=f"{t:g}"))
            ev.keep(extra_rows[-1], p, counted=False)
    plan = {level: candidates(level, steps, coefficients, art, notes) for level in levels}
    for level in sorted({max(1, round(row.computed_steps)) for row in extra_rows} - set(levels) - {steps}):
        plan[level] = [c for c in candidates(level, steps, coefficients, art, notes)  # baselines at their compute
                       if c.label in ("uniform", "fewer-steps") and (c.policy.reuse == "residual")]
    ev.planned = sum(len(cs) for cs in plan.values())
    log(f"[eval] phase 2/3: {ev.planned} quality renders at {sorted(plan)} computed steps of {steps}")
    for level in sorted(plan, reverse=True):
        for c in plan[level]:
            ev.at_level(c, level)
    mark_best(ev.rows)
    images = {"uncached": reference}
    captions = {"uncached": f"uncached: {steps} of {steps} steps"}
    teacache = [row for row in ev.rows if row.label == "teacache-calibrated" and row.reuse == "residual"]
    if teacache:
        row = max(teacache, key=lambda row: row.computed_steps)
        images["teacache"], captions["teacache"] = ev.images[id(row)], grid_caption(row, steps)
    best = [row for row in ev.rows if row.best]
    if best:
        row = min(best, key=lambda row: row.computed_steps)
        images[f"best_{row.target}"] = ev.images[id(row)]
        captions[f"best_{row.target}"] = f"best at {row.target}: {grid_caption(row, steps)}"
    log(f"[eval] phase 3/3: wall ratios, {repeats} interleaved rounds of {len(ev.timed)} policies")
    load = time_ratios(r, full, ev.timed, repeats, log)
    notes += reliability_notes(ev.rows, load)
    return {"rows": ev.rows, "images": images, "captions": captions, "labels": r.labels,
            "coefficients": coefficients, "notes": notes,
            "settings": {"steps": steps, "guidance": guidance, "per_class": per_class, "seed": seed,
                         "backend": backend, "levels": sorted(plan), "timing_repeats": repeats,
                         "timing_digits": NUM_CLASSES * TIMING_PER_CLASS, "load_average": load}}


def grid_caption(row: Row, steps: int) -> str:
    """A digit grid's caption: the row's policy, reuse mode, setting and computed steps."""
    return (f"{row.label} ({row.reuse}, {row.setting}): {row.computed_steps:g} of {steps} steps computed, "
            f"PSNR {_num(row.psnr)} dB")


def mark_best(rows: Sequence[Row]) -> None:
    """Mark the highest-PSNR row at each number of computed steps (rows that hit their level)."""
    by_level: dict[int, list[Row]] = {}
    for row in rows:
        if row.on_target and row.psnr is not None:
            by_level.setdefault(row.target, []).append(row)
    for group in by_level.values():
        max(group, key=lambda row: row.psnr).best = True


def time_ratios(r: Renderer, full, timed, repeats: int, log=print) -> list[float]:
    """Set every row's wall ratio: the median over ``repeats`` rounds of t(uncached) / t(policy),
    each policy render timed right after an uncached one (shared by two neighbouring rows), on
    one digit per class.  A load that drifts over the run moves both sides of a pair alike.
    Returns the load averages (1, 5, 15 min) at the end."""
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
    load = [round(v, 2) for v in os.getloadavg()]
    for row, _, _ in timed:
        pair = ratios[id(row)]
        row.wall_ratio = statistics.median(pair)
        row.wall_ratio_range = [min(pair), max(pair)]
        row.reliable = RELIABLE[0] * row.ideal_ratio <= row.wall_ratio <= RELIABLE[1] * row.ideal_ratio
    return load


def reliability_notes(rows: Sequence[Row], load: Sequence[float]) -> list[str]:
    bad = [row for row in rows if row.reliable is False]
    if not bad:
        return []
    return [f"{len(bad)} wall ratio(s) fall outside {RELIABLE[0]} to {RELIABLE[1]} x the ideal (steps) ratio and are "
            f"marked unreliable (!); load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) "
            f"on {os.cpu_count()} CPU(s): re-run on a quieter machine, or time with teacache-bench --repeat"]


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "inf" if value is None else format(value, fmt)


def markdown_table(rows: Sequence[Row]) -> str:
    """The table, grouped by computed steps (most first); **bold**: the best PSNR at its computed
    steps; wall ratio: median of the timing pairs with their range, ! where unreliable."""
    lines = ["| policy | reuse | setting | computed steps | wall ratio (range) | PSNR (dB) | SSIM | accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    order = {name: k for k, name in enumerate(ORDER)}
    for row in sorted(rows, key=lambda r: (-r.computed_steps, order.get(r.label, len(ORDER)), r.reuse)):
        name = f"**{row.label}**" if row.best else row.label
        reuse = "-" if row.label in ("uncached", "fewer-steps") else row.reuse
        ratio = "-" if row.wall_ratio is None else (
            f"{row.wall_ratio:.2f} ({row.wall_ratio_range[0]:.2f}-{row.wall_ratio_range[1]:.2f})"
            f"{'' if row.reliable is not False else ' !'}")
        lines.append(f"| {name} | {reuse} | {row.setting} | {row.computed_steps:.2f} | {ratio} | {_num(row.psnr)} | "
                     f"{row.ssim:.4f} | {row.accuracy:.3f} |")
    return "\n".join(lines)


def verdicts(rows: Sequence[Row]) -> list[str]:
    """Per number of computed steps: the best caching policy against uniform spacing (with the
    residual reused as it is, and with the same reuse as the best) and against the plain
    sampler with that many steps."""
    out = []
    levels = sorted({r.target for r in rows if r.target is not None and r.on_target}, reverse=True)
    for level in levels:
        at = [r for r in rows if r.target == level and r.on_target and r.psnr is not None]
        caching = [r for r in at if r.label not in ("uniform", "fewer-steps")]
        uniform = {r.reuse: r for r in at if r.label == "uniform"}
        fewer = next((r for r in at if r.label == "fewer-steps"), None)
        if not caching or "residual" not in uniform or fewer is None:
            continue
        best = max(caching, key=lambda r: r.psnr)
        same = uniform.get(best.reuse, uniform["residual"])
        out.append(f"{level} computed steps: best caching policy {best.label} ({best.reuse} reuse, {best.setting}) "
                   f"{best.psnr:.2f} dB: {best.psnr - uniform['residual'].psnr:+.2f} dB against uniform spacing "
                   f"(residual reuse), {best.psnr - same.psnr:+.2f} dB against uniform spacing ({same.reuse} reuse), "
                   f"{best.psnr - fewer.psnr:+.2f} dB against {level} sampler steps")
    return out


def timing_note(settings: dict) -> str:
    load = settings.get("load_average") or [math.nan] * 3
    return (f"Wall ratio: median of {settings['timing_repeats']} interleaved repeats of (uncached, policy) renders "
            f"of {settings['timing_digits']} digits, in one process; the range beside it is their spread; ! marks "
            f"a ratio outside {RELIABLE[0]} to {RELIABLE[1]} x the ideal (steps) ratio. Load average at the end "
            f"of timing: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min), {os.cpu_count()} CPU(s).")


def plot(rows: Sequence[Row], path: Path, steps: int) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=120)
    lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        if row.label != "uncached" and row.psnr is not None:
            reuse = "" if row.label == "fewer-steps" else row.reuse
            lines.setdefault((row.label, reuse), []).append((row.computed_steps, row.psnr))
    order = {name: k for k, name in enumerate(ORDER)}
    for k, ((label, reuse), pts) in enumerate(sorted(lines.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0]))):
        ax.plot(*zip(*sorted(pts)), marker="osD^vP*Xh"[k % 9], linestyle="--" if reuse == "taylor" else "-",
                label=f"{label} ({reuse})" if reuse else label)
    ax.set_xlabel(f"computed steps (of {steps}, per CFG branch)")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title("digits: quality at equal compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
    text = [markdown_table(rows), "", timing_note(result["settings"]), *verdicts(rows), *result["notes"]]
    atomic_write_bytes(paths["table"], ("\n".join(text) + "\n").encode())
    data = {"settings": result["settings"], "coefficients": result["coefficients"], "notes": [
                "null stands for a value that is not finite (the uncached row's PSNR is infinite)", *result["notes"]],
            "verdicts": verdicts(rows), "rows": [asdict(r) for r in rows]}
    atomic_write_bytes(paths["json"], strict_json.dumps(data, indent=2).encode())
    plot(rows, paths["plot"], result["settings"]["steps"])
    per_class = result["settings"]["per_class"]
    for name, images in result["images"].items():
        buf = io.BytesIO()
        caption = result.get("captions", {}).get(name, name)
        # one row per digit class, 0 at the top (the renders are class-major)
        make_grid(images, nrow=per_class, title=f"{caption}; rows: digits 0-9").save(buf, format="PNG")
        paths[f"grid_{name}"] = out_dir / f"grid_{name}.png"
        atomic_write_bytes(paths[f"grid_{name}"], buf.getvalue())
    return paths


DESCRIPTION = """\
Compare every caching policy at equal numbers of computed steps on the bundled digits model:
TeaCache with the upstream and the calibrated coefficients, the offline-searched budget, uniform
spacing (each with the residual reused as it is and extrapolated: reuse residual / taylor) and a
plain sampler with fewer steps, against the uncached render of the same digits and seed.
Writes table.md (the best policy at each number of computed steps in bold), eval.json (one row
per render: policy and params rebuild it with teacache_trt.policies.make), psnr.png and digit
grids into --out."""


def build_parser() -> argparse.ArgumentParser:
    from .. import options
    from ..tools import policy_options
    from .constants import DIGITS_AXES

    max_per_class = DIGITS_AXES["batch"][2] // NUM_CLASSES  # cond rows of one call within the profile
    p = options.Parser(prog="teacache-eval", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/digits", type=options.output_folder,
                   help="folder for the table, JSON, plot and grids (default out/digits)")
    p.add_argument("--art", help="exported digits artifacts (default: the bundled model, exported on first use "
                                 "into the cache teacache-render uses)")
    p.add_argument("--cache-dir", type=options.output_folder,
                   help="that cache (default ~/.cache/teacache-trt/artifacts)")
    p.add_argument("--steps", type=options.integer(2, 1000), default=20, help="sampler steps (default 20)")
    p.add_argument("--computed", metavar="N,M", type=options.step_counts, default=list(LEVELS),
                   help=f"numbers of computed steps per branch to compare every policy at "
                        f"(default {','.join(map(str, LEVELS))})")
    p.add_argument("--guidance", type=options.number(0.0), default=3.0,
                   help="classifier-free guidance scale (default 3; <= 1: no guidance)")
    p.add_argument("--per-class", type=options.integer(1, max_per_class), default=PER_CLASS,
                   help=f"digits per class (default {PER_CLASS}; at most {max_per_class}: the exported batch profile)")
    p.add_argument("--seed", type=options.integer(0, 2**63 - 1), default=0, help="noise seed (default 0)")
    p.add_argument("--upstream", type=options.thresholds, default=[],
                   help="also TeaCache rows with the upstream coefficients at these thresholds, comma-separated "
                        "(default: none)")
    p.add_argument("--calibrated", type=options.thresholds, default=[],
                   help="also TeaCache rows with the calibrated coefficients at these thresholds (default: none)")
    p.add_argument("--coefficients", help="calibration JSON (default: the one shipped with the model)")
    p.add_argument("--backend", default="onnxruntime", choices=options.BACKEND_NAMES, help="default onnxruntime")
    p.add_argument("--repeats", type=options.integer(1, 1000), default=TIMING_REPEATS,
                   help=f"interleaved timing pairs per policy; the wall ratio is their median (default "
                        f"{TIMING_REPEATS})")
    policy_options.add_arguments(p, " to compare as one more row (with uniform and fewer-step rows at its compute)")
    return p


def main(argv=None) -> int:
    from .. import options
    from ..tools import policy_options

    args = build_parser().parse_args(argv)

    def body() -> int:
        t0 = time.perf_counter()
        from .data import sklearn

        sklearn("svm")  # the classifier scores the digits: a missing extra fails before any work
        coefficients = load_calibrated(args.coefficients) if args.coefficients else None  # before any export
        policy = policy_options.from_args(args)
        bad = [n for n in args.computed if n >= args.steps]
        if bad:
            raise TeaCacheError(f"--computed {bad[0]} must be below --steps {args.steps}")
        options.check_writable(args.out / "eval.json", options.output_file)  # before minutes of renders
        art = Path(args.art) if args.art else export_bundled(args.cache_dir)
        result = evaluate(art, steps=args.steps, guidance=args.guidance, per_class=args.per_class, seed=args.seed,
                          levels=args.computed, upstream=args.upstream, calibrated=args.calibrated,
                          calibrated_coefficients=coefficients, backend=args.backend, repeats=args.repeats,
                          policy=policy)
        paths = write_outputs(result, args.out)
        print()
        print(markdown_table(result["rows"]))
        print()
        print(timing_note(result["settings"]))
        for line in [*verdicts(result["rows"]), *result["notes"]]:
            print(line)
        for name, path in paths.items():
            print(f"{name}: {path}")
        print(f"[done] in {time.perf_counter() - t0:.0f}s")
        return 0

    return options.run("teacache-eval", body)


if __name__ == "__main__":
    sys.exit(main())
