"""CogVideoX and CogVideoX 1.5 (CogVideoXTransformer3DModel): one stack of expert blocks
over [text, video] tokens.

Signal: the timestep embedding the blocks receive, ``time_embedding(time_proj(t))`` plus
``ofs_embedding(ofs_proj(ofs))`` where the config has one (CogVideoX1.5 I2V); not modulated.
Cached: the video-token residual through all blocks.  Upstream TeaCache also caches the text
residual, because its diffusers applied ``norm_final`` to [text, video]; in the installed
diffusers the blocks' text output is dropped and ``norm_final`` sees the video tokens only, so
the text residual cannot change the output and is not cached.  ``norm_final``, ``norm_out``,
``proj_out`` and the unpatchify always run.

Layout between the graphs: the video tokens travel as a (B, F', H', W', D) grid (F' = latent
frames / patch_size_t, H', W' = latent size / patch_size), so the head unpatchifies from its
own input's shape and the blocks flatten it to the model's token order.
"""
from __future__ import annotations

import torch

from ..errors import TeaCacheError
from .base import Family, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes, patched_axes, text_axis
from .registry import register


def fixed_sizes(config) -> dict[str, int] | None:
    """Sizes the weights fix, or None when every axis is free.

    A sin-cos (CogVideoX-2b) or learned (CogVideoX-5b-I2V) positional table covers
    ``max_text_seq_length`` text tokens and the ``sample_*`` video grid.  At another size the
    model rebuilds the table in a way torch.export cannot trace (or, for a learned table,
    refuses), so such models export at that one size.  RoPE-only models take any size.
    """
    learned = config.get("use_learned_positional_embeddings")
    if config.get("use_rotary_positional_embeddings") and not learned:
        return None
    tcr = config.get("temporal_compression_ratio", 4)
    return {"frames": (config["sample_frames"] - 1) // tcr + 1, "height": config["sample_height"],
            "width": config["sample_width"], "txt_seq": config["max_text_seq_length"]}


ROPE = "use_rotary_positional_embeddings"


def rope_table(k: int):
    """Half ``k`` (0: cos, 1: sin) of the RoPE tables an example feeds: over the whole latent
    grid and in fp32 at every precision, as the pipelines pass them (the model's
    apply_rotary_emb rotates in fp32; an fp16 table would round the angles)."""
    return lambda config, sizes: rotary_tables(config, sizes["frames"], sizes["height"], sizes["width"])[k]


