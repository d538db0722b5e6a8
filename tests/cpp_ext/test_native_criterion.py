"""The native criterion (cpp_ext, host build) against the Python reference: bit-identical.

Random sequences of calls over random per-row sums (fp32 values, zeros, infinities, NaNs;
passed as fp32 like the graph's buffers, or as fp64), group maps, thresholds (0 included),
coefficients (negative polynomials and the real families' sets included), forced-step rules
(first, last, first_fraction), accumulation (raw, abs), eps and elements per row, has_prev and
must_compute; flags, ratios and acc must match bit for bit after every call.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teacache_trt.runtime import criterion

pytestmark = pytest.mark.skipif(criterion.BACKEND != "native", reason=criterion.NATIVE_STATUS)

EXAMPLES = 1000
FAMILY_COEFFICIENTS = [
    (498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861),  # FLUX
    (-1538.80483, 843.202495, -134.363087, 7.97131516, -0.0523162339),  # CogVideoX 5b (negative near 0)
    (-303318.725, 49053.7029, -2655.30556, 58.7365115, -0.315583525),  # Wan t2v-14B ret_steps
]

row_sum = st.one_of(
    st.floats(min_value=0, max_value=1e6, width=32),  # what the embed graph writes: fp32 sums
    st.sampled_from([0.0, float("inf"), float("nan"), 1e-38, 3.4e38]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
coefficients = st.one_of(
    st.sampled_from(FAMILY_COEFFICIENTS),
    st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=6).map(tuple),
    st.lists(st.sampled_from([1e308, -1e308, 1.0, 0.0]), min_size=1, max_size=4).map(tuple),  # overflow
)
threshold = st.one_of(st.just(0.0), st.floats(min_value=0, max_value=2), st.floats(min_value=0, max_value=1e3))


@st.composite
def scenarios(draw):
    n_groups = draw(st.integers(1, 4))
    n_rows = draw(st.integers(0, 8))
    num_steps = draw(st.integers(0, 30))
    calls = []
    for _ in range(draw(st.integers(1, 6))):
        calls.append(dict(
            l1_diff=draw(st.lists(row_sum, min_size=n_rows, max_size=n_rows)),
            l1_prev=draw(st.lists(row_sum, min_size=n_rows, max_size=n_rows)),
            step=draw(st.integers(0, 35)),
            has_prev=draw(st.booleans()),
            must_compute=draw(st.lists(st.booleans(), min_size=n_groups, max_size=n_groups)),
        ))
    return dict(
        n_groups=n_groups,
        group_of_row=draw(st.lists(st.integers(0, n_groups - 1), min_size=n_rows, max_size=n_rows)),
        acc=draw(st.lists(st.one_of(st.floats(min_value=-10, max_value=10), st.just(float("-inf"))),
                          min_size=n_groups, max_size=n_groups)),
        num_steps=num_steps,
        thresholds=draw(st.lists(threshold, min_size=n_groups, max_size=n_groups)),
        coefficients=draw(coefficients),
        clamp=draw(st.booleans()),
        forced_first=draw(st.integers(0, 6)),
        forced_last=draw(st.booleans()),
        forced_first_fraction=draw(st.one_of(st.just(0.0), st.just(0.1), st.floats(0, 1))),
        accumulate=draw(st.sampled_from(["raw", "abs"])),
        eps=draw(st.one_of(st.just(0.0), st.just(1e-8), st.floats(min_value=0, max_value=10))),
        elements_per_row=draw(st.sampled_from([0, 1, 3, 4096])),
        fp32=draw(st.booleans()),
        calls=calls,
    )


def bits(a: np.ndarray) -> list[int]:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64).tolist()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_native_matches_python_bit_for_bit(s):
    accs = {b: np.array(s["acc"], dtype=np.float64) for b in ("native", "python")}
    rule = criterion.Rule(s["coefficients"], s["thresholds"], s["group_of_row"], s["n_groups"], s["num_steps"],
                          elements_per_row=s["elements_per_row"], forced_first=s["forced_first"],
                          forced_last=s["forced_last"], forced_fraction=s["forced_first_fraction"],
                          accumulate=s["accumulate"], eps=s["eps"], clamp=s["clamp"])
    dtype = np.float32 if s["fp32"] else np.float64
    for call in s["calls"]:
        out = {}
        sums = (np.array(call["l1_diff"], dtype=dtype), np.array(call["l1_prev"], dtype=dtype)) \
            if call["has_prev"] else (None, None)
        for backend, acc in accs.items():
            out[backend] = criterion.decide_groups(rule, *sums, acc, call["step"], call["must_compute"],
                                                   backend=backend)
        (nf, nr), (pf, pr) = out["native"], out["python"]
        assert nf.dtype == pf.dtype == np.uint8 and nf.tolist() == pf.tolist()
        assert bits(nr) == bits(pr)
        assert bits(accs["native"]) == bits(accs["python"])
        assert not np.isnan(accs["native"]).any()  # acc always stays a number


def test_the_native_build_takes_the_graphs_fp32_sums_without_a_copy():
    """The hot path: the embed graph's fp32 sums go to the native criterion as they are."""
    rule = criterion.Rule((1.0, 0.0), [0.5], [0, 0], 1, 10)
    diff, prev = np.array([0.1, 0.2], dtype=np.float32), np.array([1.0, 1.0], dtype=np.float32)
    acc = np.zeros(1)
    flags, rel = criterion._NATIVE_MODULE.decide_groups(rule.native, diff, prev, acc, 3, True,
                                                        np.zeros(1, dtype=np.uint8))
    assert rel[0] == (float(diff[0]) + float(diff[1])) / 2.0 and flags[0] == 0
