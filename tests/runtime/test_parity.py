"""The compiled transformer against the original diffusers model, per family."""
from __future__ import annotations


import pytest
import torch

import teacache_trt
from models import FAMILIES
from reference import TeaCacheReference
from teacache_trt.families import get_family

STEPS = 10


def sampling_loop(spec, model, forward, steps=STEPS, seed=0):
    """A 10-step Euler-style loop; returns the per-step model outputs."""
    fam = get_family(spec.FAMILY)
    kwargs = fam.kwargs_from_feed(fam.example_inputs(dict(model.config), spec.POINT, torch.float32, seed=seed))
    batch = spec.POINT["batch"]
    outs = []
    for i in range(steps):
        kwargs["timestep"] = spec.timestep(i, steps, batch)
        out = forward(**kwargs)
        outs.append(out)
        kwargs["hidden_states"] = kwargs["hidden_states"] - out / steps
    return outs


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_threshold_zero_equals_model(exported, name, backend):
    ex = exported(name)
    t = teacache_trt.load_transformer(ex.art_dir, backend=backend, threshold=0,
                                      model=ex.model if backend == "torch" else None)
    t.reset(STEPS)
    got = sampling_loop(ex.spec, ex.model, lambda **kw: t(**kw).sample)
    ref = sampling_loop(ex.spec, ex.model, lambda **kw: ex.model(**kw).sample)
    errs = [(g - r).abs().max().item() for g, r in zip(got, ref)]
    assert max(errs) <= 1e-4, errs
    assert t.stats["computed_steps"] == list(range(STEPS))
    assert t.stats["skipped_steps"] == []


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.6, 2.0])
def test_decisions_equal_reference(exported, name, threshold):
    ex = exported(name)
    t = teacache_trt.load_transformer(ex.art_dir, threshold=threshold)
    t.reset(STEPS)
    coeffs = ex.manifest.criterion.coefficients
    ref = TeaCacheReference(ex.model, ex.spec.reference_hooks(ex.model), coeffs, threshold, STEPS)
    got = sampling_loop(ex.spec, ex.model, lambda **kw: t(**kw).sample)
    want = sampling_loop(ex.spec, ex.model, ref)
    assert t.stats["computed_steps"] == ref.computed
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= 1e-4
