"""Artifacts on first use: the model exported into a cache folder named by its content hash.

The folder's key covers the model's weights and config (their hashes), the export profile the
driver asks for and the engine flavour the backend needs; ``export_model`` then reuses the
folder whenever it is up to date, so only the first render of a model pays for the export.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ...families import find_model_dir
from ...manifest import sha256_json

# Engines the backend runs; the ONNX graphs alone serve onnxruntime and torch.
BUILD_FOR_BACKEND = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt-rtx"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "teacache-trt" / "artifacts"


def ensure_artifacts(driver, model_dir: Path, *, batch_size: int, backend: str, cache_dir: Path,
                     log: Callable[[str], None] = print) -> Path:
    """The artifact folder for ``model_dir`` under ``cache_dir``, exported now if needed."""
    from ...export.exporter import export_model, weights_hash_of_dir

    plan = driver.export_plan(Path(model_dir), batch_size)
    src = find_model_dir(plan.transformer_dir)
    build = BUILD_FOR_BACKEND.get(backend, "none")
    key = sha256_json({"driver": driver.name, "model": weights_hash_of_dir(src),
                       "axes": {k: list(v) for k, v in sorted(plan.axes.items())}, "build": build})
    art = Path(cache_dir) / f"{driver.name}-{key[:16]}"
    export_model(src, art, axes=plan.axes, build=build, log=log)
    if plan.policy_data:
        add_policy_data(art, plan.policy_data, log)
    return art


def add_policy_data(art: Path, data, log: Callable[[str], None] = print) -> None:
    """Calibration results the driver ships with its model (``ExportPlan.policy_data``) into the
    artifact's manifest, where they differ from what it records (checked as the runtime checks them)."""
    import json

    from ... import artifact
    from ...manifest import load_manifest, save_manifest
    from ...policies import artifact_policies

    data = json.loads(json.dumps(dict(data)))
    if all(load_manifest(art).policy_data.get(name) == entry for name, entry in data.items()):
        return
    with artifact.writing(art):
        manifest = load_manifest(art)
        manifest.policy_data.update(data)
        artifact_policies(manifest, str(art / "manifest.json"))  # never write what a load would refuse
        save_manifest(art, manifest)
    log(f"[export] {art}: the model's shipped {', '.join(sorted(data))} data written into its manifest")
