"""LTX-Video (LTXVideoTransformer3DModel): one stack of blocks over packed video tokens.

Signal: block 0's modulated input ``norm1(x) * (1 + scale_msa) + shift_msa``, the shift and
scale taken from ``scale_shift_table + temb`` as the block takes them.
Cached: the token residual through all blocks AND ``norm_out`` with the final scale/shift
(upstream's TeaCache4LTX-Video caches that whole stretch); only ``proj_out`` always runs.
Upstream counts one step per transformer call; LTXPipeline batches CFG into that call
(``cache_context("cond_uncond")``): one decision for both rows, first and last step forced.

The pipeline passes the latent grid as Python ints (``num_frames``, ``height``, ``width``)
and ``rope_interpolation_scale`` as floats; the graphs take the grid as the shape of an int32
``video_grid`` tensor (values unused) and the scale as a (3,) tensor, so the model's own
RoPE module builds the tables inside the embed graph at every size.
"""
from __future__ import annotations

import math

import torch

from ..errors import TeaCacheError
from .base import Family, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes, text_axis
from .registry import register


class LTXVideoEmbed(Part):
    input_names = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask",
                   "video_grid", "rope_interpolation_scale", "prev_signal")
    output_names = ("hidden", "encoder_hidden", "temb", "embedded_timestep", "text_bias", "rotary_cos",
                    "rotary_sin", "signal", "l1_diff", "l1_prev")

    def __init__(self, model):
        super().__init__(model)
        self.rope = RotaryTables(model.rope)

    def forward(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, video_grid,
                rope_interpolation_scale, prev_signal):
        m = self.model
        b = hidden_states.shape[0]
        frames, height, width = video_grid.shape
        rotary_cos, rotary_sin = self.rope(b, frames, height, width, rope_interpolation_scale)
        # The model's mask-to-bias step: 0 where a text token counts, -10000 where not.
        text_bias = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)
        hidden = m.proj_in(hidden_states)
        temb, embedded_timestep = m.time_embed(timestep.flatten(), batch_size=b, hidden_dtype=hidden.dtype)
        # One timestep per sample (LTXPipeline): the model's view(b, -1, dim) is (b, 1, dim),
        # written with a literal 1 so that the export sees a static broadcast dim.
        temb, embedded_timestep = temb.unsqueeze(1), embedded_timestep.unsqueeze(1)
        encoder_hidden = m.caption_projection(encoder_hidden_states).view(b, -1, hidden.size(-1))
        signal = modulated_input(m.transformer_blocks[0], hidden, temb)
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return (hidden, encoder_hidden, temb, embedded_timestep, text_bias, rotary_cos, rotary_sin,
                signal, l1_diff, l1_prev)


class RotaryTables(torch.nn.Module):
    """LTXVideoRotaryPosEmbed.forward with its frequency vector computed once, in PyTorch.

    The model builds ``theta ** linspace(0, 1, dim // 6)`` on every call; exported, the
    linspace rounds differently in its last bit, which ``10000 ** x`` turns into angle errors
    of ~2e-3 at real widths (2048 channels).  The vector depends on the config only, so it is
    a buffer here, built by the model's expression; the grid is the model's own
    ``_prepare_video_coords``, the rest its forward, step for step
    (tests/families/test_ltx_video.py compares the two).
    """

    def __init__(self, rope):
        super().__init__()
        self.rope = rope
        freqs = rope.theta ** torch.linspace(math.log(1.0, rope.theta), math.log(rope.theta, rope.theta),
                                             rope.dim // 6, dtype=torch.float32)
        self.register_buffer("freqs", freqs * math.pi / 2.0, persistent=False)

    def forward(self, batch, frames, height, width, rope_interpolation_scale):
        grid = self.rope._prepare_video_coords(batch, frames, height, width, rope_interpolation_scale,
                                               self.freqs.device)
        freqs = (self.freqs * (grid.unsqueeze(-1) * 2 - 1)).transpose(-1, -2).flatten(2)
        cos, sin = freqs.cos().repeat_interleave(2, dim=-1), freqs.sin().repeat_interleave(2, dim=-1)
        pad = self.rope.dim % 6
        if pad:
            cos = torch.cat([torch.ones_like(cos[:, :, :pad]), cos], dim=-1)
            sin = torch.cat([torch.zeros_like(cos[:, :, :pad]), sin], dim=-1)
        return cos, sin


def modulated_input(block, hidden, temb):
    """What block 0's attention sees: ``norm1(x) * (1 + scale_msa) + shift_msa``, with the
    shift and scale drawn from ``scale_shift_table + temb`` as the block draws them."""
    table = block.scale_shift_table
    ada = table[None, None] + temb.reshape(hidden.shape[0], temb.size(1), table.shape[0], -1)
    shift_msa, scale_msa = ada[:, :, 0], ada[:, :, 1]
    return block.norm1(hidden) * (1 + scale_msa) + shift_msa


class LTXVideoBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "temb", "embedded_timestep", "text_bias", "rotary_cos",
                   "rotary_sin")
    output_names = ("residual",)

    def forward(self, hidden, encoder_hidden, temb, embedded_timestep, text_bias, rotary_cos, rotary_sin):
        m = self.model
        # The cross-attention's prepare_attention_mask repeats the bias per head; done here as
        # expand + reshape to the text's own (batch, length), which the export then sizes as
        # batch*heads (its repeat_interleave gets a size the export cannot relate to the
        # batch), so the processor finds it repeated.
        b, t = encoder_hidden.shape[:2]
        heads = m.transformer_blocks[0].attn2.heads
        text_bias = text_bias[:, None].expand(b, heads, 1, t).reshape(b * heads, 1, t)
        h = hidden
        for block in m.transformer_blocks:
            h = block(hidden_states=h, encoder_hidden_states=encoder_hidden, temb=temb,
                      image_rotary_emb=(rotary_cos, rotary_sin), encoder_attention_mask=text_bias)
        # Upstream caches through the output norm and its timestep shift/scale (the model's
        # forward, step for step).
        shift_scale = m.scale_shift_table[None, None] + embedded_timestep[:, :, None]
        shift, scale = shift_scale[:, :, 0], shift_scale[:, :, 1]
        return m.norm_out(h) * (1 + scale) + shift - hidden


