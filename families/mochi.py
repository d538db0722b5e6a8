"""Mochi (MochiTransformer3DModel): one stack of joint image/text blocks.

Signal: ``transformer_blocks[0].norm1(x, temb)[0]``, the modulated image tokens of block 0.
Cached: the image-token residual through all blocks AND ``norm_out`` (upstream's
TeaCache4Mochi caches ``norm_out(blocks(x), temb) - x``); only ``proj_out`` and the
unpatchify always run.  Upstream counts one step per transformer call; MochiPipeline batches
CFG into that one call (``cache_context("cond_uncond")``), so one decision covers both rows,
first and last step forced.

The model's attention processor loops over the batch and gathers each sample's valid text
tokens with ``torch.nonzero``: a data-dependent shape that torch.export cannot keep dynamic
(the loop would fix the batch size).  The blocks graph runs the same attention with static
shapes instead (``CompactedTextAttnProcessor``): it moves each sample's valid text tokens to
the front, as the model's gather does, and masks the rest, so its output equals the model's
for every mask (right-padded prompts and the all-zero mask of an empty negative prompt alike).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .base import Family, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes, patched_axes, text_axis
from .registry import register


class MochiEmbed(Part):
    input_names = ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask",
                   "prev_signal")
    output_names = ("hidden", "encoder_hidden", "temb", "text_mask", "rotary_cos", "rotary_sin",
                    "signal", "l1_diff", "l1_prev")

    def forward(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, prev_signal):
        m = self.model
        b, _, frames, height, width = hidden_states.shape
        p = m.config.patch_size
        temb, encoder_hidden = m.time_embed(timestep, encoder_hidden_states, encoder_attention_mask,
                                            hidden_dtype=hidden_states.dtype)
        hidden = m.patch_embed(hidden_states.permute(0, 2, 1, 3, 4).flatten(0, 1))
        hidden = hidden.unflatten(0, (b, -1)).flatten(1, 2)
        positions = rope_positions(frames, height // p, width // p, m.rope.target_area, hidden.device)
        rotary_cos, rotary_sin = m.rope._create_rope(m.pos_frequencies, positions)
        signal = m.transformer_blocks[0].norm1(hidden, temb)[0]
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        # int32 between the graphs: an I/O type every backend takes (the mask arrives as float).
        text_mask = (encoder_attention_mask > 0).to(torch.int32)
        return (hidden, encoder_hidden, temb, text_mask, rotary_cos, rotary_sin, signal, l1_diff, l1_prev)


class MochiBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "temb", "text_mask", "rotary_cos", "rotary_sin")
    output_names = ("residual",)

    def forward(self, hidden, encoder_hidden, temb, text_mask, rotary_cos, rotary_sin):
        m = self.model
        h, e = hidden, encoder_hidden
        with compacted_text_attention(m.transformer_blocks):
            for block in m.transformer_blocks:
                h, e = block(hidden_states=h, encoder_hidden_states=e, temb=temb,
                             encoder_attention_mask=text_mask, image_rotary_emb=(rotary_cos, rotary_sin))
        return m.norm_out(h, temb) - hidden  # upstream caches through norm_out


class MochiHead(Part):
    # hidden_states (the model's latent input) only lends its frames/height/width to the
    # unpatchify, so the output has the model's (B, C, F, H, W) layout at any dynamic size.
    input_names = ("hidden_states", "hidden", "residual")
    output_names = ("output",)

    def forward(self, hidden_states, hidden, residual):
        m = self.model
        b, _, frames, height, width = hidden_states.shape
        p = m.config.patch_size
        out = m.proj_out(hidden + residual)
        # The model's unpatchify, with the channel count spelled out where it writes -1, so
        # the exported output's channel dim is static.
        channels = m.config.out_channels or m.config.in_channels
        out = out.reshape(b, frames, height // p, width // p, p, p, channels).permute(0, 6, 1, 2, 4, 3, 5)
        return out.reshape(b, channels, frames, height, width)


class CompactedTextAttnProcessor:
    """MochiAttnProcessor2_0's attention with static shapes (see the module docstring).

    Per sample, the model attends over [image tokens, valid text tokens in order] and writes
    the text outputs compacted to the front, zeros after.  Here a one-hot permutation moves the
    valid text tokens to the front (exact: each output row sums one term), the attention masks
    the keys past each sample's count, and the text rows past it are zeroed.  Projections,
    norms and RoPE are the model's own modules, called as its processor calls them.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None):
        query = _heads(attn.norm_q, attn.to_q(hidden_states), attn.heads)
        key = _heads(attn.norm_k, attn.to_k(hidden_states), attn.heads)
        value = _heads(None, attn.to_v(hidden_states), attn.heads)
        if image_rotary_emb is not None:
            query, key = _rotate(query, *image_rotary_emb), _rotate(key, *image_rotary_emb)

        valid = attention_mask > 0  # (B, T)
        count = valid.sum(dim=1, keepdim=True, dtype=torch.int32)
        permute = _compaction(valid).to(query.dtype)  # (B, T source, T compacted)

        def compact(norm, proj):
            return torch.einsum("bsj,bshd->bjhd", permute, _heads(norm, proj(encoder_hidden_states), attn.heads))

        enc_query = compact(attn.norm_added_q, attn.add_q_proj)
        enc_key = compact(attn.norm_added_k, attn.add_k_proj)
        enc_value = compact(None, attn.add_v_proj)

        seq, text = query.shape[1], enc_query.shape[1]
        kept = torch.arange(text, device=count.device)[None, :] < count  # compacted slots in use
        keys = torch.cat([torch.ones_like(kept[:, :1]).expand(-1, seq), kept], dim=1)
        q, k, v = (torch.cat(pair, dim=1).transpose(1, 2) for pair in
                   ((query, enc_query), (key, enc_key), (value, enc_value)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :], dropout_p=0.0,
                                             is_causal=False)
        out = out.transpose(1, 2).flatten(2, 3)
        hidden_out, text_out = out.split_with_sizes((seq, text), dim=1)
        text_out = text_out * kept[:, :, None].to(text_out.dtype)  # the model's zero padding

        hidden_out = attn.to_out[1](attn.to_out[0](hidden_out))
        if hasattr(attn, "to_add_out"):
            text_out = attn.to_add_out(text_out)
        return hidden_out, text_out


