"""Runners: ``infer_into`` writes into the caller's buffers, follows moved tensors and new
contents; every backend gives the same outputs; TensorRT's messages reach Python logging."""
from __future__ import annotations

import logging

import pytest
import torch

from teacache_trt.artifact import Artifact
from teacache_trt.families import get_family
from teacache_trt.manifest import GRAPH_NAMES
from teacache_trt.runtime.backends import make_runner
from teacache_trt.shapes import propagate


def head_feed(ex, seed):
    g = torch.Generator().manual_seed(seed)
    specs = {s.name: s for s in ex.manifest.graphs["head"].inputs}
    shapes = propagate([ex.manifest.graphs[n] for n in GRAPH_NAMES],
                       {n: t.shape for n, t in get_family("flux").example_inputs(
                           ex.manifest.config, ex.spec.POINT, torch.float32).items()})
    return {n: torch.randn(shapes[n], generator=g) for n in specs}, shapes


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_infer_into_follows_new_contents_and_moved_buffers(exported, backend):
    ex = exported("flux")
    parts = get_family("flux").parts(ex.model) if backend == "torch" else None
    runner = make_runner(backend, Artifact(ex.art_dir, ex.manifest), "head", torch.device("cpu"), parts).activate()
    feed, shapes = head_feed(ex, 0)
    want = {k: ex.model.proj_out(ex.model.norm_out(feed["hidden"] + feed["residual"], feed["temb"])).detach()
            for k in ["output"]}
    out = runner.allocate(shapes)
    assert runner.infer_into(feed, out) is out
    assert torch.allclose(out["output"], want["output"], atol=1e-5)
    # Same tensors, new contents (a step writes into the same buffers): the new values are read.
    other, _ = head_feed(ex, 1)
    for name, t in feed.items():
        t.copy_(other[name])
    runner.infer_into(feed, out)
    want2 = ex.model.proj_out(ex.model.norm_out(other["hidden"] + other["residual"], other["temb"])).detach()
    assert torch.allclose(out["output"], want2, atol=1e-5)
    # Other tensors and another output buffer (another context's residual): both followed.
    moved = {n: t.clone() for n, t in head_feed(ex, 2)[0].items()}
    out2 = runner.allocate(shapes)
    kept = out["output"].clone()
    runner.infer_into(moved, out2)
    want3 = ex.model.proj_out(ex.model.norm_out(moved["hidden"] + moved["residual"], moved["temb"])).detach()
    assert torch.allclose(out2["output"], want3, atol=1e-5)
    assert torch.equal(out["output"], kept)  # the first buffer is left alone
    assert torch.allclose(runner.infer(moved)["output"], want3, atol=1e-5)  # the allocating path


def test_tensorrt_messages_go_to_python_logging(caplog):
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed (pip install -e .[test])")
    from teacache_trt.runtime.backends.tensorrt_runner import forwarding_logger

    logger = forwarding_logger(trt)
    assert forwarding_logger(trt) is logger  # one per module: TensorRT keeps a pointer to it
    S = trt.ILogger.Severity
    with caplog.at_level(logging.INFO, logger="teacache_trt.tensorrt"):
        logger.log(S.WARNING, "profile 0 has no opt shape")
        logger.log(S.ERROR, "engine is broken")
        logger.log(S.VERBOSE, "chatter")
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "teacache_trt.tensorrt"]
    assert got == [(logging.WARNING, "profile 0 has no opt shape"), (logging.ERROR, "engine is broken")]
