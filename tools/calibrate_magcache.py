"""MagCache's magnitude ratios for a model: ``teacache-calibrate ART_DIR --policy magcache``.

Run the model uncached over the calibration generations and record, per cache context and step
i >= 1, how the cached residual (the blocks graph's output) changed from the same context's
step i - 1, per token (the L2 norm over the last, channel, dim)::

    ratio   = mean over tokens of ||r_i|| / ||r_{i-1}||
    std     = std over tokens of the same quotients
    cos_dis = mean over tokens of 1 - cos(r_i, r_{i-1})

(MagCache's own calibration prints the same three per step.)  Tokens whose previous residual is
all zero have no quotient and are left out.  Each generation gives one list per context, entry 0
the 1.0 pad; the fit is the mean over the calibration seeds, and the held-out seeds say how far
one generation's ratios stray from it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import artifact
from ..errors import TeaCacheError
from ..policies import MagCache, artifact_policies
from ..policies.magcache import DEFAULTS
from ..runtime.api import load_transformer
from .drivers import Generate

STATS = ("ratio", "std", "cos_dis")
PREVIEW_THRESHOLDS = (0.03, 0.06, 0.12, 0.24)  # the range MagCache's scripts use
DIGITS = 6  # decimals kept (MagCache prints 5)
# computes every step and reads nothing back: a one-entry list interpolates to 1.0 everywhere
UNCACHED = MagCache(mag_ratios=[1.0], threshold=0.0, max_skips=0, retention_ratio=0.0)


class RatioRecorder:
    """A transformer observer: per generation and context, each step's three statistics."""

    def __init__(self, residual_names: Sequence[str]):
        self.names = list(residual_names)
        self.runs: list[dict[str, dict[str, list[float]]]] = []
        self._prev: dict[str, list[torch.Tensor]] = {}

    def new_generation(self) -> None:
        self._prev = {}
        self.runs.append({})

    def __call__(self, context: str, step: int, computed: bool, pool) -> None:
        if not computed:
            raise TeaCacheError(f"MagCache calibration needs every step computed; step {step} of context "
                                f"{context!r} reused the residual")
        now = [pool[n].detach().double().reshape(-1, pool[n].shape[-1]) for n in self.names]
        run = self.runs[-1].setdefault(context, {k: [] for k in STATS})
        if len(run["ratio"]) != step:
            raise TeaCacheError(f"context {context!r} reached step {step} after {len(run['ratio'])} recorded steps: "
                                f"each calibration generation must call reset() (its driver does)")
        prev = self._prev.get(context)
        if prev is None:
            ratio, std, cos_dis = 1.0, 0.0, 0.0  # entry 0: nothing to compare with
        else:
            ratio, std, cos_dis = _compare(now, prev)
        for key, value in zip(STATS, (ratio, std, cos_dis)):
            run[key].append(value)
        self._prev[context] = now


def _compare(now: list[torch.Tensor], prev: list[torch.Tensor]) -> tuple[float, float, float]:
    quotients, distances = [], []
    for a, b in zip(now, prev):
        norm_a, norm_b = a.norm(dim=-1), b.norm(dim=-1)
        keep = norm_b > 0
        quotients.append(norm_a[keep] / norm_b[keep])
        distances.append(1.0 - torch.nn.functional.cosine_similarity(a[keep], b[keep], dim=-1, eps=1e-8))
    q, d = torch.cat(quotients), torch.cat(distances)
    if not len(q):
        return 1.0, 0.0, 0.0  # the previous residual is all zero: no change to measure
    std = q.std().item() if len(q) > 1 else 0.0
    return q.mean().item(), std, d.mean().item()


@dataclass
class MagCacheCalibration:
    """Per context (entry 0 = 1.0): the mean over the calibration seeds of each step's ratio,
    std and cosine distance; ``holdout`` the largest difference between a held-out
    generation's ratio and the mean (per context)."""

    steps: int
    mag_ratios: dict[str, list[float]]
    std: dict[str, list[float]]
    cos_dis: dict[str, list[float]]
    seeds: list[int]
    holdout_seeds: list[int]
    holdout: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    policy: str = "magcache"


def summarize(runs: Sequence[dict], seeds: Sequence[int], holdout_seeds: Sequence[int], steps: int,
              seconds: float = 0.0) -> MagCacheCalibration:
    """The calibration from one recorded run per seed (``seeds`` then ``holdout_seeds``)."""
    if len(runs) != len(seeds) + len(holdout_seeds):
        raise TeaCacheError(f"{len(runs)} recorded generations for {len(seeds) + len(holdout_seeds)} seeds")
    fit, held = runs[:len(seeds)], runs[len(seeds):]
    contexts = sorted(fit[0])
    for k, run in enumerate(runs):
        if sorted(run) != contexts or any(len(run[c]["ratio"]) != steps for c in contexts):
            seen = {c: len(run[c]["ratio"]) for c in sorted(run)}
            raise TeaCacheError(f"calibration generation {k} made {seen} calls per cache context; expected "
                                f"{steps} in each of {contexts}: the driver must run {steps} steps with the same "
                                f"contexts every generation")
    out = {key: {c: [round(float(v), DIGITS) for v in np.mean([r[c][key] for r in fit], axis=0)] for c in contexts}
           for key in STATS}
    holdout = {c: round(float(np.max(np.abs(np.array([r[c]["ratio"] for r in held]) - out["ratio"][c]))), DIGITS)
               for c in contexts} if held else {}
    return MagCacheCalibration(steps=steps, mag_ratios=out["ratio"], std=out["std"], cos_dis=out["cos_dis"],
                               seeds=list(seeds), holdout_seeds=list(holdout_seeds), holdout=holdout,
                               seconds=seconds)


