"""Verification of fixed-size models: attention too large for RAM runs in query chunks, in a
copy of the graph, with the same numbers; the shipped graph stays byte for byte as exported.

A real fixed-size model (ConsisID at 17,776 tokens) would take 20 minutes; the tiny
CogVideoX-2b layout (a sin-cos table fixes its sizes) with a scores budget of a few hundred
bytes takes the same path in seconds.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

from models import cogvideox as M
from teacache_trt.artifact import Artifact
from teacache_trt.export import chunked_attention as C
from teacache_trt.export import verify as V
from teacache_trt.errors import TeaCacheError
from teacache_trt.export.exporter import export_model
from teacache_trt.export.onnx_export import graph_files
from teacache_trt.integrity import sha256_file, sha256_json

# The tiny 2b's attention: batch x 2 heads x 23 tokens (18 video + 5 text) x 23 keys x 4 bytes.
BUDGET = 2 * 2 * 23 * 4 * 5  # the scores of 5 query rows at batch 2, of 10 rows at batch 1


@pytest.fixture(scope="module")
def chunked_export(tmp_path_factory):
    art = tmp_path_factory.mktemp("chunked") / "art"
    logs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(V, "CHUNK_SCORES_BYTES", BUDGET)
        manifest = export_model(None, art, model=M.make_model_2b(), axes=M.AXES_2B, build="none",
                                log=logs.append)
    return art, manifest, logs


def _feeds(manifest, graph: str, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random inputs at the shapes the graph was verified at (its fixed profile, batch 2 and 1)."""
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape[key]).astype(np.float32)
             for name, shape in manifest.graphs[graph].profile.items()} for key in ("max", "min")]


def test_export_verifies_the_blocks_in_query_chunks_and_ships_the_graph_unchanged(chunked_export):
    art, manifest, logs = chunked_export
    rows = manifest.graphs["blocks"].verification
    # The smallest verified shape (batch 1) runs, its 23 query rows in chunks of 10; batch 2
    # is left out (at full size ONNX Runtime would hold every intermediate of it).
    assert [r["axes"]["batch"] for r in rows] == [2, 1]
    assert rows[0]["graph_verified"] is False and rows[0]["method"].startswith("not run: its attention")
    assert rows[1]["graph_verified"] and rows[1]["max_abs"] <= 1e-5, rows
    assert rows[1]["method"] == "ONNX Runtime CPU vs the PyTorch part, attention in query chunks of 10 rows"
    assert any(line.startswith("[verify] blocks graph: its attention scores reach") and "chunks of 10 rows" in line
               for line in logs), logs
    # The split is still checked at both points, and embed and head (no attention) ran as they are.
    assert all(r["split_vs_model_max_abs"] <= 1e-5 for r in manifest.graphs["head"].verification)
    for graph in ("embed", "head"):
        rows = manifest.graphs[graph].verification
        assert all(r["graph_verified"] and r["method"] == V.PLAIN_METHOD for r in rows), rows
    # The shipped files are the ones hashed right after the export, before verification ran,
    # and the verification copy is gone.
    folder = Artifact(art, manifest).graph_path("blocks").parent
    for name, graph in manifest.graphs.items():
        files = graph_files(folder / graph.file)
        assert sha256_json({p.name: sha256_file(p) for p in files}) == graph.sha256, name
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [g.file for g in manifest.graphs.values()] + [f"{g}.trtexec.sh" for g in manifest.graphs])
    assert "Loop" not in {n.op_type for n in onnx.load(str(folder / "blocks.onnx")).graph.node}


def test_the_chunked_copy_gives_the_numbers_of_the_shipped_graph(chunked_export):
    import onnxruntime as ort

    art, manifest, _ = chunked_export
    path = Artifact(art, manifest).graph_path("blocks")
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = onnx.load(str(path))
    feeds = _feeds(manifest, "blocks")
    chunks = C.plan(model, [{n: f.shape for n, f in feed.items()} for feed in feeds], BUDGET)
    assert [c.rows for c in chunks] == [5]  # at batch 2, the larger of the two shapes
    C.rewrite(model, chunks)
    assert [n.op_type for n in model.graph.node].count("Loop") == 1
    chunked = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in feeds:  # 23 rows: 5 chunks of 5 at batch 2 and at batch 1, the last one padded
        want, got = plain.run(None, feed)[0], chunked.run(None, feed)[0]
        assert np.abs(want).max() > 0.1
        assert np.abs(got - want).max() <= 1e-6


