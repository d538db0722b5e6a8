"""Cosmos' export-friendly pieces against the model's own code, the signal's place, and what
the family refuses."""
import pytest
import torch

from models import cosmos as M
from reference import TeaCacheReference
from teacache_trt import TeaCacheError
from teacache_trt.families import get_family
from teacache_trt.families.cosmos import fps_tensor, learned_positions, nearest_resize

FAM = get_family("cosmos")


def compose(model, feed):
    """The family's PyTorch parts run in order on ``feed`` (graph inputs): the output."""
    pool = dict(feed, prev_signal=torch.zeros(()))
    for part in FAM.parts(model).values():
        pool.update(part.run(pool))
    return pool["output"]


def run_reference(model, ref, steps=10):
    """The parity tests' loop (tests/runtime/test_parity.py) over the reference."""
    kwargs = FAM.kwargs_from_feed(FAM.example_inputs(FAM.config_of(model), M.POINT, torch.float32))
    for i in range(steps):
        kwargs["timestep"] = M.timestep(i, steps, M.POINT["batch"])
        kwargs["hidden_states"] = kwargs["hidden_states"] - ref(**kwargs) / steps


def test_learned_positions_equal_the_module():
    model = M.make_model()
    latents = torch.randn(2, 5, 3, 4, 6)
    want = model.learnable_pos_embed(latents)  # (2, tokens, D): the same table for every sample
    got = learned_positions(model, 3, 4, 6)
    assert torch.equal(got.expand_as(want), want)


def test_padding_mask_is_resized_as_the_model_resizes_it():
    mask = torch.rand(1, 1, 32, 48)
    assert torch.equal(nearest_resize(mask, (4, 6)), mask[..., ::8, ::8])  # nearest: source row 8i
    assert nearest_resize(mask, (32, 48)) is mask


def test_fps_none_is_base_fps_exactly():
    """Images (fps=None) take the model's undivided positions; base_fps gives the same table."""
    model = M.make_model()
    latents = torch.randn(1, 5, 4, 8, 8)
    plain = model.rope(latents, fps=None)
    for got in (model.rope(latents, fps=fps_tensor(None)), model.rope(latents, fps=24)):
        assert all(torch.equal(g, w) for g, w in zip(got, plain))


@pytest.mark.parametrize("layout", ["text2world", "video2world", "predict2"])
def test_parts_compose_to_the_model(layout):
    """Cosmos-1.0 Text2World (the tiny model), Video2World (a condition-mask channel) and a
    Predict2 layout (no learned positional table)."""
    kwargs = dict(M.TINY)
    if layout == "video2world":
        kwargs["in_channels"] = kwargs["out_channels"] + 1
    if layout == "predict2":
        kwargs["extra_pos_embed_type"] = None
    torch.manual_seed(3)
    model = type(M.make_model())(**kwargs).eval()
    config = FAM.config_of(model)
    feed = FAM.example_inputs(config, M.POINT, torch.float32, seed=1)
    assert ("condition_mask" in feed) == (layout == "video2world")
    with torch.no_grad():
        want = FAM.call_model(model, FAM.kwargs_from_feed(feed))
        got = compose(model, feed)
    assert (got - want).abs().max().item() <= 1e-5


def test_pipeline_keywords_become_graph_inputs():
    model = M.make_model()
    hidden = torch.randn(1, 4, 2, 4, 6)
    feed = FAM.feed_from_kwargs({"hidden_states": hidden, "timestep": torch.tensor([0.3]),
                                 "encoder_hidden_states": torch.randn(1, 5, 12), "fps": 30,
                                 "padding_mask": torch.zeros(1, 1, 32, 48)})
    assert feed["padding_mask"].shape == (1, 1, 4, 6) and torch.equal(feed["fps"], torch.tensor([30.0]))
    kwargs = FAM.kwargs_from_feed(feed)
    assert kwargs["fps"] == 30.0
    with torch.no_grad():
        assert (compose(model, feed) - FAM.call_model(model, kwargs)).abs().max().item() <= 1e-5


def test_signal_is_taken_before_the_positional_embedding():
    """Upstream's signal (block 0's norm1 on the blocks' input, without the learned positions)
    and norm1 as the block calls it (input + positions) give other schedules: the parity tests
    compare against the first."""
    model = M.make_model()
    coefficients = FAM.variant("Cosmos-1.0").coefficients
    schedules = []
    for after in (False, True):
        hooks = M.reference_hooks(model)
        if after:
            hooks["signal_module"] = model.transformer_blocks[0].norm1
        ref = TeaCacheReference(model, hooks, coefficients, 2.0, 10)
        run_reference(model, ref)
        schedules.append(ref.computed)
    assert schedules[0] != schedules[1], schedules


def test_refused_inputs_and_configs():
    base = {"hidden_states": torch.randn(1, 4, 2, 4, 6), "timestep": torch.tensor([0.3]),
            "encoder_hidden_states": torch.randn(1, 5, 12), "padding_mask": torch.zeros(1, 1, 32, 48)}
    with pytest.raises(TeaCacheError, match="ControlNet"):
        FAM.feed_from_kwargs({**base, "block_controlnet_hidden_states": [torch.zeros(1)]})
    with pytest.raises(TeaCacheError, match="per-frame"):
        FAM.feed_from_kwargs({**base, "timestep": torch.zeros(1, 1, 2, 1, 1)})
    with pytest.raises(TeaCacheError, match="tuple"):
        FAM.feed_from_kwargs({**base, "encoder_hidden_states": (torch.zeros(1, 5, 12), torch.zeros(1, 3, 8))})
    with pytest.raises(TeaCacheError, match="one .1, 1, height, width. mask"):
        FAM.feed_from_kwargs({**base, "padding_mask": torch.zeros(2, 1, 32, 48)})
    config = FAM.config_of(M.make_model())
    for key, value in (("controlnet_block_every_n", 7), ("img_context_dim_in", 16), ("use_crossattn_projection", True)):
        with pytest.raises(TeaCacheError, match=key):
            FAM.check_config({**config, key: value})


def test_axes_stop_at_max_size():
    config = {**FAM.config_of(M.make_model()), "max_size": [3, 6, 8]}
    axes = {a.name: a for a in FAM.axes_for(config)}
    assert (axes["frames"].max, axes["height"].max, axes["width"].max) == (3, 6, 8)
    real = {a.name: (a.min, a.opt, a.max) for a in FAM.axes_for(M.REAL_CONFIG)}
    assert real["frames"] == (1, 16, 16) and real["height"] == (2, 88, 160) and real["width"] == (2, 160, 160)
