"""A family's model inputs and latent-size axes, each declared once.

Every input of the context and embed graphs is one :class:`Input`: its name, its shape (which
dim is which axis), its dtype rule and its kind.  Everything else follows from that list:

- the graph-input names and the inputs a config leaves out (``Family.model_inputs``,
  ``Family.optional_inputs``);
- the dynamic dims torch.export gets for the model inputs (``Family.input_dims``): a shape entry
  that names an axis is that axis, an expression over axes (``frames*height*width``) is derived
  (AUTO), entries of config sizes (``Family.config_sizes``) and numbers are fixed;
- the random example inputs that tracing, verification, the benchmark and the tests feed
  (``Family.example_inputs``), drawn from one seeded generator in declaration order;
- how the forward's keywords become graph inputs (``Family.feed_from_kwargs``): one value per
  sample for per-sample inputs given once, masks in the latents' dtype.

The dims of the tensors *between* the graphs are not declared at all: the exporter reads them
off the earlier graph's exported outputs (see ``export/exporter.py``).

:func:`latent_axes` and :func:`text_axis` state the usual axes and their help texts once.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from typing import Any, Callable, Collection, Mapping

import torch

from ..errors import TeaCacheError
from ..shapes import eval_dim

AUTO = "auto"  # a dynamic dim whose name the exporter picks (it is derived from others)

KINDS = ("latents", "embedding", "timestep", "mask", "constant", "table")


@dataclass(frozen=True)
class Axis:
    """A dynamic axis of the model inputs, with its default optimization-profile range.

    ``fixed``: the model's weights allow this one size (a positional table built for it); the
    axis is then static in every graph and an example at another size is refused.
    """

    name: str
    min: int
    opt: int
    max: int
    multiple_of: int = 1
    help: str = ""
    fixed: bool = False


def patched_axes(axes: tuple[Axis, ...], patch: int) -> tuple[Axis, ...]:
    """``axes`` with every latent-size axis (``multiple_of`` > 1) starting at and stepping by the
    config's ``patch`` size: the smallest input is one patch."""
    return tuple(a if a.multiple_of == 1 else replace(a, min=patch, multiple_of=patch) for a in axes)


def latent_axes(*, height: tuple[int, int], width: tuple[int, int], frames: tuple[int, int] | None = None,
                patch: int = 1, patch_t: int = 1, spatial: int = 8, temporal: int = 4) -> tuple[Axis, ...]:
    """The latent-size axes, ``(opt, max)`` each, from one patch (and one frame) up.

    ``spatial`` / ``temporal``: the VAE's compression (pixels per latent pixel, video frames per
    latent frame), which the help texts state; ``patch`` / ``patch_t``: the sizes' multiple.
    """
    axes = []
    if frames is not None:
        opt, hi = frames
        padded = ", padded to a multiple of patch_size_t" if patch_t > 1 else ""
        axes.append(Axis("frames", patch_t, opt, hi, patch_t,
                         f"latent frames: (video frames - 1)/{temporal} + 1{padded}; "
                         f"{(opt - 1) * temporal + 1} frames -> {opt}"))
    multiple = ", a multiple of patch_size" if patch > 1 else ""
    for name, (opt, hi) in (("height", height), ("width", width)):
        axes.append(Axis(name, patch, opt, hi, patch, f"latent {name}: pixels/{spatial}{multiple}"))
    return tuple(axes)


def text_axis(encoder: str, length: int, min: int = 1) -> Axis:
    """Text tokens of a prompt padded to ``length`` by the pipeline's ``encoder`` tokenizer."""
    return Axis("txt_seq", min, length, length, help=f"text tokens ({encoder}, padded to max_sequence_length={length})")


