"""The TeaCache criterion (docs/criterion.md) for decision groups: the one arithmetic every caller uses.

A call of the transformer carries ``B`` rows; each row belongs to a decision group
(``group_of_row``): batch mode puts every row in group 0 (upstream's one ratio over the whole
batch), per-sample mode gives each prompt its own group, so the cond and uncond rows of a
batched-CFG prompt decide together.  Per group ``g``::

    d      = Σ l1_diff[rows of g] / Σ l1_prev[rows of g]   (sums in double, in row order)
    acc[g] = acc[g] + poly(d)                                (Horner in double; clamp at 0 optional)
    skip     if acc[g] < threshold[g] and the step is not forced
    else     compute, acc[g] = 0

- compute without touching ``acc`` when the step is forced (first ``forced_first`` calls, the
  first ``forced_first_fraction`` of the steps, the last call when ``forced_last``), when there
  is no previous signal (``has_prev`` false), when the group has no usable residual
  (``must_compute[g]``), or when ``d`` is not a finite number (a zero or non-finite previous sum,
  an fp16 overflow): a bad signal must not poison ``acc``, which stays a number;
- threshold 0 never skips, even where the polynomial is negative (a deliberate difference from
  upstream, see docs/criterion.md).

Two implementations give bit-identical results: this module's pure-Python reference and the
native one in ``cpp_ext`` (``teacache_trt._criterion``), whose arithmetic is the same
``__host__ __device__`` code the CUDA kernel runs.  The native one is used when it was built
and its ABI version matches :data:`ABI_VERSION`; :data:`BACKEND` says which was chosen (once,
at import) and :data:`NATIVE_STATUS` why.
"""
from __future__ import annotations

import importlib
import math
import warnings
from typing import Sequence

import numpy as np

from ..errors import TeaCacheError
from ..manifest import ForcedSteps

# Bumped whenever the argument layout or the semantics of the native entry points change;
# cpp_ext/include/teacache_criterion.h carries the same number (TEACACHE_CRITERION_ABI).
ABI_VERSION = 1