class LTXVideoHead(Part):
    input_names = ("hidden", "residual")
    output_names = ("output",)

    def forward(self, hidden, residual):
        return self.model.proj_out(hidden + residual)


@register
class LTXVideo(Family):
    name = "ltx_video"
    class_name = "LTXVideoTransformer3DModel"
    inputs = (
        Input("hidden_states", ("batch", "frames*height*width", "in_channels"), "latents"),  # packed tokens
        Input("encoder_hidden_states", ("batch", "txt_seq", "caption_channels")),
        Input("timestep", ("batch",), "timestep"),
        Input("encoder_attention_mask", ("batch", "txt_seq"), "mask"),
        Input("video_grid", ("frames", "height", "width"), "constant", dtype=torch.int32),  # its shape only
        # What LTXPipeline passes: (temporal compression / frame rate, spatial, spatial).
        Input("rope_interpolation_scale", (3,), "constant", dtype=torch.float32, value=(8 / 25, 32.0, 32.0)),
    )
    forward_kwargs = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask",
                      "num_frames", "height", "width", "rope_interpolation_scale")
    variants = {
        "LTX-Video": Variant(
            "LTX-Video",
            (21.4700694, -12.8016453, 2.31279151, 0.792487521, 0.00969274326),
            # 0.03 -> 1.6x, 0.05 -> 2.1x (upstream's script runs 0.05).  The default is the
            # "slow" setting, as for the other families: a default should cost little quality.
            default_threshold=0.03,
        ),
    }
    # LTX-Video 0.9: 768x512, 161 frames -> 24x16 latents, 21 latent frames (32x spatial, 8x
    # temporal compression, patch size 1); resolutions up to 1280 a side and 257 frames.
    axes = (
        Axis("batch", 1, 2, 2, help="batch size; LTXPipeline batches CFG (2 rows per prompt)"),
        *latent_axes(frames=(21, 33), height=(16, 40), width=(24, 40), spatial=32, temporal=8),
        text_axis("T5", 128, min=8),
    )
    signal = ("transformer_blocks[0].norm1(proj_in(x)) * (1 + scale_msa) + shift_msa, from "
              "scale_shift_table + temb, video tokens")
    signal_dims = {0: "batch", 1: AUTO}
    signal_block_count = "num_layers"
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4LTX-Video"
    note = ("The cached residual includes norm_out and the final timestep scale/shift (upstream "
            "TeaCache4LTX-Video); only proj_out runs on a skipped step.")
    timestep_scale = TimestepScale("flow", 1000.0)  # the pipeline passes sigma * 1000

    @classmethod
    def check_config(cls, config):
        if (config.get("patch_size") or 1) != 1 or (config.get("patch_size_t") or 1) != 1:
            raise TeaCacheError(
                f"LTX-Video config has patch_size={config.get('patch_size')}, patch_size_t="
                f"{config.get('patch_size_t')}: the pipelines pass the RoPE grid in latent pixels, "
                f"which matches the tokens only with patch size 1 (every LTX-Video checkpoint)"
            )
        super().check_config(config)

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": LTXVideoEmbed(model), "blocks": LTXVideoBlocks(model), "head": LTXVideoHead(model)}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        if kwargs.get("rope_interpolation_scale") is None:
            raise TeaCacheError(
                "rope_interpolation_scale is None: the exported RoPE applies it (LTX pipelines always "
                "pass it); pass (vae temporal compression / frame_rate, vae spatial compression, vae "
                "spatial compression), e.g. (8 / 25, 32, 32)"
            )
        hidden = kwargs["hidden_states"]
        feed = super().feed_from_kwargs(kwargs)  # a bool mask arrives as 0/1 in the latents' dtype
        timestep = torch.as_tensor(kwargs["timestep"], device=hidden.device)
        feed["timestep"] = timestep.reshape(-1).expand(hidden.shape[0])  # the pipeline's t.expand(batch)
        grid = tuple(int(kwargs[k]) for k in ("num_frames", "height", "width"))
        feed["video_grid"] = torch.zeros(grid, dtype=torch.int32, device=hidden.device)
        scale = torch.as_tensor(kwargs["rope_interpolation_scale"], dtype=torch.float32)
        feed["rope_interpolation_scale"] = scale.reshape(3).to(hidden.device)
        return feed

    @classmethod
    def kwargs_from_feed(cls, feed):
        kwargs = {k: feed[k] for k in ("hidden_states", "encoder_hidden_states", "timestep",
                                       "encoder_attention_mask")}
        kwargs["num_frames"], kwargs["height"], kwargs["width"] = feed["video_grid"].shape
        kwargs["rope_interpolation_scale"] = tuple(float(v) for v in feed["rope_interpolation_scale"])
        return kwargs
