"""policies.MagCache against an independent implementation of MagCache's own scripts (FLUX's and
Qwen-Image's conventions, one call counter over the generation as those scripts keep it), on the
runtime's real decision path; interpolation, the published layouts, ratios per context, static
decisions, and the family data the exporter writes."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError, policies
from teacache_trt.families import get_family, magcache_ratios
from teacache_trt.policies import MagCache
from teacache_trt.policies.magcache import interpolate
from teacache_trt.runtime import plan as plan_module

FLUX_LIST = magcache_ratios.FLUX_1_DEV.ratios  # 27 values: FLUX.1-dev at 28 steps, no pad
QWEN_LIST = magcache_ratios.QWEN_IMAGE.ratios  # 98 values: cond/uncond pairs at 50 steps, no pad


# --- MagCache's scripts, written from their published rule ----------------------------------------
def nearest_interp_flux(src: np.ndarray, n: int) -> np.ndarray:
    """The FLUX / Wan / HunyuanVideo scripts' resampling."""
    if n == 1:
        return np.array([src[-1]])
    return src[np.round(np.arange(n) * ((len(src) - 1) / (n - 1))).astype(int)]


def nearest_interp_qwen(src: np.ndarray, n: int) -> np.ndarray:
    """The Qwen-Image scripts' resampling."""
    if len(src) == n:
        return src.copy()
    return src[np.round(np.linspace(0, len(src) - 1, n)).astype(int)]


class UpstreamRule:
    """One transformer's MagCache state as the scripts keep it: a call counter over every call of
    the generation, one accumulator slot per CFG branch (``cnt % 2``) for true-CFG scripts.

    ``script="flux"``: one call per step, ``[1.0] + list``, retention ``int(r * N + 0.5)``, skip
    test ``<=``, the call mapping onto step 11 of 28 always computes.  ``script="qwen"`` (and
    Wan2.1): two calls per step (cond first), ``[1.0, 1.0] + list`` interleaved, retention
    ``int(2N * r)`` calls, skip test ``<``.
    """

    def __init__(self, user_list, steps, threshold, K, retention, script):
        self.script, self.threshold, self.K, self.retention = script, threshold, K, retention
        if script == "flux":
            ratios = np.array([1.0] + list(user_list))
            self.ratios = ratios if len(ratios) == steps else nearest_interp_flux(ratios, steps)
            self.calls, branches = steps, 1
        else:
            ratios = np.array([1.0] * 2 + list(user_list))
            if len(ratios) != 2 * steps:
                cond, uncond = nearest_interp_qwen(ratios[0::2], steps), nearest_interp_qwen(ratios[1::2], steps)
                ratios = np.stack([cond, uncond], axis=1).reshape(-1)
            self.ratios, self.calls, branches = ratios, 2 * steps, 2
        self.branches = branches
        self.cnt = 0
        self.acc_ratio, self.acc_steps, self.acc_err = [1.0] * branches, [0] * branches, [0.0] * branches
        self.computed: list[list[int]] = [[] for _ in range(branches)]  # per branch: its step indices

    def compute(self) -> bool:
        cnt, b = self.cnt, self.cnt % self.branches
        if self.script == "flux":
            retained = int(self.retention * self.calls + 0.5)
        else:
            retained = int(self.calls * self.retention)
        skip = False
        if cnt >= retained:
            self.acc_ratio[b] = self.acc_ratio[b] * self.ratios[cnt]
            self.acc_steps[b] += 1
            self.acc_err[b] += np.abs(1 - self.acc_ratio[b])
            if self.script == "flux":
                ok = (self.acc_err[b] <= self.threshold
                      and np.round(cnt * ((28 - 1) / (self.calls - 1))).astype(int) != 11)
            else:
                ok = self.acc_err[b] < self.threshold
            if ok and self.acc_steps[b] <= self.K:
                skip = True
            else:
                self.acc_ratio[b], self.acc_steps[b], self.acc_err[b] = 1.0, 0, 0.0
        if not skip:
            self.computed[b].append(cnt // self.branches)
        self.cnt += 1
        return not skip


def run_original(model, hooks, kwargs, compute: bool, cache: dict, key) -> torch.Tensor:
    """One call of the original model: the blocks, or (skipped) their input plus the branch's
    cached residual where the head starts (hooks only, as tests/reference.py)."""
    seen = {}

    def grab_in(mod, args, kw):
        seen.setdefault("hidden_in", hooks["hidden_in"](args, kw))

    def pass_through(mod, args, kw, out):
        return out if compute else hooks["identity"](args, kw)

    def at_head(mod, args, kw):
        if not compute:
            return (seen["hidden_in"] + cache[key], *args[1:]), kw
        cache[key] = args[0] - seen["hidden_in"]
        return None

    handles = [hooks["blocks"][0].register_forward_pre_hook(grab_in, with_kwargs=True),
               hooks["after_blocks"].register_forward_pre_hook(at_head, with_kwargs=True)]
    handles += [b.register_forward_hook(pass_through, with_kwargs=True) for b in hooks["blocks"]]
    try:
        with torch.no_grad():
            return model(return_dict=False, **kwargs)[0]
    finally:
        for h in handles:
            h.remove()


# --- the loops ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flux(exported):
    return exported("flux")


def inputs(ex, seed=0, batch=1):
    fam = get_family("flux")
    point = dict(ex.spec.POINT, batch=batch)
    return fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), point, torch.float32, seed=seed))


