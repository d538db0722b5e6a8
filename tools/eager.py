"""Upstream's way of running TeaCache, for ``teacache-bench --eager``: eager PyTorch, per step.

Upstream's TeaCache replaces the diffusers model's ``forward``: every call runs the input
embedders, the text embedding and the rotary tables, the signal and its relative change (read
back to the host), then either the block stack or the cached residual, then the output norm
and projection, all in eager PyTorch.  This loop does the same with the model's own submodules,
through the family's parts (context, embed, blocks, head): every part every step, the blocks on
the steps it is told to compute.  Given the compiled run's computed steps it makes the same
schedule, so the wall ratio of the two measures the runtime, not the decisions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..manifest import CONTEXT_GRAPH
from .sampling import LATENT_INPUT, TIMESTEP_INPUT


@dataclass
class EagerRecord:
    wall: float
    final: Any  # torch.Tensor, the final latents on the CPU in float32


class EagerLoop:
    """The bench's Euler loop over the family's PyTorch parts (see the module doc)."""

    def __init__(self, parts: Mapping[str, torch.nn.Module], family, clock, inputs, steps: int):
        self.parts = parts
        self.family = family
        self.clock = clock
        self.inputs = inputs
        self.steps = steps
        self.timesteps = family.timestep_scale.timesteps(steps)
        self.dts = family.timestep_scale.step_sizes(steps)
        self.device = next(iter(parts["blocks"].parameters())).device

    @torch.no_grad()  # as diffusers pipelines run their transformer
    def run(self, computed_steps) -> EagerRecord:
        parts, clock = self.parts, self.clock
        computed = set(computed_steps)
        kwargs = {k: v.to(self.device, copy=True) for k, v in self.inputs.items()}
        template, latents = kwargs[TIMESTEP_INPUT], kwargs[LATENT_INPUT]
        prev = torch.zeros(())  # a 0-d prev_signal: the embed part's "nothing to compare yet"
        residual: dict[str, torch.Tensor] = {}
        start = clock.now()
        for i in range(self.steps):
            kwargs[TIMESTEP_INPUT] = torch.full_like(template, self.timesteps[i])
            kwargs[LATENT_INPUT] = latents
            pool = self.family.feed_from_kwargs(dict(kwargs))
            if CONTEXT_GRAPH in parts:
                pool.update(parts[CONTEXT_GRAPH].run(pool))
            pool["prev_signal"] = prev
            pool.update(parts["embed"].run(pool))
            # upstream reads the relative change back to the host every step to decide
            rel = float(pool["l1_diff"].sum()) / max(float(pool["l1_prev"].sum()), 1e-30)
            assert rel == rel or i == 0, "the signal's change is NaN"
            prev = pool["signal"]
            if i in computed or not residual:
                residual = parts["blocks"].run(pool)
            pool.update(residual)
            out = parts["head"].run(pool)["output"]
            latents = latents + self.dts[i] * out.to(latents.dtype)
        wall = clock.now() - start
        return EagerRecord(wall=wall, final=latents.float().cpu())
