"""teacache-trt's family for the TinyDiT in ``tiny_dit.py`` (docs/custom-families.md walks
through every line).

    teacache-export MODEL_DIR --out ART --family-module examples/custom_family/family.py:TinyDiTFamily

The model comes from the sibling file: the family file's folder is on ``sys.path`` while
teacache-trt imports it, as for a script.
"""
import dataclasses

import torch

from teacache_trt.families import (
    AUTO, Axis, ForcedSteps, Input, ModuleFamily, Part, TimestepScale, Variant, criterion_sums, latent_axes,
)
from tiny_dit import DiTOutput, TinyDiT, TinyDiTConfig, modulate


class Embed(Part):
    """Model inputs -> what the blocks and the head need, plus the signal and its two sums."""

    input_names = ("x", "timestep", "y", "prev_signal")
    output_names = ("hidden", "text", "t", "t_mlp", "signal", "l1_diff", "l1_prev")

    def forward(self, x, timestep, y, prev_signal):
        m = self.model
        hidden = m.x_embedder(x).permute(0, 2, 3, 4, 1)  # (B, T, H', W', D): batch first
        t = m.embed_timestep(timestep)
        t_mlp = m.t_block(t)
        block = m.blocks[0]
        shift, scale = block.modulation(t_mlp)[:2]
        signal = modulate(block.norm1(hidden.flatten(1, 3)), shift, scale)  # block 0's modulated input
        return (hidden, m.y_embedder(y), t, t_mlp, signal, *criterion_sums(signal, prev_signal))


class Blocks(Part):
    """The heavy part: every block, as a residual on the embedded tokens.  ``mask`` is a model
    input: it reaches this graph by its name without passing through the embed graph."""

    input_names = ("hidden", "text", "mask", "t_mlp")
    output_names = ("residual",)

    def forward(self, hidden, text, mask, t_mlp):
        x = hidden.flatten(1, 3)
        for block in self.model.blocks:
            x = block(x, text, mask, t_mlp, hidden.shape[1])
        return x.reshape(hidden.shape) - hidden


class Head(Part):
    """What runs after the cached span on every call; its one output is named ``output``."""

    input_names = ("hidden", "residual", "t")
    output_names = ("output",)

    def forward(self, hidden, residual, t):
        grid = hidden + residual
        return self.model.unpatchify(self.model.final_layer(grid.flatten(1, 3), t), grid.shape[:4])


class TinyDiTFamily(ModuleFamily):
    name = "tiny_dit"
    module_class = TinyDiT
    output_type = DiTOutput  # forward returns DiTOutput(sample=...), or (sample,) with return_dict=False
    inputs = (
        Input("x", ("batch", "in_channels", "frames", "height", "width"), "latents"),
        Input("timestep", ("batch",), "timestep", dtype=torch.float32),
        Input("y", ("batch", "txt_seq", "caption_channels")),
        Input("mask", ("batch", "txt_seq"), "mask"),
    )
    auto_axes = ("frames", "height", "width")  # the patch embedding divides them: torch.export sizes them
    axes = (
        Axis("batch", 1, 2, 2, help="CFG batched: 2 rows per prompt"),
        *latent_axes(frames=(2, 3), height=(4, 8), width=(4, 8), patch=2),
        Axis("txt_seq", 1, 4, 8, help="caption tokens"),
    )
    # Open-Sora 1.2's published TeaCache polynomial (same signal); calibrate your own model with
    # teacache-calibrate before trusting a threshold.
    variants = {"v1": Variant("v1", (217.546007, -118.329252, 26.8662585, -0.0459364272, 0.0484426240),
                              default_threshold=0.1, forced=ForcedSteps(first=1, last=True))}
    signal = "modulate(blocks[0].norm1(x), shift_msa, scale_msa)"
    signal_dims = {0: "batch", 1: AUTO}
    cached = ("x",)
    timestep_scale = TimestepScale("flow", 1000.0, toward_data=True)  # RFLOW: t = 1000 sigma, z += v |dt|
    ignored_kwargs = {"enable_temporal_attention": True}  # the graphs run the temporal attention

    @classmethod
    def build(cls, config):
        return TinyDiT(TinyDiTConfig(**{k: v for k, v in config.items() if not k.startswith("_")}))

    @classmethod
    def config_of(cls, model):
        return json_ready(dataclasses.asdict(model.config))

    @classmethod
    def parts(cls, model, variant=None):
        return {"embed": Embed(model), "blocks": Blocks(model), "head": Head(model)}


def json_ready(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
