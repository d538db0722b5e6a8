"""The decision rules alone (policies.TeaCache, policies.Schedule), on synthetic sums."""
from __future__ import annotations

import numpy as np
import pytest

from teacache_trt import TeaCacheError
from teacache_trt.families import ForcedSteps
from teacache_trt.policies import Features, Schedule, TeaCache
from teacache_trt.runtime.controller import ContextState
from teacache_trt.runtime.criterion import is_forced, poly

FLUX = (498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861)


@pytest.mark.parametrize("x", [0.0, 0.01, 0.1, 0.37, 1.5, -0.2])
def test_poly_is_numpy_poly1d(x):
    assert poly(FLUX, x) == pytest.approx(np.poly1d(FLUX)(x), rel=1e-12, abs=1e-12)


def features(rows: int = 1, groups: int = 1, diff=None, prev=None) -> Features:
    f = Features()
    f.plan, f.group_of_row = "plan", np.arange(rows, dtype=np.int32) % groups
    f.l1_diff = None if diff is None else np.asarray(diff, dtype=np.float64)
    f.l1_prev = None if prev is None else np.asarray(prev, dtype=np.float64)
    return f


class Context:
    """A context's records and its policy's state, called the way the transformer calls them."""

    def __init__(self, rule, num_steps, groups=1, thresholds=None):
        self.state = ContextState(n_groups=groups, num_steps=num_steps,
                                  policy=rule.start(num_steps, "default", groups, thresholds))

    def decide(self, diff, prev, must_compute=None, rows=1):
        st = self.state
        must = np.zeros(st.n_groups, dtype=np.uint8) if must_compute is None else np.array(must_compute, np.uint8)
        flags = st.policy.decide(st.step, features(rows, st.n_groups, diff, prev), must)
        st.record(flags)
        return flags


def decide(ctx: Context, diff, prev, must_compute=False) -> bool:
    """One call with one row in one group; True to compute."""
    sums = (None, None) if diff is None else ([diff], [prev])
    return bool(ctx.decide(*sums, [must_compute])[0])


def run(rule, rels, num_steps=None):
    ctx = Context(rule, num_steps or len(rels))
    for k, rel in enumerate(rels):
        decide(ctx, None if k == 0 else rel, None if k == 0 else 1.0)
    return ctx.state


def test_accumulates_and_resets():
    # poly = identity: acc grows by rel each step until it reaches the threshold.
    rule = TeaCache(0.25, (1.0, 0.0))
    state = run(rule, [0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert state.computed == [0, 3, 6, 7]  # 0.1+0.1 < .25 skip twice; 0.3 computes; last forced
    assert state.skipped == [1, 2, 4, 5]


def test_threshold_zero_never_skips_even_with_negative_poly():
    state = run(TeaCache(0.0, (-5.0, 0.0)), [0, 0.2, 0.2, 0.2])
    assert state.computed == [0, 1, 2, 3]


def test_negative_poly_unclamped_keeps_skipping_and_clamp_option():
    rels = [0, 0.2, 0.2, 0.2, 0.2, 0.2]
    assert run(TeaCache(0.1, (-1.0, 0.0)), rels).computed == [0, 5]
    assert run(TeaCache(0.1, (-1.0, 0.0), clamp=True), rels).computed == [0, 5]
    assert run(TeaCache(0.15, (1.0, -0.1), clamp=False), rels).computed == [0, 2, 4, 5]


def test_forced_rules():
    def forced(f: ForcedSteps, n):
        return [s for s in range(n) if is_forced(s, n, f.first, f.last, f.first_fraction)]

    assert forced(ForcedSteps(), 10) == [0, 9]
    assert forced(ForcedSteps(first=5, last=False), 10) == [0, 1, 2, 3, 4]
    assert forced(ForcedSteps(first=1, last=False, first_fraction=0.1), 20) == [0, 1]


def test_missing_residual_forces_compute():
    ctx = Context(TeaCache(10.0, (1.0, 0.0)), 5)
    decide(ctx, None, None)
    assert decide(ctx, 0.0, 1.0, must_compute=True) is True
    assert decide(ctx, 0.0, 1.0) is False


def test_uniform_schedule():
    assert Schedule.uniform(10, 4).steps == (0, 3, 6, 9)
    assert Schedule.uniform(10, 10).steps == tuple(range(10))
    assert run(Schedule.uniform(8, 3), [0.5] * 8).computed == [0, 4, 7]
    with pytest.raises(TeaCacheError, match="computed=0"):
        Schedule.uniform(8, 0)


def test_groups_decide_alone_and_rows_of_a_group_together():
    """Sample mode: rows 0, 2 are prompt 0 (uncond, cond), rows 1, 3 prompt 1."""
    ctx = Context(TeaCache(0.25, (1.0, 0.0)), 4, groups=2, thresholds=np.array([0.25, 10.0]))
    state = ctx.state
    assert ctx.decide(None, None, rows=4).tolist() == [1, 1]  # forced first
    # prompt 0: (0.1 + 0.3) / 2 = 0.2 < 0.25 skips; prompt 1: (0.5 + 0.4) / 2 = 0.45 < 10 skips
    flags = ctx.decide([0.1, 0.5, 0.3, 0.4], np.ones(4), rows=4)
    assert flags.tolist() == [0, 0] and state.policy.acc.tolist() == pytest.approx([0.2, 0.45])
    flags = ctx.decide([0.1, 0.5, 0.3, 0.4], np.ones(4), rows=4)
    assert flags.tolist() == [1, 0]  # prompt 0 reached 0.4; acc back to 0
    assert state.computed == [0, 2] and state.skipped == [1]
    assert state.group_computed == [[0, 2], [0]] and state.group_skipped == [[1], [1, 2]]
    assert state.rel_l1[1] == [pytest.approx(0.2), pytest.approx(0.45)]


@pytest.mark.parametrize("bad", [-1, float("nan"), True, "0.2"])
def test_bad_threshold(bad):
    with pytest.raises(TeaCacheError, match="threshold"):
        TeaCache(bad, FLUX)


def test_non_finite_signal_computes_instead_of_poisoning_acc():
    ctx = Context(TeaCache(10.0, (1.0, 0.0)), 6)
    decide(ctx, None, None)
    assert decide(ctx, float("inf"), float("inf")) is True  # inf/inf = nan
    assert decide(ctx, 0.1, 1.0) is False  # acc is a number again: skipping resumes
