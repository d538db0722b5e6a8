"""Calibration generations through a diffusers pipeline: ``teacache-calibrate ART_DIR --pipeline
PIPELINE_DIR``.

The artifact's compiled transformer takes the place of one of the pipeline's transformers (its
``expert``: ``transformer``, or ``transformer_2`` for the low-noise expert of a two-expert
pipeline such as Wan2.2 A14B), and the pipeline's own ``__call__`` runs the generations: the
calibrated transformer sees the prompts, latents, guidance and timesteps it will see when
rendering.  An expert sees only its own steps (the pipeline switches at ``boundary_ratio``; the
other expert runs in PyTorch), so its coefficients or ratios are fitted on those steps alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..dtypes import PRECISIONS
from ..errors import TeaCacheError
from ..runtime.api import EXPERTS, expert_steps, follow_scheduler
from .drivers import Generate

EXPERT_SUFFIX = {"-high": "transformer", "-low": "transformer_2"}  # Wan2.2 A14B variant names


def default_expert(variant: str) -> str:
    """The pipeline component an artifact of ``variant`` replaces: ``transformer_2`` for a
    low-noise expert's variant, else ``transformer``."""
    return next((e for suffix, e in EXPERT_SUFFIX.items() if variant.endswith(suffix)), "transformer")


def parse_call_args(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pipeline arguments, VALUE read as JSON (else a string)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise TeaCacheError(f"--pipeline-arg {item!r} is not KEY=VALUE (e.g. height=480, num_frames=81)")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


class PipelineCalibration:
    """Generations of ``steps`` steps through ``pipe`` with the calibrated transformer as
    ``expert``; ``context_steps`` is the number of calls each of its cache contexts makes."""

    def __init__(self, pipe, expert: str, steps: int, prompts: Sequence[Mapping[str, Any]],
                 call_args: Mapping[str, Any] | None = None):
        if expert not in EXPERTS:
            raise TeaCacheError(f"--expert {expert!r} is not one of {EXPERTS}")
        if expert == "transformer_2" and not hasattr(pipe, "transformer_2"):
            raise TeaCacheError(f"{type(pipe).__name__} has no transformer_2: --expert transformer_2 is for "
                                f"two-expert pipelines (Wan2.2 A14B)")
        if not prompts:
            raise TeaCacheError("no prompts: give --prompt TEXT (the pipeline encodes it) or --prompt-embeds FILE")
        self.pipe, self.expert, self.steps = pipe, expert, steps
        self.prompts, self.call_args = list(prompts), dict(call_args or {})
        pipe.scheduler.set_timesteps(steps)
        self.context_steps = expert_steps(pipe, pipe.scheduler.timesteps, pipe.scheduler.config.num_train_timesteps)[expert]
        if self.context_steps < 2:
            raise TeaCacheError(
                f"at {steps} steps the pipeline's {expert} runs {self.context_steps} step(s) (boundary_ratio "
                f"{pipe.config.get('boundary_ratio')}): calibration compares consecutive steps; use more --steps")

    def generate(self, transformer, seed: int) -> None:
        pipe = self.pipe
        if getattr(pipe, self.expert) is not transformer:
            pipe.register_modules(**{self.expert: transformer})
            follow_scheduler(pipe.scheduler, pipe)
        prompt = self.prompts[seed % len(self.prompts)]
        pipe(**prompt, **self.call_args, num_inference_steps=self.steps, output_type="latent",
             generator=torch.Generator().manual_seed(seed))


def load_pipeline(pipeline_dir: Path, expert: str, precision: str, device: str = "cpu"):
    """The pipeline folder's pipeline without the PyTorch weights of ``expert`` (the compiled
    transformer replaces it) and without components the folder lists as absent."""
    import diffusers

    from .diffusers_driver import _dtype_keyword, model_index, pipeline_class_name

    pipeline_dir = Path(pipeline_dir)
    if not (pipeline_dir / "model_index.json").is_file():
        raise TeaCacheError(f"--pipeline {pipeline_dir} has no model_index.json: give a diffusers pipeline folder")
    cls = getattr(diffusers, pipeline_class_name(pipeline_dir))
    absent = {k: None for k, v in model_index(pipeline_dir).items() if isinstance(v, list) and v[-1] is None}
    try:
        pipe = cls.from_pretrained(str(pipeline_dir), **{**absent, expert: None},
                                   **{_dtype_keyword(): PRECISIONS[precision]}).to(device)
    except TeaCacheError:
        raise
    except Exception as exc:
        raise TeaCacheError(f"cannot load the pipeline at {pipeline_dir}: {type(exc).__name__}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompts_from(texts: Sequence[str], embeds: Sequence[Path], dtype: torch.dtype) -> list[dict[str, Any]]:
    """Pipeline keywords per prompt: ``prompt`` texts, or the tensors of safetensors files (the
    pipeline's ``*_embeds`` keywords, one prompt each, as teacache-render's ``prompt_embeds``)."""
    from safetensors.torch import load_file

    out: list[dict[str, Any]] = [{"prompt": t} for t in texts]
    for path in embeds:
        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise TeaCacheError(f"--prompt-embeds {path} is not a readable safetensors file ({exc})") from exc
        out.append({k: v.to(dtype) if v.dtype.is_floating_point else v for k, v in tensors.items()})
    return out


def pipeline_driver(args, manifest) -> tuple[Generate, int]:
    """(generate, calls per cache context) for ``teacache-calibrate --pipeline``."""
    expert = args.expert or default_expert(manifest.variant)
    pipe = load_pipeline(Path(args.pipeline), expert, manifest.precision, args.device)
    prompts = prompts_from(args.prompt, args.prompt_embeds, PRECISIONS[manifest.precision])
    run = PipelineCalibration(pipe, expert, args.steps, prompts, parse_call_args(args.pipeline_arg))
    return run.generate, run.context_steps
