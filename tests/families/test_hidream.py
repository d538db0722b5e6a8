"""HiDream-I1's export-friendly pieces against the model's own code, and what it refuses."""
import pytest
import torch
from diffusers.models.transformers.transformer_hidream_image import MOEFeedForwardSwiGLU

from models import hidream as M
from teacache_trt import TeaCacheError
from teacache_trt.families import get_family
from teacache_trt.families.hidream import RotaryTables, dense_experts, dense_moe

FAM = get_family("hidream")


@pytest.fixture(scope="module")
def model():
    return M.make_model()


@pytest.mark.parametrize("shape", [(2, 9, 32), (1, 1, 32), (3, 64, 32)])
def test_dense_experts_equal_the_models_routing(model, shape):
    """Every expert on every token, weighted by its gate (0 where not routed), gives the
    eval-mode ``moe_infer`` result, in double and single blocks: the same sums in the same
    order, up to the rounding of an expert's matmul over all rows instead of its routed ones."""
    moes = [m for m in model.modules() if isinstance(m, MOEFeedForwardSwiGLU)]
    assert len(moes) == 3 and not moes[0].training
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g) * 3
    with torch.no_grad():
        for ff in moes:
            want = ff(x)  # the model's eval path: argsort, bincount on the host, a loop over experts
            got = dense_moe(ff, x)
            assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item()


def test_dense_experts_are_undone_after_the_part(model):
    ff = model.double_stream_blocks[0].block.ff_i
    with dense_experts(model):
        assert "forward" in vars(ff)
    assert "forward" not in vars(ff)  # the model's own forward again


def test_rotary_tables_equal_the_models_float64_rope(model):
    x = torch.randn(2, 4, 6, 6)
    img_ids = model.patchify(x)[3]
    text = 13
    want = model.pe_embedder(torch.cat([img_ids, torch.zeros(2, text, 3)], dim=1))
    tables = RotaryTables(model)
    got = torch.cat([tables.image(3, 3), tables.text.expand(1, text, 1, -1, -1, -1)], dim=1)
    assert got.dtype == torch.float32 and torch.equal(got.expand_as(want), want)


def test_rule_is_upstreams():
    v = FAM.variant("HiDream-I1-Full")
    assert v.forced.first == 0 and not v.forced.last and v.forced.first_fraction == 0.1
    assert v.coefficients[0] == -3.13605009e4 and len(v.coefficients) == 5
    assert FAM.variant_for(FAM.config_of(M.make_model())) == "HiDream-I1-Full"


def test_non_square_and_prepatchified_inputs_are_refused(model):
    feed = FAM.kwargs_from_feed(FAM.example_inputs(FAM.config_of(model), M.POINT, torch.float32))
    with pytest.raises(TeaCacheError, match="square"):
        FAM.feed_from_kwargs({**feed, "hidden_states": torch.randn(2, 4, 4, 6)})
    with pytest.raises(TeaCacheError, match="hidden_states_masks"):
        FAM.feed_from_kwargs({**feed, "hidden_states_masks": torch.ones(2, 16)})
    # The pipeline's keyword (timesteps) and the graph's (timestep) both reach the graph input.
    got = FAM.feed_from_kwargs(feed)
    assert torch.equal(got["timestep"], feed["timesteps"])
    alias = dict(feed, timestep=feed["timesteps"].long())
    del alias["timesteps"]
    assert FAM.feed_from_kwargs(alias)["timestep"].dtype == torch.float32  # UniPC's int64 timesteps


def test_axes_stop_at_max_resolution(model):
    config = {**FAM.config_of(model), "max_resolution": [6, 6]}
    size = FAM.axis("size", config)
    assert (size.min, size.max, size.multiple_of) == (2, 6, 2)
    with pytest.raises(TeaCacheError, match="max_resolution"):
        FAM.example_inputs(config, {**M.POINT, "size": 8}, torch.float32)
    assert FAM.pipeline_attributes(FAM.config_of(model)) == {"max_seq": 16}  # the pipeline's shift


def test_llama_layers_must_match_the_blocks(model):
    config = {**FAM.config_of(model), "llama_layers": [0, 1]}
    with pytest.raises(TeaCacheError, match="llama_layers"):
        FAM.check_config(config)
