"""The budget search behind ``teacache-calibrate ART --policy budget``: which ``n`` calls of a
generation to compute, for :class:`teacache_trt.policies.Budget`.

The step graph: node ``i`` is call ``i`` of a cache context (0 .. N-1) and node ``N`` the end.
An edge ``i -> j`` computes call ``i`` and reuses its residual at calls ``i+1 .. j-1``; its
weight is the error that reuse adds to the generation's result, measured on calibration
generations as in LeMiCa: every call is computed except ``i+1 .. j-1`` (in every cache context
at once), and the weight is the RMS difference of the result from the uncached one, over the
calibration seeds.  A schedule of ``n`` computed calls is a path ``0 = c0 < c1 < ... < c(n-1)``
to the end with exactly ``n`` nodes; the search picks the path of least total weight (objective
``sum``, a dynamic programme over (nodes used, last node)).  By the triangle inequality the sum
bounds the path's error to first order, where segments interact through the trajectory.
``minimax`` (LeMiCa's lexicographic idea, two levels) first minimises the largest edge weight,
then the sum among the paths that reach it.

Each reuse mode (``--reuse residual,taylor``) has its own graph: the skipped calls of an edge
use that mode.  With ``taylor`` the extrapolation at an edge's calls starts from calls i-1 and i
(every call before i computed), where a schedule's starts from the computed call before i: the
slope there is a finite difference over a longer interval, so the weights approximate the
schedule's segments; a schedule for one mode is searched on that mode's weights.

Cost: one uncached generation per seed plus one per edge with a skipped call, N(N-1)/2 per seed
and reuse mode (190 at 20 steps): offline, once per model and step count.  The search itself takes
milliseconds, so every ``n`` of a step count comes from the same measured weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import TeaCacheError
from ..policies import REUSE_MODES, Schedule

OBJECTIVES = ("sum", "minimax")
MEASURE = ("RMS difference of the generation's result from the uncached one when calls i+1..j-1 of every "
           "cache context skip (with the reuse mode the schedules are for), over the calibration seeds")


def edge_count(steps: int) -> int:
    """Edges with at least one reused call: the generations a search runs per seed."""
    return steps * (steps - 1) // 2


def best_path(errors, n: int, objective: str = "sum") -> list[int]:
    """The ``n`` computed calls (sorted, call 0 first) of least total edge error.

    ``errors`` is an (N, N+1) array: ``errors[i, j]`` (i < j <= N) the weight of edge ``i -> j``;
    edges ``i -> i+1`` reuse nothing and weigh 0 whatever the array says; NaN or inf: not taken.
    """
    w = np.array(errors, dtype=np.float64)
    steps = w.shape[0]
    if w.shape != (steps, steps + 1):
        raise TeaCacheError(f"edge errors of shape {w.shape} must be (N, N+1) for N calls")
    if not 1 <= n <= steps:
        raise TeaCacheError(f"budget n={n} must be 1 to {steps} (the calls of the generation)")
    if objective not in OBJECTIVES:
        raise TeaCacheError(f"objective {objective!r} is not one of {OBJECTIVES}")
    w = np.where(np.isfinite(w), w, np.inf)
    i, j = np.indices(w.shape)
    w[j <= i] = np.inf
    w[j == i + 1] = 0.0
    if objective == "minimax":
        bound = _least_bound(w, n)
        w = np.where(w <= bound, w, np.inf)
    path = _shortest(w, n)
    if path is None:
        raise TeaCacheError(f"no schedule of {n} calls in {steps} uses only measured edges: measure every edge "
                            f"(re-run teacache-calibrate --policy budget)")
    return path


def _shortest(w: np.ndarray, n: int) -> list[int] | None:
    """Least-sum path 0 -> end through exactly n call nodes, or None."""
    steps = w.shape[0]
    cost = np.full((n, steps), np.inf)
    back = np.zeros((n, steps), dtype=np.int64)
    cost[0, 0] = 0.0
    for k in range(1, n):
        # cost[k, j] = min over i < j of cost[k-1, i] + w[i, j]
        total = cost[k - 1][:, None] + w[:, :steps]
        back[k] = np.argmin(total, axis=0)
        cost[k] = total[back[k], np.arange(steps)]
    final = cost[n - 1] + w[:, steps]
    last = int(np.argmin(final))
    if not np.isfinite(final[last]):
        return None
    path = [last]
    for k in range(n - 1, 0, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1]


def _least_bound(w: np.ndarray, n: int) -> float:
    """The least B such that a path of n nodes uses only edges of weight <= B."""
    values = np.unique(w[np.isfinite(w)])
    lo, hi = 0, len(values) - 1
    if _shortest(np.where(w <= values[hi], w, np.inf), n) is None:
        return math.inf
    while lo < hi:
        mid = (lo + hi) // 2
        if _shortest(np.where(w <= values[mid], w, np.inf), n) is None:
            lo = mid + 1
        else:
            hi = mid
    return float(values[lo])


def path_error(errors, path: Sequence[int]) -> float:
    """The total edge error of a schedule (what the ``sum`` objective minimises)."""
    w = np.asarray(errors, dtype=np.float64)
    nodes = [*path, w.shape[0]]
    return float(sum(w[a, b] for a, b in zip(nodes, nodes[1:]) if b > a + 1))


def _matrix(rows) -> np.ndarray:
    return np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


@dataclass
class BudgetSearch:
    """A measured step graph per reuse mode and the schedules searched on each."""

    steps: int
    errors: dict[str, list[list[float | None]]]  # reuse -> (steps, steps + 1); None where no edge
    contexts: list[str]
    seeds: list[int]
    objective: str = "sum"
    schedules: dict[str, dict[int, list[int]]] = field(default_factory=dict)  # reuse -> n -> steps
    seconds: float = 0.0

    def search(self, budgets: Sequence[int]) -> None:
        """Fill ``schedules`` of every measured reuse mode for each ``n`` in ``budgets``."""
        for reuse, rows in self.errors.items():
            w = _matrix(rows)
            found = self.schedules.setdefault(reuse, {})
            for n in budgets:
                found[int(n)] = best_path(w, int(n), self.objective)

    def manifest_entry(self, source: str) -> dict:
        """What ``policy_data["budget"]["searches"][str(steps)]`` records: the same schedule for
        every cache context (the edges perturb all of them together)."""
        return {
            "schedules": {reuse: {str(n): {c: list(p) for c in self.contexts} for n, p in sorted(by_n.items())}
                          for reuse, by_n in self.schedules.items()},
            "objective": self.objective, "measure": MEASURE, "source": source, "seeds": list(self.seeds),
            "errors": self.errors, "seconds": round(self.seconds, 1),
        }

    def as_json(self) -> dict:
        data = asdict(self)
        data["schedules"] = {reuse: {str(n): p for n, p in sorted(by_n.items())}
                             for reuse, by_n in self.schedules.items()}
        return data


def read_json(path: Path) -> BudgetSearch:
    """A search written by ``teacache-calibrate --policy budget --json``, checked."""
    import json

    try:
        data = json.loads(Path(path).read_bytes())
        search = BudgetSearch(int(data["steps"]), dict(data["errors"]), list(data["contexts"]), list(data["seeds"]),
                              data.get("objective", "sum"),
                              {reuse: {int(n): list(p) for n, p in by_n.items()}
                               for reuse, by_n in data["schedules"].items()},
                              float(data.get("seconds", 0.0)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise TeaCacheError(f"{path} is not a budget search ({type(exc).__name__}: {str(exc)[:200]}): write one with "
                            f"teacache-calibrate ART_DIR --policy budget --json {path}") from None
    from ..policies.budget import check_searches

    check_searches({str(search.steps): search.manifest_entry("")}, str(path))
    return search


def _result(value, what: str) -> torch.Tensor:
    out = getattr(value, "images", value)
    if not isinstance(out, torch.Tensor):
        raise TeaCacheError(f"{what} returned {type(value).__name__}, not the generation's result as a tensor: "
                            f"the budget search compares results; use a driver whose generate() returns them")
    return out.detach().to("cpu", torch.float64)


def measure(transformer, generate, seeds: Sequence[int], steps: int, objective: str = "sum",
            reuses: Sequence[str] = ("residual",), log: Callable[[str], None] = print, signal=None) -> BudgetSearch:
    """Run the uncached generations, then one per edge, seed and reuse mode; the measured graphs.

    ``signal`` (a :class:`.suggest.SignalRuns`) records the uncached generations' signal."""
    if objective not in OBJECTIVES:
        raise TeaCacheError(f"objective {objective!r} is not one of {OBJECTIVES}")
    t0 = time.perf_counter()
    every = Schedule.uniform(steps, steps)
    transformer.policy = every
    reference = {}
    if signal is not None:
        transformer.observers.append(signal)
    try:
        for s in seeds:
            if signal is not None:
                signal.new_generation(s)
            reference[s] = _result(generate(transformer, s), "the driver's generate()")
    finally:
        if signal is not None:
            transformer.observers.remove(signal)
    contexts = sorted(transformer.stats["contexts"])
    total, done = edge_count(steps) * len(reuses), 0
    log(f"[budget] {len(seeds)} uncached generation(s) done; measuring {total} edges x {len(seeds)} seed(s) "
        f"(reuse {', '.join(reuses)})")
    errors = {}
    for reuse in reuses:
        w: list[list[float | None]] = [[None] * (steps + 1) for _ in range(steps)]
        for i in range(steps):
            w[i][i + 1] = 0.0
        for i in range(steps - 1):
            for j in range(i + 2, steps + 1):
                transformer.policy = Schedule([k for k in range(steps) if not i < k < j], reuse=reuse)
                squares, count = 0.0, 0
                for s in seeds:
                    diff = _result(generate(transformer, s), "the driver's generate()") - reference[s]
                    squares += float(diff.pow(2).sum())
                    count += diff.numel()
                w[i][j] = math.sqrt(squares / max(count, 1))
                done += 1
            elapsed = time.perf_counter() - t0
            log(f"[budget] {reuse} edges from call {i}: {done}/{total} measured ({elapsed:.0f}s, about "
                f"{elapsed / done * (total - done):.0f}s left)")
        errors[reuse] = w
    transformer.policy = every
    return BudgetSearch(steps, errors, contexts, list(seeds), objective, seconds=time.perf_counter() - t0)


