"""A real diffusers ConsisIDPipeline end to end through ``teacache_trt.enable``: CFG batched into
one transformer call per step (no cache_context), one face for the whole batch."""
from __future__ import annotations

import pytest
import torch

import teacache_trt
from models import consisid as M
from reference import ReferenceTransformer

pytest.importorskip("cv2", reason="ConsisIDPipeline needs OpenCV: pip install -e '.[test]'")

STEPS = M.PIPELINE_STEPS


@pytest.fixture(scope="module")
def art(exported):
    ex = exported("consisid")
    return ex.model, ex.art_dir, ex.manifest


@pytest.fixture(scope="module")
def baseline(art):
    return M.run_pipeline(M.make_pipeline(art[0]))


def test_threshold_zero_renders_the_same_video(art, baseline):
    model, out, _ = art
    pipe = M.make_pipeline(model)
    t = teacache_trt.enable(pipe, out, threshold=0)
    video = M.run_pipeline(pipe)
    assert video.shape == baseline.shape
    assert (video - baseline).abs().max().item() <= 1e-4
    assert t.stats["computed_steps"] == list(range(STEPS))
    assert t.stats["calls"] == STEPS  # one batched call per step


def test_caching_decides_as_the_reference(art, baseline):
    model, out, manifest = art
    threshold = 0.2
    pipe = M.make_pipeline(model)
    t = teacache_trt.enable(pipe, out, threshold=threshold)
    video = M.run_pipeline(pipe)
    stats = t.stats
    ref_pipe = M.make_pipeline(model)
    ref = ReferenceTransformer(model, M.reference_hooks(model), manifest.criterion.coefficients, threshold, STEPS)
    ref_pipe.register_modules(transformer=ref)
    want = M.run_pipeline(ref_pipe)
    assert [stats["computed_steps"]] == list(ref.computed().values())
    assert stats["skipped_steps"] and stats["computed_steps"][0] == 0 and stats["computed_steps"][-1] == STEPS - 1
    assert (video - want).abs().max().item() <= 1e-4
    assert 0 < (video - baseline).abs().mean().item() < 0.05  # close to, not equal to, the uncached video
    assert torch.equal(M.run_pipeline(pipe), video)  # the next call is a fresh generation
    assert t.stats == stats
