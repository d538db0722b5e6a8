"""The ``io_sums`` feature: how far the model's latent input and its output moved, as per-row sums.

A policy that estimates the change of the model's output from the change of its input
(EasyCache) needs, at every call, ``Σ|x - x_prev|`` of the latent input against the cache
context's previous call, and after every computed call the change of the input and of the
output since the row's computed call before it, and the output's size:
``Σ|x_m - x_c|``, ``Σ|o_m - o_c|``, ``Σ|o_m|``.

Nothing here touches the graphs: the latent is a model input the runtime already holds, the
output is the head's.  Per cache context the reader keeps three fp32 buffers of the latent's
and the output's size on the runtime's device (the previous call's input; per row, the input
and output of its last computed call) and reduces with torch there, on the transformer's
stream.  Only per-row sums reach the host, in one read per call: the output exists only after
the head ran, so a computed call's three sums wait on the device and travel with the next
call's input step (one host wait per step, as TeaCache's signal sums; none on the first call).
"""
from __future__ import annotations

import numpy as np
import torch

from ..policies import Features

STEP, INPUT, OUTPUT, OUTPUT_ABS = range(4)  # rows of the device sums


def _l1_rows(a: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor, out: torch.Tensor) -> None:
    """``out[r] = Σ|a[r] - b[r]|`` in fp32, through ``scratch`` (no allocation)."""
    torch.sub(a, b, out=scratch)
    torch.linalg.vector_norm(scratch, 1, dim=1, out=out)


class IOSums:
    """One cache context's buffers and bookkeeping for the ``io_sums`` feature."""

    def __init__(self, device: torch.device):
        self.device = device
        self.x_prev: torch.Tensor | None = None  # [rows, -1] fp32: the previous call's latent
        self.x_comp: torch.Tensor | None = None  # per row: the latent at its last computed call
        self.o_comp: torch.Tensor | None = None  # per row: the output at its last computed call
        self._scratch: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None  # [4, rows] fp32 on the device (rows: STEP ... OUTPUT_ABS)
        self._pending: np.ndarray | None = None  # rows the previous call computed (None: none)
        self._first: np.ndarray | None = None  # ... for which it was their first computed call
        self._seen: np.ndarray | None = None  # rows with a computed call at this shape
        self._host = self._host_np = self._ready = None

    def _reset(self, x: torch.Tensor) -> None:
        """A first call, or the batch or resolution changed: nothing to compare against."""
        rows = x.shape[0]
        self.x_prev = torch.empty(x.shape, dtype=torch.float32, device=self.device)
        self.x_comp = torch.zeros_like(self.x_prev)
        self.o_comp = self._scratch = None  # sized at first use (the output's size may differ)
        self.sums = torch.zeros((4, rows), dtype=torch.float32, device=self.device)
        self._pending = self._first = None
        self._seen = np.zeros(rows, dtype=bool)
        if self.device.type == "cuda":
            # pinned, so the copy is async; one event per context, waited on right after its copy
            self._host = torch.empty((4, rows), dtype=torch.float32, pin_memory=True)
            self._host_np = self._host.numpy()
            self._ready = torch.cuda.Event()

    def read(self, latent: torch.Tensor, features: Features) -> None:
        """Before the decision: fill ``features``' io_sums fields for this call of the context."""
        x = latent.reshape(latent.shape[0], -1)
        if self.x_prev is None or self.x_prev.shape != x.shape:
            self._reset(x)
            self.x_prev.copy_(x)
            features.input_step = None
            features.computed_input_diff = features.computed_output_diff = features.computed_output_abs = None
            return
        _l1_rows(x, self.x_prev, self._scratch_for(x), self.sums[STEP])
        self.x_prev.copy_(x)
        pending = self._pending
        host = self._to_host(1 if pending is None else 4)
        features.input_step = host[STEP]
        if pending is None:
            features.computed_input_diff = features.computed_output_diff = features.computed_output_abs = None
            return
        first = self._first
        diffs = host[INPUT], host[OUTPUT]
        for values in diffs:
            values[~pending | first] = np.nan
        host[OUTPUT_ABS][~pending] = np.nan
        features.computed_input_diff, features.computed_output_diff = diffs
        features.computed_output_abs = host[OUTPUT_ABS]
        self._pending = None

    def computed(self, plan, output: torch.Tensor, flags: np.ndarray, groups: np.ndarray) -> None:
        """After the head: for the rows whose group computed, the input's and output's change
        since their last computed call and the output's size (read with the next call's sums);
        this call becomes their last computed one."""
        if self.x_prev is None or not flags.any():
            self._pending = None
            return
        o = output.reshape(output.shape[0], -1)
        if self.o_comp is None:
            self.o_comp = torch.zeros(o.shape, dtype=torch.float32, device=self.device)
        x, sums = self.x_prev, self.sums  # x_prev holds this call's latent since read()
        _l1_rows(x, self.x_comp, self._scratch_for(x), sums[INPUT])
        _l1_rows(o, self.o_comp, self._scratch_for(o), sums[OUTPUT])
        torch.linalg.vector_norm(o, 1, dim=1, dtype=torch.float32, out=sums[OUTPUT_ABS])
        rows = flags[groups].astype(bool)
        if rows.all():
            self.x_comp.copy_(x)
            self.o_comp.copy_(o)
        else:  # sample mode, some prompts skipped: only the computed rows move on
            index = plan.row_index(np.flatnonzero(rows))
            self.x_comp.index_copy_(0, index, x.index_select(0, index))
            self.o_comp.index_copy_(0, index, o.index_select(0, index).float())
        self._pending, self._first = rows, rows & ~self._seen
        self._seen |= rows

    def _scratch_for(self, t: torch.Tensor) -> torch.Tensor:
        """An fp32 buffer of ``t``'s [rows, n] shape (one per context, grown to the wider of the
        latent and the output)."""
        width = t.shape[1]
        if self._scratch is None or self._scratch.shape[1] < width:
            self._scratch = torch.empty((t.shape[0], width), dtype=torch.float32, device=self.device)
        return self._scratch[:, :width]

    def _to_host(self, n: int) -> np.ndarray:
        """The first ``n`` rows of the device sums on the host (writable; valid until the next call)."""
        sums = self.sums[:n]
        if self._host is None:
            return sums.numpy()
        self._host[:n].copy_(sums, non_blocking=True)
        self._ready.record()
        self._ready.synchronize()
        return self._host_np[:n]
