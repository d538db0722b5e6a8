"""The digits model's fixed sizes, its folder and its export profile: plain values, importable
without torch (the command lines build their options and ``--help`` from them)."""
from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 16  # pixels per side after upsampling
PATCH_SIZE = 2  # FLUX packs 2x2 patches of the latent into one token
NUM_CHANNELS = 1  # grey images play the role of a 1-channel latent
TOKEN_CHANNELS = NUM_CHANNELS * PATCH_SIZE * PATCH_SIZE  # = 4 = transformer in_channels
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # = 64
NUM_CLASSES = 10
NULL_LABEL = 10  # the "no label" class used for classifier-free guidance
NUM_TEXT_TOKENS = 4  # label tokens fed as encoder_hidden_states

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "model"  # the bundled weights
CALIBRATION_FILE = "teacache_calibration.json"  # shipped next to the weights in model/
BUDGET_FILE = "budget_search.json"  # teacache-calibrate --policy budget --json, shipped beside it
MAGCACHE_FILE = "magcache_calibration.json"  # teacache-calibrate --policy magcache --json, likewise

# The exported profile: CFG runs cond and uncond as separate calls of up to 100 digits each
# (the quality harness renders 100 at once); a sub-batch of one prompt needs batch min 1.
DIGITS_AXES = {"batch": (1, 100, 200), "img_seq": (NUM_IMAGE_TOKENS,) * 3, "txt_seq": (NUM_TEXT_TOKENS,) * 3}