def run_budget_search(art_dir, generate=None, *, seeds: Sequence[int] = (0, 1), steps: int = 20,
                      budgets: Sequence[int] = (), objective: str = "sum", reuses: Sequence[str] = ("residual",),
                      backend: str = "onnxruntime", device: str = "cpu", model_dir=None, signal=None,
                      log: Callable[[str], None] = print) -> BudgetSearch:
    """Measure the step graph of the artifact at ``steps`` calls and search each budget
    (default: every n from 2 to steps - 1)."""
    from ..runtime.api import load_transformer
    from .calibrate import synthetic_driver

    budgets = sorted(set(budgets)) or list(range(2, steps))
    bad = [n for n in budgets if not 1 <= n <= steps]
    if bad:
        raise TeaCacheError(f"--budget {bad[0]} must be 1 to --steps {steps}")
    if objective not in OBJECTIVES:
        raise TeaCacheError(f"--objective {objective!r} is not one of {OBJECTIVES}")
    unknown = sorted(set(reuses) - set(REUSE_MODES))
    if unknown or not reuses:
        raise TeaCacheError(f"--reuse {unknown or list(reuses)} must name reuse modes of {sorted(REUSE_MODES)}")
    transformer = load_transformer(art_dir, backend=backend, device=device, model_dir=model_dir,
                                   policy=Schedule.uniform(steps, steps))
    generate = generate or synthetic_driver(transformer.manifest, steps)
    result = measure(transformer, generate, list(seeds), steps, objective, list(dict.fromkeys(reuses)), log, signal)
    result.search(budgets)
    return result


