"""One part (an nn.Module of named tensors) -> one ONNX file, written atomically."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Mapping

import torch

from ..dtypes import ONNX_ELEM_TYPES
from ..errors import TeaCacheError
from ..families import AUTO, Part
from ..manifest import TensorSpec

OPSET = 18  # dynamo exporter; TorchScript fails on aten::rms_norm (DESIGN §7)
EXTERNAL_DATA_ABOVE = 2 * 1024**3  # protobuf's 2 GB limit


def _dims(part: Part, dims: Mapping[str, Mapping[int, str]]) -> tuple:
    """torch.export dynamic_shapes, one Dim object per axis name shared by all inputs."""
    named: dict[str, torch.export.Dim] = {}
    shapes = []
    for name in part.input_names:
        spec = {}
        for index, axis in dims.get(name, {}).items():
            if axis == AUTO:
                spec[index] = torch.export.Dim.AUTO
            else:
                spec[index] = named.setdefault(axis, torch.export.Dim(axis, min=1))
        shapes.append(spec or None)
    return tuple(shapes)


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_part(
    part: Part,
    feed: Mapping[str, torch.Tensor],
    dims: Mapping[str, Mapping[int, str]],
    path: Path,
) -> None:
    """Export ``part`` called on ``feed``; weights go to external data only above 2 GB."""
    path = Path(path)
    args = tuple(feed[n] for n in part.input_names)
    log = io.StringIO()
    try:
        # The exporter prints its own stage banners and warnings (unused axis names, missing
        # torchvision ops); the CLI shows its own progress instead.
        with contextlib.redirect_stdout(log), torch.no_grad(), warnings.catch_warnings(), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                part, args, None, dynamo=True, dynamic_shapes=_dims(part, dims),
                input_names=list(part.input_names), output_names=list(part.output_names),
                opset_version=OPSET, optimize=True,
            )
    except Exception as exc:
        raise TeaCacheError(
            f"torch.onnx.export failed for the {path.stem} graph of {type(part.model).__name__}: "
            f"{type(exc).__name__}: {str(exc)[:2000]}"
        ) from exc
    size = sum(p.numel() * p.element_size() for p in part.parameters())
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # axis-renaming notes, see above
            program.save(str(tmpdir / path.name), external_data=size > EXTERNAL_DATA_ABOVE)
        for produced in sorted(tmpdir.iterdir()):  # the .data file first, the graph last
            if produced.name != path.name:
                os.replace(produced, path.parent / produced.name)
        os.replace(tmpdir / path.name, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def io_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Names, dtypes and (symbolic) shapes of an ONNX graph's inputs and outputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        return TensorSpec(value.name, ONNX_ELEM_TYPES.get(t.elem_type, str(t.elem_type)), shape)

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


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
