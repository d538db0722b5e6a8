"""Calibration generations for the digits model: every class, through the real pipeline."""
from __future__ import annotations

import torch

from .data import NUM_CLASSES

from .constants import BUDGET_FILE, CALIBRATION_FILE, MAGCACHE_FILE  # noqa: F401 - shipped next to the weights in model/


def digits_driver(steps: int = 20, guidance_scale: float = 3.0, per_class: int = 2, model_dir=None):
    """(transformer, seed) -> the images of one pipeline call over ``per_class`` digits of every class."""
    from .conditioning import LabelEmbedder
    from .pipeline import DEFAULT_MODEL_DIR, DigitsPipeline

    embedder = LabelEmbedder.from_pretrained(model_dir or DEFAULT_MODEL_DIR)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)

    def generate(transformer, seed: int) -> None:
        transformer.reset(steps)  # a fresh generation: this pipeline object is not enable()d
        pipe = DigitsPipeline(transformer, embedder)
        return pipe(labels, num_inference_steps=steps, guidance_scale=guidance_scale, seed=seed).images

    return generate
