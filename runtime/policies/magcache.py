"""``MagCache``: skip while the predicted drift of the residual's magnitude stays small.

MagCache (Ma et al. 2025, "Fast Video Generation with Magnitude-Aware Cache") measures offline,
per step i of each cache context, ``mag_ratios[i]``: the mean over tokens of the cached
residual's L2 norm divided by the previous step's (entry 0 is a 1.0 pad).  Per cache context
of a generation of N steps::

    the first int(N * retention_ratio) steps compute (and step 0 always: nothing is cached)
    then, at step i:   ratio *= mag_ratios[i];  steps += 1;  err += |1 - ratio|
        skip  if err < threshold and steps <= max_skips
        else  compute, and ratio, steps, err = 1.0, 0, 0.0

The current step's ratio enters before the decision, so after a computed step the product
starts over relative to that step.  No step is forced at the end.  Decisions depend only on
the step index and the ratios: the whole schedule of a context is fixed when its generation
starts, and nothing is read back from the graphs per step (a static policy).

Where MagCache's own scripts differ from each other, this rule takes one reading: retention
rounds down per context (``int``, as the Qwen-Image, Wan and HunyuanVideo scripts; FLUX's
rounds half up); the test is strict (``err < threshold``: threshold 0 never skips, as FLUX's
``<=`` would where a ratio is exactly 1.0); FLUX's forced step 11 of 28 and FramePack's per-step
gate are not reproduced; every generation starts from fresh accumulators.  Ratios measured at
another step count are resampled per context by nearest index as the scripts do
(:func:`interpolate`).

Every setting left None is the artifact's (``policy_data["magcache"]``: a family's published
ratios and settings, or ``teacache-calibrate --policy magcache``), then :data:`DEFAULTS`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..families.magcache_ratios import per_context
from ..errors import TeaCacheError
from .base import ArtifactPolicies, Policy, StaticState, check_threshold, register, suggest_above

# Settings used when neither given nor recorded by the artifact: MagCache's Wan2.1 defaults.
DEFAULTS = {"threshold": 0.12, "max_skips": 2, "retention_ratio": 0.2}
SETTINGS = tuple(DEFAULTS)
CALIBRATE = "teacache-calibrate ART --policy magcache --write-manifest"


def interpolate(values: Sequence[float], num_steps: int) -> list[float]:
    """``values`` resampled to ``num_steps`` entries by nearest index, as MagCache's scripts do:
    entry i reads ``round(i * ((L - 1) / (num_steps - 1)))``, the quotient taken first and the
    product in float64, rounded half to even (numpy's rule: 50 -> 25 entries gives 24.5 at
    i = 12, which reads entry 24).  Entry 0 maps to entry 0; one step reads entry 0."""
    n, length = num_steps, len(values)
    if n == length:
        return list(values)
    if n == 1:
        return [values[0]]
    index = np.round(np.arange(n, dtype=np.float64) * ((length - 1) / (n - 1))).astype(np.int64)
    return [values[i] for i in index]


def _sequence(values, what: str) -> tuple[float, ...]:
    """One context's ratios: finite numbers > 0, entry 0 the 1.0 pad."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (list, tuple)):
        raise TeaCacheError(f"{what} {values!r:.100} must be a list of numbers (entry 0 = 1.0)")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
           or not math.isfinite(v) or v <= 0]
    if not values or bad:
        raise TeaCacheError(f"{what} {list(values)!r:.200} must be a non-empty list of finite numbers > 0 "
                            f"(magnitude ratios of consecutive steps; entry 0 = 1.0)")
    if values[0] != 1.0:
        raise TeaCacheError(
            f"{what}[0] is {values[0]!r}, but entry 0 is the first step's pad and must be 1.0: a list as "
            f"MagCache's scripts print it (from step 1, no pad) goes through MagCache.from_upstream(list, "
            f"interleaved=True for cond/uncond pairs, False for one call per step)")
    return tuple(float(v) for v in values)


def check_ratios(values, what: str = "mag_ratios") -> tuple[float, ...] | dict[str, tuple[float, ...]]:
    """One sequence for every cache context, or ``{context: sequence}``."""
    if isinstance(values, Mapping):
        if not values:
            raise TeaCacheError(f"{what} {{}} names no cache context: give one list, or {{\"cond\": [...], ...}}")
        bad = [k for k in values if not isinstance(k, str) or not k]
        if bad:
            raise TeaCacheError(f"{what} keys {bad!r:.100} must be cache context names such as 'cond'")
        return {k: _sequence(v, f"{what}[{k!r}]") for k, v in values.items()}
    return _sequence(values, what)


