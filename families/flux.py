"""FLUX (FluxTransformer2DModel): double-stream then single-stream blocks.

Signal: ``transformer_blocks[0].norm1(x_embedder(x), emb=temb)[0]`` over the image tokens.
Cached: the image-token residual through all double and single blocks; ``norm_out`` and
``proj_out`` always run.
"""
from __future__ import annotations

import torch

from .base import AUTO, Axis, Family, Part, Variant, criterion_sums
from . import magcache_ratios
from .registry import register


class FluxContext(Part):
    """What a generation keeps fixed: the text stream's embedding and the rotary tables (from
    the prompt embeddings and the position ids).  Run when those inputs change, not per step."""

    input_names = ("encoder_hidden_states", "img_ids", "txt_ids")
    output_names = ("encoder_hidden", "rotary_cos", "rotary_sin")

    def forward(self, encoder_hidden_states, img_ids, txt_ids):
        m = self.model
        cos, sin = m.pos_embed(torch.cat((txt_ids, img_ids), dim=0))
        return m.context_embedder(encoder_hidden_states), cos, sin


class FluxEmbed(Part):
    output_names = ("hidden", "temb", "signal", "l1_diff", "l1_prev")

    def __init__(self, model, guidance: bool):
        super().__init__(model)
        self.guidance = guidance
        names = ["hidden_states", "pooled_projections", "timestep"]
        self.input_names = tuple(names + ["prev_signal"] + (["guidance"] if guidance else []))

    def forward(self, hidden_states, pooled_projections, timestep, prev_signal, guidance=None):
        m = self.model
        hidden = m.x_embedder(hidden_states)
        # The model scales timestep and guidance by 1000 in its forward; same here.
        t = timestep.to(hidden.dtype) * 1000
        if guidance is not None:
            temb = m.time_text_embed(t, guidance.to(hidden.dtype) * 1000, pooled_projections)
        else:
            temb = m.time_text_embed(t, pooled_projections)
        signal = m.transformer_blocks[0].norm1(hidden, emb=temb)[0]
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return hidden, temb, signal, l1_diff, l1_prev


class FluxBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "temb", "rotary_cos", "rotary_sin")
    output_names = ("residual",)
    dynamic = {
        "hidden": {0: "batch", 1: "img_seq"},
        "encoder_hidden": {0: "batch", 1: "txt_seq"},
        "temb": {0: "batch"},
        "rotary_cos": {0: AUTO},
        "rotary_sin": {0: AUTO},
    }

    def forward(self, hidden, encoder_hidden, temb, rotary_cos, rotary_sin):
        m = self.model
        h, e = hidden, encoder_hidden
        for block in [*m.transformer_blocks, *m.single_transformer_blocks]:
            e, h = block(hidden_states=h, encoder_hidden_states=e, temb=temb,
                         image_rotary_emb=(rotary_cos, rotary_sin))
        return h - hidden


class FluxHead(Part):
    input_names = ("hidden", "residual", "temb")
    output_names = ("output",)
    dynamic = {"hidden": {0: "batch", 1: "img_seq"}, "residual": {0: "batch", 1: "img_seq"},
               "temb": {0: "batch"}}

    def forward(self, hidden, residual, temb):
        return self.model.proj_out(self.model.norm_out(hidden + residual, temb))


@register
class Flux(Family):
    name = "flux"
    class_name = "FluxTransformer2DModel"
    model_inputs = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep",
                    "img_ids", "txt_ids", "guidance")
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
    optional_inputs = {"guidance": "guidance_embeds"}
    cached = ("hidden_states",)

    @classmethod
    def parts(cls, model, variant=None):
        guidance = bool(model.config.guidance_embeds)
        return {"context": FluxContext(model), "embed": FluxEmbed(model, guidance), "blocks": FluxBlocks(model),
                "head": FluxHead(model)}

    @classmethod
    def input_dims(cls, config):
        return {
            "hidden_states": {0: "batch", 1: "img_seq"},
            "encoder_hidden_states": {0: "batch", 1: "txt_seq"},
            "pooled_projections": {0: "batch"},
            "timestep": {0: "batch"},
            "img_ids": {0: "img_seq"},
            "txt_ids": {0: "txt_seq"},
            "guidance": {0: "batch"},
        }

    @classmethod
    def example_inputs(cls, config, dims, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        b, s, t = dims["batch"], dims["img_seq"], dims["txt_seq"]
        out_dim = config["in_channels"]
        feed = {
            "hidden_states": torch.randn(b, s, out_dim, generator=g).to(dtype),
            "encoder_hidden_states": torch.randn(b, t, config["joint_attention_dim"], generator=g).to(dtype),
            "pooled_projections": torch.randn(b, config["pooled_projection_dim"], generator=g).to(dtype),
            "timestep": torch.rand(b, generator=g).to(dtype),
            # FLUX ids: channel 0 = 0, channels 1, 2 = row, column of the latent grid.
            "img_ids": torch.stack(
                [torch.zeros(s), torch.arange(s) // 16, torch.arange(s) % 16], dim=1
            ).to(dtype),
            "txt_ids": torch.zeros(t, 3, dtype=dtype),
        }
        if config.get("guidance_embeds"):
            feed["guidance"] = torch.full((b,), 3.5, dtype=dtype)
        return feed

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        feed = {k: kwargs[k] for k in cls.model_inputs if kwargs.get(k) is not None}
        for ids in ("img_ids", "txt_ids"):
            # diffusers still accepts (deprecated) batched ids; they are the same per sample.
            if ids in feed and feed[ids].ndim == 3:
                feed[ids] = feed[ids][0]
        return feed
