"""Rows of a weight that feed nothing: dropped from the graph at export.

A DiT block's modulation is one linear layer whose output is cut into chunks
(``emb.chunk(6, dim=1)``: shift, scale and gate of attention and MLP).  An embed graph
that computes a block's modulated input as its signal reads two of the six chunks; the
exported graph still multiplies by the whole weight and splits, and ONNX Runtime does not
remove the dead columns.  On the benchmark FLUX model that one 256 x 1536 Gemm was the
embed graph's largest node (72 us of 450 us back to back, 0.75 ms of 2.7 ms right after a
computed step, when its 1.5 MB are out of the caches); with the used third of its rows it
reads 0.5 MB.
"""
from __future__ import annotations

import numpy as np


def _chunked_gemm(split, graph):
    """(gemm, chunk size) when ``split`` cuts the feature axis of a Gemm's output into equal
    chunks and that Gemm's weight (transposed, as ``nn.Linear`` exports) and bias are constants
    that nothing else reads; else None."""
    source = split.inputs[0]
    gemm = source.producer() if source is not None else None
    if gemm is None or gemm.op_type != "Gemm" or gemm.domain not in ("", "ai.onnx") or len(source.uses()) != 1:
        return None
    attrs = {name: attr.value for name, attr in gemm.attributes.items()}
    if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0 or source in graph.outputs:
        return None
    if len(split.inputs) > 1 and split.inputs[1] is not None:
        return None  # explicit split sizes: leave it
    axis = split.attributes["axis"].value if "axis" in split.attributes else 0
    parts = split.attributes["num_outputs"].value if "num_outputs" in split.attributes else None
    if axis not in (1, -1) or parts is None or parts != len(split.outputs):
        return None
    weights = gemm.inputs[1:3]
    if any(w is None or w.const_value is None or not w.is_initializer() or len(w.uses()) != 1 for w in weights):
        return None
    if len(weights) < 2 or weights[0].shape is None or len(weights[0].shape) != 2:
        return None
    rows = weights[0].shape[0]
    if not isinstance(rows, int) or rows % parts:
        return None
    return gemm, rows // parts


def prune_split_gemms(model) -> int:
    """Cut every Gemm whose output is split into equal chunks, some of them unused, down to the
    rows of the used chunks (first to last used: one contiguous block); in place.  Returns how
    many were cut.  The kept columns are computed from the same rows as before."""
    import onnx_ir as ir

    graph = model.graph
    cut = 0
    for split in list(graph):
        if split.op_type != "Split" or split.domain not in ("", "ai.onnx"):
            continue
        if any(out in graph.outputs for out in split.outputs):
            continue  # a graph output keeps its name: leave it
        used = [i for i, out in enumerate(split.outputs) if out.uses()]
        if not used or len(used) == len(split.outputs):
            continue
        found = _chunked_gemm(split, graph)
        if found is None:
            continue
        gemm, chunk = found
        first, last = used[0], used[-1] + 1
        if last - first == len(split.outputs):
            continue  # the first and the last chunk are read: every row is
        lo, hi = first * chunk, last * chunk
        weight, bias = gemm.inputs[1], gemm.inputs[2]
        for index, value in ((1, weight), (2, bias)):
            kept = np.ascontiguousarray(value.const_value.numpy()[lo:hi])
            name = f"{value.name}.rows_{lo}_{hi}"
            new = ir.Value(name=name, shape=ir.Shape(kept.shape), type=value.type,
                           const_value=ir.tensor(kept, name=name))
            graph.register_initializer(new)
            gemm.replace_input_with(index, new)
            graph.initializers.pop(value.name)
        out = gemm.outputs[0]
        if out.shape is not None:
            out.shape = ir.Shape([*out.shape[:-1], hi - lo])
        kept = split.outputs[first:last]
        smaller = ir.node("Split", [out], attributes={"axis": 1, "num_outputs": last - first},
                          outputs=[ir.Value(name=f"{v.name}.kept", type=v.type, shape=v.shape) for v in kept],
                          name=f"{split.name}.rows_{lo}_{hi}")
        graph.insert_after(split, smaller)
        for old, new in zip(kept, smaller.outputs):
            old.replace_all_uses_with(new)
        graph.remove(split, safe=True)
        cut += 1
    return cut
