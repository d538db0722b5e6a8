"""TensorRT and TensorRT-RTX engines: torch CUDA tensors as device buffers, execute_async_v3
on torch's current stream (so no extra synchronisation against the caller's work)."""
from __future__ import annotations

from pathlib import Path

import torch

from ...engines.flavours import trt_module
from ...errors import TeaCacheError
from ...dtypes import TORCH_DTYPES
from .base import Runner


class TensorRTRunner(Runner):
    def __init__(self, name, spec, device, path: Path, flavour: str):
        super().__init__(name, spec, device)
        self.path = Path(path)  # checked (inside the folder, size, sha256) by Manifest.engine_path
        self.flavour = flavour
        self.engine = self.context = None

    def _activate(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise TeaCacheError(
                f"backend {self.flavour} runs engines on a CUDA GPU, but device is {self.device} "
                f"(cuda available: {torch.cuda.is_available()}); use device='cuda' on a GPU machine, "
                f"or backend='onnxruntime' on the CPU"
            )
        trt = trt_module(self.flavour)
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        with torch.cuda.device(self.device):  # the engine lives on the runner's GPU
            self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TeaCacheError(
                f"{self.flavour} could not deserialize {self.path} (built by another TensorRT version "
                f"or for another GPU?): rebuild with `teacache-export ... --build {self.flavour} --force`"
            )
        with torch.cuda.device(self.device):
            self.context = self.engine.create_execution_context()

    def _deactivate(self) -> None:
        self.context = self.engine = None

    def _infer(self, feed):
        ctx = self.context
        for name, t in feed.items():
            t = t.contiguous()
            feed[name] = t  # keep the contiguous copy alive until the launch is queued
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise TeaCacheError(
                    f"{self.name} engine: input {name!r} shape {tuple(t.shape)} is outside its profile "
                    f"{self.engine.get_tensor_profile_shape(name, 0)}: re-export with wider --axis ranges"
                )
            ctx.set_tensor_address(name, t.data_ptr())
        outs = {}
        for spec in self.spec.outputs:
            shape = tuple(ctx.get_tensor_shape(spec.name))
            out = torch.empty(shape, dtype=TORCH_DTYPES[spec.dtype], device=self.device)
            ctx.set_tensor_address(spec.name, out.data_ptr())
            outs[spec.name] = out
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise TeaCacheError(f"{self.flavour} failed to enqueue the {self.name} engine ({self.path.name})")
        return outs