def test_scores_over_budget_at_batch_2_only_run_the_batch_1_point_as_shipped(chunked_export, monkeypatch):
    import onnxruntime as ort
    import torch

    art, manifest, _ = chunked_export
    path = Artifact(art, manifest).graph_path("blocks")
    feeds = [{n: torch.from_numpy(a) for n, a in feed.items()} for feed in _feeds(manifest, "blocks", seed=1)]
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [{o.name: torch.from_numpy(v) for o, v in zip(plain.get_outputs(), plain.run(None, {
        n: t.numpy() for n, t in feed.items()}))} for feed in feeds]
    # Batch 1's whole scores (2 heads x 23 x 23 x 4 bytes) fit; batch 2's are twice that.
    monkeypatch.setattr(V, "CHUNK_SCORES_BYTES", 2 * 23 * 23 * 4)
    logs = []
    rows = V.verify_graph(path, "blocks", [{"batch": 2}, {"batch": 1}], feeds, refs, "fp32", logs.append)
    assert rows[0]["graph_verified"] is False and "smallest verified shape only ({'batch': 1})" in rows[0]["method"]
    assert rows[1] == {"graph_verified": True, "method": V.PLAIN_METHOD, "max_abs": 0.0, "max_rel": 0.0,
                       "worst_output": None}
    assert logs and "runs at {'batch': 1} only (not at {'batch': 2})" in logs[0] and "chunks" not in logs[0]
    # A wrong reference still fails the point that ran.
    bad = [{n: t + 1 for n, t in ref.items()} for ref in refs]
    with pytest.raises(TeaCacheError, match="blocks graph at {'batch': 1}"):
        V.verify_graph(path, "blocks", [{"batch": 2}, {"batch": 1}], feeds, bad, "fp32")
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def _attention(mask_shape=None):
    """softmax(q k^T * s [+ mask]) v over (1, 2, L, 4), as the exporter writes it."""
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),
             helper.make_node("Mul", ["scores", "s"], ["scaled"])]
    value_info = [helper.make_tensor_value_info(n, T.FLOAT, [1, 2, "L", "L"]) for n in ("scores", "scaled")]
    last, inputs = "scaled", [helper.make_tensor_value_info(n, T.FLOAT, [1, 2, "L", 4]) for n in "qkv"]
    if mask_shape is not None:
        nodes.append(helper.make_node("Add", ["scaled", "mask"], ["masked"]))
        value_info.append(helper.make_tensor_value_info("masked", T.FLOAT, [1, 2, "L", "L"]))
        inputs.append(helper.make_tensor_value_info("mask", T.FLOAT, mask_shape))
        last = "masked"
    nodes += [helper.make_node("Softmax", [last], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["o"])]
    value_info.append(helper.make_tensor_value_info("p", T.FLOAT, [1, 2, "L", "L"]))
    graph = helper.make_graph(nodes, "attention", inputs, [helper.make_tensor_value_info("o", T.FLOAT, [1, 2, "L", 4])],
                              [helper.make_tensor("s", T.FLOAT, [], [0.5])], value_info=value_info)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_only_attention_over_budget_whose_other_inputs_do_not_vary_by_query_is_chunked():
    import onnxruntime as ort

    shapes = {"q": (1, 2, 10, 4), "k": (1, 2, 10, 4), "v": (1, 2, 10, 4)}
    full = 2 * 10 * 10 * 4  # bytes of scores
    assert C.plan(_attention(), [shapes], full) == []  # fits: the graph runs as it is
    (chunk,) = C.plan(_attention(), [shapes], full - 1)
    assert chunk.rows == 9 and chunk.largest_bytes == full
    # A mask broadcast over the queries (key padding) is sliced with them: chunked, same numbers.
    key_mask = _attention([1, 1, 1, "L"])
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    feed["mask"] = np.where(rng.random((1, 1, 1, 10)) < 0.3, -1e4, 0).astype(np.float32)
    want = ort.InferenceSession(key_mask.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    chunks = C.plan(key_mask, [{**shapes, "mask": (1, 1, 1, 10)}], 2 * 3 * 10 * 4)
    assert [c.rows for c in chunks] == [3]
    C.rewrite(key_mask, chunks)
    got = ort.InferenceSession(key_mask.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert np.abs(got - want).max() <= 1e-6
    # A mask with a row per query would need slicing too: left alone.
    assert C.plan(_attention([1, 1, "L", "L"]), [{**shapes, "mask": (1, 1, 10, 10)}], 8) == []
