"""Qwen-Image (QwenImageTransformer2DModel): one stack of dual-stream blocks over [text, image]
tokens.  Qwen-Image-Edit and Qwen-Image-Edit-Plus use the same class and config; their pipelines
append the reference image's tokens to the latents (they are part of the signal and of the
residual, and the pipeline slices the output).

Rule (vLLM-Omni's TeaCache hook, the public block-residual TeaCache for this model): the signal
is block 0's modulated image input, ``img_norm1(img_in(x)) * (1 + scale) + shift`` with shift and
scale from the first half of ``img_mod(temb)``; ``d = mean|s - s_prev| / (mean|s_prev| + 1e-8)``
and ``acc += |poly(d)|``; only the first call of each cache context is forced (the last is not).
Cached: the image tokens' residual through all blocks (the text stream feeds only the image
tokens, so a skipped call needs none of it); ``norm_out`` and ``proj_out`` always run.

Calls: QwenImagePipeline calls ``cache_context("cond")`` and, with true CFG, ``("uncond")`` in
each step; the two prompts have different token counts, so each context has its own state and
its own step plan (input shapes).

RoPE: the model keeps complex tables of 4096 positions (and their negatives) and picks rows by
``img_shapes``, a Python list of (frames, height, width) per image: an image token (f, r, c) of
image k sits at (k + f, r - ceil(h/2), c - ceil(w/2)) and text token j at m + j on every axis,
m = the largest max(h//2, w//2) over the images.  The drop-in turns ``img_shapes`` into those
position ids on the host (:func:`position_ids`); the context graph gathers the rows from the
model's tables (their real view: no complex tensor crosses a graph boundary), and the blocks
graph runs the attention's complex rotary product under ``complex_unsqueeze_as_real``.
"""
from __future__ import annotations

import functools
from typing import ClassVar

import torch

from ..errors import TeaCacheError
from . import magcache_ratios
from .base import Family, ForcedSteps, NormOutHead, Part, Variant, criterion_sums
from .inputs import Axis, Input
from .lumina2 import complex_unsqueeze_as_real
from .registry import register

TABLE_POSITIONS = 4096  # QwenEmbedRope's tables: positions 0..4095 and -4096..-1


def image_shapes(img_shapes) -> tuple[tuple[int, int, int], ...]:
    """The (frames, height, width) of each image of the first sample, as the model reads
    ``img_shapes`` (QwenEmbedRope uses the first sample's shapes for the whole batch)."""
    if img_shapes is None:
        raise TeaCacheError(
            "img_shapes is missing: QwenImageTransformer2DModel needs it for the rotary positions "
            "(the pipelines pass [[(1, height // 16, width // 16)]] * batch)"
        )
    shapes = img_shapes[0] if isinstance(img_shapes, list) else img_shapes
    shapes = shapes if isinstance(shapes, list) else [shapes]
    try:
        return tuple((int(f), int(h), int(w)) for f, h, w in shapes)
    except (TypeError, ValueError) as exc:
        raise TeaCacheError(
            f"img_shapes={img_shapes!r} is not a list of (frames, height, width) per sample: {exc}"
        ) from None


