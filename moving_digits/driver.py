"""The video model's driver for the tools (``teacache_trt.drivers`` entry point ``video``):
calibration generations come from the real MovingDigitsPipeline, and ``teacache-render``
renders video jobs through it.

A job's prompt is the digit (``"0"`` .. ``"9"``); its own fields are ``direction`` (a compass
point, default ``"E"``), ``speed`` (1 or 2 pixels per frame, default 1) and ``frames`` (5 to
9, default 9).  Each job's output is a :class:`~teacache_trt.tools.render.encode.Video`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import TeaCacheError
from ..tools.drivers import ExportPlan
from ..tools.render.encode import Video
from .calibration import DEFAULT_GUIDANCE, DEFAULT_STEPS, video_driver
from .data import MAX_FRAMES, NUM_CLASSES
from .pipeline import DEFAULT_MODEL_DIR, check_conditions, check_frames

# The exported profile is the Wan family's for this model (it recognises the config): 5-9
# frames of one canvas size, the 3-token prompt, cond and uncond as separate calls of up to
# 40 clips each (a sub-batch of one prompt needs batch min 1); only larger batches widen it.
BATCH = (1, 8, 40)
JOB_DEFAULTS = {"direction": "E", "speed": 1, "frames": MAX_FRAMES}
PROMPTS = tuple(str(d) for d in range(NUM_CLASSES))
FPS = 6.0  # frames per second of the written videos: a 9-frame clip lasts 1.5 s


def job_conditions(job) -> tuple[int, str, int, int]:
    """(digit, direction, speed, frames) of a render job, checked."""
    if job.prompt not in PROMPTS:
        raise TeaCacheError(f"prompt {job.prompt!r} is not a digit: the video model draws \"0\" .. \"9\" "
                            f"(write the prompt as a one-character string)")
    extra = {**JOB_DEFAULTS, **job.extra}
    digit, direction, speed, frames = int(job.prompt), extra["direction"], extra["speed"], extra["frames"]
    check_frames(frames, "frames")  # named as the job file names it
    check_conditions([digit], [direction], [speed], frames)
    return digit, direction, speed, frames


class VideoDriver:
    name = "video"

    # --- calibration ---------------------------------------------------------------------
    def applies(self, manifest) -> bool:
        """True for artifacts exported from the bundled model (its folder or transformer/)."""
        return Path(manifest.source).resolve() in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR / "transformer")

    def calibration(self, steps: int):
        return video_driver(steps)

    # --- rendering -----------------------------------------------------------------------
    def handles(self, model_dir: Path) -> bool:
        """A moving-digits model folder: the bundled one or one written by ``moving_digits.train``."""
        from .conditioning import CONFIG_NAME

        return (Path(model_dir) / CONFIG_NAME).is_file()

    def default_model(self) -> Path:
        return DEFAULT_MODEL_DIR

    def defaults(self, model_dir: Path) -> dict:
        return {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE}

    def job_fields(self, model_dir: Path) -> dict[str, type]:
        return {"direction": str, "speed": int, "frames": int}

    def export_plan(self, model_dir: Path, batch_size: int) -> ExportPlan:
        lo, opt, hi = BATCH
        return ExportPlan(Path(model_dir) / "transformer", {"batch": (lo, opt, max(hi, batch_size))})

    def check_job(self, model_dir: Path, job) -> None:
        job_conditions(job)

    def batch_key(self, job):
        """Clips of one call share steps, guidance and length; digit and motion vary per clip."""
        return (job.steps, job.guidance, job_conditions(job)[3])

    def load(self, model_dir: Path, art_dir: Path, *, backend: str, device: str, decisions: str):
        import teacache_trt

        from .pipeline import MovingDigitsPipeline

        pipe = MovingDigitsPipeline.from_pretrained(model_dir)
        teacache_trt.enable(pipe, art_dir, backend=backend, device=device, decisions=decisions)
        return pipe

    def render_batch(self, pipe, jobs) -> list:
        """One pipeline call; each clip's noise comes from its own job's seed, so a clip does
        not depend on its batch neighbours."""
        conditions = [job_conditions(j) for j in jobs]
        digits, directions, speeds, frames = (list(c) for c in zip(*conditions))
        first = jobs[0]  # a batch shares steps, guidance and frames (batch_key)
        generators = [torch.Generator().manual_seed(j.seed) for j in jobs]
        clips = pipe(digits, directions, speeds, num_frames=frames[0], num_inference_steps=first.steps,
                     guidance_scale=first.guidance, generator=generators, output_type="pil").frames
        return [Video(clip, FPS) for clip in clips]


DRIVER = VideoDriver()
