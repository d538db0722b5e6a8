"""The criterion arithmetic for decision groups (runtime/criterion.py), on synthetic sums.

Every test runs against each implementation that is available (the Python reference always,
the native extension when it is built); tests/cpp_ext/ compares the two on random inputs.
"""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from teacache_trt import TeaCacheError
from teacache_trt.runtime import criterion
from teacache_trt.runtime.criterion import Rule, decide_groups

IMPLS = ["python"] + (["native"] if criterion.BACKEND == "native" else [])
IDENTITY = (1.0, 0.0)  # poly(d) = d


def call(backend, diff, prev, groups, acc, *, step=3, num_steps=10, thresholds=None, coefficients=IDENTITY,
         clamp=False, first=1, last=True, fraction=0.0, has_prev=True, must=None, accumulate="raw", eps=0.0,
         elements=1):
    n = len(acc)
    rule = Rule(coefficients, [0.25] * n if thresholds is None else thresholds, groups, n, num_steps,
                elements_per_row=elements, forced_first=first, forced_last=last, forced_fraction=fraction,
                accumulate=accumulate, eps=eps, clamp=clamp)
    sums = (diff, prev) if has_prev else (None, None)
    return decide_groups(rule, *sums, acc, step, [0] * n if must is None else must, backend=backend)


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def test_groups_decide_independently(impl):
    # rows 0, 2 -> group 0 (rel 0.3 / 2 = 0.15), row 1 -> group 1 (rel 0.05): with acc 0.15
    # already, group 0 reaches 0.3 >= 0.25 and computes; group 1 reaches 0.2 and skips.
    acc = np.array([0.15, 0.15])
    flags, rel = call(impl, [0.1, 0.05, 0.2], [1.0, 1.0, 1.0], [0, 1, 0], acc)
    assert flags.tolist() == [1, 0]
    assert rel.tolist() == pytest.approx([0.15, 0.05])
    assert acc.tolist() == pytest.approx([0.0, 0.2])


def test_group_sums_are_in_double_and_row_order(impl):
    # 2^24 + 1 is not an fp32 number: the sum must be taken in double to keep the 1.
    big = float(2 ** 24)
    acc = np.zeros(1)
    _, rel = call(impl, [big, 1.0], [big, 0.0], [0, 0], acc)
    assert rel[0] == (big + 1.0) / big


def test_batch_mode_equals_one_ratio_over_the_batch(impl):
    diff, prev = [0.1, 0.3], [1.0, 3.0]
    _, rel = call(impl, diff, prev, [0, 0], np.zeros(1))
    assert rel[0] == pytest.approx(sum(diff) / sum(prev), rel=1e-15)


@pytest.mark.parametrize("prev", [0.0, math.inf, math.nan])
def test_unusable_ratio_computes_and_acc_stays_a_number(impl, prev):
    acc = np.array([0.1])
    flags, rel = call(impl, [0.5], [prev], [0], acc, thresholds=[10.0])
    assert flags[0] == 1 and math.isnan(rel[0]) and acc[0] == 0.0


def test_overflowing_poly_computes_and_resets(impl):
    acc = np.array([0.0])
    flags, rel = call(impl, [1e200], [1.0], [0], acc, thresholds=[10.0], coefficients=(1.0, 0.0, 0.0))
    assert rel[0] == 1e200 and flags[0] == 1 and acc[0] == 0.0  # poly = rel² = inf: not < threshold


def test_nan_acc_computes(impl):
    # acc = -inf (an earlier poly of -inf skipped) plus poly = +inf is NaN: not < threshold.
    acc = np.array([-math.inf])
    flags, _ = call(impl, [10.0], [1.0], [0], acc, thresholds=[1.0], coefficients=(1e308, 0.0))
    assert flags[0] == 1 and acc[0] == 0.0


def test_threshold_zero_never_skips_and_per_group_thresholds(impl):
    acc = np.zeros(2)
    flags, _ = call(impl, [0.01, 0.01], [1.0, 1.0], [0, 1], acc, thresholds=[0.0, 0.5], coefficients=(-5.0, 0.0))
    assert flags.tolist() == [1, 0]
    assert acc.tolist() == [0.0, -0.05]  # negative poly, unclamped, accumulates


def test_clamp(impl):
    acc = np.zeros(1)
    call(impl, [0.01], [1.0], [0], acc, thresholds=[0.5], coefficients=(-5.0, 0.0), clamp=True)
    assert acc[0] == 0.0


@pytest.mark.parametrize("step,num_steps,first,last,fraction,forced", [
    (0, 10, 1, True, 0.0, True), (1, 10, 1, True, 0.0, False), (9, 10, 1, True, 0.0, True),
    (9, 10, 1, False, 0.0, False), (4, 10, 5, False, 0.0, True), (1, 20, 1, False, 0.1, True),
    (2, 20, 1, False, 0.1, False), (0, 0, 0, True, 0.0, False),
])
def test_forced_steps_follow_the_manifest_rule(impl, step, num_steps, first, last, fraction, forced):
    acc = np.zeros(1)
    flags, _ = call(impl, [0.0], [1.0], [0], acc, step=step, num_steps=num_steps, first=first, last=last,
                    fraction=fraction, thresholds=[1.0])
    assert bool(flags[0]) is forced


