"""The video model's fixed sizes, conditions, folder and shipped files: plain values, importable
without torch (the render driver and the command lines read them before any model loads)."""
from __future__ import annotations

from pathlib import Path

CANVAS = 32  # pixels per side of a frame
DIGIT = 16  # pixels per side of a digit (sklearn's 8x8, upsampled 2x)
SPACE_TO_DEPTH = 4  # pixel block folded into latent channels
LATENT_CHANNELS = SPACE_TO_DEPTH**2  # = 16 = transformer out_channels
# One more input channel, the box track (see data.box_track): in_channels = 17.
TRACK_CHANNELS = 1
LATENT_SIZE = CANVAS // SPACE_TO_DEPTH  # = 8
MIN_FRAMES, MAX_FRAMES = 5, 9  # clip lengths the model is trained on
NUM_CLASSES = 10

# Compass points, y pointing down the image: the unit step per frame of each.
DIRECTIONS = {"E": (1, 0), "NE": (1, -1), "N": (0, -1), "NW": (-1, -1),
              "W": (-1, 0), "SW": (-1, 1), "S": (0, 1), "SE": (1, 1)}
DIRECTION_NAMES = tuple(DIRECTIONS)
SPEEDS = (1, 2)  # pixels per frame along each moving axis
PROMPT_SLOTS = ("digit", "direction", "speed")  # one text token each, in this order
NUM_TEXT_TOKENS = len(PROMPT_SLOTS)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "model"  # the bundled weights
EMBEDDER_WEIGHTS = "prompt_embedder.safetensors"  # the prompt embedder, beside transformer/
EMBEDDER_CONFIG = "prompt_embedder_config.json"  # (marks a moving-digits model folder)
CALIBRATION_FILE = "teacache_calibration.json"  # teacache-calibrate --json, shipped beside the weights
MAGCACHE_FILE = "magcache_calibration.json"  # teacache-calibrate --policy magcache --json, likewise

# The shipped sampling settings (the README's quality figures are measured at these).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0
