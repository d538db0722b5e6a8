"""``manifest.json``: the one versioned artifact format shared by export, engines and runtime.

An artifact folder holds ``manifest.json`` and one content folder (``v-<12 hex>``) with the
graphs, their external data, the engines and the trtexec command files.  The manifest names the
content folder and records every file in it with its size and sha256; rewriting the manifest
(atomically) is the one step that switches a folder from one complete artifact to the next.

Every loader goes through :func:`load_manifest`, which trusts nothing it reads: the format
version, every field's type and range (profiles ordered, the policy's shape), and every name
(inside the folder, a regular file, the recorded size).  File contents are hashed before a file
is used.  Failures say what to re-run.  The policies check their own settings and data when the
runtime binds them (``teacache_trt.policies``: coefficients finite, thresholds >= 0, ...).

Format 3 records the caching policies instead of one TeaCache criterion::

    "signal":      {"description": ..., "cached": [stream, ...], "note": ...}
    "policy":      {"name": "teacache", "params": {"threshold": 0.4}}      the default policy
    "policy_data": {"teacache": {"coefficients": [...], "source": ..., "forced": {...},
                                 "accumulate": "raw", "eps": 0.0, "clamp": false,
                                 "history": [{"coefficients": [...], ...}, ...]},
                    "<policy>": {...}}                                     calibrated data per policy

A format-2 manifest (one ``criterion``) is converted on load (:func:`from_format_2`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import integrity
from .errors import TeaCacheError
from .files import atomic_write_bytes, inside, os_errors, regular_file
from .integrity import sha256_file
from .shapes import Dim

FORMAT_VERSION = 3  # 2: content folder, per-file size and sha256; 3: policies instead of a criterion
READABLE_VERSIONS = (2, 3)  # 2 is converted on load
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("embed", "blocks", "head")  # every artifact has these three
# Optional, first: what depends only on inputs that stay fixed within a generation (prompt
# embeddings, position ids); the runtime runs it only when those inputs change.
CONTEXT_GRAPH = "context"
CONTENT_PATTERN = re.compile(r"v-[0-9a-f]{12}")
MAX_MANIFEST_BYTES = 64 << 20
REEXPORT = "re-run teacache-export for this folder with --force"

__all__ = [  # atomic_write_bytes is the project's one way to write a file
    "FORMAT_VERSION", "MANIFEST_NAME", "GRAPH_NAMES", "CONTEXT_GRAPH", "graph_names", "TensorSpec", "GraphSpec",
    "SignalSpec", "PolicySpec", "Manifest", "atomic_write_bytes", "save_manifest", "load_manifest",
    "read_manifest_json", "from_format_2", "sha256_file", "sha256_json", "config_fingerprint",
]
POLICY_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


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
    file: str  # inside the content folder
    sha256: str  # of the graph and its external data together (the engine keys' input)
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
class SignalSpec:
    """What the embed graph compares between calls and what the blocks graph caches."""

    description: str  # the signal, in words (e.g. "transformer_blocks[0].norm1 image tokens")
    cached: list[str] = field(default_factory=list)  # streams whose residual is cached
    note: str = ""


@dataclass
class PolicySpec:
    """A caching policy by name and parameters (what ``teacache_trt.policies.make`` takes)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    family: str
    variant: str
    class_name: str
    precision: str
    config: dict[str, Any]
    config_hash: str
    weights_hash: str
    source: str  # absolute path of the exported model folder ("<in-memory>" for a model object)
    axes: dict[str, list[int]]  # axis -> [min, opt, max]
    graphs: dict[str, GraphSpec]
    signal: SignalSpec
    policy: PolicySpec  # the default policy
    # per policy name: its data (TeaCache: coefficients, their source and history, the variant's
    # forced steps, accumulation, eps, clamp; a calibrated policy: what its calibration found)
    policy_data: dict[str, dict[str, Any]]
    versions: dict[str, str]
    export_key: str
    # flavour -> graph -> {"file": name in the content folder, "key": engine key, build facts}
    engines: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # A family from outside the package: the --family-module it was exported with, for the
    # message that asks a loader to name it too (the runtime never imports it on its own).
    family_module: str = ""
    content: str = ""  # the content folder, v-<12 hex>
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"size", "sha256"}
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        data = dict(data)
        graphs = {}
        for name, g in _mapping(data.pop("graphs"), "graphs").items():
            g = dict(_mapping(g, f"graphs.{name}"))
            g["inputs"] = [TensorSpec(**_mapping(t, f"{name} input")) for t in g["inputs"]]
            g["outputs"] = [TensorSpec(**_mapping(t, f"{name} output")) for t in g["outputs"]]
            graphs[name] = GraphSpec(**g)
        signal = SignalSpec(**_mapping(data.pop("signal"), "signal"))
        policy = PolicySpec(**_mapping(data.pop("policy"), "policy"))
        manifest = cls(graphs=graphs, signal=signal, policy=policy, **data)
        manifest.validate()
        return manifest

    # --- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Every value the runtime acts on, checked: a damaged or hand-edited manifest fails
        here with the field's name, never later as a silent change of behaviour."""
        for name in ("family", "variant", "class_name", "precision", "source", "export_key", "config_hash"):
            if not isinstance(getattr(self, name), str):
                raise TeaCacheError(f"field {name!r} is {getattr(self, name)!r}, not a string; {REEXPORT}")
        _check_signal(self.signal)
        _check_policies(self.policy, self.policy_data)
        _check_axes(self.axes)
        missing = [g for g in GRAPH_NAMES if g not in self.graphs]
        if missing:
            raise TeaCacheError(f"the manifest lists no {missing[0]!r} graph; {REEXPORT}")
        for graph, spec in self.graphs.items():
            _check_profile(graph, spec.profile)
        if not isinstance(self.content, str) or not CONTENT_PATTERN.fullmatch(self.content):
            raise TeaCacheError(f"content folder {self.content!r} is not v-<12 hex digits>; {REEXPORT}")
        for name, entry in _mapping(self.files, "files").items():
            if not (isinstance(entry, dict) and _is_int(entry.get("size")) and entry["size"] >= 0
                    and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):
                raise TeaCacheError(f"files[{name!r}] is {entry!r}, not {{size, sha256}}; {REEXPORT}")
        for graph, spec in self.graphs.items():
            self._listed(spec.file, f"the {graph} graph")
        for flavour, table in _mapping(self.engines, "engines").items():
            for graph, entry in _mapping(table, f"engines.{flavour}").items():
                self._listed(_mapping(entry, f"engines.{flavour}.{graph}").get("file"),
                             f"the {flavour} {graph} engine")

    def _listed(self, name: Any, what: str) -> None:
        if name not in self.files:
            raise TeaCacheError(f"{what} file {name!r} is not among the manifest's files; {REEXPORT}")

    # --- paths: every manifest-named file goes through here ------------------------------
    def _file(self, art_dir: Path, name: str) -> Path:
        """``name`` in the content folder: inside the artifact folder and a regular file."""
        content = inside(Path(art_dir), self.content, "content folder")
        return regular_file(content, name, f"file in {self.content}")

    def verified(self, art_dir: Path, name: str, fix: str = REEXPORT, full: bool = False) -> Path:
        """The path of ``name`` after checking its size and sha256 against the manifest."""
        self._listed(name, "the")
        path = self._file(art_dir, name)
        with os_errors(f"reading {path}"):
            integrity.verify(path, self.files[name], fix, full)
        return path

    def graph_path(self, art_dir: Path, graph: str) -> Path:
        """A graph file, checked with its external data (names inside the content folder,
        listed by the manifest, contents as recorded)."""
        path = self.verified(art_dir, self.graphs[graph].file)
        for name in integrity.remembered(path, "onnx_external_data", onnx_external_data):
            self._listed(name, f"external data of the {graph} graph")
            self.verified(art_dir, name)
        return path

    def engine_path(self, art_dir: Path, flavour: str, graph: str) -> Path:
        entry = self.engines[flavour][graph]
        return self.verified(art_dir, entry["file"], fix=f"rebuild it with `teacache-export ... --build {flavour} --force`")

    def verify_all(self, art_dir: Path) -> int:
        """``teacache-export --check``: every file hashed in full (cache ignored) and every
        graph's external data re-read from the graph; returns the bytes checked."""
        for name in self.files:
            self.verified(art_dir, name, full=True)
        for graph, spec in self.graphs.items():
            path = self._file(art_dir, spec.file)
            for name in integrity.remembered(path, "onnx_external_data", onnx_external_data, fresh=True):
                self._listed(name, f"external data of the {graph} graph")
        return sum(e["size"] for e in self.files.values())


