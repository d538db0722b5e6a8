"""Qwen-Image: rotary positions from ``img_shapes``, true CFG with prompts of different lengths,
what the drop-in refuses, and vLLM-Omni's |poly(d)| accumulation."""
from __future__ import annotations

import pytest
import torch

import teacache_trt
from models import qwen_image as M
from reference import ReferenceTransformer, TeaCacheReference
from teacache_trt import TeaCacheError
from teacache_trt.families.qwen_image import QwenImage, RotaryTables, position_ids

STEPS = 8
RULE = dict(forced_first=M.FORCED_FIRST, forced_last=M.FORCED_LAST, accumulate=M.ACCUMULATE, eps=M.EPS)


def computed(t):
    return {name: ctx["computed_steps"] for name, ctx in t.stats["contexts"].items()}


def example_kwargs(model, **sizes):
    return QwenImage.kwargs_from_feed(QwenImage.example_inputs(dict(model.config), {**M.POINT, **sizes},
                                                               torch.float32))


def test_rotary_tables_gathered_by_position_ids_equal_the_models():
    model = M.make_model()
    # An Edit layout: the target and a reference image, odd heights and widths (centred positions).
    shapes = ((1, 4, 6), (1, 3, 5))
    img_ids, txt_ids = position_ids(shapes, 7)
    image, text = model.pos_embed([list(shapes)], max_txt_seq_len=7, device=torch.device("cpu"))
    tables = RotaryTables(model.pos_embed)
    assert torch.equal(torch.view_as_complex(tables(img_ids)), image)
    assert torch.equal(torch.view_as_complex(tables(txt_ids)), text)
    assert position_ids(shapes, 7) is position_ids(shapes, 7)  # same tensors: the context graph runs once


def test_cfg_prompts_of_different_lengths_decide_as_the_reference(exported):
    ex = exported("qwen_image")
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.2)
    runs = []
    infer_into = t.runners["context"].infer_into
    t.runners["context"].infer_into = lambda feed, out: (runs.append(1), infer_into(feed, out))[1]
    got = M.run_pipeline(pipe, STEPS)
    assert len(runs) == 2  # once per cache context: the prompt and the ids stay the same tensors
    assert len(t._plans) == 2  # one step plan per text length (6 and 3 tokens)

    ref_pipe = M.make_pipeline(ex.model)
    ref = ReferenceTransformer(ex.model, M.reference_hooks(ex.model), QwenImage.variants["Qwen-Image"].coefficients, 0.2,
                               STEPS, **RULE)
    ref_pipe.register_modules(transformer=ref)
    want = M.run_pipeline(ref_pipe, STEPS)
    assert computed(t) == ref.computed(), (computed(t), ref.computed())
    assert any(len(steps) < STEPS for steps in computed(t).values())  # something was skipped
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())


@pytest.fixture(scope="module")
def edit_art(tmp_path_factory):
    """The tiny model exported for QwenImageEditPipeline: the reference image, resized by the
    pipeline to about 1 MP, adds ~4100 tokens to the 16 of the 64x64 target."""
    from teacache_trt.export.exporter import export_model

    model = M.make_model()
    art = tmp_path_factory.mktemp("qwen_edit") / "art"
    export_model(None, art, model=model, axes={**M.AXES, "batch": (1, 1, 2), "img_seq": (4, 16, 4224)},
                 build="none", verify=False, log=lambda msg: None)  # the generic tests verify this model
    return model, art


def test_edit_pipeline_with_a_reference_image_decides_as_the_reference(edit_art):
    """Qwen-Image-Edit: the same class, two images in img_shapes (the target and the reference),
    the reference image's tokens appended to the latents and sliced off the output."""
    import numpy as np
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline
    from PIL import Image

    model, art = edit_art
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    emb, negative = M.prompts()

    def run(transformer):
        pipe = QwenImageEditPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                     tokenizer=None, processor=None, transformer=transformer)
        t = teacache_trt.enable(pipe, art, threshold=0.2) if transformer is None else transformer
        out = pipe(image=image, prompt_embeds=emb, negative_prompt_embeds=negative, true_cfg_scale=4.0,
                   height=M.HEIGHT, width=M.WIDTH, num_inference_steps=STEPS, output_type="latent",
                   generator=torch.Generator().manual_seed(0)).images
        return out, t

    ref = ReferenceTransformer(model, M.reference_hooks(model), QwenImage.variants["Qwen-Image"].coefficients, 0.2,
                               STEPS, **RULE)
    want, _ = run(ref)
    got, t = run(None)
    assert computed(t) == ref.computed() and len(computed(t)["cond"]) < STEPS, (computed(t), ref.computed())
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    at = list(t._input_specs).index("hidden_states")
    (tokens,) = {key[at][0][1] for key in t._plans}
    assert tokens > 4000 and got.shape[1] == 16  # reference tokens in, the target's 16 out


def test_refused_keywords_are_named(exported):
    ex = exported("qwen_image")
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0)
    t.reset(1)
    kwargs = example_kwargs(ex.model)
    padded = torch.ones(2, M.POINT["txt_seq"])
    padded[1, -2:] = 0
    with pytest.raises(TeaCacheError, match="encoder_hidden_states_mask has padding"):
        t(**kwargs, encoder_hidden_states_mask=padded)
    for key, value in (("guidance", torch.ones(2)), ("controlnet_block_samples", [torch.zeros(1)]),
                       ("additional_t_cond", torch.zeros(2, dtype=torch.long))):
        with pytest.raises(TeaCacheError, match=key):
            t(**kwargs, **{key: value})
    with pytest.raises(TeaCacheError, match=r"img_shapes \[\(1, 3, 3\)\] describe 9 image tokens"):
        t(**{**kwargs, "img_shapes": [[(1, 3, 3)]] * 2})
    with pytest.raises(TeaCacheError, match="img_shapes is missing"):
        t(**{**kwargs, "img_shapes": None})
    # An all-ones mask is no mask, for the model and for the graphs.
    t.reset(1)
    out = t(**kwargs, encoder_hidden_states_mask=torch.ones(2, M.POINT["txt_seq"]), return_dict=False)[0]
    with torch.no_grad():
        want = ex.model(**kwargs, return_dict=False)[0]
    assert (out - want).abs().max().item() <= 1e-4


def test_positions_beyond_the_models_tables_are_refused():
    with pytest.raises(TeaCacheError, match="rotary positions up to 4099.*4096 positions"):
        position_ids(((1, 2, 8192),), 4)


@pytest.mark.parametrize("key", ["zero_cond_t", "use_additional_t_cond", "use_layer3d_rope", "guidance_embeds"])
def test_configs_this_adapter_does_not_split_are_refused(key):
    config = dict(M.make_model().config)
    QwenImage.check_config(config)
    with pytest.raises(TeaCacheError, match=f"{key}=True"):
        QwenImage.check_config({**config, key: True})


def near_converged_loop(model, forward, steps=12, dt=2e-4):
    """Late-denoising-like calls: the signal moves by d ~ 0.002 per call, where vLLM-Omni's
    Qwen-Image polynomial is negative (d < 0.0069)."""
    kwargs = example_kwargs(model)
    outs = []
    for i in range(steps):
        kwargs["timestep"] = torch.full((2,), 0.5 - dt * i)
        outs.append(forward(**kwargs))
        kwargs["hidden_states"] = kwargs["hidden_states"] - dt * outs[-1]
    return outs


def test_abs_accumulation_computes_where_raw_would_never(exported):
    ex = exported("qwen_image")
    coefficients, hooks = QwenImage.variants["Qwen-Image"].coefficients, M.reference_hooks(ex.model)
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
