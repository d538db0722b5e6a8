"""FLUX.2 (Flux2Transformer2DModel), dev and klein: double-stream then single-stream blocks, with
the modulation vectors computed once per call from the timestep (and guidance) embedding and
shared by every block.

Rule (vLLM-Omni's TeaCache hook and its FLUX.2 extractors, the public block-residual TeaCache
for these models): the signal is block 0's modulated image input,
``(1 + scale_msa) * transformer_blocks[0].norm1(x_embedder(x)) + shift_msa`` with
(shift, scale) from ``double_stream_modulation_img(temb)``; ``d = mean|s - s_prev| /
(mean|s_prev| + 1e-8)``, ``acc += |poly(d)|``; only the first call of each cache context is
forced.  Cached: the image tokens' residual through every double and single block (the joint
stream sliced after the text); ``norm_out`` and ``proj_out`` always run.  Reference-image
tokens, which the pipelines append to the latents, are image tokens here as in the model: part
of the signal and of the residual (the pipeline slices them off the output).

Variants, from the config's ``guidance_embeds``: FLUX.2-dev (guidance-distilled; Flux2Pipeline
makes one unnamed call per step) and FLUX.2-klein (no guidance embedding; Flux2KleinPipeline
calls ``cache_context("cond")`` and, for the undistilled base models, ``("uncond")``).  No
coefficients were fitted for FLUX.2: vLLM-Omni borrows Qwen-Image's set for dev and FLUX.1's
for klein, and so does this project.

RoPE: four axes (t, h, w, l) from the ids, computed in the context graph in fp32 with the
frequencies the model computes in fp64 (rounded once, at export): TensorRT has no fp64
arithmetic.  At the positions FLUX.2 uses (text index up to 511) the tables differ from the
model's by at most 3e-5.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import TeaCacheError
from .base import Family, ForcedSteps, NormOutHead, Part, Variant, criterion_sums
from .inputs import Axis, Input, text_axis
from .registry import register


class Rotary(torch.nn.Module):
    """Flux2PosEmbed's cos/sin tables in fp32: per axis, the positions times the frequencies
    ``1 / theta ** (2i / dim)`` (computed in fp64, kept as fp32 buffers), each angle repeated for
    the two channels it rotates."""

    def __init__(self, pos_embed):
        super().__init__()
        freqs = [1.0 / pos_embed.theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
                 for dim in pos_embed.axes_dim]
        self.register_buffer("freqs", torch.cat(freqs).float(), persistent=False)
        self.register_buffer("axis_of", torch.cat([torch.full((len(f),), k) for k, f in enumerate(freqs)]),
                             persistent=False)

    def forward(self, ids):  # (tokens, axes) -> cos, sin (tokens, head_dim)
        angles = ids.float()[:, self.axis_of] * self.freqs
        return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


class Flux2Context(Part):
    """What a generation keeps fixed: the text stream's embedding and the rotary tables of the
    [text, image] sequence (from the prompt embeddings and the position ids)."""

    input_names = ("encoder_hidden_states", "img_ids", "txt_ids")
    output_names = ("encoder_hidden", "rotary_cos", "rotary_sin")

    def __init__(self, model):
        super().__init__(model)
        self.rotary = Rotary(model.pos_embed)

    def forward(self, encoder_hidden_states, img_ids, txt_ids):
        # The pipelines pass batched ids, equal per sample; the model reads sample 0.
        cos, sin = self.rotary(torch.cat((txt_ids[0], img_ids[0]), dim=0))
        return self.model.context_embedder(encoder_hidden_states), cos, sin


class Flux2Embed(Part):
    output_names = ("hidden", "temb", "mod_img", "mod_txt", "mod_single", "signal", "l1_diff", "l1_prev")

    def __init__(self, model, guidance: bool):
        super().__init__(model)
        self.input_names = ("hidden_states", "timestep", "prev_signal") + (("guidance",) if guidance else ())

    def forward(self, hidden_states, timestep, prev_signal, guidance=None):
        m = self.model
        # The model scales timestep and guidance by 1000 in its forward; same here.
        t = timestep.to(hidden_states.dtype) * 1000
        g = guidance.to(hidden_states.dtype) * 1000 if guidance is not None else None
        temb = m.time_guidance_embed(t, g)
        mod_img = m.double_stream_modulation_img(temb)
        hidden = m.x_embedder(hidden_states)
        shift_msa, scale_msa, _ = type(m.double_stream_modulation_img).split(mod_img, 2)[0]  # Flux2Modulation
        signal = (1 + scale_msa) * m.transformer_blocks[0].norm1(hidden) + shift_msa
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return (hidden, temb, mod_img, m.double_stream_modulation_txt(temb), m.single_stream_modulation(temb),
                signal, l1_diff, l1_prev)


class Flux2Blocks(Part):
    input_names = ("hidden", "encoder_hidden", "mod_img", "mod_txt", "mod_single", "rotary_cos", "rotary_sin")
    output_names = ("residual",)

    def forward(self, hidden, encoder_hidden, mod_img, mod_txt, mod_single, rotary_cos, rotary_sin):
        m = self.model
        rotary = (rotary_cos, rotary_sin)
        h, e = hidden, encoder_hidden
        for block in m.transformer_blocks:
            e, h = block(hidden_states=h, encoder_hidden_states=e, temb_mod_img=mod_img, temb_mod_txt=mod_txt,
                         image_rotary_emb=rotary)
        joint = torch.cat([e, h], dim=1)
        for block in m.single_transformer_blocks:
            joint = block(hidden_states=joint, encoder_hidden_states=None, temb_mod=mod_single,
                          image_rotary_emb=rotary)
        return joint[:, encoder_hidden.shape[1]:] - hidden


def image_ids(sizes) -> torch.Tensor:
    """The pipelines' image-token ids (0, row, col, 0), per sample, for a grid as square as
    ``img_seq`` allows."""
    s = sizes["img_seq"]
    width = max(d for d in range(1, int(s**0.5) + 1) if s % d == 0)
    n, zeros = torch.arange(s), torch.zeros(s, dtype=torch.long)
    return torch.stack([zeros, n // width, n % width, zeros], dim=1).expand(sizes["batch"], -1, -1).contiguous()


def text_ids(sizes) -> torch.Tensor:
    """The pipelines' text-token ids (0, 0, 0, l), per sample."""
    t = sizes["txt_seq"]
    ids = torch.zeros(t, 4, dtype=torch.long)
    ids[:, 3] = torch.arange(t)
    return ids.expand(sizes["batch"], -1, -1).contiguous()


