import torch
from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                       CogVideoXTransformer3DModel)

FAMILY = "cogvideox"
# Latent sizes; height/width are multiples of patch_size (2).
AXES = {"batch": (1, 2, 4), "frames": (1, 2, 3), "height": (4, 4, 8), "width": (4, 6, 8),
        "txt_seq": (2, 5, 8)}
POINT = {"batch": 2, "frames": 3, "height": 4, "width": 6, "txt_seq": 5}

# CogVideoX 1.5 I2V layout: patch_size_t, ofs embedding, image latents concatenated on channels.
AXES_15 = {"batch": (1, 2, 2), "frames": (2, 4, 4), "height": (4, 4, 6), "width": (4, 6, 6),
           "txt_seq": (3, 5, 5)}
# CogVideoX-2b layout: sin-cos positional table, so sample size and text length are fixed.
AXES_2B = {"batch": (1, 2, 2), "frames": (3, 3, 3), "height": (4, 4, 4), "width": (6, 6, 6),
           "txt_seq": (5, 5, 5)}

TINY = dict(num_attention_heads=2, attention_head_dim=16, time_embed_dim=16, text_embed_dim=32,
            num_layers=2, patch_size=2, temporal_compression_ratio=4)


def make_model():
    """CogVideoX-5b layout (RoPE, no positional table), tiny."""
    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel(
        **TINY, in_channels=4, out_channels=4, use_rotary_positional_embeddings=True,
        sample_height=8, sample_width=8, sample_frames=9, max_text_seq_length=8,
    ).eval()
    return realistic_temb(model)


def realistic_temb(model):
    """Move the signal into the range the coefficients were fitted on.

    The signal is the timestep embedding alone.  A trained CogVideoX's moves ~10% between
    steps 100 apart; a random one's moves ~50%, where the 5b polynomial is far below zero and
    every unforced step would skip at any threshold.  An offset on the embedding's output
    bias gives ~10% (poly ~0.1 per step), so over 10 steps thresholds 0.05 / 0.2 / 0.6 / 2.0
    compute every step / every third / two of eight / none but the forced ones.
    """
    with torch.no_grad():
        model.time_embedding.linear_2.bias.add_(1.0)
    return model


def make_model_15():
    """CogVideoX1.5-5B-I2V layout, tiny."""
    torch.manual_seed(1)
    model = CogVideoXTransformer3DModel(
        **{**TINY, "num_layers": 1}, in_channels=8, out_channels=4, patch_size_t=2, ofs_embed_dim=16,
        patch_bias=False, use_rotary_positional_embeddings=True, sample_height=6, sample_width=6,
        sample_frames=13, max_text_seq_length=5,
    ).eval()
    return realistic_temb(model)


def make_model_2b():
    """CogVideoX-2b layout (sin-cos table at sample 3x4x6 latents, 5 text tokens), tiny."""
    torch.manual_seed(2)
    return CogVideoXTransformer3DModel(
        **{**TINY, "num_layers": 1}, in_channels=4, out_channels=4, sample_height=4, sample_width=6,
        sample_frames=9, max_text_seq_length=5,
    ).eval()


def timestep(step, num_steps, batch):
    # Scheduler timesteps: int64, 999 down (trailing spacing).
    return torch.full((batch,), 999 - (step * 1000) // num_steps, dtype=torch.long)


class _TembOfFirstBlock:
    """Stands in for a signal module: hands hooks the ``temb`` block 0 is called with.

    With an ofs embedding the signal is ``time_embedding(...) + ofs_embedding(...)``, a sum no
    module returns; the reference registers and removes this like a module's forward hook.
    """

    def __init__(self, block):
        self.block = block

    def register_forward_hook(self, hook):
        def pre_hook(mod, args, kwargs):
            hook(mod, args, kwargs["temb"])

        return self.block.register_forward_pre_hook(pre_hook, with_kwargs=True)


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    blocks = list(model.transformer_blocks)
    return dict(
        signal_module=model.time_embedding if model.ofs_embedding is None else _TembOfFirstBlock(blocks[0]),
        blocks=blocks,
        hidden_in=lambda args, kwargs: kwargs["hidden_states"],
        # CogVideoX blocks are called with keywords and return (hidden, encoder_hidden).
        identity=lambda args, kwargs: (kwargs["hidden_states"], kwargs["encoder_hidden_states"]),
        after_blocks=model.norm_final,  # video tokens only, after all blocks
    )


# Pixels: the tiny VAE scales by 8, so latents are 4 x 6 (2 x 3 patches); 5 frames -> 2 latent.
HEIGHT, WIDTH, FRAMES, TEXT = 32, 48, 5, 6


def make_pipeline(transformer, pipeline=CogVideoXPipeline):
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    # The scheduler the CogVideoX checkpoints ship (v-prediction, trailing int64 timesteps).
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=3.0, timestep_spacing="trailing",
    )
    # Prompt embeddings are given, so no T5 encoder or tokenizer is needed.
    return pipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


def run_pipeline(pipe, steps, seed=0, height=HEIGHT, width=WIDTH, frames=FRAMES, text=TEXT, **kwargs):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, text, 32, generator=g)
    negative = torch.randn(1, text, 32, generator=g)
    return pipe(prompt_embeds=emb, negative_prompt_embeds=negative, height=height, width=width,
                num_frames=frames, num_inference_steps=steps, guidance_scale=6.0, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kwargs).frames


PIPELINE_CONTEXTS = {"cond_uncond"}  # CFG batched into one call per step, named by the pipeline
PIPELINE_THRESHOLD = 0.3


# CogVideoX-5b's transformer config with 1 block.
REAL_CONFIG = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16,
    flip_sin_to_cos=True, freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=1,
    attention_bias=True, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    temporal_compression_ratio=4, max_text_seq_length=226, activation_fn="gelu-approximate",
    timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5,
    spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0,
    use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
)
# CogVideoX-2b: 30 heads, a sin-cos positional table instead of RoPE, so its export is fixed at
# the table's 13 x 60 x 90 latents and 226 text tokens (17,776 tokens), and verified there.
REAL_CONFIG_2B = dict(REAL_CONFIG, num_attention_heads=30, use_rotary_positional_embeddings=False)
# CogVideoX1.5-5B (text to video): temporal patches, no patch bias, 300x300 sample grid.
REAL_CONFIG_15 = dict(REAL_CONFIG, patch_size_t=2, patch_bias=False, sample_height=300,
                      sample_width=300, sample_frames=81)
