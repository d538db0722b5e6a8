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
from .base import AUTO, Axis, Family, ForcedSteps, Part, TimestepScale, Variant, criterion_sums
from . import magcache_ratios
from .registry import register

VIDEO_DIMS = {0: "batch", 2: AUTO, 3: AUTO, 4: AUTO}  # (B, C, F, H, W), see cogvideox.VIDEO_DIMS
GRID_DIMS = {0: "batch", 1: AUTO, 2: AUTO, 3: AUTO}  # (B, F', H', W', D)
IMAGE_TOKENS = 257  # CLIP ViT-H/14 image embeddings the I2V pipeline passes
TEXT_TOKENS_I2V = 512  # the model's attention splits image from text tokens assuming 512 text tokens
# The bundled moving-digits model: recognised by these config values (no Wan2.1 checkpoint has
# a 64-wide text embedding or 192-wide blocks), exported with its own profile: 5-9 frames of one
# 8x8 latent size, a 3-token prompt.
MOVING_DIGITS = "moving-digits"
MOVING_DIGITS_CONFIG = {"in_channels": 16, "out_channels": 16, "text_dim": 64, "num_attention_heads": 6,
                        "attention_head_dim": 32}
MOVING_DIGITS_COEFFICIENTS = (-16068.242327743998, 6831.527535945241, -981.230472292465, 57.28810710994647, -1.132152494356751)
MOVING_DIGITS_THRESHOLD = 0.05
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

    def __init__(self, model, image: bool):
        super().__init__(model)
        self.dynamic = {
            "hidden": GRID_DIMS,
            # I2V: image + 512 text tokens, a fixed count (the attention splits at 512)
            "encoder_hidden": {0: "batch"} if image else {0: "batch", 1: "txt_seq"},
            "timestep_proj": {0: "batch"},
            "rotary_cos": {1: AUTO},  # video tokens
            "rotary_sin": {1: AUTO},
        }

    def forward(self, hidden, encoder_hidden, timestep_proj, rotary_cos, rotary_sin):
        h = hidden.flatten(1, 3)
        for block in self.model.blocks:
            h = block(h, encoder_hidden, timestep_proj, (rotary_cos, rotary_sin))
        return h.reshape(hidden.shape) - hidden


class WanHead(Part):
    input_names = ("hidden", "residual", "temb")
    output_names = ("output",)
    dynamic = {"hidden": GRID_DIMS, "residual": GRID_DIMS, "temb": {0: "batch"}}

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
    # The bundled video model (teacache_trt.moving_digits), plain mode; its coefficients come from
    # teacache-calibrate on its own generations (the file it ships beside its weights).
    out[MOVING_DIGITS] = Variant(MOVING_DIGITS, MOVING_DIGITS_COEFFICIENTS, MOVING_DIGITS_THRESHOLD,
                                 forced=plain, signal="temb")
    return out


