"""The TeaCache criterion (DESIGN §4), batch-wide decisions, state per cache context.

    d   = Σ|s_t − s_{t−1}| / Σ|s_{t−1}|       (over the whole decision group)
    acc = acc + poly(d)
    skip if acc < threshold and the step is not forced, else compute and acc = 0

The decision is host-side arithmetic on two fp32 sums the embed graph produced; nothing
here touches the heavy engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import TeaCacheError
from ..manifest import Criterion, ForcedSteps


def poly(coefficients: Sequence[float], x: float) -> float:
    """numpy.poly1d(coefficients)(x), highest degree first (Horner)."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


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


@dataclass
class TeaCache:
    """Decision rule: threshold, coefficients and forced steps; stateless itself."""

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

    @classmethod
    def from_criterion(cls, criterion: Criterion, threshold: float | None = None, clamp: bool | None = None):
        return cls(
            coefficients=tuple(float(c) for c in criterion.coefficients),
            threshold=criterion.default_threshold if threshold is None else threshold,
            forced=criterion.forced,
            clamp=criterion.clamp if clamp is None else clamp,
        )

    def rescale(self, rel_l1: float) -> float:
        y = poly(self.coefficients, rel_l1)
        return max(y, 0.0) if self.clamp else y

    def decide(self, state: ContextState, num_steps: int, l1_diff: float | None, l1_prev: float | None,
               must_compute: bool = False) -> bool:
        """True to compute this call's blocks; updates ``state`` (acc, step, records).

        ``l1_diff``/``l1_prev`` are the group's sums (None when there is no previous signal);
        ``must_compute`` is set by the caller when no usable residual exists.
        """
        step = state.step
        rel = None if l1_diff is None or not l1_prev else l1_diff / l1_prev
        if rel is not None and not math.isfinite(rel):
            rel = None  # an inf/NaN signal (fp16 overflow) must not poison acc: compute instead
        forced = self.forced.is_forced(step, num_steps) or must_compute or rel is None
        if forced or self.threshold <= 0:
            compute = True
        else:
            state.acc += self.rescale(rel)
            compute = not state.acc < self.threshold  # upstream's test: NaN computes
        if compute:
            state.acc = 0.0
        return _record(state, compute, rel)


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
        rel = None if l1_diff is None or not l1_prev else l1_diff / l1_prev
        return _record(state, state.step in self.steps or must_compute, rel)

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