def poly(coefficients: Sequence[float], x: float) -> float:
    """numpy.poly1d(coefficients)(x), highest degree first, by Horner in double."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


def group_rel(has_prev: bool, diff: float, prev: float) -> float:
    """The relative L1 change of one group, NaN where there is none to use."""
    if not has_prev or prev == 0.0 or not math.isfinite(prev):
        return math.nan
    rel = diff / prev
    return rel if math.isfinite(rel) else math.nan


def _decide_groups_python(l1_diff, l1_prev, group_of_row, n_groups, acc, step, num_steps, thresholds,
                          coefficients, clamp, forced_first, forced_last, forced_first_fraction,
                          has_prev, must_compute):
    """The reference: plain loops over checked numpy arrays (see :func:`decide_groups`)."""
    sum_diff = [0.0] * n_groups
    sum_prev = [0.0] * n_groups
    for d, p, g in zip(l1_diff.tolist(), l1_prev.tolist(), group_of_row.tolist()):
        sum_diff[g] += d
        sum_prev[g] += p
    forced = ForcedSteps(forced_first, forced_last, forced_first_fraction).is_forced(step, num_steps)
    coefficients = coefficients.tolist()
    accs = acc.tolist()  # Python floats: IEEE results without numpy's overflow warnings
    flags = np.zeros(n_groups, dtype=np.uint8)
    rels = np.empty(n_groups, dtype=np.float64)
    for g in range(n_groups):
        rel = group_rel(has_prev, sum_diff[g], sum_prev[g])
        threshold = float(thresholds[g])
        if forced or must_compute[g] or math.isnan(rel) or threshold <= 0:
            compute = True
        else:
            y = poly(coefficients, rel)
            if clamp and y < 0:
                y = 0.0
            accs[g] += y
            compute = not accs[g] < threshold  # NaN computes, as upstream's test does
        if compute:
            accs[g] = 0.0
        flags[g] = compute
        rels[g] = rel
    acc[:] = accs
    return flags, rels


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
_NATIVE = _NATIVE_MODULE.decide_groups if _NATIVE_MODULE is not None else None
BACKEND = "native" if _NATIVE is not None else "python"
_IMPLS = {"python": _decide_groups_python, "native": _NATIVE}


def decide_groups(l1_diff, l1_prev, group_of_row, n_groups: int, acc: np.ndarray, step: int, num_steps: int,
                  thresholds, coefficients, clamp: bool, forced_first: int, forced_last: bool,
                  forced_first_fraction: float, has_prev: bool, must_compute, backend: str | None = None):
    """Decide every group of one call; returns ``(compute uint8[G], rel float64[G])``.

    ``l1_diff``/``l1_prev``: the embed graph's per-row sums (B values); ``group_of_row``: the
    group of each row; ``acc``: float64[G], updated in place; ``thresholds``: one per group;
    ``coefficients``: numpy.poly1d order; ``must_compute``: one flag per group.  ``rel`` is NaN
    where the group had no usable ratio.  ``backend`` ("native" / "python") overrides the
    choice made at import, for tests.
    """
    impl = _IMPLS.get(backend or BACKEND)
    if impl is None:
        raise TeaCacheError(
            f"criterion backend {backend!r} is not available: choose from "
            f"{sorted(k for k, v in _IMPLS.items() if v is not None)} ({NATIVE_STATUS})"
        )
    l1_diff = np.ascontiguousarray(l1_diff, dtype=np.float64)
    l1_prev = np.ascontiguousarray(l1_prev, dtype=np.float64)
    group_of_row = np.ascontiguousarray(group_of_row, dtype=np.int32)
    thresholds = np.ascontiguousarray(thresholds, dtype=np.float64)
    coefficients = np.ascontiguousarray(coefficients, dtype=np.float64)
    must_compute = np.ascontiguousarray(must_compute, dtype=np.uint8)
    groups = group_of_row.tolist()  # B is small: Python's min/max beat numpy's reductions here
    # One cheap test on the hot path; the itemised one below only runs to explain a failure.
    if not (l1_diff.ndim == l1_prev.ndim == group_of_row.ndim == thresholds.ndim == coefficients.ndim
            == must_compute.ndim == 1 and len(l1_diff) == len(l1_prev) == len(groups) and n_groups >= 1
            and len(thresholds) == len(must_compute) == n_groups and len(coefficients)
            and isinstance(acc, np.ndarray) and acc.dtype == np.float64 and acc.shape == (n_groups,)
            and acc.flags.c_contiguous and acc.flags.writeable and step >= 0 and num_steps >= 0
            and forced_first >= 0 and 0.0 <= forced_first_fraction <= 1.0
            and (not groups or (min(groups) >= 0 and max(groups) < n_groups))):
        _explain(l1_diff, l1_prev, groups, n_groups, acc, step, num_steps, thresholds, coefficients,
                 forced_first, forced_first_fraction, must_compute)
    return impl(l1_diff, l1_prev, group_of_row, int(n_groups), acc, int(step), int(num_steps), thresholds,
                coefficients, bool(clamp), int(forced_first), bool(forced_last), float(forced_first_fraction),
                bool(has_prev), must_compute)


def _explain(l1_diff, l1_prev, groups, n_groups, acc, step, num_steps, thresholds, coefficients,
             forced_first, forced_first_fraction, must_compute) -> None:
    """The TeaCacheError for arguments :func:`decide_groups` refused: shapes and ranges both
    implementations rely on (no value-dependent arithmetic is checked)."""
    vectors = {"l1_diff": l1_diff, "l1_prev": l1_prev, "group_of_row": np.asarray(groups), "thresholds": thresholds,
               "coefficients": coefficients, "must_compute": must_compute}
    if any(v.ndim != 1 for v in vectors.values()):
        raise TeaCacheError(
            f"criterion inputs must be 1-D; got shapes { {k: v.shape for k, v in vectors.items()} }")
    rows = len(groups)
    if len(l1_diff) != rows or len(l1_prev) != rows:
        raise TeaCacheError(
            f"l1_diff has {len(l1_diff)} rows, l1_prev {len(l1_prev)}, group_of_row {rows}: "
            f"give one value per batch row in each"
        )
    if n_groups < 1:
        raise TeaCacheError(f"n_groups={n_groups} must be >= 1")
    if groups and (min(groups) < 0 or max(groups) >= n_groups):
        raise TeaCacheError(
            f"group_of_row {groups} has a group outside [0, {n_groups}): "
            f"map every row to a group index below n_groups"
        )
    if not (isinstance(acc, np.ndarray) and acc.dtype == np.float64 and acc.shape == (n_groups,)
            and acc.flags.c_contiguous and acc.flags.writeable):
        raise TeaCacheError(
            f"acc must be a writable contiguous float64 array of shape ({n_groups},) (it is updated "
            f"in place); got {type(acc).__name__} {getattr(acc, 'dtype', '')} {getattr(acc, 'shape', '')}"
        )
    if len(thresholds) != n_groups or len(must_compute) != n_groups:
        raise TeaCacheError(
            f"thresholds has {len(thresholds)} values and must_compute {len(must_compute)}: give one "
            f"per group (n_groups={n_groups})"
        )
    if len(coefficients) == 0:
        raise TeaCacheError("coefficients are empty: the criterion needs a polynomial")
    if step < 0 or num_steps < 0 or forced_first < 0:
        raise TeaCacheError(
            f"step={step}, num_steps={num_steps}, forced_first={forced_first}: all must be >= 0")
    if not 0.0 <= forced_first_fraction <= 1.0:
        raise TeaCacheError(f"forced_first_fraction={forced_first_fraction!r} must be in [0, 1]")
