"""Lumina-Next's export-friendly attention against the model's own processor."""
import pytest
import torch
from diffusers.models.attention_processor import LuminaAttnProcessor2_0
from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

from models import lumina_next as M
from teacache_trt.families.lumina_next import ProportionalRealAttnProcessor, proportional_scale


@pytest.mark.parametrize("base", [None, 4096, 7])
def test_real_attention_equals_the_models(base):
    layer = M.make_model().layers[0]
    g = torch.Generator().manual_seed(0)
    hidden, text = torch.randn(2, 12, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    table = get_2d_rotary_pos_embed_lumina(8, 3, 4)[:3, :4].flatten(0, 1).unsqueeze(0)  # 12 tokens
    image_mask = torch.ones(2, 12, dtype=torch.int32)
    text_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    extra = {} if base is None else {"base_sequence_length": base}
    scale = proportional_scale(12, torch.tensor([float(base or 0)]), torch.float32)
    with torch.no_grad():
        for attn, enc, mask, key_rope in ((layer.attn1, hidden, image_mask, True),
                                          (layer.attn2, text, text_mask, False)):
            key_table = table if key_rope else None
            want = LuminaAttnProcessor2_0()(attn, hidden, enc, mask, table, key_table, **extra)
            got = ProportionalRealAttnProcessor()(attn, hidden, enc, mask, torch.view_as_real(table),
                                                  torch.view_as_real(table) if key_rope else None, scale)
            assert (got - want).abs().max().item() <= 1e-5
