"""FluxPipeline specifics (tests/runtime/test_pipelines.py covers the common path)."""
from __future__ import annotations

import torch

import teacache_trt
from models import flux as M

STEPS = 8


def test_true_cfg_keeps_one_state_per_branch(exported):
    ex = exported("flux")
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.8)
    M.run_pipeline(pipe, STEPS, negative_prompt_embeds=torch.zeros(1, 8, 32),
                   negative_pooled_prompt_embeds=torch.zeros(1, 32), true_cfg_scale=2.0)
    contexts = t.stats["contexts"]
    assert set(contexts) == {"cond", "uncond"}
    for ctx in contexts.values():
        assert len(ctx["computed_steps"]) + len(ctx["skipped_steps"]) == STEPS
        assert ctx["computed_steps"][0] == 0 and ctx["computed_steps"][-1] == STEPS - 1
