"""enable(): the scheduler hook that makes every pipeline call a fresh, correctly sized
generation, and CFG branches that pipelines do not name."""
from __future__ import annotations

import copy

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import teacache_trt
from teacache_trt.families import get_family


class LoopPipe:
    """The smallest pipeline shape: a transformer and a scheduler."""

    def __init__(self):
        self.scheduler = FlowMatchEulerDiscreteScheduler()
        self.transformer = None


def kwargs_for(ex, seed=0):
    fam = get_family("flux")
    return fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), ex.spec.POINT, torch.float32, seed=seed))


def test_unnamed_cfg_branches_get_a_state_each(exported):
    ex = exported("flux")
    pipe = LoopPipe()
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.6)
    cond, uncond = kwargs_for(ex, 1), kwargs_for(ex, 2)
    pipe.scheduler.set_timesteps(8)
    latents = cond["hidden_states"]
    for ts in pipe.scheduler.timesteps:
        timestep = (ts / 1000).expand(latents.shape[0])
        v = t(**{**cond, "hidden_states": latents, "timestep": timestep}).sample
        v_u = t(**{**uncond, "hidden_states": latents, "timestep": timestep}).sample  # no cache_context
        latents = pipe.scheduler.step(v_u + 2.0 * (v - v_u), ts, latents).prev_sample
    contexts = t.stats["contexts"]
    assert set(contexts) == {"default", "default#1"}
    for ctx in contexts.values():
        assert len(ctx["computed_steps"]) + len(ctx["skipped_steps"]) == 8
        assert ctx["computed_steps"][0] == 0 and ctx["computed_steps"][-1] == 7
        assert ctx["rel_l1"][0] is None  # each branch compares with its own previous call only


def test_strength_shortens_the_generation_and_copies_stay_independent(exported):
    ex = exported("flux")
    pipe = LoopPipe()
    t = teacache_trt.enable(pipe, ex.art_dir)
    pipe.scheduler.set_timesteps(20)
    assert t.num_steps == 20
    pipe.scheduler.set_begin_index(8)  # img2img with strength 0.6 starts at step 8
    assert t.num_steps == 12
    twin = copy.deepcopy(pipe.scheduler)
    twin.set_timesteps(7)
    assert len(twin.timesteps) == 7 and len(pipe.scheduler.timesteps) == 20


def test_cache_context_ignores_the_keywords_pipelines_add(exported):
    ex = exported("flux")
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0)
    t.reset(2)
    kwargs = kwargs_for(ex)
    for step in range(2):
        # WanPipeline (diffusers 0.42) names the branch and adds step information.
        with t.cache_context("cond", step_index=step, sigma=1.0 - step / 2, num_inference_steps=2):
            t(**kwargs)
    assert set(t.stats["contexts"]) == {"cond"}
    assert t.stats["contexts"]["cond"]["computed_steps"] == [0, 1]
