"""Calibration generations for the video model: every digit, every direction, both speeds,
through the real pipeline (cond and uncond calls, as the renders make them)."""
from __future__ import annotations

from pathlib import Path

from .constants import DEFAULT_GUIDANCE, DEFAULT_MODEL_DIR, DEFAULT_STEPS, DIRECTION_NAMES, MAX_FRAMES, NUM_CLASSES, SPEEDS


def calibration_prompts(clips: int = 2 * NUM_CLASSES) -> tuple[list[int], list[str], list[int]]:
    """``clips`` prompts cycling through the digits, the directions and the speeds."""
    digits = [i % NUM_CLASSES for i in range(clips)]
    directions = [DIRECTION_NAMES[(i + i // NUM_CLASSES) % len(DIRECTION_NAMES)] for i in range(clips)]
    speeds = [SPEEDS[(i // len(DIRECTION_NAMES)) % len(SPEEDS)] for i in range(clips)]
    return digits, directions, speeds


def video_driver(steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE, clips: int = 2 * NUM_CLASSES,
                 num_frames: int = MAX_FRAMES, model_dir=None):
    """(transformer, seed) -> one pipeline call over ``clips`` clips."""
    from .conditioning import PromptEmbedder
    from .pipeline import MovingDigitsPipeline, load_scheduler

    model_dir = Path(model_dir or DEFAULT_MODEL_DIR)
    embedder = PromptEmbedder.from_pretrained(model_dir)
    digits, directions, speeds = calibration_prompts(clips)

    def generate(transformer, seed: int) -> None:
        transformer.reset(steps)  # a fresh generation: this pipeline object is not enable()d
        pipe = MovingDigitsPipeline(transformer, embedder, load_scheduler(model_dir / "scheduler"))
        pipe(digits, directions, speeds, num_frames=num_frames, num_inference_steps=steps,
             guidance_scale=guidance_scale, seed=seed, output_type="latent")

    return generate
