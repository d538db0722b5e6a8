"""What the video model can draw: every condition is checked here, before any model runs, and a
bad one fails with the value seen and the values the model knows.  Plain Python (no torch):
the render driver checks each job with these while it reads the job file."""
from __future__ import annotations

from numbers import Integral

from ..errors import TeaCacheError, shown
from .constants import DIRECTION_NAMES, MAX_FRAMES, MIN_FRAMES, NUM_CLASSES, SPEEDS


def _integer(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_digit(value) -> None:
    if not _integer(value) or not 0 <= value < NUM_CLASSES:
        raise TeaCacheError(f"digit {shown(value)} does not exist: the model draws the digits 0 .. {NUM_CLASSES - 1}")


def check_direction(value) -> None:
    if not isinstance(value, str) or value not in DIRECTION_NAMES:
        raise TeaCacheError(f"direction {shown(value)} is not a compass point the model knows: give one of "
                            f"{', '.join(DIRECTION_NAMES)}")


def check_speed(value) -> None:
    if not _integer(value) or value not in SPEEDS:
        raise TeaCacheError(f"speed {shown(value)} is out of range: the model moves digits "
                            f"{' or '.join(map(str, SPEEDS))} pixels per frame")


def check_frames(value, name: str = "num_frames") -> None:
    if not _integer(value) or not MIN_FRAMES <= value <= MAX_FRAMES:
        raise TeaCacheError(f"{name}={shown(value)} is outside what the model was trained on: give "
                            f"{MIN_FRAMES} to {MAX_FRAMES} frames")


def check_conditions(digits, directions, speeds, num_frames) -> None:
    """One digit, direction and speed per clip, and a clip length the model knows."""
    if not len(digits):
        raise TeaCacheError("no digits given: pass one digit 0..9 per clip")
    if not len(directions) == len(speeds) == len(digits):
        raise TeaCacheError(f"{len(digits)} digits, {len(directions)} directions and {len(speeds)} speeds: "
                            f"give one of each per clip")
    for d in digits:
        check_digit(d)
    for r in directions:
        check_direction(r)
    for s in speeds:
        check_speed(s)
    check_frames(num_frames)
