"""WanPipeline and WanImageToVideoPipeline decide as upstream: CFG on, so every step calls the
transformer twice, in ``cache_context("cond", ...)`` and ``("uncond", ...)``, and each branch
keeps its own TeaCache state (upstream's even and odd states).  The generic pipeline tests
(test_pipelines.py) check outputs and forced steps; here the compiled run's schedule per branch
equals tests/reference.py running the diffusers model inside the same pipeline."""
from __future__ import annotations

import pytest
import torch

import teacache_trt
from models import wan as T2V
from models import wan_i2v as I2V
from models import wan_ti2v as TI2V
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


# --- Wan2.2 TI2V-5B: per-token timesteps (expand_timesteps) ------------------------------------------
def seen_timesteps(t):
    """Record the ``timestep`` of every call the pipeline makes to ``t``."""
    seen, forward = [], t.forward

    def spy(*args, **kwargs):
        seen.append(torch.as_tensor(kwargs["timestep"]).clone())
        return forward(*args, **kwargs)

    t.forward = spy
    return seen


@pytest.mark.parametrize("image", [False, True], ids=["WanPipeline", "WanImageToVideoPipeline"])
def test_ti2v_pipelines_pass_per_token_timesteps_and_decide_as_the_reference(exported, image):
    ex = exported("wan_ti2v")
    assert ex.manifest.variant == "Wan2.2-TI2V-5B"  # from the 48 latent channels, not the width
    make, run = (TI2V.make_i2v_pipeline, TI2V.run_i2v_pipeline) if image else (TI2V.make_pipeline, TI2V.run_pipeline)
    coefficients = ex.manifest.policy_data["teacache"]["coefficients"]
    want = run(make(ex.model), STEPS)
    pipe = make(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0)
    seen = seen_timesteps(t)
    assert (run(pipe, STEPS) - want).abs().max().item() <= 1e-4
    tokens = 2 * 2 * 3  # 2 latent frames of 4 x 6 latents in 2 x 2 patches
    assert {tuple(s.shape) for s in seen} == {(1, tokens)}
    first_frame = torch.stack([s[0, :6] for s in seen])
    assert (first_frame == 0).all() if image else (first_frame > 0).all()  # the image's frame keeps t = 0

    t.threshold = 0.2
    got = run(pipe, STEPS)
    pipe_ref = make(ex.model)
    ref = ReferenceTransformer(ex.model, TI2V.reference_hooks(ex.model), coefficients, 0.2, STEPS)
    pipe_ref.register_modules(transformer=ref)
    want = run(pipe_ref, STEPS)
    assert computed(t) == ref.computed() and computed(t)["cond"] != list(range(STEPS)), computed(t)
    assert (got - want).abs().max().item() <= 1e-4
