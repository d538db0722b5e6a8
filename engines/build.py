"""ONNX -> engines with polygraphy's lazy loaders, one engine per graph.

    NetworkFromOnnxPath(strongly_typed) -> CreateConfig(profile, timing cache)
        -> EngineBytesFromNetwork -> atomic write to <graph>.<flavour>.<key>.engine

The key covers everything that makes an engine valid: the graph's content hash, its
profile, the precision, the TensorRT flavour and version, and the target device.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ..errors import TeaCacheError
from ..manifest import Manifest, atomic_write_bytes, graph_names, sha256_file, sha256_json
from .flavours import polygraphy_trt, trt_module

# TensorRT-RTX builds ahead of time without a GPU for these targets (RTX-class GPUs).
DEFAULT_RTX_TARGETS = ((8, 6), (8, 9), (12, 0))


def target_device(flavour: str, rtx_targets=None) -> dict[str, Any]:
    """What the engine is built for: the current GPU, or (TensorRT-RTX on CPU) a list of SMs."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"gpu": props.name, "sm": f"{props.major}.{props.minor}"}
    if flavour == "tensorrt":
        raise TeaCacheError(
            "--build tensorrt needs a CUDA GPU on this machine (full TensorRT builds for the "
            "GPU it runs on); use --build tensorrt-rtx to build ahead of time without one, or --build none"
        )
    targets = [tuple(t) for t in (rtx_targets or DEFAULT_RTX_TARGETS)]
    return {"gpu": None, "sm": [f"{a}.{b}" for a, b in targets]}


def engine_key(manifest: Manifest, graph: str, flavour: str, trt_version: str, device) -> str:
    spec = manifest.graphs[graph]
    return sha256_json({
        "graph": spec.sha256, "profile": spec.profile, "precision": manifest.precision,
        "flavour": flavour, "trt": trt_version, "device": device,
    })[:16]


def build_engines(
    art_dir: Path, manifest: Manifest, flavour: str, *, force: bool = False,
    rtx_targets=None, log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Build (or reuse) the engines of all three graphs; returns the manifest's engine table."""
    art_dir = Path(art_dir)
    trt = trt_module(flavour)
    device = target_device(flavour, rtx_targets)
    table = {}
    names = graph_names(manifest.graphs)
    for i, graph in enumerate(names, 1):
        key = engine_key(manifest, graph, flavour, trt.__version__, device)
        path = art_dir / f"{graph}.{flavour}.{key}.engine"
        old = manifest.engines.get(flavour, {}).get(graph, {})
        if path.is_file() and old.get("sha256") == sha256_file(path) and not force:
            log(f"[build {i}/{len(names)}] {path.name} is up to date")
            table[graph] = {**old, "file": path.name, "key": key}
            continue
        log(f"[build {i}/{len(names)}] {graph} -> {flavour} engine ...")
        t0 = time.perf_counter()
        data = build_engine_bytes(art_dir / manifest.graphs[graph].file, manifest.graphs[graph].profile,
                                  flavour, art_dir / f"timing.{flavour}.cache", device)
        atomic_write_bytes(path, data)
        seconds = time.perf_counter() - t0
        log(f"[build {i}/{len(names)}] {path.name} in {seconds:.1f}s ({len(data) / 1e6:.1f} MB)")
        table[graph] = {"file": path.name, "key": key, "sha256": sha256_file(path), "size": len(data), "build_s": round(seconds, 3),
                        "trt_version": trt.__version__, "device": device}
        if old.get("file") and old["file"] != path.name:
            (art_dir / old["file"]).unlink(missing_ok=True)  # superseded by the new key
    return table


def build_engine_bytes(onnx_path: Path, profile: dict, flavour: str, timing_cache: Path, device) -> bytes:
    p = polygraphy_trt(flavour)
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # the builder's per-layer INFO lines drown progress
    prof = p.Profile()
    for name, shapes in profile.items():
        prof.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    config_kwargs: dict[str, Any] = {"profiles": [prof]}
    # A timing cache records measured tactics; an ahead-of-time build without a GPU measures
    # nothing, so it gets none.
    use_cache = device["gpu"] is not None
    if use_cache and timing_cache.is_file():
        config_kwargs["load_timing_cache"] = str(timing_cache)
    if flavour == "tensorrt-rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        if device["gpu"] is None:
            config_kwargs["compute_capabilities"] = [tuple(int(x) for x in s.split(".")) for s in device["sm"]]
        else:
            config_kwargs["use_gpu"] = True
        config = CreateConfigRTX(**config_kwargs)
    else:
        config = p.CreateConfig(**config_kwargs)
    network = p.NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    try:
        engine = p.EngineBytesFromNetwork(
            network, config=config, save_timing_cache=str(timing_cache) if use_cache else None
        )()
    except Exception as exc:  # polygraphy reports parser/builder failures as generic errors
        raise TeaCacheError(f"{flavour} could not build {onnx_path.name}: {exc}") from exc
    if engine is None:
        raise TeaCacheError(f"{flavour} returned no engine for {onnx_path.name}; see the builder log above")
    return bytes(memoryview(engine))
