"""``TeaCache``: skip while the accumulated, rescaled change of the signal stays below a threshold.

Per call of a cache context, for each decision group (see :mod:`..criterion` for the exact
arithmetic, shared with the native and CUDA builds)::

    d   = mean|s - s_prev| / (mean|s_prev| + eps)    (means over the group's elements)
    acc = acc + poly(d)                               (or |poly(d)| with accumulate="abs")
    skip  if acc < threshold and the call is not forced, else compute and acc = 0

Every setting left None is the artifact's: the default policy's threshold, the coefficients
(the variant's, ``--coefficients`` or a calibration) and the variant's forced steps,
accumulation, eps and clamp.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from ..errors import TeaCacheError
from ..families import ForcedSteps, check_accumulate, check_coefficients, check_eps
from ..runtime.criterion import Rule, decide_groups, is_forced, poly
from .base import SIGNAL_SUMS, ArtifactPolicies, Features, Policy, PolicyState, check_threshold, register, suggest_above


def _forced(value) -> ForcedSteps:
    if isinstance(value, ForcedSteps):
        return value
    if not isinstance(value, Mapping):
        raise TeaCacheError(f"forced {value!r:.100} must be ForcedSteps(first, last, first_fraction) or "
                            f"{{\"first\": 1, \"last\": true, \"first_fraction\": 0.0}}")
    unknown = sorted(set(value) - {f.name for f in dataclasses.fields(ForcedSteps)})
    if unknown:
        raise TeaCacheError(f"forced {dict(value)!r} has unknown keys {unknown}: it takes first, last, first_fraction")
    return ForcedSteps(**value)


@register
class TeaCache(Policy):
    """TeaCache (Liu et al. 2024, "Timestep Embedding Tells"); None settings: the artifact's."""

    name = "teacache"
    needs = frozenset({SIGNAL_SUMS})
    has_threshold = True
    data_keys = frozenset({"source", "history"})

    def __init__(self, threshold=None, coefficients=None, *, forced=None, accumulate=None, eps=None, clamp=None):
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.coefficients = None if coefficients is None else tuple(check_coefficients(coefficients, "TeaCache"))
        self.forced = None if forced is None else _forced(forced)
        self.accumulate = None if accumulate is None else check_accumulate(accumulate)
        self.eps = None if eps is None else check_eps(eps)
        if clamp is not None and not isinstance(clamp, bool):  # clamp="no" is truthy: it would clamp
            raise TeaCacheError(f"clamp {clamp!r} must be True or False (None: the artifact's setting)")
        self.clamp = clamp
        self._set_params(threshold=self.threshold, coefficients=None if coefficients is None else list(self.coefficients),
                         forced=None if self.forced is None else dataclasses.asdict(self.forced),
                         accumulate=self.accumulate, eps=self.eps, clamp=self.clamp)
        self._coefficients = None if coefficients is None else np.array(self.coefficients, dtype=np.float64)

    def _check_bound(self, artifact: ArtifactPolicies) -> None:
        if self.coefficients is None:
            raise TeaCacheError(f"{artifact.where} records no TeaCache coefficients: pass "
                                f"TeaCache(coefficients=[...]) (numpy.poly1d order) or run teacache-calibrate")
        if self.threshold is None:
            raise TeaCacheError(f"{artifact.where}'s default policy is {artifact.name!r}, not teacache: give "
                                f"TeaCache a threshold, e.g. TeaCache(threshold=0.2)")

    @classmethod
    def check_data(cls, data: Mapping[str, Any], where: str) -> None:
        if "coefficients" in data:  # the polynomial's own message, also for a null one
            check_coefficients(data["coefficients"], f"{where}: teacache")
        super().check_data(data, where)
        if not isinstance(data.get("source", ""), str):
            raise TeaCacheError(f"{where}: teacache source {data['source']!r} must be a string")
        history = data.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise TeaCacheError(f"{where}: teacache history {history!r:.100} must be a list of objects")
        for k, h in enumerate(history):
            check_coefficients(h.get("coefficients"), f"{where}: teacache history[{k}]")

    def describe(self) -> str:
        return "teacache" if self.threshold is None else f"teacache threshold {self.threshold:g}"

    # --- decisions --------------------------------------------------------------------------
    def start(self, num_steps, context, n_groups, thresholds=None) -> "TeaCacheState":
        """A context's state; knobs neither given nor recorded take the rule's defaults (the
        first and last call forced, raw accumulation, no eps, no clamp)."""
        if self.coefficients is None or self.threshold is None:
            raise TeaCacheError(f"{self!r} has no coefficients or threshold: bind it to an artifact first "
                                f"(transformer.policy = ... does), or give both")
        if thresholds is None:
            thresholds = np.full(n_groups, self.threshold, dtype=np.float64)
        return TeaCacheState(self, num_steps, n_groups, np.ascontiguousarray(thresholds, dtype=np.float64))


