"""The drop-in transformer: embed graph -> criterion -> blocks graph or cached residual -> head.

An instance replaces ``pipe.transformer``.  All TeaCache state lives on the instance, per
thread and ``cache_context`` name; nothing is patched on any class.

A step, after the first at its input shape (which builds the :class:`.plan.StepPlan`):
look the plan up by the inputs' shapes; run the context graph (where the artifact has one)
only if its inputs changed since this cache context's last call; run the embed graph into the
plan's buffers; decide (per call, or per prompt in ``sample`` mode); run the blocks graph into
the cache context's residual (all rows, the rows that compute, or nothing); run the head into
a fresh output tensor, which the caller keeps.  On a GPU all of it is queued on the
transformer's own stream, ordered after the caller's work and before the caller's next.

The caching policy (:mod:`teacache_trt.policies`) decides each call; a static one (e.g.
``Schedule``) reads nothing back from the graphs, others read only the features they name.
Its ``reuse`` says what a skipped call gives the head: the cached residual, or its
extrapolation from the last two computed ones (:mod:`.forecast`).

Threads: a transformer may be called from several threads at once.  Each thread has its own
generations (step count, cache contexts, ``stats``) and its own settings (``policy``,
``threshold``, ``sample_thresholds``): a thread that sets none uses those of the thread that
created the transformer (what ``load_transformer`` / ``enable`` and later settings there chose).
Graph runs are serialized by a lock, so one thread's step waits for another's to finish.
"""
from __future__ import annotations

import contextlib
import numbers
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import FrozenDict

from .. import policies
from ..artifact import Artifact
from ..dtypes import PRECISIONS, TORCH_DTYPES
from ..errors import TeaCacheError, shown
from ..families import get_family
from ..manifest import CONTEXT_GRAPH, MANIFEST_NAME, graph_names
from ..policies import IO_SUMS, SIGNAL_SUMS, Features, Policy, check_threshold
from ..shapes import bind, propagate
from .backends import make_runner
from .controller import ContextState, merge_stats
from .forecast import Forecast
from .io_sums import IOSums
from .plan import StepPlan

DEFAULT_CONTEXT = "default"
DECISIONS = ("batch", "sample")
BATCH_AXIS = "batch"  # the dim name the exporter gives every per-row dim 0
MAX_PLANS = 8  # input shapes whose buffers are kept; the least recently used goes first
PROVIDED_FEATURES = frozenset({SIGNAL_SUMS, IO_SUMS})  # what this runtime reads back for a policy


def _version(t: torch.Tensor) -> int | None:
    """A tensor's write counter; None where it has none (inference-mode tensors): never equal
    to the last one seen, so the context graph runs every call for them."""
    try:
        return t._version
    except RuntimeError:
        return None


class _Settings:
    """The policy settings one thread's generations start with."""

    __slots__ = ("policy", "bound", "sample_thresholds")

    def __init__(self, policy: Policy, bound: Policy, sample_thresholds: tuple | None = None):
        self.policy = policy  # as given (settings left to the artifact stay None)
        self.bound = bound  # with the artifact's settings filled in: what decides
        self.sample_thresholds = sample_thresholds

    def copy(self) -> "_Settings":
        return _Settings(self.policy, self.bound, self.sample_thresholds)


class _Thread(threading.local):
    """One thread's view: its cache context, its generation, the states of its contexts and
    its settings (None: the creating thread's)."""

    def __init__(self):
        self.context = DEFAULT_CONTEXT
        self.num_steps = 0
        self.states: dict[str, ContextState] = {}
        self.calls_this_step: dict[str, int] = {}
        self.settings: _Settings | None = None


