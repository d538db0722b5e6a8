"""Outputs as file bytes: an image as PNG, a video (:class:`Video`) as MP4 with an animated GIF
preview beside it, or the GIF alone where no MP4 encoder is installed (the ``[video]`` extra,
imageio-ffmpeg): a render without it still gives playable videos instead of failing every job.

Encoding happens in the worker, so only bytes travel back to the renderer (and from Ray
actors).  Every encoding is deterministic: the same pixels give the same bytes.

MP4s are H.264 in yuv420p, the pixel format every player and browser decodes (4:2:0 needs even
sizes: an odd width or height is padded by one repeated edge pixel), at the video's own frame
rate.  The GIF preview (at most ``PREVIEW_SIDE`` pixels a side) plays anywhere an image shows,
and is what the contact sheet's frame strips are cut from.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from typing import Sequence

from ...errors import TeaCacheError

PREVIEW_SIDE = 320  # pixels, the longer side of the GIF preview
MAX_FPS = 240.0


@dataclass(frozen=True)
class Video:
    """A video output of a driver: frames (PIL images, all one size) and their rate."""

    frames: Sequence
    fps: float = 8.0


@dataclass(frozen=True)
class Failed:
    """What a driver returns for a job it could not render while the rest of its batch went
    well (e.g. latents that became NaN): the job is recorded as failed with ``error``."""

    error: str


@dataclass(frozen=True)
class Encoded:
    data: bytes
    suffix: str  # png or mp4
    preview: bytes | None = None  # a GIF beside an MP4


def check_fps(fps) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= MAX_FPS:
        raise TeaCacheError(f"fps {fps!r} must be a number in (0, {MAX_FPS:g}]: frames per second of the video")
    return float(fps)


def encode(output) -> Encoded:
    """The file bytes of one job's output."""
    if isinstance(output, Video):
        frames = [f.convert("RGB") for f in output.frames]
        if not frames:
            raise TeaCacheError("a video output has no frames: the pipeline returned an empty video")
        fps = check_fps(output.fps)
        gif = encode_gif(frames, fps)
        if not mp4_available():
            return Encoded(gif, "gif")
        return Encoded(encode_mp4(frames, fps), "mp4", gif)
    if hasattr(output, "save") and hasattr(output, "mode"):  # a PIL image
        buf = io.BytesIO()
        output.save(buf, format="PNG")  # PIL writes no timestamp: same pixels, same bytes
        return Encoded(buf.getvalue(), "png")
    raise TeaCacheError(
        f"a driver returned a {type(output).__name__}: render_batch must return one PIL image or "
        f"one tools.render.encode.Video per job"
    )


def even(frame):
    """``frame`` (an HxWx3 array) padded to even sizes by repeating its last row / column."""
    import numpy as np

    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def mp4_available() -> bool:
    """Whether imageio-ffmpeg and the ffmpeg binary it finds are installed."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return True


def encode_mp4(frames: Sequence, fps: float) -> bytes:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise TeaCacheError(
            "video output needs imageio-ffmpeg: pip install 'teacache-trt[video]'"
        ) from None
    import numpy as np

    arrays = [even(np.asarray(f)) for f in frames]
    height, width = arrays[0].shape[:2]
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            path, (width, height), fps=fps, codec="libx264", quality=None,
            # bitexact: no encoder version string or timestamps, so the same frames give the
            # same bytes; one thread keeps x264 deterministic.
            output_params=["-fflags", "+bitexact", "-flags:v", "+bitexact", "-threads", "1", "-crf", "18"],
            pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in arrays:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def encode_gif(frames: Sequence, fps: float) -> bytes:
    """An endlessly looping GIF of the frames, the longer side at most ``PREVIEW_SIDE``."""
    from PIL import Image

    w, h = frames[0].size
    scale = min(1.0, PREVIEW_SIDE / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = [f if f.size == size else f.resize(size, Image.BILINEAR) for f in frames]
    buf = io.BytesIO()
    # GIF timing is in hundredths of a second: round to what the format can say
    small[0].save(buf, format="GIF", save_all=True, append_images=small[1:], loop=0,
                  duration=max(20, round(100 / fps) * 10), optimize=False)
    return buf.getvalue()
