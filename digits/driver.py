"""The digits model's driver for the tools (``teacache_trt.drivers`` entry point ``digits``):
calibration generations come from the real DigitsPipeline over every class, and
``teacache-render`` renders digit jobs (prompt ``"0"`` .. ``"9"``) through it."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import TeaCacheError
from ..tools.drivers import ExportPlan
from .calibration import BUDGET_FILE, MAGCACHE_FILE, digits_driver
from .data import NUM_CLASSES, NUM_TEXT_TOKENS
from .pipeline import DEFAULT_MODEL_DIR

# The exported profile: CFG runs cond and uncond as separate calls of up to 100 digits each
# (the quality harness renders 100 at once); a sub-batch of one prompt needs batch min 1.
DIGITS_AXES = {"batch": (1, 100, 200), "img_seq": (64, 64, 64), "txt_seq": (NUM_TEXT_TOKENS,) * 3}
PROMPTS = tuple(str(d) for d in range(NUM_CLASSES))


class DigitsDriver:
    name = "digits"

    # --- calibration ---------------------------------------------------------------------
    def applies(self, manifest) -> bool:
        """True for artifacts exported from the bundled model (its folder or transformer/)."""
        source = Path(manifest.source).resolve()
        return source in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR / "transformer")

    def calibration(self, steps: int):
        return digits_driver(steps)

    # --- rendering -----------------------------------------------------------------------
    def handles(self, model_dir: Path) -> bool:
        """A digits model folder: the bundled one or one written by ``digits.train``."""
        return (Path(model_dir) / "label_embedder_config.json").is_file()

    def default_model(self) -> Path:
        return DEFAULT_MODEL_DIR

    def defaults(self, model_dir: Path) -> dict:
        return {"steps": 20, "guidance": 3.0}  # the README's settings: 100% of digits recognised

    def job_fields(self, model_dir: Path) -> dict[str, type]:
        return {}  # a digit, a seed, steps, guidance, threshold: nothing model-specific

    def export_plan(self, model_dir: Path, batch_size: int) -> ExportPlan:
        lo, opt, hi = DIGITS_AXES["batch"]
        return ExportPlan(Path(model_dir) / "transformer", {**DIGITS_AXES, "batch": (lo, opt, max(hi, batch_size))},
                          policy_data=shipped_policy_data(Path(model_dir)))

    def check_job(self, model_dir: Path, job) -> None:
        if job.prompt not in PROMPTS:
            raise TeaCacheError(
                f"prompt {job.prompt!r} is not a digit: the digits model draws \"0\" .. \"9\" "
                f"(write the prompt as a one-character string)"
            )

    def batch_key(self, job):
        return (job.steps, job.guidance)

    def load(self, model_dir: Path, art_dir: Path, *, backend: str, device: str, decisions: str):
        import teacache_trt

        from .pipeline import DigitsPipeline

        pipe = DigitsPipeline.from_pretrained(model_dir)
        teacache_trt.enable(pipe, art_dir, backend=backend, device=device, decisions=decisions)
        return pipe

    def render_batch(self, pipe, jobs) -> list:
        """One pipeline call; each job's noise comes from its own seed, so a job draws the
        same noise whatever its batch neighbours."""
        labels = [int(j.prompt) for j in jobs]
        latents = torch.cat([pipe.prepare_latents(1, torch.Generator().manual_seed(j.seed)) for j in jobs])
        first = jobs[0]  # a batch shares steps and guidance (batch_key)
        return pipe(labels, num_inference_steps=first.steps, guidance_scale=first.guidance,
                    latents=latents, output_type="pil").images


def shipped_policy_data(model_dir: Path) -> dict:
    """The calibrations shipped beside the weights, as the manifest's ``policy_data`` entries:
    the budget search (what ``teacache-calibrate --policy budget --json`` wrote) and MagCache's
    ratios (``--policy magcache --json``); nothing for a file the folder does not have."""
    from ..tools import budget_search, calibrate_magcache

    out = {}
    path = Path(model_dir) / BUDGET_FILE
    if path.is_file():
        search = budget_search.read_json(path)
        out["budget"] = {"searches": {str(search.steps): search.manifest_entry(
            f"{BUDGET_FILE} shipped with the model (teacache-calibrate --policy budget)")}}
    path = Path(model_dir) / MAGCACHE_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_bytes())
            data.pop("policy", None)
            ratios = calibrate_magcache.MagCacheCalibration(**data)
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise TeaCacheError(f"{path} is not a MagCache calibration ({type(exc).__name__}: {str(exc)[:200]}): write "
                                f"one with teacache-calibrate ART_DIR --policy magcache --json {path}") from None
        out["magcache"] = calibrate_magcache.manifest_data(ratios, {})
    return out


DRIVER = DigitsDriver()