def rope_positions(frames, height, width, target_area: float, device=None) -> torch.Tensor:
    """MochiRoPE._get_positions (frame index, then height and width centers scaled to the
    model's base area) in tensor arithmetic: the model computes the scale and the centers with
    Python floats of the sizes and ``torch.linspace``, which torch.export fixes to the traced
    size.  Same values to float32 rounding (tests/families/test_mochi.py)."""
    f = torch.arange(frames, dtype=torch.float32, device=device)
    # The sizes as tensors, so no Python arithmetic touches them (fp32: TensorRT has no fp64
    # arithmetic; the positions still agree with the model's to float32 rounding).
    h_size = torch.arange(height, device=device).new_full((), height).float()
    w_size = torch.arange(width, device=device).new_full((), width).float()
    scale = (target_area / (h_size * w_size)) ** 0.5

    def centers(n, size):
        half = size * scale / 2
        edges = -half + torch.arange(n + 1, dtype=torch.float32, device=device) * (2 * half / n)
        return (edges[:-1] + edges[1:]) / 2

    grid = torch.meshgrid(f, centers(height, h_size), centers(width, w_size), indexing="ij")
    return torch.stack(grid, dim=-1).view(-1, 3)


def _heads(norm, x, heads):
    x = x.unflatten(2, (heads, -1))
    return x if norm is None else norm(x)


def _rotate(x, freqs_cos, freqs_sin):
    # The processor's rotary embedding (interleaved pairs, computed in fp32).
    x_even, x_odd = x[..., 0::2].float(), x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


def _compaction(valid: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T, T) one-hot: source token s goes to slot j (valid tokens first, in
    order, then the padding), built from cumulative sums and one comparison."""
    v = valid.to(torch.int32)
    count = v.sum(dim=1, keepdim=True)
    slot = torch.where(valid, v.cumsum(dim=1) - 1, count + (1 - v).cumsum(dim=1) - 1)
    return slot[:, :, None] == torch.arange(valid.shape[1], device=valid.device)[None, None, :]


@contextlib.contextmanager
def compacted_text_attention(blocks):
    """The blocks' attention runs CompactedTextAttnProcessor inside; the model's own processors
    are restored after, so the model itself is never changed."""
    saved = [block.attn1.processor for block in blocks]
    try:
        for block in blocks:
            block.attn1.processor = CompactedTextAttnProcessor()
        yield
    finally:
        for block, processor in zip(blocks, saved):
            block.attn1.processor = processor


@register
class Mochi(Family):
    name = "mochi"
    class_name = "MochiTransformer3DModel"
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "frames", "height", "width"), "latents"),
        Input("encoder_hidden_states", ("batch", "txt_seq", "text_embed_dim")),
        Input("timestep", ("batch",), "timestep"),
        Input("encoder_attention_mask", ("batch", "txt_seq"), "mask"),  # a bool mask from the pipeline
    )
    variants = {
        "Mochi-1": Variant(
            "Mochi-1",
            (-3512.41319, 811.675948, -60.9400215, 2.42429681, 0.00305291719),
            # 0.06 -> 1.5x, 0.09 -> 2.1x (upstream's script runs 0.09).  The default is the
            # paper's "slow" setting, as for the other families: a default should cost little
            # quality, and video shows cached steps as flicker.
            default_threshold=0.06,
        ),
    }
    # Mochi-1: 480x848, 163 frames -> 28 latent frames (6x temporal, 8x spatial compression),
    # T5 prompts padded to 256 tokens.
    axes = (
        Axis("batch", 1, 2, 2, help="batch size; MochiPipeline batches CFG (2 rows per prompt)"),
        *latent_axes(frames=(28, 28), height=(60, 106), width=(106, 106), patch=2, temporal=6),
        text_axis("T5", 256, min=8),
    )
    signal = "transformer_blocks[0].norm1(patch_embed(x), temb)[0], image tokens"
    signal_dims = {0: "batch", 1: AUTO}
    signal_block_count = "num_layers"
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4Mochi"
    note = ("The cached residual includes norm_out (upstream TeaCache4Mochi); only proj_out and "
            "the unpatchify run on a skipped step.")
    timestep_scale = TimestepScale("flow", 1000.0, reverse=True)  # (1 - sigma) * 1000: 0 = noise

    @classmethod
    def axes_for(cls, config):
        return patched_axes(cls.axes, config.get("patch_size", 2))

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": MochiEmbed(model), "blocks": MochiBlocks(model), "head": MochiHead(model)}

    @classmethod
    def example_inputs(cls, config, dims, dtype, seed=0):
        feed = super().example_inputs(config, dims, dtype, seed)
        if dims["batch"] > 1:
            # The last sample of a CFG batch is an empty negative prompt with an all-zero mask,
            # as MochiPipeline makes it.
            feed["encoder_attention_mask"][-1] = 0
        return feed