def onnx_external_data(path: Path) -> list[str]:
    """The external-data locations an ONNX file names (its weights are not read)."""
    import onnx

    # A tensor stored outside names its file under the key "location": a graph whose bytes never
    # spell it has none, and a 1 GB graph is searched in a fraction of the time a parse takes.
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(b"location") < 0:
                return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf reports a damaged file as a generic DecodeError
        raise TeaCacheError(f"{path} is not an ONNX graph ({type(exc).__name__}: {exc}); {REEXPORT}") from exc
    names = set()
    for graph in _subgraphs(model.graph):
        for tensor in list(graph.initializer) + [a.t for n in graph.node for a in n.attribute if a.HasField("t")]:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(names)


def _subgraphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _subgraphs(attr.g)
            for g in attr.graphs:
                yield from _subgraphs(g)


# --- value checks -------------------------------------------------------------------------
def _mapping(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise TeaCacheError(f"{what} is {type(value).__name__} {value!r:.80}, not an object; {REEXPORT}")
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_signal(s: SignalSpec) -> None:
    if not (isinstance(s.description, str) and isinstance(s.note, str) and isinstance(s.cached, list)
            and all(isinstance(c, str) for c in s.cached)):
        raise TeaCacheError(f"signal {dataclasses.asdict(s)!r:.200} needs description and note strings and "
                            f"cached a list of names; {REEXPORT}")


def _check_policies(policy: PolicySpec, data: Any) -> None:
    """The shape of the policy fields; each policy checks its own values when it is bound."""
    if not isinstance(policy.name, str) or not POLICY_NAME.fullmatch(policy.name):
        raise TeaCacheError(f"policy name {policy.name!r} is not a policy name such as 'teacache'; {REEXPORT}")
    _mapping(policy.params, "policy.params")
    for name, entry in _mapping(data, "policy_data").items():
        if not isinstance(name, str) or not POLICY_NAME.fullmatch(name):
            raise TeaCacheError(f"policy_data key {name!r} is not a policy name; {REEXPORT}")
        _mapping(entry, f"policy_data.{name}")


def from_format_2(data: dict[str, Any]) -> dict[str, Any]:
    """A format-2 manifest's fields in format 3: its ``criterion`` becomes the signal, TeaCache
    as the default policy (its default threshold) and TeaCache's data (coefficients, forced
    steps, clamp, the calibration history); format 2 knew no other accumulation or eps."""
    data = dict(data)
    crit = dict(_mapping(data.pop("criterion"), "criterion"))  # absent: a KeyError, "missing fields"
    known = {"signal", "coefficients", "default_threshold", "forced", "clamp", "cached", "note",
             "previous_coefficients"}
    missing = sorted({"signal", "coefficients", "default_threshold"} - set(crit))
    if missing or set(crit) - known:
        raise TeaCacheError(f"criterion misses {missing} or has unknown fields {sorted(set(crit) - known)}; {REEXPORT}")
    data["signal"] = {"description": crit["signal"], "cached": crit.get("cached", []), "note": crit.get("note", "")}
    data["policy"] = {"name": "teacache", "params": {"threshold": crit["default_threshold"]}}
    teacache = {"coefficients": crit["coefficients"], "forced": crit.get("forced", {}),
                "accumulate": "raw", "eps": 0.0, "clamp": crit.get("clamp", False),
                "history": crit.get("previous_coefficients", [])}
    data["policy_data"] = {"teacache": teacache}
    data["format_version"] = FORMAT_VERSION
    return data


def _check_axes(axes: Any) -> None:
    for name, rng in _mapping(axes, "axes").items():
        if not (isinstance(rng, list) and len(rng) == 3 and all(map(_is_int, rng)) and 1 <= rng[0] <= rng[1] <= rng[2]):
            raise TeaCacheError(f"axis {name} range {rng!r} is not [min, opt, max] with 1 <= min <= opt <= max; {REEXPORT}")


def _check_profile(graph: str, profile: Any) -> None:
    for name, shapes in _mapping(profile, f"graphs.{graph}.profile").items():
        lo, opt, hi = (_mapping(shapes, f"{graph} profile of {name}").get(k) for k in ("min", "opt", "max"))
        ok = all(isinstance(s, list) and all(_is_int(d) and d >= 0 for d in s) for s in (lo, opt, hi))
        if not (ok and len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi))):
            raise TeaCacheError(f"the {graph} graph's profile of {name!r} (min {lo}, opt {opt}, max {hi}) is not "
                                f"ordered min <= opt <= max per dimension; {REEXPORT}")


