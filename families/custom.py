"""Families for models outside diffusers (Open-Sora, Open-Sora-Plan, an in-house DiT).

A family is the same :class:`~.base.Family` whatever the model: three :class:`~.base.Part`
modules (embed, blocks, head) calling the model's own submodules, the signal they emit, the
cached streams, the axes and the coefficients.  What diffusers gives for free, a plain
``torch.nn.Module`` lacks: a ``config``, ``from_pretrained`` and ``save_pretrained``.
:class:`ModuleFamily` supplies those from a folder of ``config.json`` (the constructor's
keyword arguments) and ``model.safetensors`` (the state dict)::

    teacache-export MODEL_DIR --out ART --family-module examples/custom_family/family.py:TinyDiTFamily
    teacache_trt.load_transformer(ART, family_module="examples/custom_family/family.py:TinyDiTFamily")

docs/custom-families.md says what a declaration needs; ``examples/custom_family/`` is a
complete one (a model built from a config object, returning a dataclass).

``--family-module`` takes ``path/to/file.py:ClassName`` or ``package.module:ClassName``.  Loading
the module runs its code, so it happens only where the user names it: the manifest records
the name for error messages but the runtime never imports it on its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from ..dtypes import precision_dtype
from ..errors import TeaCacheError
from ..files import atomic_write_bytes
from .base import Family
from .model_io import find_model_dir, read_config
from .registry import all_families, register

# What a Family subclass must define (the base class leaves these unset or raising); a family
# without ``inputs`` states ``model_inputs`` and overrides both input hooks instead.
REQUIRED = ("name", "class_name", "variants", "axes", "signal", "signal_dims", "cached")
INPUT_HOOKS = ("input_dims", "example_inputs")


class ModuleFamily(Family):
    """A family whose model is a plain ``torch.nn.Module``, stored as config.json + safetensors.

    ``build(config)`` makes the module (default: ``module_class(**config)``, keys starting with
    ``_`` left out); the module keeps its config in a ``config`` attribute (a dict, or an object
    with ``to_dict()``) so that exports can record and compare it; override ``config_of`` where
    it keeps it elsewhere.  Its ``forward`` takes the graph inputs as keywords
    (``kwargs_from_feed``) and returns ``output_type``.
    """

    module_class: ClassVar[type[torch.nn.Module]]
    weights_name: ClassVar[str] = "model.safetensors"
    # What the module's forward returns, so that the drop-in returns the same: torch.Tensor (the
    # output itself), tuple (``(output,)``), or a dataclass whose first field is the output (built
    # as ``output_type(output)``; its other fields need defaults).  The export checks it against
    # what the module returned.  A caller's ``return_dict=False`` gets ``(output,)`` whatever
    # this says, as from a diffusers model.
    output_type: ClassVar[type] = torch.Tensor

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "class_name" not in cls.__dict__ and "module_class" in cls.__dict__:
            cls.class_name = cls.module_class.__name__

    @classmethod
    def model_class(cls):
        return cls.module_class

    @classmethod
    def build(cls, config: Mapping[str, Any]) -> torch.nn.Module:
        return cls.module_class(**{k: v for k, v in config.items() if not k.startswith("_")})

    @classmethod
    def load_model(cls, model_dir, precision: str) -> torch.nn.Module:
        from safetensors.torch import load_file

        src = find_model_dir(model_dir)
        weights = src / cls.weights_name
        if not weights.is_file():
            raise TeaCacheError(
                f"{weights} does not exist: a {cls.name} model folder holds config.json and "
                f"{cls.weights_name} (write one with {cls.__name__}.save_model(model, folder))"
            )
        config = read_config(src)
        cls.check_config(config)
        model = cls.build(config)
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise TeaCacheError(
                f"{weights} does not fit {cls.module_class.__name__}(**config.json): missing "
                f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; the weights and the "
                f"config come from different models"
            )
        return model.to(precision_dtype(precision)).eval()

    @classmethod
    def save_model(cls, model: torch.nn.Module, model_dir) -> None:
        from safetensors.torch import save

        model_dir = Path(model_dir)
        config = {"_class_name": cls.class_name, **cls.config_of(model)}
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(model_dir / cls.weights_name, save(state))
        atomic_write_bytes(model_dir / "config.json", json.dumps(config, indent=2).encode())

    @classmethod
    def config_of(cls, model: torch.nn.Module) -> dict[str, Any]:
        config = getattr(model, "config", None)
        if config is None:
            raise TeaCacheError(
                f"{type(model).__name__} has no `config` attribute: a {cls.__name__} model keeps the "
                f"keyword arguments build() takes in `model.config`, or the family overrides config_of"
            )
        if hasattr(config, "to_dict"):  # a transformers PretrainedConfig
            config = config.to_dict()
        return json.loads(json.dumps(dict(config), default=lambda o: list(o) if isinstance(o, tuple) else str(o)))

    @classmethod
    def call_model(cls, model: torch.nn.Module, kwargs: Mapping[str, Any]) -> torch.Tensor:
        """The output tensor of the module's forward, whose result must be of ``output_type``."""
        out = model(**kwargs)
        want = cls.output_type
        if isinstance(out, torch.Tensor) != (want is torch.Tensor) or not (
                isinstance(out, torch.Tensor) or isinstance(out, want)):
            raise TeaCacheError(
                f"{type(model).__name__}.forward returned a {type(out).__module__}.{type(out).__qualname__}, but the "
                f"family {cls.__qualname__} declares output_type = {want.__qualname__}: set output_type = "
                f"{_type_name(out)}, so that the drop-in transformer returns what the module returns")
        return _output_tensor(out)

    @classmethod
    def wrap_output(cls, output: torch.Tensor, return_dict: bool):
        """What the module's forward returns for ``output`` (``output_type``); ``(output,)`` for
        a caller that passes ``return_dict=False``."""
        want = cls.output_type
        if not return_dict or want is tuple:
            return (output,)
        if want is torch.Tensor:
            return output
        return want(output)


