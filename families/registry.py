"""The family registry: ``@register`` on a Family subclass, ``get_family`` by name or class."""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import TeaCacheError
from .base import Family

_REGISTRY: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    """Add ``cls`` under ``cls.name``; a family from outside this package cannot take the name
    of a built-in one (a later load of the same user family replaces the earlier one)."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls and _builtin(existing) and not _builtin(cls):
        raise TeaCacheError(
            f"family name {cls.name!r} of {cls.__module__}.{cls.__qualname__} is taken by the built-in "
            f"{existing.__module__}.{existing.__qualname__}: give the custom family another name"
        )
    _REGISTRY[cls.name] = cls
    return cls


def _builtin(cls: type[Family]) -> bool:
    return cls.__module__.startswith(__name__.rpartition(".")[0] + ".")


def _load_builtin() -> None:
    # Every module of this package is imported once; family modules register on import.
    from .. import families

    for mod in pkgutil.iter_modules(families.__path__):
        importlib.import_module(f"{families.__name__}.{mod.name}")


def get_family(name_or_class: str) -> type[Family]:
    """The family registered under a family name (``flux``) or a model class name."""
    _load_builtin()
    for fam in _REGISTRY.values():
        if name_or_class in (fam.name, fam.class_name):
            return fam
    known = ", ".join(f"{f.name} ({f.class_name})" for f in _REGISTRY.values())
    raise TeaCacheError(
        f"unknown model family {name_or_class!r}; supported: {known}. "
        f"Pass --family with one of these names, or add a Family file under families/"
    )


def all_families() -> list[type[Family]]:
    _load_builtin()
    return list(_REGISTRY.values())
