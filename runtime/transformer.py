"""The drop-in transformer: embed graph -> criterion -> blocks graph or cached residual -> head.

An instance replaces ``pipe.transformer``.  All TeaCache state lives on the instance, per
``cache_context`` name; nothing is patched on any class.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dtypes import PRECISIONS, TORCH_DTYPES
from ..errors import TeaCacheError
from ..families import get_family
from ..manifest import GRAPH_NAMES, Manifest
from ..shapes import bind, propagate
from .backends import make_runner
from .controller import ContextState, TeaCache, check_threshold, merge_stats

DEFAULT_CONTEXT = "default"
DECISIONS = ("batch", "sample")
BATCH_AXIS = "batch"  # the dim name the exporter gives every per-row dim 0


class CompiledTransformer(torch.nn.Module):
    """Same ``forward`` keywords and output type as the diffusers model it was exported from."""

    def __init__(self, art_dir: Path, manifest: Manifest, backend: str, device: str | torch.device = "cpu",
                 threshold: float | None = None, clamp: bool | None = None, model: torch.nn.Module | None = None,
                 decisions: str = "batch"):
        super().__init__()
        if decisions not in DECISIONS:
            raise TeaCacheError(
                f"decisions={decisions!r} is not one of {DECISIONS}: 'batch' takes one decision per call "
                f"(upstream), 'sample' one per prompt with the blocks run on the rows that compute"
            )
        from diffusers.configuration_utils import FrozenDict

        self.art_dir = Path(art_dir)
        self.manifest = manifest
        self.family = get_family(manifest.family)
        self.backend = backend
        self._device = torch.device(device)
        self._config = FrozenDict(manifest.config)
        # Attributes pipelines read off the model besides config (LuminaPipeline: head_dim).
        for name, value in self.family.pipeline_attributes(manifest.config).items():
            setattr(self, name, value)
        # The decision rule: TeaCache from the manifest, or any object with the same decide()
        # (e.g. controller.FixedSchedule for equal-compute baselines).
        self.policy = TeaCache.from_criterion(manifest.criterion, threshold, clamp)
        parts = (self.family.parts(model, self.family.variant(manifest.variant))
                 if model is not None else None)
        self.runners = {g: make_runner(backend, self.art_dir, manifest, g, self._device, parts)
                        for g in GRAPH_NAMES}
        for runner in self.runners.values():
            runner.activate()  # load every graph now: a bad artifact fails here, not mid-render
        self._embed_specs = {s.name: s for s in manifest.graphs["embed"].inputs}
        self.decisions = decisions
        self._sample_thresholds: tuple[float | None, ...] | None = None
        self._sample_threshold_array: np.ndarray | None = None
        # Blocks inputs with a per-row dim 0: what a sub-batch gathers (rotary tables have none).
        self._batched_block_inputs = tuple(
            s.name for s in manifest.graphs["blocks"].inputs if s.shape and s.shape[0] == BATCH_AXIS)
        blocks_profile = manifest.graphs["blocks"].profile
        self._blocks_min_batch = max((blocks_profile[n]["min"][0] for n in self._batched_block_inputs
                                      if n in blocks_profile), default=1)
        self._context = DEFAULT_CONTEXT
        self.num_steps = 0
        self._states: dict[str, ContextState] = {}
        # Set by enable(): the scheduler's step() marks step ends, so a context called twice
        # within one step (CFG branches without cache_context) gets a state per call.
        self.track_steps = False
        self._calls_this_step: dict[str, int] = {}
        self._row_groups: dict[tuple[int, int], np.ndarray] = {}
        # Callables observe(context, step, computed, pool) after each call: calibration and
        # quality tools read signals and residuals here; empty for normal use.
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

    @property
    def threshold(self) -> float | None:
        return getattr(self.policy, "threshold", None)

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.policy = TeaCache.from_criterion(self.manifest.criterion, value, getattr(self.policy, "clamp", None))
        self._sample_threshold_array = None  # None entries of sample_thresholds follow this one

    @property
    def sample_thresholds(self) -> list[float | None] | None:
        """``decisions="sample"``: one threshold per prompt (None: the scalar ``threshold``).

        Sets the number of prompts P of the next generation; a call with N rows then needs
        N == k*P (row r belongs to prompt r % P: batched CFG stacks [uncond; cond]).
        """
        return None if self._sample_thresholds is None else list(self._sample_thresholds)

    @sample_thresholds.setter
    def sample_thresholds(self, values) -> None:
        if values is None:
            self._sample_thresholds = None
            self._sample_threshold_array = None
            return
        if self.decisions != "sample":
            raise TeaCacheError(
                f"sample_thresholds needs decisions='sample' (this transformer takes {self.decisions!r} "
                f"decisions): load it with load_transformer(..., decisions='sample')"
            )
        values = list(values)
        if not values:
            raise TeaCacheError("sample_thresholds is empty: give one threshold per prompt, or None")
        for i, v in enumerate(values):
            if v is not None:
                try:
                    check_threshold(v)
                except TeaCacheError as exc:
                    raise TeaCacheError(f"sample_thresholds[{i}]: {exc}") from None
        self._sample_thresholds = tuple(None if v is None else float(v) for v in values)
        self._sample_threshold_array = None

    # --- generation bookkeeping ----------------------------------------------------------
    def reset(self, num_inference_steps: int = 0) -> None:
        """Start a new generation of ``num_inference_steps`` calls per cache context."""
        if num_inference_steps < 0:
            raise TeaCacheError(f"num_inference_steps={num_inference_steps} must be >= 0")
        self.num_steps = int(num_inference_steps)
        self._states = {}
        self._calls_this_step = {}

    def end_step(self) -> None:
        """The pipeline finished a denoising step (called by the scheduler hook)."""
        self._calls_this_step = {}

    @contextlib.contextmanager
    def cache_context(self, name: str, **_pipeline_info):
        """diffusers' protocol: calls inside share TeaCache state under ``name``.

        Pipelines may add keywords (WanPipeline: ``step_index``, ``sigma``,
        ``num_inference_steps``); the state follows the scheduler instead, so they are ignored.
        """
        previous, self._context = self._context, name
        try:
            yield
        finally:
            self._context = previous

    @property
    def stats(self) -> dict[str, Any]:
        return merge_stats(self._states, samples=self.decisions == "sample")

    def _route(self) -> str:
        """The state this call belongs to: its cache context, split per call within a step."""
        name = self._context
        if self.track_steps:
            k = self._calls_this_step.get(name, 0)
            self._calls_this_step[name] = k + 1
            if k:
                name = f"{name}#{k}"
        return name

    def _state(self, name: str, rows: int) -> ContextState:
        state = self._states.get(name)
        if state is None or (self.num_steps and state.step >= self.num_steps):
            # A context that ran all its steps starts a new generation (the reference does
            # the same by wrapping its step counter), so repeated calls need no reset().
            state = self._states[name] = ContextState(n_groups=self._prompts(rows))
        elif self.decisions == "sample":
            self._check_rows(rows, state.n_groups)
        return state

    def _prompts(self, rows: int) -> int:
        """Decision groups of a new generation: 1, or one per prompt in sample mode."""
        if self.decisions == "batch":
            return 1
        prompts = rows if self._sample_thresholds is None else len(self._sample_thresholds)
        self._check_rows(rows, prompts)
        return prompts

    def _check_rows(self, rows: int, prompts: int) -> None:
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
        if self._sample_thresholds is not None and len(self._sample_thresholds) != prompts:
            raise TeaCacheError(
                f"sample_thresholds has {len(self._sample_thresholds)} values but this generation has "
                f"P={prompts} prompts: set it before the generation starts (reset() or a new pipeline call)"
            )

    def _group_thresholds(self, n_groups: int) -> np.ndarray | None:
        """Per-prompt thresholds (sample mode with sample_thresholds), else None: the rule's own."""
        if self._sample_thresholds is None:
            return None
        array = self._sample_threshold_array
        if array is None:
            default = self.threshold
            array = self._sample_threshold_array = np.array(
                [default if v is None else v for v in self._sample_thresholds], dtype=np.float64)
        return array

    def _rows_of(self, rows: int, n_groups: int) -> np.ndarray:
        """group_of_row: row r belongs to group r % n_groups (all rows in group 0 when 1)."""
        key = (rows, n_groups)
        groups = self._row_groups.get(key)
        if groups is None:
            groups = self._row_groups[key] = np.arange(rows, dtype=np.int32) % n_groups
        return groups

    # --- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, return_dict: bool = True, **kwargs):
        feed = self._prepare(kwargs)
        context = self._route()
        shapes = propagate([self.manifest.graphs[g] for g in GRAPH_NAMES], {n: t.shape for n, t in feed.items()})
        rows = shapes["l1_diff"][0]
        state = self._state(context, rows)
        prev = state.prev_signal
        if prev is not None and tuple(prev.shape) != shapes["prev_signal"]:
            prev = None  # the batch or resolution changed: nothing to compare against
        feed["prev_signal"] = prev if prev is not None else torch.zeros(
            shapes["prev_signal"], dtype=TORCH_DTYPES[self._embed_specs["prev_signal"].dtype], device=self._device)
        pool = dict(feed)
        pool.update(self.runners["embed"].infer(pool))
        if state.residual is not None and not all(
                tuple(t.shape) == shapes[n] for n, t in state.residual.items()):
            state.forget_residual()
        l1_diff = l1_prev = None
        if prev is not None:
            # One host sync per step, as in the reference (.item()): the per-row sums.
            sums = torch.stack([pool["l1_diff"], pool["l1_prev"]]).double().cpu().numpy()
            l1_diff, l1_prev = sums[0], sums[1]
        groups = self._rows_of(rows, state.n_groups)
        flags = self.policy.decide(state, self.num_steps, l1_diff, l1_prev, groups, 1 - state.has_residual,
                                   self._group_thresholds(state.n_groups))
        compute = bool(flags.any())
        if compute:
            self._run_blocks(state, pool, flags, groups, rows)
        pool.update(state.residual)
        state.prev_signal = pool["signal"]
        out = self.runners["head"].infer(pool)["output"]
        if self.observers:
            pool["output"] = out
            for observe in self.observers:
                observe(context, state.step - 1, compute, pool)
        return self.family.wrap_output(out, return_dict)

    def _run_blocks(self, state: ContextState, pool: dict, flags: np.ndarray, groups: np.ndarray, rows: int) -> None:
        """The blocks graph on the rows whose group computes; their residual rows are replaced."""
        if flags.all():
            state.residual = self.runners["blocks"].infer(pool)
        else:
            # Sample mode, some prompts skip: run the gathered sub-batch, scatter it back.
            index = torch.from_numpy(np.flatnonzero(flags[groups])).to(self._device)
            sub = dict(pool)
            for name in self._batched_block_inputs:
                sub[name] = pool[name].index_select(0, index)
            for name, part in self.runners["blocks"].infer(sub).items():
                state.residual[name].index_copy_(0, index, part)
        state.has_residual[flags.astype(bool)] = 1

    def _prepare(self, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward kwargs -> embed inputs, checked against the manifest before any launch."""
        for key in ("joint_attention_kwargs", "attention_kwargs"):
            extra = dict(kwargs.pop(key, None) or {})
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
        unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in self.family.accepted_kwargs())
        if unknown:
            raise TeaCacheError(
                f"keyword arguments {unknown} are not inputs of the exported {self.manifest.class_name} "
                f"graphs (ControlNet residuals and similar change the output): they cannot be ignored; "
                f"accepted: {sorted(self.family.accepted_kwargs())}"
            )
        feed = self.family.feed_from_kwargs(kwargs)
        env: dict[str, int] = {}
        for name, spec in self._embed_specs.items():
            if name == "prev_signal":
                continue
            if name not in feed:
                raise TeaCacheError(
                    f"input {name!r} is missing; the {self.manifest.family} graphs were exported "
                    f"with inputs {[n for n in self._embed_specs if n != 'prev_signal']}"
                )
            t = feed[name]
            if not isinstance(t, torch.Tensor):
                t = torch.as_tensor(t)
            want = TORCH_DTYPES[spec.dtype]
            if t.dtype != want:
                if t.dtype.is_floating_point and want.is_floating_point:
                    t = t.to(want)  # fp32 latents into an fp16 graph: diffusers casts too
                else:
                    raise TeaCacheError(
                        f"input {name!r} has dtype {t.dtype}; the graph expects {want} "
                        f"(pass {name}.to({want}))"
                    )
            bind(spec.shape, tuple(t.shape), env, f"input {name!r}")
            feed[name] = t.to(self._device)
        self._check_profile(env, feed)
        return feed

    def _check_profile(self, env: dict[str, int], feed: dict[str, torch.Tensor]) -> None:
        """Axis values, then every input dim, against the profile the graphs were built for."""
        for axis, (lo, opt, hi) in self.manifest.axes.items():
            value = env.get(axis)
            if value is not None and not lo <= value <= hi:
                raise TeaCacheError(
                    f"{axis}={value} is outside the built profile [{lo}, {hi}] of {self.art_dir}: "
                    f"re-export with --axis {axis}={min(lo, value)}:{opt}:{max(hi, value)}"
                )
        # Dims the exporter named itself (derived from several axes) are checked per input.
        for name, prof in self.manifest.graphs["embed"].profile.items():
            if name not in feed:
                continue
            shape = tuple(feed[name].shape)
            for i, (d, lo, hi) in enumerate(zip(shape, prof["min"], prof["max"])):
                if not lo <= d <= hi:
                    raise TeaCacheError(
                        f"input {name!r} has size {d} on dim {i} (shape {shape}), outside the built "
                        f"profile [{lo}, {hi}] of {self.art_dir} (min {tuple(prof['min'])}, max "
                        f"{tuple(prof['max'])}): re-export with wider --axis ranges (teacache-export --list-axes)"
                    )
