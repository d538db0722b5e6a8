"""``teacache-bench ART_DIR``: wall time of the same sampling loop with and without caching.

One process, one loaded transformer, the same inputs for every run: the baseline (TeaCache at
threshold 0, which computes every step), then the policy (``--policy``, default the manifest's)
at each threshold (``--thresholds``, for a policy that has one).  Per run it reports:

- computed / skipped steps, wall time, wall ratio (baseline wall / cached wall), ideal ratio
  (steps / computed steps) and efficiency (wall ratio / ideal ratio);
- per-graph median latency (context where the artifact has one, embed, blocks, head), timed
  around each runner's ``infer_into``, and how often each graph ran per loop (the context graph
  runs once per generation: its inputs stay the same);
- the cost of a skipped step as a fraction of a computed step, from per-step wall times;
- max |final latents - baseline final latents|.

Timing never touches the runtime's hot path: the bench wraps ``infer_into`` on its *own* runner
instances (instance attributes, not the class), and synchronises CUDA around every timed
region when the device is a GPU (device work is queued asynchronously; an unsynced timer
measures the launch, not the work).  Those syncs also serialise host and device between
graphs, so on a GPU the step walls are slightly pessimistic for both the baseline and the
cached runs alike.

On a CPU shared with other processes, use ``--repeat`` (ratios are paired per repeat) and
compare ``effic.`` with ``step eff`` (the same ratio from median step walls).  A wall ratio
outside [0.5, 1.1] x the ideal ratio (skipping a step cannot save more than the step, nor cost
half of it) is flagged unreliable, with the machine's load average: other processes took the
CPU during one side of the comparison.

``--eager`` also times upstream's way of running TeaCache, for a paired ratio at equal
schedules: the PyTorch model's own submodules run eagerly (:mod:`.eager`), every part every
step (the diffusers forward recomputes the text embedding and rotary tables per call), the
blocks on exactly the steps the compiled run computed.  Each eager loop runs right after the
compiled loop of the same setting and repeat; the ratio is the median over repeats of eager
wall / compiled wall, with its range.

Below the table, the end-to-end latency that per-graph latencies predict at each threshold,
next to the measured one (:mod:`.latency`): per-graph latencies from trtexec (``--trtexec``,
``--from-trtexec DIR``) or the bench's own timing; ``--report DIR`` writes it as markdown, JSON
and a PNG plot.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from .. import options, quiet, strict_json
from ..artifact import Artifact
from ..errors import TeaCacheError
from ..manifest import graph_names
from . import latency, policy_options

MAX_STEPS = 10_000  # loops and steps: far beyond any sampler, short of a typo's hour-long run
RELIABLE = (0.5, 1.1)  # a wall ratio outside this many times the ideal ratio is noise, not the runtime


def load_transformer(*args, **kwargs):
    """``teacache_trt.load_transformer``, imported when the bench runs (it imports torch):
    ``--help`` and option errors answer at once."""
    from ..runtime.api import load_transformer as load

    return load(*args, **kwargs)


# --- timing -----------------------------------------------------------------------------
class Clock:
    """Wall-clock timer that waits for queued device work at both ends."""

    def __init__(self, device):
        import torch

        self.cuda = torch.device(device).type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


class TimedRunner:
    """Records the wall time of every ``infer_into`` of one runner (instance-level wrap)."""

    def __init__(self, runner, clock: Clock):
        self.runner = runner
        self.clock = clock
        self.times: list[float] = []
        self._infer_into = runner.infer_into
        runner.infer_into = self  # the instance attribute shadows the class method for this runner only

    def __call__(self, feed, outputs):
        t0 = self.clock.now()
        out = self._infer_into(feed, outputs)
        self.times.append(self.clock.now() - t0)
        return out

    def unwrap(self) -> None:
        del self.runner.infer_into


# --- results ----------------------------------------------------------------------------
@dataclass
class RunResult:
    threshold: float | None  # None: a policy without a threshold
    steps: int
    computed_steps: list[int]
    skipped: int
    wall_s: float  # median over repeats
    walls_s: list[float]
    graph_median_ms: dict[str, float | None]
    computed_step_ms: float | None  # median wall of a step that ran the blocks
    skipped_step_ms: float | None  # median wall of a step that reused the residual
    max_abs_diff: float = 0.0  # final latents vs the baseline's
    wall_ratio: float = 1.0  # median over repeats of baseline wall / this wall
    ideal_ratio: float = 1.0
    efficiency: float = 1.0
    step_efficiency: float = 1.0  # efficiency predicted from the median step walls
    skip_cost: float | None = None  # skipped_step_ms / computed_step_ms
    graph_runs: dict[str, float] = field(default_factory=dict)  # median runs per loop of each graph
    eager_walls_s: list[float] = field(default_factory=list)  # --eager: the eager loop's walls, paired
    eager_ratio: float | None = None  # median over repeats of eager wall / compiled wall
    eager_ratio_range: list[float] = field(default_factory=list)  # min, max of those ratios
    eager_max_abs_diff: float | None = None  # eager final latents vs this run's
    policy: dict = field(default_factory=dict)  # {"name", "params"}: policies.make rebuilds it
    setting: str = ""  # the threshold, or the policy in words
    never_skipped: str | None = None  # a policy that could skip computed every step: why
    reliable: bool = True  # wall ratio within RELIABLE x the ideal ratio


@dataclass
class BenchResult:
    art_dir: str
    family: str
    backend: str
    device: str
    precision: str
    steps: int
    axes: dict[str, int]
    warmup: int
    repeat: int
    threads: int
    baseline: RunResult
    runs: list[RunResult] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)  # 1, 5, 15 minutes, when the timing ended
    cpus: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def unreliable(self) -> list[RunResult]:
        return [r for r in self.runs if not r.reliable]

    def load_note(self) -> str:
        load = ", ".join(f"{v:.1f}" for v in self.load_average) or "unknown"
        return f"load average {load} (1, 5, 15 min) on {self.cpus} CPUs"


# --- the bench --------------------------------------------------------------------------
def resolve_axes(manifest, overrides: Mapping[str, int] | None) -> dict[str, int]:
    """The profile's opt sizes, with ``overrides`` checked against the built profile."""
    sizes = {name: opt for name, (lo, opt, hi) in manifest.axes.items()}
    for name, value in (overrides or {}).items():
        if name not in manifest.axes:
            raise TeaCacheError(
                f"--axis {name}={value}: {manifest.family} artifacts have no axis {name!r}; "
                f"their axes are {sorted(manifest.axes)}"
            )
        lo, opt, hi = manifest.axes[name]
        if not lo <= value <= hi:
            raise TeaCacheError(
                f"--axis {name}={value} is outside the built profile [{lo}, {hi}]: pick a size in "
                f"that range, or re-export with --axis {name}={min(lo, value)}:{opt}:{max(hi, value)}"
            )
        sizes[name] = int(value)
    return sizes


