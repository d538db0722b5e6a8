"""A real video model in the box: a ~2.7 M-parameter Wan transformer (``WanTransformer3DModel``)
trained on digits sliding across a 32x32 canvas, conditioned on the digit, a direction and a
speed.

``MovingDigitsPipeline.from_pretrained()`` loads the bundled weights in ``model/`` and samples
them as diffusers' ``WanPipeline`` does; ``frame_accuracy`` and ``motion_report`` score what
it draws; ``train`` reproduces the weights (``python -m teacache_trt.moving_digits.train``).
"""

from .classifier import frame_accuracy, get_classifier
from .conditioning import PromptEmbedder
from .data import DIRECTION_NAMES, MAX_FRAMES, MIN_FRAMES, NUM_CLASSES, SPEEDS, load_digits, to_latents, to_pixels
from .motion import measure, motion_report
from .pipeline import DEFAULT_MODEL_DIR, MovingDigitsPipeline, MovingDigitsPipelineOutput, filmstrip

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DIRECTION_NAMES",
    "MAX_FRAMES",
    "MIN_FRAMES",
    "MovingDigitsPipeline",
    "MovingDigitsPipelineOutput",
    "NUM_CLASSES",
    "PromptEmbedder",
    "SPEEDS",
    "filmstrip",
    "frame_accuracy",
    "get_classifier",
    "load_digits",
    "measure",
    "motion_report",
    "to_latents",
    "to_pixels",
]
