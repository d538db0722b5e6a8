"""Cosmos-1.0 (CosmosTransformer3DModel): one stack of self-attention, cross-attention and MLP
blocks over the video tokens, each adding a learned positional embedding to its input.

Signal (upstream TeaCache4Cosmos): block 0's modulated self-attention input,
``transformer_blocks[0].norm1(h, embedded_timestep, temb)[0]`` on the blocks' input ``h``
BEFORE the learned positional embedding (Cosmos-1.0 adds it inside every block, so upstream's
blocks' input has none; ``norm1(h + pos)`` would compare other values).
Calls: the Cosmos pipelines call the transformer twice per step, cond then uncond, without
naming them; each call gets its own state (cache contexts "default" and "default#1" under
``enable()``), the first and the last call of each forced.  Upstream forces calls 0 and N of
each branch because Cosmos-1.0's own sampler makes N + 1 calls per branch; the diffusers
pipelines make N, so here calls 0 and N - 1 are forced.
Cached: all video tokens through all blocks; ``norm_out``, ``proj_out`` and the unpatchify
always run.

Inputs the model takes as Python values or at another size become graph inputs here:
- ``padding_mask`` (pixel size) is resized to the latent grid on the host, as the model's
  torchvision nearest resize does (``torch.nn.functional.interpolate``, mode "nearest");
- ``fps`` (a Python number or None) becomes a one-element fp32 tensor that the model's own
  RoPE divides by; None (images) becomes ``base_fps`` (24), which gives the model's
  undivided positions exactly (``k / 24 * 24 == k`` in fp32 for every position it covers).
``condition_mask`` is an input where the config has one more input than output channel
(Video2World).  ControlNet residuals (Cosmos Transfer), per-frame timesteps (Predict2
Video2World), tuple contexts and image-context configs (Predict2.5) are refused.
"""
from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace
from typing import ClassVar

import torch

from ..errors import TeaCacheError
from .base import AxisLimit, Family, Part, TimestepScale, Variant, criterion_sums
from .inputs import AUTO, Axis, Input, latent_axes, text_axis
from .registry import register

BASE_FPS = 24  # CosmosRotaryPosEmbed's base_fps: a constructor default the config does not carry


def video2world(config) -> bool:
    """Video2World: one more input channel (the condition mask) than output channels."""
    return config["in_channels"] == config["out_channels"] + 1