def check_thresholds(thresholds: Sequence[float]) -> list[float]:
    out = []
    for t in thresholds:
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise TeaCacheError(f"threshold {t!r} must be a finite number >= 0 (0 is the baseline)")
        out.append(float(t))
    return out


def check_backend_runs(manifest, backend: str, device: str) -> None:
    """Refuse, with the ways that do run them, graphs the chosen backend cannot run here."""
    if manifest.precision == "bf16" and backend == "onnxruntime" and device == "cpu":
        raise TeaCacheError(
            "this artifact's graphs are bf16, which ONNX Runtime's CPU provider cannot run: use "
            "--backend torch (the same three parts in PyTorch; runs bf16 on the CPU), "
            "--backend tensorrt or tensorrt-rtx --device cuda, --backend onnxruntime --device cuda "
            "(onnxruntime-gpu), or re-export with --precision fp32"
        )


def run_bench(art_dir, backend: str = "onnxruntime", device: str = "cpu", steps: int = 20,
              thresholds: Sequence[float] | None = None, axes: Mapping[str, int] | None = None,
              warmup: int = 1, repeat: int = 1, threads: int = 0, seed: int = 0,
              model_dir=None, policy=None, progress: bool = False, eager: bool = False) -> BenchResult:
    """Run the sampling loop uncached (TeaCache at threshold 0) and with ``policy`` (a policy,
    a name or a spec; None: the manifest's default) at each threshold; see the module doc.
    ``progress``: a bar per setting on stderr (steps run of its loops); ``eager``: pair every
    loop with upstream's eager PyTorch TeaCache at the same computed steps."""
    if not 1 <= steps <= MAX_STEPS:
        raise TeaCacheError(f"--steps {steps}: the loop needs 1 to {MAX_STEPS} steps")
    if not (0 <= warmup <= MAX_STEPS and 1 <= repeat <= MAX_STEPS):
        raise TeaCacheError(f"--warmup {warmup} / --repeat {repeat}: need warmup >= 0 and repeat >= 1")
    cpus = os.cpu_count() or 1
    if not 0 <= threads <= cpus:
        raise TeaCacheError(f"--threads {threads}: need 0 (the backend's default) to {cpus} (this machine's CPUs)")
    import torch

    from ..dtypes import PRECISIONS
    from ..families import get_family
    from .sampling import check_sampling_inputs

    manifest = Artifact.open(art_dir).manifest
    runs_of = _policies_to_run(manifest, policy, thresholds)
    sizes = resolve_axes(manifest, axes)
    family = get_family(manifest.family)
    dtype = PRECISIONS[manifest.precision]
    check_sampling_inputs(manifest)
    check_backend_runs(manifest, backend, device)
    inputs = family.example_inputs(manifest.config, sizes, dtype, seed=seed)
    if threads and backend == "torch":
        torch.set_num_threads(threads)
    transformer = load_transformer(art_dir, backend=backend, threshold=0, device=device, model_dir=model_dir)
    uncached = transformer.policy
    runs_of = [p for p in runs_of if p != uncached]  # the baseline, always run
    for p in runs_of:
        transformer.policy = p  # every policy checked against the artifact before the first loop
    if threads:
        _set_ort_threads(transformer, threads)
    clock = Clock(transformer.device)
    timed = {g: TimedRunner(transformer.runners[g], clock) for g in graph_names(manifest.graphs)}
    loop = _Loop(transformer, clock, timed, inputs, family.timestep_scale, steps)
    eager_loop = _eager_loop(art_dir, model_dir, transformer, clock, inputs, family, steps) if eager else None
    levels = [uncached, *runs_of]
    bars = _bars(levels, steps, warmup, repeat, progress)
    try:
        for _ in range(warmup):
            loop.run(uncached, bars[0])
        records: list[list[_Record]] = [[] for _ in levels]
        eager_records: list[list[Any]] = [[] for _ in levels]
        # Interleave the runs within each repeat so load drift on a shared machine hits all alike.
        for _ in range(repeat):
            for k, p in enumerate(levels):
                records[k].append(loop.run(p, bars[k]))
                if eager_loop is not None:
                    eager_records[k].append(eager_loop.run(records[k][-1].computed_steps))
    finally:
        for bar in bars:
            bar.close()
        for tr in timed.values():
            tr.unwrap()
    baseline = _summarise(uncached, steps, records[0], None, None)
    final = records[0][0].final
    runs = [_summarise(p, steps, r, baseline, final) for p, r in zip(runs_of, records[1:])]
    if eager_loop is not None:
        for run, compiled, paired in zip([baseline, *runs], records, eager_records):
            _add_eager(run, compiled, paired)
    return BenchResult(
        art_dir=str(art_dir), family=manifest.family, backend=backend, device=str(transformer.device),
        precision=manifest.precision, steps=steps, axes=sizes, warmup=warmup, repeat=repeat,
        threads=threads, baseline=baseline, runs=runs, load_average=_load_average(), cpus=cpus,
    )


