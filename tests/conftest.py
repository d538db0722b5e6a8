"""Shared fixtures: each tiny model is exported once per session and reused by every test."""
from __future__ import annotations

import importlib
import os
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
        self.family_module = getattr(module, "FAMILY_MODULE", None)
        self.family = family_of(module)
        self.model = module.make_model()
        self.model_dir = root / "model"
        self.family.save_model(self.model, self.model_dir)
        self.art_dir = root / "art"
        self.log: list[str] = []  # the export's own lines, for tests of what it tells the user
        self.manifest = export_model(self.model_dir, self.art_dir, axes=module.AXES, build="none",
                                     family_module=self.family_module, variant=getattr(module, "VARIANT", None),
                                     log=self.log.append)

    def copy(self, dest: Path) -> Path:
        """A private copy of the artifact folder, for tests that change or add files."""
        shutil.copytree(self.art_dir, dest)
        return dest

    @property
    def graph_names(self) -> tuple[str, ...]:
        """The exported graphs in run order (the optional context graph first)."""
        from teacache_trt.manifest import graph_names

        return graph_names(self.manifest.graphs)

    def graph(self, name: str) -> Path:
        """The checked path of one exported graph (they live in the manifest's content folder)."""
        from teacache_trt.artifact import Artifact

        return Artifact(self.art_dir, self.manifest).graph_path(name)


def family_of(module):
    """The family of a tiny-model module: built in (FAMILY), or its own (FAMILY_MODULE)."""
    from teacache_trt.families import get_family, load_family_module

    spec = getattr(module, "FAMILY_MODULE", None)
    return load_family_module(spec) if spec else get_family(module.FAMILY)


_CACHE: dict[str, Exported] = {}


@pytest.fixture(scope="session", autouse=True)
def hash_cache(tmp_path_factory):
    """The per-user sha256 cache of artifact files, private to this session (subprocesses too)."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield Path(os.environ["XDG_CACHE_HOME"]) / "teacache-trt" / "sha256"
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported("flux") -> Exported, built on first use."""

    def get(name: str) -> Exported:
        if name not in _CACHE:
            module = importlib.import_module(f"models.{name}")
            _CACHE[name] = Exported(module, tmp_path_factory.mktemp(f"export_{name}"))
        return _CACHE[name]

    return get


def _bundled_cache(tmp_path_factory, driver, name: str) -> Path:
    """An artifact cache holding a bundled model, exported the way ``teacache-render`` and
    ``teacache-eval`` export it on first use (pass it as --cache-dir)."""
    from teacache_trt.tools.render.artifacts import ensure_artifacts

    cache = tmp_path_factory.mktemp(f"{name}_cache")
    ensure_artifacts(driver, driver.default_model(), batch_size=1, backend="onnxruntime", cache_dir=cache,
                     log=lambda m: None)
    return cache


def _only_folder(cache: Path) -> Path:
    """The one artifact folder inside a cache."""
    (art,) = [p for p in cache.iterdir() if p.is_dir()]
    return art


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory):
    """The bundled digits model's artifact cache, exported once per session."""
    from teacache_trt.digits.driver import DRIVER

    return _bundled_cache(tmp_path_factory, DRIVER, "digits")


@pytest.fixture(scope="session")
def digits_art(digits_cache):
    """The bundled digits model's artifact folder (inside ``digits_cache``)."""
    return _only_folder(digits_cache)


@pytest.fixture(scope="session")
def video_cache(tmp_path_factory):
    """The bundled video model's (moving digits) artifact cache, exported once per session."""
    from teacache_trt.moving_digits.driver import DRIVER

    return _bundled_cache(tmp_path_factory, DRIVER, "video")


@pytest.fixture(scope="session")
def video_art(video_cache):
    """The bundled video model's artifact folder (inside ``video_cache``)."""
    return _only_folder(video_cache)


# --- GPU tests -------------------------------------------------------------------------------
def pytest_addoption(parser):
    parser.addoption("--require-gpu", action="store_true",
                     help="fail (instead of skip) tests marked gpu when CUDA or the CUDA build of cpp_ext "
                          "is missing; scripts/gpu_check.sh passes it")


def need_gpu(config, what: str, reason: str | None) -> None:
    """Skip a gpu-marked test whose ``what`` is missing, or fail under --require-gpu."""
    if reason is None:
        return
    message = f"{what}: {reason}"
    if config.getoption("--require-gpu"):
        pytest.fail(f"--require-gpu: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def cuda(request) -> torch.device:
    """The CUDA device for tests marked gpu."""
    need_gpu(request.config, "no CUDA device",
             None if torch.cuda.is_available() else "torch.cuda.is_available() is False; run scripts/gpu_check.sh "
                                                    "on a GPU machine")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture
def device_kernel(request, cuda) -> torch.device:
    """A CUDA device, and cpp_ext's criterion kernel built."""
    from teacache_trt.runtime.experimental import device_criterion

    need_gpu(request.config, "cpp_ext's CUDA kernel is unavailable",
             None if device_criterion.available() else device_criterion.KERNEL_STATUS)
    return cuda
