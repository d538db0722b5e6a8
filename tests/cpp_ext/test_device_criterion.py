"""The criterion kernel (cpp_ext CUDA build) against the Python reference, on a GPU.

Marked ``gpu``: skipped with a reason without CUDA (``--require-gpu`` turns the skip into a
failure; scripts/gpu_check.sh passes it).  The last test runs everywhere else: without a GPU the
device criterion refuses clearly.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from teacache_trt import TeaCacheError
from teacache_trt.families import ForcedSteps
from teacache_trt.runtime import criterion
from teacache_trt.runtime.experimental import device_criterion
from teacache_trt.runtime.experimental.device_criterion import DeviceCriterion

FLUX = (498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861)


def random_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    g = int(rng.integers(1, 5))
    b = int(rng.integers(g, 9))
    groups = np.concatenate([np.arange(g), rng.integers(0, g, b - g)]).astype(np.int32)
    coefficients = FLUX if seed % 3 == 0 else tuple(rng.normal(0, 50, int(rng.integers(1, 6))))
    steps = int(rng.integers(2, 25))
    diff = rng.exponential(0.1, (steps, b)).astype(np.float32)
    diff[rng.random((steps, b)) < 0.05] = 0.0
    prev = rng.uniform(0.5, 1.5, (steps, b)).astype(np.float32)
    prev[rng.random((steps, b)) < 0.03] = 0.0  # a zero previous sum: no ratio, compute
    return dict(
        groups=groups, g=g, steps=steps, diff=diff, prev=prev, coefficients=coefficients,
        thresholds=[0.0 if rng.random() < 0.2 else float(rng.uniform(0.01, 0.8)) for _ in range(g)],
        forced=ForcedSteps(int(rng.integers(0, 3)), bool(rng.random() < 0.7), float(rng.choice([0.0, 0.1, 0.3]))),
        clamp=bool(rng.random() < 0.3), must=(rng.random((steps, g)) < 0.1).astype(np.uint8),
        accumulate="abs" if seed % 2 else "raw", eps=float(rng.choice([0.0, 1e-3, 0.5])),
        elements=int(rng.integers(1, 64)),
    )


def host_generation(c: dict):
    """The Python reference over the whole generation: flags, rels, acc after each call."""
    acc = np.zeros(c["g"])
    out = []
    f = c["forced"]
    rule = criterion.Rule(c["coefficients"], c["thresholds"], c["groups"], c["g"], c["steps"],
                          elements_per_row=c["elements"], forced_first=f.first, forced_last=f.last,
                          forced_fraction=f.first_fraction, accumulate=c["accumulate"], eps=c["eps"],
                          clamp=c["clamp"])
    for step in range(c["steps"]):
        sums = (c["diff"][step], c["prev"][step]) if step > 0 else (None, None)
        flags, rel = criterion.decide_groups(rule, *sums, acc, step, c["must"][step], backend="python")
        out.append((flags, rel, acc.copy()))
    return out


def bits(a) -> list[int]:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64).tolist()


def make(c: dict, device) -> DeviceCriterion:
    return DeviceCriterion(c["groups"], c["g"], c["thresholds"], c["coefficients"], c["forced"], c["clamp"],
                           c["steps"], device, accumulate=c["accumulate"], eps=c["eps"], elements_per_row=c["elements"])


@pytest.mark.gpu
def test_device_decisions_equal_the_reference(device_kernel):
    for seed in range(200):  # random generations: groups, thresholds, polynomials, forced rules
        c = random_case(seed)
        dc = make(c, device_kernel)
        diff, prev = (torch.from_numpy(c[k]).to(device_kernel) for k in ("diff", "prev"))
        must = torch.from_numpy(c["must"]).to(device_kernel)
        expected = host_generation(c)
        for step, (flags, rel, acc) in enumerate(expected):
            dc.must_compute.copy_(must[step])
            any_compute = dc.decide(diff[step], prev[step])
            where = f"seed {seed} step {step}"
            assert dc.compute_flags.cpu().tolist() == flags.tolist(), where
            assert bits(dc.rel.cpu()) == bits(rel) and bits(dc.acc.cpu()) == bits(acc), where
            assert int(any_compute.item()) == int(flags.any()), where
        hist_flags, _, calls = dc.history()
        assert calls == c["steps"] and hist_flags.tolist() == [f.tolist() for f, _, _ in expected], seed


@pytest.mark.gpu
def test_no_host_sync_per_step(device_kernel):
    c = random_case(1)
    dc = make(c, device_kernel)
    diff, prev = (torch.from_numpy(c[k]).to(device_kernel) for k in ("diff", "prev"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call on this path raises
    try:
        for step in range(c["steps"]):
            dc.decide(diff[step], prev[step])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert dc.history()[2] == c["steps"]


@pytest.mark.gpu
def test_a_captured_graph_replays_a_whole_generation(device_kernel):
    c = random_case(4)
    c["must"][:] = 0  # must_compute is not re-fed between replays here
    dc = make(c, device_kernel)
    diff, prev = (torch.from_numpy(c[k]).to(device_kernel) for k in ("diff", "prev"))
    static_diff, static_prev = diff[0].clone(), prev[0].clone()
    side = torch.cuda.Stream(device_kernel)
    side.wait_stream(torch.cuda.current_stream(device_kernel))
    with torch.cuda.stream(side):  # warm-up outside capture, as torch's graph docs ask
        dc.decide(static_diff, static_prev)
    torch.cuda.current_stream(device_kernel).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dc.decide(static_diff, static_prev)
    dc.reset(c["steps"])
    for step in range(c["steps"]):
        static_diff.copy_(diff[step])
        static_prev.copy_(prev[step])
        graph.replay()  # the kernel advances its own step counter
    flags, rel, calls = dc.history()
    expected = host_generation(c)
    assert calls == c["steps"]
    assert flags.tolist() == [f.tolist() for f, _, _ in expected]
    assert bits(rel.reshape(-1)) == bits(np.concatenate([r for _, r, _ in expected]))


@pytest.mark.gpu
def test_launches_on_the_given_stream(device_kernel):
    c = random_case(7)
    dc = make(c, device_kernel)
    side = torch.cuda.Stream(device_kernel)
    with torch.cuda.stream(side):
        diff, prev = (torch.from_numpy(c[k]).to(device_kernel, non_blocking=True) for k in ("diff", "prev"))
        dc.must_compute.copy_(torch.from_numpy(c["must"][0]).to(device_kernel))
        dc.decide(diff[0], prev[0], stream=side)
    side.synchronize()
    flags, _, _ = host_generation(c)[0]
    assert dc.compute_flags.cpu().tolist() == flags.tolist()


@pytest.mark.skipif(device_criterion.available(), reason="CUDA and the kernel are present: the gpu tests cover it")
def test_refuses_clearly_without_cuda_or_kernel():
    with pytest.raises(TeaCacheError, match="device criterion (is unavailable|needs a CUDA device)"):
        DeviceCriterion([0], 1, [0.1], FLUX, ForcedSteps(), False, 10, "cuda")


built = pytest.mark.skipif(device_criterion._KERNEL is None, reason=device_criterion.KERNEL_STATUS)


@built
def test_kernel_library_matches_the_python_mirror_and_refuses_another_layout(monkeypatch):
    assert device_criterion._KERNEL.teacache_criterion_abi() == criterion.ABI_VERSION
    monkeypatch.setattr(device_criterion, "_layout", lambda: [0])
    with pytest.warns(RuntimeWarning, match=f"ABI version {criterion.ABI_VERSION} .*layout.*rebuild"):
        lib, status = device_criterion._load_kernel()
    assert lib is None and "stays on the host" in status


@built
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the launch would succeed")
def test_kernel_library_reports_a_failed_launch_as_a_string():
    import ctypes

    error = device_criterion._KERNEL.teacache_launch_decide(ctypes.byref(device_criterion.DecideArgs()), 0)
    assert isinstance(error, bytes) and error  # e.g. b"CUDA driver version is insufficient ..."
