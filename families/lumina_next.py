"""Lumina-Next (LuminaNextDiT2DModel), the Lumina-T2X image DiT.

Signal: ``layers[0].norm1(x, temb)[0]``, the modulated image tokens of layer 0.
Cached: the image-token residual through all layers; ``norm_out`` and the unpatchify always
run.  Upstream (TeaCache4Lumina-T2X) counts one step per transformer call; LuminaPipeline
batches CFG into that one unnamed call: one decision for both rows, first and last forced.

Two things in the model's attention cannot go through torch.export as they are: the rotary
embedding is a complex product (ONNX has no complex tensors) and proportional attention
scales the softmax by ``sqrt(log(tokens, base))`` in Python floats of the token count (which
torch.export fixes to the traced size).  The layers run here with
``ProportionalRealAttnProcessor``: the same attention with the rotary product in real
arithmetic and that factor as a tensor.  The pipeline's complex RoPE table enters the graphs
as its real view, and ``cross_attention_kwargs["base_sequence_length"]`` as a (1,) tensor
(0: proportional attention off).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..errors import TeaCacheError
from .base import Family, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes, patched_axes, text_axis
from .registry import register

ROPE_TABLE = 384  # LuminaPipeline's RoPE table covers 384 x 384 token positions


def rope_table(config) -> torch.Tensor:
    """The RoPE table as LuminaPipeline builds it, in its real view (..., 2)."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    head_dim = config["hidden_size"] // config["num_attention_heads"]
    return torch.view_as_real(get_2d_rotary_pos_embed_lumina(head_dim, ROPE_TABLE, ROPE_TABLE))


class LuminaNextEmbed(Part):
    input_names = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_mask",
                   "image_rotary_emb", "base_sequence_length", "prev_signal")
    output_names = ("hidden", "image_mask", "rotary", "temb", "text_mask", "attention_scale", "signal",
                    "l1_diff", "l1_prev")

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_mask, image_rotary_emb,
                base_sequence_length, prev_signal):
        m = self.model
        hidden, image_mask, rotary = patch_embed(m.patch_embedder, hidden_states, image_rotary_emb)
        temb = m.time_caption_embed(timestep, encoder_hidden_states, encoder_mask)
        signal = m.layers[0].norm1(hidden, temb)[0]
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        text_mask = (encoder_mask > 0).to(torch.int32)  # int32 between the graphs
        scale = proportional_scale(hidden.shape[1], base_sequence_length, hidden.dtype)
        return hidden, image_mask, rotary, temb, text_mask, scale, signal, l1_diff, l1_prev


