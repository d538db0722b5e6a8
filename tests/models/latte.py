import torch
from diffusers import LatteTransformer3DModel

FAMILY = "latte"
# frames are fixed by the temporal positional table (video_length); height and width differ,
# and the test point is off the trained size (8), where the model rebuilds its sin-cos table.
AXES = {"batch": (1, 2, 2), "frames": (3, 3, 3), "height": (2, 8, 8), "width": (2, 6, 8),
        "txt_seq": (2, 5, 8)}
POINT = {"batch": 2, "frames": 3, "height": 8, "width": 6, "txt_seq": 5}

# maxin-cn/Latte-1's transformer dimensions with 2 of its 28 spatial+temporal block pairs.
REAL_CONFIG = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=2,
    cross_attention_dim=1152, attention_bias=True, sample_size=64, patch_size=2,
    activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
    norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096, video_length=16,
)


def make_model():
    torch.manual_seed(0)
    # Latte-1's layout (adaLN-single, learned sigma: twice the input channels out), tiny.
    return LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, attention_bias=True, sample_size=8, patch_size=2,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=16, video_length=3,
    ).eval()


def timestep(step, num_steps, batch):
    # LattePipeline passes the DDIM scheduler's int64 timesteps, 999 down.
    return torch.full((batch,), 999 - (step * 1000) // num_steps, dtype=torch.long)


def update(latents, output, steps):
    # The output stacks the noise prediction and the learned variance on channels; the
    # pipeline steps with the first half.
    return latents - output.chunk(2, dim=1)[0] / steps


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    pairs = [b for pair in zip(model.transformer_blocks, model.temporal_transformer_blocks) for b in pair]
    return dict(
        signal_module=_ModulatedInputOfBlock(model.transformer_blocks[0]),
        blocks=pairs,
        # Latte calls its blocks positionally: (hidden, attention_mask, encoder, ..., timestep, ...)
        hidden_in=lambda args, kwargs: args[0],
        identity=lambda args, kwargs: args[0],  # blocks return hidden only
        after_blocks=model.norm_out,  # first positional argument: hidden after all blocks
    )


class _ModulatedInputOfBlock:
    """Stands in for a signal module: hands hooks spatial block 0's ada_norm_single modulated
    input, computed from what the block is called with (as upstream's TeaCache4Latte does)."""

    def __init__(self, block):
        self.block = block

    def register_forward_hook(self, hook):
        def pre_hook(mod, args):
            x, timestep = args[0], args[4]
            ada = mod.scale_shift_table[None] + timestep.reshape(x.shape[0], 6, -1)
            shift, scale = ada.chunk(6, dim=1)[:2]
            hook(mod, args, mod.norm1(x) * (1 + scale) + shift)

        return self.block.register_forward_pre_hook(pre_hook)


# Pixels: 8x8 latents (sample_size) at the pipeline's 8x VAE scale, video_length frames.
HEIGHT = WIDTH = 64
FRAMES, TEXT = 3, 5


def make_pipeline(transformer):
    from diffusers import DDIMScheduler, LattePipeline

    # Latte-1's scheduler: DDIM over a linear beta schedule.  No VAE: run_pipeline returns
    # latents, which is all the transformer shapes.
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)
    return LattePipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                         scheduler=scheduler)


def run_pipeline(pipe, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, negative = torch.randn(1, TEXT, 16, generator=g), torch.randn(1, TEXT, 16, generator=g)
    # negative_prompt=None: the pipeline's default "" would clash with the embeddings given.
    return pipe(prompt_embeds=emb, negative_prompt=None, negative_prompt_embeds=negative,
                video_length=FRAMES, height=HEIGHT, width=WIDTH, num_inference_steps=steps,
                guidance_scale=7.5, output_type="latent", generator=torch.Generator().manual_seed(seed)).frames


PIPELINE_CONTEXTS = {"default"}  # CFG batched into one unnamed call per step
PIPELINE_THRESHOLD = 0.2
