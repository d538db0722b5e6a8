"""MovingDigitsPipeline: class- and motion-conditional clips from the bundled Wan transformer,
sampled the way diffusers' ``WanPipeline`` samples:

* ``self.scheduler.set_timesteps(num_inference_steps)`` opens every call (the TeaCache
  runtime follows it to start a fresh generation);
* classifier-free guidance runs as two transformer calls per step, the prompt inside
  ``transformer.cache_context("cond")`` and the null prompt inside ``("uncond")``, with
  ``timestep = t.expand(batch)`` (the scheduler's sigma * 1000), so each branch keeps its
  own TeaCache state;
* ``self.scheduler.step(...)`` advances the latents;
* the transformer reads the latents with the clips' box track appended as one more channel
  (``data.with_track``: where each frame's digit lies, from the direction and speed), in both
  branches, as ``WanImageToVideoPipeline`` appends its condition channels.

``transformer`` is anything with WanTransformer3DModel's forward signature: the diffusers
model or the project's compiled drop-in (``teacache_trt.enable(pipe, ART)``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..digits.pipeline import DemoPipeline
from ..errors import TeaCacheError
from .checks import check_conditions
from .conditioning import PromptEmbedder
from .constants import (
    DEFAULT_GUIDANCE,
    DEFAULT_MODEL_DIR,
    DEFAULT_STEPS,
    DIRECTION_NAMES,
    LATENT_CHANNELS,
    LATENT_SIZE,
    MAX_FRAMES,
    SPEEDS,
)
from .data import box_track, to_pixels, velocity, with_track

SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler")
OUTPUT_TYPES = ("pt", "np", "pil", "latent")


@dataclass
class MovingDigitsPipelineOutput(BaseOutput):
    """``frames``: (B,1,F,32,32) in [-1,1] ('pt'), uint8 (B,F,32,32) ('np'), one list of PIL
    frames per clip ('pil'), or latents (B,16,F,8,8) ('latent')."""

    frames: object


class MovingDigitsPipeline(DemoPipeline):
    modules = ("transformer", "prompt_embedder")

    def __init__(self, transformer, prompt_embedder: PromptEmbedder, scheduler=None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.transformer = transformer
        self.prompt_embedder = prompt_embedder
        self.scheduler = scheduler if scheduler is not None else FlowMatchEulerDiscreteScheduler(shift=1.0)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, torch_dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "MovingDigitsPipeline":
        """transformer/, scheduler/ and the prompt embedder from ``path`` (default: the bundled model)."""
        import diffusers

        path = cls.model_folder(path, DEFAULT_MODEL_DIR, "moving-digits model")
        # Weights are stored in fp16; torch_dtype upcasts on load (CPU fp16 matmuls are slow).
        transformer = diffusers.WanTransformer3DModel.from_pretrained(path / "transformer", torch_dtype=torch_dtype)
        embedder = PromptEmbedder.from_pretrained(path, torch_dtype=torch_dtype)
        return cls(transformer.eval(), embedder, load_scheduler(path / "scheduler")).to(device)

    @property
    def device(self) -> torch.device:
        dev = getattr(self.transformer, "device", None)
        return torch.device(dev) if dev is not None else self.prompt_embedder.digit.weight.device

    # ------------------------------------------------------------------ pieces of the loop
    def encode_prompt(self, digits, directions, speeds, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, negative_prompt_embeds), each (B, 3, text_dim)."""
        d = torch.as_tensor([int(x) for x in digits])
        r = torch.as_tensor([DIRECTION_NAMES.index(x) for x in directions])
        s = torch.as_tensor([SPEEDS.index(int(x)) for x in speeds])
        cond = self.prompt_embedder(d, r, s)
        uncond = self.prompt_embedder.null_prompt(len(d))
        return cond.to(device, dtype), uncond.to(device, dtype)

    @staticmethod
    def prepare_latents(batch_size: int, num_frames: int, generator=None) -> torch.Tensor:
        """Gaussian noise (B, 16, F, 8, 8) drawn on the CPU (the same on any device); a list of
        generators gives each clip its own."""
        shape = (LATENT_CHANNELS, num_frames, LATENT_SIZE, LATENT_SIZE)
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch_size:
                raise TeaCacheError(f"{len(generator)} generators for {batch_size} clips: give one per clip")
            return torch.stack([torch.randn(shape, generator=g) for g in generator])
        return torch.randn((batch_size, *shape), generator=generator)

    def _predict(self, latents, track, timestep, embeds, dtype) -> torch.Tensor:
        out = self.transformer(hidden_states=with_track(latents, track).to(dtype), timestep=timestep,
                               encoder_hidden_states=embeds, return_dict=False)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        return out.float()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        digits: int | Sequence[int],
        directions: str | Sequence[str] = "E",
        speeds: int | Sequence[int] = 1,
        num_frames: int = MAX_FRAMES,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator=None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ):
        """One clip per digit; a single direction or speed applies to every clip.

        guidance_scale <= 1 turns classifier-free guidance off (one transformer call per step).
        """
        digits = [digits] if isinstance(digits, (int, np.integer)) else list(digits)
        directions = [directions] * len(digits) if isinstance(directions, str) else list(directions)
        speeds = [speeds] * len(digits) if isinstance(speeds, (int, np.integer)) else list(speeds)
        check_conditions(digits, directions, speeds, num_frames)
        if output_type not in OUTPUT_TYPES:
            raise TeaCacheError(f"output_type {output_type!r} is not one of {OUTPUT_TYPES}")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)

        batch = len(digits)
        device, dtype = self.device, self.dtype
        do_cfg = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(digits, directions, speeds, device, dtype)
        if latents is None:
            latents = self.prepare_latents(batch, num_frames, generator)
        expected = (batch, LATENT_CHANNELS, num_frames, LATENT_SIZE, LATENT_SIZE)
        if tuple(latents.shape) != expected:
            raise TeaCacheError(f"latents have shape {tuple(latents.shape)}; this call needs {expected}")
        latents = latents.to(device, torch.float32)  # the scheduler integrates in float32
        track = box_track([velocity(d, int(s)) for d, s in zip(directions, speeds)], num_frames).to(device)

        # Must open every call: it is the runtime's signal that a new generation starts.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.scheduler.timesteps:
            timestep = t.expand(batch)
            with self._branch("cond"):
                v = self._predict(latents, track, timestep, prompt_embeds, dtype)
            if do_cfg:
                with self._branch("uncond"):
                    v_uncond = self._predict(latents, track, timestep, negative_prompt_embeds, dtype)
                v = v_uncond + guidance_scale * (v - v_uncond)
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]

        if output_type == "latent":
            frames = latents
        else:
            frames = to_pixels(latents.float().cpu()).clamp(-1.0, 1.0)
            if output_type == "np":
                frames = to_uint8(frames)
            elif output_type == "pil":
                frames = to_pil(frames)
        return MovingDigitsPipelineOutput(frames=frames) if return_dict else (frames,)


