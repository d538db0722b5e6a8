"""Wan2.1 and Wan2.2 (WanTransformer3DModel): one stack of blocks over the video tokens, with
text (and, for Wan2.1 image-to-video, CLIP image) tokens entering through cross-attention.

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
fp64 buffers; engines have no fp64, and the attention rounds the rotated values to fp32).  The
tables hold ``rope_max_seq_len`` positions per axis: no latent axis may have more patches
(``axis_limits``).

Wan2.2 TI2V-5B (in/out channels 48, the z_dim-48 VAE; LightX2V's TeaCache): the pipelines pass
one timestep per video token (``expand_timesteps``: ``timestep`` (B, tokens), the first latent
frame's tokens at 0 for image-to-video), so ``temb`` is (B, tokens, D) and the blocks' and the
head's modulation is per token.  Signal: that per-token ``temb``, d the mean over all of it
(the constant first-frame rows dilute it, as in LightX2V); the first and the last step of each
branch forced.  Memory is what the layout is about: ``timestep_proj`` per token is 6·D values
per token (27,280 tokens at 704x1280, 121 frames: 2.0 GB fp32 per sample), so it never crosses
a graph boundary: the embed passes ``temb`` (hidden-sized) and the blocks graph projects it,
as the model does.  The state a branch keeps between calls is not ``temb`` (0.34 GB fp32 per
sample, twice per branch) but the time embedder's input, the per-token sinusoidal features
(``freq_dim`` = 256 per token, in the embedder's dtype: 12x smaller); each call embeds the
previous features again with the same weights, which gives the previous ``temb`` bit for bit,
and takes the sums over ``temb``.  The sums are scaled by ``freq_dim / D`` so that the runtime's
means over the stored elements are the means over ``temb``'s (d's ``eps`` term stays exact).

Wan2.2 A14B: two experts of the Wan2.1-14B layout (a high-noise one for the steps with ``t >=
boundary_ratio * 1000``, a low-noise one for the rest), each exported to its own artifact and
enabled with ``enable(pipe, ART_high, transformer_2=ART_low)``.  No TeaCache coefficients were
ever published for either expert: their variants start from Wan2.1-14B's polynomial, marked a
stand-in, and the user passes fitted ones (``--coefficients``) or calibrates each expert
(``teacache-calibrate --pipeline``).  MagCache's published Wan2.2 ratios come per expert: the
part of MagCache's 40-step list each expert runs.
"""
from __future__ import annotations

import torch

from ..errors import TeaCacheError
from . import magcache_ratios
from .base import AxisLimit, Family, ForcedSteps, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes, text_axis
from .registry import register

GRID_DIMS = {0: "batch", 1: AUTO, 2: AUTO, 3: AUTO}  # (B, F', H', W', D)
TOKEN_DIMS = {0: "batch", 1: AUTO}  # (B, tokens, ...): per-token temb, signal
TI2V_CHANNELS = 48  # Wan2.2's z_dim-48 VAE: the TI2V-5B layout, whose pipelines pass per-token timesteps
IMAGE_TOKENS = 257  # CLIP ViT-H/14 image embeddings the I2V pipeline passes
TEXT_TOKENS_I2V = 512  # the model's attention splits image from text tokens assuming 512 text tokens
# The bundled moving-digits model: recognised by these config values (no Wan2.1 checkpoint has
# a 64-wide text embedding or 192-wide blocks), exported with its own profile: 5-9 frames of one
# 8x8 latent size, a 3-token prompt.  It reads 17 channels (16 latent + a box track) and
# predicts 16, as the I2V models read their condition channels beside the latents.
MOVING_DIGITS = "moving-digits"
MOVING_DIGITS_CONFIG = {"in_channels": 17, "out_channels": 16, "text_dim": 64, "num_attention_heads": 6,
                        "attention_head_dim": 32}
MOVING_DIGITS_COEFFICIENTS = (-3811.2037630008, 601.4512990772251, 46.74575175753189,
                              -7.396871125492131, 0.19955877925895746)
MOVING_DIGITS_THRESHOLD = 0.05
SIGNALS = {"temb": "temb = condition_embedder.time_embedder(...) (upstream's e)",
           "timestep_proj": "timestep_proj = condition_embedder.time_proj(silu(temb)) (upstream's e0)",
           "temb_tokens": "per-token temb = condition_embedder.time_embedder(...) over (batch, tokens) timesteps, "
                          "d the mean over all of it (LightX2V's embed); stored as the embedder's per-token input"}


def per_token(config) -> bool:
    """TI2V-5B's layout: latents of the z_dim-48 VAE in and out, one timestep per token."""
    return config.get("in_channels") == TI2V_CHANNELS and (config.get("out_channels") or TI2V_CHANNELS) == TI2V_CHANNELS


