"""What a caching policy is: the seam every policy plugs into.

A policy decides, at every call of the transformer and for every decision group (the whole
call in ``batch`` mode, each prompt in ``sample`` mode), whether the blocks graph runs or the
cached residual is reused.  The runtime calls it in three places:

- construction, from validated parameters (a :class:`TeaCacheError` names the value and the
  fix); ``policy.name`` and ``policy.params`` (JSON-safe) name it anywhere (a manifest, a job
  line, an eval row): ``make(policy.name, **policy.params) == policy``;
- ``bind(artifact)``: the policy with every setting it left to the artifact (None) filled from
  what the manifest records for it (:class:`ArtifactPolicies`), checked;
- ``start(...)``: a fresh :class:`PolicyState` for one cache context of one generation, whose
  ``decide`` answers each call.

``needs`` names the features a policy reads from the graphs at every call (:data:`FEATURES`);
the transformer reads nothing else back.  A ``static`` policy decides from the step index and
calibration data alone: it implements ``schedule(num_steps, context)`` instead of a state, the
whole schedule of a context is known when its generation starts, and nothing is read back from
the graphs per step.

Every policy also takes ``reuse`` (keyword, added to its constructor by :class:`Policy`):
what a skipped call puts in place of the blocks graph's residual (:data:`REUSE_MODES`).  The
runtime does the arithmetic (:mod:`teacache_trt.runtime.forecast`), so a policy only decides.

Adding a policy is one module in this folder (a :class:`Policy` subclass under ``@register``)
and its test: the package imports every module here and exposes each registered class by name.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from ..errors import TeaCacheError

# What a policy can ask the graphs for at each call (``Policy.needs``):
SIGNAL_SUMS = "signal_sums"
IO_SUMS = "io_sums"
RESIDUAL_NORMS = "residual_norms"
FEATURES = {
    SIGNAL_SUMS: "the embed graph's per-row sums l1_diff = Σ|s - s_prev| and l1_prev = Σ|s_prev| of the "
                 "signal, read to the host at every call (Features.l1_diff / l1_prev)",
    IO_SUMS: "per-row sums over the model's latent input x and its output o, reduced on the runtime's device and "
             "read to the host once per call: Σ|x - x_prev| against the context's previous call, and for the "
             "rows the previous call computed, Σ|x - x_c|, Σ|o - o_c| and Σ|o| against the row's computed "
             "call before it (Features.input_step, computed_input_diff / computed_output_diff / "
             "computed_output_abs)",
    RESIDUAL_NORMS: "per-row norms of the cached residual (reserved: this runtime does not read them yet; "
                    "a policy that needs them is refused when it is set)",
}
# What a skipped call reuses (``Policy.reuse``); positions are step indices of the cache context.
REUSE_MODES = {
    "residual": "the last computed residual, as it is (TeaCache's reuse)",
    "taylor": "the last two computed residuals extrapolated to first order in the step index: "
              "r_last + (r_last - r_before) * (k - k_last) / (k_last - k_before) (the last residual as it "
              "is while only one was computed); one more residual buffer per cache context",
}
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")


class Features:
    """What the graphs gave at the current call; the transformer fills one object per call
    (reused: no allocation per step) with what the policy's ``needs`` name.

    ``plan`` changes when the input shapes change (a state may cache per-shape data on it);
    ``group_of_row`` maps each batch row to its decision group; ``elements_per_row`` is the
    signal's element count per row (means over a group's elements); ``l1_diff`` / ``l1_prev``
    are None without a previous signal to compare with, or when not needed.

    ``io_sums`` (per row, fp32): ``input_step`` = Σ|x - x_prev| of the latent input against the
    context's previous call (None on its first call at this shape).  The previous call's output
    is known only after its head ran, so what it computed arrives with this call:
    ``computed_input_diff`` = Σ|x_m - x_c|, ``computed_output_diff`` = Σ|o_m - o_c| and
    ``computed_output_abs`` = Σ|o_m|, where m is the previous call and c the row's computed call
    before it (None when the previous call computed no row; NaN in rows m did not compute, and
    in the two differences of rows for which m was the first computed call).
    """

    __slots__ = ("plan", "group_of_row", "elements_per_row", "l1_diff", "l1_prev", "input_step",
                 "computed_input_diff", "computed_output_diff", "computed_output_abs")

    def __init__(self):
        self.plan = None
        self.group_of_row: np.ndarray | None = None
        self.elements_per_row = 1
        self.l1_diff: np.ndarray | None = None
        self.l1_prev: np.ndarray | None = None
        self.input_step: np.ndarray | None = None
        self.computed_input_diff: np.ndarray | None = None
        self.computed_output_diff: np.ndarray | None = None
        self.computed_output_abs: np.ndarray | None = None


class PolicyState:
    """A policy's memory for one cache context over one generation of ``num_steps`` calls."""

    # The last call's per-group relative change of the signal (NaN: none), recorded in
    # ``stats["contexts"][name]["rel_l1"]``; None for policies that measure none.
    rel: np.ndarray | None = None

    def decide(self, step: int, features: Features, must_compute: np.ndarray) -> np.ndarray:
        """Compute flags (uint8, one per group) for call ``step`` of this context.

        ``must_compute`` (uint8 per group, a fresh array the policy may write its flags into
        and return) is set where a group has no usable residual: such a group computes.
        """
        raise NotImplementedError

    def never_skipped(self, group: int, rels: Sequence[float | None]) -> str | None:
        """Why ``group`` computed every call of a finished generation although this policy
        could skip (cause and fix, one line), or None when it was never meant to skip.
        ``rels``: the recorded per-call relative changes of that group (None: none)."""
        return None


