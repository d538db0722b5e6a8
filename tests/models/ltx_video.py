import torch
from diffusers import LTXVideoTransformer3DModel

FAMILY = "ltx_video"
# Latent grid (patch size 1: one token per latent pixel); height and width differ.
AXES = {"batch": (1, 2, 2), "frames": (1, 2, 3), "height": (1, 3, 4), "width": (1, 4, 5),
        "txt_seq": (2, 5, 8)}
POINT = {"batch": 2, "frames": 2, "height": 3, "width": 4, "txt_seq": 5}

# Lightricks/LTX-Video 0.9.x transformer dimensions with 2 of its 28 blocks.
REAL_CONFIG = dict(
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
    attention_head_dim=64, cross_attention_dim=2048, num_layers=2, caption_channels=4096,
    qk_norm="rms_norm_across_heads", norm_eps=1e-6,
)


def make_model():
    torch.manual_seed(0)
    return LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=2, caption_channels=16,
    ).eval()


def timestep(step, num_steps, batch):
    # LTX pipelines pass the scheduler's sigma * 1000.
    return torch.full((batch,), 1000.0 * (1.0 - step / num_steps))


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        # The signal is computed inside block 0 (norm1 output, then modulated there): the
        # reference recomputes it from the block's own inputs (tests/reference.py).
        signal_module=_ModulatedInputOfBlock(model.transformer_blocks[0]),
        blocks=list(model.transformer_blocks),
        hidden_in=lambda args, kwargs: kwargs["hidden_states"],
        identity=lambda args, kwargs: kwargs["hidden_states"],  # blocks return hidden only
        after_blocks=model.proj_out,  # the residual covers norm_out and its shift/scale
    )


class _ModulatedInputOfBlock:
    """Stands in for a signal module: hands hooks ``norm1(x) * (1 + scale_msa) + shift_msa``
    computed from what block 0 is called with, as upstream's TeaCache4LTX-Video computes it."""

    def __init__(self, block):
        self.block = block

    def register_forward_hook(self, hook):
        def pre_hook(mod, args, kwargs):
            x, temb = kwargs["hidden_states"], kwargs["temb"]
            table = mod.scale_shift_table
            ada = table[None, None] + temb.reshape(x.shape[0], temb.size(1), table.shape[0], -1)
            shift_msa, scale_msa = ada[:, :, 0], ada[:, :, 1]
            hook(mod, args, mod.norm1(x) * (1 + scale_msa) + shift_msa)

        return self.block.register_forward_pre_hook(pre_hook, with_kwargs=True)


# Pixels: latents are 1/32 of height and width and (frames - 1)/8 + 1 frames: 2 x 3 x 4.
HEIGHT, WIDTH, FRAMES, TEXT = 96, 128, 9, 5


def make_pipeline(transformer):
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    # No VAE: run_pipeline returns the (packed) latents, which is all the transformer shapes;
    # the pipeline then assumes LTX's 32x spatial and 8x temporal compression.
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                       tokenizer=None, transformer=transformer)


def run_pipeline(pipe, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, negative = torch.randn(1, TEXT, 16, generator=g), torch.randn(1, TEXT, 16, generator=g)
    mask = torch.arange(TEXT)[None, :] < TEXT - 1  # right-padded prompts, as T5's tokenizer pads
    negative_mask = torch.arange(TEXT)[None, :] < 2
    return pipe(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt_embeds=negative,
                negative_prompt_attention_mask=negative_mask, height=HEIGHT, width=WIDTH,
                num_frames=FRAMES, num_inference_steps=steps, guidance_scale=3.0, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).frames


PIPELINE_CONTEXTS = {"cond_uncond"}  # CFG batched into one call per step, named by the pipeline
PIPELINE_THRESHOLD = 0.2