class CogVideoXEmbed(Part):
    def __init__(self, model, ofs: bool, rope: bool):
        super().__init__(model)
        # Optional inputs last, rope before ofs: every CogVideoX with ofs (1.5 I2V) uses RoPE
        # (check_config), so the positional order always matches forward's signature.
        self.input_names = tuple(
            ["hidden_states", "encoder_hidden_states", "timestep", "prev_signal"]
            + (["rotary_cos", "rotary_sin"] if rope else []) + (["ofs"] if ofs else []))
        self.output_names = tuple(
            ["hidden", "encoder_hidden", "temb"] + (["rope_cos", "rope_sin"] if rope else [])
            + ["signal", "l1_diff", "l1_prev"])

    def forward(self, hidden_states, encoder_hidden_states, timestep, prev_signal,
                rotary_cos=None, rotary_sin=None, ofs=None):
        m = self.model
        # The model casts the (always fp32) sinusoidal projections to the latents' dtype.
        temb = m.time_embedding(m.time_proj(timestep).to(hidden_states.dtype))
        if ofs is not None:
            temb = temb + m.ofs_embedding(m.ofs_proj(ofs).to(hidden_states.dtype))
        tokens = m.embedding_dropout(m.patch_embed(encoder_hidden_states, hidden_states))
        text = encoder_hidden_states.shape[1]
        _, frames, _, height, width = hidden_states.shape
        p, p_t = m.config.patch_size, m.config.get("patch_size_t") or 1
        # contiguous(): slices of one buffer would hand the next graph's export strides
        # that depend on the other stream's length (a no-op in ONNX).
        hidden = tokens[:, text:].unflatten(1, (frames // p_t, height // p, width // p)).contiguous()
        encoder_hidden = tokens[:, :text].contiguous()
        l1_diff, l1_prev = criterion_sums(temb, prev_signal)
        # The rotary tables pass through so that the runtime checks, casts and places them
        # with the other embed inputs; the blocks take them from here.
        rope = () if rotary_cos is None else (rotary_cos, rotary_sin)
        return (hidden, encoder_hidden, temb, *rope, temb, l1_diff, l1_prev)


class CogVideoXBlocks(Part):
    output_names = ("residual",)

    def __init__(self, model, rope: bool):
        super().__init__(model)
        self.rope = rope
        self.input_names = ("hidden", "encoder_hidden", "temb") + (("rope_cos", "rope_sin") if rope else ())

    def forward(self, hidden, encoder_hidden, temb, rope_cos=None, rope_sin=None):
        h, e = hidden.flatten(1, 3), encoder_hidden  # the model's (F', H', W') token order
        rope = (rope_cos, rope_sin) if self.rope else None
        for block in self.model.transformer_blocks:
            h, e = block(hidden_states=h, encoder_hidden_states=e, temb=temb, image_rotary_emb=rope)
        # Only the video stream reaches the output (norm_final takes the video tokens only).
        return h.reshape(hidden.shape) - hidden


class CogVideoXHead(Part):
    input_names = ("hidden", "residual", "temb")
    output_names = ("output",)

    def forward(self, hidden, residual, temb):
        m = self.model
        grid = hidden + residual
        out = m.proj_out(m.norm_out(m.norm_final(grid.flatten(1, 3)), temb=temb))
        # .get: ConsisID, which shares these parts, has no patch_size_t in its config.
        return unpatchify(out, grid.shape[:4], m.config.patch_size, m.config.get("patch_size_t"),
                          m.config.out_channels)


def unpatchify(tokens, grid, p: int, p_t: int | None, channels: int) -> torch.Tensor:
    """(B, F'·H'·W', [p_t·]p·p·C) -> (B, F, C, H, W), the model's forward step 5.

    The grid sizes come from the head's input shape, so no division is traced; ``channels``
    is spelled out where the model writes -1, so the output's channel dim stays static.
    """
    b, f, h, w = grid
    if p_t is None:  # CogVideoX 1.0
        out = tokens.reshape(b, f, h, w, channels, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
    out = tokens.reshape(b, f, h, w, channels, p_t, p, p)  # CogVideoX 1.5
    return out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)


def _variant(name, coefficients):
    # 0.1 is upstream's "slow" setting for every CogVideoX (docs/families.md: 1.3x for 1.5 T2V, 1.5x
    # for 1.5 I2V, 1.6x for the 5b-based ConsisID).  Its "fast" 0.2 (1.8-2.5x) costs far more
    # fidelity: a published CogVideoX1.5 comparison (PromptTea's README) has the slow setting
    # at 36 dB PSNR against the uncached video and the fast one at 15 dB.  A default should
    # cost little quality, as for the other families; pass threshold=0.2 for the fast setting.
    return Variant(name, coefficients, default_threshold=0.1)


@register
class CogVideoX(Family):
    name = "cogvideox"
    class_name = "CogVideoXTransformer3DModel"
    inputs = (
        Input("hidden_states", ("batch", "frames", "in_channels", "height", "width"), "latents"),
        Input("encoder_hidden_states", ("batch", "txt_seq", "text_embed_dim")),
        Input("timestep", ("batch",), "timestep"),  # int64, and so in the graph (TensorRT: an Int64 binding)
        Input("rotary_cos", kind="table", make=rope_table(0), dtype=torch.float32, when=ROPE, dims={0: AUTO}),
        Input("rotary_sin", kind="table", make=rope_table(1), dtype=torch.float32, when=ROPE, dims={0: AUTO}),
        Input("ofs", ("batch",), "constant", value=2.0, when="ofs_embed_dim"),  # what the I2V pipeline passes
    )
    # The exporter's named dims (min 1) make torch.export reject the model's own shape guards
    # (patch rows != 1; CogVideoX 1.5's patchify needs sizes divisible by the patch), and
    # torch.onnx leaves the roots of derived dims (2*frames) unnamed in the graph.  The
    # profiles still come from the axes; the runtime's axis-range check sees batch and txt_seq
    # only, and engines hold the rest to their profile.
    auto_axes = ("frames", "height", "width")
    variants = {v.name: v for v in (
        _variant("CogVideoX-2b", (-31.0658903, 25.4732368, -5.92380459, 1.75769064, -0.00361568434)),
        # also CogVideoX-5b-I2V and ConsisID
        _variant("CogVideoX-5b", (-1538.80483, 843.202495, -134.363087, 7.97131516, -0.0523162339)),
        _variant("CogVideoX1.5-5B", (250.210439, -165.061612, 35.7804877, -0.781551492, 0.0358559703)),
        _variant("CogVideoX1.5-5B-I2V", (122.842302, -104.088754, 26.2981677, -0.306009921, 0.0371213220)),
    )}
    # CogVideoX-5b (RoPE, 480x720, 49 frames); axes_for gives CogVideoX 1.5 and the
    # fixed-size models their own.
    # From one frame of one patch and one text token up; opt at the checkpoint's own size.
    axes = (
        Axis("batch", 1, 2, 4, help="batch size; CFG doubles it (the pipelines batch cond and uncond)"),
        *latent_axes(frames=(13, 13), height=(60, 96), width=(90, 160), patch=2),
        text_axis("T5", 226),
    )
    signal = "time_embedding(time_proj(timestep)) [+ ofs_embedding(ofs_proj(ofs))], the blocks' temb"
    signal_dims = {0: "batch"}
    forward_kwargs = ("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs",
                      "image_rotary_emb")
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4CogVideoX1.5 (its 2b, 5b and 1.5 sets)"
    timestep_scale = TimestepScale("ddpm")  # int64 timesteps 999 -> 0
    note = ("Only the video-token residual is cached. Upstream TeaCache caches the text residual "
            "too (its diffusers applied norm_final to [text, video]); in this diffusers the blocks' "
            "text output never reaches the output (norm_final takes the video tokens only), so "
            "caching it could not change a result.")

    @classmethod
    def check_config(cls, config):
        if config.get("ofs_embed_dim") and not config.get("use_rotary_positional_embeddings"):
            raise TeaCacheError(
                f"CogVideoX config has ofs_embed_dim={config['ofs_embed_dim']} without RoPE: no "
                f"CogVideoX checkpoint has that layout (the ofs embedding came with CogVideoX1.5 "
                f"I2V, which uses RoPE), and this adapter does not split it"
            )

    @classmethod
    def variant_for(cls, config):
        if config.get("patch_size_t"):
            out = config.get("out_channels") or config["in_channels"]
            i2v = config.get("ofs_embed_dim") or config["in_channels"] == 2 * out
            return "CogVideoX1.5-5B-I2V" if i2v else "CogVideoX1.5-5B"
        heads = config.get("num_attention_heads")
        if heads in (30, 48):
            return {30: "CogVideoX-2b", 48: "CogVideoX-5b"}[heads]
        # Another width (a fine-tune or a test model): RoPE came with the 5b models, the
        # sin-cos table with 2b.  Pass --variant to choose.
        return "CogVideoX-5b" if config.get("use_rotary_positional_embeddings") else "CogVideoX-2b"

    @classmethod
    def axes_for(cls, config):
        fixed = fixed_sizes(config)
        batch = cls.axes[0]
        if fixed is not None:
            table = "learned" if config.get("use_learned_positional_embeddings") else "sin-cos"
            why = f"the model's {table} positional table is built for this size: sample_* and max_text_seq_length"
            return (batch, *(Axis(n, v, v, v, help=why, fixed=True) for n, v in fixed.items()))
        p, p_t = config.get("patch_size", 2), config.get("patch_size_t")
        if p_t:  # CogVideoX 1.5: 81 frames -> 21 latent frames, padded to 22; 768x1360
            frames = latent_axes(frames=(22, 42), height=(96, 170), width=(170, 170), patch=p, patch_t=p_t)
            return (batch, *frames, cls.axes[4])
        return patched_axes(cls.axes, p)

    @classmethod
    def parts(cls, model, variant=None):
        cfg = model.config
        ofs, rope = bool(cfg.ofs_embed_dim), bool(cfg.use_rotary_positional_embeddings)
        return {"embed": CogVideoXEmbed(model, ofs, rope), "blocks": CogVideoXBlocks(model, rope),
                "head": CogVideoXHead(model)}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        if kwargs.get("timestep_cond") is not None:
            raise TeaCacheError(
                "timestep_cond was given: CogVideoX's time embedding has no condition projection "
                "(the diffusers model fails on it too); call without timestep_cond"
            )
        feed = super().feed_from_kwargs(kwargs)  # timestep and ofs one per sample
        ofs = feed.get("ofs")  # the I2V pipeline passes one value for the batch, maybe an integer
        if isinstance(ofs, torch.Tensor) and not ofs.dtype.is_floating_point:
            feed["ofs"] = ofs.to(kwargs["hidden_states"].dtype)
        rope = kwargs.get("image_rotary_emb")
        if rope is not None:
            feed["rotary_cos"], feed["rotary_sin"] = rope
        return feed

    @classmethod
    def kwargs_from_feed(cls, feed):
        names = ("hidden_states", "encoder_hidden_states", "timestep", "ofs")
        kwargs = {k: feed[k] for k in names if k in feed}
        if "rotary_cos" in feed:
            kwargs["image_rotary_emb"] = (feed["rotary_cos"], feed["rotary_sin"])
        return kwargs


def rotary_tables(config, frames: int, height: int, width: int):
    """RoPE tables over the whole latent grid, as the pipelines compute them (fp32)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p, p_t = config["patch_size"], config.get("patch_size_t") or 1
    grid = (height // p, width // p)
    return get_3d_rotary_pos_embed(embed_dim=config["attention_head_dim"], crops_coords=((0, 0), grid),
                                   grid_size=grid, temporal_size=frames // p_t)