class StaticState(PolicyState):
    """The state of a static policy: the whole schedule, fixed at the start (one row per call)."""

    def __init__(self, table: np.ndarray, describe: str):
        self.table = table  # uint8 [num_steps, groups]: 1 where the schedule computes
        self.describe = describe

    def decide(self, step, features, must_compute):
        np.bitwise_or(must_compute, self.table[step], out=must_compute)
        return must_compute

    def never_skipped(self, group, rels):
        column = self.table[:, group]
        if column.all():
            return None
        return (f"{self.describe} never skipped in {len(column)} steps: the steps it skips had no usable cached "
                f"residual (the batch or resolution changed within the generation); keep the input shapes "
                f"fixed during a generation")


@dataclass(frozen=True)
class ArtifactPolicies:
    """What an artifact records for the policies: its default policy (``name`` and ``params``)
    and each policy's data (calibration results, the variant's rule), by policy name."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    where: str = "the manifest"  # for messages
    fix: str = "re-run teacache-export with --force (or teacache-calibrate --restore)"

    def defaults_for(self, name: str) -> dict[str, Any]:
        """The default policy's params when it is ``name``, else nothing."""
        return dict(self.params) if self.name == name else {}

    def data_for(self, name: str) -> dict[str, Any]:
        return dict(self.data.get(name) or {})


