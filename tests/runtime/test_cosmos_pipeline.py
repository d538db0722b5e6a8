"""CosmosTextToWorldPipeline decides as upstream TeaCache4Cosmos: every step calls the
transformer twice without naming the calls (cond, then uncond) and steps the scheduler twice
(x0, then the update); each call keeps its own state, as upstream's even and odd states.  Here
the compiled run's schedule per call equals tests/reference.py running the diffusers model in
the same pipeline with one reference state for the even calls and one for the odd ones."""
from __future__ import annotations

import teacache_trt
from models import cosmos as M
from reference import ReferenceTransformer

STEPS = 8


class EvenOddReference(ReferenceTransformer):
    """Upstream's split: call 2k is the cond branch, call 2k + 1 the uncond one."""

    calls = 0

    def forward(self, return_dict=False, **kwargs):
        self._name = ("even", "odd")[self.calls % 2]
        self.calls += 1
        return super().forward(return_dict, **kwargs)


def test_each_call_of_a_step_decides_as_upstreams_even_and_odd_states(exported):
    ex = exported("cosmos")
    pipe = M.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, threshold=0.3)
    video = M.run_pipeline(pipe, STEPS)
    ref = EvenOddReference(ex.model, M.reference_hooks(ex.model), ex.manifest.policy_data["teacache"]["coefficients"], 0.3, STEPS)
    pipe = M.make_pipeline(ex.model)
    pipe.register_modules(transformer=ref)
    want = M.run_pipeline(pipe, STEPS)
    got = {name: ctx["computed_steps"] for name, ctx in t.stats["contexts"].items()}
    assert got == {"default": ref.computed()["even"], "default#1": ref.computed()["odd"]}, got
    assert len(got["default"]) < STEPS and got["default"][-1] == STEPS - 1  # skips, the last call forced
    assert (video - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
