"""Label conditioning: stands in for FLUX's T5 (sequence) and CLIP (pooled) text encoders."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from .data import NULL_LABEL, NUM_CLASSES, NUM_TEXT_TOKENS

WEIGHTS_NAME = "label_embedder.safetensors"
CONFIG_NAME = "label_embedder_config.json"


class LabelEmbedder(nn.Module):
    """Maps labels 0..9 (and ``NULL_LABEL`` = 10 for the unconditional branch) to

    * ``encoder_hidden_states`` (B, num_tokens, joint_attention_dim) -- the "prompt" tokens,
    * ``pooled_projections``    (B, pooled_projection_dim)           -- the pooled "prompt" vector.

    Plain lookup tables: a label has no structure to encode, and tables keep the
    null embedding a single learned vector, like an empty-prompt embedding.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        num_tokens: int = NUM_TEXT_TOKENS,
        joint_attention_dim: int = 64,
        pooled_projection_dim: int = 64,
    ):
        super().__init__()
        self.config = dict(
            num_classes=num_classes,
            num_tokens=num_tokens,
            joint_attention_dim=joint_attention_dim,
            pooled_projection_dim=pooled_projection_dim,
        )
        self.num_tokens = num_tokens
        self.joint_attention_dim = joint_attention_dim
        # +1 row for the null label used by classifier-free guidance.
        self.tokens = nn.Embedding(num_classes + 1, num_tokens * joint_attention_dim)
        self.pooled = nn.Embedding(num_classes + 1, pooled_projection_dim)
        # Small init: the transformer's context_embedder / time_text_embed see inputs of a sane scale.
        nn.init.normal_(self.tokens.weight, std=0.5)
        nn.init.normal_(self.pooled.weight, std=0.5)

    @property
    def null_label(self) -> int:
        return self.config["num_classes"]

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = labels.to(self.tokens.weight.device).long()
        enc = self.tokens(labels).view(labels.shape[0], self.num_tokens, self.joint_attention_dim)
        return enc, self.pooled(labels)

    # --- persistence (safetensors + json, mirroring diffusers' save_pretrained layout) ---
    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        state = {k: (v.to(dtype) if dtype is not None else v).contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, WEIGHTS_NAME))
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            json.dump(self.config, f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, torch_dtype: torch.dtype = torch.float32) -> "LabelEmbedder":
        from safetensors.torch import load_file

        with open(os.path.join(directory, CONFIG_NAME)) as f:
            config = json.load(f)
        module = cls(**config)
        state = load_file(os.path.join(directory, WEIGHTS_NAME))
        module.load_state_dict({k: v.float() for k, v in state.items()})
        return module.to(torch_dtype).eval()


assert NULL_LABEL == NUM_CLASSES  # the null label is the extra last row of the tables