class CompiledTransformer(torch.nn.Module):
    """Same ``forward`` keywords and output type as the diffusers model it was exported from."""

    def __init__(self, artifact: Artifact, backend: str, device: str | torch.device = "cpu",
                 threshold: float | None = None, clamp: bool | None = None, model: torch.nn.Module | None = None,
                 decisions: str = "batch", policy=None):
        super().__init__()
        if decisions not in DECISIONS:
            raise TeaCacheError(
                f"decisions={decisions!r} is not one of {DECISIONS}: 'batch' takes one decision per call "
                f"(upstream), 'sample' one per prompt with the blocks run on the rows that compute"
            )
        self.art_dir = artifact.folder
        self.manifest = manifest = artifact.manifest
        self.family = get_family(manifest.family)
        self.backend = backend
        self._device = torch.device(device)
        self._config = FrozenDict(manifest.config)
        # Attributes pipelines read off the model besides config (LuminaPipeline: head_dim).
        for name, value in self.family.pipeline_attributes(manifest.config).items():
            setattr(self, name, value)
        self.decisions = decisions
        # What the manifest records for the policies (checked), and the policy of this
        # thread's generations (other threads start from it; see the module doc).
        self._artifact = policies.artifact_policies(manifest, str(self.art_dir / MANIFEST_NAME))
        # The model input the sampler denoises (what io_sums compares), where the graphs take it.
        self._latent = self.family.latent_input if any(
            s.name == self.family.latent_input for g in manifest.graphs.values() for s in g.inputs) else None
        given = _initial_policy(self._artifact, policy, threshold, clamp)
        self._defaults = _Settings(given, self._bind(given))
        # Every graph runs on this stream; callers' streams hand over to it (forward).  Without
        # CUDA there is none, and the runners' activation says what is missing.
        cuda = self._device.type == "cuda" and torch.cuda.is_available()
        self._stream = torch.cuda.Stream(self._device) if cuda else None
        parts = (self.family.parts(model, self.family.variant(manifest.variant))
                 if model is not None else None)
        self._graphs = graph_names(manifest.graphs)
        self.runners = {g: make_runner(backend, artifact, g, self._device, parts, self._stream)
                        for g in self._graphs}
        for runner in self.runners.values():
            runner.activate()  # load every graph now: a bad artifact fails here, not mid-render
        # The model's inputs: what the context and embed graphs take that no graph produces.
        context = manifest.graphs.get(CONTEXT_GRAPH)
        produced = {"prev_signal", *(context.output_names if context else ())}
        takers = self._graphs[:self._graphs.index("embed") + 1]
        self._input_specs = {s.name: s for g in takers for s in manifest.graphs[g].inputs if s.name not in produced}
        self._context_inputs = tuple(context.input_names) if context else ()
        self._input_profiles = {n: p for g in takers for n, p in manifest.graphs[g].profile.items()
                                if n in self._input_specs}
        self._prev_dtype = next(s.dtype for s in manifest.graphs["embed"].inputs if s.name == "prev_signal")
        self._accepted = self.family.accepted_kwargs()
        # Blocks inputs with a per-row dim 0: what a sub-batch gathers (rotary tables have none).
        self._batched_block_inputs = tuple(
            s.name for s in manifest.graphs["blocks"].inputs if s.shape and s.shape[0] == BATCH_AXIS)
        blocks_profile = manifest.graphs["blocks"].profile
        self._blocks_min_batch = max((blocks_profile[n]["min"][0] for n in self._batched_block_inputs
                                      if n in blocks_profile), default=1)
        self._plans: OrderedDict[tuple, StepPlan] = OrderedDict()
        self._lock = threading.Lock()
        self._features = Features()  # filled per call, under the lock
        self._thread = _Thread()
        self._thread.settings = self._defaults
        # Set by enable(): the scheduler's step() marks step ends, so a context called twice
        # within one step (CFG branches without cache_context) gets a state per call.
        self.track_steps = False
        # Callables observe(context, step, computed, pool) after each call: calibration and
        # quality tools read signals and residuals here; empty for normal use.  The pool's
        # tensors are the plan's buffers, valid during the call only: copy what you keep.
        self.observers: list = []

    # --- what pipelines read off a transformer ------------------------------------------
    @property
    def config(self):
        return self._config

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.manifest.precision]

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, *args, **kwargs):
        # Graphs are placed once, at load; pipelines call .to(device) on every component.
        return self

    # --- the caching policy (per thread) -------------------------------------------------
    def _settings(self, write: bool = False) -> _Settings:
        """This thread's settings; a thread's first write copies the creating thread's."""
        thread = self._thread
        if thread.settings is None:
            if not write:
                return self._defaults
            thread.settings = self._defaults.copy()
        return thread.settings

    def _bind(self, policy: Policy) -> Policy:
        missing = sorted(policy.needs - PROVIDED_FEATURES)
        if missing:
            raise TeaCacheError(f"{policy!r} needs {missing} from the graphs, which this runtime does not read "
                                f"(it reads {sorted(PROVIDED_FEATURES)}): choose another policy")
        if IO_SUMS in policy.needs and self._latent is None:
            raise TeaCacheError(f"{policy!r} compares the model's latent input {self.family.latent_input!r}, which the "
                                f"{self.manifest.family} graphs do not take: set latent_input on the family to the "
                                f"name of the input the sampler denoises, or choose another policy")
        return policy.bind(self._artifact)

    @property
    def policy(self) -> Policy:
        """The caching policy of this thread's next generations, as given (settings it leaves
        None are the artifact's).  Set it to a policy object, a name (``"teacache"``) or
        ``{"name": ..., "params": {...}}``; it applies from the next generation on."""
        return self._settings().policy

    @policy.setter
    def policy(self, value) -> None:
        given = policies.from_spec(value)
        bound = self._bind(given)
        settings = self._settings(write=True)
        if settings.sample_thresholds is not None and not given.has_threshold:
            raise TeaCacheError(f"{given!r} has no threshold, but sample_thresholds is set: set "
                                f"transformer.sample_thresholds = None first")
        settings.policy, settings.bound = given, bound

    @property
    def threshold(self) -> float | None:
        """The threshold of this thread's policy (None: a policy without one)."""
        return getattr(self._settings().bound, "threshold", None)

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        current = self._settings().policy
        if not current.has_threshold:
            raise TeaCacheError(
                f"transformer.threshold = {value!r}: the policy {current!r} has no threshold; set "
                f"transformer.policy = teacache_trt.policies.TeaCache(threshold={value!r}) to use TeaCache")
        self.policy = current.replace(threshold=None if value is None else check_threshold(value))

    @property
    def sample_thresholds(self) -> list[float | None] | None:
        """``decisions="sample"``: one threshold per prompt (None: the policy's ``threshold``),
        for this thread's next generations.

        Sets the number of prompts P of the next generation; a call with N rows then needs
        N == k*P (row r belongs to prompt r % P: batched CFG stacks [uncond; cond]).
        """
        values = self._settings().sample_thresholds
        return None if values is None else list(values)

    @sample_thresholds.setter
    def sample_thresholds(self, values) -> None:
        if values is None:
            self._settings(write=True).sample_thresholds = None
            return
        if self.decisions != "sample":
            raise TeaCacheError(
                f"sample_thresholds needs decisions='sample' (this transformer takes {self.decisions!r} "
                f"decisions): load it with load_transformer(..., decisions='sample')"
            )
        if not self.policy.has_threshold:
            raise TeaCacheError(f"sample_thresholds: the policy {self.policy!r} has no threshold; set "
                                f"transformer.policy to one that has (e.g. 'teacache')")
        values = list(values)
        if not values:
            raise TeaCacheError("sample_thresholds is empty: give one threshold per prompt, or None")
        for i, v in enumerate(values):
            if v is not None:
                check_threshold(v, f"sample_thresholds[{i}]")
        self._settings(write=True).sample_thresholds = tuple(None if v is None else float(v) for v in values)

    # --- generation bookkeeping (per thread) ---------------------------------------------
    @property
    def num_steps(self) -> int:
        """Calls per cache context in this thread's generation (0: unknown, calls refused)."""
        return self._thread.num_steps

    def reset(self, num_calls: int | None = None, *, num_inference_steps: int | None = None) -> None:
        """Start a new generation (this thread) of ``num_calls`` transformer calls per cache context.

        The count is of calls, not of sampler steps: most schedulers call the model once per
        step, but PNDM's default warm-up calls it 4 times for each of its first 3 steps (30
        steps = 39 calls) and Heun twice per step; ``len(scheduler.timesteps)`` after
        ``set_timesteps`` is the number of calls for diffusers' schedulers.  A wrong count
        forces the wrong call and splits generations in the wrong place.
        ``num_inference_steps=`` is the earlier name of the same count, kept for callers that
        pass it by keyword.
        """
        if num_calls is None and num_inference_steps is None:
            raise TeaCacheError("reset() needs the number of transformer calls per cache context: "
                                "reset(num_calls=len(scheduler.timesteps))")
        if num_calls is not None and num_inference_steps is not None and num_calls != num_inference_steps:
            raise TeaCacheError(f"reset(num_calls={num_calls!r}, num_inference_steps={num_inference_steps!r}): "
                                f"both name the number of transformer calls; give one")
        n = num_calls if num_calls is not None else num_inference_steps
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise TeaCacheError(f"num_calls={n!r} must be an integer >= 0 (the transformer calls per cache "
                                f"context of one generation)")
        thread = self._thread
        thread.num_steps = int(n)
        thread.states = {}
        thread.calls_this_step = {}

    def end_step(self) -> None:
        """The pipeline finished a denoising step (called by the scheduler hook)."""
        self._thread.calls_this_step = {}

    @contextlib.contextmanager
    def cache_context(self, name: str, **_pipeline_info):
        """diffusers' protocol: calls inside share TeaCache state under ``name``.

        Pipelines may add keywords (WanPipeline: ``step_index``, ``sigma``,
        ``num_inference_steps``); the state follows the scheduler instead, so they are ignored.
        """
        thread = self._thread
        previous, thread.context = thread.context, name
        try:
            yield
        finally:
            thread.context = previous

    @property
    def stats(self) -> dict[str, Any]:
        """This thread's current generation: computed / skipped steps, per context (and per
        prompt under ``"samples"`` in sample mode)."""
        return merge_stats(self._thread.states, samples=self.decisions == "sample")

    def _route(self, thread: _Thread) -> str:
        """The state this call belongs to: its cache context, split per call within a step."""
        name = thread.context
        if self.track_steps:
            k = thread.calls_this_step.get(name, 0)
            thread.calls_this_step[name] = k + 1
            if k:
                name = f"{name}#{k}"
        return name

    def _state(self, thread: _Thread, name: str, rows: int) -> ContextState:
        state = thread.states.get(name)
        if state is None or state.step >= thread.num_steps:
            # A context that ran all its steps starts a new generation (the reference does
            # the same by wrapping its step counter), so repeated calls need no reset().
            settings = thread.settings or self._defaults
            n = self._prompts(rows, settings)
            policy = settings.bound
            state = thread.states[name] = ContextState(
                n_groups=n, num_steps=thread.num_steps,
                policy=policy.start(thread.num_steps, name, n, self._group_thresholds(settings)),
                reads_sums=SIGNAL_SUMS in policy.needs,
                forecast=None if policy.reuse == "residual" else Forecast(policy.reuse, n))
            if IO_SUMS in policy.needs:
                state.io = IOSums(self._device)
        elif self.decisions == "sample":
            self._check_rows(rows, state.n_groups, (thread.settings or self._defaults).sample_thresholds)
        return state

    def _prompts(self, rows: int, settings: _Settings) -> int:
        """Decision groups of a new generation: 1, or one per prompt in sample mode."""
        if self.decisions == "batch":
            return 1
        prompts = rows if settings.sample_thresholds is None else len(settings.sample_thresholds)
        self._check_rows(rows, prompts, settings.sample_thresholds)
        return prompts

    def _check_rows(self, rows: int, prompts: int, sample_thresholds) -> None:
        if rows % prompts:
            raise TeaCacheError(
                f"a call with batch N={rows} rows cannot be split over P={prompts} prompts: sample mode "
                f"needs N == k*P (row r is prompt r % P); set sample_thresholds to one value per prompt "
                f"(len {prompts} now) or pass k*P rows"
            )
        per_prompt = rows // prompts
        if prompts > 1 and per_prompt < self._blocks_min_batch:
            raise TeaCacheError(
                f"sample mode runs the blocks graph on the rows of the prompts that compute, down to "
                f"{per_prompt} row(s) (N={rows} rows, P={prompts} prompts), but the blocks of "
                f"{self.art_dir} were built for batch >= {self._blocks_min_batch}: re-export with "
                f"--batch 1:OPT:MAX, or use decisions='batch'"
            )
        if sample_thresholds is not None and len(sample_thresholds) != prompts:
            raise TeaCacheError(
                f"sample_thresholds has {len(sample_thresholds)} values but this generation has "
                f"P={prompts} prompts: set it before the generation starts (reset() or a new pipeline call)"
            )

    @staticmethod
    def _group_thresholds(settings: _Settings) -> np.ndarray | None:
        """Per-prompt thresholds (sample mode with sample_thresholds), else None: the policy's own."""
        if settings.sample_thresholds is None:
            return None
        default = settings.bound.threshold
        return np.array([default if v is None else v for v in settings.sample_thresholds], dtype=np.float64)

    # --- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, *args, **kwargs):
        """The model's forward: its inputs by keyword or by position (in the order of the model's
        own ``forward``), ``return_dict`` as the model takes it; returns the model's output type."""
        kwargs = self.family.call_arguments(args, kwargs)
        return_dict = kwargs.pop("return_dict", True)
        thread = self._thread
        if not thread.num_steps:
            raise TeaCacheError(
                "the number of calls of this generation is unknown, so TeaCache cannot force the last "
                "call nor tell generations apart: call transformer.reset(num_calls=len(scheduler.timesteps)) "
                "before each generation (in the thread that runs it), or use teacache_trt.enable(pipe, "
                "ART_DIR, ...), which follows the pipeline's scheduler"
            )
        self._check_kwargs(kwargs)
        feed = self.family.feed_from_kwargs(kwargs)
        with self._lock:
            if self._stream is None:
                out = self._step(thread, feed)
            else:
                caller = torch.cuda.current_stream(self._device)
                self._stream.wait_stream(caller)  # the inputs the caller queued are ready first
                with torch.cuda.stream(self._stream):
                    out = self._step(thread, feed)
                caller.wait_stream(self._stream)  # the caller's next work sees the output
                out.record_stream(caller)  # allocated here, used and freed there
        return self.family.wrap_output(out, return_dict)

    def _step(self, thread: _Thread, pool: dict[str, torch.Tensor]) -> torch.Tensor:
        """One call; ``pool`` holds the model inputs, then every graph's outputs by name."""
        given = [pool.get(n) for n in self._context_inputs]  # the caller's, before any conversion
        plan = self._plan(pool)
        context = self._route(thread)
        state = self._state(thread, context, plan.rows)
        if state.plan_key is not plan.key:
            self._fit_state(state, plan)
        if given:
            self._run_context(plan, state, pool, given)
        has_prev = state.prev_signal is not None
        if state.next_signal is None:
            state.next_signal = plan.new_signal()
        pool["prev_signal"] = state.prev_signal if has_prev else plan.zeros_prev
        embed_out = plan.embed_out
        embed_out["signal"] = state.next_signal
        pool.update(self.runners["embed"].infer_into(pool, embed_out))
        # This call's signal is the next call's previous one; the old buffer takes the next.
        state.prev_signal, state.next_signal = state.next_signal, state.prev_signal
        features = self._features
        features.plan = plan
        features.group_of_row = groups = plan.group_of_row(state.n_groups)
        features.elements_per_row = plan.elements_per_row
        # A static policy reads nothing back: its decisions were fixed when the context started.
        features.l1_diff, features.l1_prev = plan.read_sums() if has_prev and state.reads_sums else (None, None)
        if state.io is not None:
            state.io.read(pool[self._latent], features)
        step = state.step
        flags = state.policy.decide(step, features, 1 - state.has_residual)
        state.record(flags)
        compute = bool(flags.any())
        if compute:
            self._run_blocks(plan, state, pool, flags, groups)
        pool.update(state.residual if state.forecast is None else self._forecast(plan, state, flags, step))
        out = self.runners["head"].infer_into(pool, plan.new_output())["output"]
        if state.io is not None:
            state.io.computed(plan, out, flags, groups)
        if self.observers:
            pool["output"] = out
            for observe in self.observers:
                observe(context, state.step - 1, compute, pool)
        return out

    def _run_context(self, plan: StepPlan, state: ContextState, feed: dict, given: list) -> None:
        """The context graph, when its inputs changed since this cache context's last call.

        Unchanged = the same tensor objects, not written to since (``_version``): pipelines
        pass the same prompt embeddings and ids at every step of a generation.
        """
        last = state.context_inputs
        if last is not None and all(t is seen and _version(t) == v for t, (seen, v) in zip(given, last)):
            feed.update(state.context_out)
            return
        if state.context_out is None:
            state.context_out = plan.new_context()
        feed.update(self.runners[CONTEXT_GRAPH].infer_into(feed, state.context_out))
        state.context_inputs = [(t, _version(t)) for t in given]

    def _fit_state(self, state: ContextState, plan: StepPlan) -> None:
        """A context meets a plan (shape) it was not at last call: keep what still fits."""
        if any(t is not None and t.shape != plan.signal_shape for t in (state.prev_signal, state.next_signal)):
            # the batch or resolution changed: nothing to compare against
            state.prev_signal = state.next_signal = None
        if state.residual is not None and any(
                t.shape != plan.shapes[n] for n, t in state.residual.items()):
            state.forget_residual()
        state.context_inputs = None  # run the context graph again at the new shape
        if state.context_out is not None and any(
                t.shape != plan.shapes[n] for n, t in state.context_out.items()):
            state.context_out = None
        state.plan_key = plan.key

    def _run_blocks(self, plan: StepPlan, state: ContextState, pool: dict, flags: np.ndarray,
                    groups: np.ndarray) -> None:
        """The blocks graph on the rows whose group computes, into the context's residual
        (with a forecast, the residual it replaces becomes the context's previous one)."""
        blocks = self.runners["blocks"]
        forecast = state.forecast
        if flags.all():
            if state.residual is None:
                state.residual = plan.new_residual()
            if forecast is None or not state.has_residual.any():
                blocks.infer_into(pool, state.residual)
            else:  # write over the older residual and swap: no copy
                target = forecast.previous if forecast.previous is not None else plan.new_residual()
                blocks.infer_into(pool, target)
                forecast.previous, state.residual = state.residual, target
        else:
            # Sample mode, some prompts skip: run the gathered sub-batch, scatter it back.
            rows = np.flatnonzero(flags[groups])
            inputs, outputs = plan.sub_batch(len(rows))
            index = plan.row_index(rows)
            for name, buffer in inputs.items():
                torch.index_select(pool[name], 0, index, out=buffer)
            if forecast is not None:  # the rows' last residual becomes their previous one
                if forecast.previous is None:
                    forecast.previous = plan.new_residual()
                for name, part in outputs.items():
                    torch.index_select(state.residual[name], 0, index, out=part)
                    forecast.previous[name].index_copy_(0, index, part)
            blocks.infer_into({**pool, **inputs}, outputs)
            for name, part in outputs.items():
                state.residual[name].index_copy_(0, index, part)
        np.maximum(state.has_residual, flags, out=state.has_residual)

    @staticmethod
    def _forecast(plan: StepPlan, state: ContextState, flags: np.ndarray, step: int) -> dict[str, torch.Tensor]:
        """The residual the head reads under a forecasting reuse: the computed one where every
        group computed now or has one computed residual only, else the extrapolation."""
        forecast = state.forecast
        if flags.any():
            forecast.computed(flags, step)
        a = forecast.weights(flags, step)
        if not a.any():
            return state.residual
        return forecast.predict(state.residual, plan.forecast_buffer(), a)

    # --- inputs and plans ----------------------------------------------------------------
    def _plan(self, feed: dict[str, Any]) -> StepPlan:
        """The plan of these inputs' shapes (built and checked on the first call at them);
        converts inputs given with another dtype, device or layout, in place."""
        try:
            key = tuple((t.shape, t.dtype, t.device, t.is_contiguous()) for t in map(feed.__getitem__, self._input_specs))
        except (KeyError, AttributeError, TypeError, RuntimeError):  # a missing input, a number, a sparse tensor
            self._check_present(feed)
            for name in self._input_specs:
                feed[name] = self._as_tensor(name, feed[name])
            return self._plan(feed)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._new_plan(feed, key)
        elif len(self._plans) > 1:
            self._plans.move_to_end(key)
        for name, dtype in plan.convert:
            feed[name] = feed[name].to(device=self._device, dtype=dtype).contiguous()
        return plan

    def _as_tensor(self, name: str, value) -> torch.Tensor:
        """A model input as a dense tensor with values (a number or list becomes one); anything
        else is refused by name, before it meets a graph."""
        if not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                raise TeaCacheError(f"input {name!r} is a {type(value).__name__} ({shown(value, 40)}), not a tensor: "
                                    f"pass a torch.Tensor (or a number)") from None
        if value.layout != torch.strided:
            raise TeaCacheError(f"input {name!r} is a {value.layout} tensor: the graphs take dense tensors; pass "
                                f"{name}.to_dense()")
        if value.device.type == "meta":
            raise TeaCacheError(f"input {name!r} is on the meta device, which holds no values: pass a tensor with "
                                f"data (on {self._device})")
        return value

    def _check_present(self, feed) -> None:
        for name in self._input_specs:
            if name not in feed:
                raise TeaCacheError(
                    f"input {name!r} is missing; the {self.manifest.family} graphs were exported "
                    f"with inputs {list(self._input_specs)}"
                )

    def _new_plan(self, feed: dict[str, torch.Tensor], key: tuple) -> StepPlan:
        """Check the inputs against the manifest before any launch, and build their plan."""
        env: dict[str, int] = {}
        convert = []
        for name, spec in self._input_specs.items():
            t = self._as_tensor(name, feed[name])
            want = TORCH_DTYPES[spec.dtype]
            if t.dtype != want and not (t.dtype.is_floating_point and want.is_floating_point):
                raise TeaCacheError(
                    f"input {name!r} has dtype {t.dtype}; the graph expects {want} "
                    f"(pass {name}.to({want}))"
                )
            bind(spec.shape, tuple(t.shape), env, f"input {name!r}")
            # fp32 latents into an fp16 graph: diffusers casts too
            if t.dtype != want or t.device != self._device or not t.is_contiguous():
                convert.append((name, want))
        self._check_profile(env, feed)
        shapes = propagate([self.manifest.graphs[g] for g in self._graphs], {n: feed[n].shape for n in self._input_specs})
        if len(self._plans) >= MAX_PLANS:
            self._plans.popitem(last=False)
        plan = self._plans[key] = StepPlan(key, shapes, self.runners, tuple(convert), self._batched_block_inputs,
                                           self._prev_dtype, self._device)
        return plan

    def _check_kwargs(self, kwargs: dict[str, Any]) -> None:
        """Keywords the graphs cannot take are refused, never silently ignored; those the family
        declares baked in (``ignored_kwargs``) are dropped when given at their exported value."""
        self.family.drop_ignored(kwargs)
        for key in ("joint_attention_kwargs", "attention_kwargs"):
            extra = kwargs.pop(key, None)
            if not extra:
                continue
            extra = dict(extra)
            if extra.pop("scale", 1.0) != 1.0:
                raise TeaCacheError(
                    f"{key}['scale'] is not 1: LoRA scales cannot change a compiled graph; "
                    f"fuse the LoRA into the weights before export"
                )
            if extra:
                raise TeaCacheError(
                    f"{key} has {sorted(extra)}: the compiled graphs take no such inputs (IP-Adapter "
                    f"and similar change the model); export a model that includes them, or drop them"
                )
        accepted = self._accepted
        unknown = [k for k, v in kwargs.items() if v is not None and k not in accepted]
        if unknown:
            raise TeaCacheError(
                f"keyword arguments {sorted(unknown)} are not inputs of the exported {self.manifest.class_name} "
                f"graphs (ControlNet residuals and similar change the output): they cannot be ignored; "
                f"accepted: {sorted(accepted)}. In a family of your own, a keyword that does not change the "
                f"output is declared in its ignored_kwargs, one that feeds a graph input in forward_kwargs "
                f"and feed_from_kwargs (docs/custom-families.md)"
            )

    def _check_profile(self, env: dict[str, int], feed: dict[str, torch.Tensor]) -> None:
        """Axis values, then every input dim, against the profile the graphs were built for."""
        for axis, (lo, opt, hi) in self.manifest.axes.items():
            value = env.get(axis)
            if value is not None and value < 1:
                raise TeaCacheError(f"{axis}={value}: the inputs are empty along {axis} (an input has size 0 there); "
                                    f"give at least one (e.g. at least one prompt)")
            if value is not None and not lo <= value <= hi:
                raise TeaCacheError(
                    f"{axis}={value} is outside the built profile [{lo}, {hi}] of {self.art_dir}: "
                    f"re-export with --axis {axis}={min(lo, value)}:{opt}:{max(hi, value)}"
                )
        # Dims the exporter named itself (derived from several axes) are checked per input.
        for name, prof in self._input_profiles.items():
            shape = tuple(feed[name].shape)
            for i, (d, lo, hi) in enumerate(zip(shape, prof["min"], prof["max"])):
                if not lo <= d <= hi:
                    raise TeaCacheError(
                        f"input {name!r} has size {d} on dim {i} (shape {shape}), outside the built "
                        f"profile [{lo}, {hi}] of {self.art_dir} (min {tuple(prof['min'])}, max "
                        f"{tuple(prof['max'])}): re-export with wider --axis ranges (teacache-export --list-axes)"
                    )


def _initial_policy(artifact, policy, threshold, clamp) -> Policy:
    """The policy ``load_transformer`` was asked for: ``policy`` (object, name or spec), else
    TeaCache when ``threshold`` or ``clamp`` is given (TeaCache's shorthands), else the
    artifact's default policy.  ``threshold`` / ``clamp`` given with a policy set its own."""
    if policy is None:
        if threshold is None and clamp is None:
            return policies.make(artifact.name, **artifact.params)
        return policies.TeaCache(threshold=threshold, clamp=clamp)
    given = policies.from_spec(policy)
    for name, value in (("threshold", threshold), ("clamp", clamp)):
        if value is not None:
            if name not in given.param_names():
                raise TeaCacheError(f"{name}={value!r} was given with the policy {given!r}, which takes no {name}: "
                                    f"leave it out, or give a policy that takes it")
            given = given.replace(**{name: value})
    return given
