"""Numerical checks at export: each ONNX graph against the PyTorch part it came from, and the
composed parts against the original diffusers model (so a wrong split fails here, not in a
render)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import TeaCacheError

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


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_ort(session, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = [i.name for i in session.get_inputs()]
    arrays = {n: _to_numpy(feed[n]) for n in names}
    outs = session.run(None, arrays)
    return {o.name: torch.from_numpy(np.asarray(v)) for o, v in zip(session.get_outputs(), outs)}


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
