"""Shared pieces of the fault suite: a private copy of the tiny FLUX export, files outside it
that must never change, a graph of another checkpoint, and a fast export for commit tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from teacache_trt.artifact import Artifact

from faults.helpers import Mount, Outside, copying_export


@pytest.fixture
def flux(exported):
    return exported("flux")


@pytest.fixture
def art(flux, tmp_path) -> Path:
    """A private copy of the exported tiny FLUX artifact."""
    return flux.copy(tmp_path / "art")


@pytest.fixture
def outside(tmp_path) -> Outside:
    return Outside(tmp_path / "outside")


@pytest.fixture
def fast_export(monkeypatch, flux):
    """export_model with the ONNX tracing replaced by copies of the session's graphs (or of
    ``graphs_from``): everything around it (lock, reuse, staging, commit, cleanup) is real."""
    from teacache_trt.export import exporter

    def run(out: Path, graphs_from: dict[str, Path] | None = None, **kwargs):
        graphs = {g: flux.graph(g) for g in flux.graph_names}
        graphs.update(graphs_from or {})
        monkeypatch.setattr(exporter, "_export_graphs", copying_export(Artifact.open(flux.art_dir).manifest, graphs))
        return exporter.export_model(flux.model_dir, out, axes=flux.spec.AXES, log=lambda m: None,
                                     **{"build": "none", **kwargs})

    return run


@pytest.fixture
def mounts(tmp_path):
    m = Mount(tmp_path / "mnt")
    yield m
    m.close()
