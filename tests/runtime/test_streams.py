"""The transformer on a CUDA device: its own stream, handed over from and back to the caller's,
no synchronize on the per-step path, and sample mode deciding as on the CPU.

Marked ``gpu``: skipped with a reason without CUDA (scripts/gpu_check.sh runs them with
``--require-gpu``, where a skip fails).
"""
from __future__ import annotations

import copy

import pytest
import torch

import teacache_trt
from teacache_trt.families import get_family

pytestmark = pytest.mark.gpu
STEPS = 8
THRESHOLDS = [0.05, 0.6, 2.0]


def prompts(ex, device, n=3):
    fam = get_family("flux")
    one = [fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), {**ex.spec.POINT, "batch": 1},
                                                   torch.float32, seed=s)) for s in range(n)]
    return {k: (v if k.endswith("_ids") else torch.cat([p[k] for p in one])).to(device) for k, v in one[0].items()}


def loop(t, kwargs, before_call=None):
    t.reset(STEPS)
    kwargs = dict(kwargs)
    latents, outs = kwargs["hidden_states"], []
    for i in range(STEPS):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / STEPS, device=latents.device)
        kwargs["hidden_states"] = latents if before_call is None else before_call(latents)
        outs.append(t(return_dict=False, **kwargs)[0])
        latents = latents - outs[-1] / STEPS
    return outs


def cuda_torch_transformer(ex, cuda, **kwargs):
    model = copy.deepcopy(ex.model).to(cuda)  # the session's model stays on the CPU
    return teacache_trt.load_transformer(ex.art_dir, backend="torch", device=cuda, model=model, **kwargs)


def test_sample_mode_on_cuda_decides_as_on_the_cpu(cuda, exported):
    ex = exported("flux")
    cpu = teacache_trt.load_transformer(ex.art_dir, decisions="sample")
    gpu = cuda_torch_transformer(ex, cuda, decisions="sample")
    for t in (cpu, gpu):
        t.sample_thresholds = THRESHOLDS
    want = loop(cpu, prompts(ex, "cpu"))
    got = loop(gpu, prompts(ex, cuda))
    assert gpu.stats["samples"] == cpu.stats["samples"]
    for g, w in zip(got, want):  # TF32 and kernel choice: close, not equal
        assert (g.cpu() - w).abs().max().item() <= 2e-2 * max(1.0, w.abs().max().item())


def test_work_queued_on_the_callers_stream_is_waited_for(cuda, exported):
    """Inputs produced by slow kernels on a side stream, then the call from that stream."""
    ex = exported("flux")
    t = cuda_torch_transformer(ex, cuda, threshold=0.6)
    kwargs = prompts(ex, cuda, 1)
    want = [o.clone() for o in loop(t, kwargs)]
    side = torch.cuda.Stream()
    big = torch.randn(4096, 4096, device=cuda)

    def slow_copy(latents):
        # Queue seconds-scale work before the latents exist on the side stream: a transformer
        # that did not wait for the caller's stream would read stale memory.
        x = torch.empty_like(latents)
        for _ in range(20):
            big @ big
        x.copy_(latents)
        return x

    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = loop(t, kwargs, before_call=slow_copy)
        got = [o.clone() for o in got]  # used on the caller's stream, as a pipeline would
    torch.cuda.current_stream().wait_stream(side)
    for g, w in zip(got, want):  # stale inputs would be far off; kernels may differ by rounding
        assert torch.allclose(g, w, atol=1e-5)


def test_no_synchronize_and_one_event_wait_per_step(cuda, exported, monkeypatch):
    """The host decision reads two sums per step through one event wait; nothing else waits for
    the device (torch's sync debug mode raises on any implicit sync, e.g. .item() or .cpu())."""
    ex = exported("flux")
    t = cuda_torch_transformer(ex, cuda, threshold=0.6, decisions="sample")
    kwargs = prompts(ex, cuda)
    t.sample_thresholds = THRESHOLDS
    loop(t, kwargs)  # builds the plan and the residual buffers
    counts = {"synchronize": 0, "event_waits": 0}

    def forbidden(*args, **kwargs):
        counts["synchronize"] += 1

    event_wait = torch.cuda.Event.synchronize

    def counted_event_wait(self):
        counts["event_waits"] += 1
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)  # this wait is the one the test allows
        try:
            event_wait(self)
        finally:
            torch.cuda.set_sync_debug_mode(mode)

    monkeypatch.setattr(torch.cuda, "synchronize", forbidden)
    monkeypatch.setattr(torch.cuda.Stream, "synchronize", forbidden)
    monkeypatch.setattr(torch.cuda.Event, "synchronize", counted_event_wait)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loop(t, kwargs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert counts == {"synchronize": 0, "event_waits": STEPS - 1}  # step 0 has nothing to compare
    assert any(len(s["skipped_steps"]) for s in t.stats["samples"])  # sub-batches ran too
