"""A plain-PyTorch TeaCache reference, independent of the runtime's code.

It runs the *original* diffusers model through its own ``forward`` and uses hooks only:
one captures the signal, one the hidden state entering the first block, one the hidden
state leaving the last block.  A skipped step makes every block hand its inputs through
and adds the cached residual where the blocks' output would enter the head.  Modules that
run between the blocks and belong to the cached part (ConsisID's face cross-attention) are
listed as ``also_skipped`` pairs (module, what it returns when skipped).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch


class TeaCacheReference:
    """One decision state: one per CFG branch where a pipeline calls the branches separately.

    Call k of N always computes when ``k < forced_first``, ``k < forced_fraction * N`` (a float
    compare: the first ceil(fraction * N)), or ``forced_last and k == N - 1`` (upstream's rule
    for most models is 1 and True; Wan's ret-steps mode is 5 and False; HiDream's 0, False, 0.1).
    ``d = mean|s - s_prev| / (mean|s_prev| + eps)``; ``accumulate="abs"`` adds ``|poly(d)|``.
    """

    def __init__(self, model, hooks: dict, coefficients, threshold: float, num_steps: int,
                 forced_first: int = 1, forced_last: bool = True, *, forced_fraction: float = 0.0,
                 accumulate: str = "raw", eps: float = 0.0):
        self.model, self.h = model, hooks
        self.rescale = np.poly1d(coefficients)
        self.threshold, self.num_steps = threshold, num_steps
        self.forced_first, self.forced_last = forced_first, forced_last
        self.forced_fraction, self.accumulate, self.eps = forced_fraction, accumulate, eps
        self.cnt, self.acc, self.prev, self.residual = 0, 0.0, None, None
        self.computed: list[int] = []

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        h, seen = self.h, {}
        skip_flag = {"skip": False}

        def grab_signal(mod, args, out):
            seen.setdefault("signal", out[0] if isinstance(out, tuple) else out)

        def grab_in(mod, args, kw):
            seen.setdefault("hidden_in", h["hidden_in"](args, kw))

        def pass_through(mod, args, kw, out):
            return h["identity"](args, kw) if skip_flag["skip"] else out

        # after_blocks is the first module the residual does not cover (Mochi and LTX-Video
        # cache through norm_out, so theirs is proj_out): on a skip its input is replaced by
        # the blocks' input plus the cached residual, whatever ran in between.
        def at_head(mod, args, kw):
            if skip_flag["skip"]:
                return (seen["hidden_in"] + self.residual, *args[1:]), kw
            self.residual = args[0] - seen["hidden_in"]
            return None

        # Decide before the blocks run: the signal's hook fires first, inside block 0 or
        # before it, so the decision is made in that hook.
        def decide(mod, args, out):
            grab_signal(mod, args, out)
            if "decided" in seen:
                return
            seen["decided"] = True
            s = seen["signal"].float()
            forced = (self.cnt < self.forced_first or self.cnt < self.forced_fraction * self.num_steps
                      or self.threshold <= 0 or (self.forced_last and self.cnt == self.num_steps - 1))
            if forced:
                calc = True
            else:
                d = ((s - self.prev).abs().mean() / (self.prev.abs().mean() + self.eps)).item()
                y = self.rescale(d)
                self.acc += abs(y) if self.accumulate == "abs" else y
                calc = self.acc >= self.threshold
            if calc:
                self.acc = 0.0
                self.computed.append(self.cnt)
            skip_flag["skip"] = not calc
            self.prev = s

        handles = [h["signal_module"].register_forward_hook(decide),
                   h["blocks"][0].register_forward_pre_hook(grab_in, with_kwargs=True),
                   h["after_blocks"].register_forward_pre_hook(at_head, with_kwargs=True)]
        handles += [b.register_forward_hook(pass_through, with_kwargs=True) for b in h["blocks"]]
        for module, skipped in h.get("also_skipped", ()):
            handles.append(module.register_forward_hook(
                lambda mod, args, kw, out, skipped=skipped: skipped(args, kw) if skip_flag["skip"] else out,
                with_kwargs=True))
        try:
            out = self.model(**kwargs)
            out = out if isinstance(out, torch.Tensor) else out[0]  # a diffusers output or a tensor
        finally:
            for handle in handles:
                handle.remove()
        self.cnt += 1
        return out


class ReferenceTransformer(torch.nn.Module):
    """The original model under the reference, in a pipeline's place of its transformer: one
    reference state per ``cache_context`` name (one unnamed state for pipelines without)."""

    def __init__(self, model, hooks, coefficients, threshold, num_steps, forced_first=1, forced_last=True,
                 **knobs):
        super().__init__()
        self.model = model
        self.args = (hooks, coefficients, threshold, num_steps, forced_first, forced_last)
        self.knobs = knobs  # forced_fraction, accumulate, eps
        self.refs: dict[str | None, TeaCacheReference] = {}
        self._name = None

    config = property(lambda self: self.model.config)
    dtype = property(lambda self: self.model.dtype)
    device = property(lambda self: self.model.device)

    @contextlib.contextmanager
    def cache_context(self, name, **_):
        self._name = name
        try:
            yield
        finally:
            self._name = None

    def forward(self, return_dict=False, **kwargs):
        ref = self.refs.get(self._name)
        if ref is None:
            ref = self.refs[self._name] = TeaCacheReference(self.model, *self.args, **self.knobs)
        return (ref(**kwargs),)

    def computed(self) -> dict:
        return {name: ref.computed for name, ref in self.refs.items()}
