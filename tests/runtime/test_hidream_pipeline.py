"""HiDreamImagePipeline decides as upstream TeaCache4HiDream-I1: one unnamed call per step with
CFG batched, one state, the first ceil(0.1 N) calls forced and the last one not.  Here the
compiled run's schedule equals tests/reference.py running the diffusers model in the same
pipeline (which negates the model's output: nothing the cache sees)."""
from __future__ import annotations

import teacache_trt
from models import hidream as M
from reference import ReferenceTransformer

STEPS = 10  # 0.1 * 10 = 1 forced call, whether the fraction is rounded up or down


def test_the_batched_call_decides_as_the_reference(exported):
    ex = exported("hidream")
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.4)
    image = M.run_pipeline(pipe, STEPS)
    ref = ReferenceTransformer(ex.model, M.reference_hooks(ex.model), ex.manifest.policy_data["teacache"]["coefficients"], 0.4, STEPS,
                               forced_first=M.FORCED_FIRST, forced_last=M.FORCED_LAST,
                               forced_fraction=M.FORCED_FRACTION)
    ref.max_seq = ex.model.max_seq  # the pipeline reads it off the transformer
    pipe = M.make_pipeline(ex.model)
    pipe.register_modules(transformer=ref)
    want = M.run_pipeline(pipe, STEPS)
    assert list(t.stats["contexts"]) == ["default"] and t.stats["computed_steps"] == ref.computed()[None]
    assert t.stats["skipped_steps"] and t.stats["computed_steps"][0] == 0, t.stats
    assert (image - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
