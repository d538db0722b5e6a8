"""``EasyCache``: reuse while the output's change, estimated from the input's, stays small.

EasyCache (Zhou et al. 2025, "Less is Enough: Training-Free Video Diffusion Acceleration via
Runtime-Adaptive Caching") needs no offline data.  Between two computed calls it measures the
model's transformation rate, how much its output moved per unit its input moved, and on later
calls it estimates the output's change from the input's change alone.  With ``x`` the model's
latent input, ``o`` its output (means over the decision group's elements), ``c`` the context's
last computed call and ``c'`` the computed call before it, per cache context of N calls and
per decision group::

    after a computed call c:  k = mean|o_c - o_c'| / mean|x_c - x_c'|    (once c' exists)
    at call n:
        n < warmup or n == N - 1:  compute, and acc = 0
        no k yet (fewer than two computed calls), or no previous call:  compute
        else:  acc += k * mean|x_n - x_{n-1}| / mean|o_c|
               skip  if acc < threshold,  else compute and acc = 0

``x_{n-1}`` is the previous call's input whether it computed or not, so ``acc`` sums the
input's steps since the last computed call, each scaled by the rate and the last computed
output's size.  Threshold 0 never skips.  The element counts cancel in the estimate
(``Σ|o_c - o_c'| / Σ|x_c - x_c'| * Σ|x_n - x_{n-1}| / Σ|o_c|``), so the runtime feeds it per-row
sums (the ``io_sums`` feature, reduced on the device) and a group adds its rows' sums.

Where this departs from EasyCache's scripts (HunyuanVideo's and Wan's):

- What a skipped call reuses is the blocks' cached residual, run through the head at the
  current step (as every policy here); the scripts add the last computed ``o_c - x_c`` to the
  latent and run nothing.  The decision rule is unchanged: it reads inputs and computed
  outputs only.
- Every cache context measures its own rate and decides alone (the cond and uncond branches
  each); Wan's script decides on the cond call and its uncond call follows.  In
  ``decisions="sample"`` each prompt is a group with its own rate and accumulator; in
  ``"batch"`` the means run over the whole call, as the scripts' do.
- The input is the transformer's latent input as the pipeline passes it: image-to-video
  pipelines that concatenate the condition into it add channels that do not change between
  steps, so the sums equal those over the latent alone (the scripts measure the latent before
  the concatenation).
- Sums are accumulated in fp32 (the scripts take means in the model's dtype).
- Every generation starts from a fresh state (the scripts carry ``k`` and the last outputs into
  the next generation, which only matters with warmup < 2); a call that computes because no
  cached residual fits (the batch or resolution changed) starts the accumulation over.

Settings left None are the artifact's (the default policy's params, ``policy_data.easycache``),
then :data:`DEFAULTS`: EasyCache's HunyuanVideo settings (its Wan scripts use 0.05-0.06 with
7-10 warm-up steps).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import TeaCacheError
from .base import IO_SUMS, ArtifactPolicies, Features, Policy, PolicyState, check_threshold, register, suggest_above

DEFAULTS = {"threshold": 0.025, "warmup": 5}


def check_warmup(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise TeaCacheError(f"warmup {value!r} must be an integer >= 0: the first steps of each cache context that "
                            f"always compute (EasyCache uses 5 of 50)")
    return int(value)


@register
class EasyCache(Policy):
    """EasyCache (Zhou et al. 2025); None settings: the artifact's, then :data:`DEFAULTS`."""

    name = "easycache"
    needs = frozenset({IO_SUMS})
    has_threshold = True

    def __init__(self, threshold=None, warmup=None):
        self.threshold = None if threshold is None else check_threshold(threshold)
        self.warmup = None if warmup is None else check_warmup(warmup)
        self._set_params(threshold=self.threshold, warmup=self.warmup)

    def bind(self, artifact: ArtifactPolicies) -> "EasyCache":
        bound = super().bind(artifact)
        missing = {k: v for k, v in DEFAULTS.items() if getattr(bound, k) is None}
        return bound.replace(**missing) if missing else bound

    def describe(self) -> str:
        return "easycache" if self.threshold is None else f"easycache threshold {self.threshold:g}"

    def start(self, num_steps, context, n_groups, thresholds=None) -> "EasyCacheState":
        if self.threshold is None or self.warmup is None:
            raise TeaCacheError(f"{self!r} leaves settings to an artifact: bind it to one first (transformer.policy = "
                                f"... does), or give threshold and warmup")
        if thresholds is None:
            thresholds = np.full(n_groups, self.threshold, dtype=np.float64)
        return EasyCacheState(num_steps, self.warmup, np.ascontiguousarray(thresholds, dtype=np.float64))


