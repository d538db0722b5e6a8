"""Job lines: good ones become Jobs with the driver's defaults, every bad one a BadJob whose
message names the value and the fix; batching is the same on every run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from teacache_trt.errors import TeaCacheError
from teacache_trt.tools.render.batching import batch_key, make_batches, pending
from teacache_trt.tools.render.jobs import BadJob, Job, JobReader


def reader(fields=None, check=None):
    def default_check(job):
        if job.prompt == "bad":
            raise TeaCacheError("prompt 'bad' is not drawable: give another")

    return JobReader(fields or {}, {"steps": 20, "guidance": 3.0}, 0.25, check or default_check)


def read(tmp_path: Path, lines, **kwargs):
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return list(reader(**kwargs).read(path))


def test_defaults_and_types(tmp_path):
    (a, b) = read(tmp_path, [{"id": "a", "prompt": "3"},
                             {"id": "b", "prompt": "4", "seed": 7, "steps": 5, "guidance": 1, "threshold": 0}])
    assert a == Job("a", 1, "3", 0, 20, 3.0, 0.25, {}, {"name": "teacache", "params": {"threshold": 0.25}})
    assert b == Job("b", 2, "4", 7, 5, 1.0, 0.0, {}, {"name": "teacache", "params": {"threshold": 0.0}})


@pytest.mark.parametrize("line, words", [
    ("not json", ["line 1", "not a JSON object", "one job per line"]),
    ("[1, 2]", ["JSON list", "write"]),
    ({"prompt": "3"}, ["id None", "names the output file"]),
    ({"id": "../x", "prompt": "3"}, ["'../x'", "letters, digits"]),
    ({"id": "a/b", "prompt": "3"}, ["'a/b'"]),
    ({"id": "a", "prompt": "3", "height": 32}, ["unknown field(s) ['height']", "remove them"]),
    ({"id": "a", "prompt": "3", "steps": 0}, ["steps=0", "[1, 10000]"]),
    ({"id": "a", "prompt": "3", "steps": 2.5}, ["steps 2.5 is not an integer"]),
    ({"id": "a", "prompt": "3", "seed": True}, ["seed True is not an integer"]),
    ({"id": "a", "prompt": "3", "seed": -1}, ["seed=-1"]),
    ({"id": "a", "prompt": "3", "threshold": -0.1}, ["threshold -0.1 is negative", ">= 0"]),
    ({"id": "a", "prompt": "3", "guidance": "high"}, ["guidance 'high' is not a finite number"]),
    ({"id": "a", "prompt": 3}, ["prompt 3 is not a string", "quote it"]),
    ({"id": "a", "prompt": "bad"}, ["prompt 'bad' is not drawable"]),
])
def test_bad_lines_name_the_value_and_the_fix(tmp_path, line, words):
    (job,) = read(tmp_path, [line])
    assert isinstance(job, BadJob) and job.line == 1
    for word in words:
        assert word in job.error, job.error
    # a line without a usable id is recorded under a name no job id can take
    assert job.id == ("a" if isinstance(line, dict) and line.get("id") == "a" else "line:1")


def test_duplicate_ids_fail_after_the_first(tmp_path):
    jobs = read(tmp_path, [{"id": "a", "prompt": "bad"}, {"id": "a", "prompt": "3"}, {"id": "b", "prompt": "3"}])
    assert [type(j) for j in jobs] == [BadJob, BadJob, Job]
    assert jobs[1].id == "line:2" and "already used on line 1" in jobs[1].error


def test_blank_lines_are_not_jobs(tmp_path):
    jobs = read(tmp_path, [{"id": "a", "prompt": "3"}, "", "   ", {"id": "b", "prompt": "3"}])
    assert [j.line for j in jobs] == [1, 4]


def test_path_fields_stay_inside_the_job_folder(tmp_path):
    (tmp_path / "e.safetensors").write_bytes(b"x")
    (tmp_path.parent / "outside.safetensors").write_bytes(b"x")
    fields = {"prompt_embeds": Path, "height": int}
    ok, outside, missing, absolute = read(tmp_path, [
        {"id": "a", "prompt_embeds": "e.safetensors", "height": 64},
        {"id": "b", "prompt_embeds": "../outside.safetensors"},
        {"id": "c", "prompt_embeds": "nope.safetensors"},
        {"id": "d", "prompt_embeds": str(tmp_path.parent / "outside.safetensors")},
    ], fields=fields, check=lambda job: None)
    assert ok.extra == {"prompt_embeds": (tmp_path / "e.safetensors").resolve(), "height": 64}
    assert "points outside the job file's folder" in outside.error
    assert "does not exist" in missing.error
    assert "points outside" in absolute.error


def test_missing_job_file_is_an_error(tmp_path):
    with pytest.raises(TeaCacheError, match="does not exist"):
        list(reader().read(tmp_path / "none.jsonl"))


def _jobs(thresholds, steps=None):
    return [Job(f"j{i}", i + 1, "3", i, (steps or [20] * len(thresholds))[i], 3.0, t)
            for i, t in enumerate(thresholds)]


def test_batches_group_compatible_jobs_by_threshold_then_file_order():
    jobs = _jobs([0.1, 0.2, 0.1, 0.2, 0.1], steps=[20, 20, 8, 20, 20])
    key = batch_key(lambda j: (j.steps, j.guidance), "sample")
    assert [[j.id for j in b] for b in make_batches(jobs, key, 2)] == [["j0", "j4"], ["j1", "j3"], ["j2"]]
    # one decision per batch: the threshold joins the key
    key = batch_key(lambda j: (j.steps, j.guidance), "batch")
    assert [[j.id for j in b] for b in make_batches(jobs, key, 2)] == [["j0", "j4"], ["j1", "j3"], ["j2"]]


def test_pending_keeps_the_batch_composition_of_unfinished_batches():
    batches = make_batches(_jobs([0.1] * 5), lambda j: 0, 2)  # j0 j1 | j2 j3 | j4
    assert [[j.id for j in b] for b in pending(batches, {"j0", "j1", "j3"})] == [["j2"], ["j4"]]
