"""Every family's real diffusers pipeline end to end through ``teacache_trt.enable``.

Runs over the tiny-model modules that define the pipeline protocol (tests/models/__init__.py):
the same pipeline with the diffusers model and with the compiled transformer, at threshold 0
(same output, every step computed) and at a threshold that skips (forced steps kept, one state
per cache context the pipeline's own code makes, a fresh generation per pipeline call).
"""
from __future__ import annotations

import importlib

import pytest
import torch

import teacache_trt
from teacache_trt.runtime.criterion import is_forced
from models import FAMILIES

STEPS = 8
PIPELINES = [n for n in FAMILIES if hasattr(importlib.import_module(f"models.{n}"), "make_pipeline")]

_BASELINES: dict[str, torch.Tensor] = {}


def baseline(ex) -> torch.Tensor:
    """The pipeline's output with the diffusers model (computed once per tiny model: a family
    may have several, e.g. Wan's text- and image-to-video layouts)."""
    name = ex.spec.__name__
    if name not in _BASELINES:
        _BASELINES[name] = ex.spec.run_pipeline(ex.spec.make_pipeline(ex.model), STEPS, seed=0)
    return _BASELINES[name]


def per_context(stats):
    return {name: (ctx["computed_steps"], ctx["skipped_steps"]) for name, ctx in stats["contexts"].items()}


@pytest.mark.parametrize("name", PIPELINES)
def test_threshold_zero_gives_the_pipelines_output(exported, name):
    ex = exported(name)
    pipe = ex.spec.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0)
    assert pipe.transformer is t
    out = ex.spec.run_pipeline(pipe, STEPS, seed=0)
    want = baseline(ex)
    assert out.shape == want.shape
    # fp32 rounding, relative to the output's scale: images in [0, 1], latents (which an
    # untrained model under DDIM and guidance drives to ~100) beyond.
    assert (out - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    # The pipeline's own calls: one per step in each context it names (or leaves unnamed).
    assert per_context(t.stats) == {c: (list(range(STEPS)), []) for c in ex.spec.PIPELINE_CONTEXTS}
    assert t.stats["calls"] == STEPS * len(ex.spec.PIPELINE_CONTEXTS)


@pytest.mark.parametrize("name", PIPELINES)
def test_skipping_keeps_forced_steps_and_each_call_is_a_fresh_generation(exported, name):
    ex = exported(name)
    pipe = ex.spec.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=ex.spec.PIPELINE_THRESHOLD)
    first = ex.spec.run_pipeline(pipe, STEPS, seed=0)
    stats = t.stats
    assert set(stats["contexts"]) == set(ex.spec.PIPELINE_CONTEXTS)
    assert stats["skipped_steps"], stats  # something was skipped ...
    rule = ex.manifest.policy_data["teacache"]["forced"]
    forced = [s for s in range(STEPS) if is_forced(s, STEPS, rule["first"], rule["last"], rule["first_fraction"])]
    for computed, skipped in per_context(stats).values():
        assert set(forced) <= set(computed)  # ... never a forced step
        assert sorted(computed + skipped) == list(range(STEPS))
    assert stats["blocks_runs"] == sum(len(c) for c, _ in per_context(stats).values())
    second = ex.spec.run_pipeline(pipe, STEPS, seed=0)
    assert t.stats == stats  # reset by the pipeline's set_timesteps, not accumulated
    assert torch.equal(first, second)
    want = baseline(ex)
    err = (first - want).abs().max().item()
    assert 0 < err < 0.5 * want.abs().max().item(), err  # close to, not equal to, the uncached output
