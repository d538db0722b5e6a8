"""HunyuanVideo-1.5 (HunyuanVideo15Transformer3DModel): one stack of dual-stream blocks over
the video tokens and a text stream of [image (SigLIP), ByT5, Qwen2.5-VL] tokens.

Signal (LightX2V's TeaCache for HunyuanVideo-1.5): ``transformer_blocks[0].norm1(x_embedder(x),
emb=temb)[0]``, block 0's modulated video tokens (LayerNorm * (1 + scale) + shift from
``temb = time_embed(timestep)``).  Coefficients: LightX2V's 480p/720p T2V (degree 5) and I2V
(degree 4) sets; the first and the last call of each cache context are forced.  The pipeline
names its guider's branches "pred_cond" and "pred_uncond": a state each.
Cached: the video-token residual through all blocks (the text stream is not cached: nothing
after the blocks reads it); ``norm_out``, ``proj_out`` and the unpatchify always run.

Everything before the blocks runs in the embed graph on every call: the token refiner
(``context_embedder``) takes the timestep, so the text stream changes every step and there is
no per-generation context graph.  Three rewrites keep the model's values without its
data-dependent code:

- T2V: the model tests ``torch.all(image_embeds == 0)`` in Python and then zeroes the image
  tokens and masks them out.  Here the test is a tensor: the image tokens are multiplied by
  0.0 or 1.0 and the mask is that factor, which is what either branch computes.
- Token order: the model concatenates, per sample, [valid image, valid ByT5, valid Qwen,
  padding image, zeroed padding ByT5, zeroed padding Qwen] with boolean indexing (lengths that
  depend on the masks).  Here every token's place in that order is computed from the masks
  (a running count of valid tokens, then of padding ones: a stable partition), and one gather
  at the fixed total length puts them there.
- Masks: the model builds a (B, 1, L, L) mask ``valid_i & valid_j`` for every attention, and
  PyTorch's attention returns 0 for a query that may attend nothing; an exported softmax over
  nothing gives NaN there, which the next attention spreads to every token (0 * NaN).  In the
  refiner (text only, L up to ~1000) each attention is given ``mask | no key valid`` and its
  output multiplied by "some key valid": the model's values, zeros included.  In the blocks
  (L up to ~110k: the model's L x L mask alone would be gigabytes) the attention takes the key
  mask (B, 1, 1, L) and the rows of padding queries are then zeroed, as the model's are.
"""
from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import TeaCacheError
from .base import Family, Part, TimestepScale, Variant, criterion_sums
from .hunyuan_video import HunyuanVideoHead
from .inputs import AUTO, Axis, Input, latent_axes, patched_axes
from .registry import register

IMAGE_TOKENS = 729  # SigLIP tokens of the image embeddings the pipelines pass (zeros for T2V)


@contextlib.contextmanager
def empty_rows_attend_nothing():
    """Within: ``F.scaled_dot_product_attention`` with a boolean mask returns 0 for query rows
    whose mask is all False (as PyTorch's own kernels do) without an all-masked softmax."""
    sdpa = F.scaled_dot_product_attention

    def safe(query, key, value, attn_mask=None, *args, **kwargs):
        if attn_mask is None or attn_mask.dtype != torch.bool:
            return sdpa(query, key, value, attn_mask, *args, **kwargs)
        rows = attn_mask.any(dim=-1, keepdim=True)
        out = sdpa(query, key, value, attn_mask | ~rows, *args, **kwargs)
        return out * rows.to(out.dtype)

    F.scaled_dot_product_attention = safe
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


class KeyMaskAttnProcessor:
    """HunyuanVideo15AttnProcessor2_0 with the mask applied to keys only, (B, 1, 1, L) instead
    of (B, 1, L, L), and the padding queries' rows zeroed after the attention: the model's values
    (its fully masked rows are 0) without the L x L mask.  The projections, norms, RoPE and
    output layers are the attention module's own."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        def heads(x):
            return x.unflatten(2, (attn.heads, -1))

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        query, key = attn.norm_q(query), attn.norm_k(key)
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        text_q = heads(attn.add_q_proj(encoder_hidden_states))
        text_k = heads(attn.add_k_proj(encoder_hidden_states))
        text_v = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            text_q = attn.norm_added_q(text_q)
        if attn.norm_added_k is not None:
            text_k = attn.norm_added_k(text_k)
        query = torch.cat([query, text_q], dim=1)
        key = torch.cat([key, text_k], dim=1)
        value = torch.cat([value, text_v], dim=1)

        # Video tokens are always valid; the text tokens' mask follows them.
        valid = F.pad(attention_mask, (hidden_states.shape[1], 0), value=True).bool()  # (B, L)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=valid[:, None, None, :])
        out = out.transpose(1, 2) * valid[:, :, None, None].to(out.dtype)
        out = out.flatten(2, 3).to(query.dtype)
        video, text = out[:, :hidden_states.shape[1]], out[:, hidden_states.shape[1]:]
        return attn.to_out[1](attn.to_out[0](video)), attn.to_add_out(text)


@contextlib.contextmanager
def key_mask_attention(model):
    """Within: the blocks' attention modules use :class:`KeyMaskAttnProcessor` (restored on exit)."""
    attns = [block.attn for block in model.transformer_blocks]
    before = [a.processor for a in attns]
    for a in attns:
        a.processor = KeyMaskAttnProcessor()
    try:
        yield
    finally:
        for a, p in zip(attns, before):
            a.processor = p