def nearest_resize(mask: torch.Tensor, size) -> torch.Tensor:
    """torchvision's ``resize(mask, size, InterpolationMode.NEAREST)`` of a float tensor."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return torch.nn.functional.interpolate(mask, size=list(size), mode="nearest")


def allow_model_forward() -> None:
    """Let the diffusers model's forward run without torchvision.

    diffusers imports torchvision in transformer_cosmos only for the padding mask's nearest
    resize; without torchvision every Cosmos config (``concat_padding_mask``) fails in its
    forward.  The export verifies the graphs against that forward, so where torchvision is
    missing the module gets a stand-in doing the same resize (torchvision's own tensor path
    is the same interpolate).  Nothing changes where torchvision is installed.
    """
    from diffusers.models.transformers import transformer_cosmos

    if hasattr(transformer_cosmos, "transforms"):
        return
    transformer_cosmos.transforms = SimpleNamespace(
        functional=SimpleNamespace(resize=lambda img, size, interpolation=None: nearest_resize(img, size)),
        InterpolationMode=SimpleNamespace(NEAREST="nearest"),
    )


@contextlib.contextmanager
def plain_head_counts():
    """Within: ``torch.onnx.is_in_onnx_export()`` answers False.

    Cosmos' attention processors turn the head sizes into tensors while an ONNX export runs
    (for the TorchScript exporter) and repeat keys and values by their quotient; torch.export
    then traces a repeat of data-dependent size (and prints the graph while retrying).  With
    the plain ints the model uses otherwise, the repeat (1 for every Cosmos config) is static.
    """
    original = torch.onnx.is_in_onnx_export
    torch.onnx.is_in_onnx_export = lambda: False
    try:
        yield
    finally:
        torch.onnx.is_in_onnx_export = original


class CosmosEmbed(Part):
    def __init__(self, model, condition: bool):
        super().__init__(model)
        self.padding, self.condition = bool(model.config.concat_padding_mask), condition
        masks = (["padding_mask"] if self.padding else []) + (["condition_mask"] if condition else [])
        self.input_names = ("hidden_states", "timestep", "encoder_hidden_states", "fps", "prev_signal", *masks)
        self.learnable = model.config.extra_pos_embed_type == "learnable"
        self.output_names = tuple(
            ["hidden", "encoder_hidden", "temb", "embedded_timestep", "rotary_cos", "rotary_sin"]
            + (["extra_pos"] if self.learnable else []) + ["signal", "l1_diff", "l1_prev"])

    def forward(self, hidden_states, timestep, encoder_hidden_states, fps, prev_signal, mask_1=None, mask_2=None):
        m = self.model
        # The config's masks, in input_names order (torch.export takes no *args).
        masks = [mask for mask in (mask_1, mask_2) if mask is not None]
        padding_mask = masks.pop(0) if self.padding else None
        condition_mask = masks.pop(0) if self.condition else None
        b, _, frames, _, _ = hidden_states.shape
        latents = hidden_states
        if condition_mask is not None:
            latents = torch.cat([latents, condition_mask], dim=1)
        if padding_mask is not None:  # already at the latent size (feed_from_kwargs)
            latents = torch.cat([latents, padding_mask.unsqueeze(2).expand(b, -1, frames, -1, -1)], dim=1)
        # The model's RoPE with fps as a tensor (its own division, so the same values).
        cos, sin = m.rope(latents, fps=fps)
        hidden = m.patch_embed(latents).flatten(1, 3)
        temb, embedded_timestep = m.time_embed(hidden, timestep)
        # The text passes through, so that the runtime checks and places it with the inputs.
        outs = [hidden, encoder_hidden_states, temb, embedded_timestep, cos, sin]
        if self.learnable:
            # The same table for every sample: computed for one and broadcast in the blocks.
            height, width = hidden_states.shape[3:]
            outs.append(learned_positions(m, frames, height, width).type_as(hidden))
        # Block 0's modulated input on the blocks' input, before the positional embedding.
        signal = m.transformer_blocks[0].norm1(hidden, embedded_timestep, temb)[0]
        l1_diff, l1_prev = criterion_sums(signal, prev_signal)
        return (*outs, signal, l1_diff, l1_prev)


class CosmosBlocks(Part):
    output_names = ("residual",)

    def __init__(self, model):
        super().__init__(model)
        self.learnable = model.config.extra_pos_embed_type == "learnable"
        self.input_names = ("hidden", "encoder_hidden", "temb", "embedded_timestep", "rotary_cos",
                            "rotary_sin") + (("extra_pos",) if self.learnable else ())

    def forward(self, hidden, encoder_hidden, temb, embedded_timestep, rotary_cos, rotary_sin, extra_pos=None):
        h = hidden
        with plain_head_counts():
            for block in self.model.transformer_blocks:
                # Positional, as the model calls them (no attention mask, no ControlNet residual).
                h = block(h, encoder_hidden, embedded_timestep, temb, (rotary_cos, rotary_sin), extra_pos, None)
        return h - hidden


class CosmosHead(Part):
    # hidden_states (the model's latent input) only lends its frames/height/width to the unpatchify.
    input_names = ("hidden_states", "hidden", "residual", "temb", "embedded_timestep")
    output_names = ("output",)

    def forward(self, hidden_states, hidden, residual, temb, embedded_timestep):
        m = self.model
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = m.config.patch_size
        out = m.proj_out(m.norm_out(hidden + residual, embedded_timestep, temb))
        # The model's step 8: its (not inverse-of-patching) order, channels spelled out.
        out = out.unflatten(2, (p_h, p_w, p_t, m.config.out_channels))
        out = out.unflatten(1, (frames // p_t, height // p_h, width // p_w))
        out = out.permute(0, 7, 1, 6, 2, 4, 3, 5)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)


@register
class Cosmos(Family):
    name = "cosmos"
    class_name = "CosmosTransformer3DModel"
    inputs = (
        # Video2World's condition mask is a channel of its own input, not of the latents.
        Input("hidden_states", ("batch", "latent_channels", "frames", "height", "width"), "latents"),
        # EDM: 0.25 * ln(sigma), sigma in [0.002, 80]; the pipelines cast it to the model's dtype
        Input("timestep", ("batch",), "timestep", span=(-1.55, 1.05)),
        Input("encoder_hidden_states", ("batch", "txt_seq", "text_embed_dim")),
        # The pipelines' fps=30: always fp32, as the model computes its RoPE
        Input("fps", (1,), "constant", value=30.0, dtype=torch.float32),
        # what the pipelines pass (resized to the latents)
        Input("padding_mask", (1, 1, "height", "width"), "constant", when="concat_padding_mask"),
        Input("condition_mask", ("batch", 1, "frames", "height", "width"), "table",
              make=lambda config, sizes: first_frame_mask(sizes), when=video2world),
    )
    auto_axes = ("frames", "height", "width")  # as CogVideoX's: the patch embedding's shape guards
    # block_controlnet_hidden_states is taken only to be refused with its own message.
    forward_kwargs = (*(i.name for i in inputs), "block_controlnet_hidden_states")
    variants: ClassVar = {
        "Cosmos-1.0": Variant(
            "Cosmos-1.0",
            (2.71156237e2, -9.19775607e1, 2.24437250, 2.08355751, 1.41776330e-1),
            # Upstream's README: 0.3 -> 1.4x, 0.4 -> 2.0x (its sample scripts default to 0.3):
            # the lowest published setting, as for the other families.
            default_threshold=0.3,
        ),
    }
    # Cosmos-1.0 Text2World/Video2World: 121 frames at 704x1280 -> 16 x 88 x 160 latents
    # (8x temporal and spatial compression); either orientation; T5 prompts of 512 tokens.
    axes = (
        Axis("batch", 1, 1, 2, help="batch size of one call (the pipelines call cond and uncond separately)"),
        *latent_axes(frames=(16, 16), height=(88, 160), width=(160, 160), patch=2, temporal=8),
        text_axis("T5", 512),
    )
    signal = ("transformer_blocks[0].norm1(patch_embed(x), embedded_timestep, temb)[0], before the "
              "learned positional embedding")
    signal_dims = {0: "batch", 1: AUTO}
    signal_block_count = "num_layers"
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4Cosmos (Cosmos-1.0)"
    # The pipelines pass EDM's 0.25 * ln(sigma) (about -1.55 .. 1.1 for sigma 0.002 .. 80); the
    # tools' sampler moves a flow timestep 1 -> 0 through the same range.
    timestep_scale = TimestepScale("flow", 1.0)
    note = ("All video tokens' residual through all blocks is cached. Two unnamed calls per step "
            "(cond, uncond) get a state each; calls 0 and N-1 of each are forced (upstream forces "
            "0 and N of Cosmos-1.0's own sampler, which calls each branch N+1 times).")

    @classmethod
    def check_config(cls, config):
        unsupported = {
            "controlnet_block_every_n": "ControlNet residuals (Cosmos Transfer)",
            "img_context_dim_in": "an image context (Cosmos Predict2.5)",
            "use_crossattn_projection": "a projected text context (Cosmos Predict2.5)",
        }
        for key, what in unsupported.items():
            if config.get(key):
                raise TeaCacheError(
                    f"CosmosTransformer3DModel config has {key}={config[key]!r} ({what}): not split by this "
                    f"adapter; export a Cosmos-1.0 (or Predict2 Text2Image) transformer"
                )
        if tuple(config.get("patch_size") or (1, 2, 2))[0] != 1:
            raise TeaCacheError(
                f"CosmosTransformer3DModel config has patch_size={config['patch_size']}: only temporal patch 1 "
                f"(every Cosmos checkpoint) is exported"
            )
        super().check_config(config)

    @classmethod
    def axes_for(cls, config):
        # The learned positional table and the RoPE positions cover max_size latents.
        limits = dict(zip(("frames", "height", "width"), config.get("max_size") or (128, 240, 240)))
        p_h = tuple(config.get("patch_size") or (1, 2, 2))[1]
        out = []
        for a in cls.axes:
            if a.name in limits:
                hi = limits[a.name] - limits[a.name] % a.multiple_of
                step = p_h if a.multiple_of > 1 else 1
                a = Axis(a.name, max(a.min, step), min(a.opt, hi), min(a.max, hi), step,
                         f"{a.help}; at most {limits[a.name]} (max_size)")
            out.append(a)
        return tuple(out)

    @classmethod
    def axis_limits(cls, config):
        sizes = tuple(config.get("max_size") or (128, 240, 240))
        return {axis: AxisLimit(n, "max_size", list(sizes), "the learned positional table and the RoPE positions "
                                                              "cover max_size latents")
                for axis, n in zip(("frames", "height", "width"), sizes)}

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": CosmosEmbed(model, video2world(model.config)), "blocks": CosmosBlocks(model),
                "head": CosmosHead(model)}

    @classmethod
    def call_model(cls, model, kwargs):
        allow_model_forward()
        return super().call_model(model, kwargs)

    @classmethod
    def load_model(cls, model_dir, precision):
        allow_model_forward()
        return super().load_model(model_dir, precision)

    @classmethod
    def config_sizes(cls, config):
        condition = 1 if video2world(config) else 0
        return {**super().config_sizes(config), "latent_channels": config["in_channels"] - condition}

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        if kwargs.get("block_controlnet_hidden_states") is not None:
            raise TeaCacheError(
                "block_controlnet_hidden_states given: ControlNet residuals (Cosmos Transfer) change every "
                "block's output and are not inputs of the exported graphs"
            )
        if isinstance(kwargs.get("encoder_hidden_states"), (tuple, list)):
            raise TeaCacheError(
                "encoder_hidden_states is a tuple (text, image context: Cosmos Predict2.5): not exported; "
                "pass the text embeddings as one tensor"
            )
        feed = super().feed_from_kwargs(kwargs)  # the timestep one per sample
        timestep = feed.get("timestep")
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 5:
            raise TeaCacheError(
                f"timestep has shape {tuple(timestep.shape)}: per-frame timesteps (Cosmos Predict2 Video2World) "
                f"are not exported by this adapter; pass one timestep per sample"
            )
        hidden = kwargs["hidden_states"]
        feed["fps"] = fps_tensor(kwargs.get("fps"), hidden.device)
        mask = feed.get("padding_mask")
        if mask is not None:
            if mask.ndim != 4 or mask.shape[0] != 1:
                raise TeaCacheError(
                    f"padding_mask has shape {tuple(mask.shape)}: the model repeats it over the batch and takes "
                    f"one (1, 1, height, width) mask, as the Cosmos pipelines pass it"
                )
            feed["padding_mask"] = nearest_resize(mask, hidden.shape[-2:])
        return feed

    @classmethod
    def kwargs_from_feed(cls, feed):
        return {**feed, "fps": float(feed["fps"])}


def learned_positions(model, frames: int, height: int, width: int) -> torch.Tensor:
    """CosmosLearnablePositionalEmbed's output for one sample, (1, tokens, D), in fp32.

    The module normalises by ``norm * sqrt(norm.numel() / emb.numel())`` through numpy, which
    cannot take the exporter's symbolic sizes; that ratio is always ``1 / D``, so here it is a
    constant, rounded as the module rounds it (both divisions are exact-then-rounded, so the
    same float).  The tables, sums and norm are the module's.
    """
    pe = model.learnable_pos_embed
    p_t, p_h, p_w = pe.patch_size
    t, h, w = frames // p_t, height // p_h, width // p_w
    emb = (pe.pos_emb_t[:t][:, None, None, :] + pe.pos_emb_h[:h][None, :, None, :]
           + pe.pos_emb_w[:w][None, None, :, :]).flatten(0, 2)[None]
    norm = torch.linalg.vector_norm(emb, dim=-1, keepdim=True, dtype=torch.float32)
    norm = torch.add(pe.eps, norm, alpha=math.sqrt(1 / emb.shape[-1]))
    return emb / norm


def first_frame_mask(sizes) -> torch.Tensor:
    """Video2World's condition mask as its pipeline passes it for one conditioning frame: 1 on
    the first latent frame, 0 on the others."""
    frames = (torch.arange(sizes["frames"]) < 1).float()
    return frames[None, None, :, None, None].expand(sizes["batch"], 1, -1, sizes["height"], sizes["width"]).contiguous()


def fps_tensor(fps, device=None) -> torch.Tensor:
    """``fps`` as the graph takes it: one fp32 value; None (images) as base_fps."""
    if isinstance(fps, torch.Tensor):
        return fps.to(device=device, dtype=torch.float32).reshape(1)
    return torch.tensor([float(BASE_FPS if fps is None else fps)], device=device)
