"""The step plan: everything one input shape fixes, worked out on the first call at that shape.

A generation calls the transformer tens of times at the same shapes, so the first call at a
shape binds the dims, checks them against the profile, and allocates every graph's output
buffers (on the device); later calls find the plan by a shape key and only run graphs.  The
buffers keep their addresses for the plan's life, so the backends rebind only the inputs that
moved (ONNX Runtime's IO binding, TensorRT's tensor addresses).  Every graph is launched on
every call that runs it; no CUDA graph is captured.  What a cache context keeps across calls
(its signals, its residual) lives in its own buffers (:class:`.controller.ContextState`), which the graphs write
directly: nothing is copied on the way (on a CPU a large ``copy_`` runs as a parallel region
that, on a loaded machine, waits milliseconds for a descheduled thread).  The output a call
returns is a fresh tensor: callers keep outputs across calls (CFG).

Tensors in a plan are valid until the next call at the same shape.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..dtypes import TORCH_DTYPES
from .backends.base import Runner


class StepPlan:
    """Buffers and bound shapes of one input shape (``key``); see the module doc."""

    def __init__(self, key: tuple, shapes: Mapping[str, tuple[int, ...]], runners: Mapping[str, Runner],
                 convert: tuple[tuple[str, torch.dtype], ...], batched_block_inputs: tuple[str, ...],
                 prev_dtype: str, device: torch.device):
        self.key = key
        self.shapes = dict(shapes)
        self.rows = self.shapes["l1_diff"][0]
        self.signal_shape = torch.Size(self.shapes["signal"])
        self.elements_per_row = self.signal_shape[1:].numel()  # a policy's means over a group's elements
        # inputs a caller passes with another dtype / device / layout than the graph takes
        self.convert = convert
        self.device = device
        self._runners = runners
        self._batched = batched_block_inputs
        # every embed output but the signal, which goes to the context's own buffer
        self.embed_out = runners["embed"].allocate(self.shapes)
        self._signal = self.embed_out.pop("signal")
        # the embed's prev_signal when a context has nothing to compare against
        self.zeros_prev = torch.zeros(self.shapes["prev_signal"], dtype=TORCH_DTYPES[prev_dtype], device=device)
        self._sub: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
        self._forecast: dict[str, torch.Tensor] | None = None
        self._groups: dict[int, np.ndarray] = {}
        if device.type == "cuda":
            # The sums the host decision reads back each step: pinned, so the copy is async.
            self._host = torch.empty((2, self.rows), dtype=torch.float32, pin_memory=True)
            self._host_np = self._host.numpy()
            self._ready = torch.cuda.Event()
        else:
            self._host = None
        self._sums: tuple[np.ndarray, np.ndarray] | None = None  # CPU: numpy views, made on first read

    def new_context(self) -> dict[str, torch.Tensor]:
        """Context-graph outputs, for a cache context at this shape (kept across its calls)."""
        return self._runners["context"].allocate(self.shapes)

    def new_signal(self) -> torch.Tensor:
        """A signal buffer, for a cache context at this shape (it keeps two and alternates)."""
        return torch.empty_like(self._signal)

    def new_output(self) -> dict[str, torch.Tensor]:
        """The head's outputs of one call (fresh: the caller keeps them)."""
        return self._runners["head"].allocate(self.shapes)

    def new_residual(self) -> dict[str, torch.Tensor]:
        """Residual buffers of the whole batch, for a cache context that starts at this shape."""
        return self._runners["blocks"].allocate(self.shapes)

    def forecast_buffer(self) -> dict[str, torch.Tensor]:
        """Where a skipped call's extrapolated residual goes for the head (one per shape, shared
        by the cache contexts: it is valid during one call)."""
        if self._forecast is None:
            self._forecast = self.new_residual()
        return self._forecast

    def group_of_row(self, n_groups: int) -> np.ndarray:
        """Row r belongs to decision group r % n_groups (every row to group 0 in batch mode)."""
        groups = self._groups.get(n_groups)
        if groups is None:
            groups = self._groups[n_groups] = np.arange(self.rows, dtype=np.int32) % n_groups
        return groups

    def sub_batch(self, rows: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(gathered per-row blocks inputs, blocks outputs) for a sub-batch of ``rows`` rows."""
        sub = self._sub.get(rows)
        if sub is None:
            shapes = dict(self.shapes)
            for name in (*self._batched, *self._runners["blocks"].output_names):
                shapes[name] = (rows, *self.shapes[name][1:])
            blocks = self._runners["blocks"].spec
            inputs = {s.name: torch.empty(shapes[s.name], dtype=TORCH_DTYPES[s.dtype], device=self.device)
                      for s in blocks.inputs if s.name in self._batched}
            sub = self._sub[rows] = (inputs, self._runners["blocks"].allocate(shapes))
        return sub

    def row_index(self, rows: np.ndarray) -> torch.Tensor:
        """The rows to gather, as an index tensor on the device."""
        index = torch.from_numpy(rows)
        if self._host is None:
            return index
        # From pinned memory: an async copy (a pageable one would wait for the device first);
        # PyTorch's host allocator keeps the pinned block until the copy has run.
        return index.pin_memory().to(self.device, non_blocking=True)

    def read_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """The embed's per-row ``l1_diff`` / ``l1_prev`` on the host, for a policy that reads
        the signal sums (a static policy never calls it).

        On a GPU this is the one point per step where the host waits for the device: the
        decision is taken on the host and chooses which graph to launch next, so the host needs
        these 2·B floats before it can go on.  One non-blocking copy into pinned memory and a
        wait on an event recorded right after it (not a device or stream synchronize).  The
        kernel in :mod:`.experimental.device_criterion` takes the same decision on the device,
        but no runtime code uses it: on a GPU every call of a policy that reads the sums waits
        here once (after the first call of a generation, which has nothing to compare).
        """
        if self._host is None:
            if self._sums is None:  # views of the plan's buffers: Tensor.numpy() costs ~20 us a call
                self._sums = (self.embed_out["l1_diff"].numpy(), self.embed_out["l1_prev"].numpy())
            return self._sums
        diff, prev = self.embed_out["l1_diff"], self.embed_out["l1_prev"]
        self._host[0].copy_(diff, non_blocking=True)
        self._host[1].copy_(prev, non_blocking=True)
        self._ready.record()
        self._ready.synchronize()
        return self._host_np[0], self._host_np[1]
