"""reuse="taylor": a skipped call gives the head the first-order extrapolation of the last two
computed residuals in the step index, for every policy, per prompt in sample mode, on the device
(no host reads), and round-trips as a policy parameter."""
from __future__ import annotations

import json

import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError, policies
from teacache_trt.families import get_family
from teacache_trt.policies import Schedule, TeaCache
from teacache_trt.runtime import plan as plan_module

STEPS = 10


def prompt_inputs(ex, seed, batch=1):
    fam = get_family("flux")
    return fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), {**ex.spec.POINT, "batch": batch},
                                                   torch.float32, seed=seed))


def stack(prompts):
    return {k: v if k.endswith("_ids") else torch.cat([p[k] for p in prompts]) for k, v in prompts[0].items()}


def render(t, kwargs, steps=STEPS):
    """An Euler loop; the final latents."""
    t.reset(steps)
    kwargs = dict(kwargs)
    latents = kwargs["hidden_states"]
    for i in range(steps):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / steps)
        kwargs["hidden_states"] = latents
        latents = latents - t(return_dict=False, **kwargs)[0] / steps
    return latents


class Seen:
    """An observer keeping each call's residual (what the head read) and whether it computed."""

    def __init__(self):
        self.residual, self.computed = [], []

    def __call__(self, context, step, computed, pool):
        self.residual.append(pool["residual"].clone())
        self.computed.append(computed)


@pytest.fixture(scope="module")
def flux(exported):
    return exported("flux")


def expected_forecasts(seen: Seen, rows=slice(None), computed=None):
    """What reuse="taylor" must give at every call, from the computed residuals alone."""
    computed = seen.computed if computed is None else computed
    done, want = [], []
    for k, (r, c) in enumerate(zip(seen.residual, computed)):
        if c:
            done.append((k, r[rows]))
            want.append(r[rows])
        elif len(done) == 1:
            want.append(done[-1][1])
        else:
            (k0, r0), (k1, r1) = done[-2], done[-1]
            want.append(r1 + (r1 - r0) * (k - k1) / (k1 - k0))
    return want


def test_taylor_reuse_extrapolates_the_last_two_computed_residuals(flux):
    policy = Schedule([0, 3, 4, 8], reuse="taylor")
    t = teacache_trt.load_transformer(flux.art_dir, policy=policy)
    seen = Seen()
    t.observers.append(seen)
    taylor = render(t, prompt_inputs(flux, 0, batch=2))
    assert seen.computed == [k in (0, 3, 4, 8) for k in range(STEPS)]
    want = expected_forecasts(seen)
    for k, (got, w) in enumerate(zip(seen.residual, want)):
        assert torch.allclose(got, w, rtol=1e-5, atol=1e-6), k
    # steps 1, 2 reuse step 0's residual as it is; 5-7 and 9 extrapolate (not the plain reuse)
    assert torch.equal(seen.residual[1], seen.residual[0]) and torch.equal(seen.residual[2], seen.residual[0])
    assert not torch.allclose(seen.residual[5], seen.residual[4])
    t.policy = policy.replace(reuse=None)
    plain = render(t, prompt_inputs(flux, 0, batch=2))
    assert (taylor - plain).abs().max() > 1e-4  # the forecast changed the result


def test_every_policy_takes_reuse_and_it_round_trips():
    for policy in (TeaCache(0.2, reuse="taylor"), Schedule([0, 4], reuse="taylor"), Schedule([0], reuse="residual")):
        again = policies.make(policy.name, **json.loads(json.dumps(policy.params)))
        assert again == policy and again.reuse == policy.reuse and again.params["reuse"] == policy.reuse
    assert TeaCache(0.2).reuse == "residual" and "reuse" not in TeaCache(0.2).params
    assert TeaCache(0.2, reuse="taylor") != TeaCache(0.2)
    assert TeaCache(0.2, reuse="taylor").replace(threshold=0.3) == TeaCache(0.3, reuse="taylor")
    assert "reuse" in TeaCache.param_names() and "reuse" in Schedule.param_names()
    with pytest.raises(TeaCacheError, match=r"reuse 'cubic' must be one of \['residual', 'taylor'\]"):
        policies.make("teacache", reuse="cubic")


def test_a_static_policy_with_taylor_reuse_reads_nothing_back(flux, monkeypatch):
    reads = [0]
    real = plan_module.StepPlan.read_sums

    def counted(self):
        reads[0] += 1
        return real(self)

    monkeypatch.setattr(plan_module.StepPlan, "read_sums", counted)
    t = teacache_trt.load_transformer(flux.art_dir, policy=Schedule.uniform(STEPS, 4).replace(reuse="taylor"))
    render(t, prompt_inputs(flux, 0))
    assert reads[0] == 0 and t.stats["computed_steps"] == [0, 3, 6, 9]


def test_sample_mode_forecasts_per_prompt_as_alone(flux):
    """Two prompts decide differently (TeaCache thresholds); each prompt's rows get its own
    forecast and its result equals the prompt rendered alone."""
    thresholds = [0.2, 0.6]
    alone = []
    for seed, threshold in enumerate(thresholds):
        t = teacache_trt.load_transformer(flux.art_dir, decisions="sample", policy=TeaCache(reuse="taylor"))
        t.sample_thresholds = [threshold]
        alone.append((render(t, prompt_inputs(flux, seed)), t.stats["samples"][0]["computed_steps"]))
    assert alone[0][1] != alone[1][1] and len(alone[1][1]) >= 3  # different schedules, forecasts in both
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample", policy=TeaCache(reuse="taylor"))
    t.sample_thresholds = thresholds
    seen = Seen()
    t.observers.append(seen)
    latents = render(t, stack([prompt_inputs(flux, s) for s in range(2)]))
    for row, (want, computed) in enumerate(alone):
        assert t.stats["samples"][row]["computed_steps"] == computed
        assert (latents[row] - want[0]).abs().max() <= 1e-5
        per_row = [k in computed for k in range(STEPS)]
        for k, w in enumerate(expected_forecasts(seen, slice(row, row + 1), per_row)):
            assert torch.allclose(seen.residual[k][row:row + 1], w, rtol=1e-5, atol=1e-6), (row, k)