def branches(ex, cfg: bool) -> list[dict]:
    """cond (and uncond: other text) inputs of one prompt; the latents are the loop's."""
    cond = inputs(ex, seed=0)
    if not cfg:
        return [cond]
    other = inputs(ex, seed=1)
    return [cond, {**cond, "encoder_hidden_states": other["encoder_hidden_states"],
                   "pooled_projections": other["pooled_projections"]}]


def euler(call, ex, steps: int, cfg: bool, guidance: float = 3.0) -> torch.Tensor:
    """An Euler loop; ``call(branch, kwargs)`` runs one transformer call (branch 0 = cond)."""
    kw = branches(ex, cfg)
    latents = kw[0]["hidden_states"].clone()
    for i in range(steps):
        t = torch.full((1,), 1.0 - i / steps)
        outs = [call(b, {**k, "hidden_states": latents, "timestep": t}) for b, k in enumerate(kw)]
        pred = outs[0] if not cfg else outs[1] + guidance * (outs[0] - outs[1])
        latents = latents - pred / steps
    return latents


def runtime_render(t, ex, steps, cfg) -> torch.Tensor:
    t.reset(steps)
    names = ("cond", "uncond")

    def call(b, kwargs):
        if not cfg:  # one unnamed call per step: the runtime's default context
            return t(return_dict=False, **kwargs)[0]
        with t.cache_context(names[b]):
            return t(return_dict=False, **kwargs)[0]

    return euler(call, ex, steps, cfg)


def upstream_render(ex, rule: UpstreamRule, steps, cfg) -> torch.Tensor:
    hooks, cache = ex.spec.reference_hooks(ex.model), {}
    return euler(lambda b, kwargs: run_original(ex.model, hooks, kwargs, rule.compute(), cache, b), ex, steps, cfg)


# --- the rule equals MagCache's scripts where their conventions agree ---------------------------------
@pytest.mark.parametrize("steps, threshold, max_skips, retention", [
    (14, 0.24, 5, 0.1),  # FLUX's settings at 14 steps: no step maps onto 11 of 28; int(1.4) = int(1.9)
    (22, 0.1, 2, 0.2),  # 22 steps: neither; int(4.4) = int(4.9)
])
def test_flux_decisions_and_latents_equal_the_flux_script(flux, steps, threshold, max_skips, retention):
    policy = MagCache.from_upstream(FLUX_LIST, interleaved=False, threshold=threshold, max_skips=max_skips,
                                    retention_ratio=retention)
    t = teacache_trt.load_transformer(flux.art_dir, policy=policy)
    got = runtime_render(t, flux, steps, cfg=False)
    rule = UpstreamRule(FLUX_LIST, steps, threshold, max_skips, retention, "flux")
    want = upstream_render(flux, rule, steps, cfg=False)
    assert t.stats["computed_steps"] == rule.computed[0] == policy.schedule(steps, "default")
    assert 2 < len(rule.computed[0]) < steps - 2, rule.computed  # it skipped, and not everything
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("user_list, steps, threshold, max_skips", [
    (QWEN_LIST, 20, 0.06, 2),  # Qwen-Image's settings, 50 -> 20 steps: int(2 * 20 * 0.2) = 8 is even
    (QWEN_LIST, 50, 0.06, 2),  # its own step count, no interpolation
    # branches far apart, so a slot mix-up would show: cond grows, uncond shrinks
    (tuple(v for i in range(29) for v in (1.0 + 0.01 * (i % 5), 0.97 - 0.001 * i)), 15, 0.08, 3),
])
def test_true_cfg_decisions_and_latents_equal_the_qwen_image_script(flux, user_list, steps, threshold, max_skips):
    """Two calls per step in cache contexts cond and uncond (the FLUX tiny model under true CFG):
    the interleaved list, de-interleaved per context, decides as the script's call parity does."""
    policy = MagCache.from_upstream(user_list, interleaved=True, threshold=threshold, max_skips=max_skips,
                                    retention_ratio=0.2)
    t = teacache_trt.load_transformer(flux.art_dir, policy=policy)
    got = runtime_render(t, flux, steps, cfg=True)
    rule = UpstreamRule(user_list, steps, threshold, max_skips, 0.2, "qwen")
    want = upstream_render(flux, rule, steps, cfg=True)
    contexts = t.stats["contexts"]
    assert [contexts["cond"]["computed_steps"], contexts["uncond"]["computed_steps"]] == rule.computed
    assert all(2 < len(c) < steps - 2 for c in rule.computed), rule.computed
    assert (got - want).abs().max().item() <= 1e-4


