"""The external-data files an ONNX graph names: a graph over 2 GB keeps its weights beside it,
and every such file must be inside the artifact's content folder and recorded by the manifest."""
from __future__ import annotations

import mmap
import os
from pathlib import Path

from .errors import TeaCacheError
from .manifest import REEXPORT


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
