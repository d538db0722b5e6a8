"""HunyuanVideo15Pipeline and HunyuanVideo15ImageToVideoPipeline decide as LightX2V: the guider
runs its branches one by one in ``cache_context("pred_cond")`` and ``("pred_uncond")``, each with
its own state, the first and the last call of each forced.  The generic pipeline tests
(test_pipelines.py) check the text-to-video outputs and forced steps; here each branch's
schedule equals tests/reference.py running the diffusers model inside the same pipeline, and the
image-to-video pipeline (non-zero image embeddings, so the model's I2V branch) runs through the
same graphs."""
from __future__ import annotations

import teacache_trt
from models import hunyuan_video15 as M
from reference import ReferenceTransformer

STEPS = 8


def reference_run(make, run, model, threshold, coefficients):
    pipe = make(model)
    ref = ReferenceTransformer(model, M.reference_hooks(model), coefficients, threshold, STEPS)
    pipe.register_modules(transformer=ref)
    return run(pipe, STEPS), ref.computed()


def computed(t):
    return {name: ctx["computed_steps"] for name, ctx in t.stats["contexts"].items()}


def test_text_to_video_branches_decide_as_the_reference(exported):
    ex = exported("hunyuan_video15")
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.15)
    video = M.run_pipeline(pipe, STEPS)
    want, ref_computed = reference_run(M.make_pipeline, M.run_pipeline, ex.model, 0.15,
                                       ex.manifest.policy_data["teacache"]["coefficients"])
    assert computed(t) == ref_computed and set(ref_computed) == {"pred_cond", "pred_uncond"}, computed(t)
    assert len(computed(t)["pred_cond"]) < STEPS  # something skipped
    assert (video - want).abs().max().item() <= 1e-4


def test_image_to_video_runs_through_the_same_graphs(exported):
    ex = exported("hunyuan_video15")
    baseline = M.run_i2v_pipeline(M.make_i2v_pipeline(ex.model), STEPS)
    pipe = M.make_i2v_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0)
    assert (M.run_i2v_pipeline(pipe, STEPS) - baseline).abs().max().item() <= 1e-4 * max(1.0, baseline.abs().max().item())
    assert computed(t) == {"pred_cond": list(range(STEPS)), "pred_uncond": list(range(STEPS))}
    t.threshold = 0.15
    video = M.run_i2v_pipeline(pipe, STEPS)
    want, ref_computed = reference_run(M.make_i2v_pipeline, M.run_i2v_pipeline, ex.model, 0.15,
                                       ex.manifest.policy_data["teacache"]["coefficients"])
    assert computed(t) == ref_computed and len(computed(t)["pred_cond"]) < STEPS, computed(t)
    assert (video - want).abs().max().item() <= 1e-4