def patch_embed(embedder, x, table):
    """LuminaPatchEmbed.forward without its per-sample list of image sizes (a Python list of
    the batch size, which torch.export would fix to the traced batch): the tokens through the
    embedder's own ``proj``, the all-ones token mask, and the RoPE table sliced to the token
    grid (on the real view (..., 2) the same slicing as on the complex table)."""
    p = embedder.patch_size
    b, c, height, width = x.shape
    tokens = x.view(b, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5).flatten(3)
    tokens = embedder.proj(tokens).flatten(1, 2)
    mask = torch.ones(tokens.shape[0], tokens.shape[1], dtype=torch.int32, device=tokens.device)
    return tokens, mask, table[: height // p, : width // p].flatten(0, 1).unsqueeze(0)


def proportional_scale(tokens, base_sequence_length, dtype):
    """``sqrt(log(tokens) / log(base))`` (the processor's ``sqrt(log(tokens, base))``) as a
    tensor; 1 where ``base`` is 0 (proportional attention off)."""
    # fp32, not the processor's Python doubles: TensorRT has no fp64 arithmetic (the factor
    # agrees to ~1e-7).
    n = torch.arange(tokens, device=base_sequence_length.device).new_full((1,), tokens).float()
    base = base_sequence_length.float()
    on = base > 0
    factor = torch.sqrt(torch.log(n) / torch.log(torch.where(on, base, torch.full_like(base, 2.0))))
    return torch.where(on, factor, torch.ones_like(factor)).to(dtype)


class LuminaNextBlocks(Part):
    # The text goes to the layers as the model passes it: the model input itself.
    input_names = ("hidden", "image_mask", "rotary", "temb", "encoder_hidden_states", "text_mask",
                   "attention_scale")
    output_names = ("residual",)

    def forward(self, hidden, image_mask, rotary, temb, encoder_hidden_states, text_mask, attention_scale):
        m = self.model
        h = hidden
        with real_attention(m.layers):
            for layer in m.layers:
                h = layer(h, image_mask, rotary, encoder_hidden_states, text_mask.bool(), temb=temb,
                          cross_attention_kwargs={"attention_scale": attention_scale})
        return h - hidden


class LuminaNextHead(Part):
    # hidden_states (the model's latent input) only lends its height/width to the unpatchify.
    input_names = ("hidden_states", "hidden", "residual", "temb")
    output_names = ("output",)

    def forward(self, hidden_states, hidden, residual, temb):
        m = self.model
        out = m.norm_out(hidden + residual, temb)
        # The model's unpatchify (every sample has the full token grid).
        p = m.patch_size
        b, _, height, width = hidden_states.shape
        out = out.view(b, height // p, width // p, p, p, m.out_channels)
        return out.permute(0, 5, 1, 3, 2, 4).flatten(4, 5).flatten(2, 3)


class ProportionalRealAttnProcessor:
    """LuminaAttnProcessor2_0 with the rotary product in real arithmetic and the proportional
    softmax factor as a tensor (``attention_scale``); same projections, norms, grouped-query
    repeat and mask handling, step for step (tests/families/test_lumina_next.py compares the
    two)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None,
                 query_rotary_emb=None, key_rotary_emb=None, attention_scale=None):
        batch_size, sequence_length, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = query.shape[-1] // attn.heads
        kv_heads = key.shape[-1] // head_dim
        dtype = query.dtype
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        query = query.view(batch_size, -1, attn.heads, head_dim)
        key = key.view(batch_size, -1, kv_heads, head_dim)
        value = value.view(batch_size, -1, kv_heads, head_dim)
        if query_rotary_emb is not None:
            query = rotate(query, query_rotary_emb)
        if key_rotary_emb is not None:
            key = rotate(key, key_rotary_emb)
        query, key = query.to(dtype), key.to(dtype)
        # Proportional attention scales the self-attention's logits (key_rotary_emb is set
        # there only); the factor multiplies the query, SDPA applies the head scale.
        scale = None
        if key_rotary_emb is not None:
            scale = attn.scale
            if attention_scale is not None:
                query = query * attention_scale
        n_rep = attn.heads // kv_heads
        if n_rep >= 1:
            key = key.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
            value = value.unsqueeze(3).repeat(1, 1, 1, n_rep, 1).flatten(2, 3)
        attention_mask = attention_mask.bool().view(batch_size, 1, 1, -1)
        attention_mask = attention_mask.expand(-1, attn.heads, sequence_length, -1)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        return out.transpose(1, 2).to(dtype)


def rotate(x, table):
    """x (B, S, H, D) times the rotary table (1, S, D/2, 2) read as complex numbers, in real
    arithmetic: consecutive channel pairs are (real, imaginary), as the model's
    ``view_as_complex`` reads them."""
    cos, sin = table[..., 0].unsqueeze(2), table[..., 1].unsqueeze(2)  # (1, S, 1, D/2)
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return out.flatten(3).type_as(x)


@contextlib.contextmanager
def real_attention(layers):
    """Both attentions of every layer run ProportionalRealAttnProcessor inside; the model's
    own processors are restored after, so the model itself is never changed."""
    attns = [a for layer in layers for a in (layer.attn1, layer.attn2)]
    saved = [a.processor for a in attns]
    try:
        for a in attns:
            a.processor = ProportionalRealAttnProcessor()
        yield
    finally:
        for a, processor in zip(attns, saved):
            a.processor = processor


@register
class LuminaNext(Family):
    name = "lumina_next"
    class_name = "LuminaNextDiT2DModel"
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "height", "width"), "latents"),
        Input("timestep", ("batch",), "timestep"),
        Input("encoder_hidden_states", ("batch", "txt_seq", "cross_attention_dim")),
        Input("encoder_mask", ("batch", "txt_seq"), "mask"),
        # fp32 at every precision: the rotary product runs in fp32, as in the model.
        Input("image_rotary_emb", kind="table", make=lambda config, sizes: rope_table(config), dtype=torch.float32),
        # LuminaPipeline's default for a 1024-pixel model: (1024 // 16) ** 2.
        Input("base_sequence_length", (1,), "constant", value=4096.0, dtype=torch.float32),
    )
    forward_kwargs = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_mask",
                      "image_rotary_emb", "cross_attention_kwargs")
    variants = {
        "Lumina-Next": Variant(
            "Lumina-Next",
            (393.76566581, -603.50993606, 209.10239044, -23.00726601, 0.86377344),
            # 0.2 -> 1.5x, 0.3 -> 1.9x, 0.4 -> 2.4x, 0.5 -> 2.8x (upstream's script runs 0.3).
            # The default is the lowest published setting, as for the other families: a
            # default should cost little quality.
            default_threshold=0.2,
        ),
    }
    # Lumina-Next-SFT: 1024x1024 (128x128 latents, 2x2 patches), Gemma prompts up to 256
    # tokens; the pipeline's RoPE table covers 384 tokens a side (768 latent pixels).
    axes = (
        Axis("batch", 1, 2, 2, help="batch size; LuminaPipeline batches CFG (2 rows per prompt)"),
        *latent_axes(height=(128, 256), width=(128, 256), patch=2),
        text_axis("Gemma", 256, min=8),
    )
    signal = "layers[0].norm1(patch_embedder(x), temb)[0], image tokens"
    signal_dims = {0: "batch", 1: AUTO}
    signal_block_count = "num_layers"
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4Lumina-T2X"
    timestep_scale = TimestepScale("flow", 1.0, reverse=True)  # the pipeline passes 1 - sigma

    @classmethod
    def axes_for(cls, config):
        return patched_axes(cls.axes, config.get("patch_size") or 2)

    @classmethod
    def pipeline_attributes(cls, config):
        # LuminaPipeline sizes its RoPE table with transformer.head_dim.
        return {"head_dim": config["hidden_size"] // config["num_attention_heads"]}

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": LuminaNextEmbed(model), "blocks": LuminaNextBlocks(model),
                "head": LuminaNextHead(model)}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        extra = dict(kwargs.get("cross_attention_kwargs") or {})
        base = extra.pop("base_sequence_length", None)
        if extra:
            raise TeaCacheError(
                f"cross_attention_kwargs has {sorted(extra)}: the compiled graphs take only "
                f"base_sequence_length (proportional attention); drop the others"
            )
        hidden = kwargs["hidden_states"]
        feed = super().feed_from_kwargs(kwargs)  # a tokenizer's int64 mask arrives as 0/1 in the latents' dtype
        table = kwargs["image_rotary_emb"]
        feed["image_rotary_emb"] = torch.view_as_real(table) if table.is_complex() else table
        feed["base_sequence_length"] = torch.tensor([float(base or 0)], device=hidden.device)
        return feed

    @classmethod
    def kwargs_from_feed(cls, feed):
        kwargs = {k: feed[k] for k in ("hidden_states", "timestep", "encoder_hidden_states", "encoder_mask")}
        kwargs["image_rotary_emb"] = torch.view_as_complex(feed["image_rotary_emb"].contiguous())
        base = int(feed["base_sequence_length"].item())
        kwargs["cross_attention_kwargs"] = {"base_sequence_length": base} if base else {}
        return kwargs