def _eager_loop(art_dir, model_dir, transformer, clock, inputs, family, steps):
    """The eager loop of ``--eager``, on the artifact's PyTorch model (``model_dir`` or the
    manifest's source, checked to be the exported model) on the transformer's device."""
    from .eager import EagerLoop

    reference = load_transformer(art_dir, backend="torch", device=transformer.device, model_dir=model_dir)
    parts = {g: reference.runners[g].part for g in reference.runners}
    return EagerLoop(parts, family, clock, inputs, steps)


def _add_eager(run: RunResult, compiled: list[_Record], paired: list) -> None:
    """Pair each compiled loop with the eager loop that ran right after it."""
    ratios = [e.wall / c.wall for c, e in zip(compiled, paired)]
    run.eager_walls_s = [e.wall for e in paired]
    run.eager_ratio = statistics.median(ratios)
    run.eager_ratio_range = [min(ratios), max(ratios)]
    run.eager_max_abs_diff = float((paired[0].final - compiled[0].final).abs().max())


def _load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not every system reports one
        return []


def _bars(levels, steps: int, warmup: int, repeat: int, enabled: bool) -> list:
    """One bar per setting (the baseline's counts its warm-up loops), steps as the unit."""
    from tqdm import tqdm

    names = ["baseline", *(_setting_name(p) for p in levels[1:])]
    width = max(len(n) for n in names)
    return [tqdm(total=(repeat + (warmup if k == 0 else 0)) * steps, desc=name.rjust(width), unit="step",
                 position=k, leave=True, file=sys.stderr, disable=not enabled, dynamic_ncols=True, mininterval=0.5)
            for k, name in enumerate(names)]


