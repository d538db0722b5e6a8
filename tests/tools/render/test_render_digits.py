"""teacache-render on the bundled digits model: outputs, results, resume, bad jobs, CLI errors."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from render_helpers import STEPS, latest, pixels, results, write_jobs

from teacache_trt.tools.render.output import OutputDir, sha256_of


@pytest.mark.parametrize("decisions", ["sample", "batch"])
def test_render_writes_images_results_summary_and_sheet(tmp_path, render_cli, capsys, decisions):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6)
    out = tmp_path / "out"
    assert render_cli(jobs, out, "--batch-size", "4", "--decisions", decisions, "--contact-sheet", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == summary["rendered"] == 6 and summary["failed"] == 0 and not summary["interrupted"]
    lines = results(out)
    assert sorted(r["id"] for r in lines) == [f"j{i:03d}" for i in range(6)]
    for r in lines:
        assert r["status"] == "ok" and r["output"] == f"{r['id']}.png"
        assert sha256_of(out / r["output"]) == r["sha256"]
        assert sorted(r["computed_steps"] + r["skipped_steps"]) == list(range(STEPS))
        assert r["computed_steps"][0] == 0 and r["computed_steps"][-1] == STEPS - 1  # forced ends
        assert pixels(out, r["id"]).shape == (16, 16)
    by_id = latest(out)
    assert by_id["j000"]["skipped_steps"] == []  # threshold 0 never skips
    assert by_id["j003"]["skipped_steps"]  # threshold 0.8 skips
    assert summary["mean_computed_steps"] == pytest.approx(sum(len(r["computed_steps"]) for r in lines) / 6, abs=1e-3)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["rendered"] == 6 and "computed_steps" not in saved  # a count has a name of its own
    assert saved["computed_step_count"] == sum(len(r["computed_steps"]) for r in lines) and saved["step_count"] == 6 * STEPS
    assert (out / "contact_sheet.png").is_file()


def test_rerun_skips_finished_jobs_and_redoes_changed_outputs(tmp_path, render_cli, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 5)
    out = tmp_path / "out"
    assert render_cli(jobs, out, "--batch-size", "5") == 0
    first = latest(out)
    assert render_cli(jobs, out, "--batch-size", "5", "--json") == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["already_done"] == 5 and summary["rendered"] == 0 and len(results(out)) == 5
    assert summary["images_per_s"] is None and summary["mean_computed_steps"] is None  # no rate over nothing
    assert render_cli(jobs, out, "--batch-size", "5") == 0
    text = capsys.readouterr().out
    assert "nothing rendered in this run (every job was done before, or failed)" in text and "images/s" not in text
    before = {job_id: pixels(out, job_id) for job_id in ("j001", "j002")}
    (out / "j001.png").write_bytes(b"not the image")
    (out / "j002.png").unlink()
    assert render_cli(jobs, out, "--batch-size", "5", "--json") == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["already_done"] == 3 and summary["rendered"] == 2
    again = latest(out)
    for job_id in ("j001", "j002"):  # redone as a batch of 2 instead of 5: same steps, same image up to rounding
        assert again[job_id]["computed_steps"] == first[job_id]["computed_steps"]
        assert abs(pixels(out, job_id) - before[job_id]).max() <= 2
    assert len(results(out)) == 7


def test_bad_jobs_are_recorded_as_failed_and_the_run_goes_on(tmp_path, render_cli, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 3, extra=[
        "{not json", {"id": "x1", "prompt": "12"}, {"id": "x2", "prompt": "3", "steps": 0},
        {"id": "x3", "prompt": "3", "height": 32}, {"id": "j000", "prompt": "1"}])
    out = tmp_path / "out"
    assert render_cli(jobs, out, "--json") == 1  # some job failed
    summary = json.loads(capsys.readouterr().out)
    assert summary["rendered"] == 3 and summary["failed"] == 5
    by_id = latest(out)
    assert "not a JSON object" in by_id["line:4"]["error"]
    assert "prompt '12' is not a digit" in by_id["x1"]["error"]
    assert "steps=0" in by_id["x2"]["error"]
    assert "unknown field(s) ['height']" in by_id["x3"]["error"]
    assert "already used on line 1" in by_id["line:8"]["error"]
    assert by_id["j000"]["status"] == "ok"  # the duplicate never overwrote the first job's result
    assert all(r["output"] is None for r in by_id.values() if r["status"] == "failed")


def test_a_second_render_into_the_same_folder_refuses(tmp_path, render_cli, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 2)
    out = tmp_path / "out"
    with OutputDir(out):  # a live render holds the folder
        assert render_cli(jobs, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "being rendered by another teacache-render" in err[0]
    assert not (out / "j000.png").exists()


@pytest.mark.parametrize("options, message", [
    (["--batch-size", "0"], "--batch-size: 0 is out of range: need an integer in [1, 1024]"),
    (["--batch-size", "99999999999999999999"], "--batch-size: 99999999999999999999 is out of range"),
    (["--workers", "2"], "--workers 2 runs Ray actors: add --ray local"),
    (["--threshold", "-1"], "--threshold: '-1' must be a finite number >= 0"),
    (["--threshold", "inf"], "--threshold: 'inf' must be a finite number >= 0"),
    (["--device", "meta"], "--device: 'meta' is not a device: use cpu, cuda or cuda:N"),
    (["--fps", "12"], "--fps 12: the model at"),  # the digits model draws images
    (["--coefficients", "upstream", "--policy", "schedule", "--policy-param", "steps=[0]"], "takes no coefficients"),
    (["--model", "/nonexistent"], "is not a folder"),
])
def test_bad_invocations_exit_2_with_one_line(tmp_path, render_cli, capsys, options, message):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 1)
    assert render_cli(jobs, tmp_path / "out", *options) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("teacache-render: error: ") and message in err[0], err
    assert not (tmp_path / "out" / "j000.png").exists()


def test_a_batch_size_above_the_profile_is_capped_with_a_note(tmp_path, render_cli, digits_art, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 3)
    assert render_cli(jobs, tmp_path / "out", "--batch-size", "500", "--artifacts", str(digits_art)) == 0
    err = capsys.readouterr().err
    assert "--batch-size 500 is above the batch profile [1, 200]" in err and "batches of 200" in err
    assert len(results(tmp_path / "out")) == 3


def test_missing_job_file_and_missing_ray(tmp_path, render_cli, capsys, monkeypatch):
    assert render_cli(tmp_path / "none.jsonl", tmp_path / "out") == 2
    assert "job file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    jobs = write_jobs(tmp_path / "jobs.jsonl", 1)
    assert render_cli(jobs, tmp_path / "out", "--ray", "local") == 2
    assert "pip install 'teacache-trt[ray]'" in capsys.readouterr().err


def test_the_bundled_job_file_is_one_hundred_good_digit_jobs():
    from pathlib import Path

    from teacache_trt.digits.driver import DRIVER
    from teacache_trt.tools.render.jobs import Job, JobReader

    model = DRIVER.default_model()
    reader = JobReader(DRIVER.job_fields(model), DRIVER.defaults(model), 0.0, lambda j: DRIVER.check_job(model, j))
    jobs = list(reader.read(Path(__file__).resolve().parents[3] / "digits" / "jobs.jsonl"))
    assert len(jobs) == 100 and all(isinstance(j, Job) for j in jobs)
    assert len({j.threshold for j in jobs}) == 10 and {j.prompt for j in jobs} == set("0123456789")


def test_policy_per_run_and_per_job_and_resume_follows_the_policy(tmp_path, render_cli, capsys):
    schedule = {"name": "schedule", "params": {"steps": [0, 2, 5]}}
    lines = [{"id": "s", "prompt": "1", "seed": 1, "steps": STEPS},  # the run's --policy
             {"id": "t", "prompt": "2", "seed": 2, "steps": STEPS, "policy": "teacache", "threshold": 0.8},
             {"id": "u", "prompt": "3", "seed": 3, "steps": STEPS, "policy": {"name": "schedule", "params": {"steps": [0, 5]}}}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(l) + "\n" for l in lines))
    out = tmp_path / "out"
    options = ["--policy", "schedule", "--policy-param", "steps=[0,2,5]", "--json"]
    assert render_cli(jobs, out, *options) == 0
    by_id = latest(out)
    assert by_id["s"]["computed_steps"] == [0, 2, 5] and by_id["s"]["policy"] == schedule
    assert by_id["u"]["computed_steps"] == [0, 5] and by_id["s"]["threshold"] is None
    assert by_id["t"]["policy"] == {"name": "teacache", "params": {"threshold": 0.8}} and by_id["t"]["skipped_steps"]
    capsys.readouterr()
    # a job whose policy changed is rendered again; the others are done
    lines[2]["policy"]["params"]["steps"] = [0, 4]
    jobs.write_text("".join(json.dumps(l) + "\n" for l in lines))
    assert render_cli(jobs, out, *options) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["already_done"] == 2 and summary["rendered"] == 1
    assert latest(out)["u"]["computed_steps"] == [0, 4]


def test_a_policy_that_never_skips_is_reported_once(tmp_path, render_cli, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 3, thresholds=(1e-9,))
    assert render_cli(jobs, tmp_path / "out", "--batch-size", "1") == 0
    notes = [l for l in capsys.readouterr().err.splitlines() if "never skipped" in l]
    assert len(notes) == 1 and "teacache threshold 1e-09 never skipped" in notes[0] and "try threshold" in notes[0]


def test_a_threshold_for_a_policy_without_one_is_a_bad_job(tmp_path, render_cli):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "prompt": "1", "threshold": 0.2, "policy": {"name": "schedule",
                                                                                      "params": {"steps": [0]}}}) + "\n"
                    + json.dumps({"id": "b", "prompt": "1", "policy": {"name": "teacache", "params": {"eps": -1}}}) + "\n")
    assert render_cli(jobs, tmp_path / "out") == 1
    by_id = latest(tmp_path / "out")
    assert "threshold 0.2 was given, but the policy Schedule(steps=[0]) has none" in by_id["a"]["error"]
    assert "policy: eps -1 must be a finite number >= 0" in by_id["b"]["error"]


@pytest.mark.parametrize("options, message", [
    (["--policy", "nope"], "policy 'nope' is unknown"),
    (["--policy", "teacache", "--policy-param", "threshold=-1"], "threshold -1 must be a number >= 0"),
    (["--policy-param", "threshold=0.2"], "needs --policy NAME"),
    (["--policy", "schedule", "--policy-param", "steps=[0]", "--threshold", "0.2"], "has no threshold"),
])
def test_bad_policy_options_exit_2_before_any_export(tmp_path, capsys, options, message):
    from teacache_trt.tools.render import cli

    jobs = write_jobs(tmp_path / "jobs.jsonl", 1)
    # an empty cache: the first-use export would start if the options were not checked first
    assert cli.main([str(jobs), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                     "--no-progress", *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("teacache-render: error: ") and message in err[-1], err
    assert not (tmp_path / "cache").exists()


def test_a_threshold_means_the_calibrated_set_by_default_and_every_output_says_which(tmp_path, render_cli,
                                                                                     digits_art, capsys):
    """The bundled model's artifact carries its calibration (what teacache-eval's calibrated rows
    use), the upstream FLUX.1 set stays selectable, and results, summary and sheet name the set."""
    from teacache_trt.artifact import Artifact
    from teacache_trt.digits.driver import shipped_calibration
    from teacache_trt.digits.pipeline import DEFAULT_MODEL_DIR
    from teacache_trt.tools.render.sheet import label_lines

    teacache = Artifact.open(digits_art).manifest.policy_data["teacache"]
    assert teacache["coefficients"] == shipped_calibration(DEFAULT_MODEL_DIR)[0]
    assert teacache["source"].startswith("teacache-calibrate --driver digits")
    assert teacache["history"][-1]["source"] == "variant FLUX.1"  # the upstream set, restorable

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "d", "prompt": "3", "seed": 0, "steps": 20, "threshold": 0.1}) + "\n")
    assert render_cli(jobs, tmp_path / "cal", "--json", "--contact-sheet") == 0
    summary = json.loads(capsys.readouterr().out)
    assert render_cli(jobs, tmp_path / "up", "--coefficients", "upstream") == 0
    text = capsys.readouterr().out
    cal, up = latest(tmp_path / "cal")["d"], latest(tmp_path / "up")["d"]
    assert cal["coefficients"] == "calibrated" and len(cal["computed_steps"]) < 15  # the same meaning as eval's rows
    assert up["coefficients"] == "upstream FLUX.1" and len(up["computed_steps"]) == 20  # 0.1 is tiny for FLUX.1's
    assert summary["settings"] == [{"policy": "teacache", "params": {}, "coefficients": "calibrated",
                                    "thresholds": [0.1], "jobs": 1}]
    assert "[render] teacache, coefficients upstream FLUX.1, threshold 0.1: 1 job" in text
    assert label_lines(SimpleNamespace(prompt="3", id="d", steps=20), cal) == [
        "3", "teacache 0.1", "coef. calibrated", f"{len(cal['computed_steps'])}/20 computed"]
    assert (tmp_path / "cal" / "contact_sheet.png").is_file()
