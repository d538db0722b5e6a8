"""FLUX.2-klein layout (no guidance embedding): Flux2KleinPipeline of an undistilled (base)
model, with CFG as the "cond" and "uncond" cache contexts."""
import torch

from models.flux2 import (  # noqa: F401  (the shared parts of the protocol)
    ACCUMULATE, AXES, EPS, FORCED_FIRST, FORCED_LAST, HEIGHT, LONG_STEPS, POINT, WIDTH, make_model as _make_model,
    reference_hooks, timestep, tiny_vae,
)

FAMILY = "flux2"

# black-forest-labs/FLUX.2-klein-4B's transformer config (width 3072, 24 heads, Qwen3-4B's
# three 2560-wide hidden layers) with 1 double and 1 single block of its 5 + 20.
REAL_CONFIG = dict(
    patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False,
)


def make_model():
    return _make_model(guidance_embeds=False)


def make_pipeline(transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), text_encoder=None,
                              tokenizer=None, transformer=transformer, is_distilled=False)


def run_pipeline(pipe, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Prompts of different lengths: each context gets its own step plan.
    emb, negative = torch.randn(1, 8, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    return pipe(prompt_embeds=emb, negative_prompt_embeds=negative, height=HEIGHT, width=WIDTH,
                num_inference_steps=steps, guidance_scale=4.0, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images


PIPELINE_CONTEXTS = {"cond", "uncond"}  # CFG (klein base): two named calls per step
PIPELINE_THRESHOLD = 0.2
