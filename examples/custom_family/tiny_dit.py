"""A small video DiT written from scratch in the style of Open-Sora 1.2 (STDiT): the user's own
model, which knows nothing of teacache-trt.

Latents ``x`` (B, C, T, H, W) are cut into patches; each block runs spatial self-attention
(within a frame), temporal self-attention (per position), cross-attention to the caption
``y`` (B, L, caption_channels) under its token ``mask``, and an MLP, all modulated by one
timestep embedding (adaLN-single: ``shift, scale, gate`` from ``t_block(t)`` plus a learned
table per block).  It is built from a config object, not from keyword arguments, and returns
a dataclass (or a tuple with ``return_dict=False``), as many research codebases do.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class TinyDiTConfig:
    in_channels: int = 4
    hidden_size: int = 32
    depth: int = 2
    num_heads: int = 2
    patch_size: tuple = (1, 2, 2)
    caption_channels: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DiTOutput:
    sample: torch.Tensor


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def sinusoidal(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x, context=None, mask=None):
        b, n, d = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = (t.view(b, context.shape[1], self.heads, -1).transpose(1, 2) for t in self.kv(context).chunk(2, -1))
        bias = None if mask is None else ((1.0 - mask) * -1e4)[:, None, None, :].to(q.dtype)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Spatial attention, temporal attention, cross-attention, MLP: one adaLN-single block."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.spatial_attn = Attention(dim, heads)
        self.temporal_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def modulation(self, t_mlp):
        return (self.scale_shift_table[None] + t_mlp.unflatten(1, (6, -1))).chunk(6, dim=1)

    def forward(self, x, y, mask, t_mlp, frames, temporal=True):
        b, n, d = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(t_mlp)
        h = modulate(self.norm1(x), shift_msa, scale_msa).unflatten(1, (frames, -1))  # (B, T, S, D)
        h = self.spatial_attn(h.flatten(0, 1)).unflatten(0, (b, frames))
        if temporal:
            h = self.temporal_attn(h.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, -1)).transpose(1, 2)
        x = x + gate_msa * h.flatten(1, 2)
        x = x + self.cross_attn(x, y, mask)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class TinyDiT(nn.Module):
    def __init__(self, config: TinyDiTConfig):
        super().__init__()
        self.config = config
        dim, patch = config.hidden_size, tuple(config.patch_size)
        self.patch_size = patch
        self.x_embedder = nn.Conv3d(config.in_channels, dim, patch, patch)
        self.t_embedder = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.y_embedder = nn.Sequential(nn.Linear(config.caption_channels, dim), nn.GELU(approximate="tanh"),
                                        nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, config.num_heads) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.final_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.final_linear = nn.Linear(dim, math.prod(patch) * config.in_channels)

    def embed_timestep(self, timestep):
        return self.t_embedder(sinusoidal(timestep, 256).to(self.x_embedder.weight.dtype))

    def final_layer(self, x, t):
        shift, scale = (self.final_table[None] + t[:, None]).chunk(2, dim=1)
        return self.final_linear(modulate(self.final_norm(x), shift, scale))

    def unpatchify(self, x, grid):
        b, f, h, w = grid
        p_t, p_h, p_w = self.patch_size
        x = x.reshape(b, f, h, w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def forward(self, x, timestep, y, mask=None, enable_temporal_attention=True, return_dict=True):
        h = self.x_embedder(x)  # (B, D, T, H', W')
        grid = (h.shape[0], *h.shape[2:])
        h = h.flatten(2).transpose(1, 2)
        t = self.embed_timestep(torch.as_tensor(timestep, device=x.device).expand(x.shape[0]))  # one per sample
        t_mlp = self.t_block(t)
        text = self.y_embedder(y)
        mask = torch.ones(y.shape[:2], dtype=text.dtype, device=y.device) if mask is None else mask.to(text.dtype)
        for block in self.blocks:
            h = block(h, text, mask, t_mlp, grid[1], enable_temporal_attention)
        out = self.unpatchify(self.final_layer(h, t), grid)
        return DiTOutput(sample=out) if return_dict else (out,)
