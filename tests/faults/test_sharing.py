"""Artifacts a team can share: every file and folder gets the mode the umask gives (not the
0600 / 0700 of temporary files), and the manifest's source is an absolute path that the torch
backend finds from any folder, or that ``model_dir`` / ``--model-dir`` overrides."""
from __future__ import annotations

import os
import stat

import pytest

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.artifact import Artifact
from teacache_trt.files import atomic_write_bytes
from teacache_trt.tools import bench

from faults.helpers import copying_export, edit_manifest, fake_engine_bytes


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def modes(root):
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


def test_export_and_build_honour_the_umask(tmp_path, fast_export, monkeypatch, umask):
    from teacache_trt.engines import build

    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed")
    monkeypatch.setattr(build, "build_engine_bytes", fake_engine_bytes("x"))
    art = tmp_path / "art"
    manifest = fast_export(art, build="tensorrt-rtx")
    found = modes(art)
    assert any(name.endswith(".engine") for name in found)
    for name, mode in found.items():
        executable = name in (".", manifest.content) or name.endswith(".sh")
        assert mode == (0o777 if executable else 0o666) & ~umask, (name, oct(mode))


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    atomic_write_bytes(tmp_path / "run.sh", b"", mode=0o777)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o777 & ~umask


def test_source_is_absolute_and_found_from_elsewhere(flux, tmp_path, monkeypatch):
    from teacache_trt.export import exporter

    monkeypatch.setattr(exporter, "_export_graphs", copying_export(Artifact.open(flux.art_dir).manifest,
                                                                   {g: flux.graph(g) for g in flux.graph_names}))
    monkeypatch.chdir(flux.model_dir.parent)
    exporter.export_model(flux.model_dir.name, tmp_path / "art", axes=flux.spec.AXES, build="none", log=lambda m: None)
    source = Artifact.open(tmp_path / "art").manifest.source
    assert os.path.isabs(source) and os.path.samefile(source, flux.model_dir)
    monkeypatch.chdir(tmp_path)
    t = teacache_trt.load_transformer(tmp_path / "art", backend="torch")
    assert t.backend == "torch"


def test_moved_source_says_how_to_point_at_it(art, flux, tmp_path):
    edit_manifest(art, lambda d: d.update(source=str(tmp_path / "moved-away")))
    with pytest.raises(TeaCacheError, match=r"manifest's source .*moved-away is not a model folder here: .*--model-dir DIR .*model_dir="):
        teacache_trt.load_transformer(art, backend="torch")
    teacache_trt.load_transformer(art, backend="torch", model_dir=flux.model_dir)
    with pytest.raises(TeaCacheError, match=r"the model_dir given .*nowhere is not a model folder"):
        teacache_trt.load_transformer(art, backend="torch", model_dir=tmp_path / "nowhere")


def test_bench_model_dir_option(art, flux, tmp_path, capsys):
    edit_manifest(art, lambda d: d.update(source=str(tmp_path / "moved-away")))
    assert bench.main([str(art), "--backend", "torch", "--steps", "2"]) == 2
    assert "--model-dir DIR" in capsys.readouterr().err
    assert bench.main([str(art), "--backend", "torch", "--steps", "2", "--model-dir", str(flux.model_dir)]) == 0
