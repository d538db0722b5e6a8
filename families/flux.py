"""FLUX (FluxTransformer2DModel): double-stream then single-stream blocks.

Signal: ``transformer_blocks[0].norm1(x_embedder(x), emb=temb)[0]`` over the image tokens.
Cached: the image-token residual through all double and single blocks; ``norm_out`` and
``proj_out`` always run.
"""
from __future__ import annotations

import torch

from . import magcache_ratios
from .base import Family, NormOutHead, Part, Variant, criterion_sums
from .inputs import Axis, Input
from .registry import register


class FluxContext(Part):
    """What a generation keeps fixed: the text stream's embedding, the rotary tables (from
    the prompt embeddings and the position ids) and the pooled text's share of temb.  Run
    when those inputs change, not per step."""

    input_names = ("encoder_hidden_states", "pooled_projections", "img_ids", "txt_ids")
    output_names = ("encoder_hidden", "pooled_emb", "rotary_cos", "rotary_sin")

    def forward(self, encoder_hidden_states, pooled_projections, img_ids, txt_ids):
        m = self.model
        cos, sin = m.pos_embed(torch.cat((txt_ids, img_ids), dim=0))
        pooled_emb = m.time_text_embed.text_embedder(pooled_projections)
        return m.context_embedder(encoder_hidden_states), pooled_emb, cos, sin


class FluxEmbed(Part):
    output_names = ("hidden", "temb", "signal", "l1_diff", "l1_prev")

    def __init__(self, model, guidance: bool):
        super().__init__(model)
        self.guidance = guidance
        names = ["hidden_states", "pooled_emb", "timestep"]
        self.input_names = tuple(names + ["prev_signal"] + (["guidance"] if guidance else []))

    def forward(self, hidden_states, pooled_emb, timestep, prev_signal, guidance=None):
        m = self.model
        hidden = m.x_embedder(hidden_states)
        # temb as time_text_embed sums it (timestep, then guidance, then the pooled text, in
        # that order), with the pooled text's projection from the context graph: per step it
        # was two matmuls and 0.4 MB of weights on the bench model for an unchanged result.
        # The model scales timestep and guidance by 1000 in its forward; same here.
        embed = m.time_text_embed
        temb = embed.timestep_embedder(embed.time_proj(timestep.to(hidden.dtype) * 1000).to(pooled_emb.dtype))
        if guidance is not None:
            temb = temb + embed.guidance_embedder(embed.time_proj(guidance.to(hidden.dtype) * 1000).to(pooled_emb.dtype))
        temb = temb + pooled_emb
        signal = m.transformer_blocks[0].norm1(hidden, emb=temb)[0]
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return hidden, temb, signal, l1_diff, l1_prev


class FluxBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "temb", "rotary_cos", "rotary_sin")
    output_names = ("residual",)

    def forward(self, hidden, encoder_hidden, temb, rotary_cos, rotary_sin):
        m = self.model
        h, e = hidden, encoder_hidden
        for block in [*m.transformer_blocks, *m.single_transformer_blocks]:
            e, h = block(hidden_states=h, encoder_hidden_states=e, temb=temb,
                         image_rotary_emb=(rotary_cos, rotary_sin))
        return h - hidden


def image_ids(tokens: int) -> torch.Tensor:
    """FLUX position ids of the image tokens: channel 0 = 0, channels 1, 2 = row, column of a
    latent grid 16 tokens wide (any grid does for examples)."""
    n = torch.arange(tokens)
    return torch.stack([torch.zeros(tokens), n // 16, n % 16], dim=1)


@register
class Flux(Family):
    name = "flux"
    class_name = "FluxTransformer2DModel"
    inputs = (
        Input("hidden_states", ("batch", "img_seq", "in_channels"), "latents"),
        Input("encoder_hidden_states", ("batch", "txt_seq", "joint_attention_dim")),
        Input("pooled_projections", ("batch", "pooled_projection_dim")),
        Input("timestep", ("batch",), "timestep"),  # sigma in [0, 1): the model scales by 1000
        Input("img_ids", ("img_seq", 3), "table", make=lambda config, sizes: image_ids(sizes["img_seq"])),
        Input("txt_ids", ("txt_seq", 3), "constant", value=0.0),
        Input("guidance", ("batch",), "constant", value=3.5, when="guidance_embeds"),
    )
    variants = {
        "FLUX.1": Variant(
            "FLUX.1",
            (498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861),
            default_threshold=0.4,  # 0.25 -> 1.5x, 0.4 -> 1.8x, 0.6 -> 2.0x, 0.8 -> 2.25x
            magcache=magcache_ratios.FLUX_1_DEV,
        ),
    }
    # From one token to FLUX.1's ~2 MP ceiling (1920x1080 -> 8160 image tokens); opt at its
    # 1024x1024 default and FLUX.1-dev's 512 T5 tokens.
    axes = (
        Axis("batch", 1, 1, 4, help="batch size (CFG rows included)"),
        Axis("img_seq", 1, 4096, 8192, help="image tokens: (height/16)*(width/16) for FLUX.1"),
        Axis("txt_seq", 1, 512, 512, help="text tokens (T5 sequence length: 512 for dev, 256 for schnell)"),
    )
    signal = "transformer_blocks[0].norm1(x_embedder(x), emb=temb)[0], image tokens"
    signal_dims = {0: "batch", 1: "img_seq"}
    signal_block_count = "num_layers"  # double-stream blocks
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4FLUX (FLUX.1-dev)"

    @classmethod
    def parts(cls, model, variant=None):
        guidance = bool(model.config.guidance_embeds)
        return {"context": FluxContext(model), "embed": FluxEmbed(model, guidance), "blocks": FluxBlocks(model),
                "head": NormOutHead(model)}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        feed = super().feed_from_kwargs(kwargs)
        for ids in ("img_ids", "txt_ids"):
            # diffusers still accepts (deprecated) batched ids; they are the same per sample.
            if ids in feed and feed[ids].ndim == 3:
                feed[ids] = feed[ids][0]
        return feed
