"""The digits model's driver for the tools (``teacache_trt.drivers`` entry point ``digits``):
calibration generations come from the real DigitsPipeline over every class, and
``teacache-render`` renders digit jobs (prompt ``"0"`` .. ``"9"``) through it."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import TeaCacheError, shown
from ..tools.drivers import ExportPlan
from .constants import BUDGET_FILE, CALIBRATION_FILE, DEFAULT_MODEL_DIR, DIGITS_AXES, MAGCACHE_FILE, NUM_CLASSES

# torch and the pipeline are imported where they are used: the tools load this driver (an
# entry point) to find the one for a model, which must stay quick.
PROMPTS = tuple(str(d) for d in range(NUM_CLASSES))


class DigitsDriver:
    name = "digits"

    # --- calibration ---------------------------------------------------------------------
    def applies(self, manifest) -> bool:
        """True for artifacts exported from the bundled model (its folder or transformer/)."""
        source = Path(manifest.source).resolve()
        return source in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR / "transformer")

    def calibration(self, steps: int):
        from .calibration import digits_driver

        return digits_driver(steps)

    # --- evaluation (teacache-eval --model digits) ----------------------------------------
    def evaluate(self, argv) -> int:
        from .harness import main

        return main(argv)

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
        """The digits profile, and the model's own calibration (``teacache_calibration.json``
        beside the weights) as the artifact's TeaCache coefficients: a threshold means the
        same in teacache-render as in teacache-eval's calibrated rows.  The budget search and
        MagCache ratios shipped beside them go into the manifest's policy data."""
        lo, opt, hi = DIGITS_AXES["batch"]
        coefficients, source = shipped_calibration(Path(model_dir))
        return ExportPlan(Path(model_dir) / "transformer", {**DIGITS_AXES, "batch": (lo, opt, max(hi, batch_size))},
                          coefficients=coefficients, coefficients_source=source,
                          policy_data=shipped_policy_data(Path(model_dir)))

    def check_job(self, model_dir: Path, job) -> None:
        if job.prompt not in PROMPTS:
            raise TeaCacheError(
                f"prompt {shown(job.prompt)} is not a digit: the digits model draws \"0\" .. \"9\" "
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
        same noise whatever its batch neighbours.  A job whose final latents are not finite
        (NaN or inf, e.g. from a guidance of 1e30) fails with that cause instead of drawing
        a blank image."""
        import torch

        from ..tools.render.encode import Failed
        from .data import unpack_tokens
        from .pipeline import to_pil

        labels = [int(j.prompt) for j in jobs]
        latents = torch.cat([pipe.prepare_latents(1, torch.Generator().manual_seed(j.seed)) for j in jobs])
        first = jobs[0]  # a batch shares steps and guidance (batch_key)
        final = pipe(labels, num_inference_steps=first.steps, guidance_scale=first.guidance,
                     latents=latents, output_type="latent").images
        finite = torch.isfinite(final).flatten(1).all(1).tolist()
        images = to_pil(unpack_tokens(torch.nan_to_num(final.float().cpu())).clamp(-1.0, 1.0))
        return [image if ok else Failed(
            f"the latents became NaN or infinite (guidance {job.guidance:g}, {job.steps} steps): the image would be "
            f"blank; lower the guidance") for job, image, ok in zip(jobs, images, finite)]


def shipped_calibration(model_dir: Path) -> tuple[list[float] | None, str]:
    """The coefficients ``teacache-calibrate --driver digits --json`` wrote beside the model's
    weights, with words for the manifest's source; (None, "") where the folder has none."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None, ""
    try:
        data = json.loads(path.read_bytes())
        coefficients = [float(c) for c in data["coefficients"]]
        r2 = float(data.get("holdout", {}).get("r2", float("nan")))
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise TeaCacheError(f"{path} is not a calibration JSON with 'coefficients' ({type(exc).__name__}): "
                            f"write one with teacache-calibrate ART_DIR --driver digits --json {path}") from None
    return coefficients, (f"teacache-calibrate --driver digits (shipped with the model as {CALIBRATION_FILE}, "
                          f"held-out R² {r2:.3f})")


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