def _output_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if dataclasses.is_dataclass(out):
        return getattr(out, dataclasses.fields(out)[0].name)
    return out[0]


def _type_name(out) -> str:
    if isinstance(out, tuple) and type(out) is tuple:
        return "tuple"
    if dataclasses.is_dataclass(out):
        return type(out).__qualname__
    return f"{type(out).__qualname__} (a tensor, a tuple or a dataclass; or override call_model and wrap_output)"


def load_family_module(spec: str) -> type[Family]:
    """The Family class named by ``path/to/file.py:ClassName`` or ``package.module:ClassName``,
    checked and registered (so that ``get_family`` finds it by name)."""
    target, sep, attr = str(spec).rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise TeaCacheError(
            f"family module {spec!r} is not FILE.py:ClassName or package.module:ClassName"
        )
    module = _import_file(Path(target)) if target.endswith(".py") or "/" in target else _import_name(target)
    cls = getattr(module, attr, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, Family) and v.__module__ == module.__name__)
        raise TeaCacheError(f"{target} has no {attr!r}; the Family classes it defines: {found or 'none'}")
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise TeaCacheError(
            f"{spec}: {attr} is {type(cls).__name__} {cls!r}, not a subclass of teacache_trt.families.Family"
        )
    check_family(cls)
    all_families()  # the built-in names first, so that a clash is caught
    return register(cls)


def check_family(cls: type[Family]) -> None:
    """Every attribute and method a family must define, before any model loads."""
    def inherited(method: str) -> bool:
        return getattr(cls, method).__func__ is getattr(Family, method).__func__

    missing = [n for n in REQUIRED if not hasattr(cls, n)]
    if not cls.inputs:
        if hasattr(cls, "model_inputs"):
            missing += [f"{n}()" for n in INPUT_HOOKS if inherited(n)]
        else:
            missing.insert(0, "inputs")
    missing += ["parts()"] if inherited("parts") else []
    if missing:
        raise TeaCacheError(
            f"family class {cls.__qualname__} does not define {', '.join(missing)}: see "
            f"teacache_trt.families.custom for what a family declares"
        )
    for name, variant in cls.variants.items():
        if name != variant.name or not variant.coefficients:
            raise TeaCacheError(f"family {cls.name}: variant {name!r} must be Variant({name!r}, coefficients, ...)")


def _import_file(path: Path):
    path = path.expanduser().resolve()
    if not path.is_file():
        raise TeaCacheError(f"family module file {path} does not exist")
    source = path.read_bytes()
    # One module per file content: loading the same file again reuses it (the registered class
    # stays the same object), an edited file loads afresh.
    name = f"_teacache_family_{path.stem}_{hashlib.sha256(source).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:  # not a Python source file (e.g. /etc/passwd): no loader for it
        raise TeaCacheError(f"family module file {path} is not a Python file: give path/to/file.py:ClassName")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: inspect.getfile and dataclasses look it up
    # The file's folder goes first on sys.path, as for a script run with ``python file.py``:
    # a family file imports its model from a sibling file (``from my_dit import MyDiT``).  It
    # stays there, for imports the family makes later (inside parts(), build()).
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise TeaCacheError(f"importing family module {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_name(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise TeaCacheError(
            f"cannot import family module {name!r} ({exc}): check the name, and that its package is "
            f"installed or on PYTHONPATH; a file is given as path/to/file.py:ClassName"
        ) from exc
    except Exception as exc:
        raise TeaCacheError(f"importing family module {name!r} failed: {type(exc).__name__}: {exc}") from exc
