"""The public entry points: ``load_transformer`` and ``enable``."""
from __future__ import annotations

import functools
import types
from pathlib import Path

import torch

from ..artifact import Artifact
from ..errors import TeaCacheError
from ..families import get_family, load_family_module
from ..integrity import config_fingerprint
from .backends import BACKENDS
from .transformer import CompiledTransformer


def load_transformer(art_dir, backend: str = "onnxruntime", threshold: float | None = None,
                     device: str | torch.device = "cpu", *, policy=None, clamp: bool | None = None,
                     model: torch.nn.Module | None = None, decisions: str = "batch",
                     family_module: str | None = None, model_dir=None) -> CompiledTransformer:
    """A module usable as ``pipe.transformer``, running the exported graphs with a caching policy.

    ``policy``: a :mod:`teacache_trt.policies` object, a name (``"teacache"``, ``"schedule"``
    needs its steps) or ``{"name": ..., "params": {...}}``; None: the manifest's default policy
    (TeaCache at the variant's default threshold, unless the artifact says otherwise).
    ``threshold`` is TeaCache's shorthand: ``threshold=0.2`` alone is ``policy=TeaCache(threshold=0.2)``
    (the manifest's coefficients); with a policy it sets that policy's threshold (an error for
    a policy without one).  0 never skips.  ``clamp`` likewise sets TeaCache's clamp of
    poly(d) at 0.  ``backend="torch"`` runs
    the same three parts in PyTorch (the reference path); it uses ``model``, or loads the model
    from ``model_dir`` (default: the folder the manifest says it was exported from).
    Every file is checked against the manifest (inside the folder, size, sha256) before use.
    ``decisions="batch"`` takes one
    decision per call (upstream); ``"sample"`` one per prompt (``sample_thresholds``), with
    the blocks graph run on the rows of the prompts that compute.
    ``family_module`` names the family of an artifact exported with ``--family-module`` (the
    same ``file.py:Class`` or ``package.module:Class``); it is imported only when given here.
    """
    if backend not in BACKENDS:
        raise TeaCacheError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    art_dir = Path(art_dir)
    artifact = Artifact.open(art_dir)
    manifest = artifact.manifest
    family = _family_of(manifest, art_dir, family_module)
    if backend == "torch" and model is None:
        model = _load_source_model(family, manifest, model_dir)
    if model is not None:
        _check_same_model(family, model, manifest)
    return CompiledTransformer(artifact, backend, device, threshold, clamp, model, decisions, policy)


def _family_of(manifest, art_dir: Path, family_module: str | None):
    """The artifact's family: registered, or loaded from the module the caller names."""
    if family_module:
        family = load_family_module(family_module)
        if family.name != manifest.family:
            raise TeaCacheError(
                f"{art_dir} was exported for family {manifest.family!r}; family module "
                f"{family_module} defines {family.name!r}"
            )
        return family
    try:
        return get_family(manifest.family)
    except TeaCacheError:
        if not manifest.family_module:
            raise
        raise TeaCacheError(
            f"{art_dir} was exported with the custom family {manifest.family!r} from "
            f"{manifest.family_module!r}: pass family_module='{manifest.family_module}' (or import the "
            f"module that registers it) to load it"
        ) from None


def _load_source_model(family, manifest, model_dir=None):
    src = Path(model_dir if model_dir is not None else manifest.source)
    if not ((src / "config.json").is_file() or (src / "transformer" / "config.json").is_file()):
        where = "the model_dir given" if model_dir is not None else "the manifest's source"
        raise TeaCacheError(
            f"backend='torch' needs the PyTorch model; {where} {src} is not a model folder here: "
            f"pass the exported model's folder (--model-dir DIR on the command line, model_dir= in "
            f"load_transformer) or the model itself (model=)"
        )
    return family.load_model(src, manifest.precision)


def _check_same_model(family, model, manifest) -> None:
    if config_fingerprint(family.config_of(model)) != manifest.config_hash:
        raise TeaCacheError(
            f"the model given has another config than the one exported to this folder "
            f"({manifest.class_name}, config hash {manifest.config_hash[:12]}): pass the exported model"
        )


EXPERTS = ("transformer", "transformer_2")  # a two-expert pipeline's transformers (Wan2.2 A14B)


