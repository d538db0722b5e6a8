"""Helpers for the teacache-render tests (tests/tools/render): job files and their results."""
from __future__ import annotations

import json
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