@functools.lru_cache(maxsize=32)
def position_ids(shapes: tuple[tuple[int, int, int], ...], text_len: int,
                 device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(image ids (tokens, 3), text ids (text_len, 3)): int64 rotary positions, as the model's
    QwenEmbedRope picks its table rows.  Cached: the same tensors for the same shapes, so the
    context graph sees unchanged inputs on every step of a generation."""
    parts, start = [], 0
    for k, (f, h, w) in enumerate(shapes):
        frame = torch.arange(k, k + f)
        row = torch.arange(h) - (h - h // 2)
        col = torch.arange(w) - (w - w // 2)
        grid = torch.stack(torch.meshgrid(frame, row, col, indexing="ij"), dim=-1)
        parts.append(grid.reshape(-1, 3))
        start = max(start, h // 2, w // 2)
    image = torch.cat(parts)
    text = (start + torch.arange(text_len))[:, None].expand(text_len, 3)
    highest = max(int(image.max()), start + text_len - 1)
    if highest >= TABLE_POSITIONS or int(image.min()) < -TABLE_POSITIONS:
        raise TeaCacheError(
            f"img_shapes {list(shapes)} with {text_len} text tokens need rotary positions up to {highest}, "
            f"beyond the model's tables ({TABLE_POSITIONS} positions): use a smaller image or shorter prompt"
        )
    return image.to(device), text.contiguous().to(device)


def shapes_from_ids(img_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """Inverse of :func:`position_ids` for single-frame images (every pipeline's layout): one
    image per frame position, its height and width from the span of its rows and columns."""
    shapes = []
    for k in torch.unique(img_ids[:, 0]).tolist():
        ids = img_ids[img_ids[:, 0] == k]
        h = int(ids[:, 1].max() - ids[:, 1].min()) + 1
        shapes.append((1, h, ids.shape[0] // h))
    return shapes


def grid_of(tokens: int) -> tuple[int, int]:
    """A (height, width) with ``tokens`` patches, as square as the count allows."""
    h = max(d for d in range(1, int(tokens**0.5) + 1) if tokens % d == 0)
    return h, tokens // h


def example_ids(sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """The position ids of one image of ``img_seq`` tokens and a prompt of ``txt_seq``."""
    img_ids, txt_ids = position_ids(((1, *grid_of(sizes["img_seq"])),), sizes["txt_seq"])
    return img_ids.clone(), txt_ids.clone()


class RotaryTables(torch.nn.Module):
    """The model's complex RoPE tables as real fp32 buffers (one per axis, negative positions
    first), gathered by position id."""

    def __init__(self, pos_embed):
        super().__init__()
        split = [d // 2 for d in pos_embed.axes_dim]
        both = torch.cat([pos_embed.neg_freqs, pos_embed.pos_freqs]).split(split, dim=1)
        for k, table in enumerate(both):
            self.register_buffer(f"axis{k}", torch.view_as_real(table).float().contiguous(), persistent=False)
        self.axes = len(split)

    def forward(self, ids):  # (tokens, axes) int64 positions -> (tokens, head_dim/2, 2)
        rows = ids + TABLE_POSITIONS
        return torch.cat([getattr(self, f"axis{k}")[rows[:, k]] for k in range(self.axes)], dim=1)


class QwenImageContext(Part):
    """What a generation keeps fixed: the text stream's embedding and the rotary tables."""

    input_names = ("encoder_hidden_states", "img_ids", "txt_ids")
    output_names = ("encoder_hidden", "img_rotary", "txt_rotary")

    def __init__(self, model):
        super().__init__(model)
        self.tables = RotaryTables(model.pos_embed)

    def forward(self, encoder_hidden_states, img_ids, txt_ids):
        m = self.model
        return m.txt_in(m.txt_norm(encoder_hidden_states)), self.tables(img_ids), self.tables(txt_ids)


class QwenImageEmbed(Part):
    input_names = ("hidden_states", "timestep", "prev_signal")
    output_names = ("hidden", "temb", "signal", "l1_diff", "l1_prev")

    def forward(self, hidden_states, timestep, prev_signal):
        m = self.model
        hidden = m.img_in(hidden_states)
        temb = m.time_text_embed(timestep.to(hidden.dtype), hidden)
        block = m.transformer_blocks[0]
        img_mod1 = block.img_mod(temb).chunk(2, dim=-1)[0]
        signal = block._modulate(block.img_norm1(hidden), img_mod1)[0]
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return hidden, temb, signal, l1_diff, l1_prev


class QwenImageBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "temb", "img_rotary", "txt_rotary")
    output_names = ("residual",)

    def forward(self, hidden, encoder_hidden, temb, img_rotary, txt_rotary):
        rotary = (torch.view_as_complex(img_rotary), torch.view_as_complex(txt_rotary))
        h, e = hidden, encoder_hidden
        with complex_unsqueeze_as_real():
            for block in self.model.transformer_blocks:
                e, h = block(hidden_states=h, encoder_hidden_states=e, encoder_hidden_states_mask=None,
                             temb=temb, image_rotary_emb=rotary)
        return h - hidden


# Config switches of later checkpoints whose inputs these graphs do not take.
UNSUPPORTED = {
    "zero_cond_t": "Qwen-Image-Edit-2511's per-token modulation (zero_cond_t=True)",
    "use_additional_t_cond": "Qwen-Image-Layered's additional timestep condition (use_additional_t_cond=True)",
    "use_layer3d_rope": "Qwen-Image-Layered's layered RoPE (use_layer3d_rope=True)",
    "guidance_embeds": "a guidance embedding (guidance_embeds=True; diffusers 0.42's model cannot embed it)",
}


