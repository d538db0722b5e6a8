"""The video model's driver for the tools (``teacache_trt.drivers`` entry point ``video``):
calibration generations come from the real MovingDigitsPipeline, and ``teacache-render``
renders video jobs through it.

A job's prompt is the digit (``"0"`` .. ``"9"``); its own fields are ``direction`` (a compass
point, default ``"E"``), ``speed`` (1 or 2 pixels per frame, default 1) and ``frames`` (5 to
9, default 9).  Each job's output is a :class:`~teacache_trt.tools.render.encode.Video` of
greyscale uint8 frames.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import TeaCacheError, shown
from ..tools.drivers import ExportPlan
from .checks import check_conditions, check_frames
from .constants import (
    CALIBRATION_FILE,
    DEFAULT_GUIDANCE,
    DEFAULT_MODEL_DIR,
    DEFAULT_STEPS,
    EMBEDDER_CONFIG,
    MAGCACHE_FILE,
    MAX_FRAMES,
    NUM_CLASSES,
)

# torch and the pipeline are imported where they are used: the tools load this driver (an
# entry point) to find the one for a model, which must stay quick.

# The exported profile is the Wan family's for this model (it recognises the config): 5-9
# frames of one canvas size, the 3-token prompt, cond and uncond as separate calls of up to
# 40 clips each (a sub-batch of one prompt needs batch min 1); only larger batches widen it.
BATCH = (1, 8, 40)
JOB_DEFAULTS = {"direction": "E", "speed": 1, "frames": MAX_FRAMES}
PROMPTS = tuple(str(d) for d in range(NUM_CLASSES))
FPS = 6.0  # frames per second of the written videos: a 9-frame clip lasts 1.5 s
DISPLAY_SCALE = 4  # written frames are 128x128, each model pixel a sharp 4x4 block (players blur 32x32 ones)


def job_conditions(job) -> tuple[int, str, int, int]:
    """(digit, direction, speed, frames) of a render job, checked."""
    if job.prompt not in PROMPTS:
        raise TeaCacheError(f"prompt {shown(job.prompt)} is not a digit: the video model draws \"0\" .. \"9\" "
                            f"(write the prompt as a one-character string)")
    extra = {**JOB_DEFAULTS, **job.extra}
    digit, direction, speed, frames = int(job.prompt), extra["direction"], extra["speed"], extra["frames"]
    check_frames(frames, "frames")  # named as the job file names it
    check_conditions([digit], [direction], [speed], frames)
    return digit, direction, speed, frames


def _read_json(path: Path, what: str, fix: str) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise TeaCacheError(f"{path} is not {what} ({type(exc).__name__}): {fix}") from None
    if not isinstance(data, dict):
        raise TeaCacheError(f"{path} is not {what} (a JSON object): {fix}")
    return data


def shipped_calibration(model_dir: Path) -> tuple[list[float] | None, str]:
    """The TeaCache coefficients ``teacache-calibrate --driver video --json`` wrote beside the
    model's weights, with words for the manifest's source; (None, "") where there are none."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None, ""
    fix = f"write one with teacache-calibrate ART_DIR --driver video --json {path}"
    data = _read_json(path, "a calibration JSON with 'coefficients'", fix)
    try:
        coefficients = [float(c) for c in data["coefficients"]]
        r2 = float(data.get("holdout", {}).get("r2", float("nan")))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TeaCacheError(f"{path} is not a calibration JSON with 'coefficients' ({type(exc).__name__}): "
                            f"{fix}") from None
    return coefficients, (f"teacache-calibrate --driver video (shipped with the model as {CALIBRATION_FILE}, "
                          f"held-out R² {r2:.3f})")


