"""The policy seam (teacache_trt.policies): names and params that round-trip, static policies that
read nothing back, the transformer's policy / threshold settings (per thread), TeaCache's knobs
against the reference, and the never-skipped report."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

import teacache_trt
from reference import TeaCacheReference
from teacache_trt import TeaCacheError, policies
from teacache_trt.families import ForcedSteps, get_family
from teacache_trt.policies import Schedule, TeaCache
from teacache_trt.runtime import plan as plan_module

STEPS = 10


def inputs(ex, seed=0, batch=None):
    fam = get_family("flux")
    point = dict(ex.spec.POINT, **({"batch": batch} if batch else {}))
    return fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), point, torch.float32, seed=seed))


def render(t, kwargs, steps=STEPS, reset=True):
    """An Euler loop over the compiled transformer; the per-step outputs."""
    if reset:
        t.reset(steps)
    kwargs, outs = dict(kwargs), []
    latents = kwargs["hidden_states"]
    for i in range(steps):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / steps)
        kwargs["hidden_states"] = latents
        outs.append(t(return_dict=False, **kwargs)[0])
        latents = latents - outs[-1] / steps
    return outs


@pytest.fixture(scope="module")
def flux(exported):
    return exported("flux")


# --- names and parameters ---------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [
    TeaCache(), TeaCache(0.2), TeaCache(threshold=0.3, coefficients=(1.5, -0.2, 0.01)),
    TeaCache(forced=ForcedSteps(0, False, 0.1), accumulate="abs", eps=1e-6, clamp=True),
    Schedule([0, 3, 9]), Schedule.uniform(20, 7),
])
def test_name_and_params_round_trip_as_json(policy):
    params = json.loads(json.dumps(policy.params))  # JSON-safe
    again = policies.make(policy.name, **params)
    assert again == policy and hash(again) == hash(policy) and again.params == policy.params
    assert policies.from_spec(policy.spec) == policy and policies.from_spec(json.loads(json.dumps(policy.spec))) == policy
    assert getattr(policies, type(policy).__name__) is type(policy)  # reachable by class name


def test_only_what_is_given_is_a_param():
    assert TeaCache().params == {} and TeaCache(0.2).params == {"threshold": 0.2}
    assert TeaCache(coefficients=(1, 2)).params == {"coefficients": [1.0, 2.0]}
    assert TeaCache(0.2).replace(threshold=None) == TeaCache()
    assert policies.from_spec("teacache") == TeaCache()


@pytest.mark.parametrize("make, message", [
    (lambda: policies.make("magic"), r"policy 'magic' is unknown; choose one of \[.*'schedule', 'teacache'\]"),
    (lambda: policies.make("teacache", speed=2), r"takes no parameter\(s\) \['speed'\]"),
    (lambda: policies.make("schedule"), r"needs the parameter\(s\) \['steps'\]"),
    (lambda: TeaCache(threshold=-1), r"threshold -1 must be a number >= 0"),
    (lambda: TeaCache(coefficients=[]), r"coefficients \[\] must be a non-empty list"),
    (lambda: TeaCache(coefficients=[1.0, float("nan")]), r"must be a non-empty list of finite numbers"),
    (lambda: TeaCache(accumulate="max"), r"accumulate 'max' must be one of \('raw', 'abs'\)"),
    (lambda: TeaCache(eps=float("inf")), r"eps inf must be a finite number >= 0"),
    (lambda: TeaCache(forced={"first": 1, "every": 2}), r"unknown keys \['every'\]"),
    (lambda: TeaCache(forced={"first": 1.5}), r"first an integer >= 0"),
    (lambda: TeaCache(clamp="no"), r"clamp 'no' must be True or False"),
    (lambda: Schedule([3, 5]), r"must include step 0"),
    (lambda: Schedule([0, 2, 2]), r"lists a step twice"),
    (lambda: Schedule([0, -1]), r"integers >= 0"),
    (lambda: Schedule("0,1"), r"must be a list of step indices"),
    (lambda: policies.from_spec({"name": "teacache", "threshold": 0.2}), r"unknown keys \['threshold'\]"),
    (lambda: policies.from_spec(0.2), r"must be a policy object, a name"),
])
def test_bad_parameters_name_the_value_and_the_fix(make, message):
    with pytest.raises(TeaCacheError, match=message):
        make()


def test_features_a_policy_needs_are_declared_and_checked():
    assert TeaCache.needs == {policies.SIGNAL_SUMS} and not Schedule.needs and Schedule.static
    with pytest.raises(TypeError, match="unknown features"):
        policies.register(type("Odd", (policies.Policy,), {"name": "odd", "needs": frozenset({"gradients"})}))
    with pytest.raises(TypeError, match="static: it reads nothing"):
        policies.register(type("Odd", (policies.Policy,), {"name": "odd", "static": True,
                                                           "needs": frozenset({policies.SIGNAL_SUMS})}))
    assert "odd" not in policies.registered()


def test_a_policy_needing_an_unread_feature_is_refused_when_set(flux, monkeypatch):
    class Norms(policies.Policy):
        name = "norms-test"
        needs = frozenset({policies.RESIDUAL_NORMS})

        def __init__(self):
            self._set_params()

    monkeypatch.setitem(policies.base._REGISTRY, "norms-test", Norms)
    t = teacache_trt.load_transformer(flux.art_dir)
    with pytest.raises(TeaCacheError, match=r"needs \['residual_norms'\] from the graphs, which this runtime does not read"):
        t.policy = Norms()


# --- the transformer's policy ------------------------------------------------------------------------
@pytest.fixture
def count_reads(monkeypatch):
    """The number of host reads of the embed graph's sums (StepPlan.read_sums) since the start."""
    reads = [0]
    real = plan_module.StepPlan.read_sums

    def counted(self):
        reads[0] += 1
        return real(self)

    monkeypatch.setattr(plan_module.StepPlan, "read_sums", counted)
    return reads


