"""Wan2.2 A14B: two experts, two artifacts, two compiled transformers in one pipeline.

``enable(pipe, ART_high, transformer_2=ART_low)``: each expert keeps its own cache contexts,
residuals and coefficients, and counts its own steps (the high-noise expert the steps with
``t >= boundary_ratio * 1000``, the low-noise one the rest), so each forces its own first and
last step of each branch.  The compiled pipeline is compared with an independent reference per
expert (tests/reference.py on the diffusers experts inside the same pipeline), and references
that mix the experts' polynomials or states are shown to decide otherwise.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import teacache_trt
from teacache_trt.errors import TeaCacheError
from teacache_trt.export.exporter import export_model
from teacache_trt.families import magcache_ratios
from teacache_trt.policies import MagCache, TeaCache
from teacache_trt.runtime.api import expert_steps
from models import wan_a14b as M
from reference import ReferenceTransformer, TeaCacheReference

STEPS = 16  # 11 high-noise steps and 5 low-noise ones at shift 12, boundary 0.875
HIGH_POLY = [5.0, 0.0]  # each expert's own polynomial (none is published): acc += 5 d ...
LOW_POLY = [1.0, 0.0]  # ... and acc += d, fitted to how differently the two signals move
THRESHOLD = 0.6


@pytest.fixture(scope="module")
def experts(exported, tmp_path_factory):
    """(high Exported, low expert model, low artifact exported with its own --coefficients)."""
    high = exported("wan_a14b")
    low = M.make_low_model()
    root = tmp_path_factory.mktemp("a14b_low")
    low.save_pretrained(root / "model")
    export_model(root / "model", root / "art", axes=M.AXES, build="none", variant="Wan2.2-T2V-A14B-low",
                 coefficients=LOW_POLY, log=lambda m: None)
    return high, low, root / "art"


def split(steps=STEPS):
    pipe = M.make_experts_pipeline(M.make_model(), M.make_low_model())
    pipe.scheduler.set_timesteps(steps)
    return expert_steps(pipe, pipe.scheduler.timesteps, 1000)


def contexts(t) -> dict[str, list[int]]:
    return {name: ctx["computed_steps"] for name, ctx in t.stats["contexts"].items()}


def compiled_run(experts, steps=STEPS, **options):
    high, _, low_art = experts
    pipe = M.make_experts_pipeline(high.model, experts[1])
    t = teacache_trt.enable(pipe, high.art_dir, transformer_2=low_art, **options)
    out = M.run_pipeline(pipe, steps)
    return out, contexts(t), contexts(pipe.transformer_2)


def reference_run(experts, high_poly=HIGH_POLY, low_poly=LOW_POLY, counts=None):
    """Each expert under its own reference states (per branch), polynomial and step count."""
    high, low, _ = experts
    n = counts or split()
    ref_high = ReferenceTransformer(high.model, M.reference_hooks(high.model), high_poly, THRESHOLD, n["transformer"])
    ref_low = ReferenceTransformer(low, M.reference_hooks(low), low_poly, THRESHOLD, n["transformer_2"])
    out = M.run_pipeline(M.make_experts_pipeline(ref_high, ref_low), STEPS)
    return out, ref_high.computed(), ref_low.computed()


def test_each_expert_counts_its_own_steps():
    assert split() == {"transformer": 11, "transformer_2": 5}
    assert split(40) == {"transformer": 26, "transformer_2": 14}  # where MagCache measured its lists


def test_threshold_zero_equals_the_diffusers_experts(experts):
    high, low, _ = experts
    want = M.run_pipeline(M.make_experts_pipeline(high.model, low), STEPS)
    got, high_steps, low_steps = compiled_run(experts, threshold=0)  # threshold_2: the same
    assert (got - want).abs().max().item() <= 1e-4
    assert high_steps == {"cond": list(range(11)), "uncond": list(range(11))}
    assert low_steps == {"cond": list(range(5)), "uncond": list(range(5))}


def test_experts_decide_as_independent_references_and_mixing_them_changes_the_result(experts):
    got, high_steps, low_steps = compiled_run(
        experts, policy=TeaCache(threshold=THRESHOLD, coefficients=HIGH_POLY),  # the high expert's own
        policy_2=TeaCache(threshold=THRESHOLD))  # the low expert: its artifact's (exported with --coefficients)
    want, ref_high, ref_low = reference_run(experts)
    assert high_steps == ref_high and low_steps == ref_low, (high_steps, low_steps)
    assert (got - want).abs().max().item() <= 1e-4
    # Each expert forces its own first and last step of each branch and skips in between.
    assert high_steps["cond"][0] == 0 and high_steps["cond"][-1] == 10 and len(high_steps["cond"]) < 11
    assert low_steps["cond"] == [0, 4], low_steps

    # Mixing the polynomials (the low expert under the high one's): other decisions, other video.
    mixed, _, mixed_low = reference_run(experts, low_poly=HIGH_POLY)
    assert mixed_low != low_steps and (mixed - got).abs().max().item() > 1e-3

    # One step count for both (the generation's, as a single reset would give): the high
    # expert's last step is no longer forced (one skipped step there moves the decoded video
    # by ~1e-5 only: the decisions say it).
    _, global_high, _ = reference_run(experts, counts={"transformer": STEPS, "transformer_2": STEPS})
    assert global_high == {c: high_steps[c][:-1] for c in high_steps}, (global_high, high_steps)

    # One state per branch across both experts: the low expert's first step compares with the
    # high one's last signal and may reuse the high one's residual.
    shared = OneStateForBoth(experts[0].model, experts[1], HIGH_POLY, THRESHOLD, STEPS)
    out = M.run_pipeline(M.make_experts_pipeline(shared.expert(experts[0].model), shared.expert(experts[1])), STEPS)
    per_expert = {c: high_steps[c] + [11 + s for s in low_steps[c]] for c in high_steps}
    assert shared.computed() != per_expert and (out - got).abs().max().item() > 1e-3


class OneStateForBoth:
    """A reference whose TeaCache state per branch spans both experts (one step count, one
    accumulator, one previous signal, one residual), as a runtime that did not tell the experts
    apart would keep it."""

    def __init__(self, high, low, coefficients, threshold, steps):
        self.args = (coefficients, threshold, steps)
        self.refs: dict[str, TeaCacheReference] = {}
        self.hooks = {id(high): M.reference_hooks(high), id(low): M.reference_hooks(low)}
        self.high = high

    def expert(self, model):
        shared = self

        class Expert(torch.nn.Module):
            config = property(lambda self: model.config)
            dtype = property(lambda self: model.dtype)
            device = property(lambda self: model.device)

            def __init__(self):
                super().__init__()
                self.name = None

            @contextlib.contextmanager
            def cache_context(self, name, **_):
                self.name = name
                yield

            def forward(self, return_dict=False, **kwargs):
                ref = shared.refs.get(self.name)
                if ref is None:
                    ref = shared.refs[self.name] = TeaCacheReference(
                        shared.high, shared.hooks[id(shared.high)], *shared.args)
                ref.model, ref.h = model, shared.hooks[id(model)]
                return (ref(**kwargs),)

        return Expert()

    def computed(self):
        return {name: ref.computed for name, ref in self.refs.items()}


def test_per_expert_settings(experts):
    # threshold_2 alone: the high expert computes every step, the low one only its forced ones.
    _, high_steps, low_steps = compiled_run(experts, threshold=0, threshold_2=100.0)
    assert high_steps["cond"] == list(range(11)) and low_steps == {"cond": [0, 4], "uncond": [0, 4]}


def test_published_magcache_ratios_per_expert(experts):
    """At 40 steps (26 + 14) each expert reads its part of MagCache's list, keeps its own
    retention window (its first int(steps * 0.4) steps) and MagCache's Wan2.2 settings."""
    _, high_steps, low_steps = compiled_run(experts, steps=40, policy="magcache")
    for steps, data, computed in ((26, magcache_ratios.WAN22_T2V_A14B_HIGH, high_steps),
                                  (14, magcache_ratios.WAN22_T2V_A14B_LOW, low_steps)):
        published = data.policy_data()
        policy = MagCache(published["mag_ratios"], threshold=0.06, max_skips=2, retention_ratio=0.4)
        retained = list(range(int(steps * 0.4)))
        for c in ("cond", "uncond"):
            assert computed[c] == policy.schedule(steps, c), (steps, c, computed[c])
            assert computed[c][:len(retained)] == retained and len(computed[c]) < steps


