"""A config with a real checkpoint's dimensions exports at default options within a memory
bound: tracing and verification run at small shapes inside the default profile, never at its
real-size opt (CogVideoX1.5-5B's opt asked ONNX Runtime for a 32.5 GB buffer).

CogVideoX1.5-5B is the cheapest family whose real dims prove it: one block is 151 M
parameters (0.6 GB), and its default profile reaches 42 latent frames of 170x170.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from teacache_trt.families import get_family
from teacache_trt.manifest import GRAPH_NAMES

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "real_size_export.py"


def _script():
    spec = importlib.util.spec_from_file_location("real_size_export", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cogvideox15(tmp_path_factory):
    script = _script()
    ((label, family, kwargs),) = script.real_configs({"cogvideox_15"})
    root = tmp_path_factory.mktemp("real")
    params = script.make_model_dir(family, kwargs, str(root / "model"))
    return params, kwargs, script.export_in_child(str(root / "model"), str(root / "art"))


def test_default_export_of_a_real_size_config_fits(cogvideox15):
    params, kwargs, result = cogvideox15
    assert result["error"] is None, result["error"]
    weights_gb = params * 4 / 1e9
    # Measured 2.7 GB (0.6 GB of weights): the model, one graph's copy while it is saved,
    # one ONNX Runtime session.  Verifying at the opt shape would not fit in 24 GB.
    assert result["peak_rss_gb"] < 1.0 + 5 * weights_gb, result["stages"]
    assert [s["stage"] for s in result["stages"]] == [
        "load", "export embed", "export blocks", "export head", "verify PyTorch at point 1",
        "verify PyTorch at point 2", "verify embed graph", "verify blocks graph", "verify head graph",
        "manifest + commit"]


def test_defaults_reach_real_sizes_and_verification_stays_small_inside_them(cogvideox15):
    _, kwargs, result = cogvideox15
    fam = get_family("cogvideox")
    axes = result["axes"]
    assert axes == {a.name: [a.min, a.opt, a.max] for a in fam.axes_for(kwargs)}
    assert axes["frames"] == [2, 22, 42] and axes["width"] == [2, 170, 170]
    for graph in GRAPH_NAMES:
        rows = result["verification"][graph]
        # traced at the smallest sizes >= 2 (distinct), then the profile's minimum
        assert [r["axes"] for r in rows] == [
            {"batch": 2, "frames": 4, "height": 6, "width": 8, "txt_seq": 3},
            {"batch": 1, "frames": 2, "height": 2, "width": 2, "txt_seq": 1}], graph
        assert all(r["graph_verified"] and r["max_rel"] <= 1e-4 for r in rows), rows