class UpstreamTransformer(torch.nn.Module):
    """The original model under :class:`UpstreamRule` in a pipeline's place: the script's call
    counter decides, whatever cache context the pipeline names (the scripts have none)."""

    def __init__(self, model, hooks, rule: UpstreamRule):
        super().__init__()
        self.model, self.hooks, self.rule, self.cache = model, hooks, rule, {}

    config = property(lambda self: self.model.config)
    dtype = property(lambda self: self.model.dtype)
    device = property(lambda self: self.model.device)

    @contextlib.contextmanager
    def cache_context(self, name, **_):
        yield

    def forward(self, return_dict=False, **kwargs):
        branch = self.rule.cnt % self.rule.branches
        return (run_original(self.model, self.hooks, kwargs, self.rule.compute(), self.cache, branch),)


@pytest.mark.parametrize("steps", [20, 50])
def test_qwen_image_pipeline_equals_the_qwen_image_script(exported, steps):
    """QwenImagePipeline (true CFG, cond then uncond in their cache contexts) with the Qwen-Image
    family's published ratios and MagCache's Qwen-Image settings, against the script's rule on
    the original model: the same steps per branch and the same latents."""
    ex = exported("qwen_image")
    assert ex.manifest.policy_data["magcache"]["source"] == "MagCache's published ratios for Qwen-Image (50 steps)"
    pipe = ex.spec.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, policy="magcache")  # the family's ratios, 0.06 / 2 / 0.2
    got = ex.spec.run_pipeline(pipe, steps, seed=0)
    rule = UpstreamRule(QWEN_LIST, steps, 0.06, 2, 0.2, "qwen")
    want = ex.spec.run_pipeline(ex.spec.make_pipeline(UpstreamTransformer(ex.model, ex.spec.reference_hooks(ex.model),
                                                                          rule)), steps, seed=0)
    contexts = t.stats["contexts"]
    assert [contexts["cond"]["computed_steps"], contexts["uncond"]["computed_steps"]] == rule.computed
    assert all(len(c) < steps - 2 for c in rule.computed), rule.computed
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())


def test_the_last_tuple_really_separates_the_branches():
    user_list = tuple(v for i in range(29) for v in (1.0 + 0.01 * (i % 5), 0.97 - 0.001 * i))
    policy = MagCache.from_upstream(user_list, threshold=0.08, max_skips=3, retention_ratio=0.2)
    assert policy.schedule(15, "cond") != policy.schedule(15, "uncond")


