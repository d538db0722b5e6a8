"""A real diffusers WanPipeline end to end through ``teacache_trt.enable``: CFG on, so every step
calls the transformer twice, in ``cache_context("cond", step_index=..., sigma=...,
num_inference_steps=...)`` and ``("uncond", ...)``; each branch keeps its own TeaCache state, as
upstream keeps an even and an odd one."""
from __future__ import annotations

import contextlib

import pytest
import torch

import teacache_trt
from models import wan as M
from reference import TeaCacheReference
from teacache_trt.export.exporter import export_model

STEPS = M.PIPELINE_STEPS


class ReferenceBranches(torch.nn.Module):
    """The diffusers model under tests/reference.py, one reference state per cache context: what
    the pipeline sees in place of its transformer."""

    def __init__(self, model, hooks, coefficients, threshold, forced_first=1, forced_last=True):
        super().__init__()
        self.model = model
        self.refs: dict[str, TeaCacheReference] = {}
        self.args = (hooks, coefficients, threshold, STEPS, forced_first, forced_last)
        self._name = None

    config = property(lambda self: self.model.config)
    dtype = property(lambda self: self.model.dtype)
    device = property(lambda self: self.model.device)

    @contextlib.contextmanager
    def cache_context(self, name, **_):
        self._name = name
        yield

    def forward(self, return_dict=False, **kwargs):
        ref = self.refs.setdefault(self._name, TeaCacheReference(self.model, *self.args))
        return (ref(**kwargs),)

    def computed(self):
        return {name: ref.computed for name, ref in self.refs.items()}


def with_reference(model, *args):
    pipe = M.make_pipeline(model)
    branches = ReferenceBranches(model, *args)
    pipe.register_modules(transformer=branches)
    return pipe, branches


@pytest.fixture(scope="module")
def baseline(exported):
    return M.run_pipeline(M.make_pipeline(exported("wan").model))


def test_threshold_zero_renders_the_same_video(exported, baseline):
    ex = exported("wan")
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0)
    video = M.run_pipeline(pipe)
    assert video.shape == baseline.shape
    assert (video - baseline).abs().max().item() <= 1e-4
    stats = t.stats
    assert set(stats["contexts"]) == {"cond", "uncond"}  # the pipeline's own names
    assert stats["calls"] == 2 * STEPS
    for ctx in stats["contexts"].values():
        assert ctx["computed_steps"] == list(range(STEPS))


def test_each_branch_decides_as_the_reference(exported, baseline):
    ex = exported("wan")
    threshold = 0.2
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=threshold)
    video = M.run_pipeline(pipe)
    ref_pipe, branches = with_reference(ex.model, M.reference_hooks(ex.model), ex.manifest.criterion.coefficients,
                                        threshold)
    want = M.run_pipeline(ref_pipe)
    # Both branches see the same timestep embeddings; a state shared between them would compare
    # each call with the other branch's (equal) signal and skip far more.
    got = {name: ctx["computed_steps"] for name, ctx in t.stats["contexts"].items()}
    assert got == branches.computed()
    for steps in got.values():
        assert steps[0] == 0 and steps[-1] == STEPS - 1 and len(steps) < STEPS, got
    assert (video - want).abs().max().item() <= 1e-4
    assert 0 < (video - baseline).abs().max().item() < 0.5
    stats = t.stats
    assert torch.equal(M.run_pipeline(pipe), video)  # a fresh generation, same decisions
    assert t.stats == stats


def test_ret_variant_forces_five_steps_per_branch_and_not_the_last(exported, tmp_path):
    ex = exported("wan")
    art = tmp_path / "ret"
    manifest = export_model(ex.model_dir, art, axes=M.AXES, variant="Wan2.1-T2V-1.3B-ret", build="none",
                            log=lambda msg: None)
    assert manifest.criterion.forced.first == 5 and not manifest.criterion.forced.last
    assert "timestep_proj" in manifest.criterion.signal
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, art, threshold=10.0)
    M.run_pipeline(pipe)
    for ctx in t.stats["contexts"].values():
        assert ctx["computed_steps"] == [0, 1, 2, 3, 4]  # the last step is not forced
    t.threshold = 0.6  # skips 5 and 6, computes 7 by the criterion: [0, 1, 2, 3, 4, 7]
    video = M.run_pipeline(pipe)
    hooks = {**M.reference_hooks(ex.model), "signal_module": ex.model.condition_embedder.time_proj}  # e0
    ref_pipe, branches = with_reference(ex.model, hooks, manifest.criterion.coefficients, 0.6, 5, False)
    want = M.run_pipeline(ref_pipe)
    got = {n: c["computed_steps"] for n, c in t.stats["contexts"].items()}
    assert got == branches.computed() and got["cond"] != list(range(STEPS)), got
    assert (video - want).abs().max().item() <= 1e-4
