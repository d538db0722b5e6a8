"""A model-agnostic sampling loop over a transformer, for tools that need generations
without a pipeline (bench, calibration of families with no bundled pipeline)."""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import TeaCacheError

LATENT_INPUT = "hidden_states"  # the input every diffusers DiT denoises
TIMESTEP_INPUT = "timestep"


# --- the sampler ------------------------------------------------------------------------
def timesteps_for(dtype: torch.dtype, steps: int) -> list[float | int]:
    """The timestep a pipeline passes at each step, by the graph's timestep dtype.

    Float timesteps are flow-matching sigmas 1 -> 1/steps (FLUX, SD3, HunyuanVideo pass
    sigma, the model scales by 1000); integer ones are DDPM-style 999 -> 0 (CogVideoX).
    """
    if dtype.is_floating_point:
        return [1.0 - i / steps for i in range(steps)]
    if steps == 1:
        return [999]
    return [round(999 - i * 999 / (steps - 1)) for i in range(steps)]


def step_sizes(dtype: torch.dtype, steps: int) -> list[float]:
    """dt of the Euler update ``x += dt * model_output`` at each step."""
    if dtype.is_floating_point:
        sigmas = [1.0 - i / steps for i in range(steps)] + [0.0]
        return [sigmas[i + 1] - sigmas[i] for i in range(steps)]
    # An epsilon-style model: a fixed small step keeps the latents moving like a sampler.
    return [-1.0 / steps] * steps


def timestep_dtype(manifest) -> torch.dtype:
    from .backends.base import TORCH_DTYPES

    specs = {s.name: s for s in manifest.graphs["embed"].inputs}
    for name in (LATENT_INPUT, TIMESTEP_INPUT):
        if name not in specs:
            raise TeaCacheError(
                f"the {manifest.family} embed graph has no {name!r} input (inputs: {sorted(specs)}); "
                f"the sampler updates {LATENT_INPUT!r} and moves {TIMESTEP_INPUT!r}"
            )
    return TORCH_DTYPES[specs[TIMESTEP_INPUT].dtype]


@torch.no_grad()
def sample(transformer, inputs: Mapping[str, torch.Tensor], t_dtype: torch.dtype, steps: int) -> torch.Tensor:
    """One generation of ``steps`` Euler steps from ``inputs``; returns the final latents."""
    transformer.reset(steps)
    kwargs = {k: v.to(transformer.device, copy=True) for k, v in inputs.items()}
    template = kwargs[TIMESTEP_INPUT]
    latents = kwargs[LATENT_INPUT]
    for t, dt in zip(timesteps_for(t_dtype, steps), step_sizes(t_dtype, steps)):
        kwargs[TIMESTEP_INPUT] = torch.full_like(template, t)
        kwargs[LATENT_INPUT] = latents
        out = transformer(return_dict=False, **kwargs)[0]
        latents = latents + dt * out.to(latents.dtype)
    return latents
