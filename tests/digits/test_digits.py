"""The bundled digits model: it really generates digits; calibration and the quality harness
run on it end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from teacache_trt.digits import DigitsPipeline, accuracy, heldout_accuracy
from teacache_trt.digits import harness


def test_shipped_weights_generate_recognisable_digits():
    """At the README's settings (20 steps, guidance 3, 10 digits of each class, seed 0)."""
    pipe = DigitsPipeline.from_pretrained()
    labels = torch.arange(10).repeat_interleave(10)
    images = pipe(labels, num_inference_steps=20, guidance_scale=3.0, seed=0).images
    assert images.shape == (100, 1, 16, 16)
    assert heldout_accuracy() > 0.97  # the judge itself is good on real digits
    assert accuracy(images, labels) >= 0.9


def test_weights_are_small_and_fp16():
    from teacache_trt.digits.pipeline import DEFAULT_MODEL_DIR

    files = [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 10 * 1024 * 1024
    from safetensors.torch import load_file

    state = load_file(DEFAULT_MODEL_DIR / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in state.values()} == {torch.float16}


def test_digits_calibration_driver(digits_art):
    from teacache_trt.digits.calibration import digits_driver
    from teacache_trt.tools.calibrate import run_calibration

    cal = run_calibration(digits_art, digits_driver(steps=6, per_class=1), seeds=2, holdout=1, steps=6,
                          order=1, log=lambda m: None)
    assert cal.fit["n"] == 2 * 2 * 5  # 2 seeds x (cond, uncond) x 5 consecutive pairs
    assert cal.holdout["n"] == 10 and np.isfinite(cal.coefficients).all()
    assert 0 < cal.x_range[0] <= cal.x_range[1]


def test_calibrate_finds_the_digits_driver_through_its_entry_point(digits_art, exported):
    """teacache-calibrate picks the digits pipeline for the bundled model without importing the
    demo: the driver comes from the package's ``teacache_trt.drivers`` entry point."""
    from teacache_trt.artifact import Artifact
    from teacache_trt.tools.drivers import driver_for

    assert driver_for(Artifact.open(digits_art).manifest).name == "digits"
    assert driver_for(Artifact.open(exported("flux").art_dir).manifest) is None  # another FLUX: synthetic


def test_shipped_calibration_is_usable():
    coefficients = harness.load_calibrated()
    assert len(coefficients) == 5 and all(math.isfinite(c) for c in coefficients)


def test_harness_end_to_end(digits_art, tmp_path):
    from teacache_trt import policies

    steps = 8
    lines: list[str] = []
    result = harness.evaluate(digits_art, steps=steps, per_class=1, levels=[3, 5], repeats=2, log=lines.append)
    rows = result["rows"]
    # progress: each phase announced in order, the quality counter's total right from its first line
    phases = [l for l in lines if l.startswith("[eval] phase ")]
    assert [p.split(":")[0] for p in phases] == ["[eval] phase 1/3", "[eval] phase 2/3", "[eval] phase 3/3"]
    counters = [l.split("]")[0].split()[-1] for l in lines if l.startswith("[eval quality ")]
    planned = len(rows) - 1  # every row but the uncached one
    assert counters == [f"{k}/{planned}" for k in range(1, planned + 1)]
    assert f"{planned} quality renders" in phases[1]
    assert sum(l.startswith("[eval timing ") for l in lines) == 2
    by_label = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
        assert 0 < row.computed_steps <= steps and row.wall_s > 0 and row.wall_ratio > 0
        assert row.wall_ratio_range[0] <= row.wall_ratio <= row.wall_ratio_range[1]  # a median of the pairs
        assert 0.0 <= row.accuracy <= 1.0 and -1 <= row.ssim <= 1
        assert row.reliable == (0.5 * row.ideal_ratio <= row.wall_ratio <= 1.1 * row.ideal_ratio)
    (base,) = by_label["uncached"]
    assert base.computed_steps == steps and base.ssim == 1.0 and base.psnr is None
    for label in ("teacache-upstream", "teacache-calibrated", "easycache", "budget", "uniform"):
        assert sorted((r.target, r.reuse) for r in by_label[label]) == [
            (3, "residual"), (3, "taylor"), (5, "residual"), (5, "taylor")]
    assert sorted(r.target for r in by_label["fewer-steps"]) == [3, 5]
    for r in rows:
        if r.label in ("budget", "uniform", "fewer-steps"):
            assert r.computed_steps == r.target and math.isfinite(r.psnr) and r.ssim < 1  # equal compute
    for level in (3, 5):  # one best per level, the highest PSNR among the rows that hit it
        at = [r for r in rows if r.target == level and r.on_target]
        (best,) = [r for r in at if r.best]
        assert best.psnr == max(r.psnr for r in at)
    paths = harness.write_outputs(result, tmp_path / "out")
    data = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert len(data["rows"]) == len(rows) and data["settings"]["steps"] == steps
    assert data["rows"][0]["psnr"] is None and "null" in data["notes"][0]
    for row, want in zip(data["rows"], rows):  # every row names the policy that rebuilds it
        assert policies.make(row["policy"], **row["params"]) == policies.make(want.policy, **want.params)
        assert {"policy", "params", "computed_steps", "psnr", "ssim", "accuracy", "wall_ratio",
                "wall_ratio_range"} <= set(row)
    taylor = [r for r in data["rows"] if r["params"].get("reuse") == "taylor"]
    assert taylor and all(policies.make(r["policy"], **r["params"]).reuse == "taylor" for r in taylor)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["grid_teacache"].is_file() and paths["grid_uncached"].is_file()
    from PIL import Image

    from teacache_trt.digits.pipeline import TITLE_LINE

    for name in ("grid_uncached", "grid_teacache"):  # one digit per row (per_class 1), under a caption
        with Image.open(paths[name]) as grid:
            assert grid.size[0] == 16 * 4 + 2 and grid.size[1] >= 10 * (16 * 4 + 1) + 1 + TITLE_LINE + 2, grid.size
    assert result["captions"]["uncached"] == f"uncached: {steps} of {steps} steps"
    assert "teacache-calibrated (residual, " in result["captions"]["teacache"]
    table = paths["table"].read_text()
    assert table.count("**") == 2 * 2 and "| uniform | taylor |" in table
    assert "median of 2 interleaved repeats" in table and "Load average" in table
    assert "3 computed steps: best caching policy" in table


def test_eval_cli_reports_missing_calibration(digits_art, tmp_path, capsys):
    rc = harness.main(["--art", str(digits_art), "--out", str(tmp_path), "--coefficients", str(tmp_path / "nope.json")])
    assert rc == 2 and "teacache-calibrate" in capsys.readouterr().err


def test_harness_compares_a_policy_given_on_the_command_line(digits_art):
    from teacache_trt.policies import Schedule

    result = harness.evaluate(digits_art, steps=8, per_class=1, levels=[], repeats=1,
                              policy=Schedule.uniform(8, 3), log=lambda m: None)
    rows = {r.label: r for r in result["rows"] if r.label in ("schedule", "uniform", "fewer-steps")}
    assert rows["schedule"].setting == '{"steps":[0,4,7]}' and rows["schedule"].computed_steps == 3.0
    # the same steps as the uniform baseline at that compute: the same images
    assert rows["uniform"].setting == "3" and rows["uniform"].psnr == rows["schedule"].psnr
    assert rows["fewer-steps"].computed_steps == 3.0


def test_eval_help_is_plain_text_with_defaults(capsys):
    with pytest.raises(SystemExit):
        harness.main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out
    for default in ("default out/digits", "default 7,10", "default 20", "default 3", "default 4; at most 20"):
        assert default in " ".join(out.split()), default


@pytest.mark.parametrize("argv, message", [
    (["--policy", "nope"], "policy 'nope' is unknown"),
    (["--policy-param", "threshold=0.2"], "needs --policy NAME"),
    (["--computed", "7,20"], "--computed 20 must be below --steps 20"),
    (["--policy", "teacache", "--policy-param", "clamp=\"yes\""], "clamp 'yes' must be True or False"),
])
def test_eval_refuses_bad_policy_options_before_any_export(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(harness, "export_bundled", lambda *a, **k: pytest.fail("exported before the check"))
    assert harness.main(["--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teacache-eval: error:") and message in err and err.count("\n") == 1, err


def test_eval_refuses_an_unusable_out_or_coefficients_file_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(harness, "export_bundled", lambda *a, **k: pytest.fail("exported before the check"))
    monkeypatch.setattr(harness, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    (tmp_path / "file").write_text("")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    for argv, where in ([["--out", str(tmp_path / "file" / "out")], "file"],
                        [["--out", str(tmp_path / ("x" * 300))], "x" * 20],
                        [["--out", str(tmp_path / "out"), "--coefficients", str(deep)], "deep.json"]):
        try:  # argparse's own checks exit, the later ones return the code
            code = harness.main(argv)
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.startswith("teacache-eval: error:") and err.count("\n") == 1 and where in err, err


def test_training_script_writes_a_loadable_model(tmp_path):
    """Two steps: the script's outputs (the fp16 transformer, scheduler, embedder, info), not its quality."""
    from teacache_trt.digits.train import train

    info = train(str(tmp_path), steps=2, batch_size=4, warmup=1, log_every_s=1e9)
    assert json.loads((tmp_path / "training_info.json").read_text()) == info
    pipe = DigitsPipeline.from_pretrained(tmp_path)
    assert next(pipe.transformer.parameters()).dtype == torch.float32  # saved in fp16, loaded in fp32
    images = pipe(torch.tensor([3]), num_inference_steps=1).images
    assert images.shape == (1, 1, 16, 16) and torch.isfinite(images).all()


def test_a_folder_without_a_model_is_named(tmp_path):
    from teacache_trt.errors import TeaCacheError

    with pytest.raises(TeaCacheError, match="holds no digits model"):
        DigitsPipeline.from_pretrained(tmp_path)
