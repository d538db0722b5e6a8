"""Where generations come from, for tools that need real ones (calibration, rendering).

A driver knows one kind of model and how to run its generations (its pipeline, its prompts).
The tools find drivers through the ``teacache_trt.drivers`` entry-point group, so a demo or a
user package adds one by declaring it in its packaging, and the tools import no demo code:

    entry_points={"teacache_trt.drivers": ["digits = teacache_trt.digits.driver:DRIVER"]}

A driver has a ``name`` and one or both of two parts:

- calibration (:class:`Driver`): ``applies(manifest) -> bool`` (is this artifact its model?)
  and ``calibration(steps) -> generate(transformer, seed)``;
- rendering (:class:`RenderDriver`, used by ``teacache-render``): which model folders it
  handles, the job fields its model takes, how to export the model on first use, and
  ``render_batch(pipe, jobs) -> outputs`` over a pipeline whose transformer is the compiled one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Protocol, Sequence

from ..errors import TeaCacheError

GROUP = "teacache_trt.drivers"
# (transformer, seed) -> runs one generation and returns its result (a tensor: the budget
# search compares results), or None where the driver cannot
Generate = Callable[[object, int], Any]


class Driver(Protocol):
    name: str

    def applies(self, manifest) -> bool: ...

    def calibration(self, steps: int) -> Generate: ...


@dataclass(frozen=True)
class ExportPlan:
    """What ``teacache-render`` exports when no ``--artifacts`` is given."""

    transformer_dir: Path  # the diffusers transformer folder (config.json + weights)
    axes: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)  # overrides of the family's defaults
    # TeaCache coefficients the model ships with (a calibration), the artifact's instead of the
    # variant's, and where they come from (the manifest's source; "teacache-calibrate ..." for a fit)
    coefficients: Sequence[float] | None = None
    coefficients_source: str = ""
    # a two-expert pipeline's second transformer (Wan2.2 A14B's low-noise expert), exported beside
    transformer_2_dir: Path | None = None
    # calibration results shipped with the model, by policy name (the manifest's policy_data
    # entries, e.g. {"budget": {"searches": ...}}): written into the artifact's manifest
    policy_data: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class RenderDriver(Protocol):
    """A model ``teacache-render`` can render.  ``jobs`` are ``tools.render.jobs.Job`` objects:
    ``id``, ``prompt``, ``seed``, ``steps``, ``guidance``, ``threshold`` and ``extra`` (the
    model's own fields, named in ``job_fields``)."""

    name: str

    def handles(self, model_dir: Path) -> bool: ...

    def default_model(self) -> Path | None: ...

    def defaults(self, model_dir: Path) -> Mapping[str, Any]: ...  # e.g. {"steps": 20, "guidance": 3.0}

    def job_fields(self, model_dir: Path) -> Mapping[str, type]: ...  # name -> str, int, float or Path

    def export_plan(self, model_dir: Path, batch_size: int) -> ExportPlan: ...

    def check_job(self, model_dir: Path, job) -> None: ...

    def batch_key(self, job) -> Hashable: ...

    def load(self, model_dir: Path, art_dir: Path, *, backend: str, device: str, decisions: str): ...

    def render_batch(self, pipe, jobs: Sequence) -> list: ...


def _load(ep) -> Any:
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin must not break the tools for other models
        raise TeaCacheError(f"the {GROUP} entry point {ep.name!r} ({ep.value}) cannot be loaded: {exc}") from exc


def installed_drivers() -> dict[str, Any]:
    return {ep.name: _load(ep) for ep in entry_points(group=GROUP)}


def load_driver(name: str) -> Any | None:
    """The installed driver ``name`` alone (no other entry point imported), or None."""
    found = entry_points(group=GROUP, name=name)
    return _load(next(iter(found))) if found else None


def driver_for(manifest, name: str | None = None) -> Driver | None:
    """The named calibration driver, else the installed one that applies to ``manifest``, else None."""
    drivers = {k: d for k, d in installed_drivers().items() if hasattr(d, "calibration")}
    if name is not None:
        if name not in drivers:
            raise TeaCacheError(
                f"no driver named {name!r} is installed (installed: {sorted(drivers) or 'none'}); "
                f"use --driver synthetic or install the package that provides it"
            )
        return drivers[name]
    return next((d for d in drivers.values() if d.applies(manifest)), None)


def render_drivers() -> dict[str, RenderDriver]:
    """Installed drivers that can render, by name (sorted, so the choice below is stable)."""
    return {k: d for k, d in sorted(installed_drivers().items()) if hasattr(d, "render_batch")}


def render_driver_for(model_dir: Path) -> RenderDriver:
    """The installed render driver that handles the model folder ``model_dir``."""
    drivers = render_drivers()
    for driver in drivers.values():
        if driver.handles(model_dir):
            return driver
    raise TeaCacheError(
        f"no installed driver can render the model at {model_dir} (drivers: {sorted(drivers) or 'none'}): "
        f"give a diffusers pipeline folder (with model_index.json) or the bundled digits model"
    )


def model_folder(value: Path | str | None) -> Path:
    """``--model`` of the tools: a folder, or the name of an installed driver whose model is
    bundled (``digits``, ``video``) where no folder of that name exists; none: the digits model."""
    if value is None:
        return default_render_model()
    path = Path(value)
    if not path.is_dir() and str(value) in render_drivers():
        return default_render_model(str(value))
    return path


def default_render_model(name: str = "digits") -> Path:
    """The model rendered when none is given: the one the ``name`` driver bundles."""
    driver = render_drivers().get(name)
    model = driver.default_model() if driver is not None else None
    if model is None:
        raise TeaCacheError(
            f"no --model given and the {name!r} driver (entry point in {GROUP}) is not installed: "
            f"pass --model PATH (a diffusers pipeline folder) or reinstall teacache-trt"
        )
    return Path(model)
