"""Wan2.1 (WanTransformer3DModel): one stack of blocks over the video tokens, with text (and,
for image-to-video, CLIP image) tokens entering through cross-attention.

Signal (upstream TeaCache4Wan2.1): the timestep embedding, not a modulated input.
- plain mode: ``temb`` (upstream's ``e``), the ``time_embedder`` output the head modulates
  with; the first and the last step of each branch always compute;
- ``-ret`` variants (upstream's ``use_ret_steps``): ``timestep_proj`` (upstream's ``e0``, the
  six per-block modulation vectors); the first 5 steps of each branch always compute and the
  last one does not.  Upstream counts calls of both branches with one counter (even = cond,
  odd = uncond) and forces ``ret_steps = 5*2`` calls, ``cutoff_steps = 2*steps`` (never); the
  plain mode forces ``1*2`` and cuts off at ``2*steps - 2`` (the last step of each branch).
  Here each ``cache_context`` branch counts its own steps, which gives the same schedule for
  CFG pipelines and a correct one without CFG, where upstream's even/odd split would pair
  consecutive steps of the one branch.
Upstream computes both in an fp32 autocast region; here the signal is the embedding the blocks
receive, which is that fp32 tensor for fp32 exports and its rounding at fp16/bf16.
Cached: the video-token residual through all blocks.  The output norm with its scale/shift
from ``temb``, ``proj_out`` and the unpatchify always run.

Layout between the graphs: the video tokens travel as a (B, F', H', W', D) grid (the patch
embedding's own output grid), so the head unpatchifies from its input's shape and the blocks
flatten it to the model's token order.  The RoPE tables pass as fp32 (the model keeps them in
fp64 buffers; engines have no fp64, and the attention rounds the rotated values to fp32).
"""
from __future__ import annotations

import torch

from ..errors import TeaCacheError
from . import magcache_ratios
from .base import Family, ForcedSteps, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes, text_axis
from .registry import register

IMAGE_TOKENS = 257  # CLIP ViT-H/14 image embeddings the I2V pipeline passes
TEXT_TOKENS_I2V = 512  # the model's attention splits image from text tokens assuming 512 text tokens
SIGNALS = {"temb": "temb = condition_embedder.time_embedder(...) (upstream's e)",
           "timestep_proj": "timestep_proj = condition_embedder.time_proj(silu(temb)) (upstream's e0)"}


class WanEmbed(Part):
    output_names = ("hidden", "encoder_hidden", "timestep_proj", "temb", "rotary_cos", "rotary_sin",
                    "signal", "l1_diff", "l1_prev")

    def __init__(self, model, signal: str, image: bool):
        super().__init__(model)
        self.signal = signal
        self.input_names = ("hidden_states", "timestep", "encoder_hidden_states", "prev_signal") + (
            ("encoder_hidden_states_image",) if image else ())

    def forward(self, hidden_states, timestep, encoder_hidden_states, prev_signal,
                encoder_hidden_states_image=None):
        m = self.model
        rotary_cos, rotary_sin = (t.float() for t in m.rope(hidden_states))
        # (B, D, F', H', W') -> (B, F', H', W', D): the model's flatten(2).transpose(1, 2)
        # token order, kept as a grid so that no graph divides sizes by the patch.
        hidden = m.patch_embedding(hidden_states).permute(0, 2, 3, 4, 1).contiguous()
        temb, timestep_proj, text, image = m.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        if image is not None:
            text = torch.concat([image, text], dim=1)
        signal = temb if self.signal == "temb" else timestep_proj
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return hidden, text, timestep_proj, temb, rotary_cos, rotary_sin, signal, l1_diff, l1_prev


class WanBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "timestep_proj", "rotary_cos", "rotary_sin")
    output_names = ("residual",)
    # The embed graph writes the tables' last dim as an expression of the latent sizes (from how
    # the model's RoPE slices its per-axis tables); it is the rotary width, one number at every
    # size the RoPE covers, so the blocks take it as static.
    dynamic = {"rotary_cos": {1: AUTO}, "rotary_sin": {1: AUTO}}

    def forward(self, hidden, encoder_hidden, timestep_proj, rotary_cos, rotary_sin):
        h = hidden.flatten(1, 3)
        for block in self.model.blocks:
            h = block(h, encoder_hidden, timestep_proj, (rotary_cos, rotary_sin))
        return h.reshape(hidden.shape) - hidden


