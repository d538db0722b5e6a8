"""The "prompt": digit, direction and speed as three text tokens, standing in for Wan's UMT5.

``PromptEmbedder`` maps each condition to one token of ``encoder_hidden_states``
(B, 3, text_dim) through its own lookup table.  Each table has one extra row, the null
condition: the unconditional branch of classifier-free guidance reads the all-null prompt,
as Wan reads the embedding of its negative prompt.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_write_bytes
from .constants import DIRECTION_NAMES, EMBEDDER_CONFIG, EMBEDDER_WEIGHTS, NUM_CLASSES, SPEEDS


class PromptEmbedder(nn.Module):
    def __init__(self, text_dim: int = 64, num_classes: int = NUM_CLASSES,
                 num_directions: int = len(DIRECTION_NAMES), num_speeds: int = len(SPEEDS)):
        super().__init__()
        self.config = dict(text_dim=text_dim, num_classes=num_classes, num_directions=num_directions,
                           num_speeds=num_speeds)
        # +1 row per table: the null condition (index = the table's size).
        self.digit = nn.Embedding(num_classes + 1, text_dim)
        self.direction = nn.Embedding(num_directions + 1, text_dim)
        self.speed = nn.Embedding(num_speeds + 1, text_dim)
        for table in (self.digit, self.direction, self.speed):
            nn.init.normal_(table.weight, std=0.5)  # the text projection sees inputs of a sane scale

    @property
    def null(self) -> tuple[int, int, int]:
        """The null index of each table (digit, direction, speed)."""
        c = self.config
        return c["num_classes"], c["num_directions"], c["num_speeds"]

    def forward(self, digits: torch.Tensor, directions: torch.Tensor, speeds: torch.Tensor) -> torch.Tensor:
        dev = self.digit.weight.device
        tokens = (self.digit(digits.to(dev).long()), self.direction(directions.to(dev).long()),
                  self.speed(speeds.to(dev).long()))
        return torch.stack(tokens, dim=1)

    def null_prompt(self, batch: int) -> torch.Tensor:
        d, r, s = (torch.full((batch,), k, dtype=torch.long) for k in self.null)
        return self(d, r, s)

    # --- persistence: safetensors + json, beside the transformer/ folder ---
    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        from safetensors.torch import save

        os.makedirs(directory, exist_ok=True)
        state = {k: (v.to(dtype) if dtype is not None else v).contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(Path(directory) / EMBEDDER_WEIGHTS, save(state))
        atomic_write_bytes(Path(directory) / EMBEDDER_CONFIG, json.dumps(self.config, indent=2).encode())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, torch_dtype: torch.dtype = torch.float32) -> "PromptEmbedder":
        from safetensors.torch import load_file

        module = cls(**json.loads((Path(directory) / EMBEDDER_CONFIG).read_bytes()))
        module.load_state_dict({k: v.float() for k, v in load_file(Path(directory) / EMBEDDER_WEIGHTS).items()})
        return module.to(torch_dtype).eval()
