"""MODEL_DIR -> embed.onnx, blocks.onnx, head.onnx, manifest.json (+ engines, trtexec files).

Stages: load, export (per graph), verify, build engines, write command files.  Each stage
reports progress; a re-run skips work whose inputs (content hashes) did not change.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .. import __version__, artifact, integrity
from ..dtypes import precision_dtype
from ..errors import TeaCacheError
from ..files import os_errors
from ..manifest import (
    CONTEXT_GRAPH, FORMAT_VERSION, Criterion, GraphSpec, Manifest, config_fingerprint,
    graph_names, sha256_file, sha256_json,
)
from ..families import Family, find_model_dir, get_family, load_family_module, plain_config, read_config
from ..families import base as family_base
from ..families.model_io import module_dtype
from ..shapes import propagate
from . import verify as V
from .onnx_export import OPSET, export_part, graph_files, io_specs

Log = Callable[[str], None]


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


# --- axes and profiles ----------------------------------------------------------------------
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
        axes[name] = [lo, opt, hi]
    return axes


def _axes(fam: type[Family], config: Mapping[str, Any] | None):
    return fam.axes if config is None else fam.axes_for(config)


def export_point(fam: type[Family], axes: Mapping[str, list[int]],
                 config: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Axis sizes of the example inputs: opt, but at least 2 (torch.export specialises 0/1)."""
    point = {}
    for a in _axes(fam, config):
        v = max(axes[a.name][1], 2)
        point[a.name] = -(-v // a.multiple_of) * a.multiple_of
    return point


def second_point(fam: type[Family], axes: Mapping[str, list[int]], first: Mapping[str, int],
                 config: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Another point inside the profile for the second verification (min where it differs)."""
    point = {}
    for a in _axes(fam, config):
        lo, _, hi = axes[a.name]
        if lo != first[a.name]:
            point[a.name] = lo
        elif first[a.name] + a.multiple_of <= hi:
            point[a.name] = first[a.name] + a.multiple_of
        else:
            point[a.name] = first[a.name]
    return point


def profiles(graphs: Mapping[str, GraphSpec], fam, config, axes, dtype) -> None:
    """min/opt/max shape of every graph input, propagated from the axis ranges."""
    shapes_at = []
    for k in range(3):
        point = {name: rng[k] for name, rng in axes.items()}
        feed = fam.example_inputs(config, point, dtype)
        shapes_at.append(propagate([graphs[g] for g in graph_names(graphs)], {n: t.shape for n, t in feed.items()}))
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
    log: Log = print,
) -> Manifest:
    """Export a transformer (from ``model_dir`` or the in-memory ``model``): a diffusers model,
    or any module whose family ``family_module`` names (``path/file.py:Class``, ``pkg.mod:Class``).

    ``out`` changes in one atomic step (see :mod:`teacache_trt.artifact`): a failed or killed
    export leaves the previous artifact as it was.
    """
    dtype = precision_dtype(precision)
    out = Path(out)
    t_start = time.perf_counter()

    # Validate everything cheap before the (slow) model load: engine flavour first.
    from ..engines.flavours import resolve_flavour

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
    if model is None:
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
            if flavour != "none":
                from ..engines.build import build_in_place

                build_in_place(out, manifest, flavour, force=force, log=log)
        else:
            if model is None:
                model = fam.load_model(src, precision)
            if module_dtype(model) != dtype:
                model = copy.deepcopy(model).to(dtype)  # never convert the caller's model in place
            model = model.eval()
            manifest = _export_staged(fam, model, config, src, variant, precision, dtype, axes_r,
                                      weights_hash, export_key, out, verify, flavour, log, family_module or "")
    log(f"[done] {out} in {time.perf_counter() - t_start:.1f}s")
    return manifest


def _graph_code(fam) -> list[Path]:
    here = Path(__file__).resolve().parent
    return [Path(inspect.getfile(fam)), Path(inspect.getfile(family_base)), here / "onnx_export.py",
            Path(inspect.getfile(propagate))]


def _reusable(out: Path, previous: Manifest | None, export_key: str, force: bool, log: Log) -> bool:
    """The committed graphs are what this export would write, and intact (contents checked)."""
    if force or previous is None or previous.export_key != export_key:
        return False
    try:
        for graph in graph_names(previous.graphs):
            previous.graph_path(out, graph)
    except TeaCacheError as exc:
        log(f"[export] exporting again: {exc}")
        return False
    return True


def _graph_hash(path: Path) -> str:
    return sha256_json({p.name: sha256_file(p) for p in graph_files(path)})


def _export_staged(fam, model, config, src, variant, precision, dtype, axes, weights_hash,
                   export_key, out, verify, flavour, log, family_module) -> Manifest:
    """Export, verify and build in a staging folder; only the complete set becomes ``out``'s
    artifact, in one step, so a failed or killed export loses nothing."""
    import shutil

    from ..engines.trtexec import write_trtexec_files

    staging = artifact.new_staging(out)
    try:
        with os_errors(f"writing the export to {out}"):
            manifest = _export_graphs(fam, model, config, src, variant, precision, dtype, axes,
                                      weights_hash, export_key, staging, verify, log, family_module)
            if flavour != "none":
                from ..engines.build import build_engines

                build_engines(staging, manifest, flavour, {g: staging / manifest.graphs[g].file for g in graph_names(manifest.graphs)},
                              timing_dir=out, force=True, log=log)
            write_trtexec_files(staging, manifest)
            manifest.files.update({p.name: integrity.record(p) for p in sorted(staging.iterdir())
                                   if p.name not in manifest.files})
        artifact.commit_staging(out, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once committed
    return manifest


def _export_graphs(fam, model, config, src, variant, precision, dtype, axes, weights_hash,
                   export_key, out, verify, log, family_module) -> Manifest:
    parts = fam.parts(model, fam.variant(variant))
    point_a = export_point(fam, axes, config)
    feed = fam.example_inputs(config, point_a, dtype)
    dims = fam.input_dims(config)
    graphs: dict[str, GraphSpec] = {}
    pool = dict(feed)
    names = graph_names(parts)
    with torch.no_grad():
        for i, name in enumerate(names, 1):
            part = parts[name]
            if name == "embed":
                signal_shape = _signal_shape(part, pool)
                pool["prev_signal"] = torch.randn(signal_shape, dtype=dtype)
                part_dims = {**dims, "prev_signal": dict(fam.signal_dims)}
            elif name == CONTEXT_GRAPH:  # model inputs only, like the embed
                part_dims = dims
            else:
                part_dims = part.dynamic
            t0 = time.perf_counter()
            path = out / f"{name}.onnx"
            log(f"[export {i}/{len(names)}] {name}.onnx ...")
            export_part(part, pool, part_dims, path)
            inputs, outputs = io_specs(path)
            graphs[name] = GraphSpec(file=path.name, sha256=_graph_hash(path), inputs=inputs, outputs=outputs)
            log(f"[export {i}/{len(names)}] {name}.onnx in {time.perf_counter() - t0:.1f}s "
                f"({path.stat().st_size / 1e6:.1f} MB)")
            pool.update(part.run(pool))
    profiles(graphs, fam, config, axes, dtype)
    v = fam.variants[variant]
    manifest = Manifest(
        family=fam.name, variant=variant, class_name=fam.class_name, precision=precision,
        config=config, config_hash=config_fingerprint(fam.config_of(model)), weights_hash=weights_hash,
        source=str(src), axes=axes, graphs=graphs,
        criterion=Criterion(signal=fam.signal_for(v), coefficients=list(v.coefficients),
                            default_threshold=v.default_threshold, forced=v.forced,
                            cached=list(fam.cached), note=fam.note),
        versions=versions(), export_key=export_key, family_module=family_module,
    )
    if verify:
        for k, point in enumerate((point_a, second_point(fam, axes, point_a, config))):
            log(f"[verify {k + 1}/2] at {point}")
            _verify_at(fam, model, parts, manifest, out, config, point, dtype, precision, seed=k + 1)
    return manifest


def _signal_shape(embed, pool) -> tuple[int, ...]:
    """Shape of the signal at the export point, from one PyTorch run of the embed part."""
    probe = dict(pool)
    # prev_signal only feeds the sums; any broadcastable tensor gives the signal's shape.
    probe["prev_signal"] = torch.zeros(())
    return tuple(embed.run(probe)["signal"].shape)


def _verify_at(fam, model, parts, manifest, out, config, point, dtype, precision, seed) -> None:
    feed = fam.example_inputs(config, point, dtype, seed=seed)
    names = graph_names(manifest.graphs)
    shapes = propagate([manifest.graphs[g] for g in names], {n: t.shape for n, t in feed.items()})
    pool = dict(feed)
    g = torch.Generator().manual_seed(seed)
    pool["prev_signal"] = torch.randn(shapes["prev_signal"], generator=g).to(dtype)
    with torch.no_grad():
        for name in names:
            graph = manifest.graphs[name]
            ref = parts[name].run(pool)
            for o in graph.output_names:
                if tuple(ref[o].shape) != shapes[o]:
                    raise TeaCacheError(
                        f"{name}: output {o!r} has shape {tuple(ref[o].shape)} but the manifest's "
                        f"shape expressions give {shapes[o]}: the export's dynamic dims are wrong"
                    )
            if precision in V.ORT_CPU_PRECISIONS:
                got = V.run_ort(V.ort_session(out / graph.file), pool)
                result = V.check(f"{name} graph at {point}", got, ref, precision)
            else:
                # ONNX Runtime's CPU provider has no bf16 kernels (MatMul, ...): the graphs are
                # checked at build time by TensorRT only; the split check below still runs.
                result = {"graph_verified": False, "reason": f"no {precision} kernels in ONNX Runtime CPU"}
            graph.verification.append({"axes": dict(point), **result})
            pool.update(ref)
        # The split must reproduce the model: composed PyTorch parts against model.forward.
        full = fam.call_model(model, fam.kwargs_from_feed(feed))
        split = V.check(f"split vs {fam.class_name}.forward at {point}", {"output": pool["output"]},
                        {"output": full}, precision)
        manifest.graphs["head"].verification[-1]["split_vs_model_max_abs"] = split["max_abs"]