def token_count(config, frames: int, height: int, width: int) -> int:
    p_t, p_h, p_w = config.get("patch_size") or (1, 2, 2)
    return (frames // p_t) * (height // p_h) * (width // p_w)


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


# --- Wan2.2 TI2V-5B: one timestep per video token ------------------------------------------------
def time_features(model, timestep):
    """(B, T) timesteps -> (B, T, freq_dim) sinusoidal features in the time embedder's dtype:
    what the model's condition embedder feeds its ``time_embedder`` for a 2-D timestep."""
    embedder = model.condition_embedder
    features = embedder.timesteps_proj(timestep.flatten()).unflatten(0, timestep.shape)
    return features.to(next(iter(embedder.time_embedder.parameters())).dtype)


def token_temb(model, features, dtype):
    """Per-token temb (B, T, D) from the features, as the model's condition embedder gives it."""
    return model.condition_embedder.time_embedder(features).to(dtype)


class WanTokenEmbed(Part):
    input_names = ("hidden_states", "timestep", "encoder_hidden_states", "prev_signal")
    output_names = ("hidden", "encoder_hidden", "temb", "rotary_cos", "rotary_sin", "signal", "l1_diff", "l1_prev")

    def forward(self, hidden_states, timestep, encoder_hidden_states, prev_signal):
        m = self.model
        rotary_cos, rotary_sin = (t.float() for t in m.rope(hidden_states))
        hidden = m.patch_embedding(hidden_states).permute(0, 2, 3, 4, 1).contiguous()
        text = m.condition_embedder.text_embedder(encoder_hidden_states)
        features = time_features(m, timestep)
        temb = token_temb(m, features, text.dtype)
        if prev_signal.ndim == 0:  # the exporter's eager probe for the signal's shape
            l1_diff, l1_prev = criterion_sums(temb, prev_signal)
        else:
            # Sums over temb's elements, scaled so that the runtime's means over the stored
            # features' elements (freq_dim per token) are the means over temb's (D per token).
            l1_diff, l1_prev = criterion_sums(temb, token_temb(m, prev_signal, text.dtype))
            scale = features.shape[-1] / temb.shape[-1]
            l1_diff, l1_prev = l1_diff * scale, l1_prev * scale
        return hidden, text, temb, rotary_cos, rotary_sin, features, l1_diff, l1_prev


class WanTokenBlocks(Part):
    input_names = ("hidden", "encoder_hidden", "temb", "rotary_cos", "rotary_sin")
    output_names = ("residual",)
    dynamic = {"hidden": GRID_DIMS, "encoder_hidden": {0: "batch", 1: "txt_seq"}, "temb": TOKEN_DIMS,
               "rotary_cos": {1: AUTO}, "rotary_sin": {1: AUTO}}

    def forward(self, hidden, encoder_hidden, temb, rotary_cos, rotary_sin):
        embedder = self.model.condition_embedder
        # (B, T, 6, D): the per-token modulation the model's blocks take for a 2-D timestep,
        # made here so that it lives only while the blocks run.
        timestep_proj = embedder.time_proj(embedder.act_fn(temb)).unflatten(2, (6, -1))
        h = hidden.flatten(1, 3)
        for block in self.model.blocks:
            h = block(h, encoder_hidden, timestep_proj, (rotary_cos, rotary_sin))
        return h.reshape(hidden.shape) - hidden


class WanTokenHead(Part):
    input_names = ("hidden", "residual", "temb")
    output_names = ("output",)
    dynamic = {"hidden": GRID_DIMS, "residual": GRID_DIMS, "temb": TOKEN_DIMS}

    def forward(self, hidden, residual, temb):
        m = self.model
        grid = hidden + residual
        x = grid.flatten(1, 3)
        # The model's step 5 for a (B, T, D) temb: a shift and a scale per token.
        shift, scale = (m.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        x = m.proj_out((m.norm_out(x.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(x))
        return unpatchify(x, grid.shape[:4], m.config.patch_size, m.config.out_channels or m.config.in_channels)


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
    # LightX2V's wan_ti2v_tea_720p.json: its plain-mode set (there is no ret mode for TI2V),
    # threshold 0.26 (50 steps, 121 frames at 704x1280, shift 5, CFG 5); first and last step.
    out["Wan2.2-TI2V-5B"] = Variant(
        "Wan2.2-TI2V-5B", (1.57472669e5, -1.15702395e5, 3.10761669e4, -3.83116651e3, 2.21608777e2, -4.81179567),
        0.26, forced=plain, signal="temb_tokens", magcache=magcache_ratios.WAN22_TI2V_5B,
        source="LightX2V configs/caching/teacache/wan_ti2v_tea_720p.json (degree 5)")
    # A14B experts: Wan2.1's rule per expert (signal temb, each expert's first and last step of
    # each branch forced), MagCache's ratios per expert.  No TeaCache coefficients were ever fitted
    # for an expert: Wan2.1-14B's of the same task stand in until the user passes or calibrates one.
    for task, borrowed in (("T2V", "Wan2.1-T2V-14B"), ("I2V", "Wan2.1-I2V-14B-480P")):
        for expert, noise in (("high", "HIGH"), ("low", "LOW")):
            name = f"Wan2.2-{task}-A14B-{expert}"
            out[name] = Variant(
                name, out[borrowed].coefficients, out[borrowed].default_threshold, forced=plain, signal="temb",
                magcache=getattr(magcache_ratios, f"WAN22_{task}_A14B_{noise}"), stand_in=True,
                source=f"none published for this expert: {borrowed}'s as a stand-in (pass --coefficients or "
                       f"calibrate it: teacache-calibrate --pipeline)")
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
    # Wan2.2 TI2V-5B (48 latent channels): one timestep per video token (patch 1 x 2 x 2), in
    # place of the per-sample one above (input_dims, example_inputs and feed_from_kwargs swap it in)
    token_timestep = Input("timestep", ("batch", "frames*(height//2)*(width//2)"), "timestep", dtype=torch.float32)
    auto_axes = ("frames", "height", "width")  # as CogVideoX's: the patch embedding's shape guards
    variants = _variants()
    axes = (
        Axis("batch", 1, 1, 2, help="batch size of one call (WanPipeline calls cond and uncond separately)"),
        # 480p (832x480) at opt; 1 frame is an image
        *latent_axes(frames=(21, 21), height=(60, 160), width=(104, 160), patch=2),
        text_axis("UMT5", 512),
    )
    signal = SIGNALS["temb"]
    # (B, D) temb or (B, 6, D) timestep_proj: the batch; per-token features (B, T, freq_dim):
    # the tokens too (AUTO leaves a dim the graph fixes static)
    signal_dims = {0: "batch", 1: AUTO}
    cached = ("hidden_states",)
    timestep_scale = TimestepScale("flow", 1000.0)  # the pipelines pass the scheduler's sigma * 1000
    coefficients_source = "upstream TeaCache4Wan2.1 (plain and ret modes)"

    @classmethod
    def check_config(cls, config):
        if config.get("pos_embed_seq_len"):
            raise TeaCacheError(
                f"WanTransformer3DModel config has pos_embed_seq_len={config['pos_embed_seq_len']} (the "
                f"first-last-frame model, whose image embeddings pair two images across the batch): not "
                f"split by this adapter; export a Wan2.1 or Wan2.2 T2V, I2V or TI2V model"
            )
        if per_token(config) and config.get("image_dim"):
            raise TeaCacheError(
                f"WanTransformer3DModel config has in/out channels {TI2V_CHANNELS} (Wan2.2 TI2V-5B, per-token "
                f"timesteps) and image_dim={config['image_dim']} (CLIP image tokens): no checkpoint has both; "
                f"check config.json")
        super().check_config(config)

    @classmethod
    def variant_for(cls, config):
        # The checkpoints' widths: 1536 (T2V-1.3B), 5120 (14B; Wan2.2's A14B experts share it:
        # pass --variant Wan2.2-T2V-A14B-high and so on).  480P and 720P I2V share one config,
        # and the ret mode is a sampling choice: pass --variant for those.  TI2V-5B (width 3072)
        # by its 48 latent channels: its width would read as a 1.3B model.
        if per_token(config):
            return "Wan2.2-TI2V-5B"
        if config.get("image_dim"):
            return "Wan2.1-I2V-14B-480P"
        if all(config.get(k) == v for k, v in MOVING_DIGITS_CONFIG.items()):
            return MOVING_DIGITS
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return "Wan2.1-T2V-14B" if width > 3328 else "Wan2.1-T2V-1.3B"

    @classmethod
    def expert_variant(cls, config, expert):
        # Two-expert Wan pipelines are Wan2.2 A14B's: text-to-video with the latents' channels in
        # and out, image-to-video with more in (latents, mask, image latents), no CLIP tokens.
        if per_token(config) or config.get("image_dim"):
            return None
        task = "T2V" if config.get("in_channels") == (config.get("out_channels") or config.get("in_channels")) else "I2V"
        return f"Wan2.2-{task}-A14B-{'high' if expert == 'transformer' else 'low'}"

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
        if per_token(config):
            # TI2V-5B: the z_dim-48 VAE compresses 16x in space, 4x in time; 121 frames at
            # 1280x704 (its public setting) -> 31 x 44 x 80 latents, 27,280 tokens.  Portrait
            # 704x1280: --axis height=2:80:80 --axis width=2:44:44.
            axes[1:4] = latent_axes(frames=(31, 31), height=(44, 44), width=(80, 80), patch=2, spatial=16)
        elif cls.variant_for(config) == "Wan2.1-T2V-14B":  # 720p: 1280x720 -> 90 x 160 latents
            axes[2:4] = latent_axes(height=(90, 160), width=(160, 160), patch=2)
        if config.get("image_dim"):
            n = TEXT_TOKENS_I2V
            axes[4] = Axis("txt_seq", n, n, n, help="text tokens: the I2V attention assumes 512 (the pipeline pads to it)",
                           fixed=True)
        return tuple(axes)

    @classmethod
    def job_axes(cls, config, size):
        # The pipelines' VAEs: Wan2.1's (16 channels) and A14B's compress 8x in space, Wan2.2
        # TI2V's (48 channels) 16x; both 4x in time, the first frame alone (81 frames -> 21).
        scale = 16 if per_token(config) else 8
        out = {k: size[k] // scale for k in ("height", "width") if k in size}
        if "frames" in size:
            out["frames"] = (size["frames"] - 1) // 4 + 1
        return out

    @classmethod
    def axis_limits(cls, config):
        # The RoPE tables hold rope_max_seq_len positions per axis and are sliced by the patch
        # count along it: more patches than positions cannot be embedded.
        n = config.get("rope_max_seq_len") or 1024
        patch = config.get("patch_size") or (1, 2, 2)
        return {axis: AxisLimit(n * p, "rope_max_seq_len", n,
                                f"the RoPE table holds {n} positions per axis, {p} latent {unit} per patch")
                for axis, p, unit in zip(("frames", "height", "width"), patch, ("frames", "rows", "columns"))}

    @classmethod
    def parts(cls, model, variant=None):
        signal = (variant.signal if variant is not None else None) or "temb"
        if per_token(model.config):
            if signal != "temb_tokens" and signal != "temb":
                raise TeaCacheError(
                    f"variant {variant.name}: its signal {signal} per token would be {6}x the per-token temb "
                    f"(TI2V-5B's timesteps are per token); export with --variant Wan2.2-TI2V-5B (or a plain "
                    f"variant, signal temb)")
            return {"embed": WanTokenEmbed(model), "blocks": WanTokenBlocks(model), "head": WanTokenHead(model)}
        if signal == "temb_tokens":
            raise TeaCacheError(
                f"variant {variant.name} is for Wan2.2 TI2V-5B, whose latents have {TI2V_CHANNELS} channels (per-token "
                f"timesteps); this model has in_channels={model.config.in_channels}: choose a Wan2.1 / A14B variant")
        image = bool(model.config.image_dim)
        return {"embed": WanEmbed(model, signal, image), "blocks": WanBlocks(model), "head": WanHead(model)}

    # TI2V-5B configs (48 latent channels) take ``token_timestep`` in place of ``inputs``'
    # per-sample timestep: the dims and examples below swap it in.
    @classmethod
    def input_dims(cls, config):
        dims = super().input_dims(config)
        if per_token(config):
            axes = {a.name: a for a in cls.axes_for(config)}
            dims["timestep"] = cls.token_timestep.dynamic_dims(axes, cls.auto_axes)
        return dims

    @classmethod
    def example_inputs(cls, config, dims, dtype, seed=0):
        feed = super().example_inputs(config, dims, dtype, seed)
        if per_token(config):  # any values: the image-to-video pipeline's first-frame zeros are one case
            sizes = {**cls.config_sizes(config), **dims}
            feed["timestep"] = cls.token_timestep.example(sizes, config, dtype, torch.Generator().manual_seed(seed + 1),
                                                          cls.timestep_scale)
        return feed

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        # One timestep per sample (B,), or for TI2V-5B (48 latent channels) one per token
        # (B, tokens): its graphs take the latter, so a per-sample timestep is given to every
        # token (the model's result is the same); the (1, 2, 2) patch, as its pipelines assume.
        feed = super().feed_from_kwargs(kwargs)
        hidden, timestep = feed.get("hidden_states"), feed.get("timestep")
        if not isinstance(hidden, torch.Tensor) or not isinstance(timestep, torch.Tensor):
            return feed
        tokens = hidden.shape[1] == TI2V_CHANNELS
        if tokens and timestep.ndim == 1:
            f, h, w = hidden.shape[2:]
            timestep = timestep[:, None].expand(-1, f * (h // 2) * (w // 2))
        elif not tokens and timestep.ndim == 2:
            raise TeaCacheError(
                f"timestep has shape {tuple(timestep.shape)}: per-token timesteps (expand_timesteps=True) belong to "
                f"Wan2.2 TI2V-5B, whose latents have {TI2V_CHANNELS} channels; these have {hidden.shape[1]}: pass "
                f"one timestep per sample (expand_timesteps=False)")
        feed["timestep"] = timestep.float()
        return feed
