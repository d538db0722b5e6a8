"""Attention in query chunks: a verification copy of a graph whose attention fits in RAM.

A model whose positional table fixes its size (ConsisID, CogVideoX-2b, CogVideoX-5b-I2V) is
verified at that size: ConsisID's 17,776 tokens.  The exporter writes scaled dot-product
attention as MatMul(Q, K^T) -> Softmax -> MatMul(., V), and ONNX Runtime's CPU provider
materialises the whole score tensor: batch x heads x queries x keys, 121 GB for ConsisID at
batch 2.  PyTorch's fused attention needs no such buffer, so the PyTorch side fits and the
graph side does not.

Softmax normalises each query row on its own, so attention computed for a slice of the
queries gives exactly those rows of the result.  For verification only, :func:`plan` finds
every such attention whose scores would exceed a byte budget at the shapes being verified,
and :func:`rewrite` replaces it in an in-memory copy of the graph by a Loop over query chunks
of a fixed number of rows (the queries padded to a whole number of chunks, the padding rows
sliced off the result).  A Loop runs its iterations one after another, so only one chunk's
scores are alive at a time, whatever order the runtime picks for the rest of the graph.  The
shipped graph file is never written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import TeaCacheError
from ..shapes import bind, eval_dim

# Ops between the two MatMuls that work on each query row alone, with their other inputs
# broadcast along the query axis: slicing the rows before them slices their output.
ROW_WISE = {"Softmax", "Mul", "Div", "Add", "Sub", "Cast"}
ITEMSIZE = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8}


@dataclass
class Attention:
    """One MatMul(A, B) -> row-wise chain -> MatMul(P, V) in the graph (node indices)."""

    nodes: list[int]  # first MatMul, the chain (Softmax included), last MatMul
    queries: str  # A: (..., rows, depth); rows are the queries
    values: str  # V: (..., keys, depth)
    output: str  # the last MatMul's output
    rank: int


@dataclass
class Chunked:
    attention: Attention
    rows: int  # queries per chunk
    largest_bytes: int  # the whole score tensor at the largest verified shape


def _dims(value) -> list[int | str] | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.dim_param:
            dims.append(d.dim_param)
        else:
            return None  # a dim the exporter could not name: its size is not known here
    return dims


def find_attention(graph: onnx.GraphProto) -> list[Attention]:
    """Every MatMul -> [row-wise ops] -> Softmax over the last axis -> [row-wise ops] -> MatMul
    whose intermediate values feed nothing else, with known ranks for A and V."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    shapes = {v.name: _dims(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    inits = {t.name: list(t.dims) for t in graph.initializer}
    found = []
    for i, node in enumerate(graph.node):
        if node.op_type != "Softmax":
            continue
        chain = _walk(graph, i, producer, consumers, graph_outputs)
        if chain is None:
            continue
        first, last = graph.node[chain[0]], graph.node[chain[-1]]
        a, v = shapes.get(first.input[0]), shapes.get(last.input[1])
        if a is None or v is None or len(a) < 2 or len(a) != len(v):
            continue
        if not all(_broadcasts_over_rows(graph.node[k], chain, graph, shapes, inits) for k in chain[1:-1]):
            continue
        if not _softmax_on_keys(node, len(a)):
            continue
        found.append(Attention(chain, first.input[0], last.input[1], last.output[0], len(a)))
    return found


def _walk(graph, softmax: int, producer, consumers, graph_outputs) -> list[int] | None:
    """[first MatMul, chain..., last MatMul] around ``softmax``, or None."""
    up = [softmax]
    while graph.node[up[0]].op_type != "MatMul":
        node = graph.node[up[0]]
        if node.op_type not in ROW_WISE or not node.input or node.input[0] not in producer:
            return None
        up.insert(0, producer[node.input[0]])
    down = [softmax]
    while graph.node[down[-1]].op_type != "MatMul":
        out = graph.node[down[-1]].output[0]
        users = consumers.get(out, [])
        if len(users) != 1 or out in graph_outputs:
            return None
        nxt = graph.node[users[0]]
        if nxt.op_type == "MatMul":
            if nxt.input[0] != out:
                return None
        elif nxt.op_type not in ROW_WISE or nxt.input[0] != out:
            return None
        down.append(users[0])
    chain = up + down[1:]
    # The scores and everything after them until the last MatMul feed only the next node.
    for k in chain[:-1]:
        out = graph.node[k].output[0]
        if out in graph_outputs or len(consumers.get(out, [])) != 1 or len(graph.node[k].output) != 1:
            return None
    return chain


