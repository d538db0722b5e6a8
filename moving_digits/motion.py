"""Does a clip move as conditioned?  The digit's centre of mass, frame by frame.

In a training clip the digit moves by whole pixels and never leaves the canvas, so its centre
of mass moves by exactly the velocity every frame: a straight line with slope (vx, vy).  A
generated clip passes the check when

* the least-squares slope of its centre-of-mass track is within ``SLOPE_TOLERANCE`` = 0.5
  px/frame of the conditioned velocity on both axes.  Every other condition the model knows
  differs from it by at least 1 px/frame on some axis (E (1, 0) and NE (1, -1); speed 1 and
  2 along one axis), so a track that passes is nearer its own condition than any other;
* no frame's centre lies more than ``TRACK_TOLERANCE`` = 1 px from that line: the digit
  glides instead of jumping (a real clip's track is exactly straight; one pixel leaves room
  for the small changes of shape a generated digit shows from frame to frame);
* every frame holds a digit (ink above the noise floor).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import CANVAS, velocity

INK_FLOOR = 0.25  # brightness (0..1) below which a pixel counts as background haze
MIN_INK = 4.0  # a frame with less ink (summed brightness above the floor) holds no digit
SLOPE_TOLERANCE = 0.5  # px/frame, per axis
TRACK_TOLERANCE = 1.0  # px


def ink(frames: torch.Tensor) -> torch.Tensor:
    """(N,H,W) in [-1,1] -> brightness above the noise floor, the centre-of-mass weights."""
    return ((frames.float() + 1.0) / 2.0 - INK_FLOOR).clamp_min(0.0)


def centroids(frames: torch.Tensor) -> torch.Tensor:
    """(N,32,32) in [-1,1] -> (N,2) centre of mass (x, y) in pixels; the canvas centre for a blank frame."""
    w = ink(frames)
    total = w.sum(dim=(1, 2))
    pos = torch.arange(CANVAS, dtype=torch.float32)
    cx = (w.sum(dim=1) * pos).sum(dim=1) / total.clamp_min(1e-6)
    cy = (w.sum(dim=2) * pos).sum(dim=1) / total.clamp_min(1e-6)
    centre = torch.full_like(cx, (CANVAS - 1) / 2)
    blank = total < 1e-6
    return torch.stack([torch.where(blank, centre, cx), torch.where(blank, centre, cy)], dim=1)


@dataclass
class Motion:
    """One clip's centre-of-mass track against its condition."""

    slope: tuple[float, float]  # fitted px/frame (x, y)
    want: tuple[int, int]  # conditioned px/frame
    track_error: float  # largest distance of a frame's centre from the fitted line (px)
    min_ink: float  # the faintest frame's ink

    @property
    def slope_error(self) -> float:
        return max(abs(s - w) for s, w in zip(self.slope, self.want))

    @property
    def ok(self) -> bool:
        return self.slope_error <= SLOPE_TOLERANCE and self.track_error <= TRACK_TOLERANCE and self.min_ink >= MIN_INK


def measure(clip: torch.Tensor, direction: str, speed: int) -> Motion:
    """clip (1,F,32,32) or (F,32,32) in [-1,1]."""
    frames = clip.reshape(-1, CANVAS, CANVAS)
    c = centroids(frames)  # (F, 2)
    f = torch.arange(len(frames), dtype=torch.float32)
    fc = f - f.mean()
    slope = (fc[:, None] * (c - c.mean(0))).sum(0) / (fc * fc).sum()
    line = c.mean(0) + fc[:, None] * slope
    track_error = float((c - line).norm(dim=1).max())
    return Motion((float(slope[0]), float(slope[1])), velocity(direction, speed), track_error,
                  float(ink(frames).sum(dim=(1, 2)).min()))


def motion_report(clips: torch.Tensor, directions, speeds) -> dict:
    """Over clips (B,1,F,32,32): the fraction passing, the mean and worst slope and track errors."""
    ms = [measure(c, r, s) for c, r, s in zip(clips, directions, speeds)]
    slope = torch.tensor([m.slope_error for m in ms])
    track = torch.tensor([m.track_error for m in ms])
    return {"pass_rate": sum(m.ok for m in ms) / len(ms), "mean_slope_error": float(slope.mean()),
            "max_slope_error": float(slope.max()), "mean_track_error": float(track.mean()),
            "max_track_error": float(track.max()), "clips": len(ms)}
