"""Bad input from the command line, the model folder and the manifest: every user error ends as
one ``prog: error:`` line and exit code 2 (a TeaCacheError in the API), never a traceback, and
before any export starts, model loads or graph runs."""
from __future__ import annotations

import json
import math
import os
import re
import shutil

import pytest

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.artifact import Artifact
from teacache_trt.digits import harness
from teacache_trt.export import cli, exporter
from teacache_trt.families import Family
from teacache_trt.tools import bench, calibrate

from faults.helpers import edit_manifest


def one_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def nothing_heavy(monkeypatch):
    """Any export, model load or transformer build fails the test: the option must be refused first."""
    def heavy(*args, **kwargs):
        pytest.fail("heavy work started before the bad value was refused")

    monkeypatch.setattr(Family, "load_model", classmethod(heavy))
    monkeypatch.setattr(exporter, "_export_graphs", heavy)
    monkeypatch.setattr(bench, "load_transformer", heavy)
    monkeypatch.setattr(calibrate, "load_transformer", heavy)
    monkeypatch.setattr(harness, "export_bundled", heavy)
    monkeypatch.setattr(harness, "evaluate", heavy)


# --- command-line options ---------------------------------------------------------------------
OPTION_CASES = [
    ("bench", ["--threads", "3000"], r"--threads: 3000 is out of range: need an integer in \[0, \d+\] .*this machine has"),
    ("bench", ["--threads", "-1"], r"--threads: -1 is out of range"),
    ("bench", ["--steps", "0"], r"--steps: 0 is out of range"),
    ("bench", ["--repeat", "0"], r"--repeat: 0 is out of range"),
    ("bench", ["--thresholds", "nan"], r"--thresholds: threshold 'nan' must be a finite number >= 0"),
    ("bench", ["--thresholds", "0.2,-1"], r"threshold '-1' must be a finite number >= 0"),
    ("bench", ["--thresholds", "abc"], r"threshold 'abc' is not a number"),
    ("bench", ["--device", "bogus"], r"--device: 'bogus' is not a device: use cpu, cuda or cuda:N"),
    ("bench", ["--device", "cuda:7"], r"--device: 'cuda:7': this machine has \d+ CUDA device"),
    ("bench", ["--backend", "tensorflow"], r"--backend: invalid choice: 'tensorflow'"),
    ("bench", ["--axis", "img_seq=0"], r"is not NAME=SIZE \(a positive integer size\)"),
    ("calibrate", ["--order", "0"], r"--order: 0 is out of range: need an integer in \[1, 10\]"),
    ("calibrate", ["--steps", "1"], r"--steps: 1 is out of range"),
    ("calibrate", ["--seeds", "0"], r"--seeds: 0 is out of range"),
    ("calibrate", ["--device", "gpu0"], r"'gpu0' is not a device"),
    ("calibrate", ["--backend", "x"], r"--backend: invalid choice: 'x'"),
    ("calibrate", ["--json", "{file}/calib.json"], r"is a file, not a folder"),
    ("calibrate", ["--json", "{dir}"], r"is a folder: give a file name"),
    ("calibrate", ["--json", "{dir}/" + "c" * 300 + ".json"], r"is 305 bytes long, over the file system's limit of 255"),
    ("calibrate", ["--json", "{dir}/" + "d" * 300 + "/calib.json"], r"is 300 bytes long"),
    ("eval", ["--guidance", "nan"], r"--guidance: 'nan' must be a finite number >= 0"),
    ("eval", ["--guidance", "inf"], r"--guidance: 'inf' must be a finite number"),
    ("eval", ["--steps", "0"], r"--steps: 0 is out of range"),
    ("eval", ["--per-class", "0"], r"--per-class: 0 is out of range"),
    ("eval", ["--per-class", "21"], r"--per-class: 21 is out of range: need an integer in \[1, 20\]"),
    ("eval", ["--upstream", "0.2,nan"], r"--upstream: threshold 'nan' must be a finite number"),
    ("eval", ["--computed", "0,7"], r"--computed: '0,7' must be numbers of computed steps >= 1"),
    ("eval", ["--out", "{file}"], r"is a file, not a folder"),
    ("eval", ["--out", "{dir}/" + "e" * 300], r"is 300 bytes long, over the file system's limit of 255"),
    ("eval", ["--backend", "tf"], r"--backend: invalid choice"),
    ("export", ["{model}", "--out", "{art}", "--precision", "fp64"], r"--precision: invalid choice: 'fp64'"),
    ("export", [], r"give MODEL_DIR and --out ART_DIR to export, --check ART_DIR to verify an export"),
    ("export", ["{model}", "--out", "{art}", "--axis", "img_seq=4:16:100000000000000000000"],
     r"--axis: 100000000000000000000 is larger than any input size: graph dimensions are 32-bit"),
    ("export", ["{model}", "--out", "{art}", "--batch", "1:2:100000000000000000000"], r"--batch: .* is larger than any"),
    ("export", ["{model}"], r"give MODEL_DIR and --out ART_DIR"),
]
MAINS = {"bench": bench.main, "calibrate": calibrate.main, "eval": harness.main, "export": cli.main}
PROGS = {"bench": "teacache-bench", "calibrate": "teacache-calibrate", "eval": "teacache-eval", "export": "teacache-export"}


