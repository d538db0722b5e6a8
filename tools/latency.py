"""Per-graph latencies (trtexec or the bench's own timing) and the end-to-end latency they predict.

A generation of ``N`` steps that computes ``C`` of them costs, from per-graph latencies alone,

    predicted = K * context + N * (embed + head) + C * blocks

where ``K`` is how often the context graph ran per generation (once in the bench: its inputs
stay the same; 0 for an artifact without one),
so the prediction at each threshold, set next to the wall time the bench measured, shows how
much of a skipped step is runtime overhead rather than graph work.  Per-graph latencies come
from, in order of preference:

- ``trtexec`` (``teacache-bench --trtexec``): each graph's ``<graph>.trtexec.sh`` written by the
  export is run (build at the manifest's profile, then time at opt shapes) and the median
  "GPU Compute Time" of its timing run is taken; the output is kept as ``<graph>.trtexec.log``
  in the artifact folder;
- saved trtexec output (``--from-trtexec DIR``: ``DIR/<graph>.trtexec.log``);
- the bench's own median ``infer`` time of each graph in the baseline loop (no trtexec).
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import strict_json
from ..artifact import Artifact
from ..errors import TeaCacheError
from ..files import atomic_write_bytes, write_output
from ..manifest import CONTEXT_GRAPH, GRAPH_NAMES, graph_names

LOG_SUFFIX = ".trtexec.log"
# trtexec's performance summary line; "Total GPU Compute Time: 2.9 s" (no "min =") is not it.
_GPU_COMPUTE = re.compile(r"(?<!Total )GPU Compute Time: (min = [^\n]*)")
_STAT = re.compile(r"([A-Za-z]+(?:\(\d+(?:\.\d+)?%\))?) = ([0-9.eE+-]+) ms")


@dataclass
class GraphLatency:
    graph: str
    median_ms: float
    source: str  # "trtexec", "trtexec log PATH" or "bench"
    stats_ms: dict[str, float] | None = None  # trtexec's min / max / mean / median / percentiles


def parse_trtexec_log(text: str, where: str) -> dict[str, float]:
    """The GPU Compute Time statistics (ms) of the last performance summary in trtexec's output.

    The generated scripts run trtexec twice (build, then time the saved engine at opt shapes);
    both print a summary, and the last one is the timing run's.
    """
    found = _GPU_COMPUTE.findall(text)
    if not found:
        raise TeaCacheError(
            f"{where} has no 'GPU Compute Time: min = ..., median = ...' line: it is not the output of a "
            f"trtexec timing run; run the artifact's <graph>.trtexec.sh and save its output there"
        )
    stats = {name: float(value) for name, value in _STAT.findall(found[-1])}
    if "median" not in stats:
        raise TeaCacheError(f"{where}: trtexec's GPU Compute Time line has no median: {found[-1]!r}")
    return stats


def logged_latencies(log_dir: str | Path, graphs=GRAPH_NAMES) -> dict[str, GraphLatency]:
    """``DIR/<graph>.trtexec.log`` for each of ``graphs`` (the artifact's), parsed."""
    log_dir = Path(log_dir)
    out = {}
    for graph in graphs:
        path = log_dir / f"{graph}{LOG_SUFFIX}"
        if not path.is_file():
            raise TeaCacheError(
                f"--from-trtexec {log_dir}: {path.name} is missing; save each graph's trtexec output as "
                f"{', '.join(g + LOG_SUFFIX for g in graphs)} (e.g. `sh {graph}.trtexec.sh > {path.name} 2>&1`) "
                f"or use --trtexec where trtexec is on PATH"
            )
        stats = parse_trtexec_log(path.read_text(errors="replace"), str(path))
        out[graph] = GraphLatency(graph, stats["median"], f"trtexec log {path}", stats)
    return out


def trtexec_available() -> bool:
    return shutil.which("trtexec") is not None


def run_trtexec(art_dir: str | Path, log=print) -> dict[str, GraphLatency]:
    """Run each ``<graph>.trtexec.sh`` of the artifact; keep and parse its output."""
    art_dir = Path(art_dir)
    art = Artifact.open(art_dir)
    # Beside the graphs in the content folder, checked like every file the manifest names.
    scripts = {g: art.verified(f"{g}.trtexec.sh") for g in graph_names(art.manifest.graphs)}
    out = {}
    for graph, script in scripts.items():
        log(f"trtexec: {script.name} (build at the manifest's profile, then time at opt shapes)")
        proc = subprocess.run(["sh", str(script)], capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        log_path = art_dir / f"{graph}{LOG_SUFFIX}"
        atomic_write_bytes(log_path, text.encode())
        if proc.returncode != 0:
            tail = "\n".join(text.strip().splitlines()[-5:])
            raise TeaCacheError(f"{script.name} failed with exit code {proc.returncode} (full output in "
                                f"{log_path}):\n{tail}")
        stats = parse_trtexec_log(text, str(log_path))
        out[graph] = GraphLatency(graph, stats["median"], "trtexec", stats)
    return out


def bench_latencies(result) -> dict[str, GraphLatency]:
    """The bench's own per-graph medians, from the baseline loop (embed, blocks and head run every
    step; the context graph, where there is one, once)."""
    return {g: GraphLatency(g, ms, "bench") for g, ms in result.baseline.graph_median_ms.items() if ms is not None}


# --- prediction -----------------------------------------------------------------------------
@dataclass
class LatencyRow:
    threshold: float | None  # None: a policy without a threshold (see setting)
    computed: int
    predicted_ms: float  # K * context + N * (embed + head) + computed * blocks
    measured_ms: float  # the bench's median wall of the whole loop
    predicted_speedup: float  # predicted at threshold 0 / predicted here
    measured_speedup: float  # the bench's paired median wall ratio
    ideal_speedup: float  # steps / computed
    setting: str = ""  # the threshold, or the policy in words
    context_runs: float = 0  # K: context-graph runs in the generation


def predict(result, latencies: dict[str, GraphLatency], opt_axes: dict[str, int]) -> dict[str, Any]:
    """The latency report: per-graph latencies, and per threshold predicted vs measured.

    ``opt_axes``: the profile's opt sizes, the shapes the trtexec scripts time.
    """
    n = result.steps
    e, b, h = (latencies[g].median_ms for g in GRAPH_NAMES)
    context = latencies[CONTEXT_GRAPH].median_ms if CONTEXT_GRAPH in latencies else 0.0
    k = result.baseline.graph_runs.get(CONTEXT_GRAPH, 0)
    full = k * context + n * (e + b + h)
    rows = []
    for run in [result.baseline, *result.runs]:
        c = len(run.computed_steps)
        predicted = run.graph_runs.get(CONTEXT_GRAPH, 0) * context + n * (e + h) + c * b
        rows.append(LatencyRow(
            threshold=run.threshold, computed=c, predicted_ms=predicted, measured_ms=run.wall_s * 1e3,
            predicted_speedup=full / predicted, measured_speedup=run.wall_ratio, ideal_speedup=n / c,
            setting=getattr(run, "setting", "") or f"{run.threshold:g}",
            context_runs=run.graph_runs.get(CONTEXT_GRAPH, 0)))
    note = ""
    if any(v.source != "bench" for v in latencies.values()) and dict(result.axes) != dict(opt_axes):
        note = (f"trtexec timed the profile's opt shapes {opt_axes}, the bench ran {result.axes}: "
                f"the prediction is for other shapes than the measurement")
    return {
        "art_dir": result.art_dir, "backend": result.backend, "device": result.device, "steps": n,
        "axes": result.axes, "graphs": {g: asdict(v) for g, v in latencies.items()},
        "rows": [asdict(r) for r in rows], "note": note,
    }


def format_markdown(report: dict[str, Any]) -> str:
    sources = sorted({g["source"] for g in report["graphs"].values()})
    graphs = report["graphs"]
    lines = [
        f"### Latency: {report['art_dir']} ({report['backend']} on {report['device']}, {report['steps']} steps)",
        "",
        f"Per-graph latency ({'; '.join(sources)}): "
        + ", ".join(f"{g} {graphs[g]['median_ms']:.4g} ms" for g in graph_names(graphs)),
        "",
        "| threshold | computed | predicted ms | measured ms | measured / predicted | predicted x | measured x "
        "| ideal x |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['setting']} | {r['computed']} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} "
            f"| {r['measured_ms'] / r['predicted_ms']:.2f} | {r['predicted_speedup']:.2f} "
            f"| {r['measured_speedup']:.2f} | {r['ideal_speedup']:.2f} |")
    lines += ["", "predicted = context runs x context + steps x (embed + head) + computed x blocks; x = speedup "
                  "over threshold 0 "
                  "(measured: paired median wall ratio); measured / predicted above 1 is runtime overhead "
                  "(host work, launches, syncs) on top of graph time."]
    if report["note"]:
        lines += ["", f"Note: {report['note']}."]
    return "\n".join(lines)


def plot_png(report: dict[str, Any]) -> bytes:
    """Latency and speedup against threshold, predicted and measured (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    # against the threshold; against computed steps when a policy without one is among the runs
    by_threshold = all(r["threshold"] is not None for r in rows)
    t = [r["threshold"] if by_threshold else r["computed"] for r in rows]
    xlabel = "threshold" if by_threshold else "computed steps"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(t, [r["predicted_ms"] for r in rows], "o--", label="predicted from per-graph latency")
    ax1.plot(t, [r["measured_ms"] for r in rows], "s-", label="measured")
    ax1.set(xlabel=xlabel, ylabel=f"ms per generation ({report['steps']} steps)", title="latency")
    ax2.plot(t, [r["ideal_speedup"] for r in rows], ":", color="gray", label="ideal (steps / computed)")
    ax2.plot(t, [r["predicted_speedup"] for r in rows], "o--", label="predicted")
    ax2.plot(t, [r["measured_speedup"] for r in rows], "s-", label="measured")
    ax2.set(xlabel=xlabel, ylabel="speedup over threshold 0", title="speedup")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{Path(report['art_dir']).name}: {report['backend']} on {report['device']}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(out_dir: str | Path, report: dict[str, Any], bench_table: str) -> list[Path]:
    """latency.md (the bench table + the latency table), latency.json (strict JSON), latency.png;
    each atomically, or written through where the name is a FIFO or device (``write_output``)."""
    out_dir = Path(out_dir)
    files = {
        "latency.md": f"```\n{bench_table}\n```\n\n{format_markdown(report)}\n".encode(),
        "latency.json": strict_json.dumps(report, indent=2).encode(),
        "latency.png": plot_png(report),
    }
    for name, data in files.items():
        write_output(out_dir / name, data)
    return [out_dir / name for name in files]