class WanHead(Part):
    input_names = ("hidden", "residual", "temb")
    output_names = ("output",)

    def forward(self, hidden, residual, temb):
        m = self.model
        grid = hidden + residual
        x = grid.flatten(1, 3)
        # The model's step 5 for a (B, D) temb: shift/scale from its own table.
        shift, scale = (m.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        x = m.proj_out((m.norm_out(x.float()) * (1 + scale) + shift).type_as(x))
        return unpatchify(x, grid.shape[:4], m.config.patch_size, m.config.out_channels or m.config.in_channels)


def unpatchify(tokens, grid, patch, channels: int) -> torch.Tensor:
    """(B, F'·H'·W', p_t·p_h·p_w·C) -> (B, C, F, H, W), the model's forward step 5; ``channels``
    spelled out where the model writes -1, so the output's channel dim stays static."""
    b, f, h, w = grid
    p_t, p_h, p_w = patch
    x = tokens.reshape(b, f, h, w, p_t, p_h, p_w, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _variants():
    # Default thresholds: upstream's README "slow" setting per model and mode (1.5-1.9x on its
    # A800 timings); its "fast" settings (0.08-0.30) roughly double the skipped steps at a
    # visible cost, so they stay an explicit choice.
    plain = ForcedSteps(first=1, last=True)
    ret = ForcedSteps(first=5, last=False)
    table = (
        ("Wan2.1-T2V-1.3B", (2396.76752, -1311.10545, 201.331979, -8.29855975, 0.137887774), 0.05,
         (-52186.2437, 9230.41404, -528.275948, 13.6987616, -0.0499875664), 0.05, magcache_ratios.WAN21_T2V_1_3B),
        ("Wan2.1-T2V-14B", (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404), 0.14,
         (-303318.725, 49053.7029, -2655.30556, 58.7365115, -0.315583525), 0.10, magcache_ratios.WAN21_T2V_14B),
        ("Wan2.1-I2V-14B-480P", (-302.331670, 223.948934, -52.5463970, 5.87348440, -0.201973289), 0.13,
         (257151.496, -35422.9917, 1402.86849, -13.5890334, 0.132517977), 0.20, magcache_ratios.WAN21_I2V_14B_480P),
        ("Wan2.1-I2V-14B-720P", (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683), 0.20,
         (8107.05460, 2133.93892, -372.934672, 16.6203073, -0.0417769401), 0.20, magcache_ratios.WAN21_I2V_14B_720P),
    )
    out = {}
    for name, coeffs, slow, ret_coeffs, ret_slow, mag in table:  # MagCache's ratios: the model's, either mode
        out[name] = Variant(name, coeffs, slow, forced=plain, signal="temb", magcache=mag)
        out[f"{name}-ret"] = Variant(f"{name}-ret", ret_coeffs, ret_slow, forced=ret, signal="timestep_proj",
                                     magcache=mag)
    return out


@register
class Wan(Family):
    name = "wan"
    class_name = "WanTransformer3DModel"
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "frames", "height", "width"), "latents"),
        # fp32 at every precision: the pipelines pass the scheduler's timesteps unconverted (UniPC
        # int64, FlowMatchEuler fp32), and the model embeds them in fp32, which holds every
        # integer up to 1000 exactly.
        Input("timestep", ("batch",), "timestep", dtype=torch.float32),
        Input("encoder_hidden_states", ("batch", "txt_seq", "text_dim")),
        Input("encoder_hidden_states_image", ("batch", IMAGE_TOKENS, "image_dim"), when="image_dim"),
    )
    auto_axes = ("frames", "height", "width")  # as CogVideoX's: the patch embedding's shape guards
    variants = _variants()
    axes = (
        Axis("batch", 1, 1, 2, help="batch size of one call (WanPipeline calls cond and uncond separately)"),
        # 480p (832x480) at opt; 1 frame is an image
        *latent_axes(frames=(21, 21), height=(60, 160), width=(104, 160), patch=2),
        text_axis("UMT5", 512),
    )
    signal = SIGNALS["temb"]
    signal_dims = {0: "batch"}
    cached = ("hidden_states",)
    timestep_scale = TimestepScale("flow", 1000.0)  # the pipelines pass the scheduler's sigma * 1000

    @classmethod
    def check_config(cls, config):
        if config.get("pos_embed_seq_len"):
            raise TeaCacheError(
                f"WanTransformer3DModel config has pos_embed_seq_len={config['pos_embed_seq_len']} (the "
                f"first-last-frame model, whose image embeddings pair two images across the batch): not "
                f"split by this adapter; export a Wan2.1 T2V or I2V model"
            )
        super().check_config(config)

    @classmethod
    def variant_for(cls, config):
        # The checkpoints' widths: 1536 (T2V-1.3B), 5120 (14B).  480P and 720P I2V share one
        # config, and the ret mode is a sampling choice: pass --variant for those.
        if config.get("image_dim"):
            return "Wan2.1-I2V-14B-480P"
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return "Wan2.1-T2V-14B" if width > 3328 else "Wan2.1-T2V-1.3B"

    @classmethod
    def signal_for(cls, variant):
        return SIGNALS[variant.signal or "temb"]

    @classmethod
    def axes_for(cls, config):
        axes = list(cls.axes)
        if cls.variant_for(config) == "Wan2.1-T2V-14B":  # 720p: 1280x720 -> 90 x 160 latents
            axes[2:4] = latent_axes(height=(90, 160), width=(160, 160), patch=2)
        if config.get("image_dim"):
            n = TEXT_TOKENS_I2V
            axes[4] = Axis("txt_seq", n, n, n, help="text tokens: the I2V attention assumes 512 (the pipeline pads to it)",
                           fixed=True)
        return tuple(axes)

    @classmethod
    def parts(cls, model, variant=None):
        signal = (variant.signal if variant is not None else None) or "temb"
        image = bool(model.config.image_dim)
        return {"embed": WanEmbed(model, signal, image), "blocks": WanBlocks(model), "head": WanHead(model)}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        feed = super().feed_from_kwargs(kwargs)
        timestep = feed.get("timestep")
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 2:
            raise TeaCacheError(
                f"timestep has shape {tuple(timestep.shape)}: per-token timesteps (Wan2.2 TI2V, "
                f"expand_timesteps=True) are not exported by this adapter; pass one timestep per sample"
            )
        return feed