def collect(transformer, generate: Generate, seeds: Sequence[int], log: Callable[[str], None] = print) -> list[dict]:
    """Run ``generate`` uncached for each seed; the recorded statistics per generation."""
    recorder = RatioRecorder(transformer.manifest.graphs["blocks"].output_names)
    transformer.policy = UNCACHED
    transformer.observers.append(recorder)
    try:
        for k, seed in enumerate(seeds, 1):
            recorder.new_generation()
            generate(transformer, seed)
            calls = {c: len(v["ratio"]) for c, v in recorder.runs[-1].items()}
            log(f"[calibrate] seed {seed} ({k}/{len(seeds)}): steps per cache context {calls}")
    finally:
        transformer.observers.remove(recorder)
    return recorder.runs


def run_magcache_calibration(art_dir, generate: Generate, *, seeds: int = 8, holdout: int = 2, steps: int = 20,
                             backend: str = "onnxruntime", device: str = "cpu", model_dir=None,
                             log: Callable[[str], None] = print) -> MagCacheCalibration:
    if seeds < 1 or holdout < 0:
        raise TeaCacheError(f"--seeds {seeds} / --holdout {holdout}: need seeds >= 1 and holdout >= 0")
    if steps < 2:
        raise TeaCacheError(f"--steps {steps}: MagCache's ratios compare consecutive steps, so at least 2")
    transformer = load_transformer(art_dir, backend=backend, device=device, model_dir=model_dir, policy=UNCACHED)
    t0 = time.perf_counter()
    fit_seeds, held_out = list(range(seeds)), list(range(seeds, seeds + holdout))
    runs = collect(transformer, generate, fit_seeds + held_out, log)
    return summarize(runs, fit_seeds, held_out, steps, time.perf_counter() - t0)


# --- what it reports --------------------------------------------------------------------------------
def settings_of(art_dir) -> dict:
    """The MagCache settings the artifact records (else the defaults): what the preview uses."""
    recorded = artifact_policies(artifact.Artifact.open(art_dir).manifest).data_for("magcache")
    return {k: recorded.get(k, v) for k, v in DEFAULTS.items()}


def format_report(c: MagCacheCalibration, settings: dict | None = None) -> str:
    settings = {**DEFAULTS, **(settings or {})}
    lines = [f"magnitude ratios per cache context at {c.steps} steps, mean over seeds {c.seeds} (entry 0 = 1.0):"]
    lines += [f"  {name}: {', '.join(f'{v:.5g}' for v in values)}" for name, values in c.mag_ratios.items()]
    lines += [f"  {name} cosine distance: {', '.join(f'{v:.3g}' for v in values[1:])}"
              for name, values in c.cos_dis.items()]
    if c.holdout:
        worst = ", ".join(f"{name} {v:.3g}" for name, v in c.holdout.items())
        lines.append(f"held out seeds {c.holdout_seeds}: a generation's ratio differs from the mean by at most {worst}")
    per = []
    for t in PREVIEW_THRESHOLDS:
        policy = MagCache(c.mag_ratios, threshold=t, max_skips=settings["max_skips"],
                          retention_ratio=settings["retention_ratio"])
        per.append(f"{t:g} -> " + ", ".join(f"{name} {len(policy.schedule(c.steps, name))}" for name in c.mag_ratios))
    lines.append(f"computed steps of {c.steps} at max_skips {settings['max_skips']}, retention_ratio "
                 f"{settings['retention_ratio']:g}, by threshold: " + "; ".join(per))
    lines.append(f"{c.seconds:.1f}s")
    return "\n".join(lines)


# --- where it goes ----------------------------------------------------------------------------------
def manifest_data(c: MagCacheCalibration, previous: dict) -> dict:
    """The manifest's new MagCache entry: the ratios and statistics, the settings recorded
    before (a family's published threshold stays), the replaced entry in the history."""
    data = {k: v for k, v in previous.items() if k in ("threshold", "max_skips", "retention_ratio")}
    data.update(mag_ratios=c.mag_ratios, std=c.std, cos_dis=c.cos_dis, steps=c.steps,
                source=f"teacache-calibrate ({c.steps} steps, {len(c.seeds)} seeds)")
    old = {k: v for k, v in previous.items() if k != "history"}
    data["history"] = [*previous.get("history", []), *([old] if "mag_ratios" in old else [])]
    return data


def write_to_manifest(art_dir, c: MagCacheCalibration) -> None:
    with artifact.writing(Path(art_dir)):
        manifest = artifact.Artifact.open(art_dir).manifest
        manifest.policy_data["magcache"] = manifest_data(c, manifest.policy_data.get("magcache", {}))
        artifact_policies(manifest)  # what the runtime would refuse is never written
        artifact.save_manifest(art_dir, manifest)


def restore_previous(art_dir) -> str:
    """Undo the last MagCache calibration written to the manifest; what is back (its source)."""
    with artifact.writing(Path(art_dir)):
        manifest = artifact.Artifact.open(art_dir).manifest
        magcache = manifest.policy_data.get("magcache", {})
        if not magcache.get("history"):
            raise TeaCacheError(f"{art_dir}: the manifest holds no earlier MagCache ratios to restore")
        history = magcache["history"]
        manifest.policy_data["magcache"] = {**history.pop(), "history": history}
        artifact.save_manifest(art_dir, manifest)
        return manifest.policy_data["magcache"].get("source", "earlier ratios")
