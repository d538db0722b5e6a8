"""RMS norms and tanh GELUs as exported, rewritten into the forms ONNX Runtime fuses."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from teacache_trt.export.fusable import gelu_tanh_fusable, rms_norm_as_div
from teacache_trt.export.onnx_export import simplify

ort = pytest.importorskip("onnxruntime")
import onnx_ir as ir  # noqa: E402  (after the skip: onnx_ir comes with the exporter)


class NormAndGelu(torch.nn.Module):
    """An RMS norm as diffusers' RMSNorm computes it (rsqrt), then a feed-forward with a tanh
    GELU (whose output is not the graph's: ONNX Runtime fuses no node that makes a graph output)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.rand(16) + 0.5)
        self.proj = torch.nn.Linear(16, 32)
        self.out = torch.nn.Linear(32, 16)

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        return self.out(torch.nn.functional.gelu(self.proj(x), approximate="tanh"))


def _export(module, x):
    with torch.no_grad():
        program = torch.onnx.export(module, (x,), None, dynamo=True, opset_version=18, optimize=False)
    return program.model


def _session(model):
    return ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"])


def _fused_ops(model) -> collections.Counter:
    """The op types ONNX Runtime runs after its own graph optimisations."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = f"{tmp}/opt.onnx"
        ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), opts,
                             providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def test_rewrites_feed_onnx_runtime_fusions_and_keep_the_values():
    module, x = NormAndGelu().eval(), torch.randn(2, 5, 16)
    model = _export(module, x)
    simplify(model, ["x"], ["y"])  # the exporter's own path, rewrites included
    ops = _fused_ops(model)
    assert ops["SimplifiedLayerNormalization"] == 1 and ops["FastGelu"] == 1, ops
    assert not ops["Tanh"] and not ops["Reciprocal"]
    (y,) = _session(model).run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, module(x).numpy(), rtol=1e-5, atol=1e-6)


def test_without_the_rewrites_onnx_runtime_runs_the_chains():
    """What the rewrites are for: the exporter's own spelling is not fused."""
    module, x = NormAndGelu().eval(), torch.randn(2, 5, 16)
    model = _export(module, x)
    ops = _fused_ops(model)
    assert not ops["SimplifiedLayerNormalization"] and not ops["FastGelu"], ops
    from onnxscript import optimizer

    optimizer.fold_constants(model)  # the constants as values the rewrites can read
    assert rms_norm_as_div(model) == 1 and gelu_tanh_fusable(model) == 1
    assert rms_norm_as_div(model) == 0 and gelu_tanh_fusable(model) == 0  # nothing left to match


class NotQuite(torch.nn.Module):
    """Look-alikes that must stay as they are: a norm by another tensor's rms, a GELU-like
    curve with another cube's input."""

    def forward(self, x, y):
        a = y * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        b = x * (0.5 * (1 + torch.tanh(0.79788456 * (x + 0.044715 * y.pow(3)))))
        return a, b


def test_look_alikes_are_left_alone():
    module, x, y = NotQuite(), torch.randn(3, 8), torch.randn(3, 8)
    with torch.no_grad():
        model = torch.onnx.export(module, (x, y), None, dynamo=True, opset_version=18, optimize=False).model
    from onnxscript import optimizer

    optimizer.fold_constants(model)
    assert rms_norm_as_div(model) == 0
    assert gelu_tanh_fusable(model) == 0