def _setting_name(policy) -> str:
    threshold = getattr(policy, "threshold", None)
    return f"{policy.name} {threshold:g}" if threshold is not None else policy.describe()


def _policies_to_run(manifest, policy, thresholds: Sequence[float] | None) -> list:
    """The policies to time: ``policy`` (default: the manifest's) at each threshold given."""
    from .. import policies

    artifact = policies.artifact_policies(manifest)
    given = policies.make(artifact.name, **artifact.params) if policy is None else policies.from_spec(policy)
    if thresholds is None:
        runs = [given]
    else:
        thresholds = check_thresholds(thresholds)
        if not given.has_threshold:
            raise TeaCacheError(f"--thresholds: the policy {given!r} has no threshold; leave --thresholds out")
        runs = [given.replace(threshold=t) for t in dict.fromkeys(thresholds) if t > 0]
    return [p.bind(artifact) for p in runs]  # settings left to the artifact filled: what the table shows


def _set_ort_threads(transformer, threads: int) -> None:
    """Reload the bench's own ONNX Runtime sessions with ``threads`` intra-op threads."""
    from ..runtime.backends.onnxruntime_runner import OnnxRuntimeRunner

    for runner in transformer.runners.values():
        if isinstance(runner, OnnxRuntimeRunner):
            runner.deactivate()
            runner.threads = threads
            runner.activate()


@dataclass
class _Record:
    """One sampling loop at one threshold."""

    wall: float
    step_walls: list[float]
    step_computed: list[bool]
    graph_times: dict[str, list[float]]
    computed_steps: list[int]
    skipped_steps: list[int]
    final: Any  # torch.Tensor
    never_skipped: str | None = None


class _Loop:
    """An N-step Euler sampling loop over the compiled transformer."""

    def __init__(self, transformer, clock: Clock, timed: dict[str, TimedRunner], inputs, scale, steps):
        self.transformer = transformer
        self.clock = clock
        self.timed = timed
        self.inputs = inputs
        self.steps = steps
        self.timesteps = scale.timesteps(steps)
        self.dts = scale.step_sizes(steps)

    def run(self, policy, bar=None) -> _Record:
        import torch

        from .sampling import LATENT_INPUT, TIMESTEP_INPUT

        tr, clock = self.transformer, self.clock
        tr.policy = policy
        tr.reset(self.steps)
        kwargs = {k: v.to(tr.device, copy=True) for k, v in self.inputs.items()}
        template = kwargs[TIMESTEP_INPUT]
        latents = kwargs[LATENT_INPUT]
        marks = {g: len(t.times) for g, t in self.timed.items()}
        step_walls, step_computed = [], []
        start = clock.now()
        for i in range(self.steps):
            kwargs[TIMESTEP_INPUT] = torch.full_like(template, self.timesteps[i])
            kwargs[LATENT_INPUT] = latents
            blocks_before = len(self.timed["blocks"].times)
            t0 = clock.now()
            out = tr(return_dict=False, **kwargs)[0]
            step_walls.append(clock.now() - t0)
            step_computed.append(len(self.timed["blocks"].times) > blocks_before)
            if out.shape != latents.shape:
                raise TeaCacheError(
                    f"the model output has shape {tuple(out.shape)} but {LATENT_INPUT} has "
                    f"{tuple(latents.shape)}: the bench's Euler sampler needs them equal"
                )
            latents = latents + self.dts[i] * out.to(latents.dtype)
            if bar is not None:
                bar.update(1)
        wall = clock.now() - start
        stats = tr.stats
        return _Record(
            wall=wall, step_walls=step_walls, step_computed=step_computed,
            graph_times={g: t.times[marks[g]:] for g, t in self.timed.items()},
            computed_steps=list(stats["computed_steps"]), skipped_steps=list(stats["skipped_steps"]),
            final=latents.float().cpu(), never_skipped=stats.get("never_skipped"),
        )


