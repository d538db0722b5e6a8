"""ConsisID layout (CogVideoX-5B-I2V blocks: RoPE and a learned positional table, so sizes are
fixed; face inputs with a perceiver cross-attention after every block), tiny."""
import torch
from diffusers import ConsisIDTransformer3DModel

from models.cogvideox import realistic_temb

FAMILY = "consisid"
# The learned positional table fixes frames / height / width / text to the sample sizes.
AXES = {"batch": (1, 2, 2), "frames": (3, 3, 3), "height": (4, 4, 4), "width": (6, 6, 6), "txt_seq": (5, 5, 5)}
POINT = {"batch": 2, "frames": 3, "height": 4, "width": 6, "txt_seq": 5}
TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=16,
            text_embed_dim=32, num_layers=2, sample_width=6, sample_height=4, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=5, use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=True, is_train_face=True, is_kps=False, cross_attn_interval=1,
            cross_attn_dim_head=8, cross_attn_num_heads=2, LFE_id_dim=4, LFE_vit_dim=8, LFE_depth=2,
            LFE_dim_head=4, LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=2, LFE_output_dim=21,
            LFE_ff_mult=1, LFE_num_scale=2)  # LFE_output_dim: the perceiver takes inner_dim * 2 // 3
# ConsisID-preview's dimensions (CogVideoX-5B-I2V blocks, RoPE and a learned table at 49 x 480 x
# 720, the face extractor at its defaults) with 2 of its 42 blocks (export-real).
REAL_CONFIG = dict(num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16,
                   time_embed_dim=512, text_embed_dim=4096, num_layers=2, sample_width=90, sample_height=60,
                   sample_frames=49, patch_size=2, max_text_seq_length=226, use_rotary_positional_embeddings=True,
                   use_learned_positional_embeddings=True, is_train_face=True, is_kps=False, cross_attn_interval=2)


def make_model():
    # The checkpoint's channel layout: image latents concatenated to the noise (8 in, 4 out).
    torch.manual_seed(0)
    return realistic_temb(ConsisIDTransformer3DModel(**TINY).eval())


def update(latents, output, steps):
    """The sampling loop's step: (B, F, C, H, W) with the latents in the first 4 of 8 channels."""
    return torch.cat([latents[:, :, :4] - output / steps, latents[:, :, 4:]], dim=2)


def timestep(step, num_steps, batch):
    # Scheduler timesteps: int64, 999 down (trailing spacing), as for CogVideoX.
    return torch.full((batch,), 999 - (step * 1000) // num_steps, dtype=torch.long)


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    blocks = list(model.transformer_blocks)
    return dict(
        signal_module=model.time_embedding,
        blocks=blocks,
        # norm_final takes [text, video]: the reference caches both streams, as upstream does
        hidden_in=lambda args, kwargs: torch.cat([kwargs["encoder_hidden_states"], kwargs["hidden_states"]], 1),
        identity=lambda args, kwargs: (kwargs["hidden_states"], kwargs["encoder_hidden_states"]),
        after_blocks=model.norm_final,  # first positional argument: [text, video] after the blocks
        # the face cross-attention, added after blocks, adds nothing on a skipped step
        also_skipped=[(m, lambda args, kwargs: torch.zeros_like(args[1])) for m in model.perceiver_cross_attention],
    )


# --- the real pipeline, tiny components, prompts as embeddings (no tokenizer download) ---
# Pixels: the tiny VAE scales by 8 (and 4 in time), so latents are 3 x 4 x 6, the table's size.
HEIGHT, WIDTH, FRAMES = 32, 48, 9


def make_pipeline(transformer):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, ConsisIDPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    # The scheduler the ConsisID checkpoint ships (as CogVideoX-5B: DPM, v-prediction, trailing).
    scheduler = CogVideoXDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=1.0, timestep_spacing="trailing",
    )
    return ConsisIDPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


def run_pipeline(pipe, steps, seed=0, **kwargs):
    """One generation with CFG on (guidance 6: cond and uncond batched into one call per step)."""
    g = torch.Generator().manual_seed(seed)
    cfg = pipe.transformer.config
    emb = torch.randn(1, TINY["max_text_seq_length"], TINY["text_embed_dim"], generator=g)
    negative = torch.randn(1, TINY["max_text_seq_length"], TINY["text_embed_dim"], generator=g)
    image = torch.rand(1, 3, HEIGHT, WIDTH, generator=g)
    # One face: its ArcFace-style embedding and the ViT feature maps (577 tokens each).
    id_cond = torch.randn(1, cfg.LFE_id_dim, generator=g)
    id_vit_hidden = [torch.randn(1, 577, cfg.LFE_vit_dim, generator=g) for _ in range(cfg.LFE_num_scale)]
    return pipe(image=image, prompt_embeds=emb, negative_prompt_embeds=negative, height=HEIGHT, width=WIDTH,
                num_frames=FRAMES, num_inference_steps=steps, guidance_scale=6.0, output_type="pt",
                id_cond=id_cond, id_vit_hidden=id_vit_hidden, generator=torch.Generator().manual_seed(seed),
                **kwargs).frames


PIPELINE_CONTEXTS = {"default"}  # CFG batched into one call per step, no cache_context
PIPELINE_THRESHOLD = 0.2  # computes steps 0, 3, 6, 7 of 8
