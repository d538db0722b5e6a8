"""The worker: a loaded pipeline (compiled transformer inside) that renders one batch at a time.

It returns encoded outputs and per-job step records instead of writing files, so the same
worker runs in the renderer's process and inside Ray actors, and only the renderer writes the
output folder.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ... import policies
from ...errors import TeaCacheError
from ..drivers import render_drivers
from .batching import DECISIONS
from .encode import Failed, encode
from .jobs import Job



@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to load its pipeline; plain values, so it pickles to Ray."""

    driver: str
    model_dir: str
    art_dir: str
    backend: str = "onnxruntime"
    device: str = "cpu"
    decisions: str = "sample"
    art_dir_2: str | None = None  # a two-expert pipeline's second expert (Wan2.2 A14B's low-noise one)


@dataclass
class Outcome:
    """One job's result: the encoded output, or the error that stopped it (or its batch)."""

    id: str
    data: bytes | None = None
    suffix: str = ""
    preview: bytes | None = None  # the animated GIF beside a video
    computed_steps: list[int] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0  # the job's share of its batch's wall time
    error: str | None = None
    never_skipped: str | None = None  # its policy could skip but computed every step: why

    @property
    def ok(self) -> bool:
        return self.error is None


class Worker:
    def __init__(self, spec: WorkerSpec):
        if spec.decisions not in DECISIONS:
            raise TeaCacheError(f"decisions {spec.decisions!r} is not one of {DECISIONS}")
        drivers = render_drivers()
        if spec.driver not in drivers:
            raise TeaCacheError(f"no render driver named {spec.driver!r} is installed here (installed: "
                                f"{sorted(drivers) or 'none'}): install teacache-trt on every worker")
        self.spec = spec
        self.driver = drivers[spec.driver]
        try:
            second = {"art_dir_2": Path(spec.art_dir_2)} if spec.art_dir_2 else {}
            self.pipe = self.driver.load(Path(spec.model_dir), Path(spec.art_dir), backend=spec.backend,
                                         device=spec.device, decisions=spec.decisions, **second)
        except TeaCacheError:
            raise
        except Exception as exc:  # the pipeline's own loader: say what failed, no traceback
            raise TeaCacheError(f"the {spec.driver} driver cannot load the pipeline at {spec.model_dir} with "
                                f"artifacts {spec.art_dir}: {type(exc).__name__}: {exc}") from exc

    def render(self, batch: Sequence[Job]) -> list[Outcome]:
        """Render one batch of compatible jobs; a failure fails the batch's jobs, never the run."""
        t0 = time.perf_counter()
        try:
            outputs, steps, idle = self._run(batch)
            encoded = [out if isinstance(out, Failed) else encode(out) for out in outputs]
        except TeaCacheError as exc:
            return self._failed(batch, str(exc), t0)
        except Exception as exc:  # a backend error on one batch must not end a night's render
            return self._failed(batch, f"{type(exc).__name__}: {str(exc)[:2000]}", t0)
        share = (time.perf_counter() - t0) / len(batch)
        return [Outcome(job.id, seconds=share, error=e.error) if isinstance(e, Failed) else
                Outcome(job.id, e.data, e.suffix, e.preview, computed, skipped, share, never_skipped=why)
                for job, e, (computed, skipped), why in zip(batch, encoded, steps, idle)]

    def _run(self, batch: Sequence[Job]) -> tuple[list, list[tuple[list[int], list[int]]], list]:
        """(one output per job, (computed steps, skipped steps) per job, never-skipped cause per job)."""
        experts = compiled_experts(self.pipe)
        # A batch shares its policy (batching.batch_key; a job made without one: TeaCache);
        # the threshold is each job's own in sample decisions, the batch's in batch decisions
        # (both experts of a two-expert pipeline take the same settings).
        first = batch[0]
        policy = policies.from_spec(first.policy) if first.policy else policies.TeaCache()
        for transformer in experts:
            if self.spec.decisions == "sample":
                transformer.sample_thresholds = None
                transformer.policy = policy
                if policy.has_threshold:
                    transformer.sample_thresholds = [job.threshold for job in batch]
            else:
                transformer.policy = policy.replace(threshold=first.threshold) if policy.has_threshold else policy
        outputs = self.driver.render_batch(self.pipe, batch)
        if len(outputs) != len(batch):
            raise TeaCacheError(f"driver {self.driver.name!r} returned {len(outputs)} outputs for "
                                f"{len(batch)} jobs: a driver must return one output per job")
        computed, skipped = [[] for _ in batch], [[] for _ in batch]
        idle: list[str | None] = [None] * len(batch)
        offset = 0  # the second expert's steps follow the first one's in the generation
        for transformer in experts:
            stats = transformer.stats
            rows = stats["samples"] if self.spec.decisions == "sample" else [stats] * len(batch)
            for i, row in enumerate(rows):
                computed[i] += [offset + k for k in row["computed_steps"]]
                skipped[i] += [offset + k for k in row["skipped_steps"]]
                idle[i] = idle[i] or row.get("never_skipped")
            offset += transformer.num_steps
        return outputs, list(zip(computed, skipped)), idle

    @staticmethod
    def _failed(batch: Sequence[Job], error: str, t0: float) -> list[Outcome]:
        share = (time.perf_counter() - t0) / len(batch)
        return [Outcome(job.id, seconds=share, error=error) for job in batch]


def compiled_experts(pipe) -> list:
    """The pipeline's compiled transformers in generation order: ``transformer``, then a
    two-expert pipeline's ``transformer_2`` when it is compiled too."""
    from ...runtime.transformer import CompiledTransformer

    second = getattr(pipe, "transformer_2", None)
    return [pipe.transformer, *([second] if isinstance(second, CompiledTransformer) else [])]
