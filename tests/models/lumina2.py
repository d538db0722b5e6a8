import torch
from diffusers import Lumina2Transformer2DModel

FAMILY = "lumina2"
# Latent sizes, multiples of patch_size (2); height and width differ.
AXES = {"batch": (1, 2, 2), "height": (2, 4, 8), "width": (2, 6, 8), "txt_seq": (2, 5, 8)}
POINT = {"batch": 2, "height": 4, "width": 6, "txt_seq": 5}

# Alpha-VLLM/Lumina-Image-2.0's transformer dimensions with 2 of its 26 layers and 1 refiner
# layer of each kind.
REAL_CONFIG = dict(
    sample_size=128, patch_size=2, in_channels=16, hidden_size=2304, num_layers=2, num_refiner_layers=1,
    num_attention_heads=24, num_kv_heads=8, multiple_of=256, norm_eps=1e-5, scaling_factor=1.0,
    axes_dim_rope=(32, 32, 32), axes_lens=(300, 512, 512), cap_feat_dim=2304,
)


def make_model():
    torch.manual_seed(0)
    return Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, norm_eps=1e-5, axes_dim_rope=(4, 2, 2),
        axes_lens=(32, 32, 32), cap_feat_dim=16,
    ).eval()


def timestep(step, num_steps, batch):
    # Lumina2Pipeline passes 1 - sigma: 0 is pure noise.
    return torch.full((batch,), step / num_steps)


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        signal_module=model.layers[0].norm1,  # its output[0] is the signal
        blocks=list(model.layers),
        # The model calls its layers positionally: (hidden, mask, rope, temb)
        hidden_in=lambda args, kwargs: args[0],
        identity=lambda args, kwargs: args[0],  # layers return hidden only
        after_blocks=model.norm_out,  # first positional argument: hidden after all layers
    )


# Pixels: latents are 1/8 of height and width (4 x 6).
HEIGHT, WIDTH, TEXT = 32, 48, 5


def make_pipeline(transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    # No VAE: run_pipeline returns latents, which is all the transformer shapes.
    return Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                           text_encoder=None, tokenizer=None)


def run_pipeline(pipe, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, negative = torch.randn(1, TEXT, 16, generator=g), torch.randn(1, TEXT, 16, generator=g)
    mask = (torch.arange(TEXT)[None, :] < TEXT - 1).long()  # right-padded, as a tokenizer's mask
    negative_mask = (torch.arange(TEXT)[None, :] < 2).long()
    return pipe(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=negative,
                negative_prompt_attention_mask=negative_mask, height=HEIGHT, width=WIDTH,
                num_inference_steps=steps, guidance_scale=4.0, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images


# cond then uncond, two unnamed calls per step: a state each (the second call in a step is
# "default#1" under enable()).
PIPELINE_CONTEXTS = {"default", "default#1"}
PIPELINE_THRESHOLD = 0.2
