"""Mochi's static-shape replacements against the model's own code."""
import pytest
import torch
from diffusers.models.attention_processor import MochiAttnProcessor2_0
from diffusers.models.transformers.transformer_mochi import MochiRoPE

from models import mochi as M
from teacache_trt.families.mochi import CompactedTextAttnProcessor, rope_positions


@pytest.mark.parametrize("size", [(1, 1, 1), (2, 4, 6), (3, 30, 53), (28, 60, 106)])
def test_rope_positions_equal_the_models(size):
    want = MochiRoPE()._get_positions(*size, dtype=torch.float32)
    got = rope_positions(*size, MochiRoPE().target_area)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 2e-7 * want.abs().max().item()


def test_compacted_attention_equals_the_models_for_any_mask():
    attn = M.make_model().transformer_blocks[0].attn1
    g = torch.Generator().manual_seed(0)
    hidden, text = torch.randn(4, 6, 16, generator=g), torch.randn(4, 5, 16, generator=g)
    rope = (torch.randn(6, 2, 4, generator=g), torch.randn(6, 2, 4, generator=g))
    # right-padded, left-padded, holes, empty: the model's nonzero gather handles them all.
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0]]).bool()
    with torch.no_grad():
        want = MochiAttnProcessor2_0()(attn, hidden, text, mask, rope)
        got = CompactedTextAttnProcessor()(attn, hidden, text, mask.float(), rope)
    for g_, w in zip(got, want):
        assert (g_ - w).abs().max().item() <= 1e-5
