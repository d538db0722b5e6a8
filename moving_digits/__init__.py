"""A real video model in the box: a small Wan transformer (``WanTransformer3DModel``) trained on
digits sliding across a 32x32 canvas, conditioned on the digit, a direction and a speed (as
prompt tokens, and as the box track the pipeline computes from them: see ``data``).

``MovingDigitsPipeline.from_pretrained()`` loads the bundled weights in ``model/`` and samples
them as diffusers' ``WanPipeline`` does; ``frame_accuracy`` and ``motion_report`` score what
it draws; ``python -m teacache_trt.moving_digits.train`` reproduces the weights and
``python -m teacache_trt.moving_digits.check`` checks them.

The names below are imported on first use (most import torch and diffusers), so that the
tools find this package's driver, and its command lines answer ``--help``, at once.
"""
import importlib

_WHERE = {
    "frame_accuracy": "classifier", "get_classifier": "classifier",
    "PromptEmbedder": "conditioning",
    "DEFAULT_MODEL_DIR": "constants", "DIRECTION_NAMES": "constants", "MAX_FRAMES": "constants",
    "MIN_FRAMES": "constants", "NUM_CLASSES": "constants", "SPEEDS": "constants",
    "load_digits": "data", "to_latents": "data", "to_pixels": "data",
    "measure": "motion", "motion_report": "motion",
    "MovingDigitsPipeline": "pipeline", "MovingDigitsPipelineOutput": "pipeline", "filmstrip": "pipeline",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
