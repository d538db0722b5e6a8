"""HunyuanVideo (HunyuanVideoTransformer3DModel): double-stream then single-stream blocks.

Signal: ``transformer_blocks[0].norm1(x_embedder(x), emb=temb)[0]``, the modulated image
tokens (LN·(1+scale)+shift from the block's img_mod of temb).
Cached: the image-token residual through all double and single blocks; ``norm_out``,
``proj_out`` and the unpatchify always run.
"""
from __future__ import annotations

import torch

from ..errors import TeaCacheError
from . import magcache_ratios
from .base import Family, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes
from .registry import register


def joint_attention_mask(num_image_tokens: int, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """The model's forward step 3: (B, 1, 1, image + text) keys that attend, as int32 0/1.

    Image tokens and the first ``sum(mask)`` text tokens attend (the model assumes the text
    padding is at the end).  Written as one comparison rather than the model's
    ``ones().masked_fill(...)``: same values, and it exports as ``Less`` instead of a ``Where``
    over bool tensors, which ONNX Runtime's CPU provider cannot run (docs/traps.md).  int32, not
    bool, between the graphs: the export verification (abs/max) has no bool kernels, and int32
    is an I/O type every backend takes; the blocks turn it back into the model's bool mask.
    """
    text = encoder_attention_mask.sum(dim=1, dtype=torch.int)  # [B]
    length = num_image_tokens + encoder_attention_mask.shape[1]
    indices = torch.arange(length, device=encoder_attention_mask.device).unsqueeze(0)  # [1, N]
    keep = indices < (num_image_tokens + text).unsqueeze(1)
    return keep[:, None, None, :].to(torch.int32)


class HunyuanVideoEmbed(Part):
    output_names = ("hidden", "encoder_hidden", "temb", "attention_mask", "rotary_cos",
                    "rotary_sin", "signal", "l1_diff", "l1_prev")

    def __init__(self, model, guidance: bool):
        super().__init__(model)
        names = ["hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                 "pooled_projections"]
        self.input_names = tuple(names + ["prev_signal"] + (["guidance"] if guidance else []))

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                pooled_projections, prev_signal, guidance=None):
        m = self.model
        # Unlike FLUX, the model takes timestep and guidance unscaled (pipelines pass 0..1000).
        rotary_cos, rotary_sin = m.rope(hidden_states)
        temb, _ = m.time_text_embed(timestep, pooled_projections, guidance)  # no token_replace_emb
        hidden = m.x_embedder(hidden_states)
        encoder_hidden = m.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
        attention_mask = joint_attention_mask(hidden.shape[1], encoder_attention_mask)
        signal = m.transformer_blocks[0].norm1(hidden, emb=temb)[0]
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return (hidden, encoder_hidden, temb, attention_mask, rotary_cos, rotary_sin,
                signal, l1_diff, l1_prev)


class HunyuanVideoBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "temb", "attention_mask", "rotary_cos", "rotary_sin")
    output_names = ("residual",)

    def forward(self, hidden, encoder_hidden, temb, attention_mask, rotary_cos, rotary_sin):
        m = self.model
        h, e, mask = hidden, encoder_hidden, attention_mask.bool()
        for block in [*m.transformer_blocks, *m.single_transformer_blocks]:
            # Positional, as the model calls them (the double block names its rope freqs_cis).
            h, e = block(h, e, temb, mask, (rotary_cos, rotary_sin))
        return h - hidden


class HunyuanVideoHead(Part):
    # hidden_states (the model's latent input) only lends its frames/height/width to the
    # unpatchify, so the output has the model's (B, C, F, H, W) layout at any dynamic size.
    input_names = ("hidden_states", "hidden", "residual", "temb")
    output_names = ("output",)

    def forward(self, hidden_states, hidden, residual, temb):
        m = self.model
        out = m.proj_out(m.norm_out(hidden + residual, temb))
        return unpatchify(out, hidden_states.shape, m.config.patch_size_t, m.config.patch_size,
                          m.config.out_channels or m.config.in_channels)


def unpatchify(tokens: torch.Tensor, latent_shape, p_t: int, p: int, channels: int) -> torch.Tensor:
    """(B, F'·H'·W', p_t·p·p·C) tokens -> (B, C, F, H, W), the model's forward step 5.

    ``channels`` is spelled out where the model writes -1: with -1 the exported output's
    channel dim is an expression of the token count (``(4*s37)//(frames*...)``), not the
    static out_channels that engines and the manifest should see.
    """
    b, _, f, h, w = latent_shape
    tokens = tokens.reshape(b, f // p_t, h // p, w // p, channels, p_t, p, p)
    tokens = tokens.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return tokens.flatten(6, 7).flatten(4, 5).flatten(2, 3)


@register
class HunyuanVideo(Family):
    name = "hunyuan_video"
    class_name = "HunyuanVideoTransformer3DModel"
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "frames", "height", "width"), "latents"),
        Input("timestep", ("batch",), "timestep"),
        Input("encoder_hidden_states", ("batch", "txt_seq", "text_embed_dim")),
        Input("encoder_attention_mask", ("batch", "txt_seq"), "mask"),  # in the transformer's dtype
        Input("pooled_projections", ("batch", "pooled_projection_dim")),
        Input("guidance", ("batch",), "constant", value=6000.0, when="guidance_embeds"),  # guidance_scale * 1000
    )
    variants = {
        "HunyuanVideo": Variant(
            "HunyuanVideo",
            (733.226126, -401.131952, 67.5869174, -3.14987800, 0.0961237896),
            # 0.1 -> 1.6x, 0.15 -> 2.1x (upstream's sample script uses 0.15).  The default is
            # the paper's "slow" 0.1, as FLUX defaults below upstream's setting too: a default
            # should cost little quality, and video shows cached steps as flicker; pass
            # threshold=0.15 for the 2.1x setting.
            default_threshold=0.1,
            magcache=magcache_ratios.HUNYUAN_VIDEO_720P,
        ),
    }
    # From one frame of one patch and one text token to 129 frames at 720p (either
    # orientation); opt at 720x1280, 129 frames.
    axes = (
        Axis("batch", 1, 1, 2, help="batch size (CFG rows included; HunyuanVideo embeds guidance)"),
        *latent_axes(frames=(33, 33), height=(90, 160), width=(160, 160), patch=2),
        Axis("txt_seq", 1, 256, 256, help="text tokens (LLaMA sequence length after the template crop)"),
    )
    signal = "transformer_blocks[0].norm1(x_embedder(x), emb=temb)[0], image tokens"
    signal_dims = {0: "batch", 1: AUTO}
    signal_block_count = "num_layers"  # double-stream blocks
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4HunyuanVideo"
    timestep_scale = TimestepScale("flow", 1000.0)  # the pipeline passes sigma * 1000

    @classmethod
    def check_config(cls, config):
        if config.get("image_condition_type") == "token_replace":
            raise TeaCacheError(
                "HunyuanVideo config has image_condition_type='token_replace' (the I2V variant whose "
                "first-frame tokens take a separate modulation): its blocks are not split by this "
                "adapter yet; export a text-to-video or 'latent_concat' HunyuanVideo model instead"
            )
        super().check_config(config)

    @classmethod
    def parts(cls, model, variant=None):
        guidance = bool(model.config.guidance_embeds)
        return {"embed": HunyuanVideoEmbed(model, guidance), "blocks": HunyuanVideoBlocks(model),
                "head": HunyuanVideoHead(model)}
