"""Model knowledge shared by export, engines, the runtime and the tools.

A family is one file here: a :class:`Family` subclass (coefficients per variant, its model
inputs declared once as :class:`Input` data, axes, signal, timestep scale, how forward keywords
map to graph inputs) and three small :class:`Part` modules that call the model's own
submodules.  A model outside diffusers gets its family the same way, from the user's own file
(:mod:`.custom`: ``ModuleFamily``, ``--family-module``).
Nothing in this layer imports export, runtime or tool code.
"""
from .base import (
    ACCUMULATE, ANY_VALUE, AxisLimit, Family, ForcedSteps, NormOutHead, Part, TimestepScale, Variant, check_accumulate, check_coefficients,
    check_eps, criterion_sums,
)
from .inputs import AUTO, Axis, Input, latent_axes, patched_axes, text_axis
from .magcache_ratios import PublishedRatios
from .custom import ModuleFamily, load_family_module
from .model_io import find_model_dir, plain_config, read_config
from .registry import all_families, get_family, register

__all__ = [
    "ACCUMULATE", "ANY_VALUE", "AUTO", "Axis", "AxisLimit", "Family", "ForcedSteps", "Input", "ModuleFamily", "NormOutHead", "Part", "PublishedRatios",
    "TimestepScale", "Variant", "check_accumulate", "check_coefficients", "check_eps", "criterion_sums",
    "latent_axes", "patched_axes", "text_axis",
    "load_family_module",
    "find_model_dir", "plain_config", "read_config",
    "all_families", "get_family", "register",
]
