"""Latte (LatteTransformer3DModel): pairs of spatial and temporal blocks.

Signal: spatial block 0's modulated input ``norm1(x) * (1 + scale_msa) + shift_msa``, the
shift and scale drawn from its ``scale_shift_table`` and the adaLN-single timestep embedding
(``timestep_spatial``), over every frame's tokens.
Cached: the token residual through every spatial+temporal pair (the temporal positional
embedding, added before the first temporal block, included); the output norm, its shift and
scale, ``proj_out`` and the unpatchify always run.

Upstream (TeaCache4Latte in its eval suite, on VideoSys' Latte) forces the steps whose
timestep equals the first or the last of the schedule; with distinct timesteps that is the
first and the last call, which is what the counter here forces.  LattePipeline batches CFG
into one unnamed call per step: one decision for both rows.

Sizes: the temporal positional table is built for ``video_length`` frames (the model adds it
only when there is more than one frame), so the frame count is fixed by the config.  The
spatial table is built for ``sample_size``, and the model rebuilds it at any other size behind
a Python size comparison, which torch.export would fix to the traced size; the embed graph
always builds it (``patch_embed``), so height and width stay dynamic.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed

from ..errors import TeaCacheError
from .base import AxisLimit, Family, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes, text_axis
from .registry import register

NO_ADDED_CONDITIONS = {"resolution": None, "aspect_ratio": None}  # what the model passes


class LatteEmbed(Part):
    input_names = ("hidden_states", "timestep", "encoder_hidden_states", "prev_signal")
    output_names = ("hidden", "encoder_hidden", "timestep_emb", "embedded_timestep", "signal",
                    "l1_diff", "l1_prev")

    def forward(self, hidden_states, timestep, encoder_hidden_states, prev_signal):
        m = self.model
        b, c, f, h, w = hidden_states.shape
        frames_first = hidden_states.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)
        tokens = patch_embed(m.pos_embed, frames_first)  # (b*f, n, d)
        timestep_emb, embedded_timestep = m.adaln_single(
            timestep, added_cond_kwargs=NO_ADDED_CONDITIONS, batch_size=b, hidden_dtype=tokens.dtype)
        encoder_hidden = m.caption_projection(encoder_hidden_states)
        # Kept batch-first between the graphs, (b, f, n, d): the runtime's per-sample decisions
        # gather rows of dim 0.
        hidden = tokens.unflatten(0, (b, f))
        signal = modulated_input(m.transformer_blocks[0], tokens, per_frame(timestep_emb, f))
        signal = signal.unflatten(0, (b, f))
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return hidden, encoder_hidden, timestep_emb, embedded_timestep, signal, l1_diff, l1_prev


def patch_embed(embedder, latent):
    """PatchEmbed.forward with its sin-cos table always built for the latent's size: the
    model reuses the table it built for ``sample_size`` when the size matches and rebuilds it
    (the same function, the same arguments) otherwise, behind a size comparison."""
    p = embedder.patch_size
    height, width = latent.shape[-2] // p, latent.shape[-1] // p
    tokens = embedder.proj(latent).flatten(2).transpose(1, 2)  # BCHW -> BNC
    table = get_2d_sincos_pos_embed(embedder.pos_embed.shape[-1], (height, width),
                                    base_size=embedder.base_size, interpolation_scale=embedder.interpolation_scale,
                                    device=latent.device, output_type="pt")
    return (tokens + table.float().unsqueeze(0)).to(tokens.dtype)


def per_frame(x, frames):
    """(b, ...) -> (b*frames, ...), each row repeated per frame (or per token), as the model's
    ``repeat_interleave`` repeats them; written as expand + reshape, because the exporter's
    repeat_interleave by a dynamic count (tokens) expands to a wrong shape."""
    return x.unsqueeze(1).expand(x.shape[0], frames, *x.shape[1:]).reshape(-1, *x.shape[1:])


def modulated_input(block, hidden, timestep_spatial):
    """What spatial block 0's attention sees (its ``ada_norm_single`` branch)."""
    shift_msa, scale_msa = (block.scale_shift_table[None] + timestep_spatial.reshape(hidden.shape[0], 6, -1)
                            ).chunk(6, dim=1)[:2]
    return block.norm1(hidden) * (1 + scale_msa) + shift_msa


class LatteBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "timestep_emb")
    output_names = ("residual",)

    def forward(self, hidden, encoder_hidden, timestep_emb):
        m = self.model
        b, f, n, d = hidden.shape
        # The model's forward from "Prepare text embeddings" to the end of the block loop.
        encoder_spatial = per_frame(encoder_hidden, f).view(-1, *encoder_hidden.shape[-2:])
        timestep_spatial = per_frame(timestep_emb, f).view(-1, timestep_emb.shape[-1])
        timestep_temp = per_frame(timestep_emb, n).view(-1, timestep_emb.shape[-1])  # per token
        h = hidden.flatten(0, 1)
        for i, (spatial, temporal) in enumerate(zip(m.transformer_blocks, m.temporal_transformer_blocks)):
            h = spatial(h, None, encoder_spatial, None, timestep_spatial, None, None)
            h = h.reshape(b, -1, n, d).permute(0, 2, 1, 3).reshape(-1, f, d)  # (b*n, f, d)
            if i == 0 and f > 1:
                h = h + m.temp_pos_embed.to(h.dtype)
            h = temporal(h, None, None, None, timestep_temp, None, None)
            h = h.reshape(b, -1, f, d).permute(0, 2, 1, 3).reshape(-1, n, d)  # (b*f, n, d)
        return h.reshape(hidden.shape) - hidden


