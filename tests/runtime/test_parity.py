"""The compiled transformer against the original diffusers model, per family."""
from __future__ import annotations

import importlib

import pytest
import torch

import teacache_trt
from models import FAMILIES
from reference import TeaCacheReference
from conftest import family_of

STEPS = 10


def sampling_loop(spec, model, forward, steps=STEPS, seed=0):
    """A 10-step Euler-style loop; returns the per-step model outputs."""
    fam = family_of(spec)
    kwargs = fam.kwargs_from_feed(fam.example_inputs(fam.config_of(model), spec.POINT, torch.float32, seed=seed))
    batch = spec.POINT["batch"]
    key = getattr(spec, "TIMESTEP_KWARG", "timestep")  # HiDream's forward takes ``timesteps``
    outs = []
    for i in range(steps):
        kwargs[key] = spec.timestep(i, steps, batch)
        out = forward(**kwargs)
        outs.append(out)
        update = getattr(spec, "update", None)
        latents = kwargs["hidden_states"]
        kwargs["hidden_states"] = update(latents, out, steps) if update else latents - out / steps
    return outs


def reference_forced(spec) -> dict:
    """Upstream's rule for the model, as its tiny-model module states it (``FORCED_FIRST``,
    ``FORCED_LAST``, ``FORCED_FRACTION``, ``ACCUMULATE``, ``EPS``; default: the first and the
    last step, raw accumulation, no eps)."""
    return {"forced_first": getattr(spec, "FORCED_FIRST", 1), "forced_last": getattr(spec, "FORCED_LAST", True),
            "forced_fraction": getattr(spec, "FORCED_FRACTION", 0.0),
            "accumulate": getattr(spec, "ACCUMULATE", "raw"), "eps": getattr(spec, "EPS", 0.0)}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_threshold_zero_equals_model(exported, name, backend):
    ex = exported(name)
    t = teacache_trt.load_transformer(ex.art_dir, backend=backend, threshold=0, family_module=ex.family_module,
                                      model=ex.model if backend == "torch" else None)
    t.reset(STEPS)
    got = sampling_loop(ex.spec, ex.model, lambda **kw: ex.family.call_model(t, kw))
    ref = sampling_loop(ex.spec, ex.model, lambda **kw: ex.family.call_model(ex.model, kw))
    errs = [(g - r).abs().max().item() for g, r in zip(got, ref)]
    assert max(errs) <= 1e-4, errs
    assert t.stats["computed_steps"] == list(range(STEPS))
    assert t.stats["skipped_steps"] == []


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.6, 2.0])
def test_decisions_equal_reference(exported, name, threshold):
    ex = exported(name)
    t = teacache_trt.load_transformer(ex.art_dir, threshold=threshold, family_module=ex.family_module)
    t.reset(STEPS)
    coeffs = ex.manifest.policy_data["teacache"]["coefficients"]
    ref = TeaCacheReference(ex.model, ex.spec.reference_hooks(ex.model), coeffs, threshold, STEPS,
                            **reference_forced(ex.spec))
    got = sampling_loop(ex.spec, ex.model, lambda **kw: ex.family.call_model(t, kw))
    want = sampling_loop(ex.spec, ex.model, ref)
    assert t.stats["computed_steps"] == ref.computed
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= 1e-4


# Longer generations where a tiny-model module asks for them (LONG_STEPS): the newer families'
# rules are checked at their pipelines' step counts (HiDream's forced first ceil(0.1 N) calls
# differ from a rounded-down count at 25 and 28 steps).
LONG = [(n, s) for n in FAMILIES for s in getattr(importlib.import_module(f"models.{n}"), "LONG_STEPS", ())]


@pytest.mark.parametrize("name,steps", LONG)
@pytest.mark.parametrize("threshold", [0.3, 1.0])
def test_long_loops_equal_reference(exported, name, steps, threshold):
    ex = exported(name)
    t = teacache_trt.load_transformer(ex.art_dir, threshold=threshold, family_module=ex.family_module)
    t.reset(steps)
    coeffs = ex.manifest.policy_data["teacache"]["coefficients"]
    ref = TeaCacheReference(ex.model, ex.spec.reference_hooks(ex.model), coeffs, threshold, steps,
                            **reference_forced(ex.spec))
    got = sampling_loop(ex.spec, ex.model, lambda **kw: ex.family.call_model(t, kw), steps=steps)
    want = sampling_loop(ex.spec, ex.model, ref, steps=steps)
    assert t.stats["computed_steps"] == ref.computed
    assert t.stats["skipped_steps"]  # the loop exercises the rule, not only forced calls
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= 1e-4
