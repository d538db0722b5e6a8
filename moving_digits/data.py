"""Moving digits: scikit-learn's bundled 8x8 digits, upsampled to 16x16, sliding across a
32x32 canvas in a straight line.

A clip is fixed by a digit image, a direction (one of eight compass points), a speed (1 or 2
pixels per frame) and a frame count.  The path is centred on the canvas (the digit passes its
middle half-way through the clip), so the conditions alone say where the digit is in every
frame and the model spends its few CPU-minutes of training on drawing the digit and moving it,
not on choosing a start.  Shifts are whole pixels and the path stays inside the canvas, so
every frame holds the whole digit, unchanged: its centre of mass moves by exactly the velocity
per frame (what the motion check measures on generated clips).

Wan's attention knows only relative positions (3-D RoPE), so a model fed latents alone cannot
tell a clip from its time reversal: "E" and "W" become one horizontal motion whose sign the
noise picks.  The pipeline therefore appends one input channel, the frame clock (each frame's
signed offset from the clip's middle frame), as Wan's image-to-video pipeline appends its
condition channels to the latents: the transformer reads 17 channels and predicts 16.

The transformer works on "latents" shaped like Wan's, (B, 16, F, H, W): here a lossless 4x4
space-to-depth of the pixels (16 channels at 8x8), standing in for Wan's VAE (which maps 8x8
pixels to 16 channels), so that the model's (1, 2, 2) patches give 4x4 = 16 tokens per frame
and a 9-frame clip 144 tokens: small enough to train on two CPU cores.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .constants import (  # noqa: F401 - the sizes and conditions, re-exported for the package
    CANVAS,
    CLOCK_CHANNELS,
    DIGIT,
    DIRECTION_NAMES,
    DIRECTIONS,
    LATENT_CHANNELS,
    LATENT_SIZE,
    MAX_FRAMES,
    MIN_FRAMES,
    NUM_CLASSES,
    SPACE_TO_DEPTH,
    SPEEDS,
)

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


def centred_start(v: int, frames: int) -> int:
    """The start coordinate of a path moving v px/frame whose middle is the canvas's middle."""
    travel = v * (frames - 1)
    start = (CANVAS - DIGIT) // 2 - travel // 2
    if not (0 <= start <= CANVAS - DIGIT and 0 <= start + travel <= CANVAS - DIGIT):
        raise ValueError(f"{abs(v)} px/frame over {frames} frames leaves the {CANVAS}-pixel canvas")
    return start


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
        start = tuple(centred_start(v, frames) for v in vel)
        clips.append(render_clip(images[idx[i]], start, vel, frames))
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


def frame_clock(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, 1, F, H, W): each frame's offset from the clip's middle frame,
    (f - (F - 1) / 2) / ((MAX_FRAMES - 1) / 2), in [-1, 1] at the longest clip.  The path's
    position is linear in it: centre + velocity * clock * (MAX_FRAMES - 1) / 2."""
    b, _, f, h, w = latents.shape
    clock = (torch.arange(f, dtype=torch.float32) - (f - 1) / 2.0) / ((MAX_FRAMES - 1) / 2.0)
    return clock.to(latents.device, latents.dtype).view(1, CLOCK_CHANNELS, f, 1, 1).expand(b, CLOCK_CHANNELS, f, h, w)


def with_clock(latents: torch.Tensor) -> torch.Tensor:
    """The transformer's input: the latents and their frame clock, (B, 17, F, H, W)."""
    return torch.cat([latents, frame_clock(latents)], dim=1)


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random train/test split of range(n) (the classifier's held-out digits)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    return perm[n_test:], perm[:n_test]

