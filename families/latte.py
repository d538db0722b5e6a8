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

Sizes: the positional tables fix the rest.  The spatial table is built for ``sample_size``
(the model rebuilds it at another size in a way torch.export must fix to one size) and the
temporal one for ``video_length`` frames, so frames, height and width are fixed by the config
and only the batch and the text length are dynamic.
"""
from __future__ import annotations

import torch

from ..errors import TeaCacheError
from .base import Axis, Family, Part, TimestepScale, Variant, criterion_sums
from .registry import register

NO_ADDED_CONDITIONS = {"resolution": None, "aspect_ratio": None}  # what the model passes


class LatteEmbed(Part):
    input_names = ("hidden_states", "timestep", "encoder_hidden_states", "prev_signal")
    output_names = ("hidden", "encoder_hidden", "timestep_emb", "embedded_timestep", "signal",
                    "l1_diff", "l1_prev")

    def forward(self, hidden_states, timestep, encoder_hidden_states, prev_signal):
        m = self.model
        b, c, f, h, w = hidden_states.shape
        tokens = m.pos_embed(hidden_states.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w))  # (b*f, n, d)
        timestep_emb, embedded_timestep = m.adaln_single(
            timestep, added_cond_kwargs=NO_ADDED_CONDITIONS, batch_size=b, hidden_dtype=tokens.dtype)
        encoder_hidden = m.caption_projection(encoder_hidden_states)
        # Kept batch-first between the graphs, (b, f, n, d): the runtime's per-sample decisions
        # gather rows of dim 0.
        hidden = tokens.unflatten(0, (b, f))
        signal = modulated_input(m.transformer_blocks[0], tokens, per_frame(timestep_emb, f))
        l1_diff, l1_prev = criterion_sums(signal.unflatten(0, (b, f)), prev_signal)
        return hidden, encoder_hidden, timestep_emb, embedded_timestep, signal.unflatten(0, (b, f)), l1_diff, l1_prev


def per_frame(x, frames):
    """(b, ...) -> (b*frames, ...), each row repeated per frame, as the model's forward does."""
    return x.repeat_interleave(frames, dim=0, output_size=x.shape[0] * frames)


def modulated_input(block, hidden, timestep_spatial):
    """What spatial block 0's attention sees (its ``ada_norm_single`` branch)."""
    shift_msa, scale_msa = (block.scale_shift_table[None] + timestep_spatial.reshape(hidden.shape[0], 6, -1)
                            ).chunk(6, dim=1)[:2]
    return block.norm1(hidden) * (1 + scale_msa) + shift_msa


class LatteBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "timestep_emb")
    output_names = ("residual",)
    dynamic = {"hidden": {0: "batch"}, "encoder_hidden": {0: "batch", 1: "txt_seq"},
               "timestep_emb": {0: "batch"}}

    def forward(self, hidden, encoder_hidden, timestep_emb):
        m = self.model
        b, f, n, d = hidden.shape
        # The model's forward from "Prepare text embeddings" to the end of the block loop.
        encoder_spatial = per_frame(encoder_hidden, f).view(-1, encoder_hidden.shape[-2], encoder_hidden.shape[-1])
        timestep_spatial = per_frame(timestep_emb, f).view(-1, timestep_emb.shape[-1])
        timestep_temp = timestep_emb.repeat_interleave(n, dim=0, output_size=b * n).view(-1, timestep_emb.shape[-1])
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
    input_names = ("hidden", "residual", "embedded_timestep")
    output_names = ("output",)
    dynamic = {"hidden": {0: "batch"}, "residual": {0: "batch"}, "embedded_timestep": {0: "batch"}}

    def forward(self, hidden, residual, embedded_timestep):
        m = self.model
        b, f, n, _ = hidden.shape
        p, channels = m.config.patch_size, m.out_channels
        side = m.config.sample_size // p  # the fixed token grid (see the module docstring)
        shift, scale = (m.scale_shift_table[None] + per_frame(embedded_timestep, f)[:, None]).chunk(2, dim=1)
        out = m.proj_out(m.norm_out((hidden + residual).flatten(0, 1)) * (1 + scale) + shift)
        # The model's unpatchify: (b*f, n, p*p*c) -> (b, c, f, H, W).
        out = torch.einsum("nhwpqc->nchpwq", out.reshape(-1, side, side, p, p, channels))
        out = out.reshape(b, f, channels, side * p, side * p)
        return out.permute(0, 2, 1, 3, 4)


@register
class Latte(Family):
    name = "latte"
    class_name = "LatteTransformer3DModel"
    model_inputs = ("hidden_states", "timestep", "encoder_hidden_states")
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
    # Latte-1: 512x512, 16 frames (64x64 latents), T5 prompts of up to 120 tokens; frames,
    # height and width come from the config (axes_for).
    axes = (
        Axis("batch", 1, 2, 2, help="batch size; LattePipeline batches CFG (2 rows per prompt)"),
        Axis("txt_seq", 8, 120, 120, help="text tokens (T5, padded to max_sequence_length=120)"),
    )
    signal = ("transformer_blocks[0].norm1(x) * (1 + scale_msa) + shift_msa, from scale_shift_table "
              "+ adaln_single(timestep), every frame's tokens")
    signal_dims = {0: "batch"}
    signal_block_count = "num_layers"
    cached = ("hidden_states",)
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
        side = config.get("sample_size", 64)
        return (
            cls.axes[0],
            Axis("frames", frames, frames, frames,
                 help="latent frames, fixed by the temporal positional table (video_length)"),
            Axis("height", side, side, side, help="latent height, fixed by the positional table (sample_size)"),
            Axis("width", side, side, side, help="latent width, fixed by the positional table (sample_size)"),
            cls.axes[1],
        )

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": LatteEmbed(model), "blocks": LatteBlocks(model), "head": LatteHead(model)}

    @classmethod
    def input_dims(cls, config):
        return {
            "hidden_states": {0: "batch"},
            "timestep": {0: "batch"},
            "encoder_hidden_states": {0: "batch", 1: "txt_seq"},
        }

    @classmethod
    def example_inputs(cls, config, dims, dtype, seed=0):
        for a in cls.axes_for(config)[1:4]:
            if dims[a.name] != a.opt:
                raise TeaCacheError(
                    f"{a.name}={dims[a.name]}: {a.help} = {a.opt} in this Latte config; "
                    f"use --axis {a.name}={a.opt}:{a.opt}:{a.opt}"
                )
        g = torch.Generator().manual_seed(seed)
        b, f, h, w, t = (dims[k] for k in ("batch", "frames", "height", "width", "txt_seq"))
        return {
            "hidden_states": torch.randn(b, config["in_channels"], f, h, w, generator=g).to(dtype),
            # DDIM timesteps: int64, as the pipeline passes them (TensorRT: an Int64 binding).
            "timestep": torch.randint(0, 1000, (b,), generator=g),
            "encoder_hidden_states": torch.randn(b, t, config["caption_channels"], generator=g).to(dtype),
        }

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
