"""A model-agnostic sampling loop over a transformer, for tools that need generations
without a pipeline (bench, calibration of families with no bundled pipeline).

The timestep values and Euler step sizes come from the family's ``TimestepScale`` (how the
model reads its timestep), so every family sees the timesteps its pipelines pass.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import TeaCacheError
from ..families import TimestepScale

LATENT_INPUT = "hidden_states"  # the input every diffusers DiT denoises
TIMESTEP_INPUT = "timestep"


def check_sampling_inputs(manifest) -> None:
    """The sampler updates ``hidden_states`` and moves ``timestep``: both must be graph inputs."""
    names = {s.name for s in manifest.graphs["embed"].inputs}
    for name in (LATENT_INPUT, TIMESTEP_INPUT):
        if name not in names:
            raise TeaCacheError(
                f"the {manifest.family} embed graph has no {name!r} input (inputs: {sorted(names)}); "
                f"the sampler updates {LATENT_INPUT!r} and moves {TIMESTEP_INPUT!r}"
            )


@torch.no_grad()
def sample(transformer, inputs: Mapping[str, torch.Tensor], scale: TimestepScale, steps: int) -> torch.Tensor:
    """One generation of ``steps`` Euler steps from ``inputs``; returns the final latents."""
    transformer.reset(steps)
    kwargs = {k: v.to(transformer.device, copy=True) for k, v in inputs.items()}
    template = kwargs[TIMESTEP_INPUT]
    latents = kwargs[LATENT_INPUT]
    for t, dt in zip(scale.timesteps(steps), scale.step_sizes(steps)):
        kwargs[TIMESTEP_INPUT] = torch.full_like(template, t)
        kwargs[LATENT_INPUT] = latents
        out = transformer(return_dict=False, **kwargs)[0]
        latents = latents + dt * out.to(latents.dtype)
    return latents