@pytest.mark.parametrize("tool, args, message", OPTION_CASES,
                         ids=[f"{t}{'_'.join(a)}" for t, a, _ in OPTION_CASES])
def test_bad_option_is_one_line_before_any_work(flux, tmp_path, capsys, nothing_heavy, tool, args, message):
    (tmp_path / "file").write_text("")
    fill = {"file": tmp_path / "file", "dir": tmp_path, "model": flux.model_dir, "art": tmp_path / "art"}
    args = [a.format(**fill) for a in args]
    positional = [str(flux.art_dir)] if tool in ("bench", "calibrate") else []
    with pytest.raises(SystemExit) as exit_:
        MAINS[tool](positional + args)
    assert exit_.value.code == 2
    assert re.search(message, one_line(capsys, PROGS[tool]))


def test_option_errors_leave_nothing_behind(tmp_path, capsys, nothing_heavy):
    with pytest.raises(SystemExit):
        harness.main(["--out", str(tmp_path / "new" / "out"), "--steps", "0"])
    assert not (tmp_path / "new").exists()


# --- values checked when the work starts, still before it --------------------------------------
def test_bench_missing_artifact(tmp_path, capsys, nothing_heavy):
    assert bench.main([str(tmp_path / "nothing")]) == 2
    assert "manifest.json does not exist" in one_line(capsys, "teacache-bench")


def test_calibrate_write_manifest_to_a_read_only_folder(art, mounts, capsys, nothing_heavy):
    ro = mounts.read_only(art)
    assert calibrate.main([str(ro), "--write-manifest"]) == 2
    assert "cannot write into" in one_line(capsys, "teacache-calibrate")


def test_calibrate_json_into_a_read_only_folder(flux, mounts, tmp_path, capsys, nothing_heavy):
    ro = mounts.read_only(tmp_path)
    with pytest.raises(SystemExit):
        calibrate.main([str(flux.art_dir), "--json", str(ro / "calib.json")])
    assert "cannot write into" in one_line(capsys, "teacache-calibrate")


def test_eval_garbage_coefficients_file(tmp_path, capsys, nothing_heavy):
    for text in ("{not json", '{"coefficients": ["abc"]}', '{"coefficients": [NaN, 1]}', "[]"):
        (tmp_path / "c.json").write_text(text)
        assert harness.main(["--out", str(tmp_path / "out"), "--coefficients", str(tmp_path / "c.json")]) == 2
        assert "c.json" in one_line(capsys, "teacache-eval")


