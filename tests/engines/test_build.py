"""Engines with TensorRT-RTX (ahead of time, no GPU needed), keys, reuse, trtexec files.
Crash safety and cleanup of engine builds: tests/faults/."""
from __future__ import annotations

import pytest

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.artifact import Artifact

pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed (pip install -e '.[test]')")
pytest.importorskip("polygraphy", reason="polygraphy is not installed")

from models import FAMILIES  # noqa: E402
from teacache_trt.engines.build import build_in_place  # noqa: E402


@pytest.fixture(scope="module")
def flux_engines(exported, tmp_path_factory):
    """The tiny FLUX export with TensorRT-RTX engines, in a private folder."""
    art = exported("flux").copy(tmp_path_factory.mktemp("rtx") / "art")
    logs = []
    build_in_place(art, Artifact.open(art).manifest, "tensorrt-rtx", log=logs.append)
    return art, Artifact.open(art).manifest, logs


def test_every_graph_builds(flux_engines):
    art, manifest, logs = flux_engines
    table = manifest.engines["tensorrt-rtx"]
    assert set(table) == set(manifest.graphs)
    for graph, entry in table.items():
        path = Artifact(art, manifest).engine_path("tensorrt-rtx", graph)  # listed, inside, hash checked
        assert path.parent.name == manifest.content and path.stat().st_size > 1000
        assert entry["key"] in entry["file"] and graph in entry["file"]
        assert entry["build_s"] > 0
        assert entry["device"]["sm"]  # built ahead of time for a list of SM targets
    assert any("blocks -> tensorrt-rtx" in line for line in logs)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_graph_of_every_family_builds(exported, tmp_path, name):
    art = exported(name).copy(tmp_path / "art")
    build_in_place(art, Artifact.open(art).manifest, "tensorrt-rtx", log=lambda msg: None)
    manifest = Artifact.open(art).manifest
    assert set(manifest.engines["tensorrt-rtx"]) == set(manifest.graphs)
    for graph in manifest.engines["tensorrt-rtx"]:
        assert Artifact(art, manifest).engine_path("tensorrt-rtx", graph).stat().st_size > 1000, graph


def test_rebuild_reuses_unchanged_engines(flux_engines):
    art, manifest, _ = flux_engines
    logs = []
    before = (art / "manifest.json").read_bytes()
    build_in_place(art, manifest, "tensorrt-rtx", log=logs.append)
    assert (art / "manifest.json").read_bytes() == before  # nothing to commit
    assert sum("is up to date" in line for line in logs) == len(manifest.graphs)


def test_key_changes_with_profile(flux_engines):
    from teacache_trt.engines.build import engine_key

    _, manifest, _ = flux_engines
    before = engine_key(manifest, "blocks", "tensorrt-rtx", "1.7", {"sm": ["8.6"]})
    assert before != engine_key(manifest, "blocks", "tensorrt-rtx", "1.8", {"sm": ["8.6"]})
    assert before != engine_key(manifest, "blocks", "tensorrt", "1.7", {"sm": ["8.6"]})
    assert before != engine_key(manifest, "blocks", "tensorrt-rtx", "1.7", {"sm": ["8.9"]})
    manifest.graphs["blocks"].profile["hidden"]["max"][1] += 1
    try:
        assert before != engine_key(manifest, "blocks", "tensorrt-rtx", "1.7", {"sm": ["8.6"]})
    finally:
        manifest.graphs["blocks"].profile["hidden"]["max"][1] -= 1


def test_truncated_engine_is_a_clear_error(flux_engines, tmp_path):
    import shutil

    art, manifest, _ = flux_engines
    copy = shutil.copytree(art, tmp_path / "art")
    engine = copy / manifest.content / manifest.engines["tensorrt-rtx"]["blocks"]["file"]
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])
    with pytest.raises(TeaCacheError, match=r"blocks.tensorrt-rtx.*has \d+ bytes but the manifest recorded \d+ \(truncated"):
        teacache_trt.load_transformer(copy, backend="tensorrt-rtx", device="cuda")


def test_running_rtx_engines_needs_a_gpu(flux_engines):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU-only error path does not apply")
    art, _, _ = flux_engines
    with pytest.raises(TeaCacheError, match="runs engines on a CUDA GPU.*backend='onnxruntime'"):
        teacache_trt.load_transformer(art, backend="tensorrt-rtx", device="cpu")


def test_trtexec_files(exported):
    ex = exported("flux")
    content = ex.art_dir / ex.manifest.content  # beside the graphs they build
    for graph in ex.graph_names:
        path = content / f"{graph}.trtexec.sh"
        text = path.read_text()
        assert f"--onnx={graph}.onnx" in text and "--stronglyTyped" in text
        assert "--minShapes=" in text and "--maxShapes=" in text and "--shapes=" in text
        assert path.name in ex.manifest.files and path.stat().st_mode & 0o100  # listed, executable
    assert "hidden:4x64x32" in (content / "blocks.trtexec.sh").read_text()  # max batch x max img_seq