@dataclass(frozen=True)
class Input:
    """One model input of the context / embed graphs.

    ``shape``: per dim an axis name (``"batch"``: dynamic, that axis), an expression over axes
    (``"frames*height*width"``: dynamic, derived), a config key or an expression over config
    keys (``"in_channels"``: fixed), or a number.
    ``kind`` says what the input holds and so what its default example is:

    - ``latents``, ``embedding``: standard normal values;
    - ``timestep``: one per sample across the family's ``timestep_scale`` (integers 0..999 for
      ``ddpm`` scales, int64 unless ``dtype`` says otherwise; else uniform in [0, scale), or in
      ``span`` where the model reads another range);
    - ``mask``: (batch, tokens) 0/1, right-padded, sample ``i`` keeping ``max(1, tokens - 1 - i)``
      tokens (lengths differ across the batch); an integer or bool mask a caller passes at run
      time is cast to the latents' dtype (``Family.feed_from_kwargs``);
    - ``constant``: ``value`` everywhere (a number, or the tensor a tuple of numbers spells);
    - ``table``: what ``make(config, sizes)`` builds (rotary tables, position ids), where
      ``sizes`` holds the axis sizes and the config's integers.

    ``dtype``: None for the export precision's dtype; ``torch.float32`` etc. where the model
    keeps the input at that dtype whatever the precision.  ``when``: a config key that must be
    truthy for the input to exist, or a test of the config.  ``dims``: the dynamic dims stated
    outright, for inputs whose ``shape`` is not declared (tables).
    """

    name: str
    shape: tuple[int | str, ...] = ()
    kind: str = "embedding"
    dtype: torch.dtype | None = None
    when: str | Callable[[Mapping[str, Any]], bool] | None = None
    value: float | tuple[float, ...] = 0.0
    span: tuple[float, float] | None = None
    make: Callable[[Mapping[str, Any], Mapping[str, int]], torch.Tensor] | None = None
    dims: Mapping[int, str] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TeaCacheError(f"input {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == "table") != (self.make is not None):
            raise TeaCacheError(f"input {self.name!r}: a 'table' input and only it takes make=")
        if self.kind != "table" and not self.shape:
            raise TeaCacheError(f"input {self.name!r}: a {self.kind!r} input needs its shape")

    def present(self, config: Mapping[str, Any]) -> bool:
        if callable(self.when):
            return bool(self.when(config))
        return not self.when or bool(config.get(self.when))

    def dynamic_dims(self, axes: Mapping[str, Axis], auto: Collection[str] = ()) -> dict[int, str]:
        """{dim index: axis name or AUTO} for torch.export; ``auto``: axes this family leaves to
        torch.export even where a dim is exactly that axis."""
        if self.dims is not None:
            return dict(self.dims)
        out = {}
        for i, entry in enumerate(self.shape):
            if isinstance(entry, int):
                continue
            moving = [n for n in _names(entry) if n in axes and not axes[n].fixed]
            if moving:
                out[i] = entry if entry in axes and entry not in auto else AUTO
        return out

    def example(self, sizes: Mapping[str, int], config: Mapping[str, Any], dtype: torch.dtype,
                generator: torch.Generator, timestep_scale) -> torch.Tensor:
        """A default example at ``sizes`` (axis sizes and the config's integers)."""
        dtype = self.dtype or dtype
        if self.kind == "table":
            return self.make(config, sizes).to(dtype)
        shape = self.size(sizes)
        if self.kind in ("latents", "embedding"):
            return torch.randn(shape, generator=generator).to(dtype)
        if self.kind == "timestep":
            if timestep_scale.integer:
                return torch.randint(0, 1000, shape, generator=generator).to(self.dtype or torch.int64)
            low, high = self.span or (0.0, timestep_scale.scale)
            return (torch.rand(shape, generator=generator) * (high - low) + low).to(dtype)
        if self.kind == "mask":
            batch, tokens = shape
            valid = torch.tensor([max(1, tokens - 1 - i) for i in range(batch)])
            return (torch.arange(tokens)[None, :] < valid[:, None]).to(dtype)
        return torch.as_tensor(self.value, dtype=dtype).expand(shape).contiguous()  # constant

    def size(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        try:
            return tuple(eval_dim(d, sizes) for d in self.shape)
        except TeaCacheError as exc:
            raise TeaCacheError(
                f"input {self.name!r} has shape {self.shape}: {exc}; each entry is an axis, an integer "
                f"config key, a number or an expression of those"
            ) from exc


def _names(entry: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(entry, mode="eval")) if isinstance(n, ast.Name)}


def config_sizes(config: Mapping[str, Any]) -> dict[str, int]:
    """The config's integers, which a shape entry may name."""
    return {k: v for k, v in config.items() if type(v) is int}


def check_fixed(family: str, axes: Collection[Axis], dims: Mapping[str, int]) -> None:
    """An example at a size the model fixes cannot be exported: say which size to use."""
    for a in axes:
        if a.fixed and a.name in dims and dims[a.name] != a.opt:
            n = a.opt
            raise TeaCacheError(
                f"{a.name}={dims[a.name]}: this {family} config fixes {a.name} at {n} ({a.help}), which "
                f"the export cannot make dynamic: use --axis {a.name}={n}:{n}:{n}"
            )
