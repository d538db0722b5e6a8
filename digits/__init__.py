"""A real model in the box: a ~2.3 M-parameter FLUX transformer trained on 16x16 digits.

``DigitsPipeline.from_pretrained()`` loads the bundled weights in ``model/``;
``classify`` scores generated digits; ``train`` reproduces the weights.

The names below are imported on first use (they import torch and diffusers), so that the
command lines in this package (``teacache-eval``) answer ``--help`` at once.
"""
import importlib

_WHERE = {
    "accuracy": "classifier", "classify": "classifier", "get_classifier": "classifier",
    "heldout_accuracy": "classifier", "LabelEmbedder": "conditioning",
    "IMAGE_SIZE": "constants", "NULL_LABEL": "constants", "NUM_CLASSES": "constants", "NUM_IMAGE_TOKENS": "constants",
    "NUM_TEXT_TOKENS": "constants", "TOKEN_CHANNELS": "constants", "DEFAULT_MODEL_DIR": "constants",
    "load_digits_16": "data", "make_img_ids": "data", "make_txt_ids": "data", "pack_tokens": "data",
    "unpack_tokens": "data",
    "DigitsPipeline": "pipeline", "DigitsPipelineOutput": "pipeline", "make_grid": "pipeline", "save_grid": "pipeline",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
