"""ConsisIDPipeline decides as upstream: CFG batched into one call per step (no cache_context),
one face for the whole batch.  The generic pipeline tests (test_pipelines.py) check outputs and
forced steps; here the compiled run's schedule equals tests/reference.py running the diffusers
model inside the same pipeline."""
from __future__ import annotations

import pytest

import teacache_trt
from models import consisid as M
from reference import ReferenceTransformer

pytest.importorskip("cv2", reason="ConsisIDPipeline needs OpenCV: pip install -e '.[test]'")

STEPS = 8


def test_caching_decides_as_the_reference(exported):
    ex = exported("consisid")
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=M.PIPELINE_THRESHOLD)
    video = M.run_pipeline(pipe, STEPS)
    ref_pipe = M.make_pipeline(ex.model)
    ref = ReferenceTransformer(ex.model, M.reference_hooks(ex.model), ex.manifest.policy_data["teacache"]["coefficients"],
                               M.PIPELINE_THRESHOLD, STEPS)
    ref_pipe.register_modules(transformer=ref)
    want = M.run_pipeline(ref_pipe, STEPS)
    assert ref.computed() == {None: t.stats["computed_steps"]}
    assert t.stats["skipped_steps"], t.stats
    assert (video - want).abs().max().item() <= 1e-4
