"""Wan2.2 TI2V-5B layout, tiny: 48 latent channels in and out (how the variant is recognised),
one timestep per video token, the first latent frame's tokens at 0 as the image-to-video
pipeline passes them; with WanPipeline (expand_timesteps) end to end and
WanImageToVideoPipeline's first-frame path in tests/runtime/test_wan_pipeline.py."""
import torch
from diffusers import WanTransformer3DModel

from models import wan

FAMILY = "wan"  # the variant comes from the config: Wan2.2-TI2V-5B (48 channels)
AXES = wan.AXES
POINT = wan.POINT
CHANNELS = 48
TINY = dict(wan.TINY, in_channels=CHANNELS, out_channels=CHANNELS)
LONG_STEPS = (30,)
# Wan2.2-TI2V-5B's dimensions (width 3072, 24 heads, the z_dim-48 VAE's channels) with 2 of its
# 30 blocks (export-real).
REAL_CONFIG = dict(wan.REAL_CONFIG, num_attention_heads=24, in_channels=CHANNELS, out_channels=CHANNELS,
                   ffn_dim=14336)


def make_model():
    torch.manual_seed(2)
    model = WanTransformer3DModel(**TINY).eval()
    with torch.no_grad():
        # As models/wan.py: a trained time embedding moves a few percent per step.  Half the
        # tokens (the first frame's) keep timestep 0, which halves d: a larger offset than
        # Wan2.1's keeps LightX2V's polynomial (positive above d ~ 0.07) in its working range.
        model.condition_embedder.time_embedder.linear_2.bias.add_(0.6)
    return model


def timestep(step, num_steps, batch, frames=POINT["frames"], height=POINT["height"], width=POINT["width"]):
    """(batch, tokens): the step's timestep on every token but the first latent frame's, which
    keeps 0 (WanImageToVideoPipeline with expand_timesteps: the first frame is the image)."""
    per_frame = (height // 2) * (width // 2)
    t = torch.full((batch, frames * per_frame), 1000.0 * (1.0 - step / num_steps))
    t[:, :per_frame] = 0.0
    return t


reference_hooks = wan.reference_hooks  # signal: the time_embedder's per-token output


# --- WanPipeline with expand_timesteps (TI2V's text-to-video), tiny z_dim-48 VAE -----------------
def make_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=3, z_dim=CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.0] * CHANNELS,
                            latents_std=[1.0] * CHANNELS).eval()


def make_pipeline(transformer):
    from diffusers import WanPipeline

    base = wan.make_pipeline(transformer)
    return WanPipeline(tokenizer=None, text_encoder=None, vae=make_vae(), scheduler=base.scheduler,
                       transformer=transformer, expand_timesteps=True)


run_pipeline = wan.run_pipeline
PIPELINE_CONTEXTS = wan.PIPELINE_CONTEXTS
PIPELINE_THRESHOLD = 0.2


def make_i2v_pipeline(transformer):
    """WanImageToVideoPipeline as TI2V-5B runs it: no image encoder, expand_timesteps (the first
    latent frame is the image's, its tokens' timesteps 0)."""
    from diffusers import WanImageToVideoPipeline

    base = wan.make_pipeline(transformer)
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=make_vae(), scheduler=base.scheduler,
                                   image_processor=None, image_encoder=None, transformer=transformer,
                                   expand_timesteps=True)


def run_i2v_pipeline(pipe, steps, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, wan.TEXT, TINY["text_dim"], generator=g)
    negative = torch.randn(1, wan.TEXT, TINY["text_dim"], generator=g)
    image = torch.rand(1, 3, wan.HEIGHT, wan.WIDTH, generator=g)
    return pipe(image=image, prompt_embeds=emb, negative_prompt_embeds=negative, height=wan.HEIGHT,
                width=wan.WIDTH, num_frames=wan.FRAMES, num_inference_steps=steps, guidance_scale=5.0,
                output_type="pt", generator=torch.Generator().manual_seed(seed), **kwargs).frames
