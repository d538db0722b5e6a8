"""Experimental: the criterion on a CUDA device, state in device memory, decisions by cpp_ext's
kernel.  No runtime code uses it; the transformer decides on the host (see below).

:class:`DeviceCriterion` keeps every group's ``acc``, the step counter and the decision history
on the GPU and launches cpp_ext's kernel (``teacache_trt/_criterion_cuda*.so``, a plain shared
library loaded with ctypes) on the embed graph's ``l1_diff`` / ``l1_prev`` where they lie, on
the caller's stream.  A launch never waits for the device: the kernel advances its own step
counter, leaves the flags in device memory, and the history of flags and ratios is read back
once, by :meth:`DeviceCriterion.history`.  The arithmetic is the same source as the host build,
so decisions equal :func:`..criterion.decide_groups` bit for bit (tests/cpp_ext/, on a GPU:
streams and a CUDA graph captured around :meth:`DeviceCriterion.decide` in the test itself).

What it is for: a step executor that keeps the whole step on the GPU (the decision choosing
between the blocks graph and the cached residual without the host reading the sums), which
would remove the one host wait per step that the runtime has today
(:meth:`..plan.StepPlan.read_sums`).  That executor does not exist: nothing in the runtime
launches this kernel, and no CUDA graph is captured around the runtime's graphs.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import teacache_trt

from ...errors import TeaCacheError
from ...families import ForcedSteps
from ..criterion import ABI_VERSION, Rule

_P = ctypes.c_void_p


class DecideArgs(ctypes.Structure):
    """cpp_ext/include/teacache_criterion_cuda.h ``DeviceDecideArgs``, field for field.

    The library reports its own size and offsets; :func:`_load_kernel` refuses it when they
    differ from this mirror, so the two can never silently disagree.
    """

    _fields_ = [
        ("l1_diff", _P), ("l1_prev", _P), ("group_of_row", _P), ("n_rows", ctypes.c_int64),
        ("n_groups", ctypes.c_int32), ("acc", _P), ("thresholds", _P), ("coefficients", _P),
        ("n_coefficients", ctypes.c_int32), ("step_info", _P), ("has_prev", _P), ("must_compute", _P),
        ("compute_flags", _P), ("rel", _P), ("any_compute", _P), ("history_flags", _P), ("history_rel", _P),
        ("history_len", ctypes.c_int64), ("forced_first_fraction", ctypes.c_double),
        ("forced_first", ctypes.c_int64), ("forced_last", ctypes.c_int32), ("clamp", ctypes.c_int32),
        ("advance", ctypes.c_int32), ("group_elements", _P), ("eps", ctypes.c_double),
        ("accumulate_abs", ctypes.c_int32),
    ]


def _layout() -> list[int]:
    return [ctypes.sizeof(DecideArgs)] + [getattr(DecideArgs, name).offset for name, _ in DecideArgs._fields_]


def _load_kernel():
    """The built kernel library when its ABI and argument layout match, else None; and a status."""
    folder = Path(teacache_trt.__file__).parent  # the editable and the wheel install both put it there
    paths = [folder / f"_criterion_cuda{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    path = next((p for p in paths if p.is_file()), None)
    fallback = "the decision stays on the host"
    if path is None:
        return None, (f"cpp_ext's CUDA kernel is not built (no {paths[0].name} in {folder}: nvcc was absent "
                      f"or its build failed); {fallback}")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, f"{path} does not load ({exc}); {fallback}"
    lib.teacache_launch_decide.argtypes = [ctypes.POINTER(DecideArgs), ctypes.c_size_t]
    lib.teacache_launch_decide.restype = ctypes.c_char_p
    found = lib.teacache_criterion_abi()
    out = (ctypes.c_int64 * 64)()
    n = lib.teacache_decide_args_layout(out, 64)
    if found != ABI_VERSION or list(out[:n]) != _layout():
        reason = (f"{path.name} has ABI version {found} (layout {list(out[:n])}), the Python side expects "
                  f"{ABI_VERSION} (layout {_layout()}): {fallback}; rebuild with `pip install -e .`")
        warnings.warn(reason, RuntimeWarning, stacklevel=2)
        return None, reason
    return lib, f"{path.name} (ABI {ABI_VERSION}, CUDA runtime {lib.teacache_cuda_runtime_version()})"


_KERNEL, KERNEL_STATUS = _load_kernel()


def available() -> bool:
    """True when the kernel is built (nvcc was present) and a CUDA device is usable."""
    return _KERNEL is not None and torch.cuda.is_available()


class DeviceCriterion:
    """Decision groups of one cache context on ``device``; see the module doc."""

    def __init__(self, group_of_row: Sequence[int], n_groups: int, thresholds: Sequence[float],
                 coefficients: Sequence[float], forced: ForcedSteps, clamp: bool, num_steps: int,
                 device: torch.device | str = "cuda", *, accumulate: str = "raw", eps: float = 0.0,
                 elements_per_row: int = 1):
        if _KERNEL is None:
            raise TeaCacheError(f"the device criterion is unavailable: {KERNEL_STATUS}; build cpp_ext where "
                                f"nvcc is on PATH (`pip install -e .`) or use the host decision")
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise TeaCacheError(f"the device criterion needs a CUDA device; got {device} "
                                f"(torch.cuda.is_available() = {torch.cuda.is_available()})")
        if device.index is None:  # tensors report cuda:N; compare like with like
            device = torch.device("cuda", torch.cuda.current_device())
        # The host criterion's checks and group element counts, so both sides take the same arguments.
        rule = Rule(coefficients, thresholds, group_of_row, n_groups, max(int(num_steps), 0),
                    elements_per_row=elements_per_row, forced_first=forced.first, forced_last=forced.last,
                    forced_fraction=forced.first_fraction, accumulate=accumulate, eps=eps, clamp=clamp)
        self.device, self.n_groups, self.forced, self.clamp = device, rule.n_groups, forced, rule.clamp
        self.accumulate_abs, self.eps = rule.accumulate_abs, rule.eps
        rows = torch.from_numpy(rule.group_of_row.copy())

        def on_device(values, dtype):
            return torch.as_tensor(values, dtype=dtype).to(device)

        # Constant for the generation: copied to the device once, here.
        self.group_of_row = rows.to(device)
        self.thresholds = on_device(rule.thresholds, torch.float64)
        self.coefficients = on_device(rule.coefficients, torch.float64)
        self.group_elements = on_device(rule.group_elements, torch.float64)
        # State and outputs, rewritten in place by every launch.
        g = self.n_groups
        self.acc = torch.zeros(g, dtype=torch.float64, device=device)
        self.step_info = torch.zeros(2, dtype=torch.int64, device=device)  # step, num_steps
        self.has_prev = torch.zeros(1, dtype=torch.uint8, device=device)
        self.must_compute = torch.zeros(g, dtype=torch.uint8, device=device)
        self.compute_flags = torch.zeros(g, dtype=torch.uint8, device=device)
        self.rel = torch.zeros(g, dtype=torch.float64, device=device)
        self.any_compute = torch.zeros(1, dtype=torch.int32, device=device)
        self.history_flags = self.history_rel = None  # sized by reset()
        self.reset(num_steps)

    def reset(self, num_steps: int) -> None:
        """A new generation of ``num_steps`` calls, queued on the current stream (no sync).

        Buffers keep their addresses unless a longer generation needs a longer history, so a
        CUDA graph captured around :meth:`decide` stays valid across generations.
        """
        if num_steps < 1:
            raise TeaCacheError(f"num_steps={num_steps}: the device criterion needs the step count (>= 1)")
        self.num_steps = int(num_steps)
        if self.history_flags is None or self.history_flags.shape[0] < self.num_steps:
            shape = (self.num_steps, self.n_groups)
            self.history_flags = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            self.history_rel = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self.history_flags.zero_()
        self.history_rel.fill_(float("nan"))
        self.acc.zero_()
        self.has_prev.zero_()
        self.must_compute.zero_()
        self.step_info[0].fill_(0)
        self.step_info[1].fill_(self.num_steps)
        # Every pointer but the two sums is fixed until the next reset: build the launch once.
        self._args = DecideArgs(
            0, 0, self.group_of_row.data_ptr(), self.group_of_row.numel(), self.n_groups, self.acc.data_ptr(),
            self.thresholds.data_ptr(), self.coefficients.data_ptr(), self.coefficients.numel(),
            self.step_info.data_ptr(), self.has_prev.data_ptr(), self.must_compute.data_ptr(),
            self.compute_flags.data_ptr(), self.rel.data_ptr(), self.any_compute.data_ptr(),
            self.history_flags.data_ptr(), self.history_rel.data_ptr(), self.history_flags.shape[0],
            self.forced.first_fraction, self.forced.first, self.forced.last, self.clamp, 1,  # advance
            self.group_elements.data_ptr(), self.eps, self.accumulate_abs)

    def decide(self, l1_diff: torch.Tensor, l1_prev: torch.Tensor, stream: torch.cuda.Stream | None = None,
               has_prev: bool | None = None) -> torch.Tensor:
        """Queue one call's decision; returns ``any_compute`` (int32[1], on the device).

        ``l1_diff``/``l1_prev`` are the embed graph's fp32 per-row sums on this device.  The
        step counter and ``has_prev`` advance on the device; ``has_prev`` given here overrides
        the device value for this call (a resolution change leaves nothing to compare with).
        ``must_compute`` (a tensor attribute) is read by the kernel as it is on the device.
        """
        for name, t in (("l1_diff", l1_diff), ("l1_prev", l1_prev)):
            if t.dtype != torch.float32 or t.device != self.device or not t.is_contiguous() or \
                    t.numel() != self.group_of_row.numel():
                raise TeaCacheError(
                    f"{name} must be a contiguous float32 tensor of {self.group_of_row.numel()} rows on "
                    f"{self.device}; got {t.dtype} {tuple(t.shape)} on {t.device}")
        stream = stream or torch.cuda.current_stream(self.device)
        if has_prev is not None:
            with torch.cuda.stream(stream):
                self.has_prev.fill_(int(has_prev))
        self._args.l1_diff, self._args.l1_prev = l1_diff.data_ptr(), l1_prev.data_ptr()
        # The kernel library has its own CUDA runtime: make this device current for it too.
        with torch.cuda.device(self.device):
            error = _KERNEL.teacache_launch_decide(ctypes.byref(self._args), stream.cuda_stream)
        if error is not None:
            raise TeaCacheError(f"the criterion kernel did not launch on {self.device}: {error.decode()} (the "
                                f"library is built for sm_80/86/89/90 and newer through PTX)")
        return self.any_compute

    def history(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(flags uint8[steps, G], rel float64[steps, G], calls so far): the one read-back."""
        n = self.num_steps
        flags, rel, step = (t.cpu() for t in (self.history_flags[:n], self.history_rel[:n], self.step_info[:1]))
        return flags.numpy(), rel.numpy(), int(step[0])
