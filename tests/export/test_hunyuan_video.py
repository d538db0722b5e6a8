"""HunyuanVideo export: verification, shapes, the bool-Where trap (docs/traps.md), TensorRT-RTX."""
from __future__ import annotations

import onnx
import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.families import get_family
from teacache_trt.export.verify import ort_session, run_ort
from teacache_trt.manifest import GRAPH_NAMES
from teacache_trt.shapes import propagate

NAME = "hunyuan_video"
FAM = get_family(NAME)
# Not a verified point: 3 frames, height != width, text longer than at export.
ODD_POINT = {"batch": 1, "frames": 3, "height": 8, "width": 2, "txt_seq": 7}


def feed_at(ex, point, seed=0):
    return FAM.example_inputs(ex.manifest.config, point, torch.float32, seed=seed)


def test_verification_is_recorded_per_graph(exported):
    ex = exported(NAME)
    # Traced at the smallest sizes >= 2 inside the profile, distinct where the range allows.
    traced = {"batch": 2, "frames": 3, "height": 4, "width": 6, "txt_seq": 5}
    min_point = {name: lo for name, (lo, _, _) in ex.spec.AXES.items()}
    for graph in GRAPH_NAMES:
        rows = ex.manifest.graphs[graph].verification
        assert [r["axes"] for r in rows] == [traced, min_point], graph
        for r in rows:
            assert r["max_rel"] <= 1e-4, (graph, r)
    for r in ex.manifest.graphs["head"].verification:
        assert r["split_vs_model_max_abs"] <= 1e-5, r


def test_shapes_propagate_to_the_models_layout(exported):
    ex = exported(NAME)
    feed = feed_at(ex, ODD_POINT)
    shapes = propagate([ex.manifest.graphs[g] for g in GRAPH_NAMES], {n: t.shape for n, t in feed.items()})
    tokens, width = 3 * (8 // 2) * (2 // 2), 16  # frames * (height/p) * (width/p), heads*head_dim
    assert shapes["hidden"] == shapes["signal"] == shapes["residual"] == (1, tokens, width)
    assert shapes["rotary_cos"] == (tokens, 8)
    assert shapes["attention_mask"] == (1, 1, 1, tokens + 7)
    assert shapes["output"] == (1, 4, 3, 8, 2)  # (B, C, F, H, W), as the model returns


def test_runtime_matches_the_model_at_an_unverified_shape(exported):
    ex = exported(NAME)
    kwargs = FAM.kwargs_from_feed(feed_at(ex, ODD_POINT, seed=3))
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0)
    t.reset(1)
    got = t(**kwargs).sample
    want = ex.model(**kwargs).sample
    assert got.shape == want.shape == (1, 4, 3, 8, 2)
    assert (got - want).abs().max().item() <= 1e-4


def test_tokenizer_int_mask_gives_the_pipelines_float_mask_result(exported):
    ex = exported(NAME)
    kwargs = FAM.kwargs_from_feed(feed_at(ex, ex.spec.POINT))
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0)
    t.reset(2)
    as_float = t(**kwargs).sample
    as_int = t(**{**kwargs, "encoder_attention_mask": kwargs["encoder_attention_mask"].long()}).sample
    assert torch.equal(as_float, as_int)


def _bool_wheres(path):
    """Where nodes whose value inputs are bool: ONNX Runtime's CPU provider has no kernel."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    return [n.name for n in g.node
            if n.op_type == "Where" and onnx.TensorProto.BOOL in (types.get(n.input[1]), types.get(n.input[2]))]


def test_embed_runs_in_onnxruntime_with_the_models_attention_mask(exported):
    # docs/traps.md: the model builds its mask with masked_fill over bool, which exports as
    # Where(bool, bool, bool); the adapter's mask must not, and must equal the model's.
    ex = exported(NAME)
    for graph in GRAPH_NAMES:
        assert _bool_wheres(ex.graph(graph)) == [], graph
    feed = feed_at(ex, ex.spec.POINT, seed=5)
    assert not feed["encoder_attention_mask"].bool().all()  # padded text: the mask has work to do
    seen = {}

    def grab(mod, args):  # the model calls its blocks with (hidden, encoder, temb, mask, ...)
        seen["mask"] = args[3]

    hook = ex.model.transformer_blocks[0].register_forward_pre_hook(grab)
    try:
        ex.model(**FAM.kwargs_from_feed(feed))
    finally:
        hook.remove()
    shapes = propagate([ex.manifest.graphs["embed"]], {n: t.shape for n, t in feed.items()})
    got = run_ort(ort_session(ex.graph("embed")),
                  {**feed, "prev_signal": torch.zeros(shapes["prev_signal"])})
    assert torch.equal(got["attention_mask"].bool(), seen["mask"])


def test_token_replace_variant_is_rejected(tmp_path):
    from diffusers import HunyuanVideoTransformer3DModel

    from teacache_trt.export.exporter import export_model

    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=1, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, text_embed_dim=8, pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4), image_condition_type="token_replace",
    )
    with pytest.raises(TeaCacheError, match="image_condition_type='token_replace'.*latent_concat"):
        export_model(None, tmp_path / "art", model=model, build="none", log=lambda msg: None)
    assert not (tmp_path / "art").exists()  # refused before anything is written