class TeaCacheState(PolicyState):
    """Per group: ``acc``; per generation: the criterion's constant arguments (:class:`Rule`),
    rebuilt only when the input shape changes."""

    def __init__(self, policy: TeaCache, num_steps: int, n_groups: int, thresholds: np.ndarray):
        self.coefficients = policy._coefficients
        self.forced = policy.forced or ForcedSteps()
        self.accumulate = policy.accumulate or "raw"
        self.eps = 0.0 if policy.eps is None else policy.eps
        self.clamp = bool(policy.clamp)
        self.num_steps, self.n_groups, self.thresholds = num_steps, n_groups, thresholds
        self.acc = np.zeros(n_groups, dtype=np.float64)
        self.rel = None
        self._plan = None
        self._rule: Rule | None = None

    def _rule_for(self, features: Features) -> Rule:
        f = self.forced
        self._rule = Rule(self.coefficients, self.thresholds, features.group_of_row, self.n_groups, self.num_steps,
                          elements_per_row=features.elements_per_row, forced_first=f.first, forced_last=f.last,
                          forced_fraction=f.first_fraction, accumulate=self.accumulate, eps=self.eps,
                          clamp=self.clamp)
        self._plan = features.plan
        return self._rule

    def decide(self, step, features, must_compute):
        rule = self._rule if features.plan is self._plan else self._rule_for(features)
        flags, self.rel = decide_groups(rule, features.l1_diff, features.l1_prev, self.acc, step, must_compute)
        return flags

    def never_skipped(self, group, rels):
        n, f = self.num_steps, self.forced
        threshold = float(self.thresholds[group])
        if threshold <= 0:
            return None
        forced = dataclasses.asdict(f)
        coefficients = self.coefficients.tolist()
        # Every call computed, so acc was 0 before each one: the value each unforced call
        # compared with the threshold is its own poly(d).
        seen = []
        for k, rel in enumerate(rels):
            if rel is None or is_forced(k, n, f.first, f.last, f.first_fraction):
                continue
            y = poly(coefficients, rel)
            y = 0.0 if self.clamp and y < 0 else y
            seen.append(abs(y) if self.accumulate == "abs" else y)
        what = f"teacache threshold {threshold:g} never skipped in {n} steps"
        if not seen:
            unforced = [k for k in range(n) if not is_forced(k, n, f.first, f.last, f.first_fraction)]
            if not unforced:
                return f"{what}: every step is forced (forced steps {forced}); use more steps"
            return (f"{what}: the signal gave no usable change at any unforced step (its previous sum was 0 "
                    f"or not finite); check the inputs, or calibrate (teacache-calibrate)")
        seen = [v for v in seen if math.isfinite(v)] or seen
        low, high = min(seen), max(seen)
        suggestion = suggest_above(sorted(seen)[len(seen) // 2], low)
        return (f"{what}: the accumulated change was {low:.3g} to {high:.3g} at its {len(seen)} unforced "
                f"steps, never below the threshold; try threshold {suggestion:g} or calibrate (teacache-calibrate)")
