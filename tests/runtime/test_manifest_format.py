"""Manifest format 3 (the default policy and each policy's data) and format-2 artifacts, which
load converted: the same policy, the same decisions, the same checks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.artifact import Artifact
from teacache_trt.manifest import PolicySpec

# A format-2 manifest as teacache-export wrote it before format 3, for the tiny FLUX of
# tests/models/flux.py: the shape as_format_2 must reproduce.
FORMAT_2 = Path(__file__).resolve().parents[1] / "data" / "format2_flux_manifest.json"
STEPS = 8


def as_format_2(data: dict) -> dict:
    """A format-3 manifest's fields the way format 2 wrote them (criterion where signal was)."""
    teacache = data["policy_data"]["teacache"]
    criterion = {"signal": data["signal"]["description"], "coefficients": teacache["coefficients"],
                 "default_threshold": data["policy"]["params"]["threshold"], "forced": teacache["forced"],
                 "clamp": teacache["clamp"], "cached": data["signal"]["cached"], "note": data["signal"]["note"],
                 "previous_coefficients": teacache["history"]}
    out = {}
    for key, value in data.items():
        if key == "signal":
            out["criterion"] = criterion
        elif key not in ("policy", "policy_data"):
            out[key] = value
    out["format_version"] = 2
    return out


def rewrite(art: Path, change) -> None:
    path = art / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def loop(t, ex, steps=STEPS):
    from teacache_trt.families import get_family

    fam = get_family("flux")
    kwargs = fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), ex.spec.POINT, torch.float32, seed=0))
    t.reset(steps)
    latents = kwargs["hidden_states"]
    for i in range(steps):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / steps)
        kwargs["hidden_states"] = latents
        latents = latents - t(return_dict=False, **kwargs)[0] / steps
    return latents


@pytest.fixture(scope="module")
def flux(exported):
    return exported("flux")


def test_format_3_records_the_default_policy_and_teacache_data(flux):
    data = json.loads((flux.art_dir / "manifest.json").read_text())
    assert data["format_version"] == 3 and "criterion" not in data
    assert data["policy"] == {"name": "teacache", "params": {"threshold": 0.4}}
    assert sorted(data["policy_data"]) == ["magcache", "teacache"]
    assert data["policy_data"]["teacache"] == {
        "coefficients": [498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861], "source": "variant FLUX.1",
        "forced": {"first": 1, "last": True, "first_fraction": 0.0}, "accumulate": "raw", "eps": 0.0,
        "clamp": False, "history": []}
    magcache = data["policy_data"]["magcache"]  # the family's published MagCache ratios and settings
    assert magcache["source"] == "MagCache's published ratios for FLUX.1-dev (28 steps)"
    assert (magcache["threshold"], magcache["max_skips"], magcache["retention_ratio"]) == (0.24, 5, 0.1)
    assert len(magcache["mag_ratios"]) == 28 and magcache["mag_ratios"][:2] == [1.0, 1.21094]
    assert data["signal"]["cached"] == ["hidden_states"]


def test_the_format_2_helper_writes_what_format_2_wrote(flux):
    real = json.loads(FORMAT_2.read_text())
    ours = as_format_2(json.loads((flux.art_dir / "manifest.json").read_text()))
    assert list(ours) == list(real) and ours["criterion"] == real["criterion"]


def test_a_format_2_artifact_loads_converted_and_decides_the_same(flux, tmp_path):
    art = flux.copy(tmp_path / "art")

    def old(data):
        data = as_format_2(data)
        data["criterion"]["previous_coefficients"] = [
            {"coefficients": [1.0, 0.0], "variant": "FLUX.1", "replaced_at": "2025-01-01T00:00:00"}]
        return data

    rewrite(art, old)
    manifest = Artifact.open(art).manifest
    assert manifest.format_version == 3
    assert manifest.policy == PolicySpec("teacache", {"threshold": 0.4})
    teacache = manifest.policy_data["teacache"]
    assert teacache["coefficients"] == flux.manifest.policy_data["teacache"]["coefficients"]
    assert teacache["forced"] == {"first": 1, "last": True, "first_fraction": 0.0} and teacache["history"][0]["coefficients"] == [1.0, 0.0]
    for threshold in (0.2, 0.6):
        t2 = teacache_trt.load_transformer(art, threshold=threshold)
        t3 = teacache_trt.load_transformer(flux.art_dir, threshold=threshold)
        assert torch.equal(loop(t2, flux), loop(t3, flux))
        assert t2.stats == t3.stats and t2.stats["skipped_steps"]
    # The first write (teacache-calibrate --restore here) saves format 3, history kept.
    from teacache_trt.tools.calibrate import restore_previous

    assert restore_previous(art) == [1.0, 0.0]
    data = json.loads((art / "manifest.json").read_text())
    assert data["format_version"] == 3 and data["policy_data"]["teacache"]["coefficients"] == [1.0, 0.0]


def crit(**values):
    return lambda d: (d["criterion"].update(values), d)[1]


@pytest.mark.parametrize("change, message", [
    (crit(coefficients=[1.0, math.nan]), r"coefficients \[1.0, nan\] must be a non-empty list of finite numbers"),
    (crit(default_threshold=-0.1), r"threshold -0.1 must be a number >= 0"),
    (crit(clamp="no"), r"clamp 'no' must be True or False"),
    (crit(forced={"first": -1, "last": True, "first_fraction": 0.0}), r"first an integer >= 0"),
    (crit(power=2), r"criterion misses \[\] or has unknown fields \['power'\]"),
    (lambda d: {**d, "criterion": None}, r"criterion is NoneType None, not an object"),
    (lambda d: (d.pop("criterion"), d)[1], r"is missing or has unknown fields \('criterion'\)"),
])
def test_a_bad_format_2_criterion_is_refused_as_before(flux, tmp_path, change, message):
    art = flux.copy(tmp_path / "art")
    rewrite(art, lambda d: change(as_format_2(d)))
    with pytest.raises(TeaCacheError, match=message):
        teacache_trt.load_transformer(art)


def test_format_1_and_unknown_versions_are_refused(flux, tmp_path):
    art = flux.copy(tmp_path / "art")
    rewrite(art, lambda d: {**d, "format_version": 4})
    with pytest.raises(TeaCacheError, match=r"format_version 4; this teacache-trt reads format_version 2 or 3"):
        Artifact.open(art)
