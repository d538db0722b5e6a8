"""TeaCache state per cache context, and the decision rules the transformer applies to it.

    d   = Σ|s_t − s_{t−1}| / Σ|s_{t−1}|       (over the whole decision group)
    acc = acc + poly(d)
    skip if acc < threshold and the step is not forced, else compute and acc = 0

The arithmetic itself lives in :mod:`.criterion` (one implementation, native or Python);
:class:`TeaCache` applies it to one batch-wide group per call.  Nothing here touches the
heavy engine.
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

# One decision group (every row of the call), as arrays built once: the rule runs every step.
_ONE_GROUP = np.zeros(1, dtype=np.int32)
_NO_SUMS = np.zeros(1)
_MUST_COMPUTE = {False: np.zeros(1, dtype=np.uint8), True: np.ones(1, dtype=np.uint8)}

@dataclass
class ContextState:
    """Everything TeaCache remembers for one cache context (e.g. the cond or uncond branch)."""

    step: int = 0
    acc: float = 0.0
    prev_signal: torch.Tensor | None = None
    residual: dict[str, torch.Tensor] | None = None
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    rel_l1: list[float | None] = field(default_factory=list)


@dataclass(frozen=True)
class TeaCache:
    """Decision rule: threshold, coefficients and forced steps; stateless and immutable itself."""

    coefficients: tuple[float, ...]
    threshold: float
    forced: ForcedSteps = field(default_factory=ForcedSteps)
    clamp: bool = False

    def __post_init__(self):
        if not isinstance(self.threshold, (int, float)) or self.threshold != self.threshold or self.threshold < 0:
            raise TeaCacheError(
                f"threshold {self.threshold!r} must be a number >= 0 (0 never skips; larger skips more)"
            )
        if not self.coefficients:
            raise TeaCacheError("coefficients are empty: the manifest's criterion needs a polynomial")
        # The criterion's array arguments, built once (frozen: they cannot go stale).
        object.__setattr__(self, "_coefficients", np.array(self.coefficients, dtype=np.float64))
        object.__setattr__(self, "_thresholds", np.array([self.threshold], dtype=np.float64))

    @classmethod
    def from_criterion(cls, criterion: Criterion, threshold: float | None = None, clamp: bool | None = None):
        return cls(
            coefficients=tuple(float(c) for c in criterion.coefficients),
            threshold=criterion.default_threshold if threshold is None else threshold,
            forced=criterion.forced,
            clamp=criterion.clamp if clamp is None else clamp,
        )

    def decide(self, state: ContextState, num_steps: int, l1_diff: float | None, l1_prev: float | None,
               must_compute: bool = False) -> bool:
        """True to compute this call's blocks; updates ``state`` (acc, step, records).

        ``l1_diff``/``l1_prev`` are the group's sums (None when there is no previous signal);
        ``must_compute`` is set by the caller when no usable residual exists.
        """
        has_prev = l1_diff is not None and l1_prev is not None
        acc = np.array([state.acc])
        flags, rels = decide_groups(
            [l1_diff] if has_prev else _NO_SUMS, [l1_prev] if has_prev else _NO_SUMS, _ONE_GROUP, 1, acc,
            state.step, num_steps, self._thresholds, self._coefficients, self.clamp, self.forced.first,
            self.forced.last, self.forced.first_fraction, has_prev, _MUST_COMPUTE[bool(must_compute)])
        state.acc = float(acc[0])
        rel = float(rels[0])
        return _record(state, bool(flags[0]), None if math.isnan(rel) else rel)


def _record(state: ContextState, compute: bool, rel: float | None) -> bool:
    (state.computed if compute else state.skipped).append(state.step)
    state.rel_l1.append(rel)
    state.step += 1
    return compute


@dataclass
class FixedSchedule:
    """Compute at the given step indices only (and wherever no usable residual exists).

    The baseline an adaptive criterion must beat at equal compute: the same residual reuse,
    with the computed steps spread evenly instead of chosen by the signal.
    """

    steps: frozenset[int]

    def decide(self, state: ContextState, num_steps: int, l1_diff: float | None, l1_prev: float | None,
               must_compute: bool = False) -> bool:
        rel = group_rel(l1_diff is not None and l1_prev is not None, l1_diff or 0.0, l1_prev or 0.0)
        return _record(state, state.step in self.steps or must_compute, None if math.isnan(rel) else rel)

    @classmethod
    def uniform(cls, num_steps: int, computed: int) -> "FixedSchedule":
        """``computed`` evenly spaced steps, the first and the last among them."""
        if not 1 <= computed <= num_steps:
            raise TeaCacheError(f"computed={computed} must be in [1, num_steps={num_steps}]")
        if computed == 1:
            return cls(frozenset({0}))
        return cls(frozenset(round(i * (num_steps - 1) / (computed - 1)) for i in range(computed)))


def merge_stats(states: dict[str, ContextState]) -> dict[str, Any]:
    """Per-context records plus the union view users read first."""
    computed = sorted({s for st in states.values() for s in st.computed})
    all_steps = sorted({s for st in states.values() for s in st.computed + st.skipped})
    return {
        "computed_steps": computed,
        "skipped_steps": [s for s in all_steps if s not in set(computed)],
        "calls": sum(st.step for st in states.values()),
        "blocks_runs": sum(len(st.computed) for st in states.values()),
        "contexts": {
            name: {"computed_steps": list(st.computed), "skipped_steps": list(st.skipped),
                   "rel_l1": list(st.rel_l1)}
            for name, st in states.items()
        },
    }
