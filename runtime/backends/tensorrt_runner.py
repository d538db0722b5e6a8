"""TensorRT and TensorRT-RTX engines: torch CUDA tensors as device buffers, ``execute_async_v3``
on the transformer's stream; shapes set once per input shape, addresses only where they moved."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...engines.flavours import trt_module
from ...errors import TeaCacheError
from .base import Runner

log = logging.getLogger("teacache_trt.tensorrt")


_LOGGERS: dict[str, object] = {}


def forwarding_logger(trt):
    """A TensorRT logger that hands every message to the ``teacache_trt.tensorrt`` Python
    logger at the matching level: warnings reach the user (``logging``'s default shows
    WARNING and above), verbose output only when that logger is set to DEBUG."""
    if trt.__name__ in _LOGGERS:
        return _LOGGERS[trt.__name__]
    S = trt.ILogger.Severity
    levels = {S.INTERNAL_ERROR: logging.CRITICAL, S.ERROR: logging.ERROR, S.WARNING: logging.WARNING,
              S.INFO: logging.INFO, S.VERBOSE: logging.DEBUG}

    class Forwarding(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            level = levels.get(severity, logging.WARNING)
            if log.isEnabledFor(level):
                log.log(level, "%s", msg)

    logger = _LOGGERS[trt.__name__] = Forwarding()
    return logger


class TensorRTRunner(Runner):
    def __init__(self, name, spec, device, path: Path, flavour: str, stream=None):
        super().__init__(name, spec, device, stream)
        self.path = Path(path)  # checked (inside the folder, size, sha256) by Manifest.engine_path
        self.flavour = flavour
        self.engine = self.context = None
        self._shapes = None
        self._addresses: dict[str, int] = {}

    def _activate(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise TeaCacheError(
                f"backend {self.flavour} runs engines on a CUDA GPU, but device is {self.device} "
                f"(cuda available: {torch.cuda.is_available()}); use device='cuda' on a GPU machine, "
                f"or backend='onnxruntime' on the CPU"
            )
        trt = trt_module(self.flavour)
        # Kept: the engine must not outlive the runtime that deserialized it.
        self._runtime = runtime = trt.Runtime(forwarding_logger(trt))
        with torch.cuda.device(self.device):  # the engine lives on the runner's GPU
            self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TeaCacheError(
                f"{self.flavour} could not deserialize {self.path} (built by another TensorRT version "
                f"or for another GPU?): rebuild with `teacache-export ... --build {self.flavour} --force`"
            )
        with torch.cuda.device(self.device):
            self.context = self.engine.create_execution_context()
        self._shapes, self._addresses = None, {}

    def _deactivate(self) -> None:
        self.context = self.engine = self._runtime = None

    def _infer_into(self, feed, outputs) -> None:
        ctx = self.context
        shapes = tuple(feed[n].shape for n in self.spec.input_names)
        if shapes != self._shapes:
            self._set_shapes(feed, outputs)
            self._shapes = shapes
        addresses = self._addresses
        for name in self.spec.input_names:
            ptr = feed[name].data_ptr()
            if addresses.get(name) != ptr:
                ctx.set_tensor_address(name, ptr)
                addresses[name] = ptr
        for name, t in outputs.items():
            ptr = t.data_ptr()
            if addresses.get(name) != ptr:
                ctx.set_tensor_address(name, ptr)
                addresses[name] = ptr
        stream = self.stream if self.stream is not None else torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise TeaCacheError(f"{self.flavour} failed to enqueue the {self.name} engine ({self.path.name})")

    def _set_shapes(self, feed, outputs) -> None:
        """A new input shape: bind it and check the engine's output shapes against the buffers."""
        ctx = self.context
        for name in self.spec.input_names:
            shape = tuple(feed[name].shape)
            if not ctx.set_input_shape(name, shape):
                raise TeaCacheError(
                    f"{self.name} engine: input {name!r} shape {shape} is outside its profile "
                    f"{self.engine.get_tensor_profile_shape(name, 0)}: re-export with wider --axis ranges"
                )
        for name, t in outputs.items():
            shape = tuple(ctx.get_tensor_shape(name))
            if shape != tuple(t.shape):
                raise TeaCacheError(
                    f"{self.name} engine: output {name!r} has shape {shape} but the manifest gives "
                    f"{tuple(t.shape)} for these inputs: the engine and the manifest disagree; rebuild "
                    f"with `teacache-export ... --build {self.flavour} --force`"
                )
