"""The TeaCache criterion for decision groups: the one arithmetic every caller uses.

A call of the transformer carries ``B`` rows; each row belongs to a decision group
(``group_of_row``): batch mode puts every row in group 0 (upstream: one ratio over the whole
batch), per-sample mode gives each prompt its own group, so the cond and uncond rows of a
batched-CFG prompt decide together.  Per group ``g`` with ``n[g]`` signal elements::

    d      = (Σ l1_diff / n) / (Σ l1_prev / n + eps)     (sums over the rows of g, in double, in
                                                          row order; with eps = 0: Σ l1_diff / Σ l1_prev)
    y      = poly(d)                                      (Horner in double; clamp at 0 optional)
    acc[g] = acc[g] + y          (accumulate "raw")       or acc[g] + |y|  ("abs")
    skip     if acc[g] < threshold[g] and the call is not forced
    else     compute, acc[g] = 0

- the call k (0-based, counting the cache context's own calls) of N is forced when
  ``k < forced_first``, or ``k < forced_fraction * N`` (compared in floating point, so the
  first ceil(fraction * N) calls), or ``forced_last and k == N - 1``;
- a forced call computes without touching ``acc``, as does a call with no previous signal, a
  group with no usable residual (``must_compute``) or a ``d`` that is not a finite number (a
  zero or non-finite denominator, an fp16 overflow): a bad signal must not poison ``acc``;
- threshold 0 never skips, even where the polynomial is negative (upstream would skip there).

Everything constant over a generation (coefficients, thresholds, the group map, the forced
steps, the knobs) is checked and converted once into a :class:`Rule`; a call passes only the
sums, ``acc``, the step and ``must_compute``.  Two implementations give bit-identical results:
this module's pure-Python reference and the native one in ``cpp_ext``
(``teacache_trt._criterion``), whose arithmetic is the same ``__host__ __device__`` code the
CUDA kernel compiles.  The native one is used when it was built and its ABI version matches
:data:`ABI_VERSION`; :data:`BACKEND` says which was chosen (once, at import) and
:data:`NATIVE_STATUS` why.
"""
from __future__ import annotations

import importlib
import math
import warnings
from typing import Sequence

import numpy as np

from ..errors import TeaCacheError

# Bumped whenever the argument layout or the semantics of the native entry points change;
# cpp_ext/include/teacache_criterion.h carries the same number (TEACACHE_CRITERION_ABI).
ABI_VERSION = 2
ACCUMULATE = ("raw", "abs")
_SUMS = (np.dtype(np.float32), np.dtype(np.float64))  # what the native build takes without a copy
_FLAGS = np.dtype(np.uint8)