class Policy:
    """A decision rule with validated, JSON-safe settings; see the module doc."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    static: ClassVar[bool] = False
    has_threshold: ClassVar[bool] = False  # takes ``threshold`` (and per-prompt thresholds)
    # keys of the manifest's data for this policy that are not parameters (e.g. a history)
    data_keys: ClassVar[frozenset[str]] = frozenset()

    _params: dict[str, Any]
    reuse: str = "residual"  # see REUSE_MODES; set by the constructor's ``reuse`` keyword

    def __init_subclass__(cls, **kwargs):
        """Give the subclass's constructor the ``reuse`` keyword every policy takes, recorded
        in ``params`` like its own settings (so ``make`` and ``replace`` carry it)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_takes_reuse", False):
            return
        sig = inspect.signature(init)
        if "reuse" in sig.parameters:
            raise TypeError(f"{cls.__qualname__}.__init__ takes 'reuse' itself: every policy gets it from Policy")

        @functools.wraps(init)
        def __init__(self, *args, reuse=None, **kw):
            init(self, *args, **kw)
            self._set_reuse(reuse)

        params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        params.append(inspect.Parameter("reuse", inspect.Parameter.KEYWORD_ONLY, default=None))
        params += [p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD]
        __init__.__signature__ = sig.replace(parameters=params)
        __init__._takes_reuse = True
        cls.__init__ = __init__

    def _set_reuse(self, reuse) -> None:
        params = self.__dict__.setdefault("_params", {})
        if reuse is None:
            params.pop("reuse", None)
            self.reuse = "residual"
            return
        if not isinstance(reuse, str) or reuse not in REUSE_MODES:
            raise TeaCacheError(f"reuse {reuse!r:.100} must be one of {sorted(REUSE_MODES)} ('residual': the "
                                f"cached residual as it is; 'taylor': extrapolated from the last two computed)")
        self.reuse = reuse
        params["reuse"] = reuse

    # --- identity -------------------------------------------------------------------------
    def _set_params(self, **params) -> None:
        """Record the given settings (None left out) as JSON data: what ``make`` takes back."""
        given = {k: v for k, v in params.items() if v is not None}
        try:
            self._params = json.loads(json.dumps(given, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise TeaCacheError(f"{self.name} parameters {given!r:.200} are not JSON data ({exc})") from None

    @property
    def params(self) -> dict[str, Any]:
        """The settings given (not those left to the artifact), as JSON data."""
        return json.loads(json.dumps(self._params))

    @property
    def spec(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``: what a job line or a manifest records."""
        return {"name": self.name, "params": self.params}

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._params == self._params

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(self._params, sort_keys=True)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._params.items())})"

    def describe(self) -> str:
        """Short words for messages, e.g. ``teacache threshold 0.2`` (subclasses say their settings)."""
        if "threshold" in self._params:
            return f"{self.name} threshold {self._params['threshold']:g}"
        return self.name

    def replace(self, **changes) -> "Policy":
        """The same policy with some settings changed (None: back to the artifact's)."""
        params = {**self._params, **changes}
        return make(self.name, **{k: v for k, v in params.items() if v is not None})

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        sig = inspect.signature(cls.__init__)
        return tuple(n for n, p in sig.parameters.items()
                     if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    # --- the artifact's part ------------------------------------------------------------------
    def bind(self, artifact: ArtifactPolicies) -> "Policy":
        """This policy with every setting left to the artifact filled from ``artifact`` (the
        default policy's params when it is this policy, then this policy's data), all checked."""
        recorded = {k: v for k, v in artifact.data_for(self.name).items() if k in self.param_names()}
        recorded.update(artifact.defaults_for(self.name))
        if recorded:
            try:
                make(self.name, **recorded)
            except TeaCacheError as exc:
                raise TeaCacheError(f"{artifact.where}: the {self.name} settings it records are invalid: {exc}; "
                                    f"{artifact.fix}") from None
        bound = make(self.name, **{**recorded, **self._params}) if recorded else self
        bound._check_bound(artifact)
        return bound

    def _check_bound(self, artifact: ArtifactPolicies) -> None:
        """Raise when a setting the policy needs is neither given nor recorded."""

    @classmethod
    def check_data(cls, data: Mapping[str, Any], where: str) -> None:
        """Refuse manifest data this policy does not know, null values, and parameters its
        constructor refuses (a policy adds checks of its ``data_keys``)."""
        params = cls.param_names()
        unknown = sorted(set(data) - set(params) - set(cls.data_keys))
        if unknown:
            raise TeaCacheError(f"{where}: unknown {cls.name} data {unknown}; known: {sorted(set(params) | cls.data_keys)}")
        null = sorted(k for k, v in data.items() if v is None)
        if null:
            raise TeaCacheError(f"{where}: {cls.name} data {null} is null: give a value or leave the key out")
        cls(**{k: v for k, v in data.items() if k in params})

    # --- decisions --------------------------------------------------------------------------
    def start(self, num_steps: int, context: str, n_groups: int,
              thresholds: np.ndarray | None = None) -> PolicyState:
        """A fresh state for one cache context of a generation of ``num_steps`` calls; in
        sample mode ``thresholds`` gives one threshold per group (None: the policy's own)."""
        if not self.static:
            raise NotImplementedError
        if thresholds is None:
            column = self._table(num_steps, context)
            table = np.repeat(column[:, None], n_groups, axis=1)
        else:
            if not self.has_threshold:
                raise TeaCacheError(f"{self.describe()} has no threshold: per-prompt thresholds do not apply")
            table = np.stack([self._table(num_steps, context, float(t)) for t in thresholds], axis=1)
        return StaticState(np.ascontiguousarray(table, dtype=np.uint8), self.describe())

    def _table(self, num_steps: int, context: str, threshold: float | None = None) -> np.ndarray:
        policy = self if threshold is None else self.replace(threshold=threshold)
        column = np.zeros(num_steps, dtype=np.uint8)
        steps = list(policy.schedule(num_steps, context))
        bad = [s for s in steps if not 0 <= s < num_steps]
        if bad:
            raise TeaCacheError(f"{policy.describe()} lists step(s) {bad[:5]} outside this generation's "
                                f"{num_steps} steps (0 to {num_steps - 1}): give a schedule for {num_steps} steps")
        column[steps] = 1
        return column

    def schedule(self, num_steps: int, context: str) -> Sequence[int]:
        """Static policies: the call indices of ``context`` that compute, in a generation of
        ``num_steps`` calls (where no usable residual exists, a call computes anyway)."""
        raise NotImplementedError(f"{type(self).__name__} is not static")


# --- the registry -----------------------------------------------------------------------------
_REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Add ``cls`` under ``cls.name`` (class decorator); checks what every policy must declare."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise TypeError(f"{cls.__qualname__}.name {name!r} must be a lower-case name such as 'teacache'")
    unknown = set(cls.needs) - set(FEATURES)
    if unknown:
        raise TypeError(f"{cls.__qualname__}.needs names unknown features {sorted(unknown)}; known: {sorted(FEATURES)}")
    if cls.static and cls.needs:
        raise TypeError(f"{cls.__qualname__} is static: it reads nothing from the graphs (needs must be empty)")
    existing = _REGISTRY.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise TypeError(f"policy name {name!r} of {cls.__qualname__} is taken by {existing.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def registered() -> dict[str, type[Policy]]:
    """Every policy by name."""
    return dict(_REGISTRY)


def make(name: str, **params) -> Policy:
    """The policy ``name`` with ``params`` (what ``policy.params`` gives back)."""
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise TeaCacheError(f"policy {name!r} is unknown; choose one of {sorted(_REGISTRY)}")
    accepted = cls.param_names()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TeaCacheError(f"policy {name!r} takes no parameter(s) {unknown}; it takes {list(accepted)}")
    sig = inspect.signature(cls.__init__).parameters
    missing = [n for n in accepted if sig[n].default is inspect.Parameter.empty and n not in params]
    if missing:
        raise TeaCacheError(f"policy {name!r} needs the parameter(s) {missing} (it takes {list(accepted)})")
    return cls(**params)


def from_spec(value) -> Policy:
    """A policy from a policy object, a name, or ``{"name": ..., "params": {...}}``."""
    if isinstance(value, Policy):
        return value
    if isinstance(value, str):
        return make(value)
    if isinstance(value, Mapping):
        extra = sorted(set(value) - {"name", "params"})
        params = value.get("params", {})
        if extra or "name" not in value or not isinstance(params, Mapping):
            raise TeaCacheError(f"policy {dict(value)!r:.200} must be {{\"name\": NAME, \"params\": {{...}}}}"
                                f"{f' (unknown keys {extra})' if extra else ''}")
        return make(value["name"], **params)
    raise TeaCacheError(f"policy {value!r:.100} must be a policy object, a name ({sorted(_REGISTRY)}) or "
                        f"{{\"name\": ..., \"params\": {{...}}}}")


def artifact_policies(manifest, where: str = "manifest.json") -> ArtifactPolicies:
    """What ``manifest`` records for the policies, checked: the default policy is one this
    runtime knows, and the data of every policy it knows is valid (data of a policy it does not
    know is kept but not read)."""
    fix = "re-run teacache-export with --force (or undo a calibration: teacache-calibrate --restore)"
    art = ArtifactPolicies(manifest.policy.name, dict(manifest.policy.params),
                           {name: dict(entry) for name, entry in manifest.policy_data.items()}, where, fix)
    for name, data in art.data.items():
        cls = _REGISTRY.get(name)
        if cls is not None:
            try:
                cls.check_data(data, f"{where} policy_data.{name}")
            except TeaCacheError as exc:
                raise TeaCacheError(f"{exc}; {fix}") from None
    if art.name not in _REGISTRY:
        raise TeaCacheError(f"{where}: the default policy {art.name!r} is unknown to this teacache-trt "
                            f"(known: {sorted(_REGISTRY)}): upgrade teacache-trt, or pass a policy")
    return art


def default_policy(art: ArtifactPolicies) -> Policy:
    """The artifact's default policy, bound."""
    try:
        policy = make(art.name, **art.params)
    except TeaCacheError as exc:
        raise TeaCacheError(f"{art.where}: the default policy {art.name} is invalid: {exc}; {art.fix}") from None
    return policy.bind(art)


# --- checks shared by the policies ----------------------------------------------------------------
def suggest_above(value: float, low: float) -> float:
    """A threshold to suggest in a never-skipped line: ``value`` rounded up to two significant
    digits, and above ``low`` (the smallest change seen, so the suggestion would have skipped)."""
    if not math.isfinite(value) or value <= 0:
        return value
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    out = math.ceil(value / scale) * scale
    return float(f"{out + scale if out <= low else out:.3g}")


def check_threshold(value, what: str = "threshold") -> float:
    """A threshold is a finite number >= 0 (bools and strings are not); 0 never skips."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise TeaCacheError(f"{what} {value!r} must be a number >= 0 (0 never skips; larger skips more)")
    return float(value)


def check_steps(values, what: str = "steps") -> list[int]:
    """Distinct step indices >= 0, sorted."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | range | frozenset | set | tuple):
        raise TeaCacheError(f"{what} {values!r:.100} must be a list of step indices (integers >= 0)")
    steps = list(values)
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in steps):
        raise TeaCacheError(f"{what} {steps!r:.200} must be integers >= 0 (0 is the first step)")
    steps = [int(s) for s in steps]
    if len(set(steps)) != len(steps):
        raise TeaCacheError(f"{what} {steps!r:.200} lists a step twice: give each step once")
    return sorted(steps)