# --- the model folder ---------------------------------------------------------------------------
def _config(change):
    def tamper(model):
        config = json.loads((model / "config.json").read_text())
        change(config)
        (model / "config.json").write_text(json.dumps(config))
    return tamper


def _truncate(model):
    weights = model / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _dev_zero(model):
    (model / "config.json").unlink()
    os.symlink("/dev/zero", model / "config.json")


MODEL_CASES = [
    ("garbage-config", lambda m: (m / "config.json").write_text("{not json"), r"cannot read .*config.json"),
    ("list-config", lambda m: (m / "config.json").write_text("[1, 2]"), r"config.json holds a JSON list, not an object"),
    ("null-config", lambda m: (m / "config.json").write_text("null"), r"holds a JSON NoneType, not an object"),
    ("config-dev-zero", _dev_zero, r"holds no config.json"),
    ("wrong-type-value", _config(lambda c: c.update(num_layers="two")), r"config.json of .* one of the wrong type"),
    ("missing-weights", lambda m: (m / "diffusion_pytorch_model.safetensors").unlink(),
     r"cannot load FluxTransformer2DModel from .*complete diffusers checkpoint"),
    ("truncated-weights", _truncate, r"cannot load FluxTransformer2DModel from"),
    ("one-more-layer", _config(lambda c: c.update(num_layers=c["num_layers"] + 1)),
     r"weights in .* do not match its config.json .*missing keys"),
    ("one-layer-fewer", _config(lambda c: c.update(num_single_layers=c["num_single_layers"] - 1)),
     r"do not match its config.json .*unexpected keys"),
]


