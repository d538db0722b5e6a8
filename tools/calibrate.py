"""Fit TeaCache coefficients for a model: ``teacache-calibrate ART_DIR``
(``--policy magcache``: MagCache's magnitude ratios instead, see :mod:`.calibrate_magcache`).

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
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch

import numpy as np

from .. import artifact, options
from ..errors import TeaCacheError
from ..files import write_output
from ..manifest import MANIFEST_NAME, load_manifest, save_manifest
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
POLICIES = ("teacache", "magcache")  # what teacache-calibrate calibrates


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

    manifest = load_manifest(art_dir)
    teacache = manifest.policy_data.setdefault("teacache", {})
    if "coefficients" in teacache:
        teacache.setdefault("history", []).append({
            "coefficients": list(teacache["coefficients"]), "source": teacache.get("source", ""),
            "variant": manifest.variant, "replaced_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    teacache["coefficients"] = check_coefficients(list(calibration.coefficients), "the calibration")
    teacache["source"] = (f"teacache-calibrate (order {calibration.order}, target {calibration.target}, "
                          f"held-out R² {calibration.holdout.get('r2', float('nan')):.3f})")
    artifact_policies(manifest)  # what the runtime would refuse is never written
    save_manifest(art_dir, manifest)


def restore_previous(art_dir) -> list[float]:
    """Undo the last calibration written to the manifest."""
    with artifact.writing(Path(art_dir)):
        return _restore_previous(art_dir)


def _restore_previous(art_dir) -> list[float]:
    manifest = load_manifest(art_dir)
    teacache = manifest.policy_data.get("teacache", {})
    if not teacache.get("history"):
        raise TeaCacheError(f"{art_dir}: the manifest holds no earlier TeaCache coefficients to restore")
    last = teacache["history"].pop()
    teacache["coefficients"] = list(last["coefficients"])
    teacache["source"] = last.get("source") or f"restored ({last.get('replaced_at', 'earlier')})"
    save_manifest(art_dir, manifest)
    return teacache["coefficients"]


def write_json(path, calibration: Calibration) -> None:
    write_output(Path(path), json.dumps(asdict(calibration), indent=2).encode())


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

    def generate(transformer, seed: int) -> None:
        inputs = family.example_inputs(manifest.config, sizes, dtype, seed=seed)
        sample(transformer, inputs, family.timestep_scale, steps)

    return generate


def collect(transformer, generate: Generate, seeds: Sequence[int], target: str = "output",
            log: Callable[[str], None] = print) -> Pairs:
    """Run ``generate`` uncached for each seed and record the (x, y) pairs."""
    pairs = Pairs()
    recorder = PairRecorder(pairs, target, transformer.manifest.graphs["blocks"].output_names)
    transformer.threshold = 0  # calibration needs every step computed
    transformer.observers.append(recorder)
    try:
        for k, seed in enumerate(seeds, 1):
            recorder.new_generation(seed)
            generate(transformer, seed)
            log(f"[calibrate] seed {seed} ({k}/{len(seeds)}): {len(pairs.x)} pairs")
    finally:
        transformer.observers.remove(recorder)
    return pairs


def run_calibration(art_dir, generate: Generate | None = None, *, seeds: int = 8, holdout: int = 2,
                    steps: int = 20, order: int = 4, target: str = "output", backend: str = "onnxruntime",
                    device: str = "cpu", model_dir=None, log: Callable[[str], None] = print) -> Calibration:
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
    fit_seeds = list(range(seeds))
    held_out = list(range(seeds, seeds + holdout))
    pairs = collect(transformer, generate, fit_seeds + held_out, target, log)
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
                                   "(default) or MagCache's magnitude ratios (--policy magcache).")
    p.add_argument("art_dir", help="artifact folder written by teacache-export")
    p.add_argument("--policy", choices=POLICIES, default="teacache",
                   help="teacache (default): fit the rescaling polynomial; magcache: record the residual's "
                        "per-step magnitude ratios per cache context")
    p.add_argument("--seeds", type=options.integer(1, 10_000), default=8, help="generations to fit on (default 8)")
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
    p.add_argument("--backend", default="onnxruntime", choices=options.BACKEND_NAMES)
    p.add_argument("--device", default="cpu", type=options.device, help="cpu, cuda or cuda:N")
    p.add_argument("--model-dir", help="backend torch: the exported model's folder (default: the manifest's source)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--write-manifest", action="store_true",
                       help="store the result in the manifest (the policy's previous data stays in its history)")
    where.add_argument("--json", metavar="FILE", type=options.output_file,
                       help="write the calibration to this JSON file")
    where.add_argument("--restore", action="store_true", help="undo the last --write-manifest of --policy and exit")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from . import calibrate_magcache

        magcache = args.policy == "magcache"
        if magcache and (args.order is not None or args.target is not None):
            raise TeaCacheError("--order and --target shape TeaCache's polynomial; --policy magcache records "
                                "ratios of the cached residual and takes neither")
        if args.restore:
            if magcache:
                print(f"restored MagCache ratios: {calibrate_magcache.restore_previous(args.art_dir)}")
            else:
                print(f"restored coefficients: {restore_previous(args.art_dir)}")
            return 0
        manifest = load_manifest(args.art_dir)
        if args.write_manifest:  # before minutes of generations, not after
            options.check_writable(Path(args.art_dir) / MANIFEST_NAME, options.output_file)
        driver = None if args.driver == "synthetic" else driver_for(manifest, args.driver)
        generate = driver.calibration(args.steps) if driver is not None else None
        run = dict(seeds=args.seeds, holdout=args.holdout, steps=args.steps, backend=args.backend,
                   device=args.device, model_dir=args.model_dir)
        if magcache:
            result = calibrate_magcache.run_magcache_calibration(
                args.art_dir, generate or synthetic_driver(manifest, args.steps), **run)
            print(calibrate_magcache.format_report(result, calibrate_magcache.settings_of(args.art_dir)))
            save, dump = calibrate_magcache.write_to_manifest, calibrate_magcache.write_json
        else:
            result = run_calibration(args.art_dir, generate, order=args.order or 4, target=args.target or "output",
                                     **run)
            print(format_report(result))
            save, dump = write_to_manifest, write_json
        if args.write_manifest:
            save(args.art_dir, result)
            print(f"written to {Path(args.art_dir) / 'manifest.json'} (teacache-calibrate --policy {args.policy} "
                  f"--restore undoes it)")
        elif args.json:
            dump(args.json, result)
            print(f"written to {args.json}")
        return 0

    return options.run("teacache-calibrate", body)


if __name__ == "__main__":
    sys.exit(main())