def write_to_manifest(art_dir, result: BudgetSearch, source: str) -> None:
    """The search into the manifest's budget data (replacing an earlier one for this step count)."""
    from .. import artifact
    from ..policies import artifact_policies

    with artifact.writing(Path(art_dir)):
        manifest = artifact.Artifact.open(art_dir).manifest
        budget = manifest.policy_data.setdefault("budget", {})
        budget.setdefault("searches", {})[str(result.steps)] = result.manifest_entry(source)
        artifact_policies(manifest)  # what the runtime would refuse is never written
        artifact.save_manifest(art_dir, manifest)


def format_report(result: BudgetSearch) -> str:
    lines = [f"budget search over {result.steps} calls ({len(result.seeds)} seed(s), contexts "
             f"{', '.join(result.contexts)}, objective {result.objective}, {result.seconds:.0f}s); error: the sum "
             f"of the measured edge errors of the path (of uniform spacing, measured the same way):"]
    for reuse, by_n in result.schedules.items():
        w = _matrix(result.errors[reuse])
        for n, path in sorted(by_n.items()):
            uniform = list(Schedule.uniform(result.steps, n).steps)
            lines.append(f"  reuse {reuse:8s} n={n:<3d} steps {path}  error {path_error(w, path):.4g} "
                         f"(uniform {path_error(w, uniform):.4g})")
    return "\n".join(lines)