def text_order(valid: torch.Tensor) -> torch.Tensor:
    """The source index of each place of the model's token order: valid tokens first, then the
    padding ones, each group in its original order (a stable partition), for a (B, N) 0/1 mask.

    Place of token j: (valid before j) if valid, else (all valid) + (padding before j); the
    inverse permutation is one scatter, and the result is gathered once.
    """
    valid = valid.to(torch.int64)
    seen_valid = torch.cumsum(valid, dim=1)
    seen_padding = torch.cumsum(1 - valid, dim=1)
    place = torch.where(valid.bool(), seen_valid - 1, seen_valid[:, -1:] + seen_padding - 1)
    index = torch.arange(valid.shape[1], device=valid.device).expand_as(place)
    return torch.zeros_like(place).scatter(1, place, index)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) rows picked by index (B, N): an exact gather."""
    expanded = index.reshape(*index.shape, *(1,) * (x.ndim - 2)).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, expanded)


class HunyuanVideo15Embed(Part):
    input_names = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                   "encoder_hidden_states_2", "encoder_attention_mask_2", "image_embeds", "prev_signal")
    output_names = ("hidden", "encoder_hidden", "text_mask", "temb", "rotary_cos", "rotary_sin", "signal",
                    "l1_diff", "l1_prev")

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                encoder_hidden_states_2, encoder_attention_mask_2, image_embeds, prev_signal):
        m = self.model
        rotary_cos, rotary_sin = m.rope(hidden_states)
        temb = m.time_embed(timestep)
        hidden = m.x_embedder(hidden_states)
        with empty_rows_attend_nothing():
            qwen = m.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
        qwen = qwen + m.cond_type_embed(torch.zeros_like(qwen[:, :, 0], dtype=torch.long))
        byt5 = m.context_embedder_2(encoder_hidden_states_2)
        byt5 = byt5 + m.cond_type_embed(torch.ones_like(byt5[:, :, 0], dtype=torch.long))
        image = m.image_embedder(image_embeds)
        # T2V (every image embedding 0, over the whole call as the model tests it): the image
        # tokens are zeroed and masked out; otherwise kept and valid.
        keep = (image_embeds != 0).any().to(image.dtype)
        image = image * keep + m.cond_type_embed(2 * torch.ones_like(image[:, :, 0], dtype=torch.long))
        image_mask = keep.expand(image.shape[:2])

        tokens = torch.cat([image, byt5, qwen], dim=1)
        valid = torch.cat([image_mask, encoder_attention_mask_2.to(image_mask.dtype),
                           encoder_attention_mask.to(image_mask.dtype)], dim=1) > 0
        # The model zeroes the padding ByT5 and Qwen tokens (not the padding image tokens).
        is_text = torch.arange(tokens.shape[1], device=tokens.device) >= image.shape[1]
        tokens = torch.where((~valid & is_text)[..., None], torch.zeros_like(tokens), tokens)
        order = text_order(valid)
        text = gather_rows(tokens, order)
        text_mask = torch.gather(valid.to(torch.int32), 1, order)  # int32 between the graphs
        signal = m.transformer_blocks[0].norm1(hidden, emb=temb)[0]
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return hidden, text, text_mask, temb, rotary_cos, rotary_sin, signal, l1_diff, l1_prev


class HunyuanVideo15Blocks(Part):
    input_names = ("hidden", "encoder_hidden", "text_mask", "temb", "rotary_cos", "rotary_sin")
    output_names = ("residual",)

    def forward(self, hidden, encoder_hidden, text_mask, temb, rotary_cos, rotary_sin):
        h, e = hidden, encoder_hidden
        with key_mask_attention(self.model):
            for block in self.model.transformer_blocks:
                # Positional, as the model calls them.
                h, e = block(h, e, temb, text_mask, (rotary_cos, rotary_sin))
        return h - hidden


def _variant(name, coefficients):
    # LightX2V's configs run every set at 0.15 (50 steps, CFG 6): its one published setting.
    return Variant(name, coefficients, default_threshold=0.15)


@register
class HunyuanVideo15(Family):
    name = "hunyuan_video15"
    class_name = "HunyuanVideo15Transformer3DModel"
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "frames", "height", "width"), "latents"),
        Input("timestep", ("batch",), "timestep"),
        Input("encoder_hidden_states", ("batch", "txt_seq", "text_embed_dim")),  # Qwen2.5-VL
        Input("encoder_attention_mask", ("batch", "txt_seq"), "mask"),
        Input("encoder_hidden_states_2", ("batch", "txt_seq_2", "text_embed_2_dim")),  # ByT5
        Input("encoder_attention_mask_2", ("batch", "txt_seq_2"), "mask"),
        Input("image_embeds", ("batch", IMAGE_TOKENS, "image_embed_dim")),  # zeros for T2V: example_inputs
    )
    auto_axes = ("frames", "height", "width")  # as CogVideoX's: the patch embedding's shape guards
    # timestep_r is taken only to be refused with its own message.
    forward_kwargs = (*(i.name for i in inputs), "timestep_r")
    variants: ClassVar = {v.name: v for v in (
        _variant("HunyuanVideo-1.5-480p-T2V", (-2.97190924e4, 2.22834983e4, -4.37418360e3, 3.39340251e2,
                                               -1.01365855e1, 1.29101768e-1)),
        _variant("HunyuanVideo-1.5-720p-T2V", (-3.08907507e4, 1.67786188e4, -3.19178643e3, 2.60740519e2,
                                               -8.19205881, 1.07913775e-1)),
        _variant("HunyuanVideo-1.5-480p-I2V", (8.08528429e3, -2.44607178e3, 2.49489589e2, -9.10697865,
                                               1.20261379e-1)),
        _variant("HunyuanVideo-1.5-720p-I2V", (3.84300014e3, -1.39247433e3, 1.69167679e2, -7.07679232,
                                               1.02419011e-1)),
    )}
    # 121 frames at 480p (848x480: 31 x 30 x 53 latents, 16x spatial compression, 1x1 patches);
    # axes_for moves the opt to 720p (45 x 80) for 720p configs.  Qwen2.5-VL prompts are
    # padded to 1000 tokens and ByT5 ones to 256.
    axes = (
        Axis("batch", 1, 1, 2, help="batch size of one call (the pipeline calls each guider branch separately)"),
        *latent_axes(frames=(31, 31), height=(30, 80), width=(53, 80), spatial=16),
        Axis("txt_seq", 1, 1000, 1000, help="Qwen2.5-VL tokens (padded to 1000 after the template crop)"),
        Axis("txt_seq_2", 1, 256, 256, help="ByT5 tokens (padded to 256)"),
    )
    signal = "transformer_blocks[0].norm1(x_embedder(x), emb=temb)[0], video tokens"
    signal_dims = {0: "batch", 1: AUTO}
    signal_block_count = "num_layers"
    cached = ("hidden_states",)
    coefficients_source = "LightX2V configs/hunyuan_video_15/cache (480p/720p T2V degree 5, I2V degree 4)"
    timestep_scale = TimestepScale("flow", 1000.0)  # the pipeline passes the scheduler's sigma * 1000
    note = ("The video-token residual through all blocks is cached; the token refiner, ByT5 and image "
            "projections run on every call (the refiner takes the timestep).")

    @classmethod
    def check_config(cls, config):
        if config.get("use_meanflow"):
            raise TeaCacheError(
                "HunyuanVideo15Transformer3DModel config has use_meanflow=True (the step-distilled / "
                "super-resolution models, which take a second timestep): not exported; no public TeaCache "
                "coefficients exist for them"
            )
        super().check_config(config)

    @classmethod
    def variant_for(cls, config):
        # The 480p T2V checkpoint's config says task_type "i2v" (its conversion preset): pass
        # --variant HunyuanVideo-1.5-480p-T2V for it.
        size = "720p" if (config.get("target_size") or 640) >= 960 else "480p"
        task = "T2V" if config.get("task_type") == "t2v" else "I2V"
        return f"HunyuanVideo-1.5-{size}-{task}"

    @classmethod
    def axes_for(cls, config):
        axes = list(cls.axes)
        if (config.get("target_size") or 640) >= 960:  # 720p: 1280x720 -> 80 x 45 latents
            axes[2:4] = latent_axes(height=(45, 80), width=(80, 80), spatial=16)
        return patched_axes(tuple(axes), config.get("patch_size") or 1)

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": HunyuanVideo15Embed(model), "blocks": HunyuanVideo15Blocks(model),
                "head": HunyuanVideoHead(model)}

    @classmethod
    def example_inputs(cls, config, dims, dtype, seed=0):
        feed = super().example_inputs(config, dims, dtype, seed)
        if config.get("task_type") == "t2v":  # the T2V pipeline passes zeros (the model then masks them out)
            feed["image_embeds"].zero_()
        return feed

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        if kwargs.get("timestep_r") is not None:
            raise TeaCacheError(
                "timestep_r given: the MeanFlow (step-distilled) models' second timestep is not an input "
                "of the exported graphs"
            )
        feed = super().feed_from_kwargs(kwargs)  # the timestep one per sample, the masks in the latents' dtype
        if "image_embeds" not in feed:
            # The model cannot run without them; the T2V pipeline passes zeros, which is T2V.
            raise TeaCacheError(
                f"image_embeds is missing: pass the SigLIP embeddings (batch, {IMAGE_TOKENS}, image_embed_dim), "
                f"zeros for text-to-video, as HunyuanVideo15Pipeline does"
            )
        return feed
