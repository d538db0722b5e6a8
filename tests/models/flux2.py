"""FLUX.2-dev layout (guidance embedding): Flux2Pipeline, one unnamed call per step, with a
reference image whose tokens the pipeline appends to the latents."""
import torch
from diffusers import Flux2Transformer2DModel

FAMILY = "flux2"
# Image tokens: 16 for the 64x64 target, 16 more for the 64x64 reference image.
AXES = {"batch": (1, 2, 4), "img_seq": (4, 16, 64), "txt_seq": (2, 8, 16)}
POINT = {"batch": 2, "img_seq": 16, "txt_seq": 8}

# vLLM-Omni's rule: only the first call of each state forced, |poly(d)| accumulated, eps 1e-8.
FORCED_FIRST, FORCED_LAST = 1, False
ACCUMULATE, EPS = "abs", 1e-8
LONG_STEPS = (30,)  # further parity loops (tests/runtime/test_parity.py)

# black-forest-labs/FLUX.2-dev's transformer config (width 6144, 48 heads, Mistral-3's
# 15360-wide prompt embeddings) with 1 double and 1 single block of its 8 + 48 (2.2 B
# parameters: the shared modulation layers alone are 0.6 B).
REAL_CONFIG = dict(
    patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=128,
    num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=True,
)


def make_model(guidance_embeds=True):
    torch.manual_seed(0)
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=32, mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4), rope_theta=2000, guidance_embeds=guidance_embeds,
    ).eval()


def timestep(step, num_steps, batch):
    # The FLUX.2 pipelines pass sigma (t / 1000); the model scales by 1000 itself.
    return torch.full((batch,), 1.0 - step / num_steps)


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        signal_module=_ModulatedImageInput(model.transformer_blocks[0]),
        blocks=[*model.transformer_blocks, *model.single_transformer_blocks],
        hidden_in=lambda args, kwargs: kwargs["hidden_states"],
        identity=_identity,
        after_blocks=model.norm_out,  # first positional argument: image tokens after all blocks
    )


def _identity(args, kwargs):
    """A skipped block hands its inputs through: double blocks return (text, image), single
    blocks the joint sequence they were given."""
    if kwargs.get("encoder_hidden_states") is None:
        return kwargs["hidden_states"]
    return kwargs["encoder_hidden_states"], kwargs["hidden_states"]


class _ModulatedImageInput:
    """Stands in for a signal module: hands hooks ``norm1(x) * (1 + scale_msa) + shift_msa`` with
    (shift_msa, scale_msa) the first two of the six chunks of the image modulation block 0 is
    called with, recomputed from the block's inputs (as vLLM-Omni's extractor computes it)."""

    def __init__(self, block):
        self.block = block

    def register_forward_hook(self, hook):
        def pre_hook(mod, args, kwargs):
            x, mod_img = kwargs["hidden_states"], kwargs["temb_mod_img"]
            shift, scale = mod_img[:, None, : 2 * x.shape[-1]].chunk(2, dim=-1)
            hook(mod, args, mod.norm1(x) * (1 + scale) + shift)

        return self.block.register_forward_pre_hook(pre_hook, with_kwargs=True)


# Pixels: 64x64 (the pipelines' smallest reference image) -> 8x8 latents (the VAE scales by 8) ->
# 4x4 tokens after the 2x2 patching, for the target and for the reference image.
HEIGHT = WIDTH = 64


def tiny_vae():
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(0)
    return AutoencoderKLFlux2(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4, norm_num_groups=4,
        mid_block_add_attention=False,
    ).eval()


def reference_image(seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def make_pipeline(transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    return Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), text_encoder=None,
                         tokenizer=None, transformer=transformer)


def run_pipeline(pipe, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 8, 32, generator=g)
    return pipe(image=reference_image(seed), prompt_embeds=emb, height=HEIGHT, width=WIDTH,
                num_inference_steps=steps, guidance_scale=4.0, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images


PIPELINE_CONTEXTS = {"default"}  # one unnamed call per step (guidance-distilled: no CFG)
PIPELINE_THRESHOLD = 0.2
