"""The digits model's driver for the tools (``teacache_trt.drivers`` entry point ``digits``):
calibration generations come from the real DigitsPipeline over every class."""
from __future__ import annotations

from pathlib import Path

from .calibration import digits_driver
from .pipeline import DEFAULT_MODEL_DIR


class DigitsDriver:
    name = "digits"

    def applies(self, manifest) -> bool:
        """True for artifacts exported from the bundled model (its folder or transformer/)."""
        source = Path(manifest.source).resolve()
        return source in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR / "transformer")

    def calibration(self, steps: int):
        return digits_driver(steps)


DRIVER = DigitsDriver()
