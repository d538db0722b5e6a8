"""Where generations come from, for tools that need real ones (calibration, rendering).

A driver knows one kind of model and how to run its generations (its pipeline, its prompts).
The tools find drivers through the ``teacache_trt.drivers`` entry-point group, so a demo or a
user package adds one by declaring it in its packaging, and the tools import no demo code:

    entry_points={"teacache_trt.drivers": ["digits = teacache_trt.digits.driver:DRIVER"]}

A driver object has ``name``, ``applies(manifest) -> bool`` (is this artifact its model?)
and ``calibration(steps) -> generate(transformer, seed)``.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Protocol

from ..errors import TeaCacheError

GROUP = "teacache_trt.drivers"
Generate = Callable[[object, int], None]  # (transformer, seed) -> runs one generation


class Driver(Protocol):
    name: str

    def applies(self, manifest) -> bool: ...

    def calibration(self, steps: int) -> Generate: ...


def installed_drivers() -> dict[str, Driver]:
    drivers = {}
    for ep in entry_points(group=GROUP):
        try:
            drivers[ep.name] = ep.load()
        except Exception as exc:  # a broken plugin must not break the tools for other models
            raise TeaCacheError(f"the {GROUP} entry point {ep.name!r} ({ep.value}) cannot be loaded: {exc}") from exc
    return drivers


def driver_for(manifest, name: str | None = None) -> Driver | None:
    """The named driver, else the installed one that applies to ``manifest``, else None."""
    drivers = installed_drivers()
    if name is not None:
        if name not in drivers:
            raise TeaCacheError(
                f"no driver named {name!r} is installed (installed: {sorted(drivers) or 'none'}); "
                f"use --driver synthetic or install the package that provides it"
            )
        return drivers[name]
    return next((d for d in drivers.values() if d.applies(manifest)), None)