def load_scheduler(folder: Path):
    """The scheduler saved in ``folder`` (FlowMatchEuler or UniPC, as Wan uses), else FlowMatchEuler."""
    import json

    import diffusers

    config = Path(folder) / "scheduler_config.json"
    if not config.is_file():
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    name = json.loads(config.read_text()).get("_class_name")
    if name not in SCHEDULERS:
        raise TeaCacheError(f"{config} names the scheduler {name!r}: this pipeline runs {' or '.join(SCHEDULERS)}")
    return getattr(diffusers, name).from_pretrained(folder)


# ---------------------------------------------------------------------- frame helpers
def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(B,1,F,H,W) in [-1,1] -> uint8 (B,F,H,W)."""
    x = (frames.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5
    return x[:, 0].round().to(torch.uint8).numpy()


def to_pil(frames: torch.Tensor) -> list[list]:
    """(B,1,F,H,W) in [-1,1] -> per clip, a list of greyscale PIL frames."""
    from PIL import Image

    return [[Image.fromarray(f) for f in clip] for clip in to_uint8(frames)]


def filmstrip(frames: torch.Tensor, scale: int = 3, padding: int = 1):
    """Clips (B,1,F,H,W) in [-1,1] as one PIL image: a row of frames per clip."""
    from PIL import Image

    arr = to_uint8(frames)
    b, f, h, w = arr.shape
    cw, ch = w * scale + padding, h * scale + padding
    sheet = Image.new("L", (f * cw + padding, b * ch + padding), color=60)
    for i in range(b):
        for j in range(f):
            tile = Image.fromarray(arr[i, j]).resize((w * scale, h * scale), Image.NEAREST)
            sheet.paste(tile, (padding + j * cw, padding + i * ch))
    return sheet
