"""Backends: one Runner per graph, chosen by name."""
from __future__ import annotations

from pathlib import Path

import torch

from ...errors import TeaCacheError
from ...manifest import Manifest
from .base import Runner

BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-rtx", "torch")


def make_runner(backend: str, art_dir: Path, manifest: Manifest, graph: str, device: torch.device,
                parts=None) -> Runner:
    spec = manifest.graphs[graph]
    if backend == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(graph, spec, device, manifest.graph_path(art_dir, graph))
    if backend in ("tensorrt", "tensorrt-rtx"):
        from .tensorrt_runner import TensorRTRunner

        entry = manifest.engines.get(backend, {}).get(graph)
        if entry is None:
            raise TeaCacheError(
                f"{art_dir} has no {backend} engine for the {graph} graph (built: "
                f"{sorted(manifest.engines) or 'none'}): run `teacache-export ... --build {backend}`"
            )
        return TensorRTRunner(graph, spec, device, manifest.engine_path(art_dir, backend, graph), backend)
    if backend == "torch":
        from .torch_runner import TorchRunner

        return TorchRunner(graph, spec, device, parts[graph])
    raise TeaCacheError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
