import torch
from diffusers import HunyuanVideoTransformer3DModel

FAMILY = "hunyuan_video"
# Latent pixels (height, width) are multiples of patch_size=2; 1-3 latent frames.  Height and
# width differ at the export point and in the loop, so a swapped unpatchify axis cannot pass.
AXES = {"batch": (1, 2, 2), "frames": (1, 2, 3), "height": (2, 4, 8), "width": (2, 6, 8),
        "txt_seq": (2, 5, 8)}
POINT = {"batch": 2, "frames": 2, "height": 4, "width": 6, "txt_seq": 5}


def make_model():
    torch.manual_seed(0)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0,
        patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
    ).eval()


def timestep(step, num_steps, batch):
    # HunyuanVideo pipelines pass the scheduler's timesteps (0..1000) unscaled.
    return torch.full((batch,), 1000.0 * (1.0 - step / num_steps))


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        signal_module=model.transformer_blocks[0].norm1,  # its output[0] is the signal
        blocks=[*model.transformer_blocks, *model.single_transformer_blocks],
        # the model calls its blocks positionally: (hidden, encoder, temb, mask, rope, ...)
        hidden_in=lambda args, kwargs: args[0],
        # a skipped block hands its inputs through unchanged (blocks return (hidden, encoder))
        identity=lambda args, kwargs: (args[0], args[1]),
        after_blocks=model.norm_out,  # first positional argument: hidden after all blocks
    )


# --- the real pipeline, tiny components, prompts as embeddings (no tokenizer download) ---
# Pixels: the tiny VAE scales by 8 and 4 (frames), so latents are 2 x 4 x 6 (inside AXES).
HEIGHT, WIDTH, FRAMES, TEXT = 32, 48, 5, 5


def make_pipeline(transformer):
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4,
    ).eval()
    # HunyuanVideo's scheduler: flow matching, shift 7 (the checkpoints' setting).
    return HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                tokenizer_2=None)


def run_pipeline(pipe, steps, seed=0, **kwargs):
    """One generation with embedded guidance (one call per step, in cache_context("cond"))."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, TEXT, 16, generator=g)
    pooled = torch.randn(1, 8, generator=g)
    mask = torch.ones(1, TEXT)
    mask[:, -1] = 0  # a padded last token, as the LLaMA template crop leaves them
    return pipe(prompt_embeds=emb, pooled_prompt_embeds=pooled, prompt_attention_mask=mask, height=HEIGHT,
                width=WIDTH, num_frames=FRAMES, num_inference_steps=steps, guidance_scale=6.0,
                output_type="pt", generator=torch.Generator().manual_seed(seed), **kwargs).frames


PIPELINE_CONTEXTS = {"cond"}  # embedded guidance: one call per step, named "cond" by the pipeline
PIPELINE_THRESHOLD = 0.3  # computes steps 0, 5, 7 of 8

# HunyuanVideo's transformer config with 1 double + 1 single block and 1 token-refiner layer.
REAL_CONFIG = dict(
    in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128,
    num_layers=1, num_single_layers=1, num_refiner_layers=1, mlp_ratio=4.0, patch_size=2,
    patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096,
    pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56),
)
