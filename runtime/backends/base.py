"""One runner lifecycle for every backend: activate / infer / deactivate, or ``with``.

Two ways to run a graph:

- ``infer_into(feed, outputs)``, the step's path: inputs and preallocated output buffers in,
  nothing allocated, no shape algebra; the transformer's step plan owns the buffers (one set
  per input shape) and calls it on the transformer's CUDA stream;
- ``infer(feed)``, for tools and tests: allocates the outputs at the shapes the manifest's
  expressions give, and on a GPU hands work between the caller's stream and the runner's.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import torch

from ...dtypes import TORCH_DTYPES
from ...manifest import GraphSpec
from ...shapes import propagate


class Runner(ABC):
    """Runs one graph: named torch tensors in, named torch tensors out, on ``device``.

    ``stream``: the CUDA stream ``infer_into`` runs on (the transformer's own; None on the
    CPU).  Backends that bind a stream at load (ONNX Runtime's CUDA provider) take it here.
    """

    def __init__(self, name: str, spec: GraphSpec, device: torch.device, stream=None):
        self.name = name
        self.spec = spec
        self.device = _normalise(torch.device(device))
        self.stream = stream
        self.active = False

    @property
    def input_names(self) -> list[str]:
        return self.spec.input_names

    @property
    def output_names(self) -> list[str]:
        return self.spec.output_names

    def activate(self) -> "Runner":
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def allocate(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """Output buffers at ``shapes`` (every tensor's shape, from :func:`shapes.propagate`)."""
        return {s.name: torch.empty(shapes[s.name], dtype=TORCH_DTYPES[s.dtype], device=self.device)
                for s in self.spec.outputs}

    def infer_into(self, feed: Mapping[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on ``feed`` (contiguous tensors on the device; extra entries are ignored), writing
        every output into its buffer in ``outputs``; returns ``outputs``.  On a GPU the work is
        queued on ``self.stream``, which must be the current stream."""
        # No activation check on the hot path beyond this flag.
        if not self.active:
            self.activate()
        self._infer_into(feed, outputs)
        return outputs

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Allocating convenience over :meth:`infer_into`, from any stream."""
        feed = {n: feed[n].contiguous() for n in self.input_names}
        if self.stream is None:
            return self.infer_into(feed, self.allocate(propagate([self.spec], {n: t.shape for n, t in feed.items()})))
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            outputs = self.infer_into(feed, self.allocate(propagate([self.spec], {n: t.shape for n, t in feed.items()})))
        caller.wait_stream(self.stream)
        for t in outputs.values():
            t.record_stream(caller)
        return outputs

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer_into(self, feed: Mapping[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None: ...

    def _deactivate(self) -> None:
        pass


def _normalise(device: torch.device) -> torch.device:
    """'cuda' -> 'cuda:N' of the current device, so every backend targets the same GPU."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device