def test_a_static_policy_reads_nothing_back_and_its_schedule_is_known_before_the_first_step(flux, count_reads):
    t = teacache_trt.load_transformer(flux.art_dir, policy=Schedule([0, 4, 9]))
    t.reset(STEPS)
    assert list(t.policy.schedule(STEPS, "default")) == [0, 4, 9]  # before any step
    render(t, inputs(flux), reset=False)
    assert count_reads[0] == 0
    assert t.stats["computed_steps"] == [0, 4, 9] and t.stats["blocks_runs"] == 3
    assert t.stats["contexts"]["default"]["rel_l1"] == [None] * STEPS
    t.policy = "teacache"  # the artifact's default threshold: reads the sums of every call after the first
    render(t, inputs(flux))
    assert count_reads[0] == STEPS - 1


def test_schedule_computes_exactly_its_steps_and_where_no_residual_is_usable(flux):
    t = teacache_trt.load_transformer(flux.art_dir, policy={"name": "schedule", "params": {"steps": [0, 5]}})
    t.reset(6)
    kwargs = inputs(flux)
    render(t, kwargs, steps=3, reset=False)
    t(**inputs(flux, batch=1))  # another batch size: no residual that fits, so it computes
    t(**inputs(flux, batch=1))
    t(**inputs(flux, batch=1))
    assert t.stats["computed_steps"] == [0, 3, 5] and t.stats["skipped_steps"] == [1, 2, 4]
    with pytest.raises(TeaCacheError, match=r"lists step\(s\) \[5\] outside this generation's 4 steps"):
        render(t, kwargs, steps=4)


def test_schedule_per_prompt_in_sample_decisions(flux):
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample", policy=Schedule.uniform(STEPS, 4))
    render(t, {k: v if k.endswith("_ids") else torch.cat([v, v]) for k, v in inputs(flux, batch=1).items()})
    assert [s["computed_steps"] for s in t.stats["samples"]] == [[0, 3, 6, 9]] * 2
    with pytest.raises(TeaCacheError, match="has no threshold"):
        t.sample_thresholds = [0.1, 0.2]


def test_policy_as_object_name_or_spec_and_threshold_shorthand(flux):
    art = flux.art_dir
    default = teacache_trt.load_transformer(art)
    assert default.policy == TeaCache(flux.manifest.policy.params["threshold"])
    assert teacache_trt.load_transformer(art, threshold=0.2).policy == TeaCache(0.2)
    assert teacache_trt.load_transformer(art, policy="teacache", threshold=0.3).policy == TeaCache(0.3)
    assert teacache_trt.load_transformer(art, policy={"name": "teacache", "params": {"clamp": True}}).policy == \
        TeaCache(clamp=True)
    with pytest.raises(TeaCacheError, match="takes no threshold"):
        teacache_trt.load_transformer(art, policy=Schedule([0]), threshold=0.2)


