import torch
from diffusers import MochiTransformer3DModel

FAMILY = "mochi"
# Latent sizes; height/width are multiples of patch_size (2) and differ, so a swapped
# unpatchify axis cannot pass.
AXES = {"batch": (1, 2, 2), "frames": (1, 2, 3), "height": (2, 4, 6), "width": (2, 6, 8),
        "txt_seq": (2, 5, 8)}
POINT = {"batch": 2, "frames": 2, "height": 4, "width": 6, "txt_seq": 5}


# genmo/mochi-1-preview's transformer dimensions with 2 of its 48 blocks (the last block is
# context_pre_only, so both kinds are exported).
REAL_CONFIG = dict(
    patch_size=2, num_attention_heads=24, attention_head_dim=128, num_layers=2,
    pooled_projection_dim=1536, in_channels=12, text_embed_dim=4096, time_embed_dim=256,
    activation_fn="swiglu", max_sequence_length=256,
)

OUTPUT_GAIN = 1.5


def make_model():
    torch.manual_seed(0)
    model = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=16,
        max_sequence_length=8,
    ).eval()
    with torch.no_grad():
        model.pos_frequencies.normal_()  # zeros at init: RoPE would be the identity
        # Larger outputs move the loop's latents ~10% per step, where the Mochi polynomial
        # peaks (~0.1 per step): thresholds 0.05 / 0.2 / 0.6 / 2.0 then compute every step /
        # every third / once in between / only the forced steps.
        model.proj_out.weight.mul_(OUTPUT_GAIN)
    return model


def timestep(step, num_steps, batch):
    # MochiPipeline passes (1 - sigma) * 1000 in the latents' dtype: 0 is pure noise.
    return torch.full((batch,), 1000.0 * step / num_steps)


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        signal_module=model.transformer_blocks[0].norm1,  # its output[0] is the signal
        blocks=list(model.transformer_blocks),
        hidden_in=lambda args, kwargs: kwargs["hidden_states"],
        identity=lambda args, kwargs: (kwargs["hidden_states"], kwargs["encoder_hidden_states"]),
        after_blocks=model.proj_out,  # the residual covers norm_out (upstream TeaCache4Mochi)
    )


# Pixels: the pipeline's latents are 1/8 of height and width and (frames - 1)/6 + 1 frames.
HEIGHT, WIDTH, FRAMES, TEXT = 32, 48, 7, 5


def make_pipeline(transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline

    # The scheduler Mochi ships (inverted sigmas: the model reads (1 - sigma) * 1000).  No VAE:
    # run_pipeline returns latents, which is all the transformer shapes.
    return MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True), vae=None,
                         text_encoder=None, tokenizer=None, transformer=transformer)


def run_pipeline(pipe, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, TEXT, 16, generator=g)
    mask = torch.arange(TEXT)[None, :] < TEXT - 2  # right-padded prompt
    # An empty negative prompt, as MochiPipeline encodes it (zeros, all-zero mask).
    negative, negative_mask = torch.zeros(1, TEXT, 16), torch.zeros(1, TEXT, dtype=torch.bool)
    return pipe(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=negative,
                negative_prompt_attention_mask=negative_mask, height=HEIGHT, width=WIDTH,
                num_frames=FRAMES, num_inference_steps=steps, guidance_scale=4.5, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).frames


PIPELINE_CONTEXTS = {"cond_uncond"}  # CFG batched into one call per step, named by the pipeline
PIPELINE_THRESHOLD = 0.2
