"""TeaCache state per cache context, and the decision rules the transformer applies to it.

    d   = Σ|s_t − s_{t−1}| / Σ|s_{t−1}|       (over the rows of one decision group)
    acc = acc + poly(d)
    skip if acc < threshold and the step is not forced, else compute and acc = 0

The arithmetic itself lives in :mod:`.criterion` (one implementation, native or Python).  A
context has one decision group in ``batch`` mode (upstream: one ratio over the whole batch)
and one per prompt in ``sample`` mode; the rules below decide every group of a call at once.
Nothing here touches the heavy engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import TeaCacheError
from ..manifest import Criterion, ForcedSteps
from .criterion import decide_groups, group_rel

_NO_SUMS = {}  # n_rows -> zeros: the criterion's sums when there is no previous signal


@dataclass
class ContextState:
    """Everything TeaCache remembers for one cache context (e.g. the cond or uncond branch).

    Per decision group: ``acc``, whether its rows of ``residual`` hold a computed result
    (``has_residual``) and its computed / skipped steps.  ``computed`` / ``skipped`` are the
    context's calls that did / did not run the blocks graph (for any group).
    """

    n_groups: int = 1
    step: int = 0
    prev_signal: torch.Tensor | None = None
    next_signal: torch.Tensor | None = None  # the buffer the next call's signal is written to
    residual: dict[str, torch.Tensor] | None = None
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    # one entry per call: the group's ratio (None: nothing to compare), a list of them per
    # group when there are several
    rel_l1: list = field(default_factory=list)
    # the context graph's outputs, and the inputs (tensor, _version) they were computed from
    context_out: dict[str, torch.Tensor] | None = None
    context_inputs: list | None = None
    # the step plan (input shape) prev_signal and residual were last checked against
    plan_key: tuple | None = None

    def __post_init__(self):
        if self.n_groups < 1:
            raise TeaCacheError(f"n_groups={self.n_groups} must be >= 1")
        self.acc = np.zeros(self.n_groups, dtype=np.float64)
        self.has_residual = np.zeros(self.n_groups, dtype=np.uint8)
        self.group_computed: list[list[int]] = [[] for _ in range(self.n_groups)]
        self.group_skipped: list[list[int]] = [[] for _ in range(self.n_groups)]

    def forget_residual(self) -> None:
        """The cached residual no longer fits the call (batch or resolution changed)."""
        self.residual = None
        self.has_residual[:] = 0


@dataclass(frozen=True)
class TeaCache:
    """Decision rule: threshold, coefficients and forced steps; stateless and immutable itself."""

    coefficients: tuple[float, ...]
    threshold: float
    forced: ForcedSteps = field(default_factory=ForcedSteps)
    clamp: bool = False

    def __post_init__(self):
        check_threshold(self.threshold)
        if not self.coefficients:
            raise TeaCacheError("coefficients are empty: the manifest's criterion needs a polynomial")
        if not isinstance(self.clamp, bool):  # clamp="no" is truthy: it would turn clamping on
            raise TeaCacheError(f"clamp {self.clamp!r} must be True or False (None: the manifest's setting)")
        # The criterion's array arguments, built once (frozen: they cannot go stale).
        object.__setattr__(self, "_coefficients", np.array(self.coefficients, dtype=np.float64))
        object.__setattr__(self, "_thresholds", {})  # n_groups -> this threshold for each

    @classmethod
    def from_criterion(cls, criterion: Criterion, threshold: float | None = None, clamp: bool | None = None):
        return cls(
            coefficients=tuple(float(c) for c in criterion.coefficients),
            threshold=criterion.default_threshold if threshold is None else threshold,
            forced=criterion.forced,
            clamp=criterion.clamp if clamp is None else clamp,
        )

    def decide(self, state: ContextState, num_steps: int, l1_diff, l1_prev, group_of_row,
               must_compute: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """Compute flags (uint8, one per group of ``state``); updates ``state`` (acc, step, records).

        ``l1_diff``/``l1_prev``: the embed graph's per-row sums as float arrays (None when there
        is no previous signal); ``group_of_row``: int32, the group of each row;
        ``must_compute``: uint8 per group, set where no usable residual exists;
        ``thresholds``: one per group (None: this rule's threshold for every group).
        """
        n = state.n_groups
        if thresholds is None:
            thresholds = self._thresholds.get(n)
            if thresholds is None:
                thresholds = self._thresholds[n] = np.full(n, float(self.threshold))
        has_prev = l1_diff is not None and l1_prev is not None
        if not has_prev:
            l1_diff = l1_prev = _no_sums(len(group_of_row))
        flags, rels = decide_groups(
            l1_diff, l1_prev, group_of_row, n, state.acc, state.step, num_steps, thresholds,
            self._coefficients, self.clamp, self.forced.first, self.forced.last, self.forced.first_fraction,
            has_prev, must_compute)
        return _record(state, flags, rels)


def check_threshold(value) -> float:
    """A threshold is a number >= 0 (bools and strings are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise TeaCacheError(f"threshold {value!r} must be a number >= 0 (0 never skips; larger skips more)")
    return float(value)


def _no_sums(rows: int) -> np.ndarray:
    sums = _NO_SUMS.get(rows)
    if sums is None:
        sums = _NO_SUMS[rows] = np.zeros(rows, dtype=np.float64)
    return sums


def _record(state: ContextState, flags: np.ndarray, rels: np.ndarray) -> np.ndarray:
    step = state.step
    per_group = flags.tolist()
    (state.computed if any(per_group) else state.skipped).append(step)
    for g, compute in enumerate(per_group):
        (state.group_computed[g] if compute else state.group_skipped[g]).append(step)
    rel = [None if math.isnan(r) else r for r in rels.tolist()]
    state.rel_l1.append(rel[0] if state.n_groups == 1 else rel)
    state.step = step + 1
    return flags


@dataclass
class FixedSchedule:
    """Compute at the given step indices only (and wherever no usable residual exists).

    The baseline an adaptive criterion must beat at equal compute: the same residual reuse,
    with the computed steps spread evenly instead of chosen by the signal.
    """

    steps: frozenset[int]

    def decide(self, state: ContextState, num_steps: int, l1_diff, l1_prev, group_of_row,
               must_compute: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        n = state.n_groups
        has_prev = l1_diff is not None and l1_prev is not None
        sums = np.zeros((2, n))
        if has_prev:
            np.add.at(sums[0], group_of_row, l1_diff)
            np.add.at(sums[1], group_of_row, l1_prev)
        rels = np.array([group_rel(has_prev, d, p) for d, p in zip(sums[0], sums[1])])
        flags = np.asarray(must_compute, dtype=np.uint8).copy()
        if state.step in self.steps:
            flags[:] = 1
        return _record(state, flags, rels)

    @classmethod
    def uniform(cls, num_steps: int, computed: int) -> "FixedSchedule":
        """``computed`` evenly spaced steps, the first and the last among them."""
        if not 1 <= computed <= num_steps:
            raise TeaCacheError(f"computed={computed} must be in [1, num_steps={num_steps}]")
        if computed == 1:
            return cls(frozenset({0}))
        return cls(frozenset(round(i * (num_steps - 1) / (computed - 1)) for i in range(computed)))


def _union(records: list[tuple[list[int], list[int]]]) -> dict[str, list[int]]:
    """Computed in any record; skipped where seen and computed in none."""
    computed = sorted({s for c, _ in records for s in c})
    done = set(computed)
    seen = sorted({s for c, k in records for s in c + k})
    return {"computed_steps": computed, "skipped_steps": [s for s in seen if s not in done]}


def merge_stats(states: dict[str, ContextState], samples: bool = False) -> dict[str, Any]:
    """Per-context records plus the union view users read first; with ``samples``, the same
    union per prompt (group) under ``"samples"``."""
    stats = {
        **_union([(st.computed, st.skipped) for st in states.values()]),
        "calls": sum(st.step for st in states.values()),
        "blocks_runs": sum(len(st.computed) for st in states.values()),
        "contexts": {
            name: {"computed_steps": list(st.computed), "skipped_steps": list(st.skipped),
                   "rel_l1": list(st.rel_l1)}
            for name, st in states.items()
        },
    }
    if samples:
        n = max((st.n_groups for st in states.values()), default=0)
        stats["samples"] = [
            _union([(st.group_computed[g], st.group_skipped[g]) for st in states.values() if g < st.n_groups])
            for g in range(n)
        ]
    return stats
