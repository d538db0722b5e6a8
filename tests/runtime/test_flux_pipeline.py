"""A real diffusers FluxPipeline end to end through ``teacache_trt.enable``."""
from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

import teacache_trt

STEPS = 8


def make_pipe(transformer):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, scaling_factor=0.5, shift_factor=0.1,
    ).eval()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def render(pipe, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 8, 32, generator=g)
    pooled = torch.randn(1, 32, generator=g)
    return pipe(prompt_embeds=emb, pooled_prompt_embeds=pooled, height=16, width=16,
                num_inference_steps=STEPS, guidance_scale=1.0, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.fixture(scope="module")
def baseline(exported):
    ex = exported("flux")
    return render(make_pipe(ex.model))


def test_threshold_zero_renders_the_same_image(exported, baseline):
    ex = exported("flux")
    pipe = make_pipe(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0)
    assert pipe.transformer is t
    image = render(pipe)
    assert (image - baseline).abs().max().item() <= 1e-4
    assert t.stats["computed_steps"] == list(range(STEPS))


def test_caching_skips_and_each_call_is_a_fresh_generation(exported, baseline):
    ex = exported("flux")
    pipe = make_pipe(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.8)
    first = render(pipe)
    stats = t.stats
    assert stats["skipped_steps"], stats  # something was skipped ...
    assert stats["computed_steps"][0] == 0 and stats["computed_steps"][-1] == STEPS - 1  # ... never the ends
    assert len(stats["computed_steps"]) + len(stats["skipped_steps"]) == STEPS
    second = render(pipe)
    assert t.stats == stats  # reset by the pipeline's set_timesteps, not accumulated
    assert torch.equal(first, second)
    assert (first - baseline).abs().max().item() < 0.5  # close to, not equal to, the uncached image


def test_true_cfg_keeps_one_state_per_branch(exported):
    ex = exported("flux")
    pipe = make_pipe(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.8)
    render(pipe, negative_prompt_embeds=torch.zeros(1, 8, 32),
           negative_pooled_prompt_embeds=torch.zeros(1, 32), true_cfg_scale=2.0)
    contexts = t.stats["contexts"]
    assert set(contexts) == {"cond", "uncond"}
    for ctx in contexts.values():
        assert len(ctx["computed_steps"]) + len(ctx["skipped_steps"]) == STEPS
        assert ctx["computed_steps"][0] == 0 and ctx["computed_steps"][-1] == STEPS - 1