@register
class QwenImage(Family):
    name = "qwen_image"
    class_name = "QwenImageTransformer2DModel"
    inputs = (
        Input("hidden_states", ("batch", "img_seq", "in_channels"), "latents"),
        Input("timestep", ("batch",), "timestep"),  # sigma in [0, 1)
        Input("encoder_hidden_states", ("batch", "txt_seq", "joint_attention_dim")),
        # int64 rotary positions of one image as square as img_seq allows (position_ids)
        Input("img_ids", ("img_seq", 3), "table", dtype=torch.int64, make=lambda config, sizes: example_ids(sizes)[0]),
        Input("txt_ids", ("txt_seq", 3), "table", dtype=torch.int64, make=lambda config, sizes: example_ids(sizes)[1]),
    )
    # img_ids / txt_ids are built from img_shapes; an all-ones mask is the same as none.
    forward_kwargs = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_mask",
                      "img_shapes")
    variants: ClassVar = {
        # vLLM-Omni's coefficients (its config.py, "from ComfyUI-TeaCache") and its default
        # threshold (0.2 ~ 1.5x in its docs); accumulation, eps and forced calls as its hook.
        "Qwen-Image": Variant("Qwen-Image", (-4.5e2, 2.8e2, -4.5e1, 3.2, -2e-2), default_threshold=0.2,
                              forced=ForcedSteps(first=1, last=False), accumulate="abs", eps=1e-8,
                              magcache=magcache_ratios.QWEN_IMAGE),
    }
    # Qwen-Image's 1328x1328 default is 6889 image tokens; Edit appends the reference image's
    # tokens (two 1 MP images: 8192).  Prompts are not padded (each prompt's own length, up to
    # the pipeline's max_sequence_length of 1024).
    axes = (
        Axis("batch", 1, 1, 4, help="batch size of one call (QwenImagePipeline calls cond and uncond separately)"),
        Axis("img_seq", 1, 4096, 8192,
             help="image tokens: (height/16)*(width/16), plus the reference image's for Edit pipelines"),
        Axis("txt_seq", 1, 128, 1024, help="text tokens of the prompt (not padded; up to max_sequence_length=1024)"),
    )
    signal = "transformer_blocks[0] img_modulated: img_norm1(img_in(x)) * (1 + scale) + shift, image tokens"
    signal_dims = {0: "batch", 1: "img_seq"}
    signal_block_count = "num_layers"
    cached = ("hidden_states",)
    coefficients_source = "vLLM-Omni (credited to ComfyUI-TeaCache; no calibration record)"
    note = ("Rule as vLLM-Omni codes it: acc += |poly(d)|, eps 1e-8 in d's denominator, only each cache "
            "context's first call forced.")

    @classmethod
    def check_config(cls, config):
        for key, what in UNSUPPORTED.items():
            if config.get(key):
                raise TeaCacheError(
                    f"QwenImageTransformer2DModel config has {key}=True: {what} is not exported by this "
                    f"adapter; export Qwen-Image, Qwen-Image-Edit or Qwen-Image-Edit-2509 (their configs "
                    f"leave it False)"
                )
        super().check_config(config)

    @classmethod
    def parts(cls, model, variant=None):
        return {"context": QwenImageContext(model), "embed": QwenImageEmbed(model),
                "blocks": QwenImageBlocks(model), "head": NormOutHead(model)}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        hidden, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        mask = kwargs.get("encoder_hidden_states_mask")
        if mask is not None and not bool(mask.all()):
            raise TeaCacheError(
                "encoder_hidden_states_mask has padding (zeros): the exported graphs attend to every text "
                "token; pass prompts of one length without a mask (QwenImagePipeline drops an all-ones mask), "
                "or one prompt per call"
            )
        shapes = image_shapes(kwargs.get("img_shapes"))
        tokens = sum(f * h * w for f, h, w in shapes)
        if tokens != hidden.shape[1]:
            raise TeaCacheError(
                f"img_shapes {list(shapes)} describe {tokens} image tokens but hidden_states has "
                f"{hidden.shape[1]}: pass the shapes of the latents given"
            )
        img_ids, txt_ids = position_ids(shapes, text.shape[1], str(hidden.device))
        return {**super().feed_from_kwargs(kwargs), "img_ids": img_ids, "txt_ids": txt_ids}

    @classmethod
    def kwargs_from_feed(cls, feed):
        batch = feed["hidden_states"].shape[0]
        return {"hidden_states": feed["hidden_states"], "timestep": feed["timestep"],
                "encoder_hidden_states": feed["encoder_hidden_states"],
                "img_shapes": [shapes_from_ids(feed["img_ids"])] * batch}
