"""The budget search (teacache-calibrate --policy budget) and the --target-steps suggestions:
the path search is exact, the CLI writes what the runtime then computes, and a suggested
threshold replays to its number of computed steps."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.artifact import Artifact
from teacache_trt.policies import Budget, TeaCache
from teacache_trt.tools import budget_search as B
from teacache_trt.tools import calibrate as C


def brute(w, n, key):
    steps = w.shape[0]
    return min(([0, *rest] for rest in itertools.combinations(range(1, steps), n - 1)), key=key)


def largest(w, path):
    nodes = [*path, w.shape[0]]
    return max([w[a, b] for a, b in zip(nodes, nodes[1:]) if b > a + 1], default=0.0)


@pytest.mark.parametrize("seed", range(40))
def test_the_path_search_is_exact_for_both_objectives(seed):
    rng = np.random.default_rng(seed)
    steps = int(rng.integers(2, 9))
    w = rng.random((steps, steps + 1))
    n = int(rng.integers(1, steps + 1))
    got = B.best_path(w, n)
    assert len(got) == n and got[0] == 0 and got == sorted(set(got))
    assert B.path_error(w, got) == pytest.approx(B.path_error(w, brute(w, n, lambda p: B.path_error(w, p))))
    mm = B.best_path(w, n, "minimax")
    want = brute(w, n, lambda p: (largest(w, p), B.path_error(w, p)))
    assert (largest(w, mm), B.path_error(w, mm)) == pytest.approx((largest(w, want), B.path_error(w, want)))


def test_unmeasured_edges_are_never_taken_and_bad_input_is_refused():
    w = np.full((4, 5), np.nan)
    w[0, 2] = w[2, 4] = 1.0
    assert B.best_path(w, 2) == [0, 2]
    with pytest.raises(TeaCacheError, match="no schedule of 1 calls in 4 uses only measured edges"):
        B.best_path(w, 1)
    with pytest.raises(TeaCacheError, match="budget n=5 must be 1 to 4"):
        B.best_path(w, 5)
    with pytest.raises(TeaCacheError, match=r"shape \(4, 4\) must be \(N, N\+1\)"):
        B.best_path(np.zeros((4, 4)), 2)


def test_calibrate_budget_writes_the_search_and_suggests_settings(exported, tmp_path, capsys):
    art = exported("flux").copy(tmp_path / "art")
    assert C.main([str(art), "--policy", "budget", "--steps", "5", "--seeds", "1", "--budget", "3", "--budget", "2",
                   "--target-steps", "3", "--write-manifest"]) == 0
    out = capsys.readouterr().out
    assert "budget search over 5 calls (1 seed(s), contexts default, objective sum" in out
    assert "n=2 " in out and "n=3 " in out and "settings for 3 computed steps of 5" in out
    entry = Artifact.open(art).manifest.policy_data["budget"]["searches"]["5"]
    assert sorted(entry["schedules"]["residual"]) == ["2", "3"] and len(entry["errors"]["residual"]) == 5
    assert entry["source"].startswith("teacache-calibrate --policy budget (1 seed(s) from 0")
    t = teacache_trt.load_transformer(art, policy=Budget(3))
    assert list(t.policy.bind(t._artifact).schedule(5, "default")) == entry["schedules"]["residual"]["3"]["default"]


def test_calibrate_json_is_strict_and_its_suggestions_rebuild_policies(exported, tmp_path):
    art = exported("flux").copy(tmp_path / "art")
    path = tmp_path / "search.json"
    assert C.main([str(art), "--policy", "budget", "--steps", "6", "--seeds", "1", "--target-steps", "2,4",
                   "--reuse", "residual,taylor", "--json", str(path)]) == 0
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))
    assert sorted(data["schedules"]) == ["residual", "taylor"] and sorted(data["errors"]) == ["residual", "taylor"]
    assert sorted(data["schedules"]["taylor"], key=int) == ["2", "3", "4", "5"]  # every n by default
    assert B.read_json(path).schedules["taylor"][4] == data["schedules"]["taylor"]["4"]
    for target in ("2", "4"):
        teacache, budget = data["suggestions"][target]["teacache"], data["suggestions"][target]["budget"]
        assert budget == {"params": {"n": int(target)}, "computed_steps": float(target),
                          "steps": data["schedules"]["residual"][target]}
        lo, hi = teacache["threshold_range"]
        assert lo <= teacache["params"]["threshold"] <= hi
        assert teacache["computed_steps"] == float(target)  # replayed: the tiny FLUX reaches both
        TeaCache(**teacache["params"])  # what make takes


def test_teacache_calibration_suggests_a_threshold_that_renders_at_its_steps(exported, tmp_path):
    """The suggestion replays the uncached run; a real render computes within one step of it."""
    from teacache_trt.tools.suggest import SignalRuns

    ex = exported("flux")
    signal = SignalRuns()
    cal = C.run_calibration(ex.art_dir, seeds=2, holdout=0, steps=8, order=1, signal=signal, log=lambda m: None)
    suggestions = C.suggestions(ex.art_dir, Artifact.open(ex.art_dir).manifest, cal, signal, [4], 8)
    found = suggestions["4"]["teacache"]
    assert found["computed_steps"] == 4.0 and found["params"]["coefficients"] == cal.coefficients
    t = teacache_trt.load_transformer(ex.art_dir, policy=TeaCache(**found["params"]))
    C.synthetic_driver(t.manifest, 8)(t, 0)
    assert abs(len(t.stats["computed_steps"]) - 4) <= 1


def test_magcache_calibration_suggests_the_exact_threshold(exported, tmp_path, capsys):
    from teacache_trt import policies

    art = exported("flux").copy(tmp_path / "art")
    path = tmp_path / "mag.json"
    assert C.main([str(art), "--policy", "magcache", "--steps", "8", "--seeds", "1", "--holdout", "0",
                   "--target-steps", "5", "--json", str(path)]) == 0
    assert "--policy magcache threshold=" in capsys.readouterr().out
    found = json.loads(path.read_text())["suggestions"]["5"]["magcache"]
    t = teacache_trt.load_transformer(art, policy=policies.make("magcache", **found["params"]))
    C.synthetic_driver(t.manifest, 8)(t, 0)
    assert found["computed_steps"] == 5.0 and len(t.stats["computed_steps"]) == 5  # static: exact


@pytest.mark.parametrize("argv, message", [
    (["--budget", "3"], "--budget, --objective and --reuse belong to --policy budget"),
    (["--policy", "budget", "--reuse", "cubic"], "must name reuse modes of ['residual', 'taylor']"),
    (["--policy", "budget", "--budget", "30"], "30 computed steps exceed --steps 20"),
    (["--policy", "budget", "--restore"], "a budget search replaces the one for its step count"),
    (["--target-steps", "0"], "must be numbers of computed steps >= 1"),
])
def test_bad_budget_options_are_one_line_before_any_work(tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.setattr(C, "load_transformer", lambda *a, **k: pytest.fail("loaded before the check"))
    monkeypatch.setattr(B, "run_budget_search", lambda *a, **k: pytest.fail("searched before the check"))
    try:
        rc = C.main([str(tmp_path), *argv])
    except SystemExit as exc:  # refused by the option parser
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("teacache-calibrate: error:") and message in err and err.count("\n") == 1, err
