"""Tools over exported artifacts: ``teacache-bench``, ``teacache-calibrate``, quality metrics,
the model-agnostic sampling loop and the generation-driver registry.  They sit above the
runtime and export; demos plug into them through ``tools.drivers``."""
