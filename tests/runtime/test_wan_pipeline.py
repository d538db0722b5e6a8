"""A real diffusers WanPipeline end to end through ``teacache_trt.enable``: CFG on, so every step
calls the transformer twice, in ``cache_context("cond", step_index=..., sigma=...,
num_inference_steps=...)`` and ``("uncond", ...)``; each branch keeps its own TeaCache state, as
upstream keeps an even and an odd one."""
from __future__ import annotations

import pytest
import torch

import teacache_trt
from models import wan as M
from models import wan_i2v as I2V
from reference import ReferenceTransformer

STEPS = M.PIPELINE_STEPS


def with_reference(model, hooks, coefficients, threshold):
    """The pipeline with the diffusers model under the reference, one state per branch."""
    pipe = M.make_pipeline(model)
    branches = ReferenceTransformer(model, hooks, coefficients, threshold, STEPS)
    pipe.register_modules(transformer=branches)
    return pipe, branches


@pytest.fixture(scope="module")
def baseline(exported):
    return M.run_pipeline(M.make_pipeline(exported("wan").model))


def test_threshold_zero_renders_the_same_video(exported, baseline):
    ex = exported("wan")
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0)
    video = M.run_pipeline(pipe)
    assert video.shape == baseline.shape
    assert (video - baseline).abs().max().item() <= 1e-4
    stats = t.stats
    assert set(stats["contexts"]) == {"cond", "uncond"}  # the pipeline's own names
    assert stats["calls"] == 2 * STEPS
    for ctx in stats["contexts"].values():
        assert ctx["computed_steps"] == list(range(STEPS))


def test_each_branch_decides_as_the_reference(exported, baseline):
    ex = exported("wan")
    threshold = 0.2
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=threshold)
    video = M.run_pipeline(pipe)
    ref_pipe, branches = with_reference(ex.model, M.reference_hooks(ex.model), ex.manifest.criterion.coefficients,
                                        threshold)
    want = M.run_pipeline(ref_pipe)
    # Both branches see the same timestep embeddings; a state shared between them would compare
    # each call with the other branch's (equal) signal and skip far more.
    got = {name: ctx["computed_steps"] for name, ctx in t.stats["contexts"].items()}
    assert got == branches.computed()
    for steps in got.values():
        assert steps[0] == 0 and steps[-1] == STEPS - 1 and len(steps) < STEPS, got
    assert (video - want).abs().max().item() <= 1e-4
    assert 0 < (video - baseline).abs().max().item() < 0.5
    stats = t.stats
    assert torch.equal(M.run_pipeline(pipe), video)  # a fresh generation, same decisions
    assert t.stats == stats


def test_image_to_video_ret_variant_forces_five_steps_per_branch_and_not_the_last(exported):
    # WanImageToVideoPipeline: CLIP image tokens and 512 text tokens per call, the tiny I2V model
    # exported as Wan2.1-I2V-14B-480P-ret (signal e0, steps 0-4 forced, the last one not).
    ex = exported("wan_i2v")
    assert ex.manifest.criterion.forced.first == 5 and not ex.manifest.criterion.forced.last
    pipe = I2V.make_pipeline(ex.model)
    baseline = I2V.run_pipeline(pipe)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0)
    assert (I2V.run_pipeline(pipe) - baseline).abs().max().item() <= 1e-4
    t.threshold = 10.0
    I2V.run_pipeline(pipe)
    assert set(t.stats["contexts"]) == {"cond", "uncond"}
    for ctx in t.stats["contexts"].values():
        assert ctx["computed_steps"] == [0, 1, 2, 3, 4]  # the last step is not forced
    t.threshold = 0.2
    video = I2V.run_pipeline(pipe)
    ref_pipe = I2V.make_pipeline(ex.model)
    ref = ReferenceTransformer(ex.model, I2V.reference_hooks(ex.model), ex.manifest.criterion.coefficients, 0.2,
                               STEPS, forced_first=5, forced_last=False)
    ref_pipe.register_modules(transformer=ref)
    want = I2V.run_pipeline(ref_pipe)
    got = {n: c["computed_steps"] for n, c in t.stats["contexts"].items()}
    assert got == ref.computed() and got["cond"] != list(range(STEPS)), got
    assert (video - want).abs().max().item() <= 1e-4
