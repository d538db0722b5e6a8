"""Outputs as bytes: PNG for images, MP4 for videos; the same pixels give the same bytes."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from teacache_trt.errors import TeaCacheError
from teacache_trt.tools.render.encode import Video, encode


def frames(n=5, size=(24, 16)):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_png_round_trips_and_is_deterministic():
    image = frames(1)[0]
    data, suffix = encode(image)
    assert suffix == "png" and encode(image)[0] == data
    with Image.open(io.BytesIO(data)) as back:
        assert np.array_equal(np.asarray(back), np.asarray(image))


def test_unknown_outputs_are_refused():
    with pytest.raises(TeaCacheError, match="one PIL image or one tools.render.encode.Video per job"):
        encode(np.zeros((4, 4)))


def test_mp4_has_every_frame_and_is_deterministic():
    ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="video output is an extra: pip install -e '.[video]'")
    video = Video(frames(5), fps=8.0)
    data, suffix = encode(video)
    assert suffix == "mp4" and data[4:8] == b"ftyp"
    assert encode(video)[0] == data  # same frames, same bytes

    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        reader = ffmpeg.read_frames(f.name)
        meta = next(reader)
        decoded = [np.frombuffer(fr, np.uint8).reshape(16, 24, 3) for fr in reader]
    assert meta["size"] == (24, 16) and len(decoded) == 5
    # lossy, but close: crf 18, 4:4:4
    assert np.abs(decoded[0].astype(int) - np.asarray(video.frames[0]).astype(int)).mean() < 40
