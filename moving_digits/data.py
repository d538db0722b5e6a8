"""Moving digits: scikit-learn's bundled 8x8 digits, upsampled to 16x16, sliding across a
32x32 canvas in a straight line.

A clip is fixed by a digit image, a direction (one of eight compass points), a speed (1 or 2
pixels per frame) and a frame count.  The path is centred on the canvas (the digit passes its
middle half-way through the clip), so the conditions alone say where the digit is in every
frame and the model spends its few CPU-minutes of training on drawing the digit and moving it,
not on choosing a start.  Shifts are whole pixels and the path stays inside the canvas, so
every frame holds the whole digit, unchanged: its centre of mass moves by exactly the velocity
per frame (what the motion check measures on generated clips).

The motion is conditioned by a box track, as layout- and box-conditioned video models take
theirs: per frame, where the digit's 16x16 box lies on the canvas (computed from the direction,
speed and frame count), one input channel beside the latents as Wan's image-to-video pipeline
appends its condition channels: the transformer reads 17 channels and predicts 16.  Without it
the model cannot place the clip in time: Wan's attention knows only relative positions (3-D
RoPE), so "E" and "W" (a clip and its time reversal) looked alike to it, and models trained on
the direction token alone, or with a frame clock beside it, moved the digit along the right
axis with a sign the noise picked.

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
    TRACK_CHANNELS,
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


def path(vel: tuple[int, int], frames: int) -> list[tuple[int, int]]:
    """The digit's top-left corner (x, y) in each frame of a centred path."""
    start = tuple(centred_start(v, frames) for v in vel)
    return [(start[0] + f * vel[0], start[1] + f * vel[1]) for f in range(frames)]


def render_clip(digit: torch.Tensor, vel: tuple[int, int], frames: int) -> torch.Tensor:
    """(1,16,16) digit -> (1, frames, 32, 32) clip on the centred path of velocity vel."""
    clip = torch.full((1, frames, CANVAS, CANVAS), BACKGROUND)
    for f, (x, y) in enumerate(path(vel, frames)):
        clip[0, f, y:y + DIGIT, x:x + DIGIT] = digit[0]
    return clip


def random_clips(images: torch.Tensor, labels: torch.Tensor, batch: int, frames: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A batch of random clips: (B,1,F,32,32) pixels, labels, direction and speed indices, and
    their box tracks."""
    idx = torch.randint(0, len(images), (batch,), generator=generator)
    dirs = torch.randint(0, len(DIRECTION_NAMES), (batch,), generator=generator)
    speeds = torch.randint(0, len(SPEEDS), (batch,), generator=generator)
    vels = [velocity(DIRECTION_NAMES[d], SPEEDS[s]) for d, s in zip(dirs, speeds)]
    clips = torch.stack([render_clip(images[i], vel, frames) for i, vel in zip(idx, vels)])
    return clips, labels[idx], dirs, speeds, box_track(vels, frames)


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


def box_track(velocities, frames: int) -> torch.Tensor:
    """Per clip (one (vx, vy) each), the digit's box on a centred path: (B, 1, F, 8, 8), the
    share of each latent cell's 4x4 pixels inside the box (a box edge between cells gives a
    fraction, so the channel keeps the exact pixel position)."""
    masks = torch.zeros(len(velocities), frames, CANVAS, CANVAS)
    for i, vel in enumerate(velocities):
        for f, (x, y) in enumerate(path(vel, frames)):
            masks[i, f, y:y + DIGIT, x:x + DIGIT] = 1.0
    cells = F.avg_pool2d(masks.view(-1, 1, CANVAS, CANVAS), SPACE_TO_DEPTH)
    return cells.view(len(velocities), TRACK_CHANNELS, frames, LATENT_SIZE, LATENT_SIZE)


def with_track(latents: torch.Tensor, track: torch.Tensor) -> torch.Tensor:
    """The transformer's input: the latents and their box track, (B, 17, F, H, W)."""
    return torch.cat([latents, track.to(latents.device, latents.dtype)], dim=1)


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random train/test split of range(n) (the classifier's held-out digits)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    return perm[n_test:], perm[:n_test]

