import torch
from diffusers import HunyuanVideo15Transformer3DModel

FAMILY = "hunyuan_video15"
# Latent sizes (1x1 patches, as the checkpoints); text lengths of the Qwen and ByT5 streams.
AXES = {"batch": (1, 2, 2), "frames": (1, 2, 3), "height": (1, 2, 4), "width": (1, 3, 4), "txt_seq": (2, 6, 8),
        "txt_seq_2": (2, 3, 5)}
POINT = {"batch": 2, "frames": 2, "height": 2, "width": 3, "txt_seq": 6, "txt_seq_2": 3}
LONG_STEPS = (30,)  # further parity loops (tests/runtime/test_parity.py)

# Two refiner layers (as the checkpoints): padding text rows that attend nothing in the first
# would spread NaN through the second in an exported softmax.
TINY = dict(
    in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, num_refiner_layers=2,
    mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=12, image_embed_dim=10,
    rope_axes_dim=(4, 6, 6), target_size=640, task_type="t2v",
)


def make_model():
    torch.manual_seed(0)
    return HunyuanVideo15Transformer3DModel(**TINY).eval()


def timestep(step, num_steps, batch):
    # The pipeline passes the scheduler's sigma * 1000, in the latents' dtype.
    return torch.full((batch,), (1.0 - step / num_steps) * 1000)


def update(latents, output, steps):
    """The loop's update of the noisy latents only: the model's input also carries the
    condition latents and their mask (zeros for T2V), which the pipeline keeps."""
    channels = output.shape[1]
    return torch.cat([latents[:, :channels] - output / steps, latents[:, channels:]], dim=1)


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        signal_module=model.transformer_blocks[0].norm1,  # its output[0] is the signal
        blocks=list(model.transformer_blocks),
        # Blocks are called positionally: (hidden, text, temb, mask, rope) -> (hidden, text)
        hidden_in=lambda args, kwargs: args[0],
        identity=lambda args, kwargs: (args[0], args[1]),
        after_blocks=model.norm_out,  # first positional argument: the video tokens after all blocks
    )


# Pixels: 5 frames at 32x48 -> 2 latent frames of 2x3 (the tiny VAE compresses 4x in time,
# 16x in space, as the checkpoints' does).
HEIGHT, WIDTH, FRAMES, TEXT, TEXT_2 = 32, 48, 5, 6, 3


def make_pipeline(transformer):
    from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15Pipeline)

    torch.manual_seed(0)
    # The pipeline reads the VAE's latent channels and compression; output_type="latent" never runs it.
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(32, 32, 32, 32, 32), layers_per_block=1)
    return HunyuanVideo15Pipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=None,
                                  tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=6.0))


def prompts(seed):
    """Prompt embeddings and masks of both guider branches (they differ in their padding)."""
    g = torch.Generator().manual_seed(seed)

    def prompt(valid, valid_2):
        return (torch.randn(1, TEXT, 16, generator=g), (torch.arange(TEXT)[None, :] < valid).long(),
                torch.randn(1, TEXT_2, 12, generator=g), (torch.arange(TEXT_2)[None, :] < valid_2).long())

    (e, m, e2, m2), (ne, nm, ne2, nm2) = prompt(4, 2), prompt(2, 1)
    return dict(prompt_embeds=e, prompt_embeds_mask=m, prompt_embeds_2=e2, prompt_embeds_mask_2=m2,
                negative_prompt_embeds=ne, negative_prompt_embeds_mask=nm, negative_prompt_embeds_2=ne2,
                negative_prompt_embeds_mask_2=nm2)


def run_pipeline(pipe, steps, seed=0):
    return pipe(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(seed), **prompts(seed)).frames


def make_i2v_pipeline(transformer):
    """HunyuanVideo15ImageToVideoPipeline: a tiny SigLIP (27x27 patches: the 729 image tokens
    the transformer takes) and the tiny VAE, which encodes the first frame here."""
    from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15ImageToVideoPipeline)
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=TINY["image_embed_dim"], intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        image_size=27, patch_size=1)).eval()
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(32, 32, 32, 32, 32), layers_per_block=1)
    pipe = HunyuanVideo15ImageToVideoPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None, tokenizer_2=None,
        guider=ClassifierFreeGuidance(guidance_scale=6.0), image_encoder=encoder,
        feature_extractor=SiglipImageProcessorPil(size={"height": 27, "width": 27}))
    pipe.target_size = WIDTH  # the size follows the image: 32x48 pixels here (2x3 latents)
    return pipe


def run_i2v_pipeline(pipe, steps, seed=0):
    import numpy as np
    from PIL import Image

    pixels = np.random.RandomState(seed).randint(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return pipe(image=Image.fromarray(pixels), num_frames=FRAMES, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(seed), **prompts(seed)).frames


PIPELINE_CONTEXTS = {"pred_cond", "pred_uncond"}  # the guider's batches, named by the pipeline
PIPELINE_THRESHOLD = 0.15


# HunyuanVideo-1.5 480p T2V's transformer config (the class defaults) with 2 of its 54 blocks.
REAL_CONFIG = dict(
    in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=2,
    num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, text_embed_dim=3584,
    text_embed_2_dim=1472, image_embed_dim=1152, rope_axes_dim=(16, 56, 56), target_size=640, task_type="t2v",
)
