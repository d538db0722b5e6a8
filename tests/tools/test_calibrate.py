"""teacache-calibrate: the fit recovers known polynomials; the tool runs end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from teacache_trt import TeaCacheError
from teacache_trt.manifest import load_manifest
from teacache_trt.tools import calibrate as C


def synthetic_pairs(coefficients, seeds, n=40, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    pairs = C.Pairs()
    for s in seeds:
        x = rng.uniform(0.01, 0.4, n)
        y = np.polyval(coefficients, x) + noise * rng.standard_normal(n)
        pairs.x += x.tolist(); pairs.y += y.tolist(); pairs.seed += [s] * n
    return pairs


@pytest.mark.parametrize("coefficients", [
    (2.5, 0.01), (-3.0, 4.0, 0.2, 0.001), (12.0, -8.0, 3.0, 0.5, 0.02),
])
def test_fit_recovers_a_known_polynomial(coefficients):
    order = len(coefficients) - 1
    cal = C.calibrate(synthetic_pairs(coefficients, range(6)), range(4), [4, 5], order=order)
    np.testing.assert_allclose(cal.coefficients, coefficients, rtol=1e-6, atol=1e-8)
    assert cal.fit["r2"] == pytest.approx(1.0) and cal.holdout["r2"] == pytest.approx(1.0)
    assert cal.holdout["n"] == 80


def test_noisy_fit_scores_below_one_on_holdout():
    cal = C.calibrate(synthetic_pairs((3.0, 0.1), range(6), noise=0.05), range(4), [4, 5], order=1)
    assert cal.coefficients[0] == pytest.approx(3.0, rel=0.1)
    assert 0.5 < cal.holdout["r2"] < 0.999 and 0.7 < cal.holdout["pearson"] < 1


def test_shape_warnings():
    x = np.linspace(0.0, 1.0, 20)
    assert C.shape_warnings(np.array([1.0, 0.0]), x) == []
    warnings = C.shape_warnings(np.array([-1.0, 0.5]), x)  # decreasing, negative past 0.5
    assert any("decreases" in w for w in warnings) and any("negative" in w for w in warnings)


def test_too_few_pairs():
    with pytest.raises(TeaCacheError, match="cannot fit an order-4 polynomial"):
        C.fit(np.array([0.1, 0.2]), np.array([0.1, 0.2]), 4)


def test_end_to_end_writes_manifest_and_restores(exported, tmp_path, capsys):
    art = exported("flux").copy(tmp_path / "art")
    before = load_manifest(art).policy_data["teacache"]["coefficients"]
    assert C.main([str(art), "--seeds", "3", "--holdout", "1", "--steps", "6", "--order", "2",
                   "--write-manifest"]) == 0
    out = capsys.readouterr().out
    assert "coefficients (numpy.poly1d order)" in out and "held out seeds [3]" in out
    teacache = load_manifest(art).policy_data["teacache"]
    assert len(teacache["coefficients"]) == 3 and teacache["coefficients"] != before
    assert teacache["history"][-1]["coefficients"] == before and "teacache-calibrate" in teacache["source"]
    assert np.isfinite(teacache["coefficients"]).all()
    assert C.main([str(art), "--restore"]) == 0
    assert load_manifest(art).policy_data["teacache"]["coefficients"] == before


def test_residual_target_and_json(exported, tmp_path):
    art = exported("flux").art_dir
    out = tmp_path / "cal.json"
    assert C.main([str(art), "--seeds", "2", "--holdout", "0", "--steps", "6", "--order", "1",
                   "--target", "residual", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["target"] == "residual" and len(data["coefficients"]) == 2
    assert data["fit"]["n"] == 2 * 5  # 6 steps -> 5 consecutive pairs per generation