def poly(coefficients: Sequence[float], x: float) -> float:
    """numpy.poly1d(coefficients)(x), highest degree first, by Horner in double."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


def is_forced(step: int, num_steps: int, first: int, last: bool, fraction: float) -> bool:
    """Call ``step`` of ``num_steps`` always computes (see the module doc)."""
    return step < first or step < fraction * num_steps or (last and num_steps > 0 and step == num_steps - 1)


def group_rel(has_prev: bool, diff: float, prev: float, elements: float = 1.0, eps: float = 0.0) -> float:
    """The relative change of one group from its sums and element count; NaN where there is none."""
    if not has_prev:
        return math.nan
    if eps == 0.0:  # the means' ratio is the sums' ratio: today's arithmetic, exactly
        if prev == 0.0 or not math.isfinite(prev):
            return math.nan
        rel = diff / prev
    else:
        if not elements > 0.0:
            return math.nan
        den = prev / elements + eps
        if den == 0.0 or not math.isfinite(den):
            return math.nan
        rel = diff / elements / den
    return rel if math.isfinite(rel) else math.nan


class Rule:
    """The criterion's constant arguments for one generation at one input shape, checked and
    converted once (the native build keeps its own copy); see the module doc for each."""

    __slots__ = ("coefficients", "thresholds", "group_of_row", "group_elements", "n_groups", "num_steps",
                 "rows", "forced_first", "forced_last", "forced_fraction", "accumulate_abs", "eps", "clamp",
                 "zeros", "native", "_lists")

    def __init__(self, coefficients, thresholds, group_of_row, n_groups: int, num_steps: int, *,
                 elements_per_row: int = 1, forced_first: int = 1, forced_last: bool = True,
                 forced_fraction: float = 0.0, accumulate: str = "raw", eps: float = 0.0, clamp: bool = False):
        coefficients = _vector(coefficients, np.float64, "coefficients")
        thresholds = _vector(thresholds, np.float64, "thresholds")
        group_of_row = _vector(group_of_row, np.int32, "group_of_row")
        groups = group_of_row.tolist()
        if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 1:
            raise TeaCacheError(f"n_groups={n_groups!r} must be an integer >= 1")
        if groups and (min(groups) < 0 or max(groups) >= n_groups):
            raise TeaCacheError(f"group_of_row {groups} has a group outside [0, {n_groups}): "
                                f"map every row to a group index below n_groups")
        if len(thresholds) != n_groups:
            raise TeaCacheError(f"thresholds has {len(thresholds)} values: give one per group (n_groups={n_groups})")
        if not len(coefficients):
            raise TeaCacheError("coefficients are empty: the criterion needs a polynomial")
        if not all(math.isfinite(t) and t >= 0 for t in thresholds.tolist()):
            raise TeaCacheError(f"thresholds {thresholds.tolist()} must be finite numbers >= 0")
        for name, value in (("num_steps", num_steps), ("forced_first", forced_first),
                            ("elements_per_row", elements_per_row)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise TeaCacheError(f"{name}={value!r} must be an integer >= 0")
        if not (isinstance(forced_fraction, (int, float)) and 0.0 <= forced_fraction <= 1.0):
            raise TeaCacheError(f"forced_first_fraction={forced_fraction!r} must be in [0, 1]")
        if accumulate not in ACCUMULATE:
            raise TeaCacheError(f"accumulate {accumulate!r} must be one of {ACCUMULATE}")
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0):
            raise TeaCacheError(f"eps {eps!r} must be a finite number >= 0")
        counts = np.bincount(group_of_row, minlength=n_groups) if groups else np.zeros(n_groups, dtype=np.int64)
        self.coefficients, self.thresholds, self.group_of_row = coefficients, thresholds, group_of_row
        self.group_elements = (counts * int(elements_per_row)).astype(np.float64)
        self.n_groups, self.num_steps, self.rows = int(n_groups), int(num_steps), len(groups)
        self.forced_first, self.forced_last = int(forced_first), bool(forced_last)
        self.forced_fraction, self.accumulate_abs = float(forced_fraction), accumulate == "abs"
        self.eps, self.clamp = float(eps), bool(clamp)
        self.zeros = np.zeros(self.rows, dtype=np.float64)  # the sums when there is no previous signal
        self._lists = (coefficients.tolist(), thresholds.tolist(), groups, self.group_elements.tolist())
        self.native = None if _NATIVE_MODULE is None else _NATIVE_MODULE.Rule(
            coefficients, thresholds, group_of_row, self.group_elements, self.n_groups, self.num_steps,
            self.forced_first, self.forced_last, self.forced_fraction, self.accumulate_abs, self.eps, self.clamp)

    def is_forced(self, step: int) -> bool:
        return is_forced(step, self.num_steps, self.forced_first, self.forced_last, self.forced_fraction)


def _vector(values, dtype, name: str) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=dtype)
    if array.ndim != 1:
        raise TeaCacheError(f"{name} must be 1-D; got shape {array.shape}")
    return array


def _decide_python(rule: Rule, l1_diff, l1_prev, acc, step, has_prev, must_compute):
    """The reference: plain loops over Python floats (IEEE results without numpy's warnings)."""
    n = rule.n_groups
    if not (l1_diff.ndim == l1_prev.ndim == 1 and len(l1_diff) == len(l1_prev) == rule.rows
            and acc.dtype == np.float64 and acc.shape == (n,) and acc.flags.c_contiguous and acc.flags.writeable
            and must_compute.shape == (n,) and step >= 0):
        raise ValueError("arguments do not fit the rule")
    coefficients, thresholds, groups, elements = rule._lists
    sum_diff = [0.0] * n
    sum_prev = [0.0] * n
    for d, p, g in zip(l1_diff.tolist(), l1_prev.tolist(), groups):
        sum_diff[g] += d
        sum_prev[g] += p
    forced = rule.is_forced(step)
    accs = acc.tolist()
    flags = np.zeros(n, dtype=np.uint8)
    rels = np.empty(n, dtype=np.float64)
    for g in range(n):
        rel = group_rel(has_prev, sum_diff[g], sum_prev[g], elements[g], rule.eps)
        threshold = thresholds[g]
        if forced or must_compute[g] or math.isnan(rel) or threshold <= 0:
            compute = True
        else:
            y = poly(coefficients, rel)
            if rule.clamp and y < 0:
                y = 0.0
            if rule.accumulate_abs:
                y = abs(y)
            accs[g] += y
            compute = not accs[g] < threshold  # NaN computes, as upstream's test does
        if compute:
            accs[g] = 0.0
        flags[g] = compute
        rels[g] = rel
    acc[:] = accs
    return flags, rels


def _decide_native(rule: Rule, l1_diff, l1_prev, acc, step, has_prev, must_compute):
    return _NATIVE_MODULE.decide_groups(rule.native, l1_diff, l1_prev, acc, step, has_prev, must_compute)


def load_native(name: str, fallback: str):
    """``teacache_trt.<name>`` when it is built and its ABI matches, else None; and a status line.

    ``fallback`` says what the caller does without it.  A stale build (another ABI version) is
    refused with a RuntimeWarning rather than an error: the fallback gives the same decisions,
    only slower, and the warning says how to rebuild.
    """
    try:
        module = importlib.import_module(f"teacache_trt.{name}")
    except ImportError as exc:
        return None, f"teacache_trt.{name} is not built ({exc}); {fallback}"
    found = getattr(module, "ABI_VERSION", None)
    if found != ABI_VERSION:
        reason = (f"teacache_trt.{name} has ABI version {found}, the Python side expects {ABI_VERSION}: "
                  f"{fallback}; rebuild with `pip install -e .` (or scripts/setup.sh)")
        warnings.warn(reason, RuntimeWarning, stacklevel=2)
        return None, reason
    return module, f"teacache_trt.{name} (ABI {ABI_VERSION})"


_NATIVE_MODULE, NATIVE_STATUS = load_native("_criterion", "using the Python reference")
BACKEND = "native" if _NATIVE_MODULE is not None else "python"
_IMPLS = {"python": _decide_python, "native": _decide_native if _NATIVE_MODULE is not None else None}


def decide_groups(rule: Rule, l1_diff, l1_prev, acc: np.ndarray, step: int, must_compute,
                  backend: str | None = None):
    """Decide every group of one call; returns ``(compute uint8[G], rel float64[G])``.

    ``l1_diff``/``l1_prev``: the embed graph's per-row sums (fp32 or fp64, B values; None when
    there is no previous signal); ``acc``: float64[G], updated in place; ``step``: the cache
    context's call index; ``must_compute``: one flag per group.  ``rel`` is NaN where the group
    had no usable ratio.  ``backend`` ("native" / "python") overrides the choice made at
    import, for tests.
    """
    impl = _IMPLS.get(backend or BACKEND)
    if impl is None:
        raise TeaCacheError(
            f"criterion backend {backend!r} is not available: choose from "
            f"{sorted(k for k, v in _IMPLS.items() if v is not None)} ({NATIVE_STATUS})"
        )
    has_prev = l1_diff is not None and l1_prev is not None
    if not has_prev:
        l1_diff = l1_prev = rule.zeros
    elif (type(l1_diff) is not np.ndarray or type(l1_prev) is not np.ndarray or l1_diff.dtype != l1_prev.dtype
          or l1_diff.dtype not in _SUMS or not (l1_diff.flags.c_contiguous and l1_prev.flags.c_contiguous)):
        # the graph's fp32 buffers pass as they are; anything else is converted here
        l1_diff = np.ascontiguousarray(l1_diff, dtype=np.float64)
        l1_prev = np.ascontiguousarray(l1_prev, dtype=np.float64)
    if type(must_compute) is not np.ndarray or must_compute.dtype != _FLAGS or not must_compute.flags.c_contiguous:
        must_compute = np.ascontiguousarray(must_compute, dtype=np.uint8)
    try:
        return impl(rule, l1_diff, l1_prev, acc, step, has_prev, must_compute)
    except (ValueError, TypeError, AttributeError) as exc:
        _explain(rule, l1_diff, l1_prev, acc, step, must_compute)
        raise TeaCacheError(f"the criterion refused its arguments ({exc})") from exc


def _explain(rule: Rule, l1_diff, l1_prev, acc, step, must_compute) -> None:
    """The TeaCacheError for arguments :func:`decide_groups` refused (shapes and ranges both
    implementations rely on; no value-dependent arithmetic is checked)."""
    shapes = {"l1_diff": np.shape(l1_diff), "l1_prev": np.shape(l1_prev), "must_compute": np.shape(must_compute)}
    if any(len(s) != 1 for s in shapes.values()):
        raise TeaCacheError(f"criterion inputs must be 1-D; got shapes {shapes}")
    if len(l1_diff) != rule.rows or len(l1_prev) != rule.rows:
        raise TeaCacheError(f"l1_diff has {len(l1_diff)} rows, l1_prev {len(l1_prev)}, the rule's group_of_row "
                            f"{rule.rows}: give one value per batch row in each")
    n = rule.n_groups
    if not (isinstance(acc, np.ndarray) and acc.dtype == np.float64 and acc.shape == (n,)
            and acc.flags.c_contiguous and acc.flags.writeable):
        raise TeaCacheError(
            f"acc must be a writable contiguous float64 array of shape ({n},) (it is updated in place); "
            f"got {type(acc).__name__} {getattr(acc, 'dtype', '')} {getattr(acc, 'shape', '')}")
    if len(must_compute) != n:
        raise TeaCacheError(f"must_compute has {len(must_compute)} values: give one per group (n_groups={n})")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise TeaCacheError(f"step={step!r} must be an integer >= 0")
