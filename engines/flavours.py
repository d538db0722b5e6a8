"""The TensorRT flavours: full TensorRT (``tensorrt``) and TensorRT-RTX (``tensorrt_rtx``).

Both have the same Python API.  Polygraphy picks one per process (its USE_TENSORRT_RTX setting
is read when its TensorRT backend is first imported), so the choice is made here, once.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

from ..errors import TeaCacheError

FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}


def installed(flavour: str) -> bool:
    return importlib.util.find_spec(FLAVOURS[flavour]) is not None


def no_gpu_reason() -> str | None:
    """Why no engine built here could run here (None: a CUDA GPU is present)."""
    import torch

    if torch.cuda.is_available():
        return None
    return "no CUDA GPU on this machine, so no engine built here could run here"


def resolve_flavour(build: str) -> str:
    """``auto`` -> where a CUDA GPU is present, the first installed flavour (tensorrt, then
    tensorrt-rtx); else ``none``: an engine nothing here can run is not worth its build time
    (524 s for a 0.6 M-parameter model on a CPU).  ``tensorrt-rtx`` builds ahead of time."""
    if build == "none":
        return "none"
    if build == "auto":
        if no_gpu_reason():
            return "none"
        return next((f for f in FLAVOURS if installed(f)), "none")
    if build not in FLAVOURS:
        raise TeaCacheError(f"--build {build!r} is not one of none, auto, {', '.join(FLAVOURS)}")
    if not installed(build):
        extra = "tensorrt" if build == "tensorrt" else "tensorrt-rtx"
        raise TeaCacheError(
            f"--build {build}: the Python module {FLAVOURS[build]!r} is not installed; "
            f"pip install 'teacache-trt[{extra}]' or choose --build none"
        )
    return build


def trt_module(flavour: str):
    """The imported TensorRT module of ``flavour``."""
    resolve_flavour(flavour)
    return importlib.import_module(FLAVOURS[flavour])


def polygraphy_trt(flavour: str):
    """polygraphy.backend.trt, bound to ``flavour`` (one flavour per process)."""
    from polygraphy import config

    want = flavour == "tensorrt-rtx"
    if "polygraphy.backend.trt" in sys.modules and config.USE_TENSORRT_RTX != want:
        raise TeaCacheError(
            f"this process already used polygraphy with "
            f"{'tensorrt-rtx' if config.USE_TENSORRT_RTX else 'tensorrt'}; build {flavour} "
            f"engines in another process (polygraphy binds one TensorRT flavour per process)"
        )
    config.USE_TENSORRT_RTX = want
    return importlib.import_module("polygraphy.backend.trt")
