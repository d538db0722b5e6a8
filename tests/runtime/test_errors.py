"""Bad input: one exception type, a message naming the value and the fix, raised before any
graph runs, and nothing already written is lost."""
from __future__ import annotations

import json

import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.families import get_family


def flux_kwargs(ex, **sizes):
    fam = get_family("flux")
    point = {**ex.spec.POINT, **sizes}
    return fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), point, torch.float32))


@pytest.fixture
def flux(exported):
    return exported("flux")


@pytest.fixture
def counted(flux):
    """A transformer whose graph launches are counted."""
    t = teacache_trt.load_transformer(flux.art_dir)
    t.reset(4)
    calls = []
    for name, runner in t.runners.items():
        original = runner.infer_into
        runner.infer_into = lambda feed, out, _n=name, _o=original: (calls.append(_n), _o(feed, out))[1]
    return t, calls


def test_shape_outside_profile(flux, counted):
    t, calls = counted
    with pytest.raises(TeaCacheError, match=r"img_seq=128 is outside the built profile \[4, 64\].*--axis img_seq=4:16:128"):
        t(**flux_kwargs(flux, img_seq=128))
    assert calls == []


def test_wrong_dtype(flux, counted):
    t, calls = counted
    kwargs = flux_kwargs(flux)
    kwargs["img_ids"] = kwargs["img_ids"].long()
    with pytest.raises(TeaCacheError, match=r"'img_ids' has dtype torch.int64; the graph expects torch.float32"):
        t(**kwargs)
    assert calls == []


def test_wrong_fixed_dim(flux, counted):
    t, calls = counted
    kwargs = flux_kwargs(flux)
    kwargs["hidden_states"] = kwargs["hidden_states"][..., :8]
    with pytest.raises(TeaCacheError, match=r"'hidden_states' has size 8 on dim 2.*exported with 16"):
        t(**kwargs)
    assert calls == []


def test_missing_input(flux, counted):
    t, calls = counted
    kwargs = flux_kwargs(flux)
    del kwargs["pooled_projections"]
    with pytest.raises(TeaCacheError, match="'pooled_projections' is missing"):
        t(**kwargs)
    assert calls == []


def test_missing_graph_file(flux, tmp_path):
    art = flux.copy(tmp_path / "art")
    (art / flux.manifest.content / "blocks.onnx").unlink()
    with pytest.raises(TeaCacheError, match=r"blocks.onnx named by the manifest is missing.*teacache-export"):
        teacache_trt.load_transformer(art)


def test_other_format_version(flux, tmp_path):
    art = flux.copy(tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["format_version"] = 999
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(TeaCacheError, match=r"format_version 999; this teacache-trt reads format_version 2.*--force"):
        teacache_trt.load_transformer(art)


def test_not_an_artifact_folder(tmp_path):
    with pytest.raises(TeaCacheError, match="manifest.json does not exist.*teacache-export"):
        teacache_trt.load_transformer(tmp_path)


def test_unknown_family_in_manifest(flux, tmp_path):
    art = flux.copy(tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["family"] = "sdxl-unet"
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(TeaCacheError, match=r"unknown model family .sdxl-unet.; supported: .*flux \(FluxTransformer2DModel\)"):
        teacache_trt.load_transformer(art)


def test_unknown_backend(flux):
    with pytest.raises(TeaCacheError, match="backend 'tensorflow' is not one of onnxruntime"):
        teacache_trt.load_transformer(flux.art_dir, backend="tensorflow")


@pytest.mark.parametrize("threshold", [-0.1, float("nan"), "0.3"])
def test_bad_threshold(flux, threshold):
    with pytest.raises(TeaCacheError, match="threshold .* must be a number >= 0"):
        teacache_trt.load_transformer(flux.art_dir, threshold=threshold)


def test_tensorrt_without_engines(flux):
    with pytest.raises(TeaCacheError, match=r"no tensorrt-rtx engine for the context graph.*--build tensorrt-rtx"):
        teacache_trt.load_transformer(flux.art_dir, backend="tensorrt-rtx", device="cpu")


def test_exporter_named_dims_are_checked_against_the_profile(exported):
    """CogVideoX's frames/height/width are dims the exporter names itself: checked per input."""
    ex = exported("cogvideox")
    fam = get_family("cogvideox")
    t = teacache_trt.load_transformer(ex.art_dir)
    t.reset(4)
    kwargs = fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), {**ex.spec.POINT, "frames": 5},
                                                     torch.float32))
    calls = []
    t.runners["embed"].infer_into = lambda feed, out: calls.append(feed)
    with pytest.raises(TeaCacheError, match=r"input 'hidden_states' has size 5 on dim 1 .*outside the built profile \[1, 3\]"):
        t(**kwargs)
    assert calls == []


def test_inputs_the_graphs_cannot_take_are_refused(flux, counted):
    t, calls = counted
    kwargs = flux_kwargs(flux)
    with pytest.raises(TeaCacheError, match=r"\['controlnet_block_samples'\] are not inputs of the exported"):
        t(**kwargs, controlnet_block_samples=[torch.zeros(1)])
    with pytest.raises(TeaCacheError, match=r"joint_attention_kwargs has \['ip_adapter_image_embeds'\]"):
        t(**kwargs, joint_attention_kwargs={"ip_adapter_image_embeds": [torch.zeros(1)]})
    with pytest.raises(TeaCacheError, match="LoRA scales cannot change a compiled graph"):
        t(**kwargs, joint_attention_kwargs={"scale": 0.5})
    t(**kwargs, joint_attention_kwargs={"scale": 1.0}, controlnet_blocks_repeat=None)  # harmless
    assert calls == ["context", "embed", "blocks", "head"]