def test_where_the_flux_script_differs_threshold_0_and_its_defaults():
    """The project's test is strict and forces nothing: threshold 0 never skips (the script skips
    where the published ratio is exactly 1.0), and at 28 steps the script keeps 3 steps (half up)
    and forces step 11 where this rule keeps int(2.8) = 2 and forces nothing."""
    rule = UpstreamRule(FLUX_LIST, 22, 0.0, 5, 0.1, "flux")
    for _ in range(22):
        rule.compute()
    assert sorted(set(range(22)) - set(rule.computed[0])) == [11, 14, 15]
    assert MagCache.from_upstream(FLUX_LIST, interleaved=False, threshold=0.0, max_skips=5,
                                  retention_ratio=0.1).schedule(22, "x") == list(range(22))
    rule = UpstreamRule(FLUX_LIST, 28, 0.24, 5, 0.1, "flux")
    for _ in range(28):
        rule.compute()
    ours = MagCache.from_upstream(FLUX_LIST, interleaved=False, threshold=0.24, max_skips=5,
                                  retention_ratio=0.1).schedule(28, "x")
    assert rule.computed[0] == [0, 1, 2, 5, 9, 11, 17, 23, 26]  # 3 kept, 11 forced
    assert ours == [0, 1, 3, 6, 10, 16, 22, 26]  # 2 kept, step 2 judged like any other


@pytest.mark.parametrize("name, contexts", [("wan", ["cond", "uncond"]), ("hunyuan_video", ["cond"])])
def test_published_ratios_drive_the_families_pipelines(exported, name, contexts):
    """WanPipeline (cond and uncond with their own published lists) and HunyuanVideoPipeline (one
    list, its one named context) decide each context's steps as the family's ratios say."""
    ex = exported(name)
    pipe = ex.spec.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, policy=MagCache(threshold=0.05, max_skips=2))
    ex.spec.run_pipeline(pipe, 12, seed=0)
    bound = t._settings().bound
    assert bound.mag_ratios == MagCache(ex.manifest.policy_data["magcache"]["mag_ratios"]).mag_ratios
    assert isinstance(bound.mag_ratios, dict) == (len(contexts) == 2)  # Wan's lists per branch
    assert sorted(t.stats["contexts"]) == contexts
    for c in contexts:
        want = bound.schedule(12, c)
        assert t.stats["contexts"][c]["computed_steps"] == want and len(want) < 12


# --- interpolation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("length, n", [
    (50, 25), (50, 43), (50, 71), (50, 83), (50, 85), (50, 99), (50, 3), (28, 14), (28, 39), (28, 77),
    (28, 20), (25, 50), (40, 21), (2, 7), (49, 50), (50, 2),
])
def test_interpolation_reads_the_entries_upstream_reads(length, n):
    values = [1.0] + [1.0 + k / 1000 for k in range(1, length)]  # entry k is recognisable
    got = [round((v - 1.0) * 1000) for v in MagCache(values, 0.1, 2, 0.2).ratios_for(n, "any")]
    index = np.arange(length)
    assert got == nearest_interp_flux(index, n).tolist() == nearest_interp_qwen(index, n).tolist()


def test_interpolation_rounds_exact_halves_to_even():
    index = interpolate(list(range(50)), 25)
    assert index[12] == 24  # 12 * 49 / 24 = 24.5 exactly: numpy rounds to the even 24, not 25
    assert interpolate(list(range(50)), 1) == [0] and interpolate([5, 6], 2) == [5, 6]


# --- the published layouts, the dict per context ------------------------------------------------------
def test_from_upstream_layouts():
    one = MagCache.from_upstream([1.2, 1.1, 0.9], interleaved=False)
    assert one.mag_ratios == (1.0, 1.2, 1.1, 0.9)
    pairs = MagCache.from_upstream([1.2, 1.3, 1.1, 1.0], interleaved=True, threshold=0.1)
    assert pairs.mag_ratios == {"cond": (1.0, 1.2, 1.1), "uncond": (1.0, 1.3, 1.0)}
    assert pairs.params == {"mag_ratios": {"cond": [1.0, 1.2, 1.1], "uncond": [1.0, 1.3, 1.0]}, "threshold": 0.1}
    with pytest.raises(TeaCacheError, match="its length is even; this one has 3"):
        MagCache.from_upstream([1.2, 1.3, 1.1], interleaved=True)
    for published in (magcache_ratios.WAN21_T2V_14B, magcache_ratios.HUNYUAN_VIDEO_720P):
        data = published.policy_data()
        assert MagCache(data["mag_ratios"]) == MagCache.from_upstream(published.ratios, published.interleaved)