def test_threshold_setter_keeps_the_policy_and_never_swaps_it(flux):
    t = teacache_trt.load_transformer(flux.art_dir, policy=TeaCache(0.2, coefficients=(2.0, 0.0), clamp=True))
    t.threshold = 0.5
    assert t.policy == TeaCache(0.5, coefficients=(2.0, 0.0), clamp=True) and t.threshold == 0.5
    t.threshold = None  # back to the artifact's default threshold, the coefficients kept
    assert t.policy == TeaCache(coefficients=(2.0, 0.0), clamp=True)
    assert t.threshold == flux.manifest.policy.params["threshold"]
    t.policy = Schedule([0, 9])
    with pytest.raises(TeaCacheError, match=r"has no threshold; set transformer.policy = .*TeaCache\(threshold=0.2\)"):
        t.threshold = 0.2
    assert t.policy == Schedule([0, 9]) and t.threshold is None


def test_enable_takes_a_policy(flux):
    from diffusers import FlowMatchEulerDiscreteScheduler

    class Pipe:
        scheduler = FlowMatchEulerDiscreteScheduler()
        transformer = None

    t = teacache_trt.enable(Pipe(), flux.art_dir, policy=Schedule([0]))
    assert t.policy == Schedule([0])


def _generate_in_step(t, kwargs, barrier) -> None:
    """One STEPS-call generation that waits at ``barrier`` after every call, so that the
    threads running one each interleave their calls."""
    t.reset(STEPS)
    latents = kwargs["hidden_states"]
    for i in range(STEPS):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / STEPS)
        kwargs["hidden_states"] = latents
        latents = latents - t(return_dict=False, **kwargs)[0] / STEPS
        barrier.wait()


def _run_threads(barrier, run, args) -> None:
    """``run(*a)`` in one thread per ``a`` in ``args``; an exception in any of them fails the test."""
    errors = []

    def guarded(*a):
        try:
            run(*a)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=guarded, args=a) for a in args]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors


def test_settings_are_per_thread(flux):
    """Two threads set their own threshold, then run their generations interleaved step by step:
    each gets its own schedule (before, the second setting replaced the first for both)."""
    t = teacache_trt.load_transformer(flux.art_dir)
    t.threshold = 0.6  # the creating thread's: the default of threads that set nothing
    barrier = threading.Barrier(3)
    got = {}

    def run(name, threshold):
        if threshold is not None:
            t.threshold = threshold
        barrier.wait()  # every thread has set its threshold before any generation starts
        _generate_in_step(t, inputs(flux), barrier)
        got[name] = (t.threshold, t.stats["computed_steps"])

    _run_threads(barrier, run, (("a", 0.0), ("b", 100.0), ("c", None)))
    assert got["a"] == (0.0, list(range(STEPS)))
    assert got["b"] == (100.0, [0, STEPS - 1])  # only the forced steps
    assert got["c"][0] == 0.6 and 2 < len(got["c"][1]) < STEPS  # the creating thread's setting
    assert t.threshold == 0.6


def test_sample_thresholds_are_per_thread(flux):
    """The same for per-prompt thresholds (sample decisions): two threads, each its own list,
    generations interleaved call by call; each prompt decides by its own thread's setting."""
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample")
    barrier = threading.Barrier(2)
    got = {}

    def run(name, value):
        t.sample_thresholds = [value, value]
        barrier.wait()
        kwargs = {k: v if k.endswith("_ids") else torch.cat([v, v]) for k, v in inputs(flux, batch=1).items()}
        _generate_in_step(t, kwargs, barrier)
        got[name] = (list(t.sample_thresholds), [s["computed_steps"] for s in t.stats["samples"]])

    _run_threads(barrier, run, (("a", 0.0), ("b", 100.0)))
    assert got["a"] == ([0.0, 0.0], [list(range(STEPS))] * 2)
    assert got["b"] == ([100.0, 100.0], [[0, STEPS - 1]] * 2)  # only the forced steps


