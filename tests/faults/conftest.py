"""Shared pieces of the fault suite: a private copy of the tiny FLUX export, files outside it
that must never change, a graph of another checkpoint, and a fast export for commit tests."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from teacache_trt.manifest import GRAPH_NAMES, load_manifest

from faults.helpers import Outside


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

    template = load_manifest(flux.art_dir)
    source = {g: flux.graph(g) for g in GRAPH_NAMES}

    def fake(fam, model, config, src, variant, precision, dtype, axes, weights_hash, export_key, out,
             verify, log):
        manifest = copy.deepcopy(template)
        manifest.engines, manifest.files, manifest.content = {}, {}, ""
        manifest.export_key, manifest.weights_hash, manifest.source = export_key, weights_hash, str(src)
        for g in GRAPH_NAMES:
            (out / manifest.graphs[g].file).write_bytes(source[g].read_bytes())
            manifest.graphs[g].sha256 = exporter._graph_hash(out / manifest.graphs[g].file)
        return manifest

    monkeypatch.setattr(exporter, "_export_graphs", fake)

    def run(out: Path, graphs_from: dict[str, Path] | None = None, **kwargs):
        source.update(graphs_from or {})
        return exporter.export_model(flux.model_dir, out, axes=flux.spec.AXES, log=lambda m: None,
                                     **{"build": "none", **kwargs})

    return run