def test_ratios_per_context_and_a_missing_context(flux):
    policy = MagCache({"cond": [1.0, 1.01, 1.01, 1.01, 1.01, 1.01], "uncond": [1.0, 1.3, 1.3, 1.3, 1.3, 1.3]},
                      threshold=0.05, max_skips=3, retention_ratio=0.0)
    assert policy.schedule(6, "cond") == [0, 3]  # err 0.01, 0.0301, 0.0604: computes at 3
    assert policy.schedule(6, "uncond") == list(range(6))
    t = teacache_trt.load_transformer(flux.art_dir, policy=policy)
    runtime_render(t, flux, 6, cfg=True)
    assert t.stats["contexts"]["cond"]["computed_steps"] == [0, 3]
    assert t.stats["contexts"]["uncond"]["computed_steps"] == list(range(6))
    with pytest.raises(TeaCacheError, match=r"ratios for the cache contexts \['cond', 'uncond'\], but this "
                                            r"generation calls the transformer in context 'default'"):
        runtime_render(t, flux, 6, cfg=False)


# --- static: nothing read back -------------------------------------------------------------------------
@pytest.fixture
def count_reads(monkeypatch):
    """Host reads of the embed graph's sums (StepPlan.read_sums), as in test_policies.py."""
    reads = [0]
    real = plan_module.StepPlan.read_sums

    def counted(self):
        reads[0] += 1
        return real(self)

    monkeypatch.setattr(plan_module.StepPlan, "read_sums", counted)
    return reads


def test_static_no_per_step_host_reads_and_the_schedule_known_up_front(flux, count_reads):
    policy = MagCache.from_upstream(QWEN_LIST, threshold=0.06, max_skips=2, retention_ratio=0.2)
    t = teacache_trt.load_transformer(flux.art_dir, policy=policy)
    t.reset(20)
    plan = {c: t.policy.schedule(20, c) for c in ("cond", "uncond")}  # before the first step
    runtime_render(t, flux, 20, cfg=True)
    assert count_reads[0] == 0
    assert {c: t.stats["contexts"][c]["computed_steps"] for c in plan} == plan
    t.policy = "teacache"  # the same loop under TeaCache reads the sums of each context's later calls
    runtime_render(t, flux, 20, cfg=True)
    assert count_reads[0] == 2 * 19


# --- settings, the artifact's data, validation ----------------------------------------------------------
def test_the_artifact_supplies_the_published_ratios_and_settings(flux):
    t = teacache_trt.load_transformer(flux.art_dir, policy="magcache")
    bound = MagCache(**{k: v for k, v in magcache_ratios.FLUX_1_DEV.policy_data().items()
                        if k in MagCache.param_names()})
    assert t._settings().bound == bound and t.threshold == 0.24
    t.threshold = 0.1  # the shorthand sets MagCache's threshold and keeps the policy
    assert t.policy == MagCache(threshold=0.1) and t._settings().bound == bound.replace(threshold=0.1)
    t.policy = MagCache([1.0, 1.5])  # given ratios; settings neither given nor recorded: the artifact's
    assert t._settings().bound == MagCache([1.0, 1.5], 0.24, 5, 0.1)


