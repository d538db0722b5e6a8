"""A DiT outside diffusers in the style of Open-Sora 1.2's STDiT3, and its family, written as a
user would write both in one file: spatial and temporal blocks with adaLN-single modulation
(``t2i_modulate``), cross-attention to the caption, a T2I final layer.  Exported through
``--family-module tests/models/opensora.py:OpenSora`` (a file path).

Upstream TeaCache (eval/teacache/experiments/opensora.py): signal
``t2i_modulate(spatial_blocks[0].norm1(x), shift_msa, scale_msa)`` with the block's table plus
``t_block(t)``; residual through every spatial+temporal pair; the final layer always runs;
the first and last timesteps compute (upstream tests the timestep value, the same steps when
timesteps are distinct); CFG batched into one call.
"""
import math

import torch
from torch import nn

from teacache_trt.families import AUTO, Axis, Input, ModuleFamily, Part, TimestepScale, Variant, criterion_sums

FAMILY = "opensora_stdit"
FAMILY_MODULE = __file__ + ":OpenSora"
AXES = {"batch": (1, 2, 2), "frames": (1, 2, 3), "height": (2, 4, 8), "width": (2, 6, 8), "txt_seq": (2, 5, 8)}
POINT = {"batch": 2, "frames": 3, "height": 4, "width": 6, "txt_seq": 5}


# --- the model (a user's own code) ------------------------------------------------------------
def t2i_modulate(x, shift, scale):
    return x * (1 + scale) + shift


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x, context=None):
        b, n, d = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = (t.view(b, context.shape[1], self.heads, -1).transpose(1, 2) for t in self.kv(context).chunk(2, -1))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class STDiTBlock(nn.Module):
    """Self-attention over space (within a frame) or time (per position), cross-attention, MLP."""

    def __init__(self, dim, heads, temporal):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x, y, t_mlp, frames):
        b, n, d = x.shape
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t_mlp.reshape(b, 6, -1)).chunk(6, dim=1)
        h = t2i_modulate(self.norm1(x), shift_msa, scale_msa).unflatten(1, (frames, -1))  # (B, T, S, D)
        if self.temporal:
            h = self.attn(h.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, -1)).transpose(1, 2)
        else:
            h = self.attn(h.flatten(0, 1)).unflatten(0, (b, frames))
        x = x + gate_msa * h.flatten(1, 2)
        x = x + self.cross_attn(x, y)
        return x + gate_mlp * self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim, patch, out_channels):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(dim, math.prod(patch) * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, x, t):
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(t2i_modulate(self.norm(x), shift, scale))


