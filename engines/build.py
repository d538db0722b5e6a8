"""ONNX -> engines with polygraphy's lazy loaders, one engine per graph.

    NetworkFromOnnxPath(strongly_typed) -> CreateConfig(profile, timing cache)
        -> EngineBytesFromNetwork -> atomic write to <graph>.<flavour>.<key>.<sha>.engine

The key covers everything that makes an engine valid: the graph's content hash, its
profile, the precision, the TensorRT flavour and version, and the target device.  The name
also carries the engine's own hash, so a rebuild never overwrites a file the committed
manifest names: the new engines are written beside the old, the manifest switches to them,
and only then are the old ones removed (:mod:`teacache_trt.artifact`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .. import artifact, integrity
from ..errors import TeaCacheError
from ..files import atomic_write_bytes, os_errors, regular_file
from ..integrity import sha256_json
from ..manifest import Manifest, graph_names
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
    content: Path, manifest: Manifest, flavour: str, graphs: Mapping[str, Path], *, timing_dir: Path,
    force: bool = False, rtx_targets=None, log: Callable[[str], None] = print,
) -> bool:
    """Build (or reuse) the engines of the ``graphs`` (checked paths) into ``content``.

    Records them in ``manifest`` (``engines[flavour]`` and ``files``) and returns whether
    anything changed; deletes nothing: the caller commits the manifest, then cleans up.
    """
    content = Path(content)
    trt = trt_module(flavour)
    device = target_device(flavour, rtx_targets)
    old_table = manifest.engines.get(flavour, {})
    table = {}
    names = graph_names(manifest.graphs)
    for i, graph in enumerate(names, 1):
        key = engine_key(manifest, graph, flavour, trt.__version__, device)
        old = old_table.get(graph, {})
        if not force and old.get("key") == key and _intact(content, manifest, old["file"]):
            log(f"[build {i}/{len(names)}] {old['file']} is up to date")
            table[graph] = old
            continue
        log(f"[build {i}/{len(names)}] {graph} -> {flavour} engine ...")
        t0 = time.perf_counter()
        with _timing_cache(timing_dir, flavour, device) as cache:
            data = build_engine_bytes(graphs[graph], manifest.graphs[graph].profile, flavour, cache, device)
        sha = hashlib.sha256(data).hexdigest()
        name = f"{graph}.{flavour}.{key}.{sha[:12]}.engine"
        atomic_write_bytes(content / name, data)
        seconds = time.perf_counter() - t0
        log(f"[build {i}/{len(names)}] {name} in {seconds:.1f}s ({len(data) / 1e6:.1f} MB)")
        manifest.files[name] = {"size": len(data), "sha256": sha}
        table[graph] = {"file": name, "key": key, "build_s": round(seconds, 3),
                        "trt_version": trt.__version__, "device": device}
    built = {e["file"] for e in table.values()}
    for entry in old_table.values():  # superseded: unlisted now, the file goes after the commit
        if entry["file"] not in built:
            manifest.files.pop(entry["file"], None)
    changed = table != old_table
    manifest.engines[flavour] = table
    return changed


def build_in_place(art: Path, manifest: Manifest, flavour: str, *, force: bool = False, rtx_targets=None,
                   log: Callable[[str], None] = print) -> None:
    """Engines for the committed graphs of ``art``: written beside them under new names, then
    committed by the manifest, then the superseded ones removed.  The caller holds the
    folder's writer lock (:func:`teacache_trt.artifact.writing`)."""
    committed = artifact.Artifact(art, manifest)
    graphs = {g: committed.graph_path(g) for g in graph_names(manifest.graphs)}  # inside, intact, external data too
    content = graphs["embed"].parent
    if build_engines(content, manifest, flavour, graphs, timing_dir=art, force=force,
                     rtx_targets=rtx_targets, log=log):
        artifact.commit_manifest(art, manifest, "build")


def _intact(content: Path, manifest: Manifest, name: str) -> bool:
    """A listed engine file inside ``content`` whose size and sha256 match the manifest."""
    try:
        path = regular_file(content, name, "engine")
        with os_errors(f"reading {path}"):
            integrity.verify(path, manifest.files[name], "")
    except (TeaCacheError, KeyError):
        return False
    return True


@contextlib.contextmanager
def _timing_cache(art: Path, flavour: str, device) -> Iterator[Path | None]:
    """The folder's timing cache as a private copy for one build, saved back atomically.

    Only a regular file inside the folder is read (never a link out, a device or a FIFO); an
    ahead-of-time build without a GPU measures nothing, so it gets none.
    """
    if device["gpu"] is None:
        yield None
        return
    name = f"timing.{flavour}.cache"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=art)
    os.close(fd)
    try:
        with contextlib.suppress(TeaCacheError):
            Path(tmp).write_bytes(regular_file(art, name, "timing cache").read_bytes())
        yield Path(tmp)
        if os.path.getsize(tmp):
            atomic_write_bytes(Path(art) / name, Path(tmp).read_bytes())
    finally:
        os.unlink(tmp)


def build_engine_bytes(onnx_path: Path, profile: dict, flavour: str, timing_cache: Path | None, device) -> bytes:
    p = polygraphy_trt(flavour)
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # the builder's per-layer INFO lines drown progress
    prof = p.Profile()
    for name, shapes in profile.items():
        prof.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    config_kwargs: dict[str, Any] = {"profiles": [prof]}
    if timing_cache is not None and os.path.getsize(timing_cache):
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
            network, config=config, save_timing_cache=None if timing_cache is None else str(timing_cache)
        )()
    except Exception as exc:  # polygraphy reports parser/builder failures as generic errors
        raise TeaCacheError(f"{flavour} could not build {onnx_path.name}: {exc}") from exc
    if engine is None:
        raise TeaCacheError(f"{flavour} returned no engine for {onnx_path.name}; see the builder log above")
    return bytes(memoryview(engine))
