"""One part (an nn.Module of named tensors) -> one ONNX file, written atomically."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping

import torch

from ..dtypes import ONNX_ELEM_TYPES
from ..errors import TeaCacheError
from ..families import AUTO, Part
from ..manifest import TensorSpec
from .fusable import gelu_tanh_fusable, rms_norm_as_div
from .prune import prune_split_gemms

OPSET = 18  # dynamo exporter; TorchScript fails on aten::rms_norm (docs/traps.md)
EXTERNAL_DATA_ABOVE = 2 * 1024**3  # protobuf's 2 GB limit


@dataclass
class ExportedGraph:
    """What one export wrote: its files (graph first), I/O specs and where the time went."""

    files: list[Path]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    seconds: dict[str, float] = field(default_factory=dict)  # trace, simplify, save


def _dims(part: Part, dims: Mapping[str, Mapping[int, str]], static: Collection[str] = ()) -> tuple:
    """torch.export dynamic_shapes, one Dim object per axis name shared by all inputs.

    Axes in ``static`` stay at their traced size (a profile of 1:1:1 cannot be traced as a
    dynamic dim: torch.export specialises sizes 0 and 1).
    """
    named: dict[str, torch.export.Dim] = {}
    shapes = []
    for name in part.input_names:
        spec = {}
        for index, axis in dims.get(name, {}).items():
            if axis == AUTO:
                spec[index] = torch.export.Dim.AUTO
            elif axis not in static:
                spec[index] = named.setdefault(axis, torch.export.Dim(axis, min=1))
        shapes.append(spec or None)
    return tuple(shapes)


def dynamic_dims(spec: TensorSpec, axes: Collection[str]) -> dict[int, str]:
    """The dynamic dims of an exported tensor, as a later graph taking it is exported with
    them: a dim named after an axis stays that axis; a derived one (an expression, a name
    torch.export made up, or one left unnamed, which reads as 0) is AUTO."""
    return {i: d if d in axes else AUTO for i, d in enumerate(spec.shape) if not (isinstance(d, int) and d > 0)}


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def simplify(model, input_names, output_names) -> None:
    """Fold what the graph computes from constants, drop what nothing reads, and name the
    graph's inputs and outputs; in place.

    Not onnxscript's full optimizer (``torch.onnx.export(optimize=True)``): its pattern
    rewriter tries every rule at every node and took 122 s of the 210 s export of the
    26.5 M-parameter bench model's block graph, growing faster than the graph, for 4% fewer
    nodes: rewrites ONNX Runtime and TensorRT make themselves when they load a graph.
    Constant folding stays: it also turns the exporter's SplitToSequence / SequenceAt into
    Split, which TensorRT's ONNX parser cannot read.  Then the rows of a linear layer's weight
    that only feed unused chunks go (:mod:`.prune`), and RMS norms and tanh GELUs are spelt
    the way ONNX Runtime fuses them (:mod:`.fusable`).
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as passes
    from onnxscript import optimizer

    optimizer.inline(model)
    optimizer.fold_constants(model, onnx_shape_inference=True)
    # Dead nodes first: the part's module call also computes the chunks the graph never
    # returns (a block's gate and MLP modulation), and while those nodes stand every chunk
    # reads as used and nothing is pruned.
    passes.RemoveUnusedNodesPass()(model)
    prune_split_gemms(model)  # a block's modulation of which the graph reads some chunks
    rms_norm_as_div(model)  # forms ONNX Runtime fuses (one kernel each)
    gelu_tanh_fusable(model)
    ir.passes.Sequential(
        passes.RemoveUnusedNodesPass(),
        passes.RemoveUnusedFunctionsPass(),
        passes.RemoveUnusedOpsetsPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.DeduplicateInitializersPass(),  # small ones only: it never reads the weights
        passes.CommonSubexpressionEliminationPass(),  # the per-block copies of shape arithmetic
        # An input returned as an output (CogVideoX's rotary tables) or one tensor returned
        # under two names (its temb and signal) gets an Identity: one value per I/O name.
        passes.OutputFixPass(),
    )(model)
    for value, name in [*zip(model.graph.inputs, input_names), *zip(model.graph.outputs, output_names)]:
        value.name = name
    passes.NameFixPass()(model)  # inner values that took one of those names are renamed


def export_part(
    part: Part,
    feed: Mapping[str, torch.Tensor],
    dims: Mapping[str, Mapping[int, str]],
    path: Path,
    static: Collection[str] = (),
) -> ExportedGraph:
    """Export ``part`` called on ``feed``; weights go to external data only above 2 GB.

    Raises TeaCacheError naming the graph and the traced shapes when torch.onnx fails.
    """
    path = Path(path)
    args = tuple(feed[n] for n in part.input_names)
    seconds = {}
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        # The exporter prints its own stage banners and warnings (unused axis names, missing
        # torchvision ops); the CLI shows its own progress instead.
        with contextlib.redirect_stdout(log), torch.no_grad(), warnings.catch_warnings(), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                part, args, None, dynamo=True, dynamic_shapes=_dims(part, dims, static),
                opset_version=OPSET, optimize=False,
            )
            seconds["trace"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            simplify(program.model, part.input_names, part.output_names)
            seconds["simplify"] = time.perf_counter() - t0
    except Exception as exc:
        shapes = {n: tuple(t.shape) for n, t in zip(part.input_names, args)}
        raise TeaCacheError(
            f"torch.onnx.export failed for the {path.stem} graph of {type(part.model).__name__} "
            f"traced at input shapes {shapes}: {type(exc).__name__}: {str(exc)[:2000]}. If the "
            f"message names a size guard, choose other axis ranges (--axis NAME=MIN:OPT:MAX; "
            f"tracing uses the smallest sizes >= 2 inside them); otherwise report the model config"
        ) from exc
    inputs = [_spec(v) for v in program.model.graph.inputs]
    outputs = [_spec(v) for v in program.model.graph.outputs]
    size = sum(p.numel() * p.element_size() for p in part.parameters())
    t0 = time.perf_counter()
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # axis-renaming notes, see above
            program.save(str(tmpdir / path.name), external_data=size > EXTERNAL_DATA_ABOVE)
        del program  # its copy of the graph; the weights stay the model's
        files = [path]
        for produced in sorted(tmpdir.iterdir()):  # the .data file first, the graph last
            if produced.name != path.name:
                os.replace(produced, path.parent / produced.name)
                files.append(path.parent / produced.name)
        os.replace(tmpdir / path.name, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    seconds["save"] = time.perf_counter() - t0
    return ExportedGraph(files=files, inputs=inputs, outputs=outputs, seconds=seconds)


def _spec(value) -> TensorSpec:
    """Name, dtype and (symbolic) shape of a graph input or output of the in-memory model."""
    # As the saved file reads back: a dim the exporter left unnamed is 0 (dim_value unset).
    shape = [d if isinstance(d, int) else (d.value if d.value is not None else 0) for d in value.shape]
    return TensorSpec(value.name, ONNX_ELEM_TYPES.get(int(value.dtype), str(value.dtype)), shape)


def graph_files(path: Path) -> list[Path]:
    """The graph file and its external-data files, if any."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    files = {path}
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                files.add(path.parent / entry.value)
    return sorted(files)
