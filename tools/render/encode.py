"""Outputs as file bytes: an image as PNG, a video (:class:`Video`) as MP4.

Encoding happens in the worker, so only bytes travel back to the renderer (and from Ray
actors).  Both encodings are deterministic: the same pixels give the same bytes.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from typing import Sequence

from ...errors import TeaCacheError


@dataclass(frozen=True)
class Video:
    """A video output of a driver: frames (PIL images, all one size) and their rate."""

    frames: Sequence
    fps: float = 8.0


def encode(output) -> tuple[bytes, str]:
    """(file bytes, suffix) for one job's output."""
    if isinstance(output, Video):
        return encode_mp4(output), "mp4"
    if hasattr(output, "save") and hasattr(output, "mode"):  # a PIL image
        buf = io.BytesIO()
        output.save(buf, format="PNG")  # PIL writes no timestamp: same pixels, same bytes
        return buf.getvalue(), "png"
    raise TeaCacheError(
        f"a driver returned a {type(output).__name__}: render_batch must return one PIL image or "
        f"one tools.render.encode.Video per job"
    )


def encode_mp4(video: Video) -> bytes:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise TeaCacheError(
            "video output needs imageio-ffmpeg: pip install 'teacache-trt[video]'"
        ) from None
    import numpy as np

    frames = [np.asarray(f.convert("RGB")) for f in video.frames]
    if not frames:
        raise TeaCacheError("a video output has no frames: the pipeline returned an empty video")
    height, width = frames[0].shape[:2]
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            path, (width, height), fps=video.fps, codec="libx264", quality=None,
            # bitexact: no encoder version string or timestamps, so the same frames give the
            # same bytes; yuv444p keeps odd sizes legal; one thread keeps x264 deterministic.
            output_params=["-fflags", "+bitexact", "-flags:v", "+bitexact", "-threads", "1", "-crf", "18"],
            pix_fmt_out="yuv444p", macro_block_size=1, ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)