def _as_json(ratios):
    if ratios is None:
        return None
    return {k: list(v) for k, v in ratios.items()} if isinstance(ratios, dict) else list(ratios)


def check_max_skips(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise TeaCacheError(f"max_skips {value!r} must be an integer >= 0: the most consecutive skipped steps "
                            f"of a context (0 never skips)")
    return int(value)


def check_retention_ratio(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise TeaCacheError(f"retention_ratio {value!r} must be a number in [0, 1]: the fraction of each "
                            f"context's first steps that always compute (MagCache uses 0.1 to 0.2)")
    return float(value)


@register
class MagCache(Policy):
    """MagCache (Ma et al. 2025); None settings: the artifact's, then :data:`DEFAULTS`."""

    name = "magcache"
    static = True
    has_threshold = True
    data_keys = frozenset({"source", "steps", "std", "cos_dis", "history"})

    def __init__(self, mag_ratios=None, threshold=None, max_skips=None, retention_ratio=None):
        self.mag_ratios = None if mag_ratios is None else check_ratios(mag_ratios)
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.max_skips = None if max_skips is None else check_max_skips(max_skips)
        self.retention_ratio = None if retention_ratio is None else check_retention_ratio(retention_ratio)
        self._set_params(mag_ratios=_as_json(self.mag_ratios), threshold=self.threshold,
                         max_skips=self.max_skips, retention_ratio=self.retention_ratio)

    @classmethod
    def from_upstream(cls, ratios: Sequence[float], interleaved: bool = True, **settings) -> "MagCache":
        """From a list as MagCache's scripts print and publish it (from step 1 on, no pad):
        ``interleaved=True`` for true-CFG models whose list alternates cond and uncond
        entries (Qwen-Image, Wan: ``[c1, u1, c2, u2, ...]``, 2N - 2 values for N steps), which
        become ``{"cond": [1.0, c1, c2, ...], "uncond": [1.0, u1, u2, ...]}`` (the names
        diffusers pipelines give their branches); ``interleaved=False`` for one call per step
        (FLUX, HunyuanVideo: N - 1 values), which becomes ``[1.0, r1, r2, ...]`` for every
        context.  ``settings``: threshold, max_skips, retention_ratio."""
        if not isinstance(interleaved, bool):
            raise TeaCacheError(f"interleaved={interleaved!r} must be True (cond/uncond pairs) or False")
        return cls(mag_ratios=per_context(ratios, interleaved), **settings)

    # --- the artifact's part ------------------------------------------------------------------
    def bind(self, artifact: ArtifactPolicies) -> "MagCache":
        bound = super().bind(artifact)
        missing = {k: v for k, v in DEFAULTS.items() if getattr(bound, k) is None}
        return bound.replace(**missing) if missing else bound

    def _check_bound(self, artifact: ArtifactPolicies) -> None:
        if self.mag_ratios is None:
            raise TeaCacheError(
                f"{artifact.where} records no MagCache ratios (none are published for this model, or it was "
                f"exported before they shipped): run {CALIBRATE}, re-export with --force, or pass "
                f"MagCache(mag_ratios=[...]) / MagCache.from_upstream([...], interleaved=...)")

    @classmethod
    def check_data(cls, data: Mapping[str, Any], where: str) -> None:
        try:
            super().check_data(data, where)
        except TeaCacheError as exc:
            message = str(exc)
            raise TeaCacheError(message if message.startswith(where) else f"{where}: {message}") from None
        if not isinstance(data.get("source", ""), str):
            raise TeaCacheError(f"{where}: magcache source {data['source']!r} must be a string")
        steps = data.get("steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise TeaCacheError(f"{where}: magcache steps {steps!r} must be an integer >= 1 (the calibration's)")
        for key in ("std", "cos_dis"):
            if key in data:
                _check_stats(data[key], f"{where}: magcache {key}")
        history = data.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise TeaCacheError(f"{where}: magcache history {history!r:.100} must be a list of objects")
        for k, h in enumerate(history):
            if "history" in h:
                raise TeaCacheError(f"{where}: magcache history[{k}] holds a history of its own")
            cls.check_data(h, f"{where}: magcache history[{k}]")

    def describe(self) -> str:
        return "magcache" if self.threshold is None else f"magcache threshold {self.threshold:g}"

    # --- decisions --------------------------------------------------------------------------
    def ratios_for(self, num_steps: int, context: str) -> list[float]:
        """The ratios ``context`` uses in a generation of ``num_steps`` steps (interpolated)."""
        ratios = self._bound_ratios()
        if isinstance(ratios, dict):
            if context not in ratios:
                raise TeaCacheError(
                    f"MagCache has ratios for the cache contexts {sorted(ratios)}, but this generation calls the "
                    f"transformer in context {context!r}: give ratios for it (mag_ratios={{{context!r}: [...], "
                    f"...}}), one list for every context, or calibrate with this pipeline ({CALIBRATE})")
            ratios = ratios[context]
        return interpolate(ratios, num_steps)

    def schedule(self, num_steps: int, context: str) -> list[int]:
        ratios = self.ratios_for(num_steps, context)
        threshold, max_skips = self.threshold, self.max_skips
        retained = int(num_steps * self.retention_ratio)
        computed, ratio, since, err = [], 1.0, 0, 0.0
        for i in range(num_steps):
            if i < retained or i == 0:  # retention (accumulators untouched), or nothing cached yet
                computed.append(i)
                continue
            ratio *= ratios[i]
            since += 1
            err += abs(1.0 - ratio)
            if not (err < threshold and since <= max_skips):
                computed.append(i)
                ratio, since, err = 1.0, 0, 0.0
        return computed

    def start(self, num_steps, context, n_groups, thresholds=None) -> "MagCacheState":
        state = super().start(num_steps, context, n_groups, thresholds)
        per_group = [self.threshold] * n_groups if thresholds is None else [float(t) for t in thresholds]
        return MagCacheState(state.table, state.describe, self, self.ratios_for(num_steps, context), per_group)

    def _bound_ratios(self):
        if self.mag_ratios is None or any(getattr(self, k) is None for k in SETTINGS):
            raise TeaCacheError(f"{self!r} leaves settings to an artifact: bind it to one first (transformer.policy "
                                f"= ... does), or give mag_ratios")
        return self.mag_ratios


class MagCacheState(StaticState):
    """The fixed schedule, and what the never-skipped report needs."""

    def __init__(self, table, describe, policy: MagCache, ratios: list[float], thresholds: list[float]):
        super().__init__(table, describe)
        self.policy, self.ratios, self.thresholds = policy, ratios, thresholds

    def never_skipped(self, group, rels):
        if not self.table[:, group].all():
            return super().never_skipped(group, rels)
        n, p, threshold = len(self.ratios), self.policy, self.thresholds[group]
        if threshold <= 0:
            return None  # threshold 0 is meant to compute every step
        what = f"magcache threshold {threshold:g} never skipped in {n} steps"
        if p.max_skips == 0:
            return f"{what}: max_skips 0 allows no skipped step; use max_skips 1 or more"
        retained = max(int(n * p.retention_ratio), 1)
        if retained >= n:
            return (f"{what}: retention_ratio {p.retention_ratio:g} computes every step; lower it "
                    f"(MagCache uses 0.1-0.2)")
        # Every step computed, so each step after the retained ones was judged on its own ratio.
        errors = [abs(1.0 - r) for r in self.ratios[retained:]]
        low, high = min(errors), max(errors)
        suggestion = suggest_above(sorted(errors)[len(errors) // 2], low)
        return (f"{what}: the predicted error |1 - ratio| was {low:.3g} to {high:.3g} at its {len(errors)} steps "
                f"after the first {retained}, never below the threshold; try threshold {suggestion:g} or calibrate "
                f"({CALIBRATE})")




def _check_stats(values, where: str) -> None:
    """Per-step statistics (std, cosine distance): a list of numbers >= 0, or one per context."""
    lists = values.values() if isinstance(values, Mapping) else [values]
    for v in lists:
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              and math.isfinite(x) and x >= 0 for x in v):
            raise TeaCacheError(f"{where} {values!r:.100} must be a list of finite numbers >= 0 (or one per context)")
