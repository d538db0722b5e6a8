"""teacache-render against what a careless or hostile set-up does to it: nothing written outside
--out, nothing of the user's deleted, no stale result counted as done, one bad job never stops
the run, and every invocation error one line with exit code 2 before any export."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from render_helpers import STEPS, UPSTREAM, latest, pixels, results, write_jobs

from teacache_trt.tools.render import cli
from teacache_trt.tools.render.output import LOCK, RESULTS, SHEET, TAG, sha256_of


@pytest.fixture
def render(digits_cache, capsys):
    """render(jobs, out, *options) -> (exit status, stderr lines) of teacache-render on the digits model."""
    def run(jobs: Path, out: Path, *options: str):
        capsys.readouterr()
        code = cli.main([str(jobs), "--out", str(out), "--cache-dir", str(digits_cache), "--no-progress", *options])
        return code, capsys.readouterr().err.strip().splitlines()

    return run


def one_line(err: list[str]) -> str:
    assert len(err) == 1 and err[0].startswith("teacache-render: error: ") and "Traceback" not in err[0], err
    return err[0]


def job_lines(path: Path, lines) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


def digit(job_id: str, prompt: str = "3", **fields) -> dict:
    return {"id": job_id, "prompt": prompt, "seed": 1, "steps": STEPS, "policy": UPSTREAM, **fields}


# --- nothing outside --out is written, nothing of the user's removed -------------------------------------
@pytest.mark.parametrize("name", [LOCK, RESULTS])
def test_own_files_as_symlinks_out_of_out_are_refused(tmp_path, outside, render, name):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside.file, out / name)
    code, err = render(write_jobs(tmp_path / "jobs.jsonl", 2), out)
    assert code == 2 and f"{name} is a symlink (to {outside.file})" in one_line(err)
    assert outside.untouched() and not (out / "j000.png").exists()


def test_the_repair_removes_only_the_renderers_own_temporary_files(tmp_path, render):
    out = tmp_path / "out"
    out.mkdir()
    users = {".notes.tmp": b"my notes", ".draft.v2.tmp": b"my draft", ".a.png.abcdefgh.tmp": b"another tool's"}
    for name, data in users.items():
        (out / name).write_bytes(data)
    (out / f".j000.png.{TAG}abcd_123.tmp").write_bytes(b"half an image")  # a killed render's
    code, _ = render(write_jobs(tmp_path / "jobs.jsonl", 1), out)
    assert code == 0
    assert all((out / name).read_bytes() == data for name, data in users.items())
    assert not (out / f".j000.png.{TAG}abcd_123.tmp").exists()


def test_an_output_name_taken_by_a_symlink_or_fifo_fails_that_job_only(tmp_path, outside, render):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside.file, out / "j000.png")
    os.mkfifo(out / "j001.png")
    code, err = render(write_jobs(tmp_path / "jobs.jsonl", 3), out)
    assert code == 1
    by_id = latest(out)
    assert "j000.png is a symlink" in by_id["j000"]["error"] and "j001.png is a FIFO" in by_id["j001"]["error"]
    assert by_id["j002"]["status"] == "ok" and outside.untouched() and os.path.islink(out / "j000.png")


def test_job_ids_naming_the_renderers_own_files_are_refused(tmp_path, render):
    jobs = job_lines(tmp_path / "jobs.jsonl", [digit("contact_sheet"), digit("summary"), digit("a")])
    out = tmp_path / "out"
    for _ in range(2):  # the sheet never overwrites a job's image, so nothing re-renders for ever
        code, _ = render(jobs, out, "--contact-sheet", "--json")
        assert code == 1
    by_id = latest(out)
    assert "id 'contact_sheet' would name one of the renderer's own files" in by_id["line:1"]["error"]
    assert "id 'summary' would name" in by_id["line:2"]["error"]
    assert [r["id"] for r in results(out) if r["status"] == "ok"] == ["a"]  # rendered once
    assert (out / SHEET).is_file()


# --- a result is keyed by everything that determines it -----------------------------------------------
def test_an_edited_job_or_another_threshold_renders_again(tmp_path, render):
    out = tmp_path / "out"
    jobs = tmp_path / "jobs.jsonl"
    job_lines(jobs, [digit("a", "3"), digit("b", "5", threshold=0.2), {"id": "c", "prompt": "7", "steps": STEPS}])
    assert render(jobs, out, "--contact-sheet")[0] == 0
    first = latest(out)
    assert render(jobs, out)[0] == 0 and len(results(out)) == 3  # unchanged: all done

    job_lines(jobs, [digit("a", "8"), digit("b", "5", threshold=0.2, steps=STEPS + 1),
                     {"id": "c", "prompt": "7", "steps": STEPS}])
    code, err = render(jobs, out, "--contact-sheet")
    assert code == 0 and "2 already done" not in " ".join(err)
    again = latest(out)
    assert again["a"]["sha256"] != first["a"]["sha256"] and again["b"]["steps"] == STEPS + 1
    assert again["c"]["sha256"] == first["c"]["sha256"] and len(results(out)) == 5  # c was done

    assert render(jobs, out, "--threshold", "0.8")[0] == 0  # c takes the run's threshold: made again
    assert latest(out)["c"]["threshold"] == 0.8 and len(results(out)) == 6


def test_artifacts_of_another_checkpoint_are_refused(tmp_path, digits_art, render):
    import torch
    from safetensors.torch import load_file, save_file

    from teacache_trt.digits.pipeline import DEFAULT_MODEL_DIR

    model = shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "model")
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    code, err = render(write_jobs(tmp_path / "jobs.jsonl", 1), tmp_path / "out", "--model", str(model),
                       "--artifacts", str(digits_art))
    line = one_line(err)
    assert code == 2 and "whose weights differ from those of --model" in line and "teacache-export" in line
    assert not (tmp_path / "out" / "j000.png").exists()
    del torch


def test_out_inside_the_model_folder_is_refused(tmp_path, render):
    from teacache_trt.digits.pipeline import DEFAULT_MODEL_DIR

    model = shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "model")
    before = sorted(p.name for p in (model / "transformer").iterdir())
    code, err = render(write_jobs(tmp_path / "jobs.jsonl", 1), model / "transformer", "--model", str(model))
    assert code == 2 and "is inside the model folder" in one_line(err)
    assert sorted(p.name for p in (model / "transformer").iterdir()) == before


def test_results_jsonl_given_as_the_job_file_is_refused(tmp_path, render):
    out = tmp_path / "out"
    assert render(write_jobs(tmp_path / "jobs.jsonl", 2), out)[0] == 0
    before = (out / RESULTS).read_bytes()
    code, err = render(out / RESULTS, out)
    assert code == 2 and "is --out's results.jsonl" in one_line(err)
    assert (out / RESULTS).read_bytes() == before


def test_batch_decisions_resumed_between_the_lines_of_a_batch_decide_as_a_whole(tmp_path, render):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 8, thresholds=(0.45, 0.8))
    ref = tmp_path / "ref"
    options = ["--decisions", "batch", "--batch-size", "4"]
    assert render(jobs, ref, *options)[0] == 0
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    lines = (out / RESULTS).read_text().splitlines(keepends=True)
    (out / RESULTS).write_text("".join(lines[:2]))  # killed after 2 of the first batch's 4 lines
    for r in map(json.loads, lines[2:]):
        (out / r["output"]).unlink()
    assert render(jobs, out, *options)[0] == 0
    want, got = latest(ref), latest(out)
    for job_id, r in want.items():
        assert got[job_id]["computed_steps"] == r["computed_steps"] and got[job_id]["sha256"] == r["sha256"], job_id


# --- one bad job never stops the run; messages stay short -----------------------------------------------
def test_jobs_json_chokes_on_fail_alone_and_huge_values_are_cut(tmp_path, render):
    huge = "7" * 20_000_000  # a 20 MB prompt
    jobs = job_lines(tmp_path / "jobs.jsonl", [
        '{"id": "seed", "prompt": "3", "seed": ' + "9" * 5000 + "}",
        '{"id": "deep", "prompt": "3", "seed": ' + "[" * 2000 + "]" * 2000 + "}",
        '[' * 100_000 + ']' * 100_000,
        {"id": "long", "prompt": huge},
        {"id": "x" * 100_000, "prompt": "3"},
        {"id": "thr", "prompt": "3", "threshold": 10 ** 400},
        {"id": "pol", "prompt": "3", "policy": {"name": "teacache", "params": {"threshold": 10 ** 400}}},
        digit("good"),
    ])
    code, err = render(jobs, tmp_path / "out")
    assert code == 1 and sum(len(l) for l in err) < 20_000 and not any("Traceback" in l for l in err)
    by_id = latest(tmp_path / "out")
    assert by_id["good"]["status"] == "ok"
    assert "not a JSON object (Exceeds the limit" in by_id["line:1"]["error"]
    assert "not a JSON object (nested too deep)" in by_id["line:2"]["error"]
    assert "not a JSON object" in by_id["line:3"]["error"]
    assert "characters)" in by_id["long"]["error"] and "is not a digit" in by_id["long"]["error"]
    assert "is not a usable id" in by_id["line:5"]["error"]
    assert "is not a finite number" in by_id["thr"]["error"] and "int too large" in by_id["pol"]["error"]
    assert (tmp_path / "out" / RESULTS).stat().st_size < 20_000


def test_latents_that_become_nan_fail_the_job_with_the_cause(tmp_path, render):
    jobs = job_lines(tmp_path / "jobs.jsonl", [digit("huge", guidance=1e308), digit("fine", guidance=3.0)])
    code, err = render(jobs, tmp_path / "out", "--batch-size", "3")
    assert code == 1
    by_id = latest(tmp_path / "out")
    for job_id in ("huge",):
        assert by_id[job_id]["status"] == "failed" and "NaN or infinite" in by_id[job_id]["error"], by_id[job_id]
        assert not (tmp_path / "out" / f"{job_id}.png").exists()
    assert by_id["fine"]["status"] == "ok" and pixels(tmp_path / "out", "fine").max() > 0


# --- invocation errors: one line, before any export ---------------------------------------------------
@pytest.mark.parametrize("options", [["--batch-size", "99999999999999999999"], ["--threshold", "inf"],
                                     ["--device", "meta"], ["--out-name-too-long"]])
def test_bad_options_fail_before_any_export_and_leave_no_cache_folder(tmp_path, capsys, options):
    out = tmp_path / "out"
    if options == ["--out-name-too-long"]:
        out, options = tmp_path / ("o" * 300), []
    code = cli.main([str(write_jobs(tmp_path / "jobs.jsonl", 1)), "--out", str(out), "--cache-dir",
                     str(tmp_path / "cache"), "--no-progress", *options])
    assert code == 2 and "teacache-render: error: " in one_line(capsys.readouterr().err.strip().splitlines())
    assert not (tmp_path / "cache").exists() and out.name not in os.listdir(tmp_path)


def test_a_failed_first_use_export_leaves_no_cache_folder(tmp_path, monkeypatch, capsys):
    from teacache_trt.export import exporter

    def broken(*args, **kwargs):
        raise exporter.TeaCacheError("the graph could not be traced: the fix")

    monkeypatch.setattr(exporter, "_export_graphs", broken)
    cache = tmp_path / "cache"
    code = cli.main([str(write_jobs(tmp_path / "jobs.jsonl", 1)), "--out", str(tmp_path / "out"), "--cache-dir",
                     str(cache), "--no-progress"])
    assert code == 2 and "could not be traced" in capsys.readouterr().err
    assert [p for p in cache.iterdir() if p.is_dir()] == []


def test_a_render_waits_for_another_ones_export_of_the_same_model(tmp_path, digits_cache, digits_art):
    """Two first-use renders into different --out: the second waits for the first one's export
    (held here by the lock the first holds while it exports), then uses it."""
    lock = os.open(digits_art.parent / f".{digits_art.name}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    child = subprocess.Popen([sys.executable, "-m", "teacache_trt.tools.render.cli",
                              str(write_jobs(tmp_path / "jobs.jsonl", 1)), "--out", str(tmp_path / "second"),
                              "--cache-dir", str(digits_cache), "--no-progress"], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stderr), daemon=True)
    reader.start()
    try:
        # the child's start-up (imports, the model's config) takes seconds on a loaded machine:
        # release the lock only once it says it waits, so the test sees the wait, not a race
        deadline = time.monotonic() + 240
        while not any("waiting for it" in line for line in lines) and time.monotonic() < deadline:
            assert child.poll() is None, "".join(lines)  # waiting, not failing
            time.sleep(0.2)
        assert any("another process is exporting the model into" in line for line in lines), "".join(lines)
        assert child.poll() is None
    finally:
        os.close(lock)
    assert child.wait(timeout=300) == 0, "".join(lines)
    reader.join(timeout=10)
    assert latest(tmp_path / "second")["j000"]["status"] == "ok"
    assert sorted(p.name for p in digits_cache.iterdir() if p.is_dir()) == [digits_art.name]  # no export of its own


def test_unwritable_out_is_one_line_before_any_export(tmp_path, mounts):
    write_jobs(tmp_path / "jobs.jsonl", 1)
    ro = mounts.read_only(tmp_path)
    code = subprocess.run([sys.executable, "-m", "teacache_trt.tools.render.cli", str(ro / "jobs.jsonl"), "--out",
                           str(ro), "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True)
    assert code.returncode == 2, code.stderr
    assert "cannot write into" in one_line(code.stderr.strip().splitlines())
    assert not (tmp_path / "cache").exists()
    # where the permission check cannot tell (a folder that only looks writable), the lock's own
    # error is the same one line
    from teacache_trt.errors import TeaCacheError
    from teacache_trt.tools.render.output import OutputDir

    with pytest.raises(TeaCacheError, match=r"locking .* failed: Read-only file system .*choose a writable folder"):
        with OutputDir(ro):
            pass


def test_a_full_disk_is_one_line_and_loses_no_finished_job(tmp_path, mounts, digits_cache):
    disk = mounts.small_disk("96k")  # room for the lock, results and a few images, then full
    jobs = write_jobs(tmp_path / "jobs.jsonl", 40)
    run = [sys.executable, "-m", "teacache_trt.tools.render.cli", str(jobs), "--out", str(disk / "out"),
           "--cache-dir", str(digits_cache), "--no-progress", "--batch-size", "4"]
    child = subprocess.run(run, capture_output=True, text=True)
    assert child.returncode == 2, child.stderr
    assert "No space left on device" in child.stderr.strip().splitlines()[-1] and "Traceback" not in child.stderr
    for r in results(disk / "out"):  # every line written names an intact image
        assert sha256_of(disk / "out" / r["output"]) == r["sha256"]
    assert 0 < len(results(disk / "out")) < 40


def test_summary_on_a_full_stdout_is_one_line(tmp_path, digits_cache):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 1)
    with open("/dev/full", "w") as full:
        child = subprocess.run([sys.executable, "-m", "teacache_trt.tools.render.cli", str(jobs), "--out",
                                str(tmp_path / "out"), "--cache-dir", str(digits_cache), "--no-progress", "--json"],
                               stdout=full, stderr=subprocess.PIPE, text=True)
    assert child.returncode == 2 and "Traceback" not in child.stderr and "Exception ignored" not in child.stderr
    assert "writing the summary to stdout failed: No space left on device" in child.stderr.strip().splitlines()[-1]
    assert latest(tmp_path / "out")["j000"]["status"] == "ok"  # the render itself is kept