class STDiT(nn.Module):
    def __init__(self, in_channels=4, hidden_size=32, depth=2, num_heads=2, patch_size=(1, 2, 2),
                 caption_channels=16):
        super().__init__()
        self.config = dict(in_channels=in_channels, hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                           patch_size=list(patch_size), caption_channels=caption_channels)
        self.patch_size = tuple(patch_size)
        self.x_embedder = nn.Conv3d(in_channels, hidden_size, self.patch_size, self.patch_size)
        self.t_embedder = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = nn.Sequential(nn.Linear(caption_channels, hidden_size), nn.GELU(approximate="tanh"),
                                        nn.Linear(hidden_size, hidden_size))
        self.spatial_blocks = nn.ModuleList(STDiTBlock(hidden_size, num_heads, False) for _ in range(depth))
        self.temporal_blocks = nn.ModuleList(STDiTBlock(hidden_size, num_heads, True) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, self.patch_size, in_channels)

    def embed_timestep(self, timestep):
        return self.t_embedder(timestep_embedding(timestep, 256).to(self.x_embedder.weight.dtype))

    def unpatchify(self, x, grid):
        b, f, h, w = grid
        p_t, p_h, p_w = self.patch_size
        x = x.reshape(b, f, h, w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        x = self.x_embedder(hidden_states)  # (B, D, T, H', W')
        grid = (x.shape[0], *x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        t = self.embed_timestep(timestep)
        t_mlp = self.t_block(t)
        y = self.y_embedder(encoder_hidden_states)
        for spatial, temporal in zip(self.spatial_blocks, self.temporal_blocks):
            x = spatial(x, y, t_mlp, grid[1])
            x = temporal(x, y, t_mlp, grid[1])
        return self.unpatchify(self.final_layer(x, t), grid)


# --- its family (what teacache-export needs to split it) ----------------------------------------

class Embed(Part):
    input_names = ("hidden_states", "timestep", "encoder_hidden_states", "prev_signal")
    output_names = ("hidden", "text", "t", "t_mlp", "signal", "l1_diff", "l1_prev")

    def forward(self, hidden_states, timestep, encoder_hidden_states, prev_signal):
        m = self.model
        grid = m.x_embedder(hidden_states).permute(0, 2, 3, 4, 1).contiguous()  # (B, T, H', W', D)
        t = m.embed_timestep(timestep)
        t_mlp = m.t_block(t)
        block = m.spatial_blocks[0]
        shift, scale = (block.scale_shift_table[None] + t_mlp.reshape(t.shape[0], 6, -1)).chunk(6, dim=1)[:2]
        signal = t2i_modulate(block.norm1(grid.flatten(1, 3)), shift, scale)
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return grid, m.y_embedder(encoder_hidden_states), t, t_mlp, signal, l1_diff, l1_prev


class Blocks(Part):
    input_names = ("hidden", "text", "t_mlp")
    output_names = ("residual",)

    def forward(self, hidden, text, t_mlp):
        x = hidden.flatten(1, 3)
        for spatial, temporal in zip(self.model.spatial_blocks, self.model.temporal_blocks):
            x = temporal(spatial(x, text, t_mlp, hidden.shape[1]), text, t_mlp, hidden.shape[1])
        return x.reshape(hidden.shape) - hidden


class Head(Part):
    input_names = ("hidden", "residual", "t")
    output_names = ("output",)

    def forward(self, hidden, residual, t):
        grid = hidden + residual
        return self.model.unpatchify(self.model.final_layer(grid.flatten(1, 3), t), grid.shape[:4])


class OpenSora(ModuleFamily):
    name = FAMILY
    module_class = STDiT
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "frames", "height", "width"), "latents"),
        Input("timestep", ("batch",), "timestep", dtype=torch.float32),
        Input("encoder_hidden_states", ("batch", "txt_seq", "caption_channels")),
    )
    auto_axes = ("frames", "height", "width")  # the patch embedding divides them
    variants = {"Open-Sora-1.2": Variant(
        "Open-Sora-1.2", (217.546007, -118.329252, 26.8662585, -0.0459364272, 0.0484426240),
        default_threshold=0.1)}  # upstream's slow setting: 1.55x (fast 0.2: 2.25x)
    axes = (
        Axis("batch", 1, 2, 2, help="CFG batched: 2 rows per prompt"),
        Axis("frames", 1, 2, 3, help="latent frames"),
        Axis("height", 2, 4, 8, multiple_of=2, help="latent height"),
        Axis("width", 2, 6, 8, multiple_of=2, help="latent width"),
        Axis("txt_seq", 1, 5, 8, help="caption tokens"),
    )
    signal = "t2i_modulate(spatial_blocks[0].norm1(x), shift_msa, scale_msa)"
    signal_dims = {0: "batch", 1: AUTO}
    cached = ("hidden_states",)
    timestep_scale = TimestepScale("flow", 1000.0, toward_data=True)  # RFLOW: t = 1000 sigma, z += v * |dt|

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": Embed(model), "blocks": Blocks(model), "head": Head(model)}


# --- the tiny-model protocol (tests/models/__init__.py) -------------------------------------------
def make_model():
    torch.manual_seed(0)
    return STDiT().eval()


def timestep(step, num_steps, batch):
    return torch.full((batch,), 1000.0 * (1.0 - step / num_steps))


def reference_hooks(model):
    """Where the independent reference hooks the model: the signal is computed from block 0's
    own modules on the tokens entering it (the model computes no such tensor itself)."""
    return dict(signal_module=_SpatialSignal(model), blocks=[b for pair in zip(model.spatial_blocks,
                model.temporal_blocks) for b in pair],
                hidden_in=lambda args, kwargs: args[0], identity=lambda args, kwargs: args[0],
                after_blocks=model.final_layer)


class _SpatialSignal:
    """Stands in for a signal module: hands the hook t2i_modulate(norm1(x)) of block 0's inputs."""

    def __init__(self, model):
        self.block = model.spatial_blocks[0]

    def register_forward_hook(self, hook):
        def pre_hook(mod, args):
            x, _, t_mlp, _ = args
            shift, scale = (mod.scale_shift_table[None] + t_mlp.reshape(x.shape[0], 6, -1)).chunk(6, dim=1)[:2]
            hook(mod, args, t2i_modulate(mod.norm1(x), shift, scale))

        return self.block.register_forward_pre_hook(pre_hook)
