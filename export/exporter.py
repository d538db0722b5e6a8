"""MODEL_DIR -> embed.onnx, blocks.onnx, head.onnx, manifest.json (+ engines, trtexec files).

Stages: load, export (per graph), verify, build engines, write command files.  Each stage
reports progress; a re-run skips work whose inputs (content hashes) did not change.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .. import __version__, artifact, integrity
from ..dtypes import precision_dtype
from ..errors import TeaCacheError
from ..files import os_errors
from ..integrity import config_fingerprint, sha256_file, sha256_json
from ..manifest import FORMAT_VERSION, GraphSpec, Manifest, PolicySpec, SignalSpec, graph_names
from ..families import (
    Family, Part, Variant, check_coefficients, find_model_dir, get_family, load_family_module, plain_config,
    read_config,
)
from ..families import base as family_base
from ..families import inputs as family_inputs
from ..families.model_io import module_dtype
from ..shapes import propagate
from ..engines.flavours import installed, no_gpu_reason, resolve_flavour
from . import verify as V
from .onnx_export import OPSET, dynamic_dims, export_part, graph_files

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportSettings:
    """One export, settled and checked before the model loads: what the staged export, the
    graphs and the manifest are made from."""

    family: type[Family]
    config: dict[str, Any]
    source: Path  # the model folder ("<in-memory>" for a model object)
    variant: str
    precision: str
    axes: dict[str, list[int]]  # axis -> [min, opt, max]
    weights_hash: str
    export_key: str
    verify: bool = True
    flavour: str = "none"  # engines to build in the staging folder
    family_module: str = ""  # the --family-module it came from, for the manifest
    coefficients: list[float] | None = None  # TeaCache coefficients replacing the variant's

    @property
    def dtype(self) -> torch.dtype:
        return precision_dtype(self.precision)


@dataclass(frozen=True)
class Verification:
    """What the export checks its graphs against: the model, the parts split from it, and the
    config and precision they were exported at."""

    family: type[Family]
    model: torch.nn.Module
    parts: Mapping[str, Part]
    config: Mapping[str, Any]
    precision: str


# --- locating and loading the model ---------------------------------------------------------
def resolve_family(config: Mapping[str, Any], family: str | None,
                   family_module: str | None = None) -> type[Family]:
    """``family_module`` (a user's Family class), else ``family`` by name, else the config's
    ``_class_name``."""
    if family_module:
        fam = load_family_module(family_module)
        if family and family not in (fam.name, fam.class_name):
            raise TeaCacheError(
                f"--family {family} disagrees with --family-module {family_module} (family {fam.name!r}): "
                f"pass one of them"
            )
        return fam
    class_name = config.get("_class_name")
    if not family:
        if not class_name:
            raise TeaCacheError("config.json has no _class_name: pass --family explicitly")
        return get_family(class_name)
    fam = get_family(family)
    try:
        own = get_family(class_name) if isinstance(class_name, str) else None
    except TeaCacheError:  # a class this project does not know: --family says how to read it
        own = None
    if own is not None and own is not fam:
        raise TeaCacheError(
            f"--family {family} ({fam.class_name}) does not match the model: its config.json says "
            f"{class_name} (family {own.name}); drop --family, or pass the model of that family"
        )
    return fam


@contextlib.contextmanager
def config_values(src: Path):
    """A config.json value of the wrong type (``"num_layers": "two"``) meets family code as a
    TypeError or KeyError: one clear line instead."""
    try:
        yield
    except (TypeError, KeyError, AttributeError, IndexError) as exc:
        raise TeaCacheError(
            f"config.json of {src} has a missing value or one of the wrong type ({type(exc).__name__}: {exc}): "
            f"pass the config save_pretrained wrote for this model"
        ) from exc


def weights_hash_of_dir(model_dir: Path) -> str:
    # is_file: a FIFO or a link to a device among the weights must not hang the hash
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    return sha256_json({p.name: sha256_file(p) for p in files})


def weights_hash_of_model(model: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --- axes, trace and verification points, profiles ----------------------------------------------------------------------
def resolve_axes(fam: type[Family], overrides: Mapping[str, tuple[int, int, int]] | None,
                 config: Mapping[str, Any] | None = None) -> dict[str, list[int]]:
    axes = {a.name: [a.min, a.opt, a.max] for a in _axes(fam, config)}
    for name, rng in (overrides or {}).items():
        axis = fam.axis(name, config)
        lo, opt, hi = (int(v) for v in rng)
        if not 1 <= lo <= opt <= hi:
            raise TeaCacheError(
                f"axis {name}={lo}:{opt}:{hi} is not ordered: need 1 <= min <= opt <= max"
            )
        for v in (lo, opt, hi):
            if v % axis.multiple_of:
                raise TeaCacheError(
                    f"axis {name}={lo}:{opt}:{hi}: {v} is not a multiple of {axis.multiple_of} ({axis.help})"
                )
        limit = fam.axis_limits(config).get(name) if config is not None else None
        if limit is not None and hi > limit.max:
            top = limit.max - limit.max % axis.multiple_of
            raise TeaCacheError(
                f"axis {name}={lo}:{opt}:{hi} exceeds what this config supports: {name} at most {limit.max} "
                f"({limit.why}; config key {limit.key}={limit.value!r}); use --axis "
                f"{name}={min(lo, top)}:{min(opt, top)}:{top}, or export a model whose {limit.key} is larger")
        axes[name] = [lo, opt, hi]
    return axes


def _axes(fam: type[Family], config: Mapping[str, Any] | None):
    return fam.default_axes(config)


def static_axes(axes: Mapping[str, list[int]]) -> list[str]:
    """Axes the graphs fix at 1: their profile allows no other size, and torch.export
    specialises a traced size of 1 (it cannot be traced as a dynamic dim)."""
    return [name for name, (_, _, hi) in axes.items() if hi < 2]


def trace_point(fam: type[Family], axes: Mapping[str, list[int]],
                config: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Axis sizes the graphs are traced at: small, inside the profile, never its opt.

    Per axis the smallest size >= 2 in its range (1 for a static axis), distinct from the
    sizes already chosen where the range allows: torch.export may tie two dims that trace
    at the same size.  Tracing and the first verification then cost what the weights cost,
    whatever the profile's opt (a real-size opt does not fit in RAM: docs/traps.md).
    """
    point: dict[str, int] = {}
    for a in _axes(fam, config):
        lo, _, hi = axes[a.name]
        if hi < 2:
            point[a.name] = hi
            continue
        first = -(-max(lo, 2) // a.multiple_of) * a.multiple_of
        sizes = range(first, hi + 1, a.multiple_of)
        point[a.name] = next((v for v in sizes if v not in point.values()), first)
    return point


def _example_shapes(fam, config, point, dtype) -> dict[str, torch.Size]:
    """The shapes of the model inputs at ``point``, built on the meta device: a profile's
    maximum (a batch of 10^9) costs no memory.  A family whose example inputs need real values
    builds them for real."""
    try:
        with torch.device("meta"):
            feed = fam.example_inputs(config, point, dtype)
    except Exception:  # noqa: BLE001 - values the meta device cannot give: the real thing
        feed = fam.example_inputs(config, point, dtype)
    return {n: t.shape for n, t in feed.items()}


def verify_points(fam: type[Family], axes: Mapping[str, list[int]], traced: Mapping[str, int],
                  config: Mapping[str, Any] | None = None) -> list[dict[str, int]]:
    """The traced point, then the profile's minimum (the next size up where the minimum is
    the traced size), so that every dynamic axis is checked at two sizes inside the profile;
    the traced point alone when the profile allows no other."""
    second = {}
    for a in _axes(fam, config):
        lo, _, hi = axes[a.name]
        if lo != traced[a.name]:
            second[a.name] = lo
        elif traced[a.name] + a.multiple_of <= hi:
            second[a.name] = traced[a.name] + a.multiple_of
        else:
            second[a.name] = traced[a.name]
    return [dict(traced)] if second == traced else [dict(traced), second]


def profiles(graphs: Mapping[str, GraphSpec], fam, config, axes, dtype) -> None:
    """min/opt/max shape of every graph input, propagated from the axis ranges."""
    shapes_at = []
    for k in range(3):
        point = {name: rng[k] for name, rng in axes.items()}
        shapes_at.append(propagate([graphs[g] for g in graph_names(graphs)], _example_shapes(fam, config, point, dtype)))
    for graph in graphs.values():
        graph.profile = {
            spec.name: {key: list(s[spec.name]) for key, s in zip(("min", "opt", "max"), shapes_at)}
            for spec in graph.inputs
        }


# --- the export -----------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxscript  # its optimizer rewrites the exported graphs

    return {"teacache_trt": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "diffusers": diffusers.__version__}


def export_model(
    model_dir: str | Path | None,
    out: str | Path,
    *,
    model: torch.nn.Module | None = None,
    family: str | None = None,
    family_module: str | None = None,
    variant: str | None = None,
    precision: str = "fp32",
    axes: Mapping[str, tuple[int, int, int]] | None = None,
    build: str = "auto",
    force: bool = False,
    verify: bool = True,
    coefficients: list[float] | None = None,
    log: Log = print,
) -> Manifest:
    """Export a transformer (from ``model_dir`` or the in-memory ``model``): a diffusers model,
    or any module whose family ``family_module`` names (``path/file.py:Class``, ``pkg.mod:Class``).

    ``coefficients`` (numpy.poly1d order, any degree) replace the variant's TeaCache
    coefficients in the manifest (the variant keeps its signal, forced steps, accumulation);
    the variant's own stay in the coefficients' history.  They change no graph: re-running
    with other coefficients only rewrites the manifest.

    ``out`` changes in one atomic step (see :mod:`teacache_trt.artifact`): a failed or killed
    export leaves the previous artifact as it was.
    """
    if coefficients is not None:
        coefficients = check_coefficients(coefficients, "--coefficients")
    dtype = precision_dtype(precision)
    out = Path(out)
    t_start = time.perf_counter()
    asked_variant = variant

    # Validate everything cheap before the (slow) model load: engine flavour first.
    flavour = resolve_flavour(build)
    if flavour != "none":
        from ..engines.build import target_device

        target_device(flavour)  # no GPU for full TensorRT: fail now, not after the export

    if model is None:
        if model_dir is None:
            raise TeaCacheError("export_model needs model_dir or model")
        src = find_model_dir(model_dir).absolute()  # the torch backend finds it from anywhere
        config = read_config(src)
        with config_values(src):
            fam = resolve_family(config, family, family_module)
    else:
        src = Path(model_dir).absolute() if model_dir else Path("<in-memory>")
        if family or family_module:
            fam = resolve_family({}, family, family_module)
            config = fam.config_of(model)
        else:
            config = plain_config(model)
            fam = resolve_family({"_class_name": type(model).__name__, **config}, None)
        config.setdefault("_class_name", fam.class_name)
    with config_values(src):
        fam.check_config(config)
        variant = fam.variant(variant or fam.variant_for(config)).name
        axes_r = resolve_axes(fam, axes, config)
    artifact.check_out_dir(out, force)
    chosen = fam.variants[variant]
    if coefficients is None:
        origin = f"the variant's: {chosen.source or fam.coefficients_source or 'source not stated'}"
    else:
        origin = "given with --coefficients"
    shown = ", ".join(f"{c:.4g}" for c in (chosen.coefficients if coefficients is None else coefficients))
    log(f"[export] family {fam.name}, variant {variant}; TeaCache coefficients [{shown}] ({origin})")
    if chosen.stand_in and coefficients is None:
        log(f"[export] note: variant {variant}: its TeaCache coefficients are a stand-in ({chosen.source}); "
            f"pass --coefficients, or calibrate the artifact (teacache-calibrate) before trusting its speed/quality")
    from_dir = model is None  # the model is loaded below; the build hint needs to know where it came from
    if from_dir:
        log(f"[load] {fam.class_name} from {src} ({precision})")
        weights_hash = weights_hash_of_dir(src)
    else:
        weights_hash = weights_hash_of_model(model)
    export_key = sha256_json({
        "family": fam.name, "variant": variant, "config": config, "weights": weights_hash,
        "precision": precision, "axes": axes_r, "versions": versions(), "verify": verify,
        # The code that shapes the graphs: an edited adapter or exporter must re-export.
        "code": {p.name: sha256_file(p) for p in _graph_code(fam)}, "opset": OPSET,
        "format": FORMAT_VERSION,
    })

    with artifact.writing(out):
        previous = artifact.current(out)
        artifact.clean(out, previous)  # what a killed run left behind
        if _reusable(out, previous, export_key, force, log):
            log(f"[export] {out} is up to date (same model, options and versions); --force rebuilds")
            manifest = previous
            if coefficients is not None and manifest.policy_data.get("teacache", {}).get("coefficients") != coefficients:
                teacache = teacache_data(fam.variants[variant], coefficients)
                teacache["history"] = [*manifest.policy_data.get("teacache", {}).get("history", []),
                                       *teacache["history"]]
                manifest.policy_data["teacache"] = teacache
                artifact.commit_manifest(out, manifest, "export")
                log(f"[export] TeaCache coefficients set to {coefficients} (no graph changes)")
            if flavour != "none":
                from ..engines.build import build_in_place

                build_in_place(out, manifest, flavour, force=force, log=log)
        else:
            if model is None:
                model = fam.load_model(src, precision)
            if module_dtype(model) != dtype:
                model = copy.deepcopy(model).to(dtype)  # never convert the caller's model in place
            model = model.eval()
            settings = ExportSettings(fam, config, src, variant, precision, axes_r, weights_hash, export_key,
                                      verify=verify, flavour=flavour, family_module=family_module or "",
                                      coefficients=coefficients)
            manifest = _export_staged(settings, model, out, log)
    if flavour == "none" and build == "auto":
        later = _build_later(model_dir, out, from_dir=from_dir, family=family, family_module=family_module,
                             variant=asked_variant, precision=precision, axes=axes)
        log(f"[build] no engines: {no_gpu_reason() or 'neither tensorrt nor tensorrt-rtx is installed'}; {later}")
    log(f"[done] {out} in {time.perf_counter() - t_start:.1f}s")
    return manifest


def _build_later(model_dir, out, *, from_dir: bool, family, family_module, variant, precision, axes) -> str:
    """How to build the engines that ``--build auto`` skipped: the same export with
    ``--build tensorrt-rtx`` (it reuses the graphs and builds ahead of time, no GPU needed)."""
    import shlex

    if not from_dir:
        return "to build engines ahead of time, call export_model again with build='tensorrt-rtx'"
    args = [str(model_dir), "--out", str(out)]
    for flag, value in (("--family", family), ("--family-module", family_module), ("--variant", variant)):
        if value:
            args += [flag, value]
    if precision != "fp32":
        args += ["--precision", precision]
    for name, rng in (axes or {}).items():
        args += ["--axis", f"{name}={':'.join(str(int(v)) for v in rng)}"]
    command = "teacache-export " + " ".join(shlex.quote(a) for a in args + ["--build", "tensorrt-rtx"])
    if not installed("tensorrt-rtx"):
        command = f"pip install 'teacache-trt[tensorrt-rtx]', then {command}"
    return f"to build TensorRT-RTX engines ahead of time without a GPU: {command}"


def _graph_code(fam) -> list[Path]:
    here = Path(__file__).resolve().parent
    return [Path(inspect.getfile(fam)), Path(inspect.getfile(family_base)), Path(inspect.getfile(family_inputs)),
            here / "onnx_export.py", Path(inspect.getfile(propagate))]


def _reusable(out: Path, previous: Manifest | None, export_key: str, force: bool, log: Log) -> bool:
    """The committed graphs are what this export would write, and intact (contents checked)."""
    if force or previous is None or previous.export_key != export_key:
        return False
    try:
        committed = artifact.Artifact(out, previous)
        for graph in graph_names(previous.graphs):
            committed.graph_path(graph)
    except TeaCacheError as exc:
        log(f"[export] exporting again: {exc}")
        return False
    return True


def _graph_hash(path: Path) -> str:
    return _files_hash(graph_files(path))


def _files_hash(files) -> str:
    return sha256_json({p.name: sha256_file(p) for p in files})


def teacache_data(variant: Variant, coefficients: list[float] | None = None) -> dict:
    """What the manifest records for TeaCache: the variant's rule and coefficients, or the
    given ``coefficients`` with the variant's kept in the history (``--restore`` returns there)."""
    own = [float(c) for c in variant.coefficients]
    history = [] if coefficients is None else [{"coefficients": own, "source": f"variant {variant.name}"}]
    return {"coefficients": own if coefficients is None else list(coefficients),
            "source": f"variant {variant.name}" if coefficients is None else "teacache-export --coefficients",
            "forced": dataclasses.asdict(variant.forced), "accumulate": variant.accumulate, "eps": variant.eps,
            "clamp": False, "history": history}


def published_data(variant: Variant) -> dict:
    """Other policies' data the family ships for this variant (MagCache's published ratios)."""
    return {"magcache": variant.magcache.policy_data()} if variant.magcache is not None else {}


def _export_staged(settings: ExportSettings, model, out: Path, log: Log) -> Manifest:
    """Export, verify and build in a staging folder; only the complete set becomes ``out``'s
    artifact, in one step, so a failed or killed export loses nothing."""
    import shutil

    from ..engines.trtexec import write_trtexec_files

    staging = artifact.new_staging(out)
    try:
        with os_errors(f"writing the export to {out}"):
            manifest = _export_graphs(settings, model, staging, log)
            if settings.flavour != "none":
                from ..engines.build import build_engines

                build_engines(staging, manifest, settings.flavour,
                              {g: staging / manifest.graphs[g].file for g in graph_names(manifest.graphs)},
                              timing_dir=out, force=True, log=log)
            write_trtexec_files(staging, manifest)
            manifest.files.update({p.name: integrity.record(p) for p in sorted(staging.iterdir())
                                   if p.name not in manifest.files})
        artifact.commit_staging(out, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once committed
    return manifest


def _export_graphs(settings: ExportSettings, model, out: Path, log: Log) -> Manifest:
    fam, config, axes, dtype = settings.family, settings.config, settings.axes, settings.dtype
    parts = fam.parts(model, fam.variant(settings.variant))
    traced = trace_point(fam, axes, config)
    static = static_axes(axes)
    if static:
        log(f"[export] {', '.join(f'{a}=1' for a in static)} is fixed in the graphs: the profile "
            f"allows no other size, and torch.export cannot trace a dynamic dim at size 1")
    feed = fam.example_inputs(config, traced, dtype)
    # Dynamic dims of every tensor a part may take: the model inputs' from the family, the
    # signal's, then each exported graph's outputs as the exporter named them.
    pool_dims = {**fam.input_dims(config), "prev_signal": dict(fam.signal_dims)}
    graphs: dict[str, GraphSpec] = {}
    pool = dict(feed)
    names = graph_names(parts)
    dims_notes = FixedDims(fam, traced, static)
    for i, name in enumerate(names, 1):
        part = parts[name]
        if name == "embed":
            signal_shape = _signal_shape(part, pool, traced)
            pool["prev_signal"] = torch.randn(signal_shape, dtype=dtype)
        part_dims = {n: part.dynamic.get(n, pool_dims.get(n, {})) for n in part.input_names}
        dims_notes.note_inputs(name, part, pool, part_dims, pool_dims)
        path = out / f"{name}.onnx"
        log(f"[export {i}/{len(names)}] {name}.onnx at {traced} ...")
        t0 = time.perf_counter()
        with dims_notes.explained(name):
            written = export_part(part, pool, part_dims, path, static)
        dims_notes.note_outputs(name, written.outputs)
        pool_dims.update({spec.name: dynamic_dims(spec, axes) for spec in written.outputs})
        t_hash = time.perf_counter()
        graphs[name] = GraphSpec(file=path.name, sha256=_files_hash(written.files),
                                 inputs=written.inputs, outputs=written.outputs)
        stages = {**written.seconds, "hash": time.perf_counter() - t_hash}
        size = sum(f.stat().st_size for f in written.files)
        log(f"[export {i}/{len(names)}] {name}.onnx in {time.perf_counter() - t0:.1f}s ("
            + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()) + f"; {size / 1e6:.1f} MB)")
        if name != names[-1]:
            pool.update(_run_part(name, part, pool, traced))  # the next part's example inputs
    with dims_notes.explained():
        profiles(graphs, fam, config, axes, dtype)
    v = fam.variants[settings.variant]
    manifest = Manifest(
        family=fam.name, variant=settings.variant, class_name=fam.class_name, precision=settings.precision,
        config=config, config_hash=config_fingerprint(fam.config_of(model)), weights_hash=settings.weights_hash,
        source=str(settings.source), axes=axes, graphs=graphs,
        signal=SignalSpec(fam.signal_for(v), list(fam.cached), fam.note),
        policy=PolicySpec("teacache", {"threshold": v.default_threshold}),
        policy_data={"teacache": teacache_data(v, settings.coefficients), **published_data(v)},
        versions=versions(), export_key=settings.export_key, family_module=settings.family_module,
    )
    if settings.verify:
        with dims_notes.explained():
            _verify(Verification(fam, model, parts, config, settings.precision), manifest, out,
                    verify_points(fam, axes, traced, config), log)
    return manifest


class FixedDims:
    """Graph inputs exported with a dim fixed that should follow an axis, and why: what an
    export failing on a fixed size (a torch.export constraint on an axis, or a later size that
    does not fit a graph) most likely needs changed.

    - a part's ``dynamic`` entry that leaves out dims the graphs make dynamic;
    - a model input whose ``Input`` shape has a number where the traced size is an axis's (the
      trace point gives every dynamic axis its own size);
    - a tensor an earlier graph produced with its batch dim (dim 0: tensors pass batch first)
      fixed, for one of these reasons in turn.
    """

    def __init__(self, fam: type[Family], traced: Mapping[str, int], static):
        self.fam = fam
        self.axis_of_size = {size: axis for axis, size in traced.items() if axis not in static and size > 1}
        self.batch = traced.get("batch") if "batch" not in static else None
        self.notes: list[str] = []
        self.fixed_batch: dict[str, str] = {}  # tensor -> the graph that produced it with dim 0 fixed

    def note_inputs(self, graph: str, part: Part, pool, part_dims, pool_dims) -> None:
        declared = {i.name: i for i in self.fam.inputs}
        for n in part.input_names:
            where = f"the {graph} graph's input {n!r}"
            if n in part.dynamic:
                dropped = {d: a for d, a in pool_dims.get(n, {}).items() if d not in part.dynamic[n]}
                if dropped:
                    self.notes.append(f"{where}: {type(part).__name__}.dynamic[{n!r}] leaves out dims {dropped} that "
                                      f"the graphs make dynamic; drop that entry (the dims of tensors between "
                                      f"graphs come from the graphs) or include them")
                continue
            if n in declared:
                shape = declared[n].shape
                numbers = {d: self.axis_of_size[size] for d, size in enumerate(pool[n].shape)
                           if d < len(shape) and isinstance(shape[d], int) and size in self.axis_of_size}
                if numbers:
                    self.notes.append(f"{where}: the family's Input({n!r}) has a number at dims {sorted(numbers)}, "
                                      f"traced at the size of {sorted(set(numbers.values()))}; name the axis there")
            elif n in self.fixed_batch:
                self.notes.append(f"{where}: the {self.fixed_batch[n]} graph produced it with its batch dim (0) "
                                  f"fixed (see above)")
            elif (n in getattr(self.fam, "model_inputs", ()) and self.batch is not None and pool[n].ndim
                  and pool[n].shape[0] == self.batch and 0 not in part_dims.get(n, {})):
                self.notes.append(f"{where}: the family's input_dims() leaves its batch dim (0) fixed")

    def note_outputs(self, graph: str, outputs) -> None:
        for spec in outputs:
            if self.batch is not None and spec.shape and spec.shape[0] == self.batch:
                self.fixed_batch[spec.name] = graph

    @contextlib.contextmanager
    def explained(self, graph: str | None = None):
        try:
            yield
        except TeaCacheError as exc:
            text = str(exc)
            if not self.notes or not ("Constraints violated" in text or "fixed in the graph" in text):
                raise
            raise TeaCacheError(
                f"a size that should follow an axis is fixed in the graphs. Likely cause: {'; '.join(self.notes)}. "
                f"Tensors pass between the graphs batch first, and every dim that follows an axis must stay "
                f"dynamic from the model inputs on (docs/custom-families.md). The failure: {text}") from exc


def _run_part(name: str, part, pool, point) -> dict[str, torch.Tensor]:
    """One eager PyTorch run of a part; a failure names the graph and the sizes."""
    try:
        with torch.no_grad():
            return part.run(pool)
    except Exception as exc:
        raise TeaCacheError(
            f"the PyTorch {name} part failed at {point}: {type(exc).__name__}: {str(exc)[:1000]}. "
            f"The export runs each part at the smallest sizes of the profile: if this is an "
            f"allocation failure, lower the axis minimums (--axis NAME=MIN:OPT:MAX)"
        ) from exc


def _signal_shape(embed, pool, point) -> tuple[int, ...]:
    """Shape of the signal at the trace point, from one PyTorch run of the embed part."""
    probe = dict(pool)
    # prev_signal only feeds the sums; any broadcastable tensor gives the signal's shape.
    probe["prev_signal"] = torch.zeros(())
    return tuple(_run_part("embed", embed, probe, point)["signal"].shape)


def _verify(subject: Verification, manifest: Manifest, out: Path, points, log: Log) -> None:
    """Each graph against its PyTorch part at every point, and the composed parts against
    the model's own forward.  One ONNX Runtime session per graph, dropped before the next
    graph's (the block graph holds the weights); attention too large for RAM at a point runs
    in query chunks (``V.verify_graph``)."""
    runs = []
    fam, precision = subject.family, subject.precision
    for k, point in enumerate(points):
        runs.append(_reference(subject, manifest, point, seed=k + 1))
        log(f"[verify {k + 1}/{len(points)}] PyTorch parts composed vs {fam.class_name}.forward at "
            f"{point}: max abs {runs[-1][2]:.3g}")
    on_cpu = precision in V.ORT_CPU_PRECISIONS
    if not on_cpu:
        log(f"[verify] the {precision} graphs were not run: ONNX Runtime's CPU provider has no "
            f"{precision} kernels (verified: the PyTorch split against the model, above); "
            f"TensorRT or ONNX Runtime on CUDA runs them")
    for name in graph_names(manifest.graphs):
        graph = manifest.graphs[name]
        rows = [{"axes": dict(point)} for point in points]
        if on_cpu:
            t0 = time.perf_counter()
            checked = V.verify_graph(out / graph.file, name, points, [feeds for feeds, _, _ in runs],
                                     [refs[name] for _, refs, _ in runs], precision, log)
            for row, fields in zip(rows, checked):
                row.update(fields)
            ran = [r for r in rows if r["graph_verified"]]
            log(f"[verify] {name} graph vs PyTorch at {len(ran)} point{'s' * (len(ran) > 1)}: max abs "
                f"{max(r['max_abs'] for r in ran):.3g}, max rel {max(r['max_rel'] for r in ran):.3g} "
                f"({time.perf_counter() - t0:.1f}s)")
        else:
            for row in rows:
                row.update(graph_verified=False,
                           method=f"not run: ONNX Runtime's CPU provider has no {precision} kernels")
        if name == "head":
            for row, (_, _, split) in zip(rows, runs):
                row["split_vs_model_max_abs"] = split
        graph.verification = rows


def _reference(subject: Verification, manifest: Manifest, point, seed: int):
    """The PyTorch side at ``point``: every part's inputs (one pool), each part's outputs, and
    the max abs error of the composed parts against the model's own forward.  Output shapes
    are checked against the manifest's shape expressions on the way."""
    fam, model, parts, config, precision = (subject.family, subject.model, subject.parts, subject.config,
                                            subject.precision)
    dtype = precision_dtype(precision)
    feed = fam.example_inputs(config, point, dtype, seed=seed)
    names = graph_names(manifest.graphs)
    shapes = propagate([manifest.graphs[g] for g in names], {n: t.shape for n, t in feed.items()})
    pool = dict(feed)
    g = torch.Generator().manual_seed(seed)
    pool["prev_signal"] = torch.randn(shapes["prev_signal"], generator=g).to(dtype)
    refs = {}
    for name in names:
        refs[name] = _run_part(name, parts[name], pool, point)
        for o in manifest.graphs[name].output_names:
            if tuple(refs[name][o].shape) != shapes[o]:
                raise TeaCacheError(
                    f"{name}: output {o!r} has shape {tuple(refs[name][o].shape)} but the manifest's "
                    f"shape expressions give {shapes[o]}: the export's dynamic dims are wrong"
                )
        pool.update(refs[name])
    # The split must reproduce the model: composed PyTorch parts against model.forward.
    try:
        with torch.no_grad():
            full = fam.call_model(model, fam.kwargs_from_feed(feed))
    except Exception as exc:
        raise TeaCacheError(
            f"{fam.class_name}.forward failed at {point}: {type(exc).__name__}: {str(exc)[:1000]}"
        ) from exc
    split = V.check(f"split vs {fam.class_name}.forward at {point}", {"output": pool["output"]},
                    {"output": full}, precision)
    return pool, refs, split["max_abs"]
