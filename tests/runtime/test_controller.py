"""The decision rule alone (docs/criterion.md), on synthetic sums."""
from __future__ import annotations

import numpy as np
import pytest

from teacache_trt import TeaCacheError
from teacache_trt.manifest import ForcedSteps
from teacache_trt.runtime.controller import ContextState, FixedSchedule, TeaCache
from teacache_trt.runtime.criterion import poly

FLUX = (498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861)


@pytest.mark.parametrize("x", [0.0, 0.01, 0.1, 0.37, 1.5, -0.2])
def test_poly_is_numpy_poly1d(x):
    assert poly(FLUX, x) == pytest.approx(np.poly1d(FLUX)(x), rel=1e-12, abs=1e-12)


ONE_ROW = np.zeros(1, dtype=np.int32)


def decide(rule, state, num_steps, diff, prev, must_compute=False) -> bool:
    """One call with one row in one group; True to compute."""
    sums = (None, None) if diff is None else (np.array([diff]), np.array([prev]))
    flags = rule.decide(state, num_steps, *sums, ONE_ROW, np.array([must_compute], dtype=np.uint8))
    return bool(flags[0])


def run(rule, rels, num_steps=None):
    state = ContextState()
    n = num_steps or len(rels)
    for k, rel in enumerate(rels):
        decide(rule, state, n, None if k == 0 else rel, None if k == 0 else 1.0)
    return state


def test_accumulates_and_resets():
    # poly = identity: acc grows by rel each step until it reaches the threshold.
    rule = TeaCache((1.0, 0.0), threshold=0.25)
    state = run(rule, [0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert state.computed == [0, 3, 6, 7]  # 0.1+0.1 < .25 skip twice; 0.3 computes; last forced
    assert state.skipped == [1, 2, 4, 5]


def test_threshold_zero_never_skips_even_with_negative_poly():
    state = run(TeaCache((-5.0, 0.0), threshold=0.0), [0, 0.2, 0.2, 0.2])
    assert state.computed == [0, 1, 2, 3]


def test_negative_poly_unclamped_keeps_skipping_and_clamp_option():
    rels = [0, 0.2, 0.2, 0.2, 0.2, 0.2]
    assert run(TeaCache((-1.0, 0.0), threshold=0.1), rels).computed == [0, 5]
    assert run(TeaCache((-1.0, 0.0), threshold=0.1, clamp=True), rels).computed == [0, 5]
    assert run(TeaCache((1.0, -0.1), threshold=0.15, clamp=False), rels).computed == [0, 2, 4, 5]


def test_forced_rules():
    assert [s for s in range(10) if ForcedSteps().is_forced(s, 10)] == [0, 9]
    assert [s for s in range(10) if ForcedSteps(first=5, last=False).is_forced(s, 10)] == [0, 1, 2, 3, 4]
    assert [s for s in range(20) if ForcedSteps(first=1, last=False, first_fraction=0.1).is_forced(s, 20)] == [0, 1]


def test_missing_residual_forces_compute():
    rule, state = TeaCache((1.0, 0.0), threshold=10.0), ContextState()
    decide(rule, state, 5, None, None)
    assert decide(rule, state, 5, 0.0, 1.0, must_compute=True) is True
    assert decide(rule, state, 5, 0.0, 1.0) is False


def test_uniform_schedule():
    assert FixedSchedule.uniform(10, 4).steps == {0, 3, 6, 9}
    assert FixedSchedule.uniform(10, 10).steps == set(range(10))
    assert run(FixedSchedule.uniform(8, 3), [0.5] * 8).computed == [0, 4, 7]
    with pytest.raises(TeaCacheError, match="computed=0"):
        FixedSchedule.uniform(8, 0)


def test_groups_decide_alone_and_rows_of_a_group_together():
    """Sample mode: rows 0, 2 are prompt 0 (uncond, cond), rows 1, 3 prompt 1."""
    rule = TeaCache((1.0, 0.0), threshold=0.25)
    state = ContextState(n_groups=2)
    rows = np.array([0, 1, 0, 1], dtype=np.int32)
    none = np.zeros(2, dtype=np.uint8)
    thresholds = np.array([0.25, 10.0])
    assert rule.decide(state, 4, None, None, rows, none, thresholds).tolist() == [1, 1]  # forced first
    # prompt 0: (0.1 + 0.3) / 2 = 0.2 < 0.25 skips; prompt 1: (0.5 + 0.4) / 2 = 0.45 < 10 skips
    flags = rule.decide(state, 4, np.array([0.1, 0.5, 0.3, 0.4]), np.ones(4), rows, none, thresholds)
    assert flags.tolist() == [0, 0] and state.acc.tolist() == pytest.approx([0.2, 0.45])
    flags = rule.decide(state, 4, np.array([0.1, 0.5, 0.3, 0.4]), np.ones(4), rows, none, thresholds)
    assert flags.tolist() == [1, 0]  # prompt 0 reached 0.4; acc back to 0
    assert state.computed == [0, 2] and state.skipped == [1]
    assert state.group_computed == [[0, 2], [0]] and state.group_skipped == [[1], [1, 2]]
    assert state.rel_l1[1] == [pytest.approx(0.2), pytest.approx(0.45)]


@pytest.mark.parametrize("bad", [-1, float("nan"), None, True])
def test_bad_threshold(bad):
    with pytest.raises(TeaCacheError, match="threshold"):
        TeaCache(FLUX, bad)


def test_non_finite_signal_computes_instead_of_poisoning_acc():
    rule, state = TeaCache((1.0, 0.0), threshold=10.0), ContextState()
    decide(rule, state, 6, None, None)
    assert decide(rule, state, 6, float("inf"), float("inf")) is True  # inf/inf = nan
    assert decide(rule, state, 6, 0.1, 1.0) is False  # acc is a number again: skipping resumes
