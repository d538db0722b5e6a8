"""Finding, reading and loading a model folder: what export and the torch backend share."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import TeaCacheError


def find_model_dir(model_dir: str | Path) -> Path:
    """A transformer folder (config.json + weights) or a pipeline folder with transformer/."""
    model_dir = Path(model_dir)
    for candidate in (model_dir, model_dir / "transformer"):
        if (candidate / "config.json").is_file():
            return candidate
    raise TeaCacheError(
        f"{model_dir} holds no config.json and no transformer/config.json: pass a diffusers "
        f"transformer folder or a pipeline folder that has a transformer/ subfolder"
    )


MAX_CONFIG_BYTES = 16 << 20


def read_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` as a dict: a damaged, huge or non-object file is a clear error."""
    path = Path(model_dir) / "config.json"
    if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:  # is_file: no device, no FIFO
        raise TeaCacheError(f"{path} is not a regular file of at most {MAX_CONFIG_BYTES >> 20} MB: "
                            f"pass a diffusers model folder")
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TeaCacheError(f"cannot read {path} ({exc}): it must be the JSON config a diffusers "
                            f"model's save_pretrained writes") from exc
    if not isinstance(config, dict):
        raise TeaCacheError(f"{path} holds a JSON {type(config).__name__}, not an object of model "
                            f"settings: pass the folder of a diffusers model (save_pretrained)")
    return config


def plain_config(model: torch.nn.Module) -> dict[str, Any]:
    """A model's config as plain JSON data (tuples as lists), as the manifest stores it."""
    return json.loads(json.dumps(dict(model.config), default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def module_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a model runs at: diffusers' ``dtype``, else its first floating-point parameter."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
