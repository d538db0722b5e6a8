"""--ray local with 2 CPU actors: the same output bytes and result lines (apart from timings)
as a single-process render, written by the driver alone."""
from __future__ import annotations

import json

import pytest

from render_helpers import comparable, latest, results, write_jobs

pytest.importorskip("ray", reason="Ray is an extra: pip install -e '.[ray]'")


def test_local_ray_cluster_matches_a_single_process_render(tmp_path, render_cli, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", 12)
    assert render_cli(jobs, tmp_path / "single", "--batch-size", "3") == 0
    capsys.readouterr()
    assert render_cli(jobs, tmp_path / "ray", "--batch-size", "3", "--ray", "local", "--workers", "2", "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rendered"] == 12 and summary["failed"] == 0
    single, distributed = latest(tmp_path / "single"), latest(tmp_path / "ray")
    assert len(results(tmp_path / "ray")) == 12  # one line per job, however the batches interleaved
    assert {k: comparable(v) for k, v in distributed.items()} == {k: comparable(v) for k, v in single.items()}
    for job_id, line in single.items():
        assert (tmp_path / "ray" / line["output"]).read_bytes() == (tmp_path / "single" / line["output"]).read_bytes()
