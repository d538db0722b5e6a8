"""A labelled contact sheet of a render: every finished image in job-file order, and for every
finished video a strip of frames, each labelled with its prompt, policy and threshold,
coefficient set and computed steps, so a person sees at a glance what each setting drew."""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

from .jobs import Job
from .output import SHEET, OutputDir

COLUMNS = 10
TILE = 96  # pixels per image side on the sheet
CELL_W = TILE + 16  # a gap between columns
LINE_H = 13
LABEL_LINES = 4  # prompt, policy and threshold, coefficient set, computed steps
LABEL_H = LABEL_LINES * LINE_H + 6  # a gap before the next row
STRIP_FRAMES = 8  # frames shown per video, evenly spaced over it


def contact_sheet(out: OutputDir, jobs: Sequence[Job], results: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Write ``OUT_DIR/contact_sheet.png`` over the jobs whose output is finished; returns its
    name, or None when there is nothing to show (only failures)."""
    from PIL import Image, ImageDraw, ImageFont

    tiles, strips = [], []
    for job in jobs:
        record = results.get(job.id, {})
        if record.get("status") != "ok":
            continue
        output = str(record.get("output", ""))
        if output.endswith(".png"):
            path = out.inside(output)
            if path is not None and path.is_file():
                with Image.open(path) as im:
                    tiles.append((job, record, _fit(im.convert("RGB"))))
        elif record.get("preview") or output.endswith(".gif"):  # an MP4's preview, or the GIF alone
            path = out.inside(str(record.get("preview") or output))
            if path is not None and path.is_file():
                strips.append((job, record, _frames(path)))
    if not tiles and not strips:
        return None
    font = ImageFont.load_default(size=11)
    rows = -(-len(tiles) // COLUMNS)
    width = max(min(COLUMNS, len(tiles)) * CELL_W, CELL_W + STRIP_FRAMES * TILE if strips else 0)
    height = rows * (TILE + LABEL_H) + len(strips) * max(TILE, LABEL_H)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (job, record, image) in enumerate(tiles):
        r, c = divmod(i, COLUMNS)
        x, y = c * CELL_W + (CELL_W - TILE) // 2, r * (TILE + LABEL_H)
        sheet.paste(image, (x + (TILE - image.width) // 2, y + (TILE - image.height) // 2))
        _label(draw, font, x, y + TILE + 2, job, record)
    y = rows * (TILE + LABEL_H)
    for job, record, frames in strips:
        _label(draw, font, 4, y + 2, job, record)
        for k, frame in enumerate(frames):
            sheet.paste(frame, (CELL_W + k * TILE + (TILE - frame.width) // 2, y + (TILE - frame.height) // 2))
        y += max(TILE, LABEL_H)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    out.write_output(SHEET, buf.getvalue())
    return SHEET


def label_lines(job: Job, record: Mapping[str, Any]) -> list[str]:
    """What a tile says, from the result line (what the output was really made with)."""
    policy = record.get("policy") or {}
    threshold = record.get("threshold")
    setting = f"{policy.get('name', '')} {threshold:g}" if isinstance(threshold, (int, float)) else policy.get("name", "")
    coefficients = record.get("coefficients")
    computed = len(record.get("computed_steps", []))
    return [f"{job.prompt or job.id}"[:18], setting[:18], (f"coef. {coefficients}" if coefficients else "")[:18],
            f"{computed}/{record.get('steps', job.steps)} computed"]


def _label(draw, font, x: int, y: int, job: Job, record: Mapping[str, Any]) -> None:
    for k, text in enumerate(label_lines(job, record)):
        draw.text((x, y + k * LINE_H), text, fill="black", font=font)


def _frames(path) -> list:
    """Up to ``STRIP_FRAMES`` frames of a preview GIF, evenly spaced, each fitted to a tile."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
    if len(frames) > STRIP_FRAMES:
        step = (len(frames) - 1) / (STRIP_FRAMES - 1)
        frames = [frames[round(k * step)] for k in range(STRIP_FRAMES)]
    return [_fit(f) for f in frames]


def _fit(image):
    """Small images enlarged by whole factors (sharp pixels), large ones shrunk, to fit a tile."""
    from PIL import Image

    side = max(image.width, image.height)
    if side <= TILE:
        k = TILE // side
        return image.resize((image.width * k, image.height * k), Image.NEAREST)
    image.thumbnail((TILE, TILE))
    return image
