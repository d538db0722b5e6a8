"""Shared fixtures: each tiny model is exported once per session and reused by every test."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


class Exported:
    """A tiny model, its saved folder and its exported artifact folder."""

    def __init__(self, module, root: Path):
        from teacache_trt.export.exporter import export_model

        self.spec = module
        self.model = module.make_model()
        self.model_dir = root / "model"
        self.model.save_pretrained(self.model_dir)
        self.art_dir = root / "art"
        self.manifest = export_model(self.model_dir, self.art_dir, axes=module.AXES, build="none",
                                     log=lambda msg: None)

    def copy(self, dest: Path) -> Path:
        """A private copy of the artifact folder, for tests that change or add files."""
        shutil.copytree(self.art_dir, dest)
        return dest


_CACHE: dict[str, Exported] = {}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported("flux") -> Exported, built on first use."""

    def get(name: str) -> Exported:
        if name not in _CACHE:
            module = importlib.import_module(f"models.{name}")
            _CACHE[name] = Exported(module, tmp_path_factory.mktemp(f"export_{name}"))
        return _CACHE[name]

    return get
