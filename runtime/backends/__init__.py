"""Backends: one Runner per graph, chosen by name."""
from __future__ import annotations

import os

import torch

from ...artifact import Artifact
from ...errors import TeaCacheError
from .base import Runner

BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-rtx", "torch")


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once), as
    ONNX Runtime counts them for its default pool; the CPU count where topology is unknown."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def make_runner(backend: str, artifact: Artifact, graph: str, device: torch.device,
                parts=None, stream=None) -> Runner:
    """The runner of ``graph``; ``stream``: the CUDA stream its ``infer_into`` runs on."""
    manifest = artifact.manifest
    spec = manifest.graphs[graph]
    if backend == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner

        # On a CPU the small graphs (a few small matmuls) run on the calling thread alone: waking
        # a pool for them cost more than it saved (bench model, shared 2-core machine: embed
        # 2.2 ms median with the default pool, 0.8 ms with one thread).
        # The blocks get one thread per physical core, set explicitly: left to ONNX Runtime
        # (0) the same count comes with each worker pinned to one core, and on a machine
        # other processes share a pinned worker waits for its core while another is idle
        # (bench model, 2-core machine at load average 4-5: blocks 189 ms pinned against
        # 121 ms not, medians of three interleaved bench runs, faster in each; at load 3 with
        # one other process, equal).  Outputs are the same: the same number of threads splits
        # the work the same way.
        cpu = torch.device(device).type == "cpu"
        threads = (1 if graph != "blocks" else physical_cores()) if cpu else 0
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
