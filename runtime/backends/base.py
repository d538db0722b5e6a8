"""One runner lifecycle for every backend: activate / infer / deactivate, or ``with``."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import torch

from ...manifest import GraphSpec

class Runner(ABC):
    """Runs one graph: named torch tensors in, named torch tensors out, on ``device``."""

    def __init__(self, name: str, spec: GraphSpec, device: torch.device):
        self.name = name
        self.spec = spec
        self.device = _normalise(torch.device(device))
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

    def infer(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # No activation check per call on the hot path beyond this flag.
        if not self.active:
            self.activate()
        return self._infer({n: feed[n] for n in self.input_names})

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def _deactivate(self) -> None:
        pass


def _normalise(device: torch.device) -> torch.device:
    """'cuda' -> 'cuda:N' of the current device, so every backend targets the same GPU."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device