@pytest.mark.parametrize("tamper, message", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_folder_fails_before_export(flux, tmp_path, capsys, monkeypatch, tamper, message):
    monkeypatch.setattr(exporter, "_export_graphs", lambda *a: pytest.fail("exported a model that does not load"))
    model = shutil.copytree(flux.model_dir, tmp_path / "model")
    tamper(model)
    assert cli.main([str(model), "--out", str(tmp_path / "art"), "--build", "none"]) == 2
    assert re.search(message, one_line(capsys, "teacache-export"))
    assert not (tmp_path / "art" / "manifest.json").exists()


def test_family_module_that_is_not_python_is_named_not_the_config(flux, tmp_path, capsys, nothing_heavy):
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    assert cli.main([str(flux.model_dir), "--out", str(tmp_path / "art"), "--family-module",
                     f"{tmp_path / 'passwd'}:X"]) == 2
    err = one_line(capsys, "teacache-export")
    assert "passwd is not a Python file: give path/to/file.py:ClassName" in err and "config.json" not in err
    assert not (tmp_path / "art").exists()


def test_a_huge_profile_maximum_allocates_nothing(flux):
    """The profile's min/opt/max shapes come from meta tensors: a batch axis up to 10^9 (the
    example inputs at that size would take terabytes) is recorded, not allocated."""
    import copy

    import torch

    graphs = copy.deepcopy(flux.manifest.graphs)
    axes = {**{k: list(v) for k, v in flux.manifest.axes.items()}, "batch": [1, 2, 10**9]}
    exporter.profiles(graphs, flux.family, flux.manifest.config, axes, torch.float32)
    assert graphs["blocks"].profile["hidden"]["max"][0] == 10**9
    assert graphs["blocks"].profile["hidden"]["min"][0] == 1


def test_family_that_contradicts_the_config(flux, tmp_path, capsys, nothing_heavy):
    assert cli.main([str(flux.model_dir), "--out", str(tmp_path / "art"), "--family", "cogvideox"]) == 2
    err = one_line(capsys, "teacache-export")
    assert "--family cogvideox (CogVideoXTransformer3DModel) does not match the model" in err
    assert "config.json says FluxTransformer2DModel" in err
    assert not (tmp_path / "art").exists()


# --- --out ----------------------------------------------------------------------------------------
def test_out_is_a_file(flux, tmp_path, capsys, nothing_heavy):
    (tmp_path / "art").write_text("mine")
    assert cli.main([str(flux.model_dir), "--out", str(tmp_path / "art")]) == 2
    assert "is a file, not a folder" in one_line(capsys, "teacache-export")
    assert (tmp_path / "art").read_text() == "mine"


def test_out_holds_other_files(flux, tmp_path, capsys, nothing_heavy):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text('{"my": "own manifest"}')
    (out / "head.onnx").write_text("my own graph")
    assert cli.main([str(flux.model_dir), "--out", str(out)]) == 2
    assert "is not empty and is not a teacache-trt artifact folder" in one_line(capsys, "teacache-export")
    assert (out / "manifest.json").read_text() == '{"my": "own manifest"}' and (out / "head.onnx").read_text() == "my own graph"


def test_force_writes_into_a_folder_and_keeps_other_files(tmp_path, fast_export):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    (out / "head.onnx").write_text("my own graph")
    with pytest.raises(TeaCacheError, match="pass --force"):
        fast_export(out)
    manifest = fast_export(out, force=True)
    assert (out / "notes.txt").read_text() == "keep" and (out / "head.onnx").read_text() == "my own graph"
    assert Artifact(out, manifest).verify_all() > 0


def test_read_only_out(art, mounts, capsys, nothing_heavy, flux):
    ro = mounts.read_only(art)
    assert cli.main([str(flux.model_dir), "--out", str(ro), "--build", "none"]) == 2
    err = one_line(capsys, "teacache-export")
    assert "Read-only file system" in err and "choose a writable folder" in err


def test_full_disk_keeps_the_previous_artifact(art, mounts, fast_export, tmp_path, flux):
    """A real full disk (a small tmpfs): the export stops with one line, the old artifact stays."""
    from faults.helpers import other_checkpoint

    disk = mounts.small_disk("1600k")  # the artifact (1.1 MB) fits once, not twice
    shutil.copytree(art, disk / "art")
    before = Artifact.open(disk / "art").manifest
    (tmp_path / "b").mkdir()
    other = {g: other_checkpoint(flux.graph(g), tmp_path / "b" / f"{g}.onnx") for g in flux.graph_names}
    with pytest.raises(TeaCacheError, match=r"No space left on device.*free some space"):
        fast_export(disk / "art", graphs_from=other, force=True)
    assert Artifact.open(disk / "art").manifest.content == before.content
    assert Artifact(disk / "art", before).verify_all() > 0
    assert not [n for n in os.listdir(disk / "art") if n.startswith(".staging-")]


# --- the manifest's values ----------------------------------------------------------------------
def teacache(**values):
    """An edit of TeaCache's data (coefficients, forced steps, clamp, ...)."""
    return lambda d: d["policy_data"]["teacache"].update(values)


def default(**values):
    """An edit of the default policy's params (the default threshold)."""
    return lambda d: d["policy"]["params"].update(values)


MANIFEST_CASES = [
    ("coefficients-strings", teacache(coefficients=["abc"]), r"coefficients \['abc'\] must be a non-empty list of finite numbers"),
    ("coefficients-null", teacache(coefficients=None), r"coefficients None must be"),
    ("coefficients-nan", teacache(coefficients=[1.0, math.nan]), r"coefficients \[1.0, nan\] must be"),
    ("coefficients-inf", teacache(coefficients=[math.inf]), r"coefficients \[inf\] must be"),
    ("coefficients-empty", teacache(coefficients=[]), r"coefficients \[\] must be"),
    ("coefficients-bool", teacache(coefficients=[True, 1.0]), r"must be a non-empty list of finite numbers"),
    ("threshold-negative", default(threshold=-0.1), r"threshold -0.1 must be a number >= 0"),
    ("threshold-nan", default(threshold=math.nan), r"threshold nan must be a number >= 0"),
    ("threshold-string", default(threshold="0.3"), r"threshold '0.3' must be"),
    ("clamp-string", teacache(clamp="no"), r"clamp 'no' must be True or False"),
    ("forced-negative", teacache(forced={"first": -1, "last": True, "first_fraction": 0.0}), r"forced steps .* first an integer >= 0"),
    ("forced-fraction", teacache(forced={"first": 1, "last": True, "first_fraction": 2.0}), r"first_fraction in \[0, 1\]"),
    ("accumulate-unknown", teacache(accumulate="sum"), r"accumulate 'sum' must be one of"),
    ("eps-negative", teacache(eps=-1.0), r"eps -1.0 must be a finite number >= 0"),
    ("history-garbage", teacache(history=[{"coefficients": "x"}]), r"history\[0\]: coefficients 'x' must be"),
    ("teacache-unknown-key", teacache(power=2), r"unknown teacache data \['power'\]"),
    ("policy-unknown", lambda d: d["policy"].update(name="magic"), r"default policy 'magic' is unknown"),
    ("policy-param-unknown", default(speed=2), r"takes no parameter\(s\) \['speed'\]"),
    ("policy-null", lambda d: d.update(policy=None), r"policy is NoneType None, not an object"),
    ("policy-data-null", lambda d: d.update(policy_data=None), r"policy_data is NoneType None, not an object"),
    ("profile-unordered", lambda d: d["graphs"]["blocks"]["profile"]["hidden"].update(min=[4, 64, 32]),
     r"blocks graph's profile of 'hidden' .* is not ordered min <= opt <= max"),
    ("profile-ragged", lambda d: d["graphs"]["blocks"]["profile"]["hidden"].update(max=[4, 64]), r"is not ordered"),
    ("axes-unordered", lambda d: d["axes"].update(img_seq=[64, 16, 4]), r"axis img_seq range \[64, 16, 4\] is not \[min, opt, max\]"),
    ("graph-missing", lambda d: d["graphs"].pop("head"), r"lists no 'head' graph"),
    ("unknown-field", lambda d: d.update(extra=1), r"missing or has unknown fields"),
    ("family-not-string", lambda d: d.update(family=["flux"]), r"field 'family' is \['flux'\], not a string"),
    ("files-garbage", lambda d: d["files"].update({"blocks.onnx": {"size": "big"}}), r"files\['blocks.onnx'\] is .* not \{size, sha256\}"),
    ("manifest-list", lambda d: (d.clear(), d.update(format_version=2)), r"missing or has unknown fields"),
]


@pytest.mark.parametrize("change, message", [c[1:] for c in MANIFEST_CASES], ids=[c[0] for c in MANIFEST_CASES])
def test_bad_manifest_value_is_refused_at_load(art, change, message):
    edit_manifest(art, change)
    with pytest.raises(TeaCacheError, match=message):
        teacache_trt.load_transformer(art)


@pytest.mark.parametrize("text, message", [("", "is not valid JSON"), ("[1, 2]", "format_version None"),
                                           ("{" * 100_000, "is not valid JSON")])
def test_manifest_that_is_not_an_object(art, text, message):
    (art / "manifest.json").write_text(text)
    with pytest.raises(TeaCacheError, match=message):
        teacache_trt.load_transformer(art)


def test_manifest_that_is_a_fifo_does_not_hang(art):
    (art / "manifest.json").unlink()
    os.mkfifo(art / "manifest.json")
    with pytest.raises(TeaCacheError, match="not a regular file"):
        teacache_trt.load_transformer(art)


@pytest.mark.parametrize("clamp", ["no", 1, "False"])
def test_clamp_must_be_a_bool(flux, clamp):
    with pytest.raises(TeaCacheError, match=f"clamp {clamp!r} must be True or False"):
        teacache_trt.load_transformer(flux.art_dir, clamp=clamp)