def test_image_to_video_experts_end_to_end(tmp_path):
    """WanImageToVideoPipeline with two 36-channel-layout experts (no CLIP image tokens)."""
    arts = []
    high, low = M.make_i2v_models()
    for name, model in (("high", high), ("low", low)):
        model.save_pretrained(tmp_path / name)
        export_model(tmp_path / name, tmp_path / f"{name}_art", axes=M.AXES, build="none",
                     variant=f"Wan2.2-I2V-A14B-{name}", log=lambda m: None)
        arts.append(tmp_path / f"{name}_art")
    want = M.run_i2v_pipeline(M.make_i2v_experts_pipeline(high, low), 12)
    pipe = M.make_i2v_experts_pipeline(high, low)
    assert expert_steps(pipe, _timesteps(pipe, 12), 1000) == {
        "transformer": 5, "transformer_2": 7}
    teacache_trt.enable(pipe, arts[0], transformer_2=arts[1], threshold=0)
    assert (M.run_i2v_pipeline(pipe, 12) - want).abs().max().item() <= 1e-4
    pipe.transformer.policy = pipe.transformer_2.policy = TeaCache(threshold=THRESHOLD, coefficients=LOW_POLY)
    got = M.run_i2v_pipeline(pipe, 12)
    refs = [ReferenceTransformer(m, M.reference_hooks(m), LOW_POLY, THRESHOLD, n) for m, n in ((high, 5), (low, 7))]
    ref_out = M.run_i2v_pipeline(M.make_i2v_experts_pipeline(*refs), 12)
    assert (contexts(pipe.transformer), contexts(pipe.transformer_2)) == (refs[0].computed(), refs[1].computed())
    assert contexts(pipe.transformer_2)["cond"] != list(range(7))  # something skipped
    assert (got - ref_out).abs().max().item() <= 1e-4


def _timesteps(pipe, steps):
    pipe.scheduler.set_timesteps(steps)
    return pipe.scheduler.timesteps


def test_two_expert_options_are_checked(experts):
    high, low, low_art = experts
    single = M.make_experts_pipeline(high.model, low)
    single.register_to_config(boundary_ratio=None)
    with pytest.raises(TeaCacheError, match="no boundary_ratio.*never calls transformer_2"):
        teacache_trt.enable(single, high.art_dir, transformer_2=low_art)
    from models import wan
    with pytest.raises(TeaCacheError, match="threshold_2 / policy_2 .* transformer_2="):
        teacache_trt.enable(wan.make_pipeline(high.model), high.art_dir, threshold_2=0.1)
