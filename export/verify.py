"""Numerical checks at export: each ONNX graph against the PyTorch part it came from, and the
composed parts against the original diffusers model (so a wrong split fails here, not in a
render)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import TeaCacheError
from . import chunked_attention

# (atol, rtol) per precision; rtol is relative to the largest reference magnitude of a tensor.
# Precisions ONNX Runtime's CPU provider can run for the graph-vs-PyTorch check.
ORT_CPU_PRECISIONS = ("fp32", "fp16")
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "bf16": (6e-2, 6e-2)}
# An attention whose score tensor (batch x heads x queries x keys) would exceed this at a
# verified shape runs in query chunks of at most this many bytes of scores (see
# chunked_attention): ONNX Runtime's CPU provider holds the whole tensor, PyTorch's fused
# attention none, and a fixed-size model is verified at its full size (ConsisID: 121 GB).
CHUNK_SCORES_BYTES = 512 * 2**20
PLAIN_METHOD = "ONNX Runtime CPU vs the PyTorch part"


def compare(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error / max |ref|)."""
    got, ref = got.detach().double(), ref.detach().double()
    if got.shape != ref.shape:
        raise TeaCacheError(f"shape mismatch: graph gave {tuple(got.shape)}, PyTorch {tuple(ref.shape)}")
    err = (got - ref).abs().max().item() if ref.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    return err, err / scale if scale > 0 else err


def check(name: str, got: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor], precision: str) -> dict:
    """Worst error over a graph's outputs; raises when over tolerance."""
    atol, rtol = TOLERANCES[precision]
    worst = {"max_abs": 0.0, "max_rel": 0.0, "worst_output": None}
    for out, r in ref.items():
        err, rel = compare(got[out], r)
        if err > worst["max_abs"]:
            worst.update(max_abs=err, worst_output=out)
        worst["max_rel"] = max(worst["max_rel"], rel)
        scale = r.detach().double().abs().max().item() if r.numel() else 0.0
        if err > atol + rtol * scale:
            raise TeaCacheError(
                f"{name}: output {out!r} differs from PyTorch by {err:.3g} (max |ref| {scale:.3g}); "
                f"tolerance for {precision} is {atol:g} + {rtol:g}*max|ref|. The export is wrong for "
                f"this model or precision: try --precision fp32, or report the model config"
            )
    return worst


def ort_session(path: Path, graph: str | None = None):
    """A CPU session over ``path``; a failure (an allocation included) is a TeaCacheError."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise TeaCacheError(
            f"ONNX Runtime could not load the {graph or Path(path).stem} graph for verification "
            f"({type(exc).__name__}: {str(exc)[:1000]}); if it ran out of memory, export on a "
            f"machine with more RAM or pass --no-verify (the graphs are then unchecked)"
        ) from exc


def verify_graph(path: Path, graph: str, points: Sequence[Mapping[str, int]],
                 feeds: Sequence[Mapping[str, torch.Tensor]], refs: Sequence[Mapping[str, torch.Tensor]],
                 precision: str, log: Callable[[str], None] | None = None) -> list[dict]:
    """The graph at ``path`` run by ONNX Runtime on the feed of each point and checked against
    the PyTorch outputs ``refs``: one verification row's fields per point.

    Where an attention's scores would exceed ``CHUNK_SCORES_BYTES`` at a point (a fixed-size
    model verified at its full size), ONNX Runtime would hold them whole: a copy of the graph
    computes that attention in query chunks instead (the same numbers, softmax being per
    query row), and only the smallest point runs, since ONNX Runtime also holds every other
    intermediate of such a run (ConsisID's two blocks at 17,776 tokens: 16 GB at batch 2).
    The graph itself is only read.  The session is dropped on return (the block graph's
    holds the weights).
    """
    import onnx

    path = Path(path)
    # The graph's structure only: external data stays on disk, referenced by location.
    model = onnx.load(str(path), load_external_data=False)
    inputs = {v.name for v in model.graph.input}
    shapes = [{n: tuple(t.shape) for n, t in feed.items() if n in inputs} for feed in feeds]
    anywhere = chunked_attention.plan(model, shapes, CHUNK_SCORES_BYTES)
    if not anywhere:
        del model
        session = ort_session(path, graph)
        return [{"graph_verified": True, "method": PLAIN_METHOD,
                 **check(f"{graph} graph at {point}", run_ort(session, feed, graph, point), ref, precision)}
                for point, feed, ref in zip(points, feeds, refs)]
    sizes = [sum(int(np.prod(s)) for s in shape.values()) for shape in shapes]
    k = sizes.index(min(sizes))
    chunks = chunked_attention.plan(model, [shapes[k]], CHUNK_SCORES_BYTES)
    rows = sorted({c.rows for c in chunks})
    method = PLAIN_METHOD if not chunks else (
        f"{PLAIN_METHOD}, attention in query chunks of {rows[0] if len(rows) == 1 else f'{rows[0]}-{rows[-1]}'} rows")
    if log:
        others = [dict(p) for i, p in enumerate(points) if i != k]
        log(f"[verify] {graph} graph: its attention scores reach "
            f"{max(c.largest_bytes for c in anywhere) / 1e9:.3g} GB, so it runs at {dict(points[k])} only"
            + (f" (not at {', '.join(map(str, others))})" if others else "")
            + (f", in query chunks of {', '.join(map(str, rows))} rows (a verification copy; {path.name} "
               f"is unchanged)" if chunks else ""))
    if chunks:
        copy = _chunked_copy(path, model, chunks)
        del model  # before ONNX Runtime reads the copy: it may hold the weights
        try:
            session = ort_session(copy, graph)
        finally:
            copy.unlink()
    else:
        del model
        session = ort_session(path, graph)
    got = run_ort(session, feeds[k], graph, points[k])
    del session
    verified = {"graph_verified": True, "method": method,
                **check(f"{graph} graph at {points[k]}", got, refs[k], precision)}
    skipped = {"graph_verified": False,
               "method": f"not run: its attention needs query chunks, so the graph runs at the smallest "
                         f"verified shape only ({dict(points[k])})"}
    return [verified if i == k else dict(skipped) for i in range(len(points))]


def _chunked_copy(path: Path, model, chunks) -> Path:
    """``model`` (``path``'s graph) with ``chunks`` rewritten, saved beside ``path`` (so that
    its external data resolves) under a hidden name: the caller removes it once loaded, and
    a killed export's staging folder is cleaned by the next run."""
    import onnx

    chunked_attention.rewrite(model, chunks)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.chunked-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, name)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def run_ort(session, feed: Mapping[str, torch.Tensor], graph: str | None = None,
            point: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    names = [i.name for i in session.get_inputs()]
    arrays = {n: _to_numpy(feed[n]) for n in names}
    try:
        outs = session.run(None, arrays)
    except Exception as exc:
        shapes = {n: tuple(a.shape) for n, a in arrays.items()}
        raise TeaCacheError(
            f"ONNX Runtime failed running the {graph or 'exported'} graph at {point or shapes} "
            f"({type(exc).__name__}: {str(exc)[:1000]}). Verification runs at the smallest sizes "
            f"of the profile: if this is an allocation failure, lower the axis minimums "
            f"(--axis NAME=MIN:OPT:MAX) or pass --no-verify (the graphs are then unchecked)"
        ) from exc
    return {o.name: torch.from_numpy(np.asarray(v)) for o, v in zip(session.get_outputs(), outs)}


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
