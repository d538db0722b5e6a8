"""Moving digits: scikit-learn's bundled 8x8 digits, upsampled to 16x16, sliding across a
32x32 canvas in a straight line.

A clip is fixed by a digit image, a direction (one of eight compass points), a speed (1 or 2
pixels per frame), a frame count and a start position.  Shifts are whole pixels and the
trajectory always stays inside the canvas, so every frame holds the whole digit, unchanged:
the digit's centre of mass moves by exactly the velocity per frame (what the motion check
measures on generated clips).

The transformer works on "latents" shaped like Wan's, (B, 16, F, H, W): here a lossless 4x4
space-to-depth of the pixels (16 channels at 8x8), standing in for Wan's VAE (which maps 8x8
pixels to 16 channels), so that the model's (1, 2, 2) patches give 4x4 = 16 tokens per frame
and a 9-frame clip 144 tokens: small enough to train on two CPU cores.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

CANVAS = 32  # pixels per side of a frame
DIGIT = 16  # pixels per side of a digit (sklearn's 8x8, upsampled 2x)
SPACE_TO_DEPTH = 4  # pixel block folded into latent channels
LATENT_CHANNELS = SPACE_TO_DEPTH**2  # = 16 = transformer in_channels
LATENT_SIZE = CANVAS // SPACE_TO_DEPTH  # = 8
MIN_FRAMES, MAX_FRAMES = 5, 9  # clip lengths the model is trained on
NUM_CLASSES = 10
# Compass points, y pointing down the image: the unit step per frame of each.
DIRECTIONS = {"E": (1, 0), "NE": (1, -1), "N": (0, -1), "NW": (-1, -1),
              "W": (-1, 0), "SW": (-1, 1), "S": (0, 1), "SE": (1, 1)}
DIRECTION_NAMES = tuple(DIRECTIONS)
SPEEDS = (1, 2)  # pixels per frame along each moving axis
BACKGROUND = -1.0


def velocity(direction: str, speed: int) -> tuple[int, int]:
    """(vx, vy) in pixels per frame."""
    ux, uy = DIRECTIONS[direction]
    return ux * speed, uy * speed


def upsample_digits(images8: torch.Tensor) -> torch.Tensor:
    """(N,1,8,8) raw 0..16 values -> (N,1,16,16) in [-1, 1] (bilinear, centred)."""
    x = images8.float() / 16.0 * 2.0 - 1.0
    return F.interpolate(x, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return upsample_digits(torch.from_numpy(bunch.images).unsqueeze(1)), torch.from_numpy(bunch.target).long()


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits: (N,1,16,16) float32 in [-1, 1] and labels (N,) int64 (fresh copies)."""
    images, labels = _digits()
    return images.clone(), labels.clone()


def start_range(v: int, frames: int) -> tuple[int, int]:
    """The start coordinates (inclusive) that keep a digit moving v px/frame inside the canvas."""
    travel = v * (frames - 1)
    lo, hi = max(0, -travel), min(CANVAS - DIGIT, CANVAS - DIGIT - travel)
    if lo > hi:
        raise ValueError(f"{abs(v)} px/frame over {frames} frames leaves the {CANVAS}-pixel canvas")
    return lo, hi


def render_clip(digit: torch.Tensor, start: tuple[int, int], vel: tuple[int, int], frames: int) -> torch.Tensor:
    """(1,16,16) digit -> (1, frames, 32, 32) clip, the digit's top-left corner at start + f*vel."""
    clip = torch.full((1, frames, CANVAS, CANVAS), BACKGROUND)
    for f in range(frames):
        x, y = start[0] + f * vel[0], start[1] + f * vel[1]
        clip[0, f, y:y + DIGIT, x:x + DIGIT] = digit[0]
    return clip


def random_clips(images: torch.Tensor, labels: torch.Tensor, batch: int, frames: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of random clips: (B,1,F,32,32) pixels, labels, direction and speed indices."""
    idx = torch.randint(0, len(images), (batch,), generator=generator)
    dirs = torch.randint(0, len(DIRECTION_NAMES), (batch,), generator=generator)
    speeds = torch.randint(0, len(SPEEDS), (batch,), generator=generator)
    clips = []
    for i in range(batch):
        vel = velocity(DIRECTION_NAMES[dirs[i]], SPEEDS[speeds[i]])
        start = []
        for v in vel:
            lo, hi = start_range(v, frames)
            start.append(int(torch.randint(lo, hi + 1, (1,), generator=generator)))
        clips.append(render_clip(images[idx[i]], tuple(start), vel, frames))
    return torch.stack(clips), labels[idx], dirs, speeds


def to_latents(pixels: torch.Tensor) -> torch.Tensor:
    """(B,1,F,32,32) -> (B,16,F,8,8): each 4x4 pixel block becomes 16 channels."""
    b, c, f, h, w = pixels.shape
    x = pixels.transpose(1, 2).reshape(b * f, c, h, w)
    x = F.pixel_unshuffle(x, SPACE_TO_DEPTH)
    return x.reshape(b, f, c * LATENT_CHANNELS, h // SPACE_TO_DEPTH, w // SPACE_TO_DEPTH).transpose(1, 2)


def to_pixels(latents: torch.Tensor) -> torch.Tensor:
    """(B,16,F,8,8) -> (B,1,F,32,32); inverse of :func:`to_latents`."""
    b, c, f, h, w = latents.shape
    x = latents.transpose(1, 2).reshape(b * f, c, h, w)
    x = F.pixel_shuffle(x, SPACE_TO_DEPTH)
    return x.reshape(b, f, c // LATENT_CHANNELS, h * SPACE_TO_DEPTH, w * SPACE_TO_DEPTH).transpose(1, 2)


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random train/test split of range(n) (the classifier's held-out digits)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    return perm[n_test:], perm[:n_test]

