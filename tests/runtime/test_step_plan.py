"""The step plan: shapes bound, checked and buffers allocated once per input shape; outputs
callers keep are their own; standalone use needs a step count; threads keep apart."""
from __future__ import annotations

import threading

import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.families import get_family
from teacache_trt.runtime import plan as plan_module
from teacache_trt.runtime import transformer as transformer_module

STEPS = 6


def inputs(ex, seed=0, **sizes):
    fam = get_family("flux")
    return fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), {**ex.spec.POINT, **sizes},
                                                   torch.float32, seed=seed))


def loop(t, kwargs, steps=STEPS):
    """An Euler loop; the outputs of every step."""
    kwargs = dict(kwargs)
    latents, outs = kwargs["hidden_states"], []
    for i in range(steps):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / steps)
        kwargs["hidden_states"] = latents
        outs.append(t(return_dict=False, **kwargs)[0])
        latents = latents - outs[-1] / steps
    return outs


@pytest.fixture(scope="module")
def flux(exported):
    return exported("flux")


def test_shapes_are_bound_and_buffers_allocated_once_per_shape(flux, monkeypatch):
    t = teacache_trt.load_transformer(flux.art_dir, threshold=0.6)
    counts = {"propagate": 0, "plans": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(transformer_module, "propagate", counting("propagate", transformer_module.propagate))
    monkeypatch.setattr(transformer_module, "StepPlan", counting("plans", plan_module.StepPlan))
    for name, runner in t.runners.items():
        runner.allocate = counting(name, runner.allocate)
    t.reset(STEPS)
    loop(t, inputs(flux))
    # embed outputs with the plan; the context's outputs and residual with the cache context;
    # the head's output at every call, since the caller keeps it
    assert counts == {"propagate": 1, "plans": 1, "context": 1, "embed": 1, "blocks": 1, "head": STEPS}
    (plan,) = t._plans.values()
    addresses = {n: b.data_ptr() for n, b in plan.embed_out.items() if n != "signal"}  # signal: the context's
    t.reset(STEPS)
    loop(t, inputs(flux, seed=1))  # a new generation at the same shape: no new plan
    assert counts == {"propagate": 1, "plans": 1, "context": 2, "embed": 1, "blocks": 2, "head": 2 * STEPS}
    assert {n: b.data_ptr() for n, b in plan.embed_out.items() if n != "signal"} == addresses
    t.reset(STEPS)
    loop(t, inputs(flux, img_seq=32))  # another shape: its own plan
    assert counts["plans"] == 2 and len(t._plans) == 2


def test_the_context_graph_runs_when_its_inputs_change(flux):
    """Prompt embeddings and ids stay the same objects within a generation: one context run
    per generation and cache context; a new tensor, or one written in place, runs it again."""
    t = teacache_trt.load_transformer(flux.art_dir, threshold=0)
    runs = []
    infer_into = t.runners["context"].infer_into
    t.runners["context"].infer_into = lambda feed, out: (runs.append(1), infer_into(feed, out))[1]
    kwargs = inputs(flux)
    t.reset(STEPS)
    want = loop(t, kwargs)
    assert len(runs) == 1
    with t.cache_context("uncond"):
        loop(t, inputs(flux, seed=3), steps=2)
    assert len(runs) == 2  # another cache context, its own prompt
    t.reset(STEPS)
    kwargs["encoder_hidden_states"].mul_(1.0)  # written in place: _version moved
    assert all(torch.equal(a, b) for a, b in zip(loop(t, kwargs), want))
    assert len(runs) == 3
    fresh = dict(kwargs, encoder_hidden_states=kwargs["encoder_hidden_states"] * 2)  # another tensor
    t.reset(STEPS)
    got = loop(t, fresh)
    assert len(runs) == 4 and not torch.equal(got[0], want[0])


def test_a_shape_change_within_a_generation_computes_and_the_plan_cache_is_bounded(flux, monkeypatch):
    monkeypatch.setattr(transformer_module, "MAX_PLANS", 2)
    t = teacache_trt.load_transformer(flux.art_dir, threshold=100.0)  # would skip every unforced step
    t.reset(STEPS)
    t(**inputs(flux))
    t(**inputs(flux, img_seq=32))  # a new resolution: no previous signal or residual that fits
    t(**inputs(flux, img_seq=32))
    t(**inputs(flux, batch=1))
    assert t.stats["computed_steps"] == [0, 1, 3] and t.stats["skipped_steps"] == [2]
    assert len(t._plans) == 2


def test_outputs_are_the_callers_own(flux):
    """CFG pipelines keep the cond output while calling for the uncond one at the same shape."""
    t = teacache_trt.load_transformer(flux.art_dir, threshold=0)
    t.reset(1)
    with t.cache_context("cond"):
        cond = t(return_dict=False, **inputs(flux, seed=1))[0]
    kept = cond.clone()
    with t.cache_context("uncond"):
        uncond = t(return_dict=False, **inputs(flux, seed=2))[0]
    assert torch.equal(cond, kept) and not torch.equal(cond, uncond)


def test_inputs_of_another_dtype_or_layout_are_converted(flux):
    t = teacache_trt.load_transformer(flux.art_dir, threshold=0)
    kwargs = inputs(flux)
    t.reset(2)
    want = t(return_dict=False, **kwargs)[0]
    odd = dict(kwargs, hidden_states=kwargs["hidden_states"].double(),
               encoder_hidden_states=kwargs["encoder_hidden_states"].transpose(0, 1).contiguous().transpose(0, 1))
    assert not odd["encoder_hidden_states"].is_contiguous()
    got = t(return_dict=False, **odd)[0]
    assert torch.allclose(got, want, atol=1e-6)


def test_standalone_use_without_a_step_count_is_refused(flux):
    t = teacache_trt.load_transformer(flux.art_dir)
    calls = []
    t.runners["embed"].infer_into = lambda feed, out: calls.append(feed)
    with pytest.raises(TeaCacheError, match=r"call transformer.reset\(num_calls=len\(scheduler.timesteps\)\).*teacache_trt.enable"):
        t(**inputs(flux))
    assert calls == []
    with pytest.raises(TeaCacheError, match="num_calls=-1 must be an integer >= 0"):
        t.reset(-1)


def test_generations_after_one_reset_start_fresh_and_stats_stay_bounded(flux):
    t = teacache_trt.load_transformer(flux.art_dir, threshold=100.0)
    t.reset(STEPS)
    kwargs = inputs(flux)
    first = loop(t, kwargs)
    stats = t.stats
    for _ in range(2):
        again = loop(t, kwargs)  # the context wraps after STEPS calls: a new generation
    assert t.stats == stats
    assert stats["calls"] == STEPS and stats["computed_steps"] == [0, STEPS - 1]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_threads_have_their_own_generations(flux):
    """Two threads share one transformer and one context name, calling in lockstep: each gets
    the schedule and outputs it gets alone (before, their states mixed)."""
    jobs = {0: inputs(flux, seed=0), 1: inputs(flux, seed=5, batch=1)}
    alone = {}
    t = teacache_trt.load_transformer(flux.art_dir, threshold=0.6)
    for k, kwargs in jobs.items():
        t.reset(STEPS)
        alone[k] = (loop(t, kwargs), t.stats)
    assert 0 < len(alone[0][1]["skipped_steps"]) and 0 < len(alone[1][1]["skipped_steps"])

    shared = teacache_trt.load_transformer(flux.art_dir, threshold=0.6)
    barrier = threading.Barrier(2)
    got, errors = {}, []

    def lockstep(**kwargs):
        barrier.wait()  # both threads are at the same step: their calls interleave
        return shared(**kwargs)

    def run(k):
        try:
            shared.reset(STEPS)
            got[k] = (loop(lockstep, jobs[k]), shared.stats)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for k in jobs:
        outs, stats = got[k]
        assert stats == alone[k][1]
        assert all(torch.equal(a, b) for a, b in zip(outs, alone[k][0]))
    assert shared.num_steps == 0  # the main thread has no generation of its own
