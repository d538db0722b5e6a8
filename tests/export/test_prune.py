"""prune_split_gemms: a linear layer split into chunks keeps the rows of the chunks read."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from teacache_trt.export.prune import prune_split_gemms

ort = pytest.importorskip("onnxruntime")


def _model(read: list[int], parts: int = 4, share_weight: bool = False) -> ir.Model:
    """x (2, 8) -> Gemm (transB, 8 -> 4*parts) -> Split into ``parts`` -> chunk k + 1 for k in read."""
    rng = np.random.default_rng(0)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 8]))
    inits = []
    for name, array in (("w", rng.standard_normal((4 * parts, 8), dtype=np.float32)),
                        ("b", rng.standard_normal(4 * parts, dtype=np.float32))):
        inits.append(ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(array.shape),
                              const_value=ir.tensor(array, name=name)))
    w, b = inits
    gemm = ir.node("Gemm", [x, w, b], attributes={"transB": 1}, name="gemm")
    split = ir.node("Split", [gemm.outputs[0]], attributes={"axis": 1, "num_outputs": parts}, num_outputs=parts,
                    name="split")
    nodes = [gemm, split]
    outputs = []
    for k in read:
        add = ir.node("Add", [split.outputs[k], split.outputs[k]], name=f"add{k}")
        add.outputs[0].name = f"out{k}"
        add.outputs[0].type, add.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([2, 4])
        nodes.append(add)
        outputs.append(add.outputs[0])
    if share_weight:  # the weight read by a second node: left whole
        other = ir.node("MatMul", [x, ir.node("Transpose", [w], num_outputs=1).outputs[0]], name="other")
        nodes += [other.inputs[1].producer(), other]
        other.outputs[0].name = "other"
        other.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        outputs.append(other.outputs[0])
    graph = ir.Graph([x], outputs, nodes=nodes, initializers=inits, opset_imports={"": 18}, name="g")
    return ir.Model(graph, ir_version=10)


def _run(model: ir.Model) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.arange(16, dtype=np.float32).reshape(2, 8) / 7
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))


@pytest.mark.parametrize("read, rows", [([1], 4), ([0, 1], 8), ([1, 2], 8), ([2, 3], 8)])
def test_keeps_the_rows_of_the_chunks_read(read, rows):
    model = _model(read)
    before = _run(model)
    assert prune_split_gemms(model) == 1
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert gemm.inputs[1].const_value.numpy().shape == (rows, 8)
    assert gemm.inputs[2].const_value.numpy().shape == (rows,)
    assert sorted(model.graph.initializers) == sorted(v.name for v in gemm.inputs[1:])  # the whole ones gone
    after = _run(model)
    assert list(after) == list(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.parametrize("read, share", [([0, 3], False), ([0, 1, 2, 3], False), ([1], True)])
def test_leaves_whole_what_needs_every_row(read, share):
    model = _model(read, share_weight=share)
    before = _run(model)
    assert prune_split_gemms(model) == 0
    assert next(n for n in model.graph if n.op_type == "Gemm").inputs[1].const_value.numpy().shape == (16, 8)
    after = _run(model)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_the_exporter_prunes_block_0s_modulation_in_a_flux_embed(exported):
    """Through export itself: the embed reads shift and scale, two of the six chunks of the
    first block's norm1 linear layer, and keeps only their rows."""
    import onnx

    flux = exported("flux")
    graph = onnx.load(flux.graph("embed"), load_external_data=False)
    shapes = {t.name: tuple(t.dims) for t in graph.graph.initializer}
    width = flux.model.inner_dim
    (weight,) = [n.input[1] for n in graph.graph.node
                 if n.op_type == "Gemm" and "transformer_blocks.0.norm1.linear" in n.input[1]]
    assert shapes[weight] == (2 * width, width)
