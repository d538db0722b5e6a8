"""teacache-export: argument checks, re-use of finished artifacts, failed verification."""
from __future__ import annotations

import json
import re
import shlex
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
    assert len(before) == len(ex.graph_names) and before == {p.name: p.stat().st_mtime_ns for p in art.rglob("*.onnx")}


def test_changed_graph_file_is_not_reused(exported, tmp_path):
    from teacache_trt.artifact import Artifact
    from teacache_trt.export.exporter import _reusable

    art = exported("flux").copy(tmp_path / "art")
    manifest = Artifact.open(art).manifest
    key, logs = manifest.export_key, []
    assert _reusable(art, manifest, key, False, logs.append)
    assert not _reusable(art, manifest, key, True, logs.append)
    assert not _reusable(art, manifest, "another-key", False, logs.append)
    with open(Artifact(art, manifest).graph_path("head"), "ab") as f:
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


def test_list_axes_needs_no_out(exported, capsys):
    model_dir = str(exported("flux").model_dir)
    assert cli.main([model_dir, "--list-axes"]) == 0
    out = capsys.readouterr().out
    # Defaults: from one token to the family's maximum, opt at the usual size.
    assert "img_seq=1:4096:8192" in out and "txt_seq=1:512:512" in out
    assert cli.main([model_dir, "--list-axes", "--axis", "img_seq=16:64:256", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "img_seq=16:64:256" in out and "batch=1:1:1" in out and "(fixed in the graphs)" in out


def exit_code(argv) -> int:
    """``cli.main``'s return code, or the code of the exit argparse takes on a usage error."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def test_out_is_required_for_an_export(exported, capsys):
    assert exit_code([str(exported("flux").model_dir)]) == 2
    assert "give MODEL_DIR and --out ART_DIR to export" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--axis", "imgseq=4:16:64"], "family 'flux' has no axis 'imgseq'"),
    (["--axis", "img_seq=4:16"], "argument --axis: '4:16' is not MIN:OPT:MAX"),
    (["--axis", "img_seq"], "--axis 'img_seq' is not NAME=MIN:OPT:MAX"),
    (["--batch", "1:x:2"], "argument --batch: '1:x:2' is not MIN:OPT:MAX"),
    (["--axis", "txt_seq=0:8:16"], "need 1 <= min <= opt <= max"),
])
def test_axis_typos_fail_before_the_model_is_read(exported, tmp_path, capsys, monkeypatch, args, message):
    """One line, exit 2, before the weights are hashed or loaded (the config alone is read)."""
    from teacache_trt.export import exporter
    from teacache_trt.families.base import Family

    def must_not_run(*a, **k):
        raise AssertionError("the weights were read before the axes were checked")

    monkeypatch.setattr(exporter, "weights_hash_of_dir", must_not_run)
    monkeypatch.setattr(Family, "load_model", must_not_run)
    rc = exit_code([str(exported("flux").model_dir), "--out", str(tmp_path / "art"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_batch_of_one_is_static_verified_at_one_and_auto_builds_nothing_without_a_gpu(
        exported, tmp_path, capsys):
    """--batch 1:1:1: the graphs fix batch at 1 and every verified shape lies in the profile;
    --build auto on a machine without a GPU builds nothing and prints how to build."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: --build auto builds engines there")
    ex = exported("flux")
    art = tmp_path / "art"
    rc = cli.main([str(ex.model_dir), "--out", str(art), "--batch", "1:1:1",
                   "--axis", "img_seq=4:16:64", "--axis", "txt_seq=2:8:16"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "batch=1 is fixed in the graphs" in out
    manifest = json.loads((art / "manifest.json").read_text())
    for name, graph in manifest["graphs"].items():
        for row in graph["verification"]:
            assert row["graph_verified"] and row["max_rel"] <= 1e-5, (name, row)
            for axis, size in row["axes"].items():
                lo, _, hi = manifest["axes"][axis]
                assert lo <= size <= hi, (name, axis, size)
    embed_inputs = {s["name"]: s["shape"] for s in manifest["graphs"]["embed"]["inputs"]}
    assert embed_inputs["hidden_states"][0] == 1 and embed_inputs["timestep"] == [1]
    assert not list(art.rglob("*.engine"))
    # The runtime refuses another batch size, naming the fixed size.
    import teacache_trt
    from teacache_trt.families import get_family

    feed = get_family("flux").example_inputs(manifest["config"], {"batch": 2, "img_seq": 16, "txt_seq": 8},
                                             torch.float32)
    transformer = teacache_trt.load_transformer(art, threshold=0)
    transformer.reset(1)
    with pytest.raises(TeaCacheError, match="fixed in the graph, by the model config or by an axis range of 1:1:1"):
        transformer(**feed)
    (line,) = [l for l in out.splitlines() if l.startswith("[build]")]
    assert "no CUDA GPU" in line and "--build tensorrt-rtx" in line and "--axis batch=1:1:1" in line
    # The printed command builds the engines from the same graphs.
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed")
    command = shlex.split(line.split(": ", 2)[-1])
    assert command[0] == "teacache-export"
    assert cli.main(command[1:]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert len(list(art.rglob("*.tensorrt-rtx.*.engine"))) == len(manifest["graphs"])


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
    assert len(graphs_before) == len(ex.graph_names) and graphs_before == {p.name: p.read_bytes() for p in art.rglob("*.onnx")}
    assert not list(art.glob(".staging-*"))


def test_manifest_records_verification(exported):
    manifest = json.loads((exported("flux").art_dir / "manifest.json").read_text())
    for graph in manifest["graphs"]:
        checks = manifest["graphs"][graph]["verification"]
        assert len(checks) == 2 and checks[0]["axes"] != checks[1]["axes"]
        assert all(0 <= c["max_rel"] <= 1e-5 for c in checks)
    assert manifest["policy_data"]["teacache"]["coefficients"][0] == pytest.approx(498.651651)
    assert manifest["versions"]["torch"] and manifest["format_version"] == 3


@pytest.mark.parametrize("value, message", [
    ("1.5,abc", "argument --coefficients: '1.5,abc' is not a comma-separated list of numbers"),
    ("1.5,,2", "is not a comma-separated list of numbers"),
    ("", "is not a comma-separated list of numbers"),
    ("1.5,nan", "every coefficient must be a finite number"),
])
def test_bad_coefficients_fail_before_the_model_is_read(exported, tmp_path, capsys, monkeypatch, value, message):
    from teacache_trt.export import exporter
    from teacache_trt.families.base import Family

    def must_not_run(*a, **k):
        raise AssertionError("the weights were read before --coefficients was checked")

    monkeypatch.setattr(exporter, "weights_hash_of_dir", must_not_run)
    monkeypatch.setattr(Family, "load_model", must_not_run)
    rc = exit_code([str(exported("flux").model_dir), "--out", str(tmp_path / "art"), "--coefficients", value])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("teacache-export: error: ") and message in err
    assert len(err.strip().splitlines()) == 1, err


def test_coefficients_replace_the_variants_and_change_no_graph(exported, tmp_path, capsys):
    import teacache_trt
    from teacache_trt.artifact import Artifact
    from teacache_trt.policies import TeaCache

    ex = exported("flux")
    art = ex.copy(tmp_path / "art")
    graphs = {p.name: p.stat().st_mtime_ns for p in art.rglob("*.onnx")}
    assert cli.main([str(ex.model_dir), "--out", str(art), "--build", "none", *AXES,
                     "--coefficients", "2.5,0.01"]) == 0
    assert "coefficients set to [2.5, 0.01] (no graph changes)" in capsys.readouterr().out
    assert graphs == {p.name: p.stat().st_mtime_ns for p in art.rglob("*.onnx")}
    teacache = Artifact.open(art).manifest.policy_data["teacache"]
    variant = ex.manifest.policy_data["teacache"]
    assert teacache["coefficients"] == [2.5, 0.01] and teacache["source"] == "teacache-export --coefficients"
    assert teacache["history"] == [{"coefficients": variant["coefficients"], "source": "variant FLUX.1"}]
    assert teacache["forced"] == variant["forced"] and teacache["accumulate"] == variant["accumulate"]
    # the artifact's TeaCache is now the one with these coefficients
    t = teacache_trt.load_transformer(art, threshold=0.3)
    assert t._settings().bound.coefficients == (2.5, 0.01)
    assert teacache_trt.load_transformer(ex.art_dir, policy=TeaCache(0.3, [2.5, 0.01]))._settings().bound == \
        t._settings().bound


def test_export_model_takes_coefficients(exported, tmp_path):
    from teacache_trt.export.exporter import export_model

    ex = exported("flux")
    manifest = export_model(None, tmp_path / "art", model=ex.model, axes=ex.spec.AXES, build="none", verify=False,
                            coefficients=(1.0, -0.5, 0.25), log=lambda m: None)
    assert manifest.policy_data["teacache"]["coefficients"] == [1.0, -0.5, 0.25]
    assert manifest.policy_data["teacache"]["history"][0]["source"] == "variant FLUX.1"
    with pytest.raises(TeaCacheError, match=r"--coefficients: coefficients \[\] must be a non-empty list"):
        export_model(None, tmp_path / "other", model=ex.model, coefficients=[], log=lambda m: None)


def test_export_says_its_variant_coefficients_and_relative_errors(exported):
    """What an export chose and how close its graphs came, in its own lines: the family, the
    variant and the TeaCache coefficients with where they come from; per graph the max abs and
    the max relative error against PyTorch."""
    ex = exported("flux")
    coefficients = ex.manifest.policy_data["teacache"]["coefficients"]
    (chosen,) = [line for line in ex.log if line.startswith("[export] family ")]
    assert f"family flux, variant {ex.manifest.variant};" in chosen
    assert f"[{', '.join(f'{c:.4g}' for c in coefficients)}]" in chosen and "(the variant's: " in chosen
    verified = [line for line in ex.log if line.startswith("[verify] ") and " graph vs PyTorch at " in line]
    assert {line.split()[1] for line in verified} == set(ex.graph_names)
    assert all(re.search(r"max abs \S+, max rel \S+", line) for line in verified), verified
