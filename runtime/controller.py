"""What the runtime keeps per cache context, and the records its ``stats`` report.

A context (e.g. the cond or uncond branch) holds, for one generation, the signals the embed
graph compares, the cached residual, the context graph's outputs, and the state of the caching
policy that decides its calls (:mod:`teacache_trt.policies`).  A context has one decision group
in ``batch`` mode (upstream: one decision per call) and one per prompt in ``sample`` mode.
Nothing here touches the heavy engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import TeaCacheError
from ..policies import PolicyState
from .forecast import Forecast


@dataclass
class ContextState:
    """Everything the runtime remembers for one cache context over one generation.

    Per decision group: whether its rows of ``residual`` hold a computed result
    (``has_residual``) and its computed / skipped steps.  ``computed`` / ``skipped`` are the
    context's calls that did / did not run the blocks graph (for any group).
    """

    n_groups: int = 1
    policy: PolicyState | None = None  # the caching policy's state for this context
    reads_sums: bool = True  # the policy reads the signal sums (a static one reads nothing)
    step: int = 0
    num_steps: int = 0
    prev_signal: torch.Tensor | None = None
    next_signal: torch.Tensor | None = None  # the buffer the next call's signal is written to
    residual: dict[str, torch.Tensor] | None = None
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    # one entry per call: the group's relative signal change (None: nothing to compare, or a
    # policy that measures none), a list of them per group when there are several
    rel_l1: list = field(default_factory=list)
    # the context graph's outputs, and the inputs (tensor, _version) they were computed from
    context_out: dict[str, torch.Tensor] | None = None
    context_inputs: list | None = None
    # the step plan (input shape) prev_signal and residual were last checked against
    plan_key: tuple | None = None
    # reuse other than "residual": the second residual and the computed steps it extrapolates from
    forecast: Forecast | None = None
    # the io_sums feature's buffers (runtime.io_sums.IOSums), for a policy that needs it
    io: Any = None

    def __post_init__(self):
        if self.n_groups < 1:
            raise TeaCacheError(f"n_groups={self.n_groups} must be >= 1")
        self.has_residual = np.zeros(self.n_groups, dtype=np.uint8)
        self.group_computed: list[list[int]] = [[] for _ in range(self.n_groups)]
        self.group_skipped: list[list[int]] = [[] for _ in range(self.n_groups)]
        self._no_rel = None if self.n_groups == 1 else [None] * self.n_groups

    def forget_residual(self) -> None:
        """The cached residual no longer fits the call (batch or resolution changed)."""
        self.residual = None
        self.has_residual[:] = 0
        if self.forecast is not None:
            self.forecast.forget()

    def record(self, flags: np.ndarray) -> None:
        """Book one call's decisions (``flags``: compute per group) and advance the step."""
        step = self.step
        per_group = flags.tolist()
        (self.computed if any(per_group) else self.skipped).append(step)
        for g, compute in enumerate(per_group):
            (self.group_computed[g] if compute else self.group_skipped[g]).append(step)
        rels = self.policy.rel
        if rels is None:
            self.rel_l1.append(self._no_rel if self._no_rel is None else list(self._no_rel))
        else:
            rel = [None if math.isnan(r) else r for r in rels.tolist()]
            self.rel_l1.append(rel[0] if self.n_groups == 1 else rel)
        self.step = step + 1

    def group_rels(self, g: int) -> list[float | None]:
        return [r if self.n_groups == 1 else r[g] for r in self.rel_l1]

    def never_skipped(self, g: int) -> str | None:
        """Why group ``g`` computed every call of this finished generation although its policy
        could skip (a cause and a fix); None otherwise, and while the generation runs."""
        if self.policy is None or not self.num_steps or self.step < self.num_steps or self.group_skipped[g]:
            return None
        return self.policy.never_skipped(g, self.group_rels(g))


def _union(records: list[tuple[list[int], list[int]]]) -> dict[str, list[int]]:
    """Computed in any record; skipped where seen and computed in none."""
    computed = sorted({s for c, _ in records for s in c})
    done = set(computed)
    seen = sorted({s for c, k in records for s in c + k})
    return {"computed_steps": computed, "skipped_steps": [s for s in seen if s not in done]}


def merge_stats(states: dict[str, ContextState], samples: bool = False) -> dict[str, Any]:
    """Per-context records plus the union view users read first; with ``samples``, the same
    union per prompt (group) under ``"samples"``.  ``"never_skipped"`` (a cause and a fix) is
    present when a finished generation computed every call although its policy could skip."""
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
    if states and not any(k for st in states.values() for k in st.group_skipped):
        cause = next((c for st in states.values() for g in range(st.n_groups) if (c := st.never_skipped(g))), None)
        if cause:
            stats["never_skipped"] = cause
    if samples:
        n = max((st.n_groups for st in states.values()), default=0)
        stats["samples"] = []
        for g in range(n):
            group = [st for st in states.values() if g < st.n_groups]
            sample = _union([(st.group_computed[g], st.group_skipped[g]) for st in group])
            if not any(st.group_skipped[g] for st in group):
                cause = next((c for st in group if (c := st.never_skipped(g))), None)
                if cause:
                    sample["never_skipped"] = cause
            stats["samples"].append(sample)
    return stats
