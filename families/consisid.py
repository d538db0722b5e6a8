"""ConsisID (ConsisIDTransformer3DModel): CogVideoX-5B-I2V blocks with identity (face) inputs.

Signal, cache and TeaCache rule as CogVideoX (upstream TeaCache4ConsisID): the timestep
embedding ``time_embedding(time_proj(t))`` with the CogVideoX-5B coefficients; the first and
the last step compute.  Upstream's step counter wraps one step early (its ``cnt == num_steps-1``
test never fires and the state leaks into the next generation, docs/families.md): the same schedule
within one generation, not copied.  Upstream caches the text residual too; the model applies
``norm_final`` to [text, video] and keeps the video rows, and a LayerNorm works per token, so
the text residual cannot change the output: only the video residual is cached.

Face inputs: the local facial extractor turns ``id_cond`` and the ``LFE_num_scale`` ViT
feature maps ``id_vit_hidden`` into face tokens in the embed graph; the blocks add the
perceiver cross-attention of every ``cross_attn_interval``-th block, as the model does, so the
face conditioning is part of the cached residual.  The pipeline passes one face for its
batched CFG call; it is repeated to the batch (each row gets the same face tokens, which is
what the model's broadcast gives).

The parts are CogVideoX's (same patch embedding, blocks, final norms and unpatchify) plus the
face modules; every ConsisID checkpoint uses RoPE and a learned positional table, so a default
export has the table's fixed sizes (49 frames at 480x720, 226 text tokens).
"""
from __future__ import annotations

import torch

from ..errors import TeaCacheError
from .base import Variant
from .inputs import Input
from .cogvideox import CogVideoX, CogVideoXBlocks, CogVideoXEmbed, CogVideoXHead
from .registry import register

VIT_TOKENS = 577  # EVA02-CLIP-L/14 at 336 px: the ViT feature maps the pipeline passes
# id_vit_hidden travels as one (B, LFE_num_scale, tokens, vit_dim) tensor, the pipeline's list
# stacked on dim 1: one graph input whatever the number of scales.
FACE_INPUTS = ("id_cond", "id_vit_hidden")


class ConsisIDEmbed(CogVideoXEmbed):
    def __init__(self, model, face: bool):
        super().__init__(model, ofs=False, rope=True)
        if face:
            self.input_names = self.input_names + FACE_INPUTS
            self.output_names = self.output_names[:-3] + ("face", "signal", "l1_diff", "l1_prev")

    def forward(self, hidden_states, encoder_hidden_states, timestep, prev_signal, rotary_cos, rotary_sin,
                id_cond=None, id_vit_hidden=None):
        outs = super().forward(hidden_states, encoder_hidden_states, timestep, prev_signal, rotary_cos, rotary_sin)
        if id_cond is None:
            return outs
        face = self.model.local_facial_extractor(id_cond, list(id_vit_hidden.unbind(1)))
        return (*outs[:-3], face, *outs[-3:])


class ConsisIDBlocks(CogVideoXBlocks):
    def __init__(self, model, face: bool):
        super().__init__(model, rope=True)
        if face:
            self.input_names = self.input_names + ("face",)

    def forward(self, hidden, encoder_hidden, temb, rope_cos, rope_sin, face=None):
        m = self.model
        h, e = hidden.flatten(1, 3), encoder_hidden
        for i, block in enumerate(m.transformer_blocks):
            h, e = block(hidden_states=h, encoder_hidden_states=e, temb=temb, image_rotary_emb=(rope_cos, rope_sin))
            if face is not None and i % m.cross_attn_interval == 0:
                # The model's loop: the (i // interval)-th perceiver after every interval-th block.
                h = h + m.local_face_scale * m.perceiver_cross_attention[i // m.cross_attn_interval](face, h)
        return h.reshape(hidden.shape) - hidden


@register
class ConsisID(CogVideoX):
    name = "consisid"
    class_name = "ConsisIDTransformer3DModel"
    inputs = (
        *(i for i in CogVideoX.inputs if i.name != "ofs"),
        Input("id_cond", ("batch", "LFE_id_dim"), when="is_train_face"),
        Input("id_vit_hidden", ("batch", "LFE_num_scale", VIT_TOKENS, "LFE_vit_dim"), when="is_train_face"),
    )
    forward_kwargs = ("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "image_rotary_emb",
                      "id_cond", "id_vit_hidden")
    variants = {
        # CogVideoX-5B's coefficients (ConsisID is CogVideoX-5B-I2V fine-tuned).  0.1 is upstream's
        # slowest setting (1.6x; 0.15 -> 2.1x, 0.2 -> 2.5x), the default as for CogVideoX.
        "ConsisID": Variant("ConsisID", CogVideoX.variants["CogVideoX-5b"].coefficients, default_threshold=0.1),
    }
    coefficients_source = "upstream TeaCache4ConsisID (CogVideoX-5B's set)"
    note = ("Only the video-token residual is cached (face cross-attention included). Upstream TeaCache "
            "caches the text residual too; norm_final normalises each token alone, so the text rows "
            "cannot change the video output.")

    @classmethod
    def check_config(cls, config):
        if not config.get("use_rotary_positional_embeddings"):
            raise TeaCacheError(
                "ConsisID config has use_rotary_positional_embeddings=False: every ConsisID checkpoint "
                "uses RoPE (its CogVideoX-5B-I2V base does), and this adapter splits that layout only"
            )
        super().check_config(config)

    @classmethod
    def variant_for(cls, config):
        return "ConsisID"

    @classmethod
    def parts(cls, model, variant=None):
        face = bool(model.config.is_train_face)
        return {"embed": ConsisIDEmbed(model, face), "blocks": ConsisIDBlocks(model, face),
                "head": CogVideoXHead(model)}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        feed = super().feed_from_kwargs(kwargs)
        if kwargs.get("id_cond") is None:
            return feed
        batch = kwargs["hidden_states"].shape[0]
        face = {"id_cond": kwargs["id_cond"], "id_vit_hidden": torch.stack(list(kwargs["id_vit_hidden"]), dim=1)}
        for name, t in face.items():
            # One face for the batched CFG call: the model broadcasts it over the batch.
            feed[name] = t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 else t
        return feed

    @classmethod
    def kwargs_from_feed(cls, feed):
        kwargs = super().kwargs_from_feed(feed)
        if "id_cond" in feed:
            kwargs["id_cond"] = feed["id_cond"]
            kwargs["id_vit_hidden"] = list(feed["id_vit_hidden"].unbind(1))
        return kwargs
