"""``manifest.json``: the one versioned artifact format shared by export, engines and runtime.

An artifact folder holds ``manifest.json`` and one content folder (``v-<12 hex>``) with the
graphs, their external data, the engines and the trtexec command files.  The manifest names the
content folder and records every file in it with its size and sha256.

This module is the format alone: the schema, its validation and the JSON round trip
(:meth:`Manifest.to_json`, :meth:`Manifest.parse`).  It trusts nothing it parses: the format
version, every field's type and range (profiles ordered, the policy's shape), and that every
file a graph or engine names is among the recorded files.  Failures say what to re-run.  The
folder itself (reading and writing ``manifest.json``, containment of every name, the files'
sizes and hashes) is :class:`teacache_trt.artifact.Artifact`'s; the policies check their own
settings and data when the runtime binds them (``teacache_trt.policies``: coefficients finite,
thresholds >= 0, ...).

Format 3 records the caching policies instead of one TeaCache criterion::

    "signal":      {"description": ..., "cached": [stream, ...], "note": ...}
    "policy":      {"name": "teacache", "params": {"threshold": 0.4}}      the default policy
    "policy_data": {"teacache": {"coefficients": [...], "source": ..., "forced": {...},
                                 "accumulate": "raw", "eps": 0.0, "clamp": false,
                                 "history": [{"coefficients": [...], ...}, ...]},
                    "<policy>": {...}}                                     calibrated data per policy

A format-2 manifest (one ``criterion``) is converted when parsed (:func:`from_format_2`).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import TeaCacheError
from .shapes import Dim

FORMAT_VERSION = 3  # 2: content folder, per-file size and sha256; 3: policies instead of a criterion
READABLE_VERSIONS = (2, 3)  # 2 is converted on load
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("embed", "blocks", "head")  # every artifact has these three
# Optional, first: what depends only on inputs that stay fixed within a generation (prompt
# embeddings, position ids); the runtime runs it only when those inputs change.
CONTEXT_GRAPH = "context"
CONTENT_PATTERN = re.compile(r"v-[0-9a-f]{12}")
REEXPORT = "re-run teacache-export for this folder with --force"

__all__ = [
    "FORMAT_VERSION", "MANIFEST_NAME", "GRAPH_NAMES", "CONTEXT_GRAPH", "graph_names", "TensorSpec", "GraphSpec",
    "SignalSpec", "PolicySpec", "Manifest", "from_format_2",
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
    def parse(cls, data: Any, where: str) -> "Manifest":
        """The checked manifest of a parsed ``manifest.json`` (format 2 converted); ``where``
        (the file's path) starts every error message."""
        version = data.get("format_version") if isinstance(data, dict) else None
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise TeaCacheError(
                f"{where} has format_version {version!r}; this teacache-trt reads format_version "
                f"{' or '.join(map(str, READABLE_VERSIONS))}: re-export with this version (teacache-export ... --force)"
            )
        try:
            if version == 2:
                data = from_format_2(data)
            return cls.from_dict(data)
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            if isinstance(exc, TeaCacheError):
                raise TeaCacheError(f"{where}: {exc}") from exc
            raise TeaCacheError(f"{where} is missing or has unknown fields ({exc}); re-export with --force") from exc

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
            self.check_listed(spec.file, f"the {graph} graph")
        for flavour, table in _mapping(self.engines, "engines").items():
            for graph, entry in _mapping(table, f"engines.{flavour}").items():
                self.check_listed(_mapping(entry, f"engines.{flavour}.{graph}").get("file"),
                                  f"the {flavour} {graph} engine")

    def check_listed(self, name: Any, what: str) -> None:
        """``name`` is among the recorded files (``what`` names it in the error)."""
        if name not in self.files:
            raise TeaCacheError(f"{what} file {name!r} is not among the manifest's files; {REEXPORT}")


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