def _median_ms(values: list[float]) -> float | None:
    return statistics.median(values) * 1e3 if values else None


def _summarise(policy, steps: int, records: list[_Record], baseline: RunResult | None,
               baseline_final=None) -> RunResult:
    first = records[0]
    threshold = getattr(policy, "threshold", None)
    setting = f"{threshold:g}" if threshold is not None else policy.describe()
    for r in records[1:]:
        if r.computed_steps != first.computed_steps:
            # Same inputs, same graphs: a different schedule means nondeterminism worth knowing.
            raise TeaCacheError(
                f"{policy.describe()}: computed steps differ between repeats "
                f"({first.computed_steps} vs {r.computed_steps}); the backend is not deterministic"
            )
    walls = [r.wall for r in records]
    computed_walls = [w for r in records for w, c in zip(r.step_walls, r.step_computed) if c]
    skipped_walls = [w for r in records for w, c in zip(r.step_walls, r.step_computed) if not c]
    graph = {g: _median_ms([t for r in records for t in r.graph_times[g]]) for g in first.graph_times}
    n_computed = len(first.computed_steps)
    res = RunResult(
        threshold=threshold, steps=steps, computed_steps=first.computed_steps,
        skipped=len(first.skipped_steps), wall_s=statistics.median(walls), walls_s=walls,
        graph_median_ms=graph, computed_step_ms=_median_ms(computed_walls),
        skipped_step_ms=_median_ms(skipped_walls), policy=policy.spec, setting=setting,
        never_skipped=first.never_skipped,
        graph_runs={g: statistics.median(len(r.graph_times[g]) for r in records) for g in first.graph_times},
    )
    res.ideal_ratio = steps / n_computed
    if baseline is not None:
        # Paired per repeat (the loops of one repeat ran back to back), then the median: a
        # load burst on a shared machine then moves one pair, not every ratio.
        res.wall_ratio = statistics.median(b / w for b, w in zip(baseline.walls_s, walls))
        res.efficiency = res.wall_ratio / res.ideal_ratio
        res.reliable = RELIABLE[0] <= res.efficiency <= RELIABLE[1]
        # The same ratio predicted from median step walls: steadier under bursty load, and
        # where it differs from efficiency, the difference is load, not the runtime.
        c = res.computed_step_ms or 0.0
        predicted = len(first.computed_steps) * c + res.skipped * (res.skipped_step_ms or 0.0)
        res.step_efficiency = steps * baseline.computed_step_ms / predicted / res.ideal_ratio
        res.max_abs_diff = float((first.final - baseline_final).abs().max())
        # The computed-step denominator comes from the baseline: every one of its steps does
        # the same work, so its median is the steadiest estimate of a full step.
        if res.skipped_step_ms is not None and baseline.computed_step_ms:
            res.skip_cost = res.skipped_step_ms / baseline.computed_step_ms
    return res