def _softmax_on_keys(node, rank: int) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    return axis in (-1, rank - 1)


def _broadcasts_over_rows(node, chain, graph, shapes, inits) -> bool:
    """The node's inputs other than the chain's value do not vary along the query axis."""
    if node.op_type in ("Softmax", "Cast"):
        return True
    for name in node.input[1:]:
        dims = inits.get(name)
        if dims is None:
            dims = shapes.get(name)
        if dims is None:
            return False
        if len(dims) >= 2 and dims[-2] != 1:
            return False
    return True


def plan(model: onnx.ModelProto, feeds: Sequence[Mapping[str, Sequence[int]]], budget: int) -> list[Chunked]:
    """The attentions whose score tensor exceeds ``budget`` bytes at any of ``feeds`` (input
    shapes by name), each with the rows per chunk that keeps one chunk's scores within it."""
    graph = model.graph
    shapes = {v.name: _dims(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    envs = []
    for feed in feeds:
        env: dict[str, int] = {}
        for value in graph.input:
            declared = shapes.get(value.name)
            if declared is not None and value.name in feed:
                bind(declared, list(feed[value.name]), env, f"input {value.name!r}")
        envs.append(env)
    itemsize = {v.name: ITEMSIZE.get(v.type.tensor_type.elem_type, 4) for v in graph.value_info}
    chunked = []
    for att in find_attention(graph):
        softmax = next(graph.node[k] for k in att.nodes if graph.node[k].op_type == "Softmax")
        size = itemsize.get(softmax.output[0], 4)
        try:
            sizes = [_score_size(shapes[att.queries], shapes[att.values], env) for env in envs]
        except TeaCacheError:
            continue  # a dim no input binds: this attention's size is not known here
        row_bytes = max(per_row for per_row, _ in sizes) * size
        score_bytes = max(per_row * rows for per_row, rows in sizes) * size
        if score_bytes > budget:
            chunked.append(Chunked(att, max(1, budget // row_bytes), score_bytes))
    return chunked


def _score_size(queries, values, env) -> tuple[int, int]:
    """(scores per query row, query rows): A is (..., rows, depth), V (..., keys, depth)."""
    a = [eval_dim(d, env) for d in queries]
    keys = eval_dim(values[-2], env)
    return int(np.prod(a[:-2], dtype=np.int64)) * keys, a[-2]


def rewrite(model: onnx.ModelProto, chunks: Sequence[Chunked]) -> None:
    """Replace each planned attention by a Loop over query chunks, in place."""
    graph = model.graph
    taken = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer} \
        | {v.name for v in graph.input}
    elem_types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    replace: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    dropped: set[str] = set()
    for k, chunk in enumerate(chunks):
        att = chunk.attention
        prefix = f"chunked_attention_{k}"
        while any(name.startswith(prefix) for name in taken):
            prefix += "_"
        nodes = [graph.node[i] for i in att.nodes]
        # The chunks' dtype: the attention output's, else its queries' (a MatMul keeps the dtype).
        elem = elem_types.get(att.output) or elem_types.get(att.queries) or TensorProto.FLOAT
        replace[att.nodes[-1]] = _loop_nodes(nodes, att, chunk.rows, elem, prefix)
        removed.update(att.nodes)
        dropped.update(n.output[0] for n in nodes[:-1])
    new_nodes = []
    for i, node in enumerate(graph.node):
        if i in replace:
            new_nodes.extend(replace[i])
        elif i not in removed:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    keep = [v for v in graph.value_info if v.name not in dropped]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _const(name: str, values, dtype=np.int64) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, dtype=dtype), name))


def _loop_nodes(nodes: list[onnx.NodeProto], att: Attention, rows: int, elem: int, p: str) -> list[onnx.NodeProto]:
    """Nodes computing ``att.output`` query chunk by query chunk (see the module doc)."""
    r, q = att.rank, att.queries
    out = [
        _const(f"{p}_rows", [rows]),
        _const(f"{p}_rows_minus_1", [rows - 1]),
        _const(f"{p}_zero", [0]),
        _const(f"{p}_minus_1", [-1]),
        _const(f"{p}_row_axis", [-2]),
        _const(f"{p}_scalar", [], dtype=np.int64),  # Reshape target of the trip count: a scalar
        helper.make_node("Shape", [q], [f"{p}_n"], start=-2, end=-1),
        helper.make_node("Add", [f"{p}_n", f"{p}_rows_minus_1"], [f"{p}_n_up"]),
        helper.make_node("Div", [f"{p}_n_up", f"{p}_rows"], [f"{p}_chunks"]),
        helper.make_node("Mul", [f"{p}_chunks", f"{p}_rows"], [f"{p}_padded"]),
        helper.make_node("Sub", [f"{p}_padded", f"{p}_n"], [f"{p}_pad"]),
        helper.make_node("Concat", [f"{p}_zero", f"{p}_pad"], [f"{p}_pads"], axis=0),
        helper.make_node("Pad", [q, f"{p}_pads", "", f"{p}_row_axis"], [f"{p}_queries"]),
        helper.make_node("Reshape", [f"{p}_chunks", f"{p}_scalar"], [f"{p}_trips"]),
    ]
    # One chunk: rows [i*rows, (i+1)*rows) of the padded queries through the original nodes.
    body = [
        _const(f"{p}_b_rows", [rows]),
        _const(f"{p}_b_axis", [-2]),
        # The iteration number is a scalar; times the (1,) rows it is the (1,) start Slice takes.
        helper.make_node("Mul", [f"{p}_iter", f"{p}_b_rows"], [f"{p}_start"]),
        helper.make_node("Add", [f"{p}_start", f"{p}_b_rows"], [f"{p}_end"]),
        helper.make_node("Slice", [f"{p}_queries", f"{p}_start", f"{p}_end", f"{p}_b_axis"], [f"{p}_q"]),
    ]
    for j, node in enumerate(nodes):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{p}_{j}_{node.name}"
        copy.input[0] = f"{p}_q" if j == 0 else f"{p}_{j - 1}_out"  # the chain runs through input 0
        copy.output[0] = f"{p}_{j}_out"
        body.append(copy)
    body += [helper.make_node("Identity", [f"{p}_cond_in"], [f"{p}_cond_out"])]
    graph = helper.make_graph(
        body, f"{p}_body",
        [helper.make_tensor_value_info(f"{p}_iter", TensorProto.INT64, []),
         helper.make_tensor_value_info(f"{p}_cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(f"{p}_cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(f"{p}_{len(nodes) - 1}_out", elem, None)],
    )
    # The stacked chunks (chunks, ..., rows, depth) -> (..., chunks * rows, depth) -> the first n rows.
    perm = list(range(1, r - 1)) + [0, r - 1, r]
    out += [
        helper.make_node("Loop", [f"{p}_trips", ""], [f"{p}_stacked"], body=graph),
        helper.make_node("Transpose", [f"{p}_stacked"], [f"{p}_moved"], perm=perm),
        helper.make_node("Shape", [f"{p}_moved"], [f"{p}_lead"], start=0, end=r - 2),
        helper.make_node("Shape", [f"{p}_moved"], [f"{p}_depth"], start=-1),
        helper.make_node("Concat", [f"{p}_lead", f"{p}_minus_1", f"{p}_depth"], [f"{p}_merged_shape"], axis=0),
        helper.make_node("Reshape", [f"{p}_moved", f"{p}_merged_shape"], [f"{p}_merged"]),
        helper.make_node("Slice", [f"{p}_merged", f"{p}_zero", f"{p}_n", f"{p}_row_axis"], [att.output]),
    ]
    return out
