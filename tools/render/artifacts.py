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
  (``--coefficients upstream``) and in the coefficients' history.  Its other shipped
  calibrations (``ExportPlan.policy_data``: a budget search, MagCache ratios) go into the
  manifest's policy data.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ...errors import TeaCacheError
from ...files import os_errors

# Engines the backend runs; the ONNX graphs alone serve onnxruntime and torch.
BUILD_FOR_BACKEND = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt-rtx"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "teacache-trt" / "artifacts"


def ensure_artifacts(driver, model_dir: Path, *, batch_size: int, backend: str, cache_dir: Path,
                     log: Callable[[str], None] = print, axes=None, sizes=(),
                     component: str = "transformer") -> Path | None:
    """The artifact folder for ``model_dir`` under ``cache_dir``, exported now if needed.

    The profile: the driver's plan, widened to the jobs' ``sizes`` (:func:`sized_axes`), then
    ``axes`` (``--axis``) over both.  ``component="transformer_2"``: the second expert of a
    two-expert pipeline (None when the plan has none), each expert with its family's variant
    for that expert (Wan2.2 A14B: ``-high`` / ``-low``); the plan's coefficients are the first
    transformer's only."""
    from ...export.exporter import export_model, resolve_family, weights_hash_of_dir
    from ...families import find_model_dir, read_config
    from ...integrity import sha256_json
    from ...manifest import MANIFEST_NAME

    plan = driver.export_plan(Path(model_dir), batch_size)
    folder = plan.transformer_dir if component == "transformer" else plan.transformer_2_dir
    if folder is None:
        return None
    src = find_model_dir(folder)
    config = read_config(src)
    family = resolve_family(config, None)
    variant = family.expert_variant(config, component) if plan.transformer_2_dir is not None else None
    ranges = {**plan.axes, **sized_axes(family, config, sizes, log), **(axes or {})}
    build = BUILD_FOR_BACKEND.get(backend, "none")
    key = sha256_json({"driver": driver.name, "model": weights_hash_of_dir(src), "variant": variant,
                       "axes": {k: list(v) for k, v in sorted(ranges.items())}, "build": build})
    art = Path(cache_dir) / f"{driver.name}-{key[:16]}"
    coefficients = list(plan.coefficients) if plan.coefficients is not None and component == "transformer" else None
    with _turn(art, log):
        had_artifact = (art / MANIFEST_NAME).is_file()
        try:
            export_model(src, art, axes=ranges, build=build, variant=variant, coefficients=coefficients, log=log)
            if coefficients is not None and plan.coefficients_source:
                _name_source(art, coefficients, plan.coefficients_source)
            if plan.policy_data:
                add_policy_data(art, plan.policy_data, log)
        except BaseException:
            if not had_artifact and not (art / MANIFEST_NAME).is_file():
                shutil.rmtree(art, ignore_errors=True)  # never an empty cache folder
            raise
    return art


def add_policy_data(art: Path, data, log: Callable[[str], None] = print) -> None:
    """Calibration results the driver ships with its model (``ExportPlan.policy_data``) into the
    artifact's manifest, where they differ from what it records (checked as the runtime checks them)."""
    import json

    from ... import artifact
    from ...policies import artifact_policies

    data = json.loads(json.dumps(dict(data)))
    if all(artifact.Artifact.open(art).manifest.policy_data.get(name) == entry for name, entry in data.items()):
        return
    with artifact.writing(art):
        manifest = artifact.Artifact.open(art).manifest
        manifest.policy_data.update(data)
        artifact_policies(manifest, str(art / "manifest.json"))  # never write what a load would refuse
        artifact.save_manifest(art, manifest)
    log(f"[export] {art}: the model's shipped {', '.join(sorted(data))} data written into its manifest")


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

    manifest = artifact.Artifact.open(art).manifest
    teacache = manifest.policy_data.get("teacache", {})
    if teacache.get("coefficients") != coefficients or teacache.get("source") == source:
        return
    with artifact.writing(art):
        manifest = artifact.Artifact.open(art).manifest
        manifest.policy_data["teacache"]["source"] = source
        artifact.save_manifest(art, manifest)


SIZE_FIELDS = ("height", "width", "frames")  # a job's pixel height and width, video frames
MAX_SIZE = 2**31 - 1


def job_sizes(jobs_path: Path, driver, model_dir: Path) -> list[dict[str, int]]:
    """The pixel sizes the job file's jobs render at (a job that gives none: the pipeline's
    default), read before any export so the first-use profile covers them.  A line that is not
    a JSON object or a size that is not a positive integer counts as the default here: the job
    reader reports such jobs later, one by one.  Drivers without ``size_defaults``: none."""
    size_defaults = getattr(driver, "size_defaults", None)
    if size_defaults is None:
        return []
    defaults = {k: v for k, v in size_defaults(model_dir).items() if k in SIZE_FIELDS}
    sizes = []
    with open(jobs_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError:
                data = None
            data = data if isinstance(data, dict) else {}
            size = dict(defaults)
            for name in SIZE_FIELDS:
                value = data.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SIZE:
                    size[name] = value
            if size:
                sizes.append(size)
    return sizes


def sized_axes(family, config, sizes: Sequence[Mapping[str, int]], log: Callable[[str], None]) -> dict:
    """Profile ranges that cover the jobs' sizes: per axis the family maps a size to
    (``Family.job_axes``), the default range widened to the smallest and largest job, the
    optimum at the commonest one.  Sizes beyond the config's limit (a RoPE table) or off the
    axis' multiple are left out, with a note: those jobs fail alone."""
    seen: dict[str, list[int]] = {}
    for size in sizes:
        for name, value in family.job_axes(config, size).items():
            seen.setdefault(name, []).append(int(value))
    defaults = {a.name: a for a in family.default_axes(config)}
    limits = family.axis_limits(config)
    ranges = {}
    for name, values in seen.items():
        axis, limit = defaults.get(name), limits.get(name)
        if axis is None:
            continue
        fit = [v for v in values if v >= 1 and v % axis.multiple_of == 0 and (limit is None or v <= limit.max)]
        left = sorted(set(values) - set(fit))
        if left:
            most = f"at most {limit.max} ({limit.key}={limit.value}), " if limit is not None else ""
            log(f"[export] jobs ask for {name} {left} (latent units), outside what the model takes ({most}a multiple "
                f"of {axis.multiple_of}): the profile leaves them out and those jobs fail")
        if fit:
            counts = Counter(fit)
            opt = max(counts, key=lambda v: (counts[v], v))  # the commonest size; a tie: the larger
            ranges[name] = (min(axis.min, min(fit)), opt, max(axis.max, max(fit)))
    return ranges


def check_model_matches(manifest, art_dir: Path, driver, model_dir: Path, component: str = "transformer") -> None:
    """``--artifacts`` exported from the transformer of ``--model`` (``--artifacts-2`` from its
    ``transformer_2``): same weights, same config (the manifest's weights hash), else the render
    would draw with other weights silently."""
    from ...export.exporter import weights_hash_of_dir
    from ...families import find_model_dir

    plan = driver.export_plan(Path(model_dir), 1)
    src = find_model_dir(plan.transformer_dir if component == "transformer" else plan.transformer_2_dir)
    option = "--artifacts" if component == "transformer" else "--artifacts-2"
    if manifest.weights_hash != weights_hash_of_dir(src):
        raise TeaCacheError(
            f"{option} {art_dir} was exported from {manifest.source}, whose weights differ from those of "
            f"--model {model_dir} ({src}): give the artifacts of this model (teacache-export {src} --out DIR), "
            f"or leave {option} out to export it on first use"
        )
