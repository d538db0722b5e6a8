"""Caching policies: which calls of a generation run the blocks graph (``teacache_trt.policies``).

    policies.TeaCache(threshold=0.2)              adaptive, from the signal (the artifact's coefficients)
    policies.Schedule(steps=[0, 5, 10, 15, 19])   static: exactly these steps
    policies.make("teacache", threshold=0.2)      by name and params (policy.name, policy.params)
    policies.Budget(7, reuse="taylor")            7 steps searched offline; skipped steps extrapolated

:mod:`.base` defines the seam (``Policy``, ``PolicyState``, the registry); every other module
of this folder holds one policy and is imported here, so a new policy is one file plus its
test: its registered class is then reachable as ``policies.<ClassName>``.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import (
    FEATURES, IO_SUMS, RESIDUAL_NORMS, REUSE_MODES, SIGNAL_SUMS, ArtifactPolicies, Features, Policy, PolicyState,
    StaticState, artifact_policies, check_threshold, default_policy, from_spec, make, register, registered,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
for _cls in registered().values():
    globals()[_cls.__name__] = _cls

__all__ = [
    "FEATURES", "IO_SUMS", "RESIDUAL_NORMS", "REUSE_MODES", "SIGNAL_SUMS", "ArtifactPolicies", "Features", "Policy",
    "PolicyState", "StaticState", "artifact_policies", "check_threshold", "default_policy", "from_spec", "make", "register",
    "registered", *sorted(c.__name__ for c in registered().values()),
]
