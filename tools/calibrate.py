"""Fit TeaCache coefficients for a model: ``teacache-calibrate ART_DIR``
(``--policy magcache``: MagCache's magnitude ratios instead, see :mod:`.calibrate_magcache`;
``--policy budget``: search the computed steps of budgets, see :mod:`.budget_search`;
``--target-steps``: each policy's setting for a number of computed steps, see :mod:`.suggest`).

Run the uncached model (threshold 0) over a calibration set; for each pair of consecutive
calls of one cache context record

    x = rel-L1 of the signal   (Σ|s_t − s_{t−1}| / Σ|s_{t−1}|, from the embed graph's sums)
    y = rel-L1 of the output   (or of the residual, --target residual)

and fit ``numpy.polyfit(x, y, order)``.  The fit is judged on held-out seeds (R², Pearson)
and its shape over the observed x range is checked: TeaCache accumulates poly(x), so a
polynomial that turns down or goes negative there skips the wrong steps.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch

import numpy as np

from .. import artifact, options, strict_json
from ..errors import TeaCacheError
from ..files import write_output
from ..manifest import MANIFEST_NAME
from .drivers import Generate, driver_for

# torch, the families, the policies and the runtime are imported where they are used: --help
# and option errors answer without them.


def load_transformer(*args, **kwargs):
    """``teacache_trt.load_transformer`` (imported when a calibration runs)."""
    from ..runtime.api import load_transformer as load

    return load(*args, **kwargs)

TARGETS = ("output", "residual")
MAX_ORDER = 10  # beyond this polyfit is ill-conditioned; the paper saturates at 4
MIN_R2 = 0.9  # below it the fit predicts the output's change too poorly to decide skips
POLICIES = ("teacache", "magcache", "budget")  # what teacache-calibrate calibrates


@dataclass
class Pairs:
    """Observed (x, y) pairs with the seed each came from."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    seed: list[int] = field(default_factory=list)
    context: list[str] = field(default_factory=list)  # the cache context and call index of each pair
    step: list[int] = field(default_factory=list)

    def select(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        keep = np.isin(np.asarray(self.seed), np.asarray(list(seeds)))
        return np.asarray(self.x)[keep], np.asarray(self.y)[keep]


class PairRecorder:
    """A transformer observer: turns consecutive calls of each context into (x, y) pairs."""

    def __init__(self, pairs: Pairs, target: str, residual_names: Sequence[str]):
        if target not in TARGETS:
            raise TeaCacheError(f"target {target!r} is not one of {TARGETS}")
        self.pairs, self.target, self.residual_names = pairs, target, list(residual_names)
        self.seed = 0
        self._prev: dict[str, torch.Tensor] = {}

    def new_generation(self, seed: int) -> None:
        self.seed, self._prev = seed, {}

    def __call__(self, context: str, step: int, computed: bool, pool) -> None:
        import torch

        if self.target == "output":
            y_now = pool["output"].float()
        else:
            y_now = torch.cat([pool[n].float().flatten() for n in self.residual_names])
        prev = self._prev.get(context)
        if prev is not None and step > 0:
            l1_prev = pool["l1_prev"].double().sum().item()
            if l1_prev > 0:
                self.pairs.x.append(pool["l1_diff"].double().sum().item() / l1_prev)
                self.pairs.y.append(((y_now - prev).abs().sum() / prev.abs().sum().clamp_min(1e-30)).item())
                self.pairs.seed.append(self.seed)
                self.pairs.context.append(context)
                self.pairs.step.append(step)
        self._prev[context] = y_now


def fit(x: np.ndarray, y: np.ndarray, order: int = 4) -> np.ndarray:
    if not 1 <= order <= MAX_ORDER:
        raise TeaCacheError(f"order {order} must be 1 to {MAX_ORDER} (the paper: 1 already helps, 4 saturates)")
    if len(x) <= order:
        raise TeaCacheError(
            f"{len(x)} calibration pairs cannot fit an order-{order} polynomial: use more seeds or steps"
        )
    return np.polyfit(x, y, order)


def score(coefficients: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """R² and Pearson correlation of poly(x) against y."""
    pred = np.polyval(coefficients, x)
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    pearson = float(np.corrcoef(pred, y)[0, 1]) if len(x) > 1 and np.std(pred) > 0 and np.std(y) > 0 else float("nan")
    return {"r2": r2, "pearson": pearson, "n": int(len(x))}


def shape_warnings(coefficients: np.ndarray, x: np.ndarray) -> list[str]:
    """Non-monotonic or negative over the observed x range."""
    if len(x) == 0:
        return []
    grid = np.linspace(float(x.min()), float(x.max()), 256)
    values = np.polyval(coefficients, grid)
    warnings = []
    slope = np.polyval(np.polyder(coefficients), grid)
    if (slope < 0).any():
        warnings.append(
            f"the polynomial decreases over part of the observed range [{grid[0]:.4g}, {grid[-1]:.4g}] "
            f"(min slope {slope.min():.3g}): a larger signal change would count as a smaller one; "
            f"try a lower --order or more calibration data"
        )
    if (values < 0).any():
        warnings.append(
            f"the polynomial is negative over part of the observed range (min {values.min():.3g}): "
            f"negative terms lower the accumulated distance; consider --order 1 or clamping"
        )
    return warnings


def fit_warnings(fit: dict[str, float], holdout: dict[str, float]) -> list[str]:
    """A fit that explains little of the change (R² below :data:`MIN_R2`, held out where
    scored): TeaCache then accumulates the wrong steps' changes."""
    scored, where = (holdout, "held-out") if holdout else (fit, "fit")
    r2 = scored.get("r2", float("nan"))
    if r2 >= MIN_R2:
        return []
    return [f"the fit explains little of the change ({where} R² {r2:.3g} < {MIN_R2}): TeaCache would skip the "
            f"wrong steps; use more seeds or steps (--seeds, --steps), another target (--target residual), or "
            f"another policy (teacache-calibrate --policy magcache, or --policy schedule in teacache-eval)"]


@dataclass
class Calibration:
    coefficients: list[float]
    order: int
    target: str
    fit: dict[str, float]  # on the calibration seeds
    holdout: dict[str, float]  # on the held-out seeds
    x_range: list[float]
    warnings: list[str]
    seeds: list[int]
    holdout_seeds: list[int]
    seconds: float
    notes: list[str] = field(default_factory=list)


def calibrate(pairs: Pairs, seeds: Sequence[int], holdout_seeds: Sequence[int], order: int = 4,
              target: str = "output", seconds: float = 0.0) -> Calibration:
    x, y = pairs.select(seeds)
    coefficients = fit(x, y, order)
    xh, yh = pairs.select(holdout_seeds)
    scores = score(coefficients, x, y), score(coefficients, xh, yh) if len(xh) else {}
    return Calibration(
        coefficients=[float(c) for c in coefficients], order=order, target=target,
        fit=scores[0], holdout=scores[1], x_range=[float(x.min()), float(x.max())],
        warnings=shape_warnings(coefficients, x) + fit_warnings(*scores),
        seeds=list(seeds), holdout_seeds=list(holdout_seeds), seconds=seconds,
    )


def never_skips_note(pairs: Pairs, policy, steps: int) -> str | None:
    """One line when ``policy`` (TeaCache, bound: the new coefficients, the artifact's default
    threshold and rule) would compute every step of every calibration generation, replayed
    from the recorded signal changes; None when it would skip somewhere."""
    from ..families import ForcedSteps
    from ..runtime.criterion import is_forced, poly

    f, coefficients = policy.forced or ForcedSteps(), policy.coefficients  # unset knobs: the rule's defaults
    runs: dict[tuple, dict[int, float]] = {}
    for x, seed, context, step in zip(pairs.x, pairs.seed, pairs.context, pairs.step):
        runs.setdefault((seed, context), {})[step] = x
    seen = []
    for by_step in runs.values():
        acc = 0.0
        for k in range(steps):
            if k not in by_step or is_forced(k, steps, f.first, f.last, f.first_fraction):
                acc = 0.0
                continue
            y = poly(coefficients, by_step[k])
            y = max(y, 0.0) if policy.clamp else y
            acc += abs(y) if policy.accumulate == "abs" else y
            seen.append(acc)
            if acc < policy.threshold:
                return None
            acc = 0.0
    if not seen:
        return None
    return (f"at the default threshold {policy.threshold:g}, TeaCache would compute every step of these "
            f"{len(runs)} calibration generations (the accumulated change was {min(seen):.3g} to {max(seen):.3g}, "
            f"never below it): use a threshold above {min(seen):.3g} (--threshold / --policy-param threshold=...)")


def write_to_manifest(art_dir, calibration: Calibration) -> None:
    """New TeaCache coefficients into the manifest; the replaced set is kept in its history."""
    with artifact.writing(Path(art_dir)):
        _write_to_manifest(art_dir, calibration)


def _write_to_manifest(art_dir, calibration: Calibration) -> None:
    from ..families import check_coefficients
    from ..policies import artifact_policies

    manifest = artifact.Artifact.open(art_dir).manifest
    teacache = manifest.policy_data.setdefault("teacache", {})
    if "coefficients" in teacache:
        teacache.setdefault("history", []).append({
            "coefficients": list(teacache["coefficients"]), "source": teacache.get("source", ""),
            "variant": manifest.variant, "replaced_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    teacache["coefficients"] = check_coefficients(list(calibration.coefficients), "the calibration")
    teacache["source"] = (f"teacache-calibrate (order {calibration.order}, target {calibration.target}, "
                          f"held-out R² {calibration.holdout.get('r2', float('nan')):.3f})")
    artifact_policies(manifest)  # what the runtime would refuse is never written
    artifact.save_manifest(art_dir, manifest)


def restore_previous(art_dir) -> list[float]:
    """Undo the last calibration written to the manifest."""
    with artifact.writing(Path(art_dir)):
        return _restore_previous(art_dir)


def _restore_previous(art_dir) -> list[float]:
    manifest = artifact.Artifact.open(art_dir).manifest
    teacache = manifest.policy_data.get("teacache", {})
    if not teacache.get("history"):
        raise TeaCacheError(f"{art_dir}: the manifest holds no earlier TeaCache coefficients to restore")
    last = teacache["history"].pop()
    teacache["coefficients"] = list(last["coefficients"])
    teacache["source"] = last.get("source") or f"restored ({last.get('replaced_at', 'earlier')})"
    artifact.save_manifest(art_dir, manifest)
    return teacache["coefficients"]


# --- where the calibration generations come from ---------------------------------------------
def synthetic_driver(manifest, steps: int, sizes: dict[str, int] | None = None) -> Generate:
    """Random model inputs per seed and a plain Euler loop: works for every exported family.

    Real prompts give better coefficients; use a pipeline driver where one exists.
    """
    from ..dtypes import PRECISIONS
    from ..families import get_family
    from .sampling import check_sampling_inputs, sample

    family = get_family(manifest.family)
    sizes = sizes or {name: rng[1] for name, rng in manifest.axes.items()}
    check_sampling_inputs(manifest)
    dtype = PRECISIONS[manifest.precision]

    def generate(transformer, seed: int) -> torch.Tensor:
        inputs = family.example_inputs(manifest.config, sizes, dtype, seed=seed)
        return sample(transformer, inputs, family.timestep_scale, steps)

    return generate


def collect(transformer, generate: Generate, seeds: Sequence[int], target: str = "output",
            log: Callable[[str], None] = print, signal=None) -> Pairs:
    """Run ``generate`` uncached for each seed and record the (x, y) pairs (and, with
    ``signal``, a :class:`.suggest.SignalRuns`, each call's signal sums)."""
    pairs = Pairs()
    recorders = [PairRecorder(pairs, target, transformer.manifest.graphs["blocks"].output_names)]
    recorders += [signal] if signal is not None else []
    transformer.threshold = 0  # calibration needs every step computed
    transformer.observers.extend(recorders)
    try:
        for k, seed in enumerate(seeds, 1):
            for recorder in recorders:
                recorder.new_generation(seed)
            generate(transformer, seed)
            log(f"[calibrate] seed {seed} ({k}/{len(seeds)}): {len(pairs.x)} pairs")
    finally:
        for recorder in recorders:
            transformer.observers.remove(recorder)
    return pairs


def run_calibration(art_dir, generate: Generate | None = None, *, seeds: int = 8, holdout: int = 2,
                    steps: int = 20, order: int = 4, target: str = "output", backend: str = "onnxruntime",
                    device: str = "cpu", model_dir=None, log: Callable[[str], None] = print,
                    signal=None, first_seed: int = 0) -> Calibration:
    # Everything the fit needs, checked before the generations (minutes at real sizes).
    if seeds < 1 or holdout < 0:
        raise TeaCacheError(f"--seeds {seeds} / --holdout {holdout}: need seeds >= 1 and holdout >= 0")
    if not 1 <= order <= MAX_ORDER:
        raise TeaCacheError(f"--order {order} must be 1 to {MAX_ORDER} (the paper: 1 already helps, 4 saturates)")
    if steps < 2 or seeds * (steps - 1) <= order:
        raise TeaCacheError(f"--seeds {seeds} x --steps {steps} give {seeds * max(steps - 1, 0)} pairs of consecutive "
                            f"steps, too few for an order-{order} fit: use more seeds or steps")
    if target not in TARGETS:
        raise TeaCacheError(f"target {target!r} is not one of {TARGETS}")
    transformer = load_transformer(art_dir, backend=backend, threshold=0, device=device, model_dir=model_dir)
    generate = generate or synthetic_driver(transformer.manifest, steps)
    t0 = time.perf_counter()
    fit_seeds = list(range(first_seed, first_seed + seeds))
    held_out = list(range(first_seed + seeds, first_seed + seeds + holdout))
    pairs = collect(transformer, generate, fit_seeds + held_out, target, log, signal)
    result = calibrate(pairs, fit_seeds, held_out, order, target, time.perf_counter() - t0)
    from ..policies import TeaCache, artifact_policies

    art = artifact_policies(transformer.manifest)
    if art.name == "teacache":  # the threshold renders use by default
        note = never_skips_note(pairs, TeaCache(coefficients=result.coefficients).bind(art), steps)
        result.notes += [note] if note else []
    return result


def format_report(c: Calibration) -> str:
    lines = [
        f"coefficients (numpy.poly1d order): {', '.join(f'{v:.9g}' for v in c.coefficients)}",
        f"fit on seeds {c.seeds}: R² {c.fit['r2']:.4f}, Pearson {c.fit['pearson']:.4f}, {c.fit['n']} pairs",
    ]
    if c.holdout:
        lines.append(f"held out seeds {c.holdout_seeds}: R² {c.holdout['r2']:.4f}, "
                     f"Pearson {c.holdout['pearson']:.4f}, {c.holdout['n']} pairs")
    lines.append(f"observed x range [{c.x_range[0]:.4g}, {c.x_range[1]:.4g}], {c.seconds:.1f}s")
    lines += [f"warning: {w}" for w in c.warnings]
    lines += [f"note: {n}" for n in c.notes]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = options.Parser(prog="teacache-calibrate",
                       description="Calibrate a caching policy for an exported model: TeaCache's coefficients "
                                   "(default), MagCache's magnitude ratios (--policy magcache) or the computed "
                                   "steps of budgets (--policy budget).")
    p.add_argument("art_dir", help="artifact folder written by teacache-export")
    p.add_argument("--policy", choices=POLICIES, default="teacache",
                   help="teacache (default): fit the rescaling polynomial; magcache: record the residual's "
                        "per-step magnitude ratios per cache context; budget: measure the error of reusing each "
                        "step's residual at later steps and search the computed steps of each budget")
    p.add_argument("--seeds", type=options.integer(1, 10_000), default=None,
                   help="generations to fit on (default 8; --policy budget: 2, each measures every edge)")
    p.add_argument("--first-seed", type=options.integer(0, 2**31 - 1), default=0,
                   help="teacache and budget: seed of the first generation (default 0); the others follow it")
    p.add_argument("--holdout", type=options.integer(0, 10_000), default=2,
                   help="further generations to score the fit on (default 2)")
    p.add_argument("--steps", type=options.integer(2, 10_000), default=20,
                   help="sampling steps per generation (default 20; at least 2: pairs of consecutive steps)")
    p.add_argument("--order", type=options.integer(1, MAX_ORDER), default=None,
                   help="TeaCache: polynomial order (default 4; 1 already helps, 4 saturates)")
    p.add_argument("--target", choices=TARGETS, default=None,
                   help="TeaCache: y = rel-L1 of the model output (default) or of the cached residual")
    p.add_argument("--driver", default=None,
                   help="where generations come from: 'synthetic' (random inputs, Euler steps) or an "
                        "installed driver such as 'digits' (default: the installed driver that applies "
                        "to this artifact, else synthetic)")
    p.add_argument("--pipeline", metavar="PIPELINE_DIR",
                   help="run the generations through this diffusers pipeline folder, the artifact in place of "
                        "one of its transformers (--expert): the prompts, guidance and timesteps of real use")
    p.add_argument("--expert", choices=("transformer", "transformer_2"), default=None,
                   help="with --pipeline: the component the artifact replaces (default: transformer_2 for a "
                        "low-noise expert's variant such as Wan2.2-T2V-A14B-low, else transformer); an expert is "
                        "calibrated on the steps it runs, the other one running in PyTorch")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="with --pipeline: a prompt the pipeline encodes (repeatable; seed k takes prompt k mod n)")
    p.add_argument("--prompt-embeds", action="append", default=[], type=Path, metavar="FILE",
                   help="with --pipeline: a safetensors file of the pipeline's *_embeds keywords for one prompt "
                        "(repeatable), for pipelines without their text encoder")
    p.add_argument("--pipeline-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="with --pipeline: a pipeline argument (VALUE as JSON), e.g. height=480 num_frames=81")
    p.add_argument("--backend", default="onnxruntime", choices=options.BACKEND_NAMES)
    p.add_argument("--device", default="cpu", type=options.device, help="cpu, cuda or cuda:N")
    p.add_argument("--model-dir", help="backend torch: the exported model's folder (default: the manifest's source)")
    p.add_argument("--budget", metavar="N", type=options.integer(1, 10_000), action="append", default=[],
                   help="--policy budget: a number of computed steps per cache context to search (repeatable; "
                        "default: every N from 2 to --steps - 1, all from the same measurements)")
    p.add_argument("--objective", choices=("sum", "minimax"), default="sum",
                   help="--policy budget: least total error of the reuse segments (sum, default) or least "
                        "largest segment error, then least total (minimax)")
    p.add_argument("--reuse", metavar="MODE,MODE", type=reuse_modes, default=["residual"],
                   help="--policy budget: the reuse modes to measure and search for, comma-separated (default "
                        "residual; residual,taylor doubles the generations)")
    p.add_argument("--target-steps", metavar="N,M", type=options.step_counts, default=[],
                   help="suggest each policy's setting that computes N (and M ...) steps per cache context, "
                        "from these generations (printed and in --json)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--write-manifest", action="store_true",
                       help="store the result in the manifest (the policy's previous data stays in its history)")
    where.add_argument("--json", metavar="FILE", type=options.output_file,
                       help="write the calibration to this JSON file")
    where.add_argument("--restore", action="store_true", help="undo the last --write-manifest of --policy and exit")
    return p


def reuse_modes(text: str) -> list[str]:
    """Comma-separated reuse modes, e.g. residual,taylor."""
    from ..policies import REUSE_MODES

    values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in values if v not in REUSE_MODES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"{text!r} must name reuse modes of {sorted(REUSE_MODES)}, comma-separated")
    return values


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from . import budget_search, calibrate_magcache, suggest

        magcache, budget = args.policy == "magcache", args.policy == "budget"
        if args.policy != "teacache" and (args.order is not None or args.target is not None):
            raise TeaCacheError(f"--order and --target shape TeaCache's polynomial; --policy {args.policy} takes neither")
        if budget and args.restore:
            raise TeaCacheError("--restore undoes a TeaCache or MagCache calibration; a budget search replaces the one "
                                "for its step count: re-run teacache-calibrate --policy budget")
        if not budget and (args.budget or args.objective != "sum" or args.reuse != ["residual"]):
            raise TeaCacheError("--budget, --objective and --reuse belong to --policy budget")
        if magcache and args.first_seed:
            raise TeaCacheError("--first-seed applies to --policy teacache and budget; MagCache's calibration starts at 0")
        too_many = [n for n in [*args.budget, *args.target_steps] if n > args.steps]
        if too_many:
            raise TeaCacheError(f"{too_many[0]} computed steps exceed --steps {args.steps}: give at most {args.steps}")
        if args.restore:
            if magcache:
                print(f"restored MagCache ratios: {calibrate_magcache.restore_previous(args.art_dir)}")
            else:
                print(f"restored coefficients: {restore_previous(args.art_dir)}")
            return 0
        manifest = artifact.Artifact.open(args.art_dir).manifest
        if args.write_manifest:  # before minutes of generations, not after
            options.check_writable(Path(args.art_dir) / MANIFEST_NAME, options.output_file)
        steps = args.steps  # calls per cache context
        driver = None
        if args.pipeline:
            if args.driver:
                raise TeaCacheError("--pipeline runs the generations through the pipeline; leave out --driver")
            from .calibrate_pipeline import pipeline_driver

            generate, steps = pipeline_driver(args, manifest)
        else:
            if args.expert or args.prompt or args.prompt_embeds or args.pipeline_arg:
                raise TeaCacheError("--expert, --prompt, --prompt-embeds and --pipeline-arg go with --pipeline "
                                    "PIPELINE_DIR")
            driver = None if args.driver == "synthetic" else driver_for(manifest, args.driver)
            generate = driver.calibration(args.steps) if driver is not None else None
        run = dict(steps=steps, backend=args.backend, device=args.device, model_dir=args.model_dir)
        signal = suggest.SignalRuns() if args.target_steps and not magcache else None
        if budget:
            seeds = range(args.first_seed, args.first_seed + (args.seeds or 2))
            result = budget_search.run_budget_search(args.art_dir, generate, seeds=seeds, budgets=args.budget,
                                                     objective=args.objective, reuses=args.reuse, signal=signal,
                                                     **run)
            print(budget_search.format_report(result))
            data = result.as_json()
        elif magcache:
            result = calibrate_magcache.run_magcache_calibration(
                args.art_dir, generate or synthetic_driver(manifest, args.steps), seeds=args.seeds or 8,
                holdout=args.holdout, **run)
            print(calibrate_magcache.format_report(result, calibrate_magcache.settings_of(args.art_dir)))
            data = asdict(result)
        else:
            result = run_calibration(args.art_dir, generate, seeds=args.seeds or 8, holdout=args.holdout,
                                     order=args.order or 4, target=args.target or "output", signal=signal,
                                     first_seed=args.first_seed, **run)
            print(format_report(result))
            data = asdict(result)
        if args.target_steps:
            data["suggestions"] = suggestions(args.art_dir, manifest, result, signal, args.target_steps, steps)
            print(suggest.format_suggestions(data["suggestions"], steps))
        if args.write_manifest:
            if budget:
                source = (f"teacache-calibrate --policy budget ({len(result.seeds)} seed(s) from {result.seeds[0]}, "
                          f"driver {driver.name if driver else 'synthetic'})")
                budget_search.write_to_manifest(args.art_dir, result, source)
                print(f"written to {Path(args.art_dir) / 'manifest.json'} (budget searches for {steps} steps)")
            else:
                (calibrate_magcache.write_to_manifest if magcache else write_to_manifest)(args.art_dir, result)
                print(f"written to {Path(args.art_dir) / 'manifest.json'} (teacache-calibrate --policy {args.policy} "
                      f"--restore undoes it)")
        elif args.json:
            write_output(Path(args.json), strict_json.dumps(data, indent=2).encode())
            print(f"written to {args.json}")
        return 0

    return options.run("teacache-calibrate", body)


def suggestions(art_dir, manifest, result, signal, targets: Sequence[int], steps: int) -> dict:
    """Per target, each policy's suggested setting (see :mod:`.suggest`), as JSON data: TeaCache
    (replayed on the recorded signal), MagCache (where ratios are known) and Budget."""
    from .. import policies
    from . import suggest

    art = policies.artifact_policies(manifest, str(Path(art_dir) / MANIFEST_NAME))
    fitted = getattr(result, "coefficients", None)
    teacache = policies.TeaCache(threshold=1.0, coefficients=fitted).bind(art)  # threshold: replaced per try
    ratios = getattr(result, "mag_ratios", None)
    contexts = sorted(ratios) if ratios else sorted({c for _, c in signal.calls}) if signal else []
    try:
        magcache = policies.make("magcache", threshold=1.0, **({"mag_ratios": ratios} if ratios else {})).bind(art)
    except TeaCacheError:  # no ratios measured nor recorded
        magcache = None
    searched = getattr(result, "schedules", {})
    schedules = searched.get("residual") or next(iter(searched.values()), {})
    out = {}
    for target in targets:
        row = {}
        found = suggest.suggest_threshold(teacache, signal, target, steps)
        if found is not None:
            if fitted is not None:
                found["params"]["coefficients"] = list(fitted)
            row["teacache"] = found
        found = None if magcache is None else suggest.suggest_static_threshold(magcache, contexts, target, steps)
        if found is not None:
            if ratios:
                found["params"]["mag_ratios"] = ratios
            row["magcache"] = found
        row["budget"] = suggest.suggest_budget(schedules, target, steps)
        out[str(target)] = row
    return out


if __name__ == "__main__":
    sys.exit(main())
