"""Numerical checks at export: each ONNX graph against the PyTorch part it came from, and the
composed parts against the original diffusers model (so a wrong split fails here, not in a
render)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..dtypes import precision_dtype
from ..errors import TeaCacheError
from ..families import Family, Part
from ..manifest import Manifest, graph_names
from ..shapes import propagate

# (atol, rtol) per precision; rtol is relative to the largest reference magnitude of a tensor.
# Precisions ONNX Runtime's CPU provider can run for the graph-vs-PyTorch check.
ORT_CPU_PRECISIONS = ("fp32", "fp16")
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "bf16": (6e-2, 6e-2)}


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


def run_part(name: str, part: Part, pool: Mapping[str, torch.Tensor], point) -> dict[str, torch.Tensor]:
    """One eager PyTorch run of a part; a failure names the graph and the sizes."""
    try:
        with torch.no_grad():
            return part.run(pool)
    except Exception as exc:
        raise TeaCacheError(
            f"the PyTorch {name} part failed at {point}: {type(exc).__name__}: {str(exc)[:1000]}. "
            f"The export runs each part at the smallest sizes of the profile: if this is an "
            f"allocation failure, lower the axis minimums (--axis NAME=MIN:OPT:MAX)"
        ) from exc


@dataclass(frozen=True)
class Verification:
    """What an export checks its graphs against: the model, the parts split from it, and the
    config and precision they were exported at."""

    family: type[Family]
    model: torch.nn.Module
    parts: Mapping[str, Part]
    config: Mapping[str, Any]
    precision: str

    def run(self, manifest: Manifest, folder: Path, points, log: Callable[[str], None]) -> None:
        """Each graph (in ``folder``) against its PyTorch part at every point, and the composed
        parts against the model's own forward; the rows go into ``manifest``.  One ONNX Runtime
        session per graph, dropped before the next graph's (the block graph holds the weights)."""
        precision, class_name = self.precision, self.family.class_name
        runs = []
        for k, point in enumerate(points):
            runs.append(self.reference(manifest, point, seed=k + 1))
            log(f"[verify {k + 1}/{len(points)}] PyTorch parts composed vs {class_name}.forward at "
                f"{point}: max abs {runs[-1][2]:.3g}")
        on_cpu = precision in ORT_CPU_PRECISIONS
        if not on_cpu:
            log(f"[verify] the {precision} graphs were not run: ONNX Runtime's CPU provider has no "
                f"{precision} kernels (verified: the PyTorch split against the model, above); "
                f"TensorRT or ONNX Runtime on CUDA runs them")
        for name in graph_names(manifest.graphs):
            graph = manifest.graphs[name]
            rows = [{"axes": dict(point)} for point in points]
            if on_cpu:
                t0 = time.perf_counter()
                session = ort_session(folder / graph.file, name)
                for row, point, (feeds, refs, _) in zip(rows, points, runs):
                    got = run_ort(session, feeds, name, point)
                    row.update(graph_verified=True, method="ONNX Runtime CPU vs the PyTorch part",
                               **check(f"{name} graph at {point}", got, refs[name], precision))
                del session
                log(f"[verify] {name} graph vs PyTorch at {len(points)} points: max abs "
                    f"{max(r['max_abs'] for r in rows):.3g} ({time.perf_counter() - t0:.1f}s)")
            else:
                for row in rows:
                    row.update(graph_verified=False,
                               method=f"not run: ONNX Runtime's CPU provider has no {precision} kernels")
            if name == "head":
                for row, (_, _, split) in zip(rows, runs):
                    row["split_vs_model_max_abs"] = split
            graph.verification = rows

    def reference(self, manifest: Manifest, point: Mapping[str, int], seed: int):
        """The PyTorch side at ``point``: every part's inputs (one pool), each part's outputs, and
        the max abs error of the composed parts against the model's own forward.  Output shapes
        are checked against the manifest's shape expressions on the way."""
        fam, dtype = self.family, precision_dtype(self.precision)
        feed = fam.example_inputs(self.config, point, dtype, seed=seed)
        names = graph_names(manifest.graphs)
        shapes = propagate([manifest.graphs[g] for g in names], {n: t.shape for n, t in feed.items()})
        pool = dict(feed)
        g = torch.Generator().manual_seed(seed)
        pool["prev_signal"] = torch.randn(shapes["prev_signal"], generator=g).to(dtype)
        refs = {}
        for name in names:
            refs[name] = run_part(name, self.parts[name], pool, point)
            for o in manifest.graphs[name].output_names:
                if tuple(refs[name][o].shape) != shapes[o]:
                    raise TeaCacheError(
                        f"{name}: output {o!r} has shape {tuple(refs[name][o].shape)} but the manifest's "
                        f"shape expressions give {shapes[o]}: the export's dynamic dims are wrong"
                    )
            pool.update(refs[name])
        # The split must reproduce the model: composed PyTorch parts against model.forward.
        try:
            with torch.no_grad():
                full = fam.call_model(self.model, fam.kwargs_from_feed(feed))
        except Exception as exc:
            raise TeaCacheError(
                f"{fam.class_name}.forward failed at {point}: {type(exc).__name__}: {str(exc)[:1000]}"
            ) from exc
        split = check(f"split vs {fam.class_name}.forward at {point}", {"output": pool["output"]},
                      {"output": full}, self.precision)
        return pool, refs, split["max_abs"]
