"""WanPipeline and WanImageToVideoPipeline decide as upstream: CFG on, so every step calls the
transformer twice, in ``cache_context("cond", ...)`` and ``("uncond", ...)``, and each branch
keeps its own TeaCache state (upstream's even and odd states).  The generic pipeline tests
(test_pipelines.py) check outputs and forced steps; here the compiled run's schedule per branch
equals tests/reference.py running the diffusers model inside the same pipeline."""
from __future__ import annotations

import teacache_trt
from models import wan as T2V
from models import wan_i2v as I2V
from reference import ReferenceTransformer

STEPS = 8


def reference_run(spec, model, threshold, coefficients, **forced):
    pipe = spec.make_pipeline(model)
    ref = ReferenceTransformer(model, spec.reference_hooks(model), coefficients, threshold, STEPS, **forced)
    pipe.register_modules(transformer=ref)
    return spec.run_pipeline(pipe, STEPS), ref.computed()


def computed(t):
    return {name: ctx["computed_steps"] for name, ctx in t.stats["contexts"].items()}


def test_each_branch_decides_as_the_reference(exported):
    ex = exported("wan")
    pipe = T2V.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.2)
    video = T2V.run_pipeline(pipe, STEPS)
    want, ref_computed = reference_run(T2V, ex.model, 0.2, ex.manifest.policy_data["teacache"]["coefficients"])
    # Both branches see the same timestep embeddings: a state shared between them would compare
    # each call with the other branch's (equal) signal and skip far more.
    assert computed(t) == ref_computed and computed(t)["cond"] == [0, 2, 4, 6, 7], computed(t)
    assert (video - want).abs().max().item() <= 1e-4


def test_image_to_video_ret_variant_forces_five_steps_per_branch_and_not_the_last(exported):
    # The tiny I2V model exported as Wan2.1-I2V-14B-480P-ret: signal e0, steps 0-4 forced.
    ex = exported("wan_i2v")
    assert ex.manifest.policy_data["teacache"]["forced"] == {"first": 5, "last": False, "first_fraction": 0.0}
    pipe = I2V.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=10.0)
    I2V.run_pipeline(pipe, STEPS)
    assert computed(t) == {"cond": [0, 1, 2, 3, 4], "uncond": [0, 1, 2, 3, 4]}  # the last step is not forced
    t.threshold = 0.2
    video = I2V.run_pipeline(pipe, STEPS)
    want, ref_computed = reference_run(I2V, ex.model, 0.2, ex.manifest.policy_data["teacache"]["coefficients"],
                                       forced_first=5, forced_last=False)
    assert computed(t) == ref_computed and computed(t)["cond"] == [0, 1, 2, 3, 4, 6], computed(t)
    assert (video - want).abs().max().item() <= 1e-4
