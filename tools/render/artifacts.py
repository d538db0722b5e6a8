"""Artifacts on first use: the model exported into a cache folder named by its content hash.

The folder's key covers the model's weights and config (their hashes), the export profile the
driver asks for and the engine flavour the backend needs; ``export_model`` then reuses the
folder whenever it is up to date, so only the first render of a model pays for the export.

- Processes that need the same folder take turns (an ``flock`` on ``.<folder>.lock`` beside
  it): a second render, eval or bench waits for the first one's export and then reuses it,
  whatever its ``--out``.
- An export that fails on first use leaves no folder behind (an empty one would look like a
  cache entry); a folder that held an artifact before is left as the export left it.
- A driver's plan may carry the TeaCache coefficients its model ships with (the bundled digits
  model: its calibration): they become the artifact's, the variant's own staying selectable
  (``--coefficients upstream``) and in the coefficients' history.  Likewise other policies'
  data it ships (the bundled video model: its MagCache ratios) replaces the family's.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable

from ...errors import TeaCacheError
from ...files import os_errors

# Engines the backend runs; the ONNX graphs alone serve onnxruntime and torch.
BUILD_FOR_BACKEND = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt-rtx"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "teacache-trt" / "artifacts"


def ensure_artifacts(driver, model_dir: Path, *, batch_size: int, backend: str, cache_dir: Path,
                     log: Callable[[str], None] = print) -> Path:
    """The artifact folder for ``model_dir`` under ``cache_dir``, exported now if needed."""
    from ...export.exporter import export_model, weights_hash_of_dir
    from ...families import find_model_dir
    from ...manifest import MANIFEST_NAME, sha256_json

    plan = driver.export_plan(Path(model_dir), batch_size)
    src = find_model_dir(plan.transformer_dir)
    build = BUILD_FOR_BACKEND.get(backend, "none")
    key = sha256_json({"driver": driver.name, "model": weights_hash_of_dir(src),
                       "axes": {k: list(v) for k, v in sorted(plan.axes.items())}, "build": build})
    art = Path(cache_dir) / f"{driver.name}-{key[:16]}"
    coefficients = list(plan.coefficients) if plan.coefficients is not None else None
    with _turn(art, log):
        had_artifact = (art / MANIFEST_NAME).is_file()
        try:
            export_model(src, art, axes=plan.axes, build=build, coefficients=coefficients, log=log)
            if coefficients is not None and plan.coefficients_source:
                _name_source(art, coefficients, plan.coefficients_source)
            if plan.policy_data:
                _ship_policy_data(art, plan.policy_data)
        except BaseException:
            if not had_artifact and not (art / MANIFEST_NAME).is_file():
                shutil.rmtree(art, ignore_errors=True)  # never an empty cache folder
            raise
    return art


@contextlib.contextmanager
def _turn(art: Path, log: Callable[[str], None]):
    """Wait until no other process is exporting into ``art`` (say so first), then hold it."""
    lock = art.parent / f".{art.name}.lock"
    with os_errors(f"using the artifact cache {art.parent}"):
        art.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[export] another process is exporting the model into {art} (its first use): waiting for it, "
                f"then using its export")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _name_source(art: Path, coefficients: list[float], source: str) -> None:
    """Record where the plan's coefficients come from (the export calls them its own option's)."""
    from ... import artifact
    from ...manifest import load_manifest, save_manifest

    manifest = load_manifest(art)
    teacache = manifest.policy_data.get("teacache", {})
    if teacache.get("coefficients") != coefficients or teacache.get("source") == source:
        return
    with artifact.writing(art):
        manifest = load_manifest(art)
        manifest.policy_data["teacache"]["source"] = source
        save_manifest(art, manifest)


def _ship_policy_data(art: Path, data) -> None:
    """Write the plan's policy data into the manifest where it differs, checked as the runtime
    checks it (data it would refuse is never written)."""
    from ... import artifact
    from ...manifest import load_manifest, save_manifest
    from ...policies import artifact_policies

    wanted = {name: dict(entry) for name, entry in data.items()}
    if all(load_manifest(art).policy_data.get(name) == entry for name, entry in wanted.items()):
        return
    with artifact.writing(art):
        manifest = load_manifest(art)
        manifest.policy_data.update(wanted)
        artifact_policies(manifest)
        save_manifest(art, manifest)


def check_model_matches(manifest, art_dir: Path, driver, model_dir: Path) -> None:
    """``--artifacts`` exported from the transformer of ``--model``: same weights, same config
    (the manifest's weights hash), else the render would draw with other weights silently."""
    from ...export.exporter import weights_hash_of_dir
    from ...families import find_model_dir

    src = find_model_dir(driver.export_plan(Path(model_dir), 1).transformer_dir)
    if manifest.weights_hash != weights_hash_of_dir(src):
        raise TeaCacheError(
            f"--artifacts {art_dir} was exported from {manifest.source}, whose weights differ from those of "
            f"--model {model_dir} ({src}): give the artifacts of this model (teacache-export {src} --out DIR), "
            f"or leave --artifacts out to export it on first use"
        )
