"""Crash safety: a kill -9 at every commit stage of an export and of an engine build leaves
the folder with one complete artifact, the old or the new, never a mix; the next run removes
what the killed one left (staging folders, unreferenced content folders, superseded engines).

The kills are real (SIGKILL in a child process, at the stages named in teacache_trt.faults);
the child runs the real export_model with the tracing and the TensorRT builder replaced by
copies (faults/driver.py), so each case costs a process start, not an export.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from teacache_trt import artifact
from teacache_trt.artifact import Artifact
from teacache_trt.faults import VARIABLE
from teacache_trt.manifest import graph_names

from faults.helpers import edit_manifest, fake_engine_bytes, other_checkpoint

pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed (pip install -e '.[test]')")

TESTS = Path(__file__).resolve().parents[1]


def graph_shas(art: Path) -> dict[str, str]:
    m = Artifact.open(art).manifest
    return {g: m.files[m.graphs[g].file]["sha256"] for g in graph_names(m.graphs)}


def engine_files(art: Path) -> set[str]:
    return {e["file"] for t in Artifact.open(art).manifest.engines.values() for e in t.values()}


def run_child(flux, art, tmp_path, fault, graphs, build="none", force=False, tag="new"):
    spec = {"tests": str(TESTS), "template": str(flux.art_dir), "graphs": {g: str(p) for g, p in graphs.items()},
            "engine_tag": tag, "model_dir": str(flux.model_dir), "art": str(art),
            "axes": {k: list(v) for k, v in flux.spec.AXES.items()}, "build": build, "force": force}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, VARIABLE: fault or ""}
    return subprocess.run([sys.executable, str(TESTS / "faults" / "driver.py"), str(tmp_path / "spec.json")],
                          env=env, capture_output=True, text=True, timeout=300)


def assert_one_complete_artifact(art: Path) -> None:
    manifest = Artifact.open(art).manifest
    assert Artifact(art, manifest).verify_all() > 0  # every file named is there, whole, as recorded


def assert_clean(art: Path) -> None:
    manifest = Artifact.open(art).manifest
    assert sorted(os.listdir(art)) == sorted([".lock", "manifest.json", manifest.content])
    assert set(os.listdir(art / manifest.content)) == set(manifest.files)


@pytest.fixture
def graphs_b(flux, tmp_path):
    """The graphs of another checkpoint: what the re-export writes."""
    (tmp_path / "b").mkdir()
    return {g: other_checkpoint(flux.graph(g), tmp_path / "b" / f"{g}.onnx") for g in flux.graph_names}


# stage -> which artifact the folder holds after the kill, and what the dead run left behind
EXPORT_STAGES = [
    ("export:staged", "old", lambda art: any(n.startswith(".staging-") for n in os.listdir(art))),
    ("export:renamed", "old", lambda art: sum(n.startswith("v-") for n in os.listdir(art)) == 2),
    ("write:manifest.json", "old", lambda art: any(n.startswith(".manifest.json.") for n in os.listdir(art))),
    ("export:committed", "new", lambda art: sum(n.startswith("v-") for n in os.listdir(art)) == 2),
]


@pytest.mark.parametrize("stage, holds, leftover", EXPORT_STAGES, ids=[s[0] for s in EXPORT_STAGES])
def test_kill_during_reexport(flux, art, tmp_path, graphs_b, fast_export, stage, holds, leftover):
    old = graph_shas(art)
    result = run_child(flux, art, tmp_path, stage, graphs_b, force=True)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    assert leftover(art)  # the kill hit where it was meant to
    assert_one_complete_artifact(art)
    now = graph_shas(art)
    assert now == old if holds == "old" else all(now[g] != old[g] for g in old)
    fast_export(art, graphs_from=graphs_b if holds == "new" else None)  # the next run
    assert graph_shas(art) == now  # an up-to-date artifact is kept, not rebuilt
    assert_clean(art)


def test_completed_reexport_switches_and_cleans(flux, art, tmp_path, graphs_b):
    old = graph_shas(art)
    result = run_child(flux, art, tmp_path, None, graphs_b, force=True)
    assert result.returncode == 0, result.stderr
    assert all(graph_shas(art)[g] != old[g] for g in old)
    assert_clean(art)


@pytest.fixture
def art_with_engines(art, monkeypatch):
    """The artifact with committed (stand-in) engines whose keys are stale, as after a
    TensorRT upgrade: the next teacache-export --build rebuilds them in place."""
    from teacache_trt.engines import build

    monkeypatch.setattr(build, "build_engine_bytes", fake_engine_bytes("old"))
    build.build_in_place(art, Artifact.open(art).manifest, "tensorrt-rtx", log=lambda m: None)
    edit_manifest(art, lambda d: [e.update(key="stale") for e in d["engines"]["tensorrt-rtx"].values()])
    return art


BUILD_STAGES = [("build:written", "old"), ("write:manifest.json", "old"), ("build:committed", "new")]


@pytest.mark.parametrize("stage, holds", BUILD_STAGES, ids=[s[0] for s in BUILD_STAGES])
def test_kill_during_engine_build(flux, art_with_engines, tmp_path, fast_export, stage, holds):
    art = art_with_engines
    old_engines, graphs = engine_files(art), graph_shas(art)
    result = run_child(flux, art, tmp_path, stage, {g: flux.graph(g) for g in flux.graph_names}, build="tensorrt-rtx")
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    content = art / Artifact.open(art).manifest.content
    assert len([n for n in os.listdir(content) if n.endswith(".engine")]) == 2 * len(flux.graph_names)  # both sets on disk
    assert_one_complete_artifact(art)
    assert graph_shas(art) == graphs
    now = engine_files(art)
    assert now == old_engines if holds == "old" else not (now & old_engines)
    fast_export(art)  # the next run: graphs up to date, superseded or orphaned engines removed
    assert engine_files(art) == now
    assert_clean(art)


def test_a_second_writer_is_refused_at_once(art, fast_export):
    with artifact.writing(art):
        with pytest.raises(Exception, match="another process is writing to"):
            fast_export(art)
