"""LTX-Video's RoPE tables against the model's own RoPE module."""
import pytest
import torch
from diffusers.models.transformers.transformer_ltx import LTXVideoRotaryPosEmbed

from teacache_trt.families.ltx_video import RotaryTables


@pytest.mark.parametrize("dim", [16, 2048])  # the tiny model's width and LTX-Video's
def test_rotary_tables_equal_the_models(dim):
    rope = LTXVideoRotaryPosEmbed(dim=dim)
    scale = torch.tensor([8 / 25, 32.0, 32.0])
    for grid in ((1, 1, 1), (2, 3, 4), (5, 6, 7)):
        want = rope(torch.zeros(2, 1, dim), *grid, scale)
        got = RotaryTables(rope)(2, *grid, scale)
        for g, w in zip(got, want):
            assert torch.equal(g, w)
