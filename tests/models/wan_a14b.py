"""Wan2.2 A14B, tiny: two experts of the Wan2.1 text-to-video layout, the high-noise one (this
module's model, exported as ``Wan2.2-T2V-A14B-high``) and the low-noise one (``make_low_model``),
in a WanPipeline with ``transformer_2`` and ``boundary_ratio`` (tests/runtime/test_wan_a14b.py
runs it through ``enable(pipe, ART_high, transformer_2=ART_low)``).  The image-to-video pair:
WanImageToVideoPipeline with the experts' 36-channel layout (latents, mask and image latents in,
no CLIP image tokens), ``make_i2v_models``."""
import torch
from diffusers import WanTransformer3DModel

from models import wan

FAMILY = "wan"
VARIANT = "Wan2.2-T2V-A14B-high"
AXES = wan.AXES
POINT = wan.POINT
timestep = wan.timestep
reference_hooks = wan.reference_hooks
TINY = dict(wan.TINY, num_layers=1)
# An expert's dimensions: T2V-A14B's are Wan2.1-T2V-14B's (export-real covers them: wan.REAL_CONFIG_14B);
# I2V-A14B's take 36 channels in (latents, mask, image latents) and no CLIP image tokens.
REAL_CONFIG_I2V = dict(wan.REAL_CONFIG_14B, in_channels=36, out_channels=16)
BOUNDARY = {"T2V": 0.875, "I2V": 0.9}  # the A14B checkpoints' boundary_ratio
# The scheduler's shift: 12 (T2V-A14B's sample_shift) gives 26 high-noise steps of 40 at boundary
# 0.875, where MagCache measured its list; 5 (I2V-A14B's) gives 15 of 40 at 0.9.
SHIFT = {"T2V": 12.0, "I2V": 5.0}


def _expert(seed, offset, **config):
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**TINY, **config}).eval()
    with torch.no_grad():
        model.condition_embedder.time_embedder.linear_2.bias.add_(offset)  # as models/wan.py
    return model


def make_model():
    return _expert(3, 1.5)


def make_low_model():
    """The low-noise expert: other weights, another time embedding (its signal moves differently)."""
    return _expert(4, 0.5)


def make_i2v_models():
    """(high, low) experts of the I2V-A14B layout with the tiny 4-channel VAE: latents, the 4-frame
    mask and the image's latents in (12 channels), latents out (4); no image_dim."""
    return _expert(5, 1.5, in_channels=12, out_channels=4), _expert(6, 0.5, in_channels=12, out_channels=4)


def _scheduler(task):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT[task],
                                   num_train_timesteps=1000)


def make_experts_pipeline(high, low):
    from diffusers import WanPipeline

    vae = wan.make_pipeline(high).vae
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=_scheduler("T2V"), transformer=high,
                       transformer_2=low, boundary_ratio=BOUNDARY["T2V"])


def make_i2v_experts_pipeline(high, low):
    from diffusers import WanImageToVideoPipeline

    vae = wan.make_pipeline(high).vae
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=_scheduler("I2V"),
                                   image_processor=None, image_encoder=None, transformer=high, transformer_2=low,
                                   boundary_ratio=BOUNDARY["I2V"])


def run_pipeline(pipe, steps, seed=0, **kwargs):
    """One generation, CFG on; guidance_scale_2 differs from guidance_scale (the low-noise
    expert's own guidance, as the A14B pipelines allow)."""
    return wan.run_pipeline(pipe, steps, seed, guidance_scale_2=3.0, **kwargs)


def run_i2v_pipeline(pipe, steps, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, wan.TEXT, TINY["text_dim"], generator=g)
    negative = torch.randn(1, wan.TEXT, TINY["text_dim"], generator=g)
    image = torch.rand(1, 3, wan.HEIGHT, wan.WIDTH, generator=g)
    return pipe(image=image, prompt_embeds=emb, negative_prompt_embeds=negative, height=wan.HEIGHT,
                width=wan.WIDTH, num_frames=wan.FRAMES, num_inference_steps=steps, guidance_scale=5.0,
                guidance_scale_2=3.0, output_type="pt", generator=torch.Generator().manual_seed(seed),
                **kwargs).frames
