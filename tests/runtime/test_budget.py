"""policies.Budget: exactly n computed steps per cache context, the steps the artifact's budget
search chose (uniform spacing, said once, where it has none), read nothing back per step."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError, policies
from teacache_trt.families import get_family
from teacache_trt.artifact import Artifact, save_manifest
from teacache_trt.policies import Budget, Schedule
from teacache_trt.runtime import plan as plan_module
from teacache_trt.tools import budget_search

STEPS = 6


def inputs(ex, seed=0):
    fam = get_family("flux")
    return fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), ex.spec.POINT, torch.float32, seed=seed))


def render(t, kwargs, contexts=("default",), steps=STEPS):
    """An Euler loop calling the transformer once per context and step (CFG-like branches)."""
    t.reset(steps)
    kwargs = dict(kwargs)
    latents = kwargs["hidden_states"]
    for i in range(steps):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / steps)
        kwargs["hidden_states"] = latents
        outs = []
        for name in contexts:
            with t.cache_context(name):
                outs.append(t(return_dict=False, **kwargs)[0])
        latents = latents - sum(outs) / len(outs) / steps
    return latents


@pytest.fixture(scope="module")
def flux(exported):
    return exported("flux")


@pytest.fixture(scope="module")
def searched(flux, tmp_path_factory):
    """A copy of the tiny FLUX artifact with a budget search for STEPS steps in its manifest."""
    art = tmp_path_factory.mktemp("budget") / "art"
    shutil.copytree(flux.art_dir, art)
    result = budget_search.run_budget_search(art, seeds=[0], steps=STEPS, reuses=["residual", "taylor"],
                                             log=lambda m: None)
    budget_search.write_to_manifest(art, result, "test")
    return art, result


def test_budget_params_round_trip_and_bad_n_is_refused():
    for policy in (Budget(7), Budget(3, reuse="taylor")):
        assert policies.make(policy.name, **json.loads(json.dumps(policy.params))) == policy
    assert Budget.static and not Budget.needs and policies.Budget is Budget
    for bad in (0, -1, 2.5, True, "7"):
        with pytest.raises(TeaCacheError, match="Budget n .* must be an integer >= 1"):
            Budget(bad)
    with pytest.raises(TeaCacheError, match="budget of 9 steps exceeds this generation's 6 steps"):
        Budget(9).schedule(6, "cond")


def test_the_search_covers_every_budget_and_beats_uniform_on_its_own_measure(searched):
    art, result = searched
    assert sorted(result.schedules) == ["residual", "taylor"]
    for reuse, by_n in result.schedules.items():
        assert sorted(by_n) == list(range(2, STEPS))
        for n, path in by_n.items():
            assert len(path) == n and path[0] == 0 and path == sorted(set(path))
            uniform = list(Schedule.uniform(STEPS, n).steps)
            w = result.errors[reuse]
            assert budget_search.path_error(w, path) <= budget_search.path_error(w, uniform)
    entry = Artifact.open(art).manifest.policy_data["budget"]["searches"][str(STEPS)]
    assert entry["schedules"]["taylor"]["3"] == {"default": result.schedules["taylor"][3]}
    assert entry["objective"] == "sum"


@pytest.mark.parametrize("n", [2, 3, 5])
def test_a_budget_of_n_computes_exactly_the_searched_n_steps_per_context_and_reads_nothing(searched, flux, n,
                                                                                        monkeypatch):
    art, result = searched
    reads = [0]
    real = plan_module.StepPlan.read_sums
    monkeypatch.setattr(plan_module.StepPlan, "read_sums", lambda self: (reads.__setitem__(0, reads[0] + 1),
                                                                         real(self))[1])
    t = teacache_trt.load_transformer(art, policy=Budget(n))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the search exists for "default": no fallback note
        render(t, inputs(flux))
    assert t.stats["contexts"]["default"]["computed_steps"] == result.schedules["residual"][n]
    assert t.stats["blocks_runs"] == n and reads[0] == 0
    t.policy = Budget(n, reuse="taylor")  # the schedule searched for taylor reuse
    render(t, inputs(flux))
    assert t.stats["computed_steps"] == result.schedules["taylor"][n] and reads[0] == 0


def test_without_a_search_the_budget_is_uniform_and_says_so_once_with_the_fix(searched, flux):
    art, _ = searched
    t = teacache_trt.load_transformer(art, policy=Budget(3))
    with pytest.warns(RuntimeWarning) as caught:  # searched for "default" only: cond and uncond fall back
        render(t, inputs(flux), contexts=("cond", "uncond"), steps=STEPS)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all("uses evenly spaced steps instead" in m for m in messages)
    assert "teacache-calibrate ART_DIR --policy budget --steps 6 --budget 3 --write-manifest" in messages[0]
    assert "not 'cond'" in messages[0] and "not 'uncond'" in messages[1]
    uniform = list(Schedule.uniform(STEPS, 3).steps)
    for name in ("cond", "uncond"):
        assert t.stats["contexts"][name]["computed_steps"] == uniform  # exactly n per context
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second generation says nothing
        render(t, inputs(flux), contexts=("cond", "uncond"), steps=STEPS)
    with pytest.warns(RuntimeWarning, match="records budget searches for \\[6\\] steps only"):
        render(t, inputs(flux), steps=8)
    assert t.stats["computed_steps"] == list(Schedule.uniform(8, 3).steps)


def test_bad_search_data_is_refused_when_the_artifact_loads(searched, tmp_path):
    art, _ = searched
    bad = tmp_path / "art"
    shutil.copytree(art, bad)
    manifest = Artifact.open(bad).manifest
    manifest.policy_data["budget"]["searches"][str(STEPS)]["schedules"]["residual"]["3"]["default"] = [0, 2]
    save_manifest(bad, manifest)
    with pytest.raises(TeaCacheError, match=r"budget schedule for 6 steps, reuse residual, n=3, context 'default' is "
                                            r"\[0, 2\]: it must list 3 distinct steps"):
        teacache_trt.load_transformer(bad)


def test_a_reuse_mode_without_its_own_search_takes_the_residual_one(searched, flux, tmp_path):
    art, result = searched
    only = tmp_path / "art"
    shutil.copytree(art, only)
    manifest = Artifact.open(only).manifest
    del manifest.policy_data["budget"]["searches"][str(STEPS)]["schedules"]["taylor"]
    save_manifest(only, manifest)
    t = teacache_trt.load_transformer(only, policy=Budget(3, reuse="taylor"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        render(t, inputs(flux))
    assert t.stats["computed_steps"] == result.schedules["residual"][3]
