"""``teacache-calibrate --target-steps 7,10``: the setting of each policy that computes that many
steps per cache context, suggested from the calibration's own uncached generations.

- TeaCache: its rule (the artifact's forced steps, accumulation, eps, clamp; the coefficients
  given) is replayed on the signal sums the calibration generations recorded, for thresholds
  on a grid refined by bisection; the suggestion is the middle of the threshold range whose
  mean computed steps (over seeds and cache contexts) come closest to the target.  A cached
  generation's own signal differs a little from the uncached one, so a render may compute a
  step more or less.
- MagCache: static, so each threshold's schedule is known exactly from the ratios (this
  calibration's under ``--policy magcache``, else the artifact's); same search over thresholds.
- Budget: ``n`` is the target itself; the searched schedule is shown where the search ran.

Any policy with a threshold (TeaCache, MagCache, ...) replays the same way
(:func:`suggest_threshold`); ``teacache_trt.tools.calibrate.suggestions`` lists the policies suggested.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..policies import Features

GRID = 200  # thresholds tried per target before the bisection


@dataclass
class SignalRuns:
    """Per (seed, context): each call's signal sums (None where it had no previous signal)."""

    calls: dict[tuple[int, str], list[tuple[float, float, int] | None]] = field(default_factory=dict)
    seed: int = 0

    def new_generation(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, context: str, step: int, computed: bool, pool) -> None:
        """A transformer observer (every call computed: the uncached generations)."""
        run = self.calls.setdefault((self.seed, context), [])
        if step == 0:
            run.clear()
            run.append(None)
            return
        run.append((pool["l1_diff"].double().sum().item(), pool["l1_prev"].double().sum().item(),
                    pool["signal"].numel()))


def replayed_computed(policy, runs: SignalRuns, steps: int) -> float:
    """Mean computed calls per (seed, context) of ``policy`` (bound) replayed on ``runs``."""
    counts = []
    features = Features()
    features.plan = runs  # any object fixed over the replay: the state builds its rule once
    features.group_of_row = np.zeros(1, dtype=np.int32)
    for calls in runs.calls.values():
        if len(calls) != steps:
            continue
        state = policy.start(steps, "replay", 1)
        has = np.zeros(1, dtype=np.uint8)
        computed = 0
        for k, sums in enumerate(calls):
            if sums is None:
                features.l1_diff = features.l1_prev = None
            else:
                features.l1_diff, features.l1_prev = np.array([sums[0]]), np.array([sums[1]])
                features.elements_per_row = sums[2]
            flags = state.decide(k, features, 1 - has)
            has |= flags
            computed += int(flags[0])
        counts.append(computed)
    return float(np.mean(counts)) if counts else math.nan


def suggest_threshold(policy, runs: SignalRuns | None, target: int, steps: int) -> dict[str, Any] | None:
    """The threshold of ``policy`` (bound; any policy with a threshold) whose replayed mean
    computed steps come closest to ``target``; None without recorded generations."""
    if runs is None or not runs.calls:
        return None
    found = _threshold_for(lambda p: replayed_computed(p, runs, steps), policy, target)
    return {**found, "note": "replayed on the uncached calibration generations"}


def static_computed(policy, contexts, steps: int) -> float:
    """Mean computed calls per context of a static policy (bound): its schedule, exactly."""
    return float(np.mean([policy.start(steps, c, 1).table.sum() for c in contexts]))


def suggest_static_threshold(policy, contexts, target: int, steps: int) -> dict[str, Any] | None:
    """The threshold of a static ``policy`` (bound, e.g. MagCache) whose schedules over
    ``contexts`` compute closest to ``target`` steps on average: exact, nothing is replayed."""
    if not contexts:
        return None
    found = _threshold_for(lambda p: static_computed(p, contexts, steps), policy, target)
    return {**found, "note": "exact: the schedule depends on the step count only"}


def _threshold_for(computed_by: Callable, policy, target: int) -> dict[str, Any]:
    cache: dict[float, float] = {}

    def computed(t: float) -> float:
        if t not in cache:
            cache[t] = computed_by(policy.replace(threshold=t))
        return cache[t]

    top = 1.0
    while computed(top) > computed(top * 10) and top < 1e12:  # past the largest accumulated change
        top *= 10
    top *= 10
    grid = np.concatenate([[0.0], np.geomspace(top * 1e-6, top, GRID)])
    values = [computed(float(t)) for t in grid]
    best = min(range(len(grid)), key=lambda i: (abs(values[i] - target), -values[i]))
    hit = values[best]
    # the range of thresholds giving that mean: widen from the grid point by bisection both ways
    lo = _edge(computed, hit, float(grid[best - 1]) if best else 0.0, float(grid[best]))
    hi = _edge(computed, hit, float(grid[min(best + 1, len(grid) - 1)]), float(grid[best]))
    threshold = float(f"{math.sqrt(lo * hi) if lo > 0 else (lo + hi) / 2:.3g}")
    if computed(threshold) != hit:
        threshold = float(grid[best])
    return {"params": {"threshold": threshold}, "threshold_range": [lo, hi], "computed_steps": hit}


def _edge(computed: Callable[[float], float], value: float, outside: float, inside: float) -> float:
    """The threshold between ``outside`` and ``inside`` where ``computed`` stops being ``value``
    (``inside`` has it), to 3 significant digits."""
    if computed(outside) == value:
        return outside
    for _ in range(40):
        mid = (outside + inside) / 2
        if computed(mid) == value:
            inside = mid
        else:
            outside = mid
        if abs(outside - inside) <= 1e-3 * abs(inside):
            break
    return inside


def suggest_budget(schedules: dict[int, list[int]], target: int, steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"params": {"n": target}, "computed_steps": float(target)}
    if target in schedules:
        out["steps"] = list(schedules[target])
    else:
        out["note"] = "no search for this n: uniform spacing until teacache-calibrate --policy budget searches it"
    return out


def format_suggestions(suggestions: dict[str, dict[str, dict]], steps: int) -> str:
    lines = []
    for target, by_policy in suggestions.items():
        lines.append(f"settings for {target} computed steps of {steps} per cache context:")
        for name, s in by_policy.items():
            params = ", ".join(f"{k}={v}" if len(str(v)) <= 40 else f"{k}=(this calibration's)"
                               for k, v in s["params"].items())
            extra = ""
            if "threshold_range" in s:
                lo, hi = s["threshold_range"]
                how = "exact" if s.get("note", "").startswith("exact") else "replayed"
                extra = f" (thresholds {lo:.3g} to {hi:.3g} give {s['computed_steps']:.2f} computed, {how})"
            if "steps" in s:
                extra = f" (steps {s['steps']})"
            if "note" in s and "threshold_range" not in s:
                extra += f" ({s['note']})"
            lines.append(f"  --policy {name} {params}{extra}")
    return "\n".join(lines)
