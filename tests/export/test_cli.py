"""teacache-export: argument checks, re-use of finished artifacts, failed verification."""
from __future__ import annotations

import json
import shutil

import pytest

from teacache_trt import TeaCacheError
from teacache_trt.export import cli
from teacache_trt.families import find_model_dir

AXES = ["--axis", "img_seq=4:16:64", "--axis", "txt_seq=2:8:16", "--batch", "1:2:4"]


def test_rerun_reuses_finished_artifacts(exported, tmp_path, capsys):
    ex = exported("flux")
    art = ex.copy(tmp_path / "art")
    before = {p.name: p.stat().st_mtime_ns for p in art.rglob("*.onnx")}
    assert cli.main([str(ex.model_dir), "--out", str(art), "--build", "none", *AXES]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert len(before) == 3 and before == {p.name: p.stat().st_mtime_ns for p in art.rglob("*.onnx")}


def test_changed_graph_file_is_not_reused(exported, tmp_path):
    from teacache_trt.export.exporter import _reusable
    from teacache_trt.manifest import load_manifest

    art = exported("flux").copy(tmp_path / "art")
    manifest = load_manifest(art)
    key, logs = manifest.export_key, []
    assert _reusable(art, manifest, key, False, logs.append)
    assert not _reusable(art, manifest, key, True, logs.append)
    assert not _reusable(art, manifest, "another-key", False, logs.append)
    with open(manifest.graph_path(art, "head"), "ab") as f:
        f.write(b"\0")
    assert not _reusable(art, manifest, key, False, logs.append)
    assert "head.onnx" in logs[-1] and "exporting again" in logs[-1]


@pytest.mark.parametrize("args, message", [
    (["--family", "sdxl"], "unknown model family 'sdxl'"),
    (["--axis", "img_seq=64:16:4"], "img_seq=64:16:4 is not ordered"),
    (["--axis", "frames=1:2:3"], "family 'flux' has no axis 'frames'"),
    (["--variant", "FLUX.2"], "variant 'FLUX.2' is unknown for family flux"),
    (["--build", "tensorrt"], "--build tensorrt"),
])
def test_bad_arguments_fail_clearly(exported, tmp_path, capsys, args, message):
    ex = exported("flux")
    rc = cli.main([str(ex.model_dir), "--out", str(tmp_path / "art"), *args])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "art" / "manifest.json").exists()


def test_not_a_model_folder(tmp_path, capsys):
    assert cli.main([str(tmp_path), "--out", str(tmp_path / "art")]) == 2
    assert "holds no config.json and no transformer/config.json" in capsys.readouterr().err


def test_pipeline_folder_is_found(exported, tmp_path):
    ex = exported("flux")
    shutil.copytree(ex.model_dir, tmp_path / "pipe" / "transformer")
    assert find_model_dir(tmp_path / "pipe") == tmp_path / "pipe" / "transformer"


def test_list_axes(exported, capsys):
    assert cli.main([str(exported("flux").model_dir), "--out", "unused", "--list-axes"]) == 0
    out = capsys.readouterr().out
    assert "img_seq=256:1024:4096" in out and "txt_seq=" in out


def test_failed_verification_keeps_the_previous_artifacts(exported, tmp_path, monkeypatch):
    """A tolerance exceeded stops the export with the output's name, and the old set survives."""
    from teacache_trt.export import verify

    ex = exported("flux")
    art = ex.copy(tmp_path / "art")
    manifest_before = (art / "manifest.json").read_text()
    graphs_before = {p.name: p.read_bytes() for p in art.rglob("*.onnx")}
    monkeypatch.setitem(verify.TOLERANCES, "fp32", (0.0, 0.0))
    with pytest.raises(TeaCacheError, match=r"differs from PyTorch by .* tolerance for fp32"):
        from teacache_trt.export.exporter import export_model

        export_model(ex.model_dir, art, axes=ex.spec.AXES, build="none", force=True, log=lambda m: None)
    assert (art / "manifest.json").read_text() == manifest_before
    assert len(graphs_before) == 3 and graphs_before == {p.name: p.read_bytes() for p in art.rglob("*.onnx")}
    assert not list(art.glob(".staging-*"))


def test_manifest_records_verification(exported):
    manifest = json.loads((exported("flux").art_dir / "manifest.json").read_text())
    for graph in ("embed", "blocks", "head"):
        checks = manifest["graphs"][graph]["verification"]
        assert len(checks) == 2 and checks[0]["axes"] != checks[1]["axes"]
        assert all(0 <= c["max_rel"] <= 1e-5 for c in checks)
    assert manifest["criterion"]["coefficients"][0] == pytest.approx(498.651651)
    assert manifest["versions"]["torch"] and manifest["format_version"] == 2
