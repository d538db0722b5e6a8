"""Lumina2 (Lumina2Transformer2DModel), Lumina-Image-2.0.

Signal: ``layers[0].norm1(joint, temb)[0]``, the modulated joint [text, image] sequence
entering the main layers, after the context and noise refiners (which therefore run in the
embed graph, on every step, as upstream computes them before the decision).
Cached: the joint-sequence residual through the main layers; ``norm_out``, the image
unpacking and the unpatchify always run.  Variants: upstream's v1 (Lumina-Next's) and v2
coefficient sets.

Calls: Lumina2Pipeline calls the transformer twice per step, cond then uncond, without
naming them; each call gets its own state (cache contexts "default" and "default#1" under
``enable()``), first and last step forced in each.  Upstream TeaCache4Lumina2 keys its state
by the joint sequence length instead (equal for both branches when their prompts have the
same token count, which then share one state and never leave the forced steps) and counts
steps on the uncond calls only; per-branch states give upstream's intended schedule.

The model's forward packs each sample's valid text tokens and its image tokens with Python
loops over data-dependent lengths (``mask.sum().tolist()``).  Here the joint sequence has a
fixed length, text tokens + image tokens, built with gathers: sample i holds its L_i text
tokens, then the image tokens, then zero rows that the attention masks (as the model masks
its own padding when lengths differ).  Zero rows add nothing to the criterion's sums, so the
signal's rel-L1 is the model's.  The rotary tables are gathered from the real view of the
model's complex tables, and the attention's complex rotary product runs under
``complex_unsqueeze_as_real`` (the one complex op ONNX export lacks).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch.overrides import TorchFunctionMode

from .base import AxisLimit, Family, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes, patched_axes, text_axis
from .registry import register


class complex_unsqueeze_as_real(TorchFunctionMode):
    """``unsqueeze`` of a complex tensor as view_as_real -> unsqueeze -> view_as_complex.

    The ONNX exporter represents complex tensors as real ones with a trailing (re, im) dim
    and has complex kernels for view_as_complex, mul and view_as_real, but none for
    unsqueeze, which the model's ``apply_rotary_emb(use_real=False)`` uses.  Same values.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.unsqueeze, torch.unsqueeze) and args[0].is_complex():
            return torch.view_as_complex(torch.view_as_real(args[0]).unsqueeze(*args[1:], **kwargs))
        return func(*args, **kwargs)


class RotaryTables(torch.nn.Module):
    """The model's per-axis complex RoPE tables as real fp32 buffers, gathered by position id
    as ``Lumina2RotaryPosEmbed._get_freqs_cis`` gathers them."""

    def __init__(self, rope_embedder):
        super().__init__()
        for k, table in enumerate(rope_embedder.freqs_cis):
            self.register_buffer(f"axis{k}", torch.view_as_real(table).float(), persistent=False)
        self.axes = len(rope_embedder.freqs_cis)

    def forward(self, ids):  # ids (B, S, axes) int64 -> (B, S, head_dim/2, 2)
        return torch.cat([getattr(self, f"axis{k}")[ids[..., k]] for k in range(self.axes)], dim=2)


class Lumina2Embed(Part):
    input_names = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                   "prev_signal")
    output_names = ("joint", "joint_mask", "joint_rotary", "temb", "text_lengths", "signal", "l1_diff",
                    "l1_prev")

    def __init__(self, model):
        super().__init__(model)
        self.tables = RotaryTables(model.rope_embedder)

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, prev_signal):
        m = self.model
        b, _, height, width = hidden_states.shape
        p = m.config.patch_size
        temb, text = m.time_caption_embed(hidden_states, timestep, encoder_hidden_states)
        t, rows, cols = text.shape[1], height // p, width // p
        n = rows * cols
        lengths = (encoder_attention_mask > 0).sum(dim=1, keepdim=True)  # (B, 1) valid text tokens
        zero = torch.zeros_like(lengths)

        # Position ids as the model's rope embedder makes them: text token j -> (j, 0, 0),
        # image token (r, c) -> (L, r, c), padding -> (0, 0, 0).
        j_text = torch.arange(t, device=lengths.device)[None, :]
        text_valid = j_text < lengths
        text_ids = torch.stack([j_text.expand(b, -1), *(zero.expand(b, t),) * 2], dim=-1)
        text_rotary = self.tables(text_ids) * text_valid[..., None, None].to(torch.float32)
        row = torch.arange(rows, device=lengths.device)[:, None].expand(rows, cols).flatten()
        col = torch.arange(cols, device=lengths.device)[None, :].expand(rows, cols).flatten()
        image_ids = torch.stack([lengths.expand(b, n), row.expand(b, n), col.expand(b, n)], dim=-1)
        image_rotary = self.tables(image_ids)

        # The refiners, as the model runs them (the rope embedder's patchify, then x_embedder).
        patches = hidden_states.view(b, hidden_states.shape[1], rows, p, cols, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.flatten(3).flatten(1, 2)
        image = m.x_embedder(patches)
        with complex_unsqueeze_as_real():
            for layer in m.context_refiner:
                text = layer(text, encoder_attention_mask, torch.view_as_complex(text_rotary))
            for layer in m.noise_refiner:
                image = layer(image, None, torch.view_as_complex(image_rotary), temb)

        # The joint sequence: [L_i text tokens, n image tokens, zeros] per sample, length t + n.
        j = torch.arange(t + n, device=lengths.device)[None, :]
        is_text, is_image = j < lengths, (j >= lengths) & (j < lengths + n)
        source = torch.where(is_text, j, torch.where(is_image, t + j - lengths, zero))
        keep = (is_text | is_image)[..., None]
        joint = gather_rows(torch.cat([text, image], dim=1), source) * keep.to(text.dtype)
        # Padding rows keep position (0, 0, 0), as in the model (a rotation by 0).
        joint_rotary = self.tables(gather_rows(torch.cat([text_ids, image_ids], dim=1), source) * keep)
        signal = m.layers[0].norm1(joint, temb)[0]
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        joint_mask = keep[..., 0].to(torch.int32)  # int32 between the graphs
        return joint, joint_mask, joint_rotary, temb, lengths[:, 0], signal, l1_diff, l1_prev


def gather_rows(x, index):
    """x (B, S, ...) rows picked by index (B, S'): an exact gather (no arithmetic)."""
    expanded = index.reshape(*index.shape, *(1,) * (x.ndim - 2)).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, expanded)