class EasyCacheState(PolicyState):
    """Per group: the accumulated estimate, the rate ``k`` and the last computed output's size
    (NaN: not known yet); ``rel`` is each call's estimate ``k * Δx / |o_c|`` (NaN: none)."""

    def __init__(self, num_steps: int, warmup: int, thresholds: np.ndarray):
        n = len(thresholds)
        self.num_steps, self.warmup, self.thresholds = num_steps, warmup, thresholds
        self.acc = np.zeros(n, dtype=np.float64)
        self.rate = np.full(n, np.nan)
        self.output_abs = np.full(n, np.nan)
        self.rel = np.full(n, np.nan)

    def _per_group(self, rows: np.ndarray, features: Features) -> np.ndarray:
        """A group's sum of its rows' values (NaN where any row has none)."""
        return np.bincount(features.group_of_row, weights=rows, minlength=len(self.acc))

    def _learn(self, features: Features) -> None:
        """What the previous call computed: its output's size and, from its second computed
        call on, a group's new rate."""
        output_abs = self._per_group(features.computed_output_abs, features)
        done = ~np.isnan(output_abs)
        output_diff = self._per_group(features.computed_output_diff, features)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 and x/0 decide as the scripts' do: compute
            rate = output_diff / self._per_group(features.computed_input_diff, features)
        measured = done & ~np.isnan(output_diff)
        self.rate[measured] = rate[measured]
        self.output_abs[done] = output_abs[done]

    def decide(self, step, features, must_compute):
        if features.computed_output_abs is not None:
            self._learn(features)
        flags, acc = must_compute, self.acc
        self.rel.fill(np.nan)
        if step < self.warmup or step >= self.num_steps - 1:
            flags.fill(1)
        elif features.input_step is None:  # nothing to compare this input with
            flags.fill(1)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                estimate = self.rate * self._per_group(features.input_step, features) / self.output_abs
            known = ~np.isnan(self.rate)
            acc[known] += estimate[known]
            self.rel[known] = estimate[known]
            # NaN (an undefined rate or size) compares False: the group computes, as in the scripts
            flags |= ~(known & (acc < self.thresholds))
        acc[flags.astype(bool)] = 0.0
        return flags

    def never_skipped(self, group, rels):
        threshold = float(self.thresholds[group])
        if threshold <= 0:
            return None  # threshold 0 is meant to compute every step
        n, warmup = self.num_steps, self.warmup
        what = f"easycache threshold {threshold:g} never skipped in {n} steps"
        judged = range(warmup, n - 1)
        if not judged:
            return f"{what}: every step is a warm-up step (warmup {warmup}) or the last; lower warmup or use more steps"
        # Every call computed, so acc was 0 before each one: each judged call compared its own estimate.
        seen = [rels[k] for k in judged if k < len(rels) and rels[k] is not None and math.isfinite(rels[k])]
        if not seen:
            return (f"{what}: no step after the warm-up had a rate to estimate with (the input did not move, or "
                    f"fewer than two steps computed before it); check the inputs, or lower warmup")
        low, high = min(seen), max(seen)
        suggestion = suggest_above(sorted(seen)[len(seen) // 2], low)
        return (f"{what}: the estimated output change was {low:.3g} to {high:.3g} at its {len(seen)} steps after "
                f"the warm-up of {warmup}, never below the threshold; try threshold {suggestion:g}")