def save_manifest(art_dir: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically: the one commit point of an artifact folder.  What
    the loader would refuse (a NaN coefficient from a degenerate fit, ...) is never written."""
    manifest.validate()
    path = Path(art_dir) / MANIFEST_NAME
    atomic_write_bytes(path, manifest.to_json().encode())
    return path


def read_manifest_json(art_dir: Path) -> Any:
    """The parsed ``manifest.json`` of ``art_dir`` (any format version), refusing anything but a
    regular file of sane size inside the folder."""
    path = Path(art_dir) / MANIFEST_NAME
    if not os.path.lexists(path):
        raise TeaCacheError(
            f"{path} does not exist: {art_dir} is not an exported artifact folder; "
            f"run `teacache-export MODEL_DIR --out {art_dir}` first"
        )
    real = regular_file(Path(art_dir), MANIFEST_NAME, "manifest")
    size = os.stat(real).st_size
    if size > MAX_MANIFEST_BYTES:
        raise TeaCacheError(f"{path} is {size} bytes, not a manifest: re-export with --force")
    try:
        return json.loads(real.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TeaCacheError(f"{path} is not valid JSON ({exc}); re-run teacache-export with --force") from exc


def load_manifest(art_dir: str | os.PathLike) -> Manifest:
    """The checked manifest of ``art_dir``: format version, every field, the criterion, and every
    file it names (inside the folder, a regular file of the recorded size).  Contents are hashed
    when a file is used (:meth:`Manifest.graph_path`, :meth:`Manifest.engine_path`)."""
    art_dir = Path(art_dir)
    path = art_dir / MANIFEST_NAME
    with os_errors(f"reading {path}"):
        data = read_manifest_json(art_dir)
    version = data.get("format_version") if isinstance(data, dict) else None
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise TeaCacheError(
            f"{path} has format_version {version!r}; this teacache-trt reads format_version "
            f"{' or '.join(map(str, READABLE_VERSIONS))}: re-export with this version (teacache-export ... --force)"
        )
    try:
        if version == 2:
            data = from_format_2(data)
        manifest = Manifest.from_dict(data)
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        if isinstance(exc, TeaCacheError):
            raise TeaCacheError(f"{path}: {exc}") from exc
        raise TeaCacheError(f"{path} is missing or has unknown fields ({exc}); re-export with --force") from exc
    with os_errors(f"checking the files of {art_dir}"):
        for name, entry in manifest.files.items():
            size = os.stat(manifest._file(art_dir, name)).st_size
            if size != entry["size"]:
                raise TeaCacheError(
                    f"{art_dir / manifest.content / name} has {size} bytes but the manifest recorded "
                    f"{entry['size']} (truncated, replaced or still being copied): {REEXPORT}"
                )
    return manifest


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_fingerprint(config: dict[str, Any]) -> str:
    """Hash of a model config's own keys (diffusers' ``_``-prefixed bookkeeping left out)."""
    return sha256_json({k: v for k, v in config.items() if not k.startswith("_")})
