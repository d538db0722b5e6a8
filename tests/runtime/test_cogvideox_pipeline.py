"""Real diffusers CogVideoX pipelines end to end through ``teacache_trt.enable``, with CFG
batched into one transformer call (batch 2), as the pipelines do."""
from __future__ import annotations

import pytest
import torch
from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline,
                       CogVideoXPipeline)

import teacache_trt
from models import cogvideox as M
from teacache_trt.export.exporter import export_model

STEPS = 8
# Pixels: the tiny VAE scales by 8, so latents are 4 x 6 (2 x 3 patches); 5 frames -> 2 latent.
HEIGHT, WIDTH, FRAMES, TEXT = 32, 48, 5, 6


def make_pipe(transformer, pipeline=CogVideoXPipeline):
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    # The scheduler the CogVideoX checkpoints ship (v-prediction, trailing int64 timesteps).
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=3.0, timestep_spacing="trailing",
    )
    # Prompt embeddings are given, so no T5 encoder or tokenizer is needed.
    return pipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


def render(pipe, seed=0, height=HEIGHT, width=WIDTH, frames=FRAMES, text=TEXT, **kwargs):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, text, 32, generator=g)
    negative = torch.randn(1, text, 32, generator=g)
    return pipe(prompt_embeds=emb, negative_prompt_embeds=negative, height=height, width=width,
                num_frames=frames, num_inference_steps=STEPS, guidance_scale=6.0, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kwargs).frames


@pytest.fixture(scope="module")
def baseline(exported):
    ex = exported("cogvideox")
    return render(make_pipe(ex.model))


def test_threshold_zero_renders_the_same_video(exported, baseline):
    ex = exported("cogvideox")
    pipe = make_pipe(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0)
    assert pipe.transformer is t
    video = render(pipe)
    assert video.shape == baseline.shape
    assert (video - baseline).abs().max().item() <= 1e-4
    stats = t.stats
    assert stats["computed_steps"] == list(range(STEPS))
    # CFG is one batched call per step: one decision group, named by the pipeline.
    assert set(stats["contexts"]) == {"cond_uncond"}
    assert stats["calls"] == STEPS


def test_caching_skips_and_each_call_is_a_fresh_generation(exported, baseline):
    ex = exported("cogvideox")
    pipe = make_pipe(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.3)
    first = render(pipe)
    stats = t.stats
    assert stats["skipped_steps"], stats  # something was skipped ...
    assert stats["computed_steps"][0] == 0 and stats["computed_steps"][-1] == STEPS - 1  # ... never the ends
    assert len(stats["computed_steps"]) + len(stats["skipped_steps"]) == STEPS
    assert stats["blocks_runs"] == len(stats["computed_steps"])
    second = render(pipe)
    assert t.stats == stats  # reset by the pipeline's set_timesteps, not accumulated
    assert torch.equal(first, second)
    err = (first - baseline).abs().max().item()
    assert 0 < err < 0.5, err  # close to, not equal to, the uncached video


def test_image_to_video_15_passes_ofs_and_pads_frames(tmp_path):
    # CogVideoX1.5 I2V: the pipeline concatenates image latents on channels, passes ofs as a
    # (1,) tensor for the whole CFG batch, pads 3 latent frames to 4 (patch_size_t) and builds
    # RoPE on its "slice" grid.
    model = M.make_model_15()
    export_model(None, tmp_path / "art", model=model, axes=M.AXES_15, build="none", log=lambda msg: None)
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    args = dict(image=image, height=48, width=48, frames=9, text=5)
    baseline = render(make_pipe(model, CogVideoXImageToVideoPipeline), **args)
    pipe = make_pipe(model, CogVideoXImageToVideoPipeline)
    t = teacache_trt.enable(pipe, tmp_path / "art", threshold=0)
    assert (render(pipe, **args) - baseline).abs().max().item() <= 1e-4
    t.threshold = 0.3
    cached = render(pipe, **args)
    assert t.stats["skipped_steps"] and t.stats["computed_steps"][-1] == STEPS - 1, t.stats
    assert 0 < (cached - baseline).abs().max().item() < 0.5
