import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

FAMILY = "flux"
AXES = {"batch": (1, 2, 4), "img_seq": (4, 16, 64), "txt_seq": (2, 8, 16)}
POINT = {"batch": 2, "img_seq": 16, "txt_seq": 8}


def make_model():
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=False, axes_dims_rope=(4, 6, 6),
    ).eval()


def timestep(step, num_steps, batch):
    # FLUX pipelines pass sigma in [0, 1]; the model scales by 1000 itself.
    return torch.full((batch,), 1.0 - step / num_steps)


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        signal_module=model.transformer_blocks[0].norm1,  # its output[0] is the signal
        blocks=[*model.transformer_blocks, *model.single_transformer_blocks],
        hidden_in=lambda args, kwargs: kwargs["hidden_states"],
        # a skipped block hands its inputs through unchanged (FLUX blocks return (enc, hidden))
        identity=lambda args, kwargs: (kwargs["encoder_hidden_states"], kwargs["hidden_states"]),
        after_blocks=model.norm_out,  # first positional argument: hidden after all blocks
    )


def make_pipeline(transformer):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, scaling_factor=0.5, shift_factor=0.1,
    ).eval()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def run_pipeline(pipe, steps, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 8, 32, generator=g)
    pooled = torch.randn(1, 32, generator=g)
    return pipe(prompt_embeds=emb, pooled_prompt_embeds=pooled, height=16, width=16,
                num_inference_steps=steps, guidance_scale=1.0, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kwargs).images


PIPELINE_CONTEXTS = {"cond"}  # one call per step, named "cond" by the pipeline (no true CFG)
PIPELINE_THRESHOLD = 0.8


# FLUX.1-dev's transformer config with 1 double + 1 single block (0.5 B parameters).
REAL_CONFIG = dict(
    patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
    guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