# Flux2KleinKVPipeline's reference-image KV cache: keywords and the values that leave it off.
KV_CACHE_KWARGS = {"kv_cache": None, "kv_cache_mode": None, "num_ref_tokens": 0, "ref_fixed_timestep": 0.0}


def _variant(name, coefficients):
    # vLLM-Omni's default threshold (0.2); its rule: |poly| accumulated, eps 1e-8, first call forced.
    return Variant(name, coefficients, default_threshold=0.2, forced=ForcedSteps(first=1, last=False),
                   accumulate="abs", eps=1e-8)


@register
class Flux2(Family):
    name = "flux2"
    class_name = "Flux2Transformer2DModel"
    inputs = (
        Input("hidden_states", ("batch", "img_seq", "in_channels"), "latents"),
        Input("encoder_hidden_states", ("batch", "txt_seq", "joint_attention_dim")),
        Input("timestep", ("batch",), "timestep"),  # sigma in [0, 1): the model scales by 1000
        Input("img_ids", ("batch", "img_seq", 4), "table", dtype=torch.int64, make=lambda config, sizes: image_ids(sizes)),
        Input("txt_ids", ("batch", "txt_seq", 4), "table", dtype=torch.int64, make=lambda config, sizes: text_ids(sizes)),
        Input("guidance", ("batch",), "constant", value=4.0, when="guidance_embeds"),
    )
    forward_kwargs = (*(i.name for i in inputs), *KV_CACHE_KWARGS)  # refused with their own message
    variants: ClassVar = {v.name: v for v in (
        # vLLM-Omni: "copied from Qwen-Image, need to be tuned specifically for Flux2"
        _variant("FLUX.2-dev", (-4.5e2, 2.8e2, -4.5e1, 3.2, -2e-2)),
        # vLLM-Omni: FLUX.1's set, "similar dual-stream architecture"
        _variant("FLUX.2-klein", (4.98651651e2, -2.83781631e2, 5.58554382e1, -3.82021401, 2.64230861e-1)),
    )}
    # FLUX.2 renders up to 4 MP (2048x2048: 16384 image tokens), or 1024x1024 with reference
    # images appended; both pipelines pad prompts to max_sequence_length=512.
    axes = (
        Axis("batch", 1, 1, 4, help="batch size of one call (Flux2KleinPipeline calls cond and uncond separately)"),
        Axis("img_seq", 1, 4096, 16384,
             help="image tokens: (height/16)*(width/16), plus the reference images' tokens"),
        text_axis("Mistral3 for dev, Qwen3 for klein", 512),
    )
    signal = ("(1 + scale_msa) * transformer_blocks[0].norm1(x_embedder(x)) + shift_msa, "
              "image (and reference-image) tokens")
    signal_dims = {0: "batch", 1: "img_seq"}
    signal_block_count = "num_layers"  # double-stream blocks
    cached = ("hidden_states",)
    coefficients_source = "vLLM-Omni (none fitted for FLUX.2: Qwen-Image's set for dev, FLUX.1's for klein)"
    note = ("Rule as vLLM-Omni codes it: acc += |poly(d)|, eps 1e-8 in d's denominator, only each cache "
            "context's first call forced; its FLUX.2 coefficients are borrowed (Qwen-Image's for dev, "
            "FLUX.1's for klein).")

    @classmethod
    def variant_for(cls, config):
        return "FLUX.2-dev" if config.get("guidance_embeds") else "FLUX.2-klein"

    @classmethod
    def parts(cls, model, variant=None):
        guidance = bool(model.config.guidance_embeds)
        return {"context": Flux2Context(model), "embed": Flux2Embed(model, guidance), "blocks": Flux2Blocks(model),
                "head": NormOutHead(model)}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        for key, off in KV_CACHE_KWARGS.items():
            if kwargs.get(key, off) != off:
                raise TeaCacheError(
                    f"{key}={kwargs[key]!r}: the reference-image KV cache (Flux2KleinKVPipeline) is not part of "
                    f"the exported graphs; use Flux2KleinPipeline, which passes the reference images as tokens"
                )
        hidden = kwargs["hidden_states"]
        feed = super().feed_from_kwargs(kwargs)  # the timestep one per sample
        for ids in ("img_ids", "txt_ids"):
            t = feed.get(ids)
            if t is None:
                continue  # reported as a missing input by the runtime
            if t.ndim == 2:  # one (tokens, 4) table for the batch: the model accepts it too
                t = t.expand(hidden.shape[0], -1, -1)
            feed[ids] = t if t.dtype == torch.long else t.long()
        return feed
