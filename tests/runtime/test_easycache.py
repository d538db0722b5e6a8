"""policies.EasyCache against an independent implementation of EasyCache's rule (as its
HunyuanVideo script keeps it, one state per cache context) on the original model through hooks:
FLUX in a plain sampling loop (batch decisions, and one decision per prompt), WanPipeline with
its cond and uncond contexts, 20-24 steps at several thresholds.  The io_sums feature brings only
per-row sums to the host (every host conversion of a tensor counted); on a GPU the decisions
equal the CPU path's."""
from __future__ import annotations

import contextlib
import copy
import json
import warnings

import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError, policies
from teacache_trt.families import get_family
from teacache_trt.policies import EasyCache

STEPS = 24


# --- EasyCache's rule, written from its published scripts ------------------------------------------
class EasyCacheReference:
    """One cache context under EasyCache on the original model.  Before each call: the first
    ``warmup`` calls and the last compute (the accumulator cleared); otherwise, once a rate ``k``
    exists, ``acc += k * mean|x - x_prev| / mean|o_last|`` and the call is skipped while
    ``acc < threshold``.  After a computed call, ``k = mean|o - o_last| / mean|x - x_last|``
    against the computed call before it.  ``x`` is the model's ``hidden_states``; a skipped call
    hands its blocks' input through and adds the context's cached block residual where the head
    starts (the runtime's reuse; the scripts add ``o - x`` to the latent instead)."""

    def __init__(self, model, hooks, threshold, num_steps, warmup):
        self.model, self.hooks = model, hooks
        self.threshold, self.num_steps, self.warmup = threshold, num_steps, warmup
        self.cnt, self.acc, self.k = 0, 0.0, None
        self.x_prev = self.x_last = self.o_last = self.residual = None
        self.computed: list[int] = []

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        x = kwargs["hidden_states"]
        if self.cnt < self.warmup or self.cnt >= self.num_steps - 1:
            compute, self.acc = True, 0.0
        elif self.x_prev is not None and self.o_last is not None and self.k is not None:
            self.acc += self.k * ((x - self.x_prev).abs().mean() / self.o_last.abs().mean()).item()
            compute = not self.acc < self.threshold
            if compute:
                self.acc = 0.0
        else:
            compute = True
        self.x_prev = x.clone()
        out = self._run(kwargs, compute)
        if compute:
            if self.o_last is not None and self.x_last is not None:
                self.k = ((out - self.o_last).abs().mean() / (x - self.x_last).abs().mean()).item()
            self.x_last, self.o_last = x.clone(), out.clone()
            self.computed.append(self.cnt)
        self.cnt += 1
        return out

    def _run(self, kwargs, compute: bool) -> torch.Tensor:
        h, seen = self.hooks, {}

        def grab_in(mod, args, kw):
            seen.setdefault("hidden_in", h["hidden_in"](args, kw))

        def pass_through(mod, args, kw, out):
            return out if compute else h["identity"](args, kw)

        def at_head(mod, args, kw):
            if not compute:
                return (seen["hidden_in"] + self.residual, *args[1:]), kw
            self.residual = args[0] - seen["hidden_in"]
            return None

        handles = [h["blocks"][0].register_forward_pre_hook(grab_in, with_kwargs=True),
                   h["after_blocks"].register_forward_pre_hook(at_head, with_kwargs=True)]
        handles += [b.register_forward_hook(pass_through, with_kwargs=True) for b in h["blocks"]]
        try:
            out = self.model(**kwargs)
            return out if isinstance(out, torch.Tensor) else out[0]
        finally:
            for handle in handles:
                handle.remove()


