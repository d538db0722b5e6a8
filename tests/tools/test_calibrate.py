"""teacache-calibrate: the fit recovers known polynomials; the tool runs end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from teacache_trt import TeaCacheError
from teacache_trt.artifact import Artifact
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
    before = Artifact.open(art).manifest.policy_data["teacache"]["coefficients"]
    assert C.main([str(art), "--seeds", "3", "--holdout", "1", "--steps", "6", "--order", "2",
                   "--write-manifest"]) == 0
    out = capsys.readouterr().out
    assert "coefficients (numpy.poly1d order)" in out and "held out seeds [3]" in out
    teacache = Artifact.open(art).manifest.policy_data["teacache"]
    assert len(teacache["coefficients"]) == 3 and teacache["coefficients"] != before
    assert teacache["history"][-1]["coefficients"] == before and "teacache-calibrate" in teacache["source"]
    assert np.isfinite(teacache["coefficients"]).all()
    assert C.main([str(art), "--restore"]) == 0
    assert Artifact.open(art).manifest.policy_data["teacache"]["coefficients"] == before


def test_residual_target_and_json(exported, tmp_path):
    art = exported("flux").art_dir
    out = tmp_path / "cal.json"
    assert C.main([str(art), "--seeds", "2", "--holdout", "0", "--steps", "6", "--order", "1",
                   "--target", "residual", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["target"] == "residual" and len(data["coefficients"]) == 2
    assert data["fit"]["n"] == 2 * 5  # 6 steps -> 5 consecutive pairs per generation


# --- warnings a user must see -----------------------------------------------------------------------
def test_a_poor_fit_warns_with_what_to_do():
    poor = C.calibrate(synthetic_pairs((3.0, 0.1), range(6), noise=0.5), range(4), [4, 5], order=1)
    (warning,) = [w for w in poor.warnings if "R²" in w]
    assert warning.startswith(f"the fit explains little of the change (held-out R² {poor.holdout['r2']:.3g} < 0.9)")
    assert "--seeds" in warning and "--target residual" in warning and "--policy magcache" in warning
    good = C.calibrate(synthetic_pairs((3.0, 0.1), range(6), noise=0.001), range(4), [4, 5], order=1)
    assert not [w for w in good.warnings if "R²" in w]
    no_holdout = C.calibrate(synthetic_pairs((3.0, 0.1), range(6), noise=0.5), range(6), [], order=1)
    assert any("(fit R²" in w for w in no_holdout.warnings)  # scored on the fit seeds when none are held out


def test_a_default_threshold_that_never_skips_is_noted():
    from teacache_trt.policies import TeaCache

    def pairs(x):  # 2 seeds x 2 contexts, 10 steps: one pair per call after the first
        p = C.Pairs()
        for seed in range(2):
            for context in ("cond", "uncond"):
                for step in range(1, 10):
                    p.x.append(x); p.y.append(x); p.seed.append(seed); p.context.append(context); p.step.append(step)
        return p

    policy = TeaCache(0.3, coefficients=(2.0, 0.0))  # poly(x) = 2x against threshold 0.3
    note = C.never_skips_note(pairs(0.2), policy, 10)  # 0.4 at every step: never below 0.3
    assert note == ("at the default threshold 0.3, TeaCache would compute every step of these 4 calibration "
                    "generations (the accumulated change was 0.4 to 0.4, never below it): use a threshold above 0.4 "
                    "(--threshold / --policy-param threshold=...)")
    assert C.never_skips_note(pairs(0.1), policy, 10) is None  # 0.2 < 0.3 skips


def test_teacache_note_from_the_tool(exported, tmp_path, capsys):
    art = exported("flux").art_dir
    assert C.main([str(art), "--seeds", "2", "--holdout", "1", "--steps", "6", "--order", "1",
                   "--json", str(tmp_path / "cal.json")]) == 0
    data = json.loads((tmp_path / "cal.json").read_text())
    assert "notes" in data and all(isinstance(n, str) for n in data["notes"])
    out = capsys.readouterr().out
    assert all(f"note: {n}" in out for n in data["notes"]) and all(f"warning: {w}" in out for w in data["warnings"])


# --- MagCache ---------------------------------------------------------------------------------------
def test_magcache_json_and_manifest_and_restore(exported, tmp_path, capsys):
    from teacache_trt.tools import calibrate_magcache as M

    art = exported("flux").copy(tmp_path / "art")
    published = Artifact.open(art).manifest.policy_data["magcache"]
    out = tmp_path / "mag.json"
    assert C.main([str(art), "--policy", "magcache", "--seeds", "2", "--holdout", "1", "--steps", "6",
                   "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["policy"] == "magcache" and data["steps"] == 6 and data["seeds"] == [0, 1]
    assert sorted(data["mag_ratios"]) == ["default"]  # the synthetic loop names no cache context
    for key in ("mag_ratios", "std", "cos_dis"):
        assert len(data[key]["default"]) == 6
    ratios = data["mag_ratios"]["default"]
    assert ratios[0] == 1.0 and all(0.2 < r < 5 for r in ratios) and len(set(ratios)) > 3
    assert data["holdout_seeds"] == [2] and data["holdout"]["default"] >= 0
    report = capsys.readouterr().out
    assert "computed steps of 6 at max_skips 5, retention_ratio 0.1, by threshold" in report  # FLUX.1-dev's settings
    assert C.main([str(art), "--policy", "magcache", "--seeds", "2", "--holdout", "0", "--steps", "6",
                   "--write-manifest"]) == 0
    magcache = Artifact.open(art).manifest.policy_data["magcache"]
    assert magcache["mag_ratios"] == {"default": ratios} and magcache["steps"] == 6  # same seeds, same ratios
    assert (magcache["threshold"], magcache["max_skips"]) == (published["threshold"], published["max_skips"])
    assert magcache["history"][-1]["source"] == published["source"]
    assert C.main([str(art), "--policy", "magcache", "--restore"]) == 0
    assert Artifact.open(art).manifest.policy_data["magcache"] == {**published, "history": []}
    assert C.main([str(art), "--policy", "magcache", "--restore"]) == 2
    assert "no earlier MagCache ratios" in capsys.readouterr().err
    assert M.UNCACHED.schedule(6, "x") == list(range(6))


def test_magcache_refuses_teacache_options(exported, capsys):
    assert C.main([str(exported("flux").art_dir), "--policy", "magcache", "--target", "residual"]) == 2
    assert "--order and --target shape TeaCache's polynomial" in capsys.readouterr().err


def test_magcache_on_the_digits_model_drives_the_policy(digits_art, tmp_path):
    """Through the digits driver (the real pipeline, cond and uncond contexts): the ratios written
    to the manifest load back and decide a generation as the policy's schedule says."""
    import shutil

    import teacache_trt
    from teacache_trt.digits.pipeline import DigitsPipeline
    from teacache_trt.policies import MagCache

    art = tmp_path / "digits"
    shutil.copytree(digits_art, art)
    assert C.main([str(art), "--policy", "magcache", "--seeds", "2", "--holdout", "1", "--steps", "8",
                   "--write-manifest"]) == 0
    magcache = Artifact.open(art).manifest.policy_data["magcache"]
    assert sorted(magcache["mag_ratios"]) == ["cond", "uncond"] and magcache["steps"] == 8
    assert magcache["mag_ratios"]["cond"] != magcache["mag_ratios"]["uncond"]
    pipe = DigitsPipeline.from_pretrained()
    t = teacache_trt.enable(pipe, art, policy=MagCache(threshold=0.2, max_skips=2, retention_ratio=0.2))
    bound = t._settings().bound
    assert bound.mag_ratios == {c: tuple(v) for c, v in magcache["mag_ratios"].items()}
    pipe([3, 7], num_inference_steps=8, guidance_scale=3.0, seed=0)
    for context in ("cond", "uncond"):
        want = bound.schedule(8, context)
        assert t.stats["contexts"][context]["computed_steps"] == want and len(want) < 8
