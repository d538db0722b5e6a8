"""The reference backend: the family's PyTorch parts, no export involved."""
from __future__ import annotations

import torch

from .base import Runner


class TorchRunner(Runner):
    def __init__(self, name, spec, device, part: torch.nn.Module):
        super().__init__(name, spec, device)
        self.part = part

    def _activate(self) -> None:
        self.part.to(self.device).eval()

    @torch.no_grad()
    def _infer(self, feed):
        return self.part.run(feed)
