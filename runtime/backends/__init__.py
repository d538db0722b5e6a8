"""Backends: one Runner per graph, chosen by name."""
from __future__ import annotations

import torch

from ...artifact import Artifact
from ...errors import TeaCacheError
from .base import Runner

BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-rtx", "torch")


def make_runner(backend: str, artifact: Artifact, graph: str, device: torch.device,
                parts=None, stream=None) -> Runner:
    """The runner of ``graph``; ``stream``: the CUDA stream its ``infer_into`` runs on."""
    manifest = artifact.manifest
    spec = manifest.graphs[graph]
    if backend == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner

        # On a CPU the small graphs (a few small matmuls) run on the calling thread alone: waking
        # a pool for them cost more than it saved (bench model, shared 2-core machine: embed
        # 2.2 ms median with the default pool, 0.8 ms with one thread).  The blocks keep the pool.
        threads = 1 if torch.device(device).type == "cpu" and graph != "blocks" else 0
        return OnnxRuntimeRunner(graph, spec, device, artifact.graph_path(graph), threads=threads,
                                 stream=stream)
    if backend in ("tensorrt", "tensorrt-rtx"):
        from .tensorrt_runner import TensorRTRunner

        entry = manifest.engines.get(backend, {}).get(graph)
        if entry is None:
            raise TeaCacheError(
                f"{artifact.folder} has no {backend} engine for the {graph} graph (built: "
                f"{sorted(manifest.engines) or 'none'}): run `teacache-export ... --build {backend}`"
            )
        return TensorRTRunner(graph, spec, device, artifact.engine_path(backend, graph), backend, stream)
    if backend == "torch":
        from .torch_runner import TorchRunner

        return TorchRunner(graph, spec, device, parts[graph], stream)
    raise TeaCacheError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
