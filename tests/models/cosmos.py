import torch
from diffusers import CosmosTransformer3DModel

from teacache_trt.families.cosmos import allow_model_forward

FAMILY = "cosmos"
# Latent sizes; height/width are multiples of the patch (2), all within max_size (4, 8, 8).
AXES = {"batch": (1, 2, 2), "frames": (1, 2, 3), "height": (2, 4, 6), "width": (2, 6, 8), "txt_seq": (2, 5, 8)}
POINT = {"batch": 2, "frames": 2, "height": 4, "width": 6, "txt_seq": 5}
LONG_STEPS = (30,)  # further parity loops (tests/runtime/test_parity.py)

# The diffusers model resizes the padding mask with torchvision, which this machine may lack
# (its CPU build of torch has no matching torchvision wheel): the family's stand-in does the
# same nearest resize, so the original model runs in the reference and the baseline pipeline.
allow_model_forward()

TINY = dict(
    in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2.0,
    text_embed_dim=12, adaln_lora_dim=8, max_size=(4, 8, 8), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
    concat_padding_mask=True, extra_pos_embed_type="learnable",
)


def make_model():
    torch.manual_seed(0)
    model = CosmosTransformer3DModel(**TINY).eval()
    with torch.no_grad():
        # The learned positional table starts at zero in a fresh model: give it values, so
        # that a signal taken after it (which upstream does not do) would differ.
        for p in (model.learnable_pos_embed.pos_emb_t, model.learnable_pos_embed.pos_emb_h,
                  model.learnable_pos_embed.pos_emb_w):
            p.normal_()
    return model


def timestep(step, num_steps, batch):
    # EDM: 0.25 * ln(sigma) for sigma from 80 down to 0.002, as the pipelines pass it.
    sigma = 80.0 * (0.002 / 80.0) ** (step / max(num_steps - 1, 1))
    return torch.full((batch,), 0.25 * torch.log(torch.tensor(sigma)).item())


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    return dict(
        signal_module=_SignalBeforePositions(model),
        blocks=list(model.transformer_blocks),
        # Blocks are called positionally: (hidden, text, embedded_timestep, temb, rope, pos, mask, controlnet)
        hidden_in=lambda args, kwargs: args[0],
        identity=lambda args, kwargs: args[0],
        after_blocks=model.norm_out,  # first positional argument: the tokens after all blocks
    )


class _SignalBeforePositions:
    """Stands in for a signal module: block 0's ``norm1`` on the block's INPUT (before the block
    adds the learned positional embedding), as upstream takes it; hooked like a module."""

    def __init__(self, model):
        self.block = model.transformer_blocks[0]

    def register_forward_hook(self, hook):
        def pre_hook(mod, args, kwargs):
            hidden, _, embedded_timestep, temb = args[:4]
            with torch.no_grad():
                hook(mod, args, self.block.norm1(hidden, embedded_timestep, temb))

        return self.block.register_forward_pre_hook(pre_hook, with_kwargs=True)


class _SafetyChecker(torch.nn.Module):
    """The Cosmos pipelines refuse to run without a safety checker; prompts are embeddings here
    and the output latents, so it is never consulted."""

    device = property(lambda self: torch.device("cpu"))  # the pipeline asks its components
    dtype = property(lambda self: torch.float32)

    def check_text_safety(self, prompt):
        return True

    def check_video_safety(self, video):
        return video


# Pixels: 9 frames at 32x48 -> 2 latent frames of 4x6 (8x compression, the pipeline's default
# without a VAE).
HEIGHT, WIDTH, FRAMES, TEXT = 32, 48, 9, 5


def make_pipeline(transformer):
    from diffusers import CosmosTextToWorldPipeline, EDMEulerScheduler

    scheduler = EDMEulerScheduler(sigma_max=80.0, sigma_min=0.002, sigma_data=0.5, sigma_schedule="karras",
                                  prediction_type="epsilon", rho=7.0, final_sigmas_type="sigma_min")
    return CosmosTextToWorldPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=None,
                                     scheduler=scheduler, safety_checker=_SafetyChecker())


def run_pipeline(pipe, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, negative = torch.randn(1, TEXT, 12, generator=g), torch.randn(1, TEXT, 12, generator=g)
    return pipe(prompt_embeds=emb, negative_prompt_embeds=negative, height=HEIGHT, width=WIDTH,
                num_frames=FRAMES, num_inference_steps=steps, guidance_scale=7.0, fps=30, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).frames


# cond then uncond, two unnamed calls per step (and two scheduler.step calls): a state each.
PIPELINE_CONTEXTS = {"default", "default#1"}
PIPELINE_THRESHOLD = 0.3


# Cosmos-1.0-Diffusion-7B-Text2World's transformer config with 2 of its 28 blocks.
REAL_CONFIG = dict(
    in_channels=16, out_channels=16, num_attention_heads=32, attention_head_dim=128, num_layers=2, mlp_ratio=4.0,
    text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240), patch_size=(1, 2, 2),
    rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=True, extra_pos_embed_type="learnable",
)
