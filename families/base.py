"""What a model family is, as data plus three small modules.

One file per family in this package subclasses :class:`Family` and registers it; nothing
else in the project branches on the family.  The three parts call the model's own
submodules (``x_embedder``, ``transformer_blocks``, ``norm_out`` ...); only the glue between
them, which lives in the model's ``forward``, is written per family.

Export, the runtime and the tools all read model knowledge from here; this layer imports
neither of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..dtypes import precision_dtype
from ..errors import TeaCacheError
from .magcache_ratios import PublishedRatios
from .model_io import find_model_dir, plain_config, read_config

AUTO = "auto"  # a dynamic dim whose name the exporter picks (it is derived from others)
ACCUMULATE = ("raw", "abs")  # acc += poly(d) (upstream TeaCache), acc += |poly(d)| (vLLM-Omni)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_coefficients(values: Any, where: str) -> list[float]:
    """A polynomial (numpy.poly1d order): a non-empty list of finite numbers.  NaN or inf would
    switch TeaCache off without a word; strings or null would fail mid-generation."""
    if isinstance(values, tuple):
        values = list(values)
    if not isinstance(values, list) or not values or not all(map(_is_number, values)):
        raise TeaCacheError(f"{where}: coefficients {values!r:.200} must be a non-empty list of finite numbers "
                            f"(numpy.poly1d order, highest degree first)")
    return [float(v) for v in values]


def check_accumulate(value: Any) -> str:
    if value not in ACCUMULATE or not isinstance(value, str):
        raise TeaCacheError(f"accumulate {value!r} must be one of {ACCUMULATE} (raw: acc += poly(d); "
                            f"abs: acc += |poly(d)|)")
    return value


def check_eps(value: Any) -> float:
    if not _is_number(value) or value < 0:
        raise TeaCacheError(f"eps {value!r} must be a finite number >= 0 (d = mean|s - s_prev| / "
                            f"(mean|s_prev| + eps))")
    return float(value)


@dataclass(frozen=True)
class ForcedSteps:
    """Calls of a cache context that always compute, whatever the criterion says.

    Call k (0-based, counting that context's own calls) of N is forced iff ``k < first``, or
    ``k < first_fraction * N`` (compared in floating point: the first ceil(fraction * N)
    calls), or ``last and k == N - 1``.  Upstream's rule for most models is the first and the
    last call; "first call only" is ``ForcedSteps(1, False)``; HiDream's first 10% of the steps
    is ``ForcedSteps(0, False, 0.1)``.  The rule itself runs in the runtime's criterion.
    """

    first: int = 1
    last: bool = True
    first_fraction: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.first, int) and not isinstance(self.first, bool) and self.first >= 0
                and isinstance(self.last, bool) and _is_number(self.first_fraction) and 0 <= self.first_fraction <= 1):
            raise TeaCacheError(f"forced steps (first={self.first!r}, last={self.last!r}, first_fraction="
                                f"{self.first_fraction!r}) need first an integer >= 0, last true/false and "
                                f"first_fraction in [0, 1]")


@dataclass(frozen=True)
class Variant:
    """One set of TeaCache coefficients (numpy.poly1d order), its defaults and the rule's knobs
    as the model's public implementation codes them (forced calls, accumulation, eps)."""

    name: str
    coefficients: tuple[float, ...]
    default_threshold: float
    forced: ForcedSteps = field(default_factory=ForcedSteps)
    # Which tensor is the signal, for families whose variants compare different ones (Wan's
    # ret-steps mode compares timestep_proj, the plain mode temb); None: the family's default.
    # The family's ``parts`` reads it; ``Family.signal_for`` describes it for the manifest.
    signal: str | None = None
    accumulate: str = "raw"
    eps: float = 0.0
    # MagCache's published ratios and settings for this model (families/magcache_ratios.py),
    # written into the manifest for ``policies.MagCache``; None where none are published.
    magcache: PublishedRatios | None = None

    def __post_init__(self):
        check_coefficients(self.coefficients, f"variant {self.name}")
        check_accumulate(self.accumulate)
        check_eps(self.eps)
        if not _is_number(self.default_threshold) or self.default_threshold < 0:
            raise TeaCacheError(f"variant {self.name}: default_threshold {self.default_threshold!r} must be >= 0")


@dataclass(frozen=True)
class TimestepScale:
    """How a model reads its ``timestep`` input, for loops that sample without a pipeline.

    ``flow``: a flow-matching sigma going 1 -> 0, passed as ``sigma * scale`` (FLUX takes sigma
    and multiplies by 1000 itself: scale 1; HunyuanVideo takes the scheduler's sigma*1000:
    scale 1000); the Euler update is ``x += (sigma_next - sigma) * output``.
    ``ddpm``: integer timesteps 999 -> 0 (CogVideoX); the update is a small fixed step, which
    keeps latents moving like a sampler (the tools need realistic signal changes, not images).
    ``reverse``: the model reads ``1 - sigma`` (0 = noise), as Mochi (``(1 - sigma) * 1000``)
    and Lumina (``1 - sigma``) do; their pipelines then move the latents by ``+|dt| * output``
    (Mochi's scheduler inverts its sigmas, Lumina's pipeline negates the output).
    """

    kind: str = "flow"
    scale: float = 1.0
    reverse: bool = False

    def __post_init__(self):
        if self.kind not in ("flow", "ddpm"):
            raise TeaCacheError(f"TimestepScale kind {self.kind!r} is not 'flow' or 'ddpm'")

    @property
    def integer(self) -> bool:
        return self.kind == "ddpm"

    def timesteps(self, steps: int) -> list[float | int]:
        """The ``timestep`` value a pipeline passes at each of ``steps`` steps."""
        if self.kind == "ddpm":
            if steps == 1:
                return [999]
            return [round(999 - i * 999 / (steps - 1)) for i in range(steps)]
        if self.reverse:
            return [i / steps * self.scale for i in range(steps)]
        return [(1.0 - i / steps) * self.scale for i in range(steps)]

    def step_sizes(self, steps: int) -> list[float]:
        """dt of the Euler update ``x += dt * model_output`` at each step."""
        if self.kind == "ddpm":
            return [-1.0 / steps] * steps
        sigmas = [1.0 - i / steps for i in range(steps)] + [0.0]
        sign = -1.0 if self.reverse else 1.0
        return [sign * (sigmas[i + 1] - sigmas[i]) for i in range(steps)]


@dataclass(frozen=True)
class Axis:
    """A dynamic axis of the model inputs, with its default optimization-profile range."""

    name: str
    min: int
    opt: int
    max: int
    multiple_of: int = 1
    help: str = ""


def patched_axes(axes: tuple[Axis, ...], patch: int) -> tuple[Axis, ...]:
    """``axes`` with every latent-size axis (``multiple_of`` > 1) starting at and stepping by the
    config's ``patch`` size: the smallest input is one patch."""
    return tuple(a if a.multiple_of == 1 else Axis(a.name, patch, a.opt, a.max, patch, a.help) for a in axes)


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
    model_inputs: ClassVar[tuple[str, ...]]  # graph-input names of the context and embed graphs (not prev_signal)
    # diffusers forward keywords the adapter maps to graph inputs (default: model_inputs);
    # any other non-None keyword changes the model's output and is refused at run time
    forward_kwargs: ClassVar[tuple[str, ...]] = ()
    # inputs present only when a config key is truthy, e.g. {"guidance": "guidance_embeds"}
    optional_inputs: ClassVar[dict[str, str]] = {}
    # config key counting the blocks whose first one gives the signal (None: not needed)
    signal_block_count: ClassVar[str | None] = None
    variants: ClassVar[dict[str, Variant]]
    axes: ClassVar[tuple[Axis, ...]]
    signal: ClassVar[str]  # the default signal, in words (a Variant may choose another)
    signal_dims: ClassVar[dict[int, str]]  # dynamic dims of the signal (and prev_signal)
    cached: ClassVar[tuple[str, ...]]
    # the model input the sampler denoises: what a policy comparing the model's input and output
    # (EasyCache) measures; its output is the head's
    latent_input: ClassVar[str] = "hidden_states"
    note: ClassVar[str] = ""
    timestep_scale: ClassVar[TimestepScale] = TimestepScale()

    # --- model side -----------------------------------------------------------------
    # How the model is built, saved, described and called: a diffusers model here;
    # ``custom.ModuleFamily`` does the same for a plain torch.nn.Module.
    @classmethod
    def model_class(cls):
        import diffusers

        return getattr(diffusers, cls.class_name)

    @classmethod
    def load_model(cls, model_dir, precision: str) -> torch.nn.Module:
        """The model in ``model_dir`` (see ``find_model_dir``) at ``precision``, in eval mode.

        Every parameter must come from the checkpoint: a config that does not match the weights
        (one more layer, another width) would otherwise run with random weights.
        """
        src = find_model_dir(model_dir)
        read_config(src)  # a damaged config.json: one clear line, not diffusers' traceback
        try:
            model, info = cls.model_class().from_pretrained(
                str(src), torch_dtype=precision_dtype(precision), output_loading_info=True)
        except Exception as exc:  # missing / truncated safetensors, wrong shapes, bad config values
            raise TeaCacheError(
                f"cannot load {cls.class_name} from {src}: {type(exc).__name__}: {str(exc)[:500]}; "
                f"check that the folder holds a complete diffusers checkpoint (config.json + weights)"
            ) from exc
        problems = {k: info.get(k) or [] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(problems.values()):
            found = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {v[0] if isinstance(v[0], str) else v[0][0]})"
                              for k, v in problems.items() if v)
            raise TeaCacheError(
                f"the weights in {src} do not match its config.json ({cls.class_name}): {found}. "
                f"The config and the checkpoint must come from the same model"
            )
        return model.eval()

    @classmethod
    def save_model(cls, model: torch.nn.Module, model_dir) -> None:
        model.save_pretrained(model_dir)

    @classmethod
    def config_of(cls, model: torch.nn.Module) -> dict[str, Any]:
        """The model's config as plain JSON data, as the manifest stores it."""
        return plain_config(model)

    @classmethod
    def call_model(cls, model: torch.nn.Module, kwargs: Mapping[str, Any]) -> torch.Tensor:
        """The model's output tensor for forward keywords (``kwargs_from_feed``)."""
        return model(**kwargs, return_dict=False)[0]

    @classmethod
    def wrap_output(cls, output: torch.Tensor, return_dict: bool):
        """What the model's forward returns for ``output``: the drop-in transformer's result."""
        if not return_dict:
            return (output,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=output)

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
    def variant(cls, name: str | None) -> Variant:
        """The named variant (None: the first one), or a TeaCacheError listing the choices."""
        if name is None:
            return next(iter(cls.variants.values()))
        if name not in cls.variants:
            raise TeaCacheError(
                f"variant {name!r} is unknown for family {cls.name}; choose one of {sorted(cls.variants)}"
            )
        return cls.variants[name]

    @classmethod
    def signal_for(cls, variant: Variant) -> str:
        """The signal of ``variant``, in words, for the manifest."""
        return cls.signal

    @classmethod
    def inputs_for(cls, config: Mapping[str, Any]) -> tuple[str, ...]:
        """The model inputs of this config's graphs (in graph order)."""
        return tuple(n for n in cls.model_inputs
                     if n not in cls.optional_inputs or config.get(cls.optional_inputs[n]))

    @classmethod
    def parts(cls, model: torch.nn.Module, variant: Variant | None = None) -> dict[str, Part]:
        """The embed / blocks / head modules over ``model`` (``variant`` may pick the signal),
        and optionally a ``context`` module: what depends only on inputs a generation keeps
        fixed (prompt embeddings, position ids), exported as its own graph and run only when
        those inputs change; its outputs feed the other parts like the embed's."""
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
    def pipeline_attributes(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Attributes the family's pipelines read off the transformer besides ``config``,
        ``dtype`` and ``device`` (the drop-in transformer carries them)."""
        return {}

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
