"""Reduced precision: bf16 exports verify what the CPU can verify and say what it could not."""
from __future__ import annotations

import pytest

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.export.exporter import export_model
from teacache_trt.tools import bench


@pytest.fixture(scope="module")
def bf16_art(exported, tmp_path_factory):
    ex = exported("flux")
    logs = []
    art = tmp_path_factory.mktemp("bf16") / "art"
    manifest = export_model(ex.model_dir, art, precision="bf16", axes=ex.spec.AXES, build="none",
                            log=logs.append)
    return art, manifest, logs


def test_bf16_export_says_what_was_verified(bf16_art):
    art, manifest, logs = bf16_art
    assert manifest.precision == "bf16"
    dtypes = {s.name: s.dtype for s in manifest.graphs["blocks"].inputs}
    assert dtypes["hidden"] == dtypes["temb"] == "bfloat16"  # rotary tables stay fp32, as in the model
    for graph in manifest.graphs.values():
        assert [v["graph_verified"] for v in graph.verification] == [False, False]
        assert all("no bf16 kernels" in v["method"] for v in graph.verification)
    assert all(v["split_vs_model_max_abs"] < 0.1 for v in manifest.graphs["head"].verification)
    assert any("bf16 graphs were not run" in line and "split" in line for line in logs)
    with pytest.raises(TeaCacheError, match="bfloat16, which ONNX Runtime's CPU provider cannot run"):
        teacache_trt.load_transformer(art, backend="onnxruntime", device="cpu")


def test_bench_says_how_to_run_a_bf16_artifact(bf16_art, capsys):
    art, _, _ = bf16_art
    assert bench.main([str(art), "--steps", "2", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert "bf16" in err and "--backend torch" in err and "--device cuda" in err
    # The first way it names runs here.
    res = bench.run_bench(art, backend="torch", steps=2, thresholds=[0.3], warmup=0)
    assert len(res.baseline.computed_steps) == 2 and res.runs[0].steps == 2
