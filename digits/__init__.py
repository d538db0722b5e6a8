"""A real model in the box: a ~2.3 M-parameter FLUX transformer trained on 16x16 digits.

``DigitsPipeline.from_pretrained()`` loads the bundled weights in ``model/``;
``classify`` scores generated digits; ``train`` reproduces the weights.
"""

from .classifier import accuracy, classify, get_classifier, heldout_accuracy
from .conditioning import LabelEmbedder
from .data import (
    IMAGE_SIZE,
    NULL_LABEL,
    NUM_CLASSES,
    NUM_IMAGE_TOKENS,
    NUM_TEXT_TOKENS,
    TOKEN_CHANNELS,
    load_digits_16,
    make_img_ids,
    make_txt_ids,
    pack_tokens,
    unpack_tokens,
)
from .pipeline import DEFAULT_MODEL_DIR, DigitsPipeline, DigitsPipelineOutput, make_grid, save_grid

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DigitsPipeline",
    "DigitsPipelineOutput",
    "IMAGE_SIZE",
    "LabelEmbedder",
    "NULL_LABEL",
    "NUM_CLASSES",
    "NUM_IMAGE_TOKENS",
    "NUM_TEXT_TOKENS",
    "TOKEN_CHANNELS",
    "accuracy",
    "classify",
    "get_classifier",
    "heldout_accuracy",
    "load_digits_16",
    "make_grid",
    "make_img_ids",
    "make_txt_ids",
    "pack_tokens",
    "save_grid",
    "unpack_tokens",
]