def test_no_previous_signal_and_missing_residual_compute(impl):
    acc = np.array([0.1, 0.1])
    flags, rel = call(impl, [0.0, 0.0], [1.0, 1.0], [0, 1], acc, has_prev=False)
    assert flags.tolist() == [1, 1] and np.isnan(rel).all()
    acc = np.array([0.1, 0.1])
    flags, _ = call(impl, [0.0, 0.0], [1.0, 1.0], [0, 1], acc, must=[1, 0])
    assert flags.tolist() == [1, 0] and acc.tolist() == [0.0, 0.1]


def test_empty_group_has_no_ratio(impl):
    acc = np.zeros(2)
    flags, rel = call(impl, [0.0], [1.0], [0], acc, thresholds=[1.0, 1.0])
    assert flags.tolist() == [0, 1] and math.isnan(rel[1])


@pytest.mark.parametrize("kwargs,match", [
    (dict(groups=[0, 2]), r"group_of_row \[0, 2\] has a group outside \[0, 2\)"),
    (dict(accumulate="sum"), r"accumulate 'sum' must be one of"),
    (dict(eps=-1.0), r"eps -1.0 must be a finite number >= 0"),
    (dict(diff=[0.1]), "l1_diff has 1 rows"),
    (dict(acc=np.zeros(2, dtype=np.float32)), "acc must be a writable contiguous float64"),
    (dict(thresholds=[0.1]), "thresholds has 1 values"),
    (dict(coefficients=()), "coefficients are empty"),
    (dict(step=-1), "step=-1"),
    (dict(fraction=1.5), "forced_first_fraction=1.5"),
    (dict(diff=[[0.1, 0.1]]), "must be 1-D"),
])
def test_bad_input_is_refused(impl, kwargs, match):
    args = dict(diff=[0.1, 0.1], prev=[1.0, 1.0], groups=[0, 1], acc=np.zeros(2))
    kwargs = dict(kwargs)  # the parameter dict is shared between the implementations' runs
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(TeaCacheError, match=match):
        call(impl, args["diff"], args["prev"], args["groups"], args["acc"], **kwargs)


def test_unknown_backend_is_refused():
    with pytest.raises(TeaCacheError, match="criterion backend 'gpu' is not available"):
        call("gpu", [0.1], [1.0], [0], np.zeros(1))


def test_abi_mismatch_falls_back_to_python_with_a_warning(monkeypatch):
    stale = types.ModuleType("teacache_trt._criterion")
    stale.ABI_VERSION = criterion.ABI_VERSION + 1
    stale.decide_groups = None
    monkeypatch.setitem(sys.modules, "teacache_trt._criterion", stale)
    with pytest.warns(RuntimeWarning, match="ABI version .* expects .*rebuild"):
        module, status = criterion.load_native("_criterion", "using the Python reference")
    assert module is None and "Python reference" in status


def test_abs_accumulation_adds_the_magnitude(impl):
    # poly = -5 d: raw accumulation lowers acc (and keeps skipping), abs raises it.
    raw, absolute = np.zeros(1), np.zeros(1)
    flags, _ = call(impl, [0.1], [1.0], [0], raw, thresholds=[0.4], coefficients=(-5.0, 0.0))
    assert flags[0] == 0 and raw[0] == pytest.approx(-0.5)
    flags, _ = call(impl, [0.1], [1.0], [0], absolute, thresholds=[0.4], coefficients=(-5.0, 0.0), accumulate="abs")
    assert flags[0] == 1 and absolute[0] == 0.0  # 0.5 >= 0.4 computes and resets


def test_eps_divides_the_means(impl):
    # rows 0, 1 in group 0, 4 elements per row: mean diff 0.3 / 8, mean prev 2 / 8, eps 0.25.
    _, rel = call(impl, [0.1, 0.2], [1.0, 1.0], [0, 0], np.zeros(1), eps=0.25, elements=4)
    assert rel[0] == ((0.1 + 0.2) / 8) / (2.0 / 8 + 0.25)
    # a zero previous signal has a ratio once eps is there
    _, rel = call(impl, [0.4], [0.0], [0], np.zeros(1), eps=0.5, elements=2)
    assert rel[0] == (0.4 / 2) / 0.5
    # eps 0 is the ratio of the sums, exactly as before the knob existed
    _, rel = call(impl, [0.1, 0.2], [0.7, 1.1], [0, 0], np.zeros(1), elements=3)
    assert rel[0] == (0.1 + 0.2) / (0.7 + 1.1)


@pytest.mark.parametrize("num_steps,forced", [(20, [0, 1]), (25, [0, 1, 2]), (28, [0, 1, 2]), (30, [0, 1, 2])])
def test_first_fraction_is_a_float_compare(impl, num_steps, forced):
    """HiDream's first 10%: step < 0.1 * N in floating point, i.e. the first ceil(0.1 * N) steps."""
    got = []
    for step in range(num_steps):
        flags, _ = call(impl, [0.0], [1.0], [0], np.zeros(1), step=step, num_steps=num_steps, first=0, last=False,
                        fraction=0.1, thresholds=[1.0])
        if flags[0]:
            got.append(step)
    assert got == forced


def test_fp32_sums_are_taken_as_they_are(impl):
    diff, prev = np.array([0.1, 0.2], dtype=np.float32), np.array([1.0, 3.0], dtype=np.float32)
    _, rel = call(impl, diff, prev, [0, 0], np.zeros(1))
    assert rel[0] == (float(diff[0]) + float(diff[1])) / (float(prev[0]) + float(prev[1]))
