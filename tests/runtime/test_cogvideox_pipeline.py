"""CogVideoX pipeline specifics (tests/runtime/test_pipelines.py covers the common path)."""
from __future__ import annotations

import torch
from diffusers import CogVideoXImageToVideoPipeline

import teacache_trt
from models import cogvideox as M
from teacache_trt.export.exporter import export_model

STEPS = 8


def test_image_to_video_15_passes_ofs_and_pads_frames(tmp_path):
    # CogVideoX1.5 I2V: the pipeline concatenates image latents on channels, passes ofs as a
    # (1,) tensor for the whole CFG batch, pads 3 latent frames to 4 (patch_size_t) and builds
    # RoPE on its "slice" grid.
    model = M.make_model_15()
    export_model(None, tmp_path / "art", model=model, axes=M.AXES_15, build="none", log=lambda msg: None)
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    args = dict(image=image, height=48, width=48, frames=9, text=5)
    baseline = M.run_pipeline(M.make_pipeline(model, CogVideoXImageToVideoPipeline), STEPS, **args)
    pipe = M.make_pipeline(model, CogVideoXImageToVideoPipeline)
    t = teacache_trt.enable(pipe, tmp_path / "art", threshold=0)
    assert (M.run_pipeline(pipe, STEPS, **args) - baseline).abs().max().item() <= 1e-4
    t.threshold = 0.3
    cached = M.run_pipeline(pipe, STEPS, **args)
    assert t.stats["skipped_steps"] and t.stats["computed_steps"][-1] == STEPS - 1, t.stats
    assert 0 < (cached - baseline).abs().max().item() < 0.5