# --- output -----------------------------------------------------------------------------
def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(result: BenchResult) -> str:
    """The human-readable report: one row per threshold, baseline first."""
    r = result
    axes = " ".join(f"{k}={v}" for k, v in r.axes.items())
    lines = [
        f"teacache-bench {r.art_dir}: {r.family} {r.precision}, backend {r.backend} on {r.device}, "
        f"{r.steps} steps, {axes}, warmup {r.warmup}, repeat {r.repeat}"
        + (f", threads {r.threads}" if r.threads else "") + f"; {r.load_note()}",
        "",
        f"{'threshold':>9} {'computed':>8} {'skipped':>7} {'wall s':>8} {'wall x':>7} {'ideal x':>7} "
        f"{'effic.':>6} {'step eff':>8} {'context ms':>10} {'embed ms':>8} {'blocks ms':>9} {'head ms':>7} "
        f"{'step ms':>7} {'skip ms':>7} {'skip cost':>9} {'max |diff|':>10}",
    ]
    for run in [r.baseline, *r.runs]:
        g = run.graph_median_ms
        lines.append(
            f"{run.setting:>9} {len(run.computed_steps):>8d} {run.skipped:>7d} {run.wall_s:>8.3f} "
            f"{run.wall_ratio:>6.2f}{' ' if run.reliable else '!'} {run.ideal_ratio:>7.2f} {run.efficiency:>6.2f} "
            f"{run.step_efficiency:>8.2f} "
            f"{_fmt(g.get('context')):>10} {_fmt(g['embed']):>8} {_fmt(g['blocks']):>9} {_fmt(g['head']):>7} "
            f"{_fmt(run.computed_step_ms):>7} {_fmt(run.skipped_step_ms):>7} "
            f"{_fmt(None if run.skip_cost is None else 100 * run.skip_cost, '.1f') + ('%' if run.skip_cost is not None else ''):>9} "
            f"{run.max_abs_diff:>10.3g}"
        )
    lines.append("")
    for run in r.runs:
        what = f"threshold {run.setting}" if run.threshold is not None else run.setting
        lines.append(f"{what}: computed steps {run.computed_steps}")
    if any(run.eager_ratio is not None for run in [r.baseline, *r.runs]):
        lines += ["", "eager PyTorch TeaCache (upstream's way: every part every step, the same computed steps), "
                      "paired with the compiled loop of each repeat:"]
        for run in [r.baseline, *r.runs]:
            low, high = run.eager_ratio_range
            lines.append(f"  {run.setting:>9}: eager {statistics.median(run.eager_walls_s):.3f} s, compiled "
                         f"{run.wall_s:.3f} s: compiled is {run.eager_ratio:.2f}x faster ({low:.2f}-{high:.2f} over "
                         f"{len(run.eager_walls_s)} repeats); max |diff| of the final latents {run.eager_max_abs_diff:.3g}")
    if r.unreliable:
        lines.append(
            f"! unreliable: wall x is outside [{RELIABLE[0]:g}, {RELIABLE[1]:g}] x ideal x for "
            f"{', '.join(run.setting for run in r.unreliable)} ({r.load_note()}): other work took the CPU during "
            f"the timing; re-run with --repeat 3 or more on a quieter machine, and read step eff")
    lines.append(
        "wall x = median over repeats of baseline wall / cached wall; ideal x = steps / computed steps; "
        "effic. = wall x / ideal x; step eff = the same predicted from median step walls; "
        "skip cost = median skipped-step wall / median baseline step wall; graph ms = median of each runner's infer "
        "(the context graph runs once per loop)"
    )
    return "\n".join(lines)


# --- CLI --------------------------------------------------------------------------------
def _parse_axis(text: str) -> tuple[str, int]:
    name, sep, size = text.partition("=")
    try:
        if not sep or int(size) < 1:
            raise ValueError
        return name, int(size)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--axis {text!r} is not NAME=SIZE (a positive integer size), e.g. img_seq=1024") from None


