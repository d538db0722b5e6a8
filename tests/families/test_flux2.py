"""FLUX.2: the variant from the config, the fp32 rotary tables, klein's CFG contexts and dev's
reference-image tokens against the reference, the refused KV-cache keywords, and vLLM-Omni's
|poly(d)| accumulation."""
from __future__ import annotations

import pytest
import torch

import teacache_trt
from models import flux2 as DEV
from models import flux2_klein as KLEIN
from reference import ReferenceTransformer, TeaCacheReference
from teacache_trt import TeaCacheError
from teacache_trt.families import ForcedSteps
from teacache_trt.families.flux2 import Flux2, Rotary

STEPS = 8
RULE = dict(forced_first=DEV.FORCED_FIRST, forced_last=DEV.FORCED_LAST, accumulate=DEV.ACCUMULATE, eps=DEV.EPS)


def computed(t):
    return {name: ctx["computed_steps"] for name, ctx in t.stats["contexts"].items()}


def example_kwargs(model, **sizes):
    return Flux2.kwargs_from_feed(Flux2.example_inputs(dict(model.config), {**DEV.POINT, **sizes}, torch.float32))


@pytest.mark.parametrize("name, variant, constant", [("flux2", "FLUX.2-dev", -2e-2),
                                                     ("flux2_klein", "FLUX.2-klein", 2.64230861e-1)])
def test_the_variant_follows_guidance_embeds(exported, name, variant, constant):
    ex = exported(name)
    assert ex.manifest.variant == variant == Flux2.variant_for(dict(ex.model.config))
    chosen = Flux2.variants[variant]
    assert chosen.coefficients[-1] == constant  # Qwen-Image's set for dev, FLUX.1's for klein
    assert chosen.forced == ForcedSteps(first=1, last=False) and (chosen.accumulate, chosen.eps) == ("abs", 1e-8)
    assert ("guidance" in ex.manifest.graphs["embed"].input_names) == (name == "flux2")


def test_fp32_rotary_tables_stay_close_to_the_models_fp64_ones():
    model = DEV.make_model()
    # FLUX.2's ids at real sizes: a 64x64-token image, 512 text tokens, a reference image at t=10.
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    image = torch.stack([torch.zeros(4096, dtype=torch.long), rows.flatten(), cols.flatten(),
                         torch.zeros(4096, dtype=torch.long)], dim=1)
    reference = image.clone()
    reference[:, 0] = 10
    text = torch.zeros(512, 4, dtype=torch.long)
    text[:, 3] = torch.arange(512)
    ids = torch.cat([text, image, reference])
    for got, want in zip(Rotary(model.pos_embed)(ids), model.pos_embed(ids)):
        assert (got - want).abs().max().item() <= 5e-5


def reference_run(spec, model, coefficients, threshold):
    pipe = spec.make_pipeline(model)
    ref = ReferenceTransformer(model, spec.reference_hooks(model), coefficients, threshold, STEPS, **RULE)
    pipe.register_modules(transformer=ref)
    return spec.run_pipeline(pipe, STEPS), ref.computed()


@pytest.mark.parametrize("spec, contexts", [(KLEIN, {"cond", "uncond"}), (DEV, {"default"})])
def test_pipeline_decides_as_the_reference(exported, spec, contexts):
    """klein base: CFG as two cache contexts, prompts of different lengths; dev: one unnamed call
    per step with the reference image's tokens appended to the latents."""
    ex = exported(spec.__name__.rpartition(".")[2])
    pipe = spec.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.2)
    got = spec.run_pipeline(pipe, STEPS)
    want, ref_computed = reference_run(spec, ex.model, Flux2.variants[ex.manifest.variant].coefficients, 0.2)
    names = {"default" if name is None else name: steps for name, steps in ref_computed.items()}
    assert set(computed(t)) == contexts and computed(t) == names, (computed(t), names)
    assert any(len(steps) < STEPS for steps in computed(t).values())  # something was skipped
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    at = list(t._input_specs).index("hidden_states")
    tokens = {key[at][0][1] for key in t._plans}  # hidden_states' token count per step plan
    assert tokens == ({32} if spec is DEV else {16})  # dev: 16 target + 16 reference-image tokens


def test_kv_cache_keywords_are_refused_by_name(exported):
    ex = exported("flux2")
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0)
    t.reset(1)
    kwargs = example_kwargs(ex.model)
    for key, value in (("kv_cache_mode", "extract"), ("num_ref_tokens", 4), ("ref_fixed_timestep", 0.5),
                       ("kv_cache", object())):
        with pytest.raises(TeaCacheError, match=f"{key}=.*Flux2KleinKVPipeline"):
            t(**kwargs, **{key: value})
    # Their off values, and ids of one sample (the model takes both layouts), change nothing.
    out = t(**{**kwargs, "img_ids": kwargs["img_ids"][0], "txt_ids": kwargs["txt_ids"][0]},
            kv_cache_mode=None, num_ref_tokens=0, ref_fixed_timestep=0.0, return_dict=False)[0]
    with torch.no_grad():
        want = ex.model(**kwargs, return_dict=False)[0]
    assert (out - want).abs().max().item() <= 1e-4


def near_converged_loop(model, forward, steps=12, dt=2e-4):
    """Late-denoising-like calls: the signal moves by d ~ 0.003 per call, where the FLUX.2-dev
    polynomial (Qwen-Image's) is negative (d < 0.0069)."""
    kwargs = example_kwargs(model)
    outs = []
    for i in range(steps):
        kwargs["timestep"] = torch.full((2,), 0.5 - dt * i)
        outs.append(forward(**kwargs))
        kwargs["hidden_states"] = kwargs["hidden_states"] - dt * outs[-1]
    return outs


def test_abs_accumulation_computes_where_raw_would_never(exported):
    ex = exported("flux2")
    coefficients, hooks = Flux2.variants[ex.manifest.variant].coefficients, DEV.reference_hooks(ex.model)
    raw = TeaCacheReference(ex.model, hooks, coefficients, 0.05, 12, **{**RULE, "accumulate": "raw"})
    near_converged_loop(ex.model, raw)
    assert raw.computed == [0]  # poly(d) < 0: a raw sum only falls
    ref = TeaCacheReference(ex.model, hooks, coefficients, 0.05, 12, **RULE)
    want = near_converged_loop(ex.model, ref)
    assert len(ref.computed) > 1
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0.05)
    t.reset(12)
    got = near_converged_loop(ex.model, lambda **kw: t(**kw, return_dict=False)[0])
    assert t.stats["computed_steps"] == ref.computed
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 1e-4
