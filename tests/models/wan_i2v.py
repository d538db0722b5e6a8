"""Wan2.1 image-to-video layout (CLIP image tokens, added K/V projections), tiny, exported as
the ret-steps variant: signal timestep_proj (upstream's e0), the first 5 steps of each branch
forced, the last not; with WanImageToVideoPipeline (a tiny CLIP vision encoder) end to end."""
import torch
from diffusers import WanTransformer3DModel

from models import wan

FAMILY = "wan"
VARIANT = "Wan2.1-I2V-14B-480P-ret"
FORCED_FIRST, FORCED_LAST = 5, False  # upstream: ret_steps = 5*2 calls, cutoff_steps = 2*steps
# The I2V attention splits image from text tokens assuming 512 text tokens: txt_seq is fixed.
AXES = {"batch": (1, 1, 2), "frames": (1, 2, 2), "height": (2, 4, 4), "width": (2, 4, 6),
        "txt_seq": (512, 512, 512)}
POINT = {"batch": 1, "frames": 2, "height": 4, "width": 6, "txt_seq": 512}
timestep = wan.timestep
IMAGE_DIM = 8  # the CLIP vision width
# Wan2.1-I2V-14B-480P/720P's dimensions with 1 of its 40 blocks (export-real).
REAL_CONFIG = dict(wan.REAL_CONFIG_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)


def update(latents, output, steps):
    """The sampling loop's step: the latents are the first 4 of the 12 input channels."""
    return torch.cat([latents[:, :4] - output / steps, latents[:, 4:]], dim=1)


def make_model():
    torch.manual_seed(1)
    # The checkpoints' layout with a 4-channel VAE: latents, the 4-frame mask and the image's
    # latents in (12 channels), latents out (4); CLIP image tokens through added K/V projections.
    model = WanTransformer3DModel(**{**wan.TINY, "num_layers": 1, "in_channels": 12}, image_dim=IMAGE_DIM,
                                  added_kv_proj_dim=24).eval()
    with torch.no_grad():
        # As models/wan.py, on the projection that gives e0: 1.5-2% per step (poly 0.11-0.2), so
        # thresholds 0.05 / 0.2 / 0.6 compute every unforced step / every second / none.
        model.condition_embedder.time_embedder.linear_2.bias.add_(5.0)
        model.condition_embedder.time_proj.bias.add_(3.0)
    return model


def reference_hooks(model):
    return {**wan.reference_hooks(model), "signal_module": model.condition_embedder.time_proj}


# --- WanImageToVideoPipeline: wan's tiny VAE and scheduler, a tiny CLIP vision encoder ---
def make_pipeline(transformer):
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    base = wan.make_pipeline(transformer)
    torch.manual_seed(0)
    # 224-pixel images in 14-pixel patches: the 257 tokens of the checkpoints' ViT-H/14.
    encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=IMAGE_DIM, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        image_size=224, patch_size=14, projection_dim=8)).eval()
    processor = CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=base.vae, scheduler=base.scheduler,
                                   image_processor=processor, image_encoder=encoder, transformer=transformer)


def run_pipeline(pipe, steps, seed=0, **kwargs):
    """One generation from an image, CFG on; prompts padded to 512 tokens as the pipeline pads."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 512, wan.TINY["text_dim"], generator=g)
    negative = torch.randn(1, 512, wan.TINY["text_dim"], generator=g)
    image = torch.rand(1, 3, wan.HEIGHT, wan.WIDTH, generator=g)
    return pipe(image=image, prompt_embeds=emb, negative_prompt_embeds=negative, height=wan.HEIGHT,
                width=wan.WIDTH, num_frames=wan.FRAMES, num_inference_steps=steps, guidance_scale=5.0,
                output_type="pt", generator=torch.Generator().manual_seed(seed), **kwargs).frames


PIPELINE_CONTEXTS = wan.PIPELINE_CONTEXTS
PIPELINE_THRESHOLD = 0.2  # computes steps 0-4 (forced) and 6 of 8 in each branch