class LatteHead(Part):
    # hidden_states (the model's latent input) only lends its height/width to the unpatchify.
    input_names = ("hidden_states", "hidden", "residual", "embedded_timestep")
    output_names = ("output",)

    def forward(self, hidden_states, hidden, residual, embedded_timestep):
        m = self.model
        b, f = hidden.shape[:2]
        p, channels = m.config.patch_size, m.out_channels
        rows, cols = hidden_states.shape[3] // p, hidden_states.shape[4] // p
        shift, scale = (m.scale_shift_table[None] + per_frame(embedded_timestep, f)[:, None]).chunk(2, dim=1)
        out = m.proj_out(m.norm_out((hidden + residual).flatten(0, 1)) * (1 + scale) + shift)
        # The model's unpatchify: (b*f, n, p*p*c) -> (b, c, f, H, W).
        out = torch.einsum("nhwpqc->nchpwq", out.reshape(-1, rows, cols, p, p, channels))
        out = out.reshape(b, f, channels, rows * p, cols * p)
        return out.permute(0, 2, 1, 3, 4)


@register
class Latte(Family):
    name = "latte"
    class_name = "LatteTransformer3DModel"
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "frames", "height", "width"), "latents"),
        Input("timestep", ("batch",), "timestep"),  # DDIM's int64 timesteps (TensorRT: an Int64 binding)
        Input("encoder_hidden_states", ("batch", "txt_seq", "caption_channels")),
    )
    forward_kwargs = ("hidden_states", "timestep", "encoder_hidden_states", "enable_temporal_attentions")
    variants = {
        "Latte-1": Variant(
            "Latte-1",
            (-2464.34137, 308.044764, 80.7447667, -4.11385132, 0.111001402),
            # Upstream's "slow" setting (its "fast" one is 0.2): a default should cost little
            # quality, as for the other families.
            default_threshold=0.1,
        ),
    }
    # Latte-1: 512x512, 16 frames (64x64 latents, 2x2 patches), T5 prompts of up to 120
    # tokens; axes_for takes the frames from the config and the sizes' patch multiple.
    axes = (
        Axis("batch", 1, 2, 2, help="batch size; LattePipeline batches CFG (2 rows per prompt)"),
        *latent_axes(height=(64, 64), width=(64, 64), patch=2),
        text_axis("T5", 120, min=8),
    )
    signal = ("transformer_blocks[0].norm1(x) * (1 + scale_msa) + shift_msa, from scale_shift_table "
              "+ adaln_single(timestep), every frame's tokens")
    signal_dims = {0: "batch", 2: AUTO}  # (batch, frames, tokens, dim)
    signal_block_count = "num_layers"
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4Latte (eval suite)"
    note = ("The residual covers every spatial+temporal block pair; upstream forces steps by "
            "timestep value (first/last of the schedule), the same steps as the counter here.")
    timestep_scale = TimestepScale("ddpm")  # LattePipeline: DDIM's integer timesteps

    @classmethod
    def check_config(cls, config):
        if config.get("norm_type") != "ada_norm_single":
            raise TeaCacheError(
                f"Latte config has norm_type={config.get('norm_type')!r}: the TeaCache signal is the "
                f"adaLN-single modulated input of block 0, so norm_type must be 'ada_norm_single' "
                f"(as in Latte-1)"
            )
        super().check_config(config)

    @classmethod
    def axes_for(cls, config):
        frames = config.get("video_length", 16)
        p, side = config.get("patch_size") or 2, config.get("sample_size", 64)
        batch, height, width, text = cls.axes
        return (
            batch,
            Axis("frames", frames, frames, frames, fixed=True,
                 help="latent frames: the temporal positional table is built for video_length of them"),
            *(replace(a, min=p, opt=side, max=side, multiple_of=p,
                      help=f"{a.help}; {side} is the size trained at (sample_size)") for a in (height, width)),
            text,
        )

    @classmethod
    def axis_limits(cls, config):
        n = config.get("video_length", 16)
        return {"frames": AxisLimit(n, "video_length", n, "the temporal positional table holds video_length frames")}

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": LatteEmbed(model), "blocks": LatteBlocks(model), "head": LatteHead(model)}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        if kwargs.get("enable_temporal_attentions") is False:
            raise TeaCacheError(
                "enable_temporal_attentions=False: the exported blocks include the temporal blocks; "
                "call with enable_temporal_attentions=True (LattePipeline's default)"
            )
        hidden = kwargs["hidden_states"]
        timestep = torch.as_tensor(kwargs["timestep"], device=hidden.device).reshape(-1)
        return {"hidden_states": hidden, "encoder_hidden_states": kwargs["encoder_hidden_states"],
                "timestep": timestep.expand(hidden.shape[0]) if timestep.numel() == 1 else timestep}