class ReferenceTransformer(torch.nn.Module):
    """The original model under :class:`EasyCacheReference` in a pipeline, one state per
    ``cache_context`` name."""

    def __init__(self, model, hooks, threshold, num_steps, warmup):
        super().__init__()
        self.model, self.args = model, (hooks, threshold, num_steps, warmup)
        self.refs: dict[str | None, EasyCacheReference] = {}
        self._name = None

    config = property(lambda self: self.model.config)
    dtype = property(lambda self: self.model.dtype)
    device = property(lambda self: self.model.device)

    @contextlib.contextmanager
    def cache_context(self, name, **_):
        self._name = name
        try:
            yield
        finally:
            self._name = None

    def forward(self, return_dict=False, **kwargs):
        ref = self.refs.get(self._name)
        if ref is None:
            ref = self.refs[self._name] = EasyCacheReference(self.model, *self.args)
        return (ref(**kwargs),)


# --- loops ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flux(exported):
    return exported("flux")


def inputs(ex, seed=0, batch=2):
    fam = get_family("flux")
    point = dict(ex.spec.POINT, batch=batch)
    return fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), point, torch.float32, seed=seed))


def euler(call, kwargs, steps=STEPS) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A flow-matching Euler loop; ``call(**kwargs)`` is one transformer call.  (outputs, latents)"""
    kwargs, outs = dict(kwargs), []
    latents = kwargs["hidden_states"]
    for i in range(steps):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / steps)
        kwargs["hidden_states"] = latents
        outs.append(call(**kwargs))
        latents = latents - outs[-1] / steps
    return outs, latents


def runtime_loop(t, kwargs, steps=STEPS):
    t.reset(steps)
    return euler(lambda **kw: t(return_dict=False, **kw)[0], kwargs, steps)


def reference_loop(ex, kwargs, threshold, warmup, steps=STEPS):
    ref = EasyCacheReference(ex.model, ex.spec.reference_hooks(ex.model), threshold, steps, warmup)
    outs, latents = euler(ref, kwargs, steps)
    return ref, outs, latents


# --- the rule equals EasyCache's ------------------------------------------------------------------
@pytest.mark.parametrize("threshold, warmup", [(0.0, 3), (0.05, 3), (0.1, 3), (0.2, 5), (0.6, 2)])
def test_flux_decisions_and_outputs_equal_the_rule(flux, threshold, warmup):
    """Two rows, one decision per call (means over the whole batch, as the scripts take them)."""
    t = teacache_trt.load_transformer(flux.art_dir, policy=EasyCache(threshold, warmup))
    got, latents = runtime_loop(t, inputs(flux))
    ref, want, want_latents = reference_loop(flux, inputs(flux), threshold, warmup)
    assert t.stats["computed_steps"] == ref.computed
    if threshold == 0:
        assert ref.computed == list(range(STEPS))
    else:
        assert warmup + 1 < len(ref.computed) < STEPS, ref.computed  # it skipped, and not everything
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 1e-4
    assert (latents - want_latents).abs().max().item() <= 1e-4


@pytest.mark.parametrize("threshold, warmup", [(0.1, 3), (0.3, 5)])
def test_wan_pipeline_cond_and_uncond_each_decide_as_the_rule(exported, threshold, warmup):
    """WanPipeline calls the branches in cache contexts cond and uncond: each keeps its own rate
    and accumulator, as one reference state per context does."""
    ex = exported("wan")
    steps = 20
    pipe = ex.spec.make_pipeline(ex.model)
    t = teacache_trt.enable(pipe, ex.art_dir, policy=EasyCache(threshold, warmup))
    got = ex.spec.run_pipeline(pipe, steps, seed=0)
    ref = ReferenceTransformer(ex.model, ex.spec.reference_hooks(ex.model), threshold, steps, warmup)
    want = ex.spec.run_pipeline(ex.spec.make_pipeline(ref), steps, seed=0)
    contexts = t.stats["contexts"]
    assert sorted(contexts) == sorted(ref.refs) == ["cond", "uncond"]
    for name, r in ref.refs.items():
        assert contexts[name]["computed_steps"] == r.computed, name
        assert warmup + 1 < len(r.computed) < steps - 4, r.computed
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())


def test_per_prompt_decisions_equal_the_rule_on_each_prompt_alone(flux):
    """decisions="sample": two prompts in one batch, each with its own threshold, decide as the
    rule on that prompt alone (its own rate, accumulator and means)."""
    thresholds, warmup = (0.08, 0.25), 3
    prompts = [inputs(flux, seed=s, batch=1) for s in (0, 1)]
    batch = {k: v if k.endswith("_ids") else torch.cat([p[k] for p in prompts]) for k, v in prompts[0].items()}
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample", policy=EasyCache(warmup=warmup))
    t.sample_thresholds = list(thresholds)
    got, _ = runtime_loop(t, batch)
    samples = t.stats["samples"]
    for row, (prompt, threshold) in enumerate(zip(prompts, thresholds)):
        ref, want, _ = reference_loop(flux, prompt, threshold, warmup)
        assert samples[row]["computed_steps"] == ref.computed, row
        assert warmup + 1 < len(ref.computed) < STEPS - 4, ref.computed
        assert max((g[row] - w[0]).abs().max().item() for g, w in zip(got, want)) <= 1e-4
    assert samples[0]["computed_steps"] != samples[1]["computed_steps"]  # the prompts really decided apart


# --- what reaches the host ----------------------------------------------------------------------------
@pytest.fixture
def host_reads(monkeypatch):
    """The element count of every tensor brought to the host (numpy, tolist, item, cpu) while
    patched: on a CPU device these are the runtime's reads (on CUDA the same call sites copy)."""
    seen: list[int] = []
    for name in ("numpy", "tolist", "item", "cpu"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            seen.append(self.numel())
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen


@pytest.mark.parametrize("decisions", ["batch", "sample"])
def test_only_per_row_sums_reach_the_host_once_per_call(flux, host_reads, decisions):
    rows = 2
    t = teacache_trt.load_transformer(flux.art_dir, decisions=decisions, policy=EasyCache(0.1, 3))
    runtime_loop(t, inputs(flux, batch=rows))
    assert t.stats["skipped_steps"]
    # one read per call after the first: the input step, with a computed call's three sums after it
    assert len(host_reads) == STEPS - 1, host_reads
    assert max(host_reads) == 4 * rows and min(host_reads) == rows
    assert host_reads.count(4 * rows) == len(t.stats["computed_steps"]) - 1  # the last computed call's wait unread


# --- settings, threshold 0, silent no-ops ----------------------------------------------------------------
def test_threshold_0_never_skips_and_a_silent_threshold_says_why(flux):
    t = teacache_trt.load_transformer(flux.art_dir, policy=EasyCache(0.0, 3))
    runtime_loop(t, inputs(flux))
    assert t.stats["skipped_steps"] == [] and "never_skipped" not in t.stats
    rels = t.stats["contexts"]["default"]["rel_l1"]
    assert rels[:3] == [None] * 3 and rels[-1] is None and all(r > 0 for r in rels[3:-1])  # its estimates
    t.policy = EasyCache(1e-4, 3)
    runtime_loop(t, inputs(flux))
    cause = t.stats["never_skipped"]
    assert cause.startswith(f"easycache threshold 0.0001 never skipped in {STEPS} steps: the estimated output "
                            f"change was ") and f"at its {STEPS - 4} steps after the warm-up of 3" in cause
    t.threshold = float(cause.split("try threshold ")[1])  # the shorthand keeps the policy
    assert isinstance(t.policy, EasyCache) and t.policy.warmup == 3
    runtime_loop(t, inputs(flux))
    assert t.stats["skipped_steps"] and "never_skipped" not in t.stats  # the suggestion skips
    t.policy = EasyCache(0.5, STEPS)
    runtime_loop(t, inputs(flux))
    assert t.stats["never_skipped"] == (f"easycache threshold 0.5 never skipped in {STEPS} steps: every step is a "
                                        f"warm-up step (warmup {STEPS}) or the last; lower warmup or use more steps")


def test_settings_come_from_the_artifact_then_the_defaults(flux, tmp_path):
    t = teacache_trt.load_transformer(flux.art_dir, policy="easycache")
    assert t._settings().bound == EasyCache(0.025, 5) and t.threshold == 0.025
    art = flux.copy(tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["policy"] = {"name": "easycache", "params": {"threshold": 0.3}}
    (art / "manifest.json").write_text(json.dumps(data))
    t = teacache_trt.load_transformer(art)
    assert t.policy == EasyCache(0.3) and t._settings().bound == EasyCache(0.3, 5)
    t.policy = EasyCache(warmup=2)
    assert t._settings().bound == EasyCache(0.3, 2)


def test_a_family_without_the_latent_input_is_refused_when_set(flux, monkeypatch):
    t = teacache_trt.load_transformer(flux.art_dir)
    monkeypatch.setattr(t, "_latent", None)
    with pytest.raises(TeaCacheError, match=r"compares the model's latent input 'hidden_states', which the flux "
                                            r"graphs do not take: set latent_input on the family"):
        t.policy = EasyCache(0.1)


@pytest.mark.parametrize("policy", [EasyCache(), EasyCache(0.1), EasyCache(0.05, 0), EasyCache(warmup=7)])
def test_name_and_params_round_trip_as_json(policy):
    again = policies.make(policy.name, **json.loads(json.dumps(policy.params)))
    assert again == policy and policies.from_spec(json.loads(json.dumps(policy.spec))) == policy
    assert policies.EasyCache is EasyCache and EasyCache.needs == {policies.IO_SUMS} and not EasyCache.static


@pytest.mark.parametrize("make, message", [
    (lambda: EasyCache(threshold=-0.1), r"threshold -0.1 must be a number >= 0"),
    (lambda: EasyCache(threshold="0.1"), r"threshold '0.1' must be a number"),
    (lambda: EasyCache(warmup=-1), r"warmup -1 must be an integer >= 0"),
    (lambda: EasyCache(warmup=2.5), r"warmup 2.5 must be an integer"),
    (lambda: EasyCache(warmup=True), r"warmup True must be an integer"),
    (lambda: EasyCache(0.1).start(10, "cond", 1), r"bind it to one first"),
    (lambda: policies.make("easycache", k=2), r"takes no parameter\(s\) \['k'\]"),
])
def test_bad_parameters_name_the_value_and_the_fix(make, message):
    with pytest.raises(TeaCacheError, match=message):
        make()


# --- on a GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("threshold", [0.05, 0.2])
def test_cuda_decisions_equal_the_cpu_path_with_one_host_sync_per_call(cuda, flux, threshold):
    """The torch backend on CUDA: the same steps as on the CPU, and no host sync beyond the one
    read per call (torch's sync debug mode counts them)."""
    want = teacache_trt.load_transformer(flux.art_dir, policy=EasyCache(threshold, 3))
    runtime_loop(want, inputs(flux))
    model = copy.deepcopy(flux.model).to(cuda)
    t = teacache_trt.load_transformer(flux.art_dir, backend="torch", device=cuda, model=model,
                                      policy=EasyCache(threshold, 3))
    kwargs = {k: v.to(cuda) for k, v in inputs(flux).items()}
    runtime_loop(t, kwargs)  # warm-up (allocator, kernels)
    timesteps = [torch.full((2,), 1.0 - i / STEPS, device=cuda) for i in range(STEPS)]
    t.reset(STEPS)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(STEPS):
                kwargs["timestep"] = timesteps[i]
                kwargs["hidden_states"] = kwargs["hidden_states"] - t(return_dict=False, **kwargs)[0] / STEPS
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in seen)
    assert t.stats["computed_steps"] == want.stats["computed_steps"] and t.stats["skipped_steps"]
    assert syncs <= STEPS - 1, syncs