@register
class Wan(Family):
    name = "wan"
    class_name = "WanTransformer3DModel"
    model_inputs = ("hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_image")
    optional_inputs = {"encoder_hidden_states_image": "image_dim"}
    variants = _variants()
    axes = (
        Axis("batch", 1, 1, 2, help="batch size of one call (WanPipeline calls cond and uncond separately)"),
        Axis("frames", 1, 21, 21, help="latent frames: (video frames - 1)/4 + 1; 81 frames -> 21, 1 = an image"),
        Axis("height", 2, 60, 160, multiple_of=2, help="latent height: pixels/8 (480p -> 60, 720p -> 90)"),
        Axis("width", 2, 104, 160, multiple_of=2, help="latent width: pixels/8 (832 -> 104, 1280 -> 160)"),
        Axis("txt_seq", 1, 512, 512, help="text tokens (UMT5, padded to max_sequence_length=512)"),
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
        if all(config.get(k) == v for k, v in MOVING_DIGITS_CONFIG.items()):
            return MOVING_DIGITS
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return "Wan2.1-T2V-14B" if width > 3328 else "Wan2.1-T2V-1.3B"

    @classmethod
    def signal_for(cls, variant):
        return SIGNALS[variant.signal or "temb"]

    @classmethod
    def axes_for(cls, config):
        axes = list(cls.axes)
        if cls.variant_for(config) == MOVING_DIGITS:
            return (Axis("batch", 1, 8, 40, help="clips per call (cond and uncond are separate calls)"),
                    Axis("frames", 5, 9, 9, help="frames (the model was trained on 5 to 9)"),
                    Axis("height", 8, 8, 8, 2, "latent height: the 32-pixel canvas, 4x4 space-to-depth"),
                    Axis("width", 8, 8, 8, 2, "latent width: the 32-pixel canvas, 4x4 space-to-depth"),
                    Axis("txt_seq", 3, 3, 3, help="prompt tokens: digit, direction, speed"))
        if cls.variant_for(config) == "Wan2.1-T2V-14B":  # 720p: 1280x720 -> 90 x 160 latents
            axes[2] = Axis("height", 2, 90, 160, 2, axes[2].help)
            axes[3] = Axis("width", 2, 160, 160, 2, axes[3].help)
        if config.get("image_dim"):
            n = TEXT_TOKENS_I2V
            axes[4] = Axis("txt_seq", n, n, n, help="text tokens: the I2V attention assumes 512 (the pipeline pads to it)")
        return tuple(axes)

    @classmethod
    def parts(cls, model, variant=None):
        signal = (variant.signal if variant is not None else None) or "temb"
        image = bool(model.config.image_dim)
        return {"embed": WanEmbed(model, signal, image), "blocks": WanBlocks(model, image), "head": WanHead(model)}

    @classmethod
    def input_dims(cls, config):
        return {
            "hidden_states": VIDEO_DIMS,
            "timestep": {0: "batch"},
            "encoder_hidden_states": {0: "batch"} if config.get("image_dim") else {0: "batch", 1: "txt_seq"},
            "encoder_hidden_states_image": {0: "batch"},
        }

    @classmethod
    def example_inputs(cls, config, dims, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        b, f, h, w, t = (dims[k] for k in ("batch", "frames", "height", "width", "txt_seq"))
        feed = {
            "hidden_states": torch.randn(b, config["in_channels"], f, h, w, generator=g).to(dtype),
            # fp32 at every precision: the pipelines pass the scheduler's timesteps unconverted,
            # and the model embeds them in fp32.
            "timestep": torch.rand(b, generator=g) * 1000,
            "encoder_hidden_states": torch.randn(b, t, config["text_dim"], generator=g).to(dtype),
        }
        if config.get("image_dim"):
            feed["encoder_hidden_states_image"] = torch.randn(
                b, IMAGE_TOKENS, config["image_dim"], generator=g).to(dtype)
        return feed

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        hidden = kwargs["hidden_states"]
        timestep = torch.as_tensor(kwargs["timestep"], device=hidden.device)
        if timestep.ndim == 2:
            raise TeaCacheError(
                f"timestep has shape {tuple(timestep.shape)}: per-token timesteps (Wan2.2 TI2V, "
                f"expand_timesteps=True) are not exported by this adapter; pass one timestep per sample"
            )
        if timestep.numel() == 1:
            timestep = timestep.reshape(1).expand(hidden.shape[0])
        # UniPC gives int64 timesteps, FlowMatchEuler float32; the graph takes float32, which
        # holds every integer up to 1000 exactly (the model converts to float itself).
        feed = {"hidden_states": hidden, "timestep": timestep.float(),
                "encoder_hidden_states": kwargs["encoder_hidden_states"]}
        if kwargs.get("encoder_hidden_states_image") is not None:
            feed["encoder_hidden_states_image"] = kwargs["encoder_hidden_states_image"]
        return feed
