"""Outputs as bytes: PNG for images, MP4 (H.264 yuv420p at the video's frame rate) with a GIF
preview for videos; the same pixels give the same bytes."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from render_helpers import probe

from teacache_trt.errors import TeaCacheError
from teacache_trt.tools.render.encode import Video, encode


def frames(n=5, size=(24, 16)):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_png_round_trips_and_is_deterministic():
    image = frames(1)[0]
    encoded = encode(image)
    data = encoded.data
    assert encoded.suffix == "png" and encode(image).data == data and encoded.preview is None
    with Image.open(io.BytesIO(data)) as back:
        assert np.array_equal(np.asarray(back), np.asarray(image))


def test_unknown_outputs_are_refused():
    with pytest.raises(TeaCacheError, match="one PIL image or one tools.render.encode.Video per job"):
        encode(np.zeros((4, 4)))


def test_mp4_has_every_frame_and_is_deterministic():
    ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="video output is an extra: pip install -e '.[video]'")
    video = Video(frames(5), fps=8.0)
    encoded = encode(video)
    data = encoded.data
    assert encoded.suffix == "mp4" and data[4:8] == b"ftyp"
    assert encode(video) == encoded  # same frames, same bytes (the preview too)

    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        reader = ffmpeg.read_frames(f.name)
        meta = next(reader)
        decoded = [np.frombuffer(fr, np.uint8).reshape(16, 24, 3) for fr in reader]
    assert meta["size"] == (24, 16) and len(decoded) == 5
    # lossy, but close in brightness (crf 18; 4:2:0 keeps one colour sample per 2x2 pixels, which
    # random pixels do not survive, so compare luma)
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(decoded[0] @ luma - np.asarray(video.frames[0]) @ luma).mean() < 12


@pytest.mark.parametrize("size, fps", [((24, 16), 12.0), ((15, 9), 24.0)])
def test_mp4_is_yuv420p_at_the_videos_frame_rate_even_sized(tmp_path, size, fps):
    pytest.importorskip("imageio_ffmpeg", reason="video output is an extra: pip install -e '.[video]'")
    encoded = encode(Video(frames(6, size), fps=fps))
    info = probe(encoded.data, tmp_path / "probe.mp4")
    assert info["pix_fmt"] == "yuv420p" and info["fps"] == pytest.approx(fps)
    assert info["size"] == (size[0] + size[0] % 2, size[1] + size[1] % 2)  # odd sizes padded by one pixel


def test_gif_preview_has_every_frame_and_loops():
    pytest.importorskip("imageio_ffmpeg", reason="video output is an extra: pip install -e '.[video]'")
    from PIL import ImageSequence

    video = Video(frames(6, (400, 200)), fps=10.0)
    preview = encode(video).preview
    with Image.open(io.BytesIO(preview)) as gif:
        assert gif.format == "GIF" and gif.info.get("loop") == 0 and gif.info.get("duration") == 100
        shown = [f.copy() for f in ImageSequence.Iterator(gif)]
    assert len(shown) == 6 and shown[0].size == (320, 160)  # the longer side at most 320


@pytest.mark.parametrize("fps", [0, -1, float("nan"), 1e9, True])
def test_a_bad_frame_rate_is_refused(fps):
    with pytest.raises(TeaCacheError, match="fps .* must be a number in"):
        encode(Video(frames(2), fps=fps))


def test_without_an_mp4_encoder_a_video_is_its_gif(monkeypatch):
    """No imageio-ffmpeg: the video is written as the looping GIF (every frame), no preview beside it."""
    from PIL import ImageSequence

    from teacache_trt.tools.render import encode as module

    monkeypatch.setattr(module, "mp4_available", lambda: False)
    encoded = encode(Video(frames(4), fps=8.0))
    assert encoded.suffix == "gif" and encoded.preview is None
    with Image.open(io.BytesIO(encoded.data)) as gif:
        assert gif.format == "GIF" and len(list(ImageSequence.Iterator(gif))) == 4
