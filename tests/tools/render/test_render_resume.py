"""A job's result depends only on the job: batch neighbours, batch size and resume history
change neither its computed steps nor (beyond rounding) its image; kill -9 at named points
loses at most the batch in flight; SIGINT finishes the batch in flight and exits cleanly."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from render_helpers import comparable, latest, pixels, results, write_jobs

from teacache_trt.tools.render.output import sha256_of

TOLERANCE = 2  # of 255, per pixel: float rounding between different batch shapes
# The 8 jobs (thresholds 0, 0.2, 0.45, 0.8 in turn) in batches of 3, ordered by threshold:
BATCHES = [["j000", "j004", "j001"], ["j005", "j002", "j006"], ["j003", "j007"]]


def test_sample_decisions_do_not_depend_on_batch_neighbours(tmp_path, render_cli):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 8)
    runs = {}
    for name, options in {"alone": ["--batch-size", "1"], "by3": ["--batch-size", "3"],
                          "by8": ["--batch-size", "8"], "by8-again": ["--batch-size", "8"]}.items():
        assert render_cli(jobs, tmp_path / name, *options) == 0
        runs[name] = latest(tmp_path / name)
    largest = 0
    for job_id, alone in runs["alone"].items():
        for name in ("by3", "by8"):
            other = runs[name][job_id]
            assert other["computed_steps"] == alone["computed_steps"], (job_id, name)
            diff = abs(pixels(tmp_path / name, job_id) - pixels(tmp_path / "alone", job_id)).max()
            largest = max(largest, int(diff))
        # the same batch composition gives the same bytes
        assert runs["by8-again"][job_id]["sha256"] == runs["by8"][job_id]["sha256"]
    print(f"largest pixel difference between batch compositions: {largest}/255")
    assert largest <= TOLERANCE
    # the thresholds really differ in what they compute (the comparison above is not vacuous)
    assert len({len(r["computed_steps"]) for r in runs["alone"].values()}) >= 3


# Runs teacache-render in a child process and kills it (-9) or interrupts it (SIGINT) at a
# named point: "in-render K" (the K-th batch is rendering, none of it written), "after-output K"
# (the K-th output file is written, its result line is not), "sigint K" (SIGINT while the K-th
# batch renders).
CHILD = r"""
import os, signal, sys
from teacache_trt.tools.render import cli, output, worker

point, k, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
seen = [0]

def at_kth(real, sig):
    def wrapped(*args, **kwargs):
        seen[0] += 1
        if point == "after-output":
            result = real(*args, **kwargs)
            if seen[0] == k:
                os.kill(os.getpid(), sig)
            return result
        if seen[0] == k:
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)
    return wrapped

if point == "after-output":
    output.OutputDir.write_output = at_kth(output.OutputDir.write_output, signal.SIGKILL)
else:
    sig = signal.SIGINT if point == "sigint" else signal.SIGKILL
    worker.Worker.render = at_kth(worker.Worker.render, sig)
sys.exit(cli.main(argv))
"""


def run_child(point: str, k: int, jobs, out, cache) -> subprocess.CompletedProcess:
    argv = [str(jobs), "--out", str(out), "--cache-dir", str(cache), "--batch-size", "3", "--no-progress"]
    return subprocess.run([sys.executable, "-c", CHILD, point, str(k), *argv], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_cache):
    """An uninterrupted render of the same 8 jobs in batches of 3."""
    from teacache_trt.tools.render import cli

    root = tmp_path_factory.mktemp("reference")
    jobs = write_jobs(root / "jobs.jsonl", 8)
    out = root / "out"
    assert cli.main([str(jobs), "--out", str(out), "--cache-dir", str(digits_cache), "--batch-size", "3",
                     "--no-progress"]) == 0
    return jobs, out


def check_resumed(out, ref_out, redone: set[str]) -> None:
    """Every job ok exactly once; the result lines equal the uninterrupted render's (same
    bytes), except for ``redone`` jobs whose batch lost some members: same computed steps,
    image equal up to rounding."""
    ref = latest(ref_out)
    ok = Counter(r["id"] for r in results(out) if r["status"] == "ok")
    assert ok == Counter({job_id: 1 for job_id in ref}), "a job was lost or done twice"
    final = latest(out)
    for job_id, ref_line in ref.items():
        assert sha256_of(out / final[job_id]["output"]) == final[job_id]["sha256"]
        assert final[job_id]["computed_steps"] == ref_line["computed_steps"]
        if job_id in redone:
            assert abs(pixels(out, job_id) - pixels(ref_out, job_id)).max() <= TOLERANCE
        else:
            assert comparable(final[job_id]) == comparable(ref_line), job_id


def test_kill_9_while_a_batch_renders_loses_only_that_batch(tmp_path, reference, render_cli, digits_cache):
    jobs, ref = reference
    out = tmp_path / "out"
    child = run_child("in-render", 2, jobs, out, digits_cache)
    assert child.returncode == -9, child.stderr
    assert [r["id"] for r in results(out)] == BATCHES[0]  # the first batch, whole
    assert render_cli(jobs, out, "--batch-size", "3") == 0
    check_resumed(out, ref, redone=set())  # the lost batch was redone whole: same bytes as never killed


def test_kill_9_between_an_output_and_its_line_redoes_that_job(tmp_path, reference, render_cli, digits_cache):
    jobs, ref = reference
    out = tmp_path / "out"
    child = run_child("after-output", 5, jobs, out, digits_cache)  # j002.png written, its line not
    assert child.returncode == -9, child.stderr
    assert (out / "j002.png").is_file()
    assert [r["id"] for r in results(out)] == BATCHES[0] + ["j005"]
    assert render_cli(jobs, out, "--batch-size", "3") == 0
    # j002 and j006 are redone as a batch of 2 (j005 finished): same steps, image up to rounding
    check_resumed(out, ref, redone={"j002", "j006"})
    assert len(results(out)) == 8


def test_sigint_finishes_the_batch_in_flight_and_exits_cleanly(tmp_path, reference, render_cli, digits_cache):
    jobs, ref = reference
    out = tmp_path / "out"
    child = run_child("sigint", 2, jobs, out, digits_cache)
    assert child.returncode == 130, child.stderr
    assert "Traceback" not in child.stderr
    assert "SIGINT: stopping after the batch in flight" in child.stderr
    assert "2 left (re-run the same command to resume)" in child.stdout
    assert [r["id"] for r in results(out)] == BATCHES[0] + BATCHES[1]  # whole
    assert render_cli(jobs, out, "--batch-size", "3") == 0
    check_resumed(out, ref, redone=set())
