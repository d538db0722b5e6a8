"""Reduced precision: bf16 exports verify what the CPU can verify and say what it could not."""
from __future__ import annotations

import pytest

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.export.exporter import export_model


def test_bf16_export(exported, tmp_path):
    ex = exported("flux")
    manifest = export_model(ex.model_dir, tmp_path / "art", precision="bf16", axes=ex.spec.AXES,
                            build="none", log=lambda m: None)
    assert manifest.precision == "bf16"
    dtypes = {s.name: s.dtype for s in manifest.graphs["blocks"].inputs}
    assert dtypes["hidden"] == dtypes["temb"] == "bfloat16"  # rotary tables stay fp32, as in the model
    for graph in manifest.graphs.values():
        assert [v["graph_verified"] for v in graph.verification] == [False, False]
    assert all(v["split_vs_model_max_abs"] < 0.1 for v in manifest.graphs["head"].verification)
    with pytest.raises(TeaCacheError, match="bfloat16, which ONNX Runtime's CPU provider cannot run"):
        teacache_trt.load_transformer(tmp_path / "art", backend="onnxruntime", device="cpu")
