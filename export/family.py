"""What a model family is, as data plus three small modules.

One file per family under ``families/`` subclasses :class:`Family` and registers it; nothing
else in the project branches on the family.  The three parts call the diffusers model's own
submodules (``x_embedder``, ``transformer_blocks``, ``norm_out`` ...); only the glue between
them, which lives in the model's ``forward``, is written here, per family.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..errors import TeaCacheError
from ..manifest import ForcedSteps

AUTO = "auto"  # a dynamic dim whose name the exporter picks (it is derived from others)


@dataclass(frozen=True)
class Variant:
    """One set of TeaCache coefficients (numpy.poly1d order) and its defaults."""

    name: str
    coefficients: tuple[float, ...]
    default_threshold: float
    forced: ForcedSteps = field(default_factory=ForcedSteps)


@dataclass(frozen=True)
class Axis:
    """A dynamic axis of the model inputs, with its default optimization-profile range."""

    name: str
    min: int
    opt: int
    max: int
    multiple_of: int = 1
    help: str = ""


class Part(torch.nn.Module):
    """One of the three graphs: named tensors in, named tensors out.

    ``dynamic`` maps an input name to ``{dim index: axis name or AUTO}``; every other dim is
    fixed by the model config.
    """

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    dynamic: Mapping[str, Mapping[int, str]] = {}

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.eval()  # parts only ever run for inference (export traces eval-mode behaviour)

    def run(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = self(*(feed[n] for n in self.input_names))
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        return dict(zip(self.output_names, outs))


def criterion_sums(signal: torch.Tensor, prev_signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``Σ|s − s_prev|`` and ``Σ|s_prev|`` in fp32 (DESIGN §3).

    Sums, not means, so that both the batch-wide ratio (Σ over the batch of each) and the
    per-sample ratios come out exactly from the same two vectors.
    """
    s = signal.float().flatten(1)
    if prev_signal.ndim == 0:
        # Eager probe for the signal's shape (export traces with a full-rank prev_signal,
        # so this branch never reaches a graph).
        zeros = s.new_zeros(s.shape[0])
        return zeros, zeros
    p = prev_signal.float().flatten(1)
    return (s - p).abs().sum(dim=1), p.abs().sum(dim=1)


class Family:
    """A diffusers DiT class and everything the project knows about it."""

    name: ClassVar[str]
    class_name: ClassVar[str]  # diffusers class, as in config.json's _class_name
    model_inputs: ClassVar[tuple[str, ...]]  # graph-input names of the embed graph (not prev_signal)
    # diffusers forward keywords the adapter maps to graph inputs (default: model_inputs);
    # any other non-None keyword changes the model's output and is refused at run time
    forward_kwargs: ClassVar[tuple[str, ...]] = ()
    # inputs present only when a config key is truthy, e.g. {"guidance": "guidance_embeds"}
    optional_inputs: ClassVar[dict[str, str]] = {}
    # config key counting the blocks whose first one gives the signal (None: not needed)
    signal_block_count: ClassVar[str | None] = None
    variants: ClassVar[dict[str, Variant]]
    axes: ClassVar[tuple[Axis, ...]]
    signal: ClassVar[str]
    signal_dims: ClassVar[dict[int, str]]  # dynamic dims of the signal (and prev_signal)
    cached: ClassVar[tuple[str, ...]]
    note: ClassVar[str] = ""

    # --- model side -----------------------------------------------------------------
    @classmethod
    def model_class(cls):
        import diffusers

        return getattr(diffusers, cls.class_name)

    @classmethod
    def check_config(cls, config: Mapping[str, Any]) -> None:
        """Raise TeaCacheError for configs this adapter cannot split."""
        key = cls.signal_block_count
        if key and (config.get(key) or 0) < 1:
            raise TeaCacheError(
                f"{cls.class_name} config has {key}={config.get(key)}: the TeaCache signal is taken "
                f"from transformer_blocks[0], so at least one such block is needed"
            )

    @classmethod
    def variant_for(cls, config: Mapping[str, Any]) -> str:
        return next(iter(cls.variants))

    @classmethod
    def inputs_for(cls, config: Mapping[str, Any]) -> tuple[str, ...]:
        """The embed graph's model inputs for this config (in graph order)."""
        return tuple(n for n in cls.model_inputs
                     if n not in cls.optional_inputs or config.get(cls.optional_inputs[n]))

    @classmethod
    def parts(cls, model: torch.nn.Module) -> dict[str, Part]:
        raise NotImplementedError

    @classmethod
    def example_inputs(
        cls, config: Mapping[str, Any], dims: Mapping[str, int], dtype: torch.dtype, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Random model inputs (graph names) at the given axis sizes."""
        raise NotImplementedError

    @classmethod
    def input_dims(cls, config: Mapping[str, Any]) -> dict[str, dict[int, str]]:
        """Dynamic dims of the model inputs: name -> {dim index: axis name} (inputs absent from
        this config may be listed; the exporter only reads the embed graph's inputs)."""
        raise NotImplementedError

    # --- runtime side ---------------------------------------------------------------
    @classmethod
    def feed_from_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The diffusers forward's keyword arguments -> graph inputs by name."""
        return {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}

    @classmethod
    def accepted_kwargs(cls) -> frozenset[str]:
        return frozenset(cls.forward_kwargs or cls.model_inputs)

    @classmethod
    def kwargs_from_feed(cls, feed: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Inverse of feed_from_kwargs: to call the original diffusers model in checks."""
        return dict(feed)

    @classmethod
    def axes_for(cls, config: Mapping[str, Any]) -> tuple[Axis, ...]:
        """This config's axes and default ranges: ``axes`` unless the config changes them (a
        patch size that sets ``multiple_of``, a size the weights fix)."""
        return cls.axes

    @classmethod
    def axis(cls, name: str, config: Mapping[str, Any] | None = None) -> Axis:
        axes = cls.axes if config is None else cls.axes_for(config)
        for a in axes:
            if a.name == name:
                return a
        raise TeaCacheError(
            f"family {cls.name!r} has no axis {name!r}; its axes are {[a.name for a in axes]}"
        )


_REGISTRY: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    _REGISTRY[cls.name] = cls
    return cls


def get_family(name_or_class: str) -> type[Family]:
    from . import families  # noqa: F401  (imports register every family)

    for fam in _REGISTRY.values():
        if name_or_class in (fam.name, fam.class_name):
            return fam
    known = ", ".join(f"{f.name} ({f.class_name})" for f in _REGISTRY.values())
    raise TeaCacheError(
        f"unknown model family {name_or_class!r}; supported: {known}. "
        f"Pass --family with one of these names, or add an adapter under export/families/"
    )


def all_families() -> list[type[Family]]:
    from . import families  # noqa: F401

    return list(_REGISTRY.values())
