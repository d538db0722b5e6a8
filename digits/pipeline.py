"""DigitsPipeline: class-conditional sampling from the tiny FLUX transformer, diffusers style.

The denoising loop has the same shape as FluxPipeline's, so the project's
runtime can treat it the same way:

* ``self.scheduler.set_timesteps(num_inference_steps)`` opens every call (the
  TeaCache runtime hooks it to reset its state for a fresh generation);
* classifier-free guidance runs as two separate transformer calls per step,
  inside ``transformer.cache_context("cond")`` / ``("uncond")`` when the
  transformer has one, so a step cache keeps one state per branch;
* ``self.scheduler.step(...)`` advances the latents.

``transformer`` can be anything with FluxTransformer2DModel's forward
signature (a diffusers model or the project's compiled drop-in).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..errors import TeaCacheError
from .conditioning import LabelEmbedder
from .data import (
    IMAGE_SIZE,
    NUM_CHANNELS,
    NUM_CLASSES,
    make_img_ids,
    make_txt_ids,
    pack_tokens,
    unpack_tokens,
)

from .constants import DEFAULT_MODEL_DIR  # noqa: E402 - the bundled weights


@dataclass
class DigitsPipelineOutput(BaseOutput):
    """``images``: tensor (B,1,16,16) in [-1,1] ('pt'), array (B,16,16,1) in [0,1] ('np'),
    list of PIL images ('pil'), or packed tokens (B,64,4) ('latent')."""

    images: object


class DemoPipeline:
    """What the bundled demo pipelines share: moving their modules (``modules``), the dtype they
    run in, and the cache context each CFG branch runs under."""

    modules: tuple[str, ...] = ("transformer",)  # attribute names of the pipeline's modules

    def to(self, device=None, dtype: torch.dtype | None = None):
        # Pass only what is set: diffusers' ModelMixin.to warns whenever a dtype keyword is present.
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if kwargs:
            for name in self.modules:
                module = getattr(self, name)
                if hasattr(module, "to"):
                    module.to(**kwargs)
        return self

    @property
    def dtype(self) -> torch.dtype:
        dt = getattr(self.transformer, "dtype", None)
        return dt if isinstance(dt, torch.dtype) else torch.float32

    @staticmethod
    def model_folder(path, default: Path, what: str) -> Path:
        """``path`` (``default``: the bundled model) once it is seen to hold a model's
        ``transformer/config.json``: a wrong folder is named here, not by the Hub client."""
        folder = Path(path) if path is not None else default
        if not (folder / "transformer" / "config.json").is_file():
            raise TeaCacheError(f"{folder} holds no {what} (no transformer/config.json in it): give a folder "
                                f"written by its training script, or leave the model out for the bundled one")
        return folder

    def _branch(self, name: str):
        """cache_context(name) when the transformer supports it (diffusers CacheMixin, compiled drop-in)."""
        ctx = getattr(self.transformer, "cache_context", None)
        return ctx(name) if ctx is not None else contextlib.nullcontext()


class DigitsPipeline(DemoPipeline):
    modules = ("transformer", "label_embedder")

    def __init__(self, transformer, label_embedder: LabelEmbedder, scheduler=None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.transformer = transformer
        self.label_embedder = label_embedder
        # shift=1.0: at 64 tokens FLUX's resolution-dependent shift would be ~1 anyway.
        self.scheduler = scheduler if scheduler is not None else FlowMatchEulerDiscreteScheduler(shift=1.0)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        torch_dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> "DigitsPipeline":
        """Load transformer/, scheduler/ and the label embedder from ``path`` (default: the bundled model)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

        path = cls.model_folder(path, DEFAULT_MODEL_DIR, "digits model")
        # Weights are stored in fp16; torch_dtype upcasts on load (CPU fp16 matmuls are slow).
        transformer = FluxTransformer2DModel.from_pretrained(path / "transformer", torch_dtype=torch_dtype)
        label_embedder = LabelEmbedder.from_pretrained(path, torch_dtype=torch_dtype)
        if (path / "scheduler").is_dir():
            scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
        else:
            scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
        return cls(transformer.eval(), label_embedder.eval(), scheduler).to(device)

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        path = Path(path)
        self.transformer.save_pretrained(path / "transformer", safe_serialization=True)
        self.label_embedder.save_pretrained(path, dtype=dtype)
        self.scheduler.save_pretrained(path / "scheduler")

    @property
    def device(self) -> torch.device:
        dev = getattr(self.transformer, "device", None)
        if dev is None:
            params = getattr(self.transformer, "parameters", None)
            first = next(iter(params()), None) if params is not None else None
            dev = first.device if first is not None else self.label_embedder.tokens.weight.device
        return torch.device(dev)

    # ------------------------------------------------------------------ pieces of the loop
    def encode_labels(self, labels: torch.Tensor, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        emb_device = self.label_embedder.tokens.weight.device
        enc, pooled = self.label_embedder(labels.to(emb_device))
        return enc.to(device, dtype), pooled.to(device, dtype)

    @staticmethod
    def prepare_latents(batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Gaussian noise drawn on the CPU (same samples on any device), packed to (B, 64, 4) float32."""
        noise = torch.randn((batch_size, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
        return pack_tokens(noise)

    def _predict(self, latents, enc, pooled, timestep, img_ids, txt_ids, dtype) -> torch.Tensor:
        out = self.transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=enc,
            pooled_projections=pooled,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=None,
            return_dict=False,
        )
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        return out.float()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        labels: int | Sequence[int] | torch.Tensor,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ):
        """Generate one 16x16 digit per entry of ``labels`` (each 0..9).

        guidance_scale <= 1 disables classifier-free guidance (one transformer call per step).
        ``seed`` is a shortcut for ``generator=torch.Generator().manual_seed(seed)``.
        ``latents``: optional initial noise, packed (B,64,4) or image-shaped (B,1,16,16).
        """
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise ValueError(f"labels must be a non-empty list of ints in 0..{NUM_CLASSES - 1}")
        if output_type not in ("pt", "np", "pil", "latent"):
            raise ValueError(f"output_type must be 'pt', 'np', 'pil' or 'latent', got {output_type!r}")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)

        batch = labels.shape[0]
        device, dtype = self.device, self.dtype
        do_cfg = guidance_scale > 1.0

        enc, pooled = self.encode_labels(labels, device, dtype)
        if do_cfg:
            null = torch.full_like(labels, self.label_embedder.null_label)
            enc_null, pooled_null = self.encode_labels(null, device, dtype)
        img_ids = make_img_ids().to(device, dtype)
        txt_ids = make_txt_ids(enc.shape[1]).to(device, dtype)

        if latents is None:
            latents = self.prepare_latents(batch, generator)
        elif latents.ndim == 4:
            latents = pack_tokens(latents)
        latents = latents.to(device, torch.float32)  # the scheduler integrates in float32

        # Must open every call: it is the runtime's signal that a new generation starts.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.scheduler.timesteps:
            # Scheduler timesteps are sigma*1000; FLUX takes sigma in [0,1] and scales by 1000 itself.
            timestep = (t / 1000.0).expand(batch).to(device, dtype)
            with self._branch("cond"):
                v = self._predict(latents, enc, pooled, timestep, img_ids, txt_ids, dtype)
            if do_cfg:
                with self._branch("uncond"):
                    v_null = self._predict(latents, enc_null, pooled_null, timestep, img_ids, txt_ids, dtype)
                v = v_null + guidance_scale * (v - v_null)
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]

        if output_type == "latent":
            images = latents
        else:
            images = unpack_tokens(latents.float().cpu()).clamp(-1.0, 1.0)
            if output_type == "np":
                images = to_numpy(images)
            elif output_type == "pil":
                images = to_pil(images)
        if not return_dict:
            return (images,)
        return DigitsPipelineOutput(images=images)


# ---------------------------------------------------------------------- image helpers
def to_numpy(images: torch.Tensor) -> np.ndarray:
    """(B,1,H,W) in [-1,1] -> (B,H,W,1) float32 in [0,1] (diffusers' numpy layout)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1).numpy()


def to_pil(images: torch.Tensor) -> list:
    """(B,1,H,W) in [-1,1] -> list of greyscale PIL images."""
    from PIL import Image

    arr = (to_numpy(images)[..., 0] * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a, mode="L") for a in arr]


TITLE_LINE = 13  # pixels per caption line above a titled grid (PIL's default font at size 11)


def make_grid(images, nrow: int = 10, scale: int = 4, padding: int = 1, title: str | None = None):
    """Tile images ((B,1,H,W) tensor in [-1,1] or list of PIL) into one PIL image, ``nrow`` per row,
    each enlarged ``scale`` times (nearest) with a ``padding``-pixel dark border; ``title``: a
    caption band above them (what the grid shows, so a grid read alone says it)."""
    from PIL import Image, ImageDraw, ImageFont

    pils = images if isinstance(images, (list, tuple)) else to_pil(images)
    if not pils:
        raise ValueError("no images")
    w, h = pils[0].size
    cw, ch = w * scale + padding, h * scale + padding
    cols = min(nrow, len(pils))
    rows = (len(pils) + nrow - 1) // nrow
    width = cols * cw + padding
    font = ImageFont.load_default(size=11)
    lines = _wrap(title, font, width - 4) if title else []
    top = TITLE_LINE * len(lines) + (2 if lines else 0)
    grid = Image.new("L", (width, top + rows * ch + padding), color=40)
    for i, im in enumerate(pils):
        r, c = divmod(i, nrow)
        grid.paste(im.convert("L").resize((w * scale, h * scale), Image.NEAREST),
                   (padding + c * cw, top + padding + r * ch))
    draw = ImageDraw.Draw(grid)
    for k, line in enumerate(lines):
        draw.text((padding + 2, 1 + k * TITLE_LINE), line, fill=255, font=font)
    return grid


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word alone)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def save_grid(images, path: str | os.PathLike, nrow: int = 10, scale: int = 4, padding: int = 1):
    """Save :func:`make_grid` as a PNG; returns the PIL image."""
    grid = make_grid(images, nrow=nrow, scale=scale, padding=padding)
    grid.save(path, format="PNG")
    return grid
