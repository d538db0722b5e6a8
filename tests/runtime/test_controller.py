"""The decision rule alone (DESIGN §4), on synthetic sums."""
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


def run(rule, rels, num_steps=None):
    state = ContextState()
    n = num_steps or len(rels)
    for k, rel in enumerate(rels):
        rule.decide(state, n, None if k == 0 else rel, None if k == 0 else 1.0)
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
    rule.decide(state, 5, None, None)
    assert rule.decide(state, 5, 0.0, 1.0, must_compute=True) is True
    assert rule.decide(state, 5, 0.0, 1.0) is False


def test_uniform_schedule():
    assert FixedSchedule.uniform(10, 4).steps == {0, 3, 6, 9}
    assert FixedSchedule.uniform(10, 10).steps == set(range(10))
    assert run(FixedSchedule.uniform(8, 3), [0.5] * 8).computed == [0, 4, 7]
    with pytest.raises(TeaCacheError, match="computed=0"):
        FixedSchedule.uniform(8, 0)


@pytest.mark.parametrize("bad", [-1, float("nan"), None])
def test_bad_threshold(bad):
    with pytest.raises(TeaCacheError, match="threshold"):
        TeaCache(FLUX, bad)


def test_non_finite_signal_computes_instead_of_poisoning_acc():
    rule, state = TeaCache((1.0, 0.0), threshold=10.0), ContextState()
    rule.decide(state, 6, None, None)
    assert rule.decide(state, 6, float("inf"), float("inf")) is True  # inf/inf = nan
    assert rule.decide(state, 6, 0.1, 1.0) is False  # acc is a number again: skipping resumes
