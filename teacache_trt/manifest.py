"""``manifest.json``: the one versioned artifact format shared by export, engines and runtime.

Every loader goes through :func:`load_manifest`, which checks the format version and that the
files it names exist, and fails with a message that says what to re-run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TeaCacheError
from .shapes import Dim

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("embed", "blocks", "head")  # every artifact has these three
# Optional, first: what depends only on inputs that stay fixed within a generation (prompt
# embeddings, position ids); the runtime runs it only when those inputs change.
CONTEXT_GRAPH = "context"


def graph_names(graphs) -> tuple[str, ...]:
    """The graphs of an artifact (a manifest's ``graphs``, a family's parts) in run order."""
    return ((CONTEXT_GRAPH,) if CONTEXT_GRAPH in graphs else ()) + GRAPH_NAMES


@dataclass
class TensorSpec:
    name: str
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "float32", "int64"
    shape: list[Dim]


@dataclass
class GraphSpec:
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # input name -> {"min": shape, "opt": shape, "max": shape}
    profile: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # one entry per verified shape: {"axes": {...}, "max_abs": float, "max_rel": float}
    verification: list[dict[str, Any]] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass
class ForcedSteps:
    """Steps that always compute, whatever the criterion says (DESIGN §4)."""

    first: int = 1  # the first N calls of each context compute
    last: bool = True  # the last call of a generation computes
    first_fraction: float = 0.0  # HiDream: the first 10% of steps compute

    def is_forced(self, step: int, num_steps: int) -> bool:
        if step < self.first or step < int(self.first_fraction * num_steps):
            return True
        return self.last and num_steps > 0 and step == num_steps - 1


@dataclass
class Criterion:
    signal: str  # what the signal is, in words (e.g. "transformer_blocks[0].norm1 image tokens")
    coefficients: list[float]  # numpy.poly1d order, highest degree first
    default_threshold: float
    forced: ForcedSteps = field(default_factory=ForcedSteps)
    clamp: bool = False  # clamp poly(d) at 0; upstream does not
    cached: list[str] = field(default_factory=list)  # streams whose residual is cached
    note: str = ""
    # earlier coefficient sets, newest last, so a calibration can be undone
    previous_coefficients: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Manifest:
    family: str
    variant: str
    class_name: str
    precision: str
    config: dict[str, Any]
    config_hash: str
    weights_hash: str
    source: str
    axes: dict[str, list[int]]  # axis -> [min, opt, max]
    graphs: dict[str, GraphSpec]
    criterion: Criterion
    versions: dict[str, str]
    export_key: str
    engines: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # A family from outside the package: the --family-module it was exported with, for the
    # message that asks a loader to name it too (the runtime never imports it on its own).
    family_module: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        data = dict(data)
        graphs = {}
        for name, g in data.pop("graphs").items():
            g = dict(g)
            g["inputs"] = [TensorSpec(**t) for t in g["inputs"]]
            g["outputs"] = [TensorSpec(**t) for t in g["outputs"]]
            graphs[name] = GraphSpec(**g)
        crit = dict(data.pop("criterion"))
        crit["forced"] = ForcedSteps(**crit.get("forced", {}))
        return cls(graphs=graphs, criterion=Criterion(**crit), **data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_manifest(art_dir: Path, manifest: Manifest) -> Path:
    path = Path(art_dir) / MANIFEST_NAME
    atomic_write_bytes(path, manifest.to_json().encode())
    return path


def load_manifest(art_dir: str | os.PathLike, check_files: bool = True) -> Manifest:
    art_dir = Path(art_dir)
    path = art_dir / MANIFEST_NAME
    if not path.is_file():
        raise TeaCacheError(
            f"{path} does not exist: {art_dir} is not an exported artifact folder; "
            f"run `teacache-export MODEL_DIR --out {art_dir}` first"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TeaCacheError(f"{path} is not valid JSON ({exc}); re-run teacache-export with --force") from exc
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise TeaCacheError(
            f"{path} has format_version {version!r}; this teacache-trt reads format_version "
            f"{FORMAT_VERSION}: re-export with this version (teacache-export ... --force)"
        )
    try:
        manifest = Manifest.from_dict(data)
    except (TypeError, KeyError) as exc:
        raise TeaCacheError(f"{path} is missing or has unknown fields ({exc}); re-export with --force") from exc
    if check_files:
        for name in graph_names(manifest.graphs):
            if name not in manifest.graphs:
                raise TeaCacheError(f"{path} lists no {name!r} graph; re-export with --force")
            graph_path = art_dir / manifest.graphs[name].file
            if not graph_path.is_file():
                raise TeaCacheError(
                    f"graph file {graph_path} named by the manifest is missing: "
                    f"re-run teacache-export for {art_dir} (it rebuilds what is missing)"
                )
    return manifest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_fingerprint(config: dict[str, Any]) -> str:
    """Hash of a model config's own keys (diffusers' ``_``-prefixed bookkeeping left out)."""
    return sha256_json({k: v for k, v in config.items() if not k.startswith("_")})