def enable(pipe, art_dir, threshold: float | None = None, backend: str = "onnxruntime",
           device: str | torch.device | None = None, *, policy=None, transformer_2=None,
           threshold_2: float | None = None, policy_2=None, **kwargs) -> CompiledTransformer:
    """Replace ``pipe.transformer`` with the compiled one; each pipeline call then starts a
    fresh generation with the right step count (hooked on the scheduler's ``set_timesteps``).
    ``policy`` and ``threshold`` as in :func:`load_transformer`.

    Two experts (Wan2.2 A14B: ``pipe.transformer`` runs the steps with ``t >= boundary_ratio *
    num_train_timesteps``, ``pipe.transformer_2`` the rest): ``transformer_2`` is the second
    expert's artifact folder, and ``threshold_2`` / ``policy_2`` its settings (default: the
    same ``threshold`` / ``policy``, each applied to its own artifact's data).  Each expert keeps
    its own cache contexts, residuals and coefficients, and is reset with the number of steps
    it runs.  Returns the first expert's transformer (``pipe.transformer_2`` holds the other).
    """
    if device is None:
        device = getattr(pipe, "device", "cpu")
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None:
        raise TeaCacheError(f"{type(pipe).__name__} has no scheduler to follow; call transformer.reset(steps) yourself")
    if transformer_2 is not None:
        _check_two_experts(pipe)
    elif threshold_2 is not None or policy_2 is not None:
        raise TeaCacheError("threshold_2 / policy_2 set the second expert's policy: give its artifact as transformer_2=")
    transformer = load_transformer(art_dir, backend=backend, threshold=threshold, device=device, policy=policy,
                                   **kwargs)
    compiled = {"transformer": transformer}
    if transformer_2 is not None:
        # the PyTorch model given for the first expert is not the second's: torch loads its own
        own = {k: v for k, v in kwargs.items() if k not in ("model", "model_dir")}
        compiled["transformer_2"] = load_transformer(
            transformer_2, backend=backend, device=device, policy=policy if policy_2 is None else policy_2,
            threshold=threshold if threshold_2 is None else threshold_2, **own)
    for name, module in compiled.items():
        if hasattr(pipe, "register_modules"):
            pipe.register_modules(**{name: module})
        else:
            setattr(pipe, name, module)
    follow_scheduler(scheduler, pipe)
    return transformer


def _check_two_experts(pipe) -> None:
    name = type(pipe).__name__
    if not hasattr(pipe, "transformer_2"):
        raise TeaCacheError(f"{name} has no transformer_2: transformer_2= is for two-expert pipelines (Wan2.2 A14B: "
                            f"WanPipeline / WanImageToVideoPipeline with transformer_2 and boundary_ratio)")
    if _boundary_ratio(pipe) is None:
        raise TeaCacheError(f"{name} has no boundary_ratio in its config, so it never calls transformer_2: load the "
                            f"pipeline with boundary_ratio (Wan2.2 A14B: 0.875 T2V, 0.9 I2V), or drop transformer_2=")


def _boundary_ratio(pipe) -> float | None:
    config = getattr(pipe, "config", None)
    return config.get("boundary_ratio") if hasattr(config, "get") else None


def expert_steps(pipe, timesteps, num_train_timesteps: int) -> dict[str, int]:
    """The calls each expert of ``pipe`` makes per cache context over ``timesteps``: the first
    transformer all of them, or with a ``boundary_ratio`` those with ``t >= boundary_ratio *
    num_train_timesteps`` (the pipeline's own test), the second the rest."""
    ratio = _boundary_ratio(pipe)
    if ratio is None:
        return {"transformer": len(timesteps), "transformer_2": 0}
    high = int((torch.as_tensor(timesteps) >= ratio * num_train_timesteps).sum())
    return {"transformer": high, "transformer_2": len(timesteps) - high}


def follow_scheduler(scheduler, pipe) -> None:
    """Hook the scheduler *instance* (never its class) so generations need no bookkeeping.

    - ``set_timesteps`` opens every generation: afterwards ``len(timesteps)`` is the number of
      model calls per branch (Heun-style schedulers included), split between two experts by
      the pipeline's ``boundary_ratio``;
    - ``set_begin_index`` (img2img ``strength``) starts later in that list: fewer calls;
    - ``step`` closes a denoising step: a second call of one cache context within a step is
      another CFG branch of a pipeline that does not name its branches.
    The compiled transformers among ``pipe.transformer`` / ``pipe.transformer_2`` now are the
    ones followed.  The wrappers are bound methods of the scheduler, so a deep copy of it
    stays consistent.
    """
    cls = type(scheduler)
    followed = {name: t for name in EXPERTS if isinstance(t := getattr(pipe, name, None), CompiledTransformer)}
    train_steps = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None) or 1000

    def reset(sched) -> None:
        begin = getattr(sched, "begin_index", None) or 0
        steps = expert_steps(pipe, sched.timesteps[begin:], train_steps)
        for name, transformer in followed.items():
            transformer.reset(steps[name])

    # functools.wraps keeps the signatures: pipelines inspect set_timesteps for `sigmas`.
    @functools.wraps(cls.set_timesteps)
    def set_timesteps(self, *args, **kwargs):
        result = cls.set_timesteps(self, *args, **kwargs)
        reset(self)
        return result

    scheduler.set_timesteps = types.MethodType(set_timesteps, scheduler)

    if hasattr(cls, "set_begin_index"):
        @functools.wraps(cls.set_begin_index)
        def set_begin_index(self, *args, **kwargs):
            result = cls.set_begin_index(self, *args, **kwargs)
            reset(self)
            return result

        scheduler.set_begin_index = types.MethodType(set_begin_index, scheduler)

    @functools.wraps(cls.step)
    def step(self, *args, **kwargs):
        for transformer in followed.values():
            transformer.end_step()
        return cls.step(self, *args, **kwargs)

    scheduler.step = types.MethodType(step, scheduler)
    for transformer in followed.values():
        transformer.track_steps = True