def build_parser() -> argparse.ArgumentParser:
    p = options.Parser(
        prog="teacache-bench",
        description="Time an N-step sampling loop over exported graphs with and without TeaCache "
                    "(threshold 0 = baseline), in one process, on the same inputs.",
    )
    p.add_argument("art_dir", help="artifact folder written by teacache-export")
    p.add_argument("--backend", default="onnxruntime", choices=options.BACKEND_NAMES, help="default: onnxruntime")
    p.add_argument("--device", default="cpu", type=options.device, help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--model-dir", help="backend torch: the exported model's folder (default: the manifest's source)")
    p.add_argument("--steps", type=options.integer(1, MAX_STEPS), default=20, help="sampling steps (default 20)")
    p.add_argument("--thresholds", type=options.thresholds,
                   help="comma-separated thresholds of the policy to compare with the baseline (default: the "
                        "policy's own)")
    policy_options.add_arguments(p)
    p.add_argument("--axis", type=_parse_axis, action="append", default=[],
                   help="input size of an axis, NAME=SIZE (repeatable; default: the profile's opt sizes)")
    p.add_argument("--warmup", type=options.integer(0, MAX_STEPS), default=1,
                   help="untimed baseline loops first (default 1)")
    p.add_argument("--repeat", type=options.integer(1, MAX_STEPS), default=1,
                   help="timed loops per threshold; walls are medians (default 1)")
    p.add_argument("--threads", type=options.threads, default=0,
                   help="intra-op threads of ONNX Runtime (torch backend: torch threads); 0 = default (default 0)")
    p.add_argument("--seed", type=options.integer(0, 2**63 - 1), default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--eager", action="store_true",
                   help="also time upstream's eager PyTorch TeaCache at the same computed steps (the model from "
                        "--model-dir or the manifest's source), paired per repeat with the compiled loop")
    p.add_argument("--json", action="store_true",
                   help="print a JSON dict instead of the table (strict JSON: a non-finite value is null, with a note)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--trtexec", action="store_true",
                        help="per-graph latencies from running each graph's <graph>.trtexec.sh (trtexec on PATH; "
                             "its output is kept as <graph>.trtexec.log); without trtexec, the bench's own timing")
    source.add_argument("--from-trtexec", metavar="DIR",
                        help="per-graph latencies from saved trtexec output, DIR/<graph>.trtexec.log")
    p.add_argument("--report", metavar="DIR", type=options.output_folder,
                   help="write latency.md, latency.json and latency.png (predicted vs measured latency and "
                        "speedup against threshold) to DIR")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet.install()

    def body() -> int:
        manifest = Artifact.open(args.art_dir).manifest
        policy = policy_options.from_args(args)  # checked before any graph runs
        if policy is not None or args.thresholds is not None:
            _policies_to_run(manifest, policy, args.thresholds)
        graph_latency = None
        if args.from_trtexec:  # read before the bench runs: a missing log fails in seconds, not minutes
            graph_latency = latency.logged_latencies(args.from_trtexec, graph_names(manifest.graphs))
        elif args.trtexec:
            if latency.trtexec_available():
                graph_latency = latency.run_trtexec(args.art_dir, log=lambda m: print(m, file=sys.stderr))
            else:
                print("teacache-bench: trtexec is not on PATH; per-graph latencies come from the bench's own "
                      "timing", file=sys.stderr)
        result = run_bench(args.art_dir, backend=args.backend, device=args.device, steps=args.steps,
                           thresholds=args.thresholds, axes=dict(args.axis), warmup=args.warmup,
                           repeat=args.repeat, threads=args.threads, seed=args.seed, model_dir=args.model_dir,
                           policy=policy, progress=not args.no_progress, eager=args.eager)
        for run in result.runs:
            if run.never_skipped:
                print(f"teacache-bench: {run.never_skipped}", file=sys.stderr)
        if result.unreliable:
            print(f"teacache-bench: wall ratios of {', '.join(r.setting for r in result.unreliable)} are outside "
                  f"[{RELIABLE[0]:g}, {RELIABLE[1]:g}] x the ideal ratio, so unreliable ({result.load_note()})",
                  file=sys.stderr)
        opt = {name: opt for name, (lo, opt, hi) in manifest.axes.items()}
        report = latency.predict(result, graph_latency or latency.bench_latencies(result), opt)
        table = format_table(result)
        if args.report:
            for path in latency.write_report(args.report, report, table):
                print(f"wrote {path}", file=sys.stderr)
        if args.json:
            options.emit(strict_json.dumps({**result.to_dict(), "latency": report}, indent=2), "the JSON")
        else:
            options.emit(f"{table}\n\n{latency.format_markdown(report)}", "the table")
        return 0

    return options.run("teacache-bench", body)


if __name__ == "__main__":
    sys.exit(main())
