"""The reference backend: the family's PyTorch parts, no export involved."""
from __future__ import annotations

import torch

from .base import Runner


class TorchRunner(Runner):
    def __init__(self, name, spec, device, part: torch.nn.Module, stream=None):
        super().__init__(name, spec, device, stream)
        self.part = part

    def _activate(self) -> None:
        self.part.to(self.device).eval()

    @torch.no_grad()
    def _infer_into(self, feed, outputs) -> None:
        # The part allocates its own results; they are copied into the plan's buffers (one
        # memcpy per output) so every backend hands back the same stable buffers.
        for name, t in self.part.run(feed).items():
            outputs[name].copy_(t)