def shipped_magcache(model_dir: Path) -> dict | None:
    """The manifest's MagCache entry from the ratios ``teacache-calibrate --policy magcache
    --driver video --json`` wrote beside the weights (MagCache's default threshold, skip limit
    and retention apply); None where there are none."""
    path = Path(model_dir) / MAGCACHE_FILE
    if not path.is_file():
        return None
    fix = f"write one with teacache-calibrate ART_DIR --policy magcache --driver video --json {path}"
    data = _read_json(path, "a MagCache calibration JSON with 'mag_ratios'", fix)
    missing = [k for k in ("mag_ratios", "std", "cos_dis", "steps") if k not in data]
    if missing:
        raise TeaCacheError(f"{path} lacks {', '.join(missing)}: {fix}")
    return {"mag_ratios": data["mag_ratios"], "std": data["std"], "cos_dis": data["cos_dis"], "steps": data["steps"],
            "source": f"teacache-calibrate --policy magcache --driver video ({data['steps']} steps, shipped with "
                      f"the model as {MAGCACHE_FILE})"}


class VideoDriver:
    name = "video"

    # --- calibration ---------------------------------------------------------------------
    def applies(self, manifest) -> bool:
        """True for artifacts exported from the bundled model (its folder or transformer/)."""
        return Path(manifest.source).resolve() in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR / "transformer")

    def calibration(self, steps: int):
        from .calibration import video_driver

        return video_driver(steps)

    # --- evaluation (teacache-eval --model video) -----------------------------------------
    def evaluate(self, argv) -> int:
        from .harness import main

        return main(argv)

    # --- rendering -----------------------------------------------------------------------
    def handles(self, model_dir: Path) -> bool:
        """A moving-digits model folder: the bundled one or one written by ``moving_digits.train``."""
        return (Path(model_dir) / EMBEDDER_CONFIG).is_file()

    def default_model(self) -> Path:
        return DEFAULT_MODEL_DIR

    def defaults(self, model_dir: Path) -> dict:
        return {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE}

    def job_fields(self, model_dir: Path) -> dict[str, type]:
        return {"direction": str, "speed": int, "frames": int}

    def export_plan(self, model_dir: Path, batch_size: int) -> ExportPlan:
        """The batch the renders need, and the model's own calibrations (beside its weights) as
        the artifact's TeaCache coefficients and MagCache ratios."""
        lo, opt, hi = BATCH
        coefficients, source = shipped_calibration(Path(model_dir))
        magcache = shipped_magcache(Path(model_dir))
        return ExportPlan(Path(model_dir) / "transformer", {"batch": (lo, opt, max(hi, batch_size))},
                          coefficients=coefficients, coefficients_source=source,
                          policy_data={"magcache": magcache} if magcache else {})

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
        not depend on its batch neighbours.  A clip whose final latents are not finite fails
        with that cause instead of drawing blank frames."""
        import torch

        from ..tools.render.encode import Failed, Video
        from .data import to_pixels
        from .pipeline import to_pil

        conditions = [job_conditions(j) for j in jobs]
        digits, directions, speeds, frames = (list(c) for c in zip(*conditions))
        first = jobs[0]  # a batch shares steps, guidance and frames (batch_key)
        generators = [torch.Generator().manual_seed(j.seed) for j in jobs]
        final = pipe(digits, directions, speeds, num_frames=frames[0], num_inference_steps=first.steps,
                     guidance_scale=first.guidance, generator=generators, output_type="latent").frames
        finite = torch.isfinite(final).flatten(1).all(1).tolist()
        clips = to_pil(to_pixels(torch.nan_to_num(final.float().cpu())).clamp(-1.0, 1.0))
        clips = [[f.resize((f.width * DISPLAY_SCALE, f.height * DISPLAY_SCALE), 0) for f in clip] for clip in clips]
        return [Video(clip, FPS) if ok else Failed(
            f"the latents became NaN or infinite (guidance {job.guidance:g}, {job.steps} steps): the frames would "
            f"be blank; lower the guidance") for job, clip, ok in zip(jobs, clips, finite)]


DRIVER = VideoDriver()
