"""Does a video model draw what it is asked?  The quality check of the bundled weights and of
any retrained ones:

    python -m teacache_trt.moving_digits.check [--model DIR] [--steps 20] [--guidance G] [--frames 9]

Samples one clip for every digit, direction and speed (160 clips, seed 0, the PyTorch model)
and reports the per-frame accuracy of the frame classifier, the share of clips passing the
motion check (see ``motion``) and the slope and track errors.  Exit status 1 when the accuracy
is below 90 % or fewer than 90 % of the clips pass the motion check.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

from .. import options
from ..files import atomic_write_bytes
from .constants import DEFAULT_GUIDANCE, DEFAULT_STEPS, DIRECTION_NAMES, MAX_FRAMES, MIN_FRAMES, NUM_CLASSES, SPEEDS

PROG = "python -m teacache_trt.moving_digits.check"
MIN_ACCURACY = 0.9
MIN_MOTION_PASS = 0.9


def all_conditions() -> tuple[list[int], list[str], list[int]]:
    """Every (digit, direction, speed) once: 10 x 8 x 2 = 160 clips."""
    combos = [(d, r, s) for d in range(NUM_CLASSES) for r in DIRECTION_NAMES for s in SPEEDS]
    return [c[0] for c in combos], [c[1] for c in combos], [c[2] for c in combos]


def check(model_dir=None, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, frames: int = MAX_FRAMES,
          seed: int = 0, batch: int = 40, strip: str | None = None) -> dict:
    import torch

    from .classifier import frame_accuracy
    from .motion import motion_report
    from .pipeline import MovingDigitsPipeline, filmstrip

    pipe = MovingDigitsPipeline.from_pretrained(model_dir)
    digits, directions, speeds = all_conditions()
    t0 = time.perf_counter()
    clips = []
    for i in range(0, len(digits), batch):  # one generator over all batches: clip i gets the same noise always
        gen = torch.Generator().manual_seed(seed + i)
        clips.append(pipe(digits[i:i + batch], directions[i:i + batch], speeds[i:i + batch], num_frames=frames,
                          num_inference_steps=steps, guidance_scale=guidance, generator=gen).frames)
    clips = torch.cat(clips)
    report = {"clips": len(digits), "frames": frames, "steps": steps, "guidance": guidance,
              "frame_accuracy": frame_accuracy(clips, digits), **{f"motion_{k}": v for k, v in
                                                                    motion_report(clips, directions, speeds).items()
                                                                    if k != "clips"},
              "seconds": round(time.perf_counter() - t0, 1)}
    if strip:
        # one clip per digit, directions and speeds cycling, for a person to look at
        pick = [d * len(DIRECTION_NAMES) * len(SPEEDS) + (d % len(DIRECTION_NAMES)) * len(SPEEDS) + d % len(SPEEDS)
                for d in range(NUM_CLASSES)]
        buf = io.BytesIO()
        filmstrip(clips[pick]).save(buf, format="PNG")
        atomic_write_bytes(Path(strip), buf.getvalue())
    return report


def passes(report: dict) -> bool:
    return report["frame_accuracy"] >= MIN_ACCURACY and report["motion_pass_rate"] >= MIN_MOTION_PASS


def main(argv=None) -> int:
    p = options.Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder written by moving_digits.train (default: the bundled one)")
    p.add_argument("--steps", type=options.integer(1, 1000), default=DEFAULT_STEPS)
    p.add_argument("--guidance", type=options.number(0.0), default=DEFAULT_GUIDANCE)
    p.add_argument("--frames", type=options.integer(MIN_FRAMES, MAX_FRAMES), default=MAX_FRAMES)
    p.add_argument("--seed", type=options.integer(0), default=0)
    p.add_argument("--strip", type=options.output_file, help="also write a PNG with one clip per digit, a row each")
    a = p.parse_args(argv)

    def body() -> int:
        import torch

        torch.set_num_threads(2)
        report = check(a.model, a.steps, a.guidance, a.frames, a.seed, strip=a.strip)
        print(json.dumps(report, indent=2))
        return 0 if passes(report) else 1

    return options.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
