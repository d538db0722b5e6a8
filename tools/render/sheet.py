"""A labelled contact sheet of a render: every finished image in job-file order, each with its
prompt, threshold and computed steps, so a person sees at a glance what each setting drew."""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

from ...manifest import atomic_write_bytes
from .jobs import Job
from .output import OutputDir

SHEET = "contact_sheet.png"
COLUMNS = 10
TILE = 96  # pixels per image side on the sheet
CELL_W = TILE + 16  # a gap between columns
LINE_H = 13
LABEL_H = 3 * LINE_H + 6  # prompt, threshold, computed steps; a gap before the next row


def contact_sheet(out: OutputDir, jobs: Sequence[Job], results: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Write ``OUT_DIR/contact_sheet.png`` over the jobs whose image is finished; returns its
    name, or None when there is no image to show (only failures, or video outputs)."""
    from PIL import Image, ImageDraw, ImageFont

    tiles = []
    for job in jobs:
        record = results.get(job.id, {})
        if record.get("status") != "ok" or not str(record.get("output", "")).endswith(".png"):
            continue
        path = out.inside(record["output"])
        if path is None or not path.is_file():
            continue
        with Image.open(path) as im:
            tiles.append((job, record, _fit(im.convert("RGB"))))
    if not tiles:
        return None
    font = ImageFont.load_default(size=11)
    cols = min(COLUMNS, len(tiles))
    rows = -(-len(tiles) // COLUMNS)
    sheet = Image.new("RGB", (cols * CELL_W, rows * (TILE + LABEL_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (job, record, image) in enumerate(tiles):
        r, c = divmod(i, COLUMNS)
        x, y = c * CELL_W + (CELL_W - TILE) // 2, r * (TILE + LABEL_H)
        sheet.paste(image, (x + (TILE - image.width) // 2, y + (TILE - image.height) // 2))
        computed = len(record.get("computed_steps", []))
        setting = f"threshold {job.threshold:g}" if job.threshold is not None else job.policy.get("name", "")
        label = (f"{job.prompt or job.id}"[:16], setting, f"{computed}/{job.steps} computed")
        for k, text in enumerate(label):
            draw.text((x, y + TILE + 2 + k * LINE_H), text, fill="black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out.path / SHEET, buf.getvalue())
    return SHEET


def _fit(image):
    """Small images enlarged by whole factors (sharp pixels), large ones shrunk, to fit a tile."""
    from PIL import Image

    side = max(image.width, image.height)
    if side <= TILE:
        k = TILE // side
        return image.resize((image.width * k, image.height * k), Image.NEAREST)
    image.thumbnail((TILE, TILE))
    return image