# --- TeaCache's knobs against the reference ---------------------------------------------------------
@pytest.mark.parametrize("knobs", [
    dict(accumulate="abs", coefficients=(-3.0, 0.0)),  # raw would keep lowering acc; abs raises it
    dict(eps=0.05),
    dict(forced=ForcedSteps(0, False, 0.25)),  # the first ceil(0.25 * 10) = 3 calls; the last not forced
    dict(forced=ForcedSteps(1, False), accumulate="abs", eps=1e-3),
])
@pytest.mark.parametrize("threshold", [0.2, 0.6])
def test_knobs_decide_as_the_reference(flux, knobs, threshold):
    knobs = dict(knobs)  # shared between the threshold cases
    coefficients = knobs.pop("coefficients", flux.manifest.policy_data["teacache"]["coefficients"])
    forced = knobs.get("forced", ForcedSteps())
    t = teacache_trt.load_transformer(flux.art_dir, policy=TeaCache(threshold, coefficients, **knobs))
    ref = TeaCacheReference(flux.model, flux.spec.reference_hooks(flux.model), coefficients, threshold, STEPS,
                            forced.first, forced.last, forced_fraction=forced.first_fraction,
                            accumulate=knobs.get("accumulate", "raw"), eps=knobs.get("eps", 0.0))
    got = render(t, inputs(flux))
    fam = get_family("flux")
    kwargs = inputs(flux)
    latents, want = kwargs["hidden_states"], []
    for i in range(STEPS):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / STEPS)
        kwargs["hidden_states"] = latents
        want.append(ref(**fam.kwargs_from_feed(kwargs)))
        latents = latents - want[-1] / STEPS
    assert t.stats["computed_steps"] == ref.computed
    assert 1 < len(ref.computed) < STEPS, ref.computed  # the knob changed something to compare
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 1e-4


def test_abs_accumulation_changes_the_schedule(flux):
    """The same negative polynomial: raw accumulation never reaches the threshold, abs does."""
    raw = teacache_trt.load_transformer(flux.art_dir, policy=TeaCache(0.6, (-3.0, 0.0)))
    absolute = teacache_trt.load_transformer(flux.art_dir, policy=TeaCache(0.6, (-3.0, 0.0), accumulate="abs"))
    render(raw, inputs(flux))
    render(absolute, inputs(flux))
    assert raw.stats["computed_steps"] == [0, STEPS - 1]
    assert len(absolute.stats["computed_steps"]) > 2


# --- silent no-ops -----------------------------------------------------------------------------------
def test_a_threshold_that_never_skips_says_so_with_the_cause_and_a_fix(flux):
    t = teacache_trt.load_transformer(flux.art_dir, threshold=1e-9)
    render(t, inputs(flux))
    stats = t.stats
    assert stats["skipped_steps"] == []
    cause = stats["never_skipped"]
    assert cause.startswith(f"teacache threshold 1e-09 never skipped in {STEPS} steps")
    assert "accumulated change was" in cause and "try threshold" in cause and "teacache-calibrate" in cause
    suggested = float(cause.split("try threshold ")[1].split()[0])
    t.threshold = suggested
    render(t, inputs(flux))
    assert t.stats["skipped_steps"] and "never_skipped" not in t.stats  # the suggestion skips
    for quiet in (TeaCache(0.0), Schedule.uniform(STEPS, STEPS)):  # never meant to skip: no report
        t.policy = quiet
        render(t, inputs(flux))
        assert "never_skipped" not in t.stats


def test_never_skipped_waits_for_the_end_and_names_forced_steps(flux):
    t = teacache_trt.load_transformer(flux.art_dir, threshold=100.0)
    render(t, inputs(flux), steps=2)
    assert t.stats["never_skipped"] == ("teacache threshold 100 never skipped in 2 steps: every step is forced "
                                        "(forced steps {'first': 1, 'last': True, 'first_fraction': 0.0}); "
                                        "use more steps")
    t.reset(STEPS)
    t(**inputs(flux))
    assert "never_skipped" not in t.stats  # a generation under way has not finished skipping


def test_never_skipped_per_prompt(flux):
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample")
    t.sample_thresholds = [1e-9, 100.0]
    render(t, {k: v if k.endswith("_ids") else torch.cat([v, v]) for k, v in inputs(flux, batch=1).items()})
    first, second = t.stats["samples"]
    assert "threshold 1e-09 never skipped" in first["never_skipped"] and "never_skipped" not in second
    assert "never_skipped" not in t.stats  # prompt 1 skipped: the blocks did not run every full batch
