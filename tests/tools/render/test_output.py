"""The output folder: one render at a time, a killed run's lock never blocks, a cut line and
temporary files are cleaned up, and only outputs with the recorded hash count as finished."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from teacache_trt.errors import TeaCacheError
from teacache_trt.tools.render.output import LOCK, RESULTS, TAG, OutputDir

HOLD = """
import sys, time
from teacache_trt.tools.render.output import OutputDir
with OutputDir(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_render_refuses_while_the_first_lives(tmp_path):
    with OutputDir(tmp_path):
        with pytest.raises(TeaCacheError, match=rf"being rendered by another teacache-render \(pid {os.getpid()}\)"):
            with OutputDir(tmp_path):
                pass
    with OutputDir(tmp_path):  # released on exit
        pass


def test_a_lock_left_by_a_killed_run_never_blocks(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(TeaCacheError, match=f"pid {proc.pid}"):
            OutputDir(tmp_path).__enter__()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / LOCK).is_file()  # the file stays behind ...
    with OutputDir(tmp_path):  # ... and does not block
        assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())


def test_a_cut_line_and_temporary_files_are_removed(tmp_path):
    good = json.dumps({"id": "a", "status": "ok", "output": "a.png", "sha256": "x"}) + "\n"
    (tmp_path / RESULTS).write_text(good + '{"id": "b", "sta')
    ours = f".b.png.{TAG}k2j3ab_9.tmp"  # what atomic_write_bytes(..., tag=TAG) leaves when killed
    (tmp_path / ours).write_bytes(b"half")
    users = ["keep.tmp", ".notes.tmp", ".draft.v2.tmp", ".b.png.k2j3ab_9.tmp"]  # the user's own, or another writer's
    for name in users:
        (tmp_path / name).write_bytes(b"not ours")
    with OutputDir(tmp_path) as out:
        assert (tmp_path / RESULTS).read_text() == good
        assert not (tmp_path / ours).exists()
        assert all((tmp_path / name).read_bytes() == b"not ours" for name in users)
        out.append([{"id": "b", "status": "failed"}])
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert [json.loads(l)["id"] for l in lines] == ["a", "b"]


def test_finished_means_ok_and_the_recorded_hash(tmp_path):
    with OutputDir(tmp_path) as out:
        records = []
        for name in "abcd":
            sha = out.write_output(f"{name}.png", name.encode())
            records.append({"id": name, "status": "ok", "output": f"{name}.png", "sha256": sha})
        records.append({"id": "c", "status": "failed", "output": None})  # the last line of an id wins
        records.append({"id": "e", "status": "ok", "output": "../a.png", "sha256": records[0]["sha256"]})
        out.append(records)
        (tmp_path / "b.png").write_bytes(b"changed")
        (tmp_path / "d.png").unlink()
        assert out.finished(out.results()) == {"a"}
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_results_lines_are_fsynced_one_by_one(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(time.perf_counter()), real_fsync(fd)))
    with OutputDir(tmp_path) as out:
        out.append([{"id": "a"}, {"id": "b"}, {"id": "c"}])
    assert len(synced) == 3


# --- the renderer's own files are never followed out of --out --------------------------------------
@pytest.mark.parametrize("name", [LOCK, RESULTS])
def test_a_symlink_in_place_of_the_lock_or_results_is_refused(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("line 1\nthe user's last line, no newline")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / name)
    with pytest.raises(TeaCacheError, match=rf"{re.escape(name)} is a symlink \(to {re.escape(str(victim))}\).*remove it"):
        with OutputDir(out):
            pass
    assert victim.read_text() == "line 1\nthe user's last line, no newline"  # not truncated, not overwritten


def test_a_fifo_in_place_of_the_results_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / RESULTS)
    with pytest.raises(TeaCacheError, match="is a FIFO or device"):
        with OutputDir(tmp_path):
            pass


def test_an_output_name_taken_by_a_symlink_is_refused(tmp_path):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"mine")
    out = tmp_path / "out"
    with OutputDir(out) as o:
        os.symlink(victim, out / "a.png")
        with pytest.raises(TeaCacheError, match="a.png is a symlink"):
            o.write_output("a.png", b"png")
    assert victim.read_bytes() == b"mine" and os.path.islink(out / "a.png")