class Lumina2Blocks(Part):
    input_names = ("joint", "joint_mask", "joint_rotary", "temb")
    output_names = ("residual",)

    def forward(self, joint, joint_mask, joint_rotary, temb):
        h = joint
        mask, rotary = joint_mask.bool(), torch.view_as_complex(joint_rotary)
        with complex_unsqueeze_as_real():
            for layer in self.model.layers:
                h = layer(h, mask, rotary, temb)
        return h - joint


class Lumina2Head(Part):
    # hidden_states (the model's latent input) only lends its height/width to the unpatchify.
    input_names = ("hidden_states", "joint", "residual", "temb", "text_lengths")
    output_names = ("output",)

    def forward(self, hidden_states, joint, residual, temb, text_lengths):
        m = self.model
        b, _, height, width = hidden_states.shape
        p, channels = m.config.patch_size, m.out_channels
        out = m.norm_out(joint + residual, temb)
        rows, cols = height // p, width // p
        # Each sample's image tokens start after its own text tokens.
        index = text_lengths[:, None] + torch.arange(rows * cols, device=out.device)[None, :]
        image = gather_rows(out, index)
        # The model's per-sample unpatchify, batched.
        image = image.view(b, rows, cols, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return image.flatten(4, 5).flatten(2, 3)


def _variant(name, coefficients):
    # Upstream's lowest published setting for both sets (v1 0.2 -> 1.25x, v2 0.2 -> 1.5x; its
    # script runs 0.3): a default should cost little quality, as for the other families.
    return Variant(name, coefficients, default_threshold=0.2)


@register
class Lumina2(Family):
    name = "lumina2"
    class_name = "Lumina2Transformer2DModel"
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "height", "width"), "latents"),
        Input("timestep", ("batch",), "timestep"),
        Input("encoder_hidden_states", ("batch", "txt_seq", "cap_feat_dim")),
        Input("encoder_attention_mask", ("batch", "txt_seq"), "mask"),  # right-padded, lengths differ
    )
    variants: ClassVar = {v.name: v for v in (
        # v1: the Lumina-Next coefficients, upstream's default; v2: faster at low thresholds,
        # loses detail at high ones (TeaCache4Lumina2's README).
        _variant("Lumina2-v1", (393.76566581, -603.50993606, 209.10239044, -23.00726601, 0.86377344)),
        _variant("Lumina2-v2", (225.7042019806413, -608.8453716535591, 304.1869942338369,
                                124.21267720116742, -1.4089066892956552)),
    )}
    # Lumina-Image-2.0: 1024x1024 (128x128 latents, 2x2 patches), Gemma2 prompts up to 256
    # tokens; the RoPE tables cover 512 patch rows/columns.
    axes = (
        Axis("batch", 1, 1, 2, help="batch size (Lumina2Pipeline calls cond and uncond separately)"),
        *latent_axes(height=(128, 256), width=(128, 256), patch=2),
        text_axis("Gemma2", 256, min=8),
    )
    signal = "layers[0].norm1(joint [text, image] sequence after the refiners, temb)[0]"
    signal_dims = {0: "batch", 1: AUTO}
    signal_block_count = "num_layers"
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4Lumina2 (v1: Lumina-Next's set, v2)"
    note = ("The joint [text, image] residual through the main layers is cached; the context and "
            "noise refiners run on every step (the signal is taken after them, as upstream does).")
    timestep_scale = TimestepScale("flow", 1.0, reverse=True)  # the pipeline passes 1 - sigma

    @classmethod
    def axes_for(cls, config):
        return patched_axes(cls.axes, config.get("patch_size") or 2)

    @classmethod
    def axis_limits(cls, config):
        # The RoPE tables hold axes_lens positions per axis: caption tokens take 0 .. n - 1 on
        # the first and the image tokens n after them; the image tokens' rows and columns (in
        # patches) the other two.
        lens = tuple(config.get("axes_lens") or (300, 512, 512))
        p = config.get("patch_size") or 2
        why = "the RoPE table holds axes_lens positions per axis"
        return {"txt_seq": AxisLimit(lens[0] - 1, "axes_lens", list(lens), f"{why}; the image tokens take the one "
                                                                          f"after the caption's"),
                "height": AxisLimit(lens[1] * p, "axes_lens", list(lens), f"{why}, {p} latent rows per patch"),
                "width": AxisLimit(lens[2] * p, "axes_lens", list(lens), f"{why}, {p} latent columns per patch")}

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": Lumina2Embed(model), "blocks": Lumina2Blocks(model), "head": Lumina2Head(model)}

    @classmethod
    def kwargs_from_feed(cls, feed):
        # The model counts text tokens with mask.sum().tolist(): it needs an integer mask, as
        # the tokenizer makes it.
        return {**feed, "encoder_attention_mask": feed["encoder_attention_mask"].long()}
