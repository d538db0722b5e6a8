import torch
from diffusers import LuminaNextDiT2DModel

FAMILY = "lumina_next"
# Latent sizes, multiples of patch_size (2); height and width differ.
AXES = {"batch": (1, 2, 2), "height": (2, 4, 8), "width": (2, 6, 8), "txt_seq": (2, 5, 8)}
POINT = {"batch": 2, "height": 4, "width": 6, "txt_seq": 5}

# Alpha-VLLM/Lumina-Next-SFT's transformer dimensions with 2 of its 24 layers.
REAL_CONFIG = dict(
    sample_size=128, patch_size=2, in_channels=4, hidden_size=2304, num_layers=2, num_attention_heads=32,
    num_kv_heads=8, multiple_of=256, ffn_dim_multiplier=None, norm_eps=1e-5, learn_sigma=True, qk_norm=True,
    cross_attention_dim=2048, scaling_factor=1.0,
)


def make_model():
    torch.manual_seed(0)
    model = LuminaNextDiT2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_attention_heads=2,
        num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5, learn_sigma=True,
        qk_norm=True, cross_attention_dim=16, scaling_factor=1.0,
    ).eval()
    with torch.no_grad():
        # Zeros at init make every layer the identity (tanh gates); the pad token is unset.
        for layer in model.layers:
            layer.gate.normal_()
        model.pad_token.zero_()
    return model


def timestep(step, num_steps, batch):
    # LuminaPipeline passes 1 - sigma: 0 is pure noise.
    return torch.full((batch,), step / num_steps)


def update(latents, output, steps):
    # learn_sigma: the output stacks the prediction and the variance on channels (the
    # pipeline keeps the first half).
    return latents - output.chunk(2, dim=1)[0] / steps


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        signal_module=model.layers[0].norm1,  # its output[0] is the signal
        blocks=list(model.layers),
        # The model calls its layers positionally: (hidden, mask, rope, encoder, encoder_mask, temb=)
        hidden_in=lambda args, kwargs: args[0],
        identity=lambda args, kwargs: args[0],  # layers return hidden only
        after_blocks=model.norm_out,  # first positional argument: hidden after all layers
    )


# Pixels: latents are 1/8 of height and width (4 x 6).
HEIGHT, WIDTH, TEXT = 32, 48, 5


def make_pipeline(transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, LuminaPipeline

    # No VAE: run_pipeline returns latents, which is all the transformer shapes.
    return LuminaPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                          text_encoder=None, tokenizer=None)


def run_pipeline(pipe, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, negative = torch.randn(1, TEXT, 16, generator=g), torch.randn(1, TEXT, 16, generator=g)
    mask = (torch.arange(TEXT)[None, :] < TEXT - 1).long()  # right-padded, as a tokenizer's mask
    negative_mask = (torch.arange(TEXT)[None, :] < 2).long()
    # The pipeline's defaults: proportional attention on, the RoPE table rebuilt per step.
    return pipe(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=negative,
                negative_prompt_attention_mask=negative_mask, height=HEIGHT, width=WIDTH,
                num_inference_steps=steps, guidance_scale=4.0, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images


PIPELINE_CONTEXTS = {"default"}  # CFG batched into one unnamed call per step
PIPELINE_THRESHOLD = 0.2
