"""ConsisID layout (CogVideoX-5B-I2V blocks: RoPE and a learned positional table, so sizes are
fixed; face inputs with a perceiver cross-attention after every block), tiny."""
import torch
from diffusers import ConsisIDTransformer3DModel

from models.cogvideox import realistic_temb

FAMILY = "consisid"
# The learned positional table fixes frames / height / width / text to the sample sizes.
AXES = {"batch": (1, 2, 2), "frames": (3, 3, 3), "height": (4, 4, 4), "width": (6, 6, 6), "txt_seq": (5, 5, 5)}
POINT = {"batch": 2, "frames": 3, "height": 4, "width": 6, "txt_seq": 5}
TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=8, time_embed_dim=16,
            text_embed_dim=32, num_layers=2, sample_width=6, sample_height=4, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=5, use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=True, is_train_face=True, is_kps=False, cross_attn_interval=1,
            cross_attn_dim_head=8, cross_attn_num_heads=2, LFE_id_dim=4, LFE_vit_dim=8, LFE_depth=2,
            LFE_dim_head=4, LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=2, LFE_output_dim=21,
            LFE_ff_mult=1, LFE_num_scale=2)  # LFE_output_dim: the perceiver takes inner_dim * 2 // 3


def make_model():
    # out_channels = in_channels (the checkpoint has 32 in, 16 out) so that the generic sampling
    # loop can feed the output back into the latents; the pipeline test uses its own layout.
    torch.manual_seed(0)
    return realistic_temb(ConsisIDTransformer3DModel(**TINY).eval())


def timestep(step, num_steps, batch):
    # Scheduler timesteps: int64, 999 down (trailing spacing), as for CogVideoX.
    return torch.full((batch,), 999 - (step * 1000) // num_steps, dtype=torch.long)


def reference_hooks(model):
    """Where the independent reference (tests/reference.py) hooks the original model."""
    blocks = list(model.transformer_blocks)
    return dict(
        signal_module=model.time_embedding,
        blocks=blocks,
        # norm_final takes [text, video]: the reference caches both streams, as upstream does
        hidden_in=lambda args, kwargs: torch.cat([kwargs["encoder_hidden_states"], kwargs["hidden_states"]], 1),
        identity=lambda args, kwargs: (kwargs["hidden_states"], kwargs["encoder_hidden_states"]),
        after_blocks=model.norm_final,  # first positional argument: [text, video] after the blocks
        # the face cross-attention, added after blocks, adds nothing on a skipped step
        also_skipped=[(m, lambda args, kwargs: torch.zeros_like(args[1])) for m in model.perceiver_cross_attention],
    )
