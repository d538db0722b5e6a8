"""Helpers for the teacache-render tests (tests/tools/render): job files and their results."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

STEPS = 6  # short generations: the tests are about bookkeeping, the model is real anyway
THRESHOLDS = (0.0, 0.2, 0.45, 0.8)


# The upstream FLUX.1 coefficients, by name: the bundled model's own (calibrated) polynomial
# was fitted on 20-step generations and turns negative at the larger changes of these short
# ones, where every threshold would then compute the same few steps.
UPSTREAM = {"name": "teacache", "params": {"coefficients": "upstream"}}


def write_jobs(path: Path, n: int, thresholds=THRESHOLDS, steps: int = STEPS, extra=()) -> Path:
    """``n`` digit jobs cycling through the digits and ``thresholds``, then the ``extra`` lines."""
    lines = [json.dumps({"id": f"j{i:03d}", "prompt": str(i % 10), "seed": 100 + i, "steps": steps,
                         "threshold": thresholds[i % len(thresholds)], "policy": UPSTREAM}) for i in range(n)]
    lines += [l if isinstance(l, str) else json.dumps(l) for l in extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def results(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]


def latest(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in results(out)}


def pixels(out: Path, job_id: str) -> np.ndarray:
    from PIL import Image

    with Image.open(out / f"{job_id}.png") as im:
        return np.asarray(im, dtype=np.int16)


def comparable(record: dict) -> dict:
    """A result line without its timing, the one field that may differ between equal runs."""
    return {k: v for k, v in record.items() if k != "seconds"}


def probe(data: bytes, path: Path) -> dict:
    """Pixel format, frame rate and size of an MP4, from ffprobe, or else from the ffmpeg that
    imageio-ffmpeg ships (``ffmpeg -i`` prints the stream line)."""
    path.write_bytes(data)
    if shutil.which("ffprobe"):
        out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                              "stream=pix_fmt,r_frame_rate,width,height", "-of", "default=nw=1", str(path)],
                             capture_output=True, text=True, check=True).stdout
        fields = dict(line.split("=", 1) for line in out.split())
        num, den = fields["r_frame_rate"].split("/")
        return {"pix_fmt": fields["pix_fmt"], "fps": float(num) / float(den),
                "size": (int(fields["width"]), int(fields["height"]))}
    import imageio_ffmpeg

    err = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True).stderr
    stream = next(line for line in err.splitlines() if "Video:" in line)
    size = re.search(r", (\d+)x(\d+)", stream)
    return {"pix_fmt": re.search(r"(yuv\w+|rgb\w+|gbr\w+)", stream).group(1),
            "fps": float(re.search(r"([\d.]+) fps", stream).group(1)), "size": (int(size[1]), int(size[2]))}
