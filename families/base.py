"""What a model family is, as data plus three small modules.

One file per family in this package subclasses :class:`Family` and registers it; nothing
else in the project branches on the family.  The three parts call the model's own
submodules (``x_embedder``, ``transformer_blocks``, ``norm_out`` ...); only the glue between
them, which lives in the model's ``forward``, is written per family.

Export, the runtime and the tools all read model knowledge from here; this layer imports
neither of them.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Mapping

import torch

from ..dtypes import precision_dtype
from ..errors import TeaCacheError, shown
from .inputs import Axis, Input, check_fixed, config_sizes
from .magcache_ratios import PublishedRatios
from .model_io import find_model_dir, plain_config, read_config

ACCUMULATE = ("raw", "abs")  # acc += poly(d) (upstream TeaCache), acc += |poly(d)| (vLLM-Omni)


class _AnyValue:
    """``Family.ignored_kwargs`` value: the keyword is dropped whatever its value."""

    def __repr__(self):
        return "ANY_VALUE"


ANY_VALUE = _AnyValue()


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
    # Where the coefficients come from, in words (``teacache-export --list-families``); empty:
    # the family's ``coefficients_source``.  ``stand_in``: no set was ever fitted for this model,
    # the coefficients are another model's starting point, and the export says so.
    source: str = ""
    stand_in: bool = False

    def __post_init__(self):
        check_coefficients(self.coefficients, f"variant {self.name}")
        check_accumulate(self.accumulate)
        check_eps(self.eps)
        if not _is_number(self.default_threshold) or self.default_threshold < 0:
            raise TeaCacheError(f"variant {self.name}: default_threshold {self.default_threshold!r} must be >= 0")


@dataclass(frozen=True)
class TimestepScale:
    """How a model reads its ``timestep`` input and which way its output moves the latents, for
    loops that sample without a pipeline (calibration, the benchmark) and for example inputs.

    Two independent choices, over a flow-matching sigma going 1 (noise) -> 0 (data):

    - the ``timestep`` the model reads: ``sigma * scale`` (FLUX takes sigma and multiplies by
      1000 itself: scale 1; HunyuanVideo and Open-Sora's RFLOW take ``1000 * sigma``: scale
      1000), or with ``reverse`` ``(1 - sigma) * scale`` (Mochi reads ``(1 - sigma) * 1000``,
      Lumina ``1 - sigma``: 0 = noise);
    - the update: the output points from data toward noise (FLUX: ``v = noise - x0``, the
      Euler step is ``x += (sigma_next - sigma) * output``), or with ``toward_data`` from
      noise toward data (``x += |sigma_next - sigma| * output``: Open-Sora's RFLOW
      ``z = z + v * dt`` with dt > 0, Mochi's inverted sigmas, Lumina's negated output).
      ``None`` (the default) follows ``reverse``, the pairing the built-in families have.

    So Open-Sora's RFLOW is ``TimestepScale("flow", 1000.0, toward_data=True)``.
    ``ddpm``: integer timesteps 999 -> 0 (CogVideoX); the update is a small fixed step, which
    keeps latents moving like a sampler (the tools need realistic signal changes, not images).
    """

    kind: str = "flow"
    scale: float = 1.0
    reverse: bool = False
    toward_data: bool | None = None

    def __post_init__(self):
        if self.kind not in ("flow", "ddpm"):
            raise TeaCacheError(f"TimestepScale kind {self.kind!r} is not 'flow' or 'ddpm'")
        if not _is_number(self.scale) or self.scale <= 0:
            raise TeaCacheError(f"TimestepScale scale {self.scale!r} must be a finite number > 0 (the timestep "
                                f"the model reads at sigma = 1: 1.0 or 1000.0)")
        for name in ("reverse", "toward_data"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (name == "toward_data" and value is None)):
                raise TeaCacheError(f"TimestepScale {name}={value!r} must be True or False")

    @property
    def integer(self) -> bool:
        return self.kind == "ddpm"

    @property
    def moves_toward_data(self) -> bool:
        """Whether ``x += |dt| * output`` (True) or ``x += (sigma_next - sigma) * output``."""
        return self.reverse if self.toward_data is None else self.toward_data

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
        sign = 1.0 if self.moves_toward_data else -1.0
        return [sign * abs(sigmas[i + 1] - sigmas[i]) for i in range(steps)]


@dataclass(frozen=True)
class AxisLimit:
    """The largest size of an axis that a config supports (a RoPE or positional table's
    length): default profiles stop there, and a range beyond it is refused before the export."""

    max: int
    key: str  # the config key that sets the limit
    value: Any  # that key's value in the config
    why: str  # the table or size behind it, in words


def clamped_axes(axes: tuple[Axis, ...], limits: Mapping[str, AxisLimit]) -> tuple[Axis, ...]:
    """``axes`` with each default range cut at its limit (rounded down to the axis' multiple)."""
    out = []
    for a in axes:
        limit = limits.get(a.name)
        if limit is not None and a.max > limit.max:
            hi = limit.max - limit.max % a.multiple_of
            if hi < a.min:
                raise TeaCacheError(
                    f"{limit.key}={limit.value!r} allows {a.name} up to {limit.max} ({limit.why}), below the "
                    f"smallest input {a.min}: this config cannot be exported; check {limit.key} in config.json")
            a = replace(a, opt=min(a.opt, hi), max=hi, help=f"{a.help}; at most {limit.max} ({limit.key}={limit.value})")
        out.append(a)
    return tuple(out)


class Part(torch.nn.Module):
    """One of the graphs: named tensors in, named tensors out.

    The dynamic dims of a part's inputs need no declaring: model inputs take theirs from the
    family's ``inputs``, ``prev_signal`` from ``signal_dims``, and the tensors an earlier graph
    produced from that graph's exported outputs (a dim named after an axis stays that axis, a
    derived one is AUTO).  ``dynamic`` (``{input: {dim index: axis name or AUTO}}``) overrides
    that per input, for the rare tensor whose exported dims say less than the next graph needs.
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


class NormOutHead(Part):
    """The head of models whose output layers are ``proj_out(norm_out(x, temb))`` over the
    cached tokens, with nothing to unpatchify (FLUX, FLUX.2, Qwen-Image)."""

    input_names = ("hidden", "residual", "temb")
    output_names = ("output",)

    def forward(self, hidden, residual, temb):
        return self.model.proj_out(self.model.norm_out(hidden + residual, temb))


@functools.cache
def _positional_parameters(model_class: type) -> tuple[str, ...]:
    try:
        params = list(inspect.signature(model_class.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):  # a builtin or C forward: keywords only
        return ()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in params if p.kind in positional]
    return tuple(names[1:] if names[:1] == ["self"] else names)


def _same(value: Any, exported: Any) -> bool:
    try:
        return bool(value == exported)
    except Exception:  # noqa: BLE001 - a tensor of several values, an incomparable object
        return False


def criterion_sums(signal: torch.Tensor, prev_signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``Σ|s − s_prev|`` and ``Σ|s_prev|`` in fp32 (docs/graph-contract.md).

    Sums, not means, so that both the batch-wide ratio (Σ over the batch of each) and the
    per-sample ratios come out exactly from the same two vectors.
    """
    s = signal.float()
    if prev_signal.ndim == 0:
        # Eager probe for the signal's shape (export traces with a full-rank prev_signal,
        # so this branch never reaches a graph).
        zeros = s.new_zeros(s.shape[0])
        return zeros, zeros
    p = prev_signal.float()
    # Reduced over the per-sample dims in place, not flattened first: a flatten exports as
    # ten shape nodes (Shape, Squeeze, Mul, Concat, Reshape) for dynamic dims, which cost
    # 0.13 ms of the bench model's 0.7 ms embed graph on ONNX Runtime's CPU provider.
    dims = tuple(range(1, s.ndim)) or None
    if dims is None:  # one value per sample: its own sum
        return (s - p).abs(), p.abs()
    return (s - p).abs().sum(dim=dims), p.abs().sum(dim=dims)


class Family:
    """A diffusers DiT class and everything the project knows about it.

    A family declares its model inputs once, as ``inputs`` (see :mod:`.inputs`)::

        inputs = (
            Input("hidden_states", ("batch", "img_seq", "in_channels"), "latents"),
            Input("encoder_hidden_states", ("batch", "txt_seq", "joint_attention_dim")),
            Input("timestep", ("batch",), "timestep"),
            Input("guidance", ("batch",), "constant", value=3.5, when="guidance_embeds"),
        )

    and ``model_inputs``, ``optional_inputs``, ``input_dims`` and ``example_inputs`` follow; the
    parts' dynamic dims follow from those and the exported graphs.  A family overrides only
    what is special: ``example_inputs`` calling ``super()`` and adjusting one tensor, an axis
    in ``auto_axes``, an ``Axis(fixed=True)`` from ``axes_for``, a size its config holds in
    another form from ``config_sizes``, ``feed_from_kwargs`` calling ``super()`` for a keyword
    the model names otherwise or refuses.  A family written without
    ``inputs`` states ``model_inputs`` (and ``optional_inputs``) and overrides ``input_dims``
    and ``example_inputs`` itself, and its parts may state ``dynamic``: both ways export alike.
    """

    name: ClassVar[str]
    class_name: ClassVar[str]  # diffusers class, as in config.json's _class_name
    # the model inputs of the context and embed graphs (not prev_signal), in graph order
    inputs: ClassVar[tuple[Input, ...]] = ()
    # axes torch.export sizes itself (Dim.AUTO) wherever a model input has them: named dims
    # there would meet the model's own shape guards (a patch size that must divide them)
    auto_axes: ClassVar[tuple[str, ...]] = ()
    model_inputs: ClassVar[tuple[str, ...]]  # graph-input names, from ``inputs``
    # diffusers forward keywords the adapter maps to graph inputs (default: model_inputs);
    # any other non-None keyword changes the model's output and is refused at run time
    forward_kwargs: ClassVar[tuple[str, ...]] = ()
    # forward keywords the graphs have baked in: name -> the value they were exported with
    # (ANY_VALUE: any value, e.g. a size the latents already carry).  The drop-in drops such a
    # keyword given with that value (or None) and refuses another value by name.
    ignored_kwargs: ClassVar[Mapping[str, Any]] = {}
    # inputs present only when a config key is truthy (or a test of the config holds), from
    # ``inputs`` (``Input.when``)
    optional_inputs: ClassVar[dict[str, Any]] = {}
    # config key counting the blocks whose first one gives the signal (None: not needed)
    signal_block_count: ClassVar[str | None] = None
    variants: ClassVar[dict[str, Variant]]
    axes: ClassVar[tuple[Axis, ...]]
    signal: ClassVar[str]  # the default signal, in words (a Variant may choose another)
    signal_dims: ClassVar[dict[int, str]]  # dynamic dims of the signal (and prev_signal)
    cached: ClassVar[tuple[str, ...]]
    # the model input the sampler denoises: what a policy comparing the model's input and output
    # (EasyCache) measures; its output is the head's.  From ``inputs``: the ``latents`` one
    latent_input: ClassVar[str] = "hidden_states"
    note: ClassVar[str] = ""
    timestep_scale: ClassVar[TimestepScale] = TimestepScale()
    # where the variants' coefficients come from, in words (a Variant's ``source`` overrides)
    coefficients_source: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "inputs" in cls.__dict__:
            cls.model_inputs = tuple(i.name for i in cls.inputs)
            cls.optional_inputs = {i.name: i.when for i in cls.inputs if i.when}
            latents = [i.name for i in cls.inputs if i.kind == "latents"]
            if latents and "latent_input" not in cls.__dict__:
                cls.latent_input = latents[0]

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
    def expert_variant(cls, config: Mapping[str, Any], expert: str) -> str | None:
        """The variant of a two-expert pipeline's ``expert`` (``transformer``: high noise,
        ``transformer_2``: low noise) for this config; None: ``variant_for``'s."""
        return None

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
        if cls.inputs:
            return tuple(i.name for i in cls.inputs if i.present(config))
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
        """Random model inputs (graph names) at the given axis sizes, from ``inputs``."""
        declared = cls._declared()
        check_fixed(cls.name, cls.axes_for(config), dims)
        g = torch.Generator().manual_seed(seed)
        sizes = {**cls.config_sizes(config), **dims}  # an axis wins over a config key
        return {i.name: i.example(sizes, config, dtype, g, cls.timestep_scale) for i in declared if i.present(config)}

    @classmethod
    def config_sizes(cls, config: Mapping[str, Any]) -> dict[str, int]:
        """The sizes besides the axes that ``inputs`` shapes may name: the config's integers; a
        family adds those the config holds in another form (a list, a condition)."""
        return config_sizes(config)

    @classmethod
    def input_dims(cls, config: Mapping[str, Any]) -> dict[str, dict[int, str]]:
        """Dynamic dims of the model inputs: name -> {dim index: axis name or AUTO} (inputs absent
        from this config may be listed; the exporter only reads the graphs' inputs)."""
        declared = cls._declared()
        axes = {a.name: a for a in cls.axes_for(config)}
        return {i.name: i.dynamic_dims(axes, cls.auto_axes) for i in declared}

    @classmethod
    def _declared(cls) -> tuple[Input, ...]:
        if not cls.inputs:
            raise TeaCacheError(
                f"family {cls.__qualname__} declares no inputs: give it `inputs = (Input(...), ...)` "
                f"(teacache_trt.families.Input), or override input_dims() and example_inputs()"
            )
        return cls.inputs

    # --- runtime side ---------------------------------------------------------------
    @classmethod
    def pipeline_attributes(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Attributes the family's pipelines read off the transformer besides ``config``,
        ``dtype`` and ``device`` (the drop-in transformer carries them)."""
        return {}

    @classmethod
    def feed_from_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The diffusers forward's keyword arguments -> graph inputs by name.

        The declared inputs the caller passed, as the pipelines pass them:

        - a per-sample input (shape ``("batch",)``: timesteps, guidance) given once for the
          batch (a number, a 0-d or one-element tensor) becomes one value per sample on the
          latents' device, as the model would broadcast it, at its declared dtype if it has one
          (a scheduler's int64 timesteps for a model that takes fp32);
        - a mask given as integers or bools (a tokenizer's) is cast to the latents' dtype
          (0/1 stay exact).

        What is not a tensor at all is left for the runtime to refuse by name.
        """
        if not cls.inputs:  # a family that states model_inputs only
            return {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        feed = {i.name: kwargs[i.name] for i in cls.inputs if kwargs.get(i.name) is not None}
        latents = next((feed[i.name] for i in cls.inputs if i.kind == "latents" and i.name in feed), None)
        if not isinstance(latents, torch.Tensor):
            return feed
        for i in cls.inputs:
            value = feed.get(i.name)
            if i.shape == ("batch",) and (isinstance(value, torch.Tensor) or _is_number(value)):
                value = torch.as_tensor(value, device=latents.device)
                if value.numel() == 1:
                    value = value.reshape(1).expand(latents.shape[0])
                feed[i.name] = value if i.dtype is None else value.to(i.dtype)
            elif i.kind == "mask" and isinstance(value, torch.Tensor) and not value.dtype.is_floating_point:
                feed[i.name] = value.to(latents.dtype)
        return feed

    @classmethod
    def accepted_kwargs(cls) -> frozenset[str]:
        return frozenset(cls.forward_kwargs or cls.model_inputs)

    @classmethod
    def forward_parameters(cls) -> tuple[str, ...]:
        """The model forward's parameters a caller may pass by position, in order (the drop-in
        maps a positional call onto them): read off ``model_class().forward``."""
        return _positional_parameters(cls.model_class())

    @classmethod
    def call_arguments(cls, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A call ``forward(*args, **kwargs)`` as keywords, positions mapped by
        ``forward_parameters`` as Python would bind them on the model."""
        if not args:
            return kwargs
        names = cls.forward_parameters()
        if len(args) > len(names):
            raise TeaCacheError(
                f"{len(args)} positional arguments given, but {cls.class_name}.forward takes at most "
                f"{len(names)} by position ({', '.join(names) or 'none'}): pass the others by keyword")
        bound = dict(zip(names, args))
        twice = sorted(set(bound) & set(kwargs))
        if twice:
            raise TeaCacheError(f"{twice} given both by position and by keyword: {cls.class_name}.forward takes "
                                f"positions in the order {list(names)}")
        return {**bound, **kwargs}

    @classmethod
    def drop_ignored(cls, kwargs: dict[str, Any]) -> None:
        """Remove the ``ignored_kwargs`` from ``kwargs`` (in place); one given with a value
        other than the exported one is refused: the graphs cannot follow it."""
        for name, exported in cls.ignored_kwargs.items():
            if name not in kwargs:
                continue
            value = kwargs.pop(name)
            if value is None or exported is ANY_VALUE or _same(value, exported):
                continue
            raise TeaCacheError(
                f"keyword {name}={shown(value, 60)}: the {cls.class_name} graphs were exported with "
                f"{name}={exported!r} (the family's ignored_kwargs), so another value cannot be followed: "
                f"pass {exported!r}, or export the model with that setting")

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
    def axis_limits(cls, config: Mapping[str, Any]) -> dict[str, AxisLimit]:
        """The largest size per axis this config supports, where a table in the model fixes one
        (a RoPE table of ``rope_max_seq_len`` positions); axes without a limit are absent."""
        return {}

    @classmethod
    def job_axes(cls, config: Mapping[str, Any], size: Mapping[str, int]) -> dict[str, int]:
        """The axis sizes of a generation of ``size`` (pixel ``height`` and ``width``, video
        ``frames``; any may be absent) with this config, in the axes' units (latents): what
        ``teacache-render`` widens its first-use profile to.  {}: the family does not say (its
        default profile stays; ``--axis`` sets one)."""
        return {}

    @classmethod
    def default_axes(cls, config: Mapping[str, Any] | None = None) -> tuple[Axis, ...]:
        """The default profile: ``axes_for(config)`` cut at ``axis_limits(config)`` (the
        family's own ``axes`` without a config)."""
        if config is None:
            return cls.axes
        return clamped_axes(cls.axes_for(config), cls.axis_limits(config))

    @classmethod
    def axis(cls, name: str, config: Mapping[str, Any] | None = None) -> Axis:
        axes = cls.default_axes(config)
        for a in axes:
            if a.name == name:
                return a
        raise TeaCacheError(
            f"family {cls.name!r} has no axis {name!r}; its axes are {[a.name for a in axes]}"
        )
