"""HunyuanVideo-1.5's export-friendly pieces against the model's own code: the token order,
the attention masks, the T2V/I2V switch without a Python branch, and what is refused."""
import pytest
import torch
import torch.nn.functional as F

import teacache_trt
from models import hunyuan_video15 as M
from teacache_trt import TeaCacheError
from teacache_trt.families import get_family
from teacache_trt.families.hunyuan_video15 import (
    KeyMaskAttnProcessor, empty_rows_attend_nothing, gather_rows, text_order,
)

FAM = get_family("hunyuan_video15")


def models_order(tokens, valid):
    """The model's per-sample boolean indexing: valid tokens first, then the padding ones."""
    return torch.stack([torch.cat([t[v], t[~v]]) for t, v in zip(tokens, valid)])


@pytest.mark.parametrize("seed", range(4))
def test_text_order_is_the_models_stable_partition(seed):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(3, 17, generator=g) < 0.6
    valid[0] = True  # every token valid
    valid[1, :5] = False  # a masked-out image block
    tokens = torch.randn(3, 17, 4, generator=g)
    order = text_order(valid.float())
    assert torch.equal(gather_rows(tokens, order), models_order(tokens, valid))
    assert torch.equal(torch.gather(valid, 1, order), models_order(valid[..., None], valid)[..., 0])


def test_masked_attention_returns_zero_rows_as_pytorch_does():
    """Rows that may attend nothing: 0 from PyTorch's kernels, 0 here, without a softmax over
    nothing (NaN in an exported graph)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 8, generator=g) for _ in range(3))
    valid = torch.tensor([[1, 1, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0]]).bool()
    mask = (valid[:, None, :, None] & valid[:, None, None, :])  # the refiner's valid_i & valid_j
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with empty_rows_attend_nothing():
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert F.scaled_dot_product_attention is not None and (got - want).abs().max().item() <= 1e-6
    assert torch.equal(got[1, :, 1:], torch.zeros_like(got[1, :, 1:]))


def test_key_mask_attention_equals_the_models_processor():
    block = M.make_model().transformer_blocks[0]
    g = torch.Generator().manual_seed(1)
    video, text = torch.randn(2, 6, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    rope = (torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    with torch.no_grad():
        want = block.attn(video, text, attention_mask=mask, image_rotary_emb=rope)
        got = KeyMaskAttnProcessor()(block.attn, video, text, mask.int(), rope)
    for w, o in zip(want, got):
        assert (o - w).abs().max().item() <= 1e-6


@pytest.mark.parametrize("image", ["zeros (T2V)", "embeddings (I2V)"])
def test_one_graph_serves_t2v_and_i2v(exported, image):
    """The model branches in Python on ``torch.all(image_embeds == 0)``; the exported graphs
    take the switch as data, and match the model either way."""
    ex = exported("hunyuan_video15")
    feed = FAM.example_inputs(FAM.config_of(ex.model), M.POINT, torch.float32, seed=4)
    if image.startswith("embeddings"):
        feed["image_embeds"] = torch.randn_like(feed["image_embeds"])
    else:
        assert not feed["image_embeds"].any()  # the tiny model is a T2V config
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0)
    t.reset(1)
    kwargs = FAM.kwargs_from_feed(feed)
    with torch.no_grad():
        want = FAM.call_model(ex.model, kwargs)
    got = FAM.call_model(t, kwargs)
    assert not torch.isnan(got).any() and (got - want).abs().max().item() <= 1e-4


def test_variants_and_refusals():
    config = FAM.config_of(M.make_model())
    assert FAM.variant_for(config) == "HunyuanVideo-1.5-480p-T2V"
    assert FAM.variant_for({**config, "target_size": 960, "task_type": "i2v"}) == "HunyuanVideo-1.5-720p-I2V"
    # LightX2V: degree 4 for I2V, degree 5 for T2V (480p I2V, 480p T2V, 720p I2V, 720p T2V)
    assert [len(FAM.variant(n).coefficients) for n in sorted(FAM.variants)] == [5, 6, 5, 6]
    assert FAM.axis("height", {**config, "target_size": 960}).opt == 45
    with pytest.raises(TeaCacheError, match="use_meanflow"):
        FAM.check_config({**config, "use_meanflow": True})
    feed = FAM.kwargs_from_feed(FAM.example_inputs(config, M.POINT, torch.float32))
    with pytest.raises(TeaCacheError, match="timestep_r"):
        FAM.feed_from_kwargs({**feed, "timestep_r": torch.ones(2)})
    with pytest.raises(TeaCacheError, match="image_embeds"):
        FAM.feed_from_kwargs({k: v for k, v in feed.items() if k != "image_embeds"})
    ints = FAM.feed_from_kwargs({**feed, "encoder_attention_mask": feed["encoder_attention_mask"].long()})
    assert ints["encoder_attention_mask"].dtype == torch.float32
