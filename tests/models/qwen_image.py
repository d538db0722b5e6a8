import torch
from diffusers import QwenImageTransformer2DModel

FAMILY = "qwen_image"
AXES = {"batch": (1, 2, 4), "img_seq": (4, 16, 64), "txt_seq": (2, 8, 16)}
POINT = {"batch": 2, "img_seq": 16, "txt_seq": 8}

# vLLM-Omni's rule: only the first call of each state forced, |poly(d)| accumulated, eps 1e-8.
FORCED_FIRST, FORCED_LAST = 1, False
ACCUMULATE, EPS = "abs", 1e-8
LONG_STEPS = (30,)  # further parity loops (tests/runtime/test_parity.py)

# Qwen/Qwen-Image's transformer dimensions (width 3072, 24 heads, Qwen2.5-VL's 3584-wide
# prompt embeddings) with 2 of its 60 blocks.
REAL_CONFIG = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56),
)


def make_model():
    torch.manual_seed(0)
    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
    ).eval()


def timestep(step, num_steps, batch):
    # QwenImagePipeline passes sigma (t / 1000); the model's time projection scales by 1000.
    return torch.full((batch,), 1.0 - step / num_steps)


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        signal_module=_ModulatedImageInput(model.transformer_blocks[0]),
        blocks=list(model.transformer_blocks),
        hidden_in=lambda args, kwargs: kwargs["hidden_states"],
        # a skipped block hands its inputs through unchanged (blocks return (text, image))
        identity=lambda args, kwargs: (kwargs["encoder_hidden_states"], kwargs["hidden_states"]),
        after_blocks=model.norm_out,  # first positional argument: image tokens after all blocks
    )


class _ModulatedImageInput:
    """Stands in for a signal module: hands hooks block 0's modulated image input,
    ``img_norm1(x) * (1 + scale) + shift`` with (shift, scale) the first two thirds of the first
    half of ``img_mod(temb)``, recomputed from what the block is called with (as vLLM-Omni's
    extractor computes it)."""

    def __init__(self, block):
        self.block = block

    def register_forward_hook(self, hook):
        def pre_hook(mod, args, kwargs):
            x, temb = kwargs["hidden_states"], kwargs["temb"]
            shift, scale = mod.img_mod(temb)[:, : 2 * mod.dim].chunk(2, dim=-1)
            hook(mod, args, mod.img_norm1(x) * (1 + scale[:, None]) + shift[:, None])

        return self.block.register_forward_pre_hook(pre_hook, with_kwargs=True)


# Pixels: 64x64 -> 8x8 latents (the pipeline's 8x VAE scale without a VAE) -> 4x4 packed tokens.
HEIGHT = WIDTH = 64
TEXT, NEGATIVE_TEXT = 6, 3  # the prompts' token counts differ, as real prompts do


def make_pipeline(transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    # No VAE: run_pipeline returns the packed latents, which is all the transformer shapes.
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                             tokenizer=None, transformer=transformer)


def prompts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, TEXT, 32, generator=g), torch.randn(1, NEGATIVE_TEXT, 32, generator=g)


def run_pipeline(pipe, steps, seed=0):
    emb, negative = prompts(seed)
    return pipe(prompt_embeds=emb, negative_prompt_embeds=negative, true_cfg_scale=4.0, height=HEIGHT,
                width=WIDTH, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images


PIPELINE_CONTEXTS = {"cond", "uncond"}  # true CFG: two named calls per step
PIPELINE_THRESHOLD = 0.2