def test_artifact_without_ratios_names_the_fix(flux, tmp_path):
    art = flux.copy(tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    del data["policy_data"]["magcache"]
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(TeaCacheError, match=r"records no MagCache ratios .* teacache-calibrate ART --policy magcache"):
        teacache_trt.load_transformer(art, policy="magcache")
    t = teacache_trt.load_transformer(art, policy=MagCache([1.0, 1.1]))  # the defaults fill the rest
    assert t._settings().bound == MagCache([1.0, 1.1], 0.12, 2, 0.2)


def test_threshold_0_and_max_skips_0_never_skip_and_a_silent_setting_says_why(flux):
    t = teacache_trt.load_transformer(flux.art_dir, policy=MagCache(threshold=0.0))
    runtime_render(t, flux, 10, cfg=False)
    assert t.stats["skipped_steps"] == [] and "never_skipped" not in t.stats  # 0 is meant to compute all
    t.policy = MagCache(max_skips=0)
    runtime_render(t, flux, 10, cfg=False)
    assert t.stats["never_skipped"] == ("magcache threshold 0.24 never skipped in 10 steps: max_skips 0 allows no "
                                        "skipped step; use max_skips 1 or more")
    ratios = [1.0, 1.05, 0.93, 1.08, 0.96, 1.07, 0.94, 1.06, 0.95, 1.09]  # no exact 1.0: any threshold > 0 skips there
    t.policy = MagCache(ratios, threshold=0.01)
    runtime_render(t, flux, 10, cfg=False)
    cause = t.stats["never_skipped"]
    assert cause.startswith("magcache threshold 0.01 never skipped in 10 steps: the predicted error |1 - ratio| was "
                            "0.04 to 0.09 at its 9 steps after the first 1, never below the threshold; try threshold")
    t.policy = MagCache(ratios, threshold=float(cause.split("try threshold ")[1].split()[0]))
    runtime_render(t, flux, 10, cfg=False)
    assert t.stats["skipped_steps"] and "never_skipped" not in t.stats  # the suggestion skips


def test_per_prompt_thresholds_in_sample_decisions(flux):
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample", policy="magcache")
    t.sample_thresholds = [0.0, None]
    t.reset(10)
    kwargs = inputs(flux, batch=2)
    latents = kwargs["hidden_states"]
    for i in range(10):
        latents = latents - t(return_dict=False, **{**kwargs, "hidden_states": latents,
                                                     "timestep": torch.full((2,), 1.0 - i / 10)})[0] / 10
    first, second = t.stats["samples"]
    assert first["computed_steps"] == list(range(10))
    assert second["computed_steps"] == MagCache.from_upstream(FLUX_LIST, interleaved=False, threshold=0.24,
                                                              max_skips=5, retention_ratio=0.1).schedule(10, "x")


@pytest.mark.parametrize("policy", [
    MagCache(), MagCache([1.0, 1.2], 0.1, 3, 0.25), MagCache({"cond": [1.0, 0.9], "uncond": [1.0]}),
    MagCache.from_upstream(QWEN_LIST, threshold=0.06),
])
def test_name_and_params_round_trip_as_json(policy):
    again = policies.make(policy.name, **json.loads(json.dumps(policy.params)))
    assert again == policy and policies.from_spec(json.loads(json.dumps(policy.spec))) == policy


@pytest.mark.parametrize("make, message", [
    (lambda: MagCache([1.2, 1.1]), r"mag_ratios\[0\] is 1.2, but entry 0 is the first step's pad .*from_upstream"),
    (lambda: MagCache([1.0, -0.5]), r"finite numbers > 0"),
    (lambda: MagCache([1.0, float("nan")]), r"finite numbers > 0"),
    (lambda: MagCache([]), r"non-empty list"),
    (lambda: MagCache("1.0,1.1"), r"must be a list of numbers"),
    (lambda: MagCache({}), r"names no cache context"),
    (lambda: MagCache({"cond": [1.0], "": [1.0]}), r"keys \[''\] must be cache context names"),
    (lambda: MagCache({"cond": [1.1]}), r"mag_ratios\['cond'\]\[0\] is 1.1"),
    (lambda: MagCache(threshold=-0.1), r"threshold -0.1 must be a number >= 0"),
    (lambda: MagCache(max_skips=1.5), r"max_skips 1.5 must be an integer >= 0"),
    (lambda: MagCache(max_skips=True), r"max_skips True must be an integer"),
    (lambda: MagCache(retention_ratio=1.5), r"retention_ratio 1.5 must be a number in \[0, 1\]"),
    (lambda: MagCache.from_upstream([1.2], interleaved="yes"), r"interleaved='yes' must be True"),
    (lambda: MagCache([1.0]).schedule(5, "cond"), r"bind it to one first"),
])
def test_bad_parameters_name_the_value_and_the_fix(make, message):
    with pytest.raises(TeaCacheError, match=message):
        make()


def test_manifest_data_is_checked(flux, tmp_path):
    art = flux.copy(tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["policy_data"]["magcache"]["max_skips"] = -1
    (art / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(TeaCacheError, match=r"manifest.json policy_data.magcache: max_skips -1 must be an integer"):
        teacache_trt.load_transformer(art)


def test_every_published_list_is_family_data_the_policy_accepts():
    from teacache_trt.families import all_families

    published = {v.magcache.model for fam in all_families() for v in fam.variants.values() if v.magcache}
    assert {"FLUX.1-dev", "Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.1-I2V-14B-480P", "Wan2.1-I2V-14B-720P",
            "HunyuanVideo 720p"} <= published
    for fam in all_families():
        for v in fam.variants.values():
            if v.magcache:
                data = v.magcache.policy_data()
                MagCache.check_data(data, f"{fam.name} {v.name}")
                contexts = ["cond", "uncond"] if v.magcache.interleaved else ["default"]
                for c in contexts:
                    assert len(MagCache(**{k: data[k] for k in MagCache.param_names() if k in data}).ratios_for(
                        v.magcache.steps, c)) == v.magcache.steps
