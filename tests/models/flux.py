import torch
from diffusers import FluxTransformer2DModel

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
