"""TensorRT and TensorRT-RTX engines: torch CUDA tensors as device buffers, execute_async_v3
on torch's current stream (so no extra synchronisation against the caller's work)."""
from __future__ import annotations

from pathlib import Path

import torch

from ...engines.flavours import trt_module
from ...errors import TeaCacheError
from ...manifest import sha256_file
from .base import TORCH_DTYPES, Runner


def check_engine_file(path: Path, expected_sha256: str | None, flavour: str) -> None:
    """Missing or changed engine files fail here, before any GPU work."""
    if not path.is_file():
        raise TeaCacheError(
            f"engine file {path} is missing: run `teacache-export ... --build {flavour}` for this folder"
        )
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise TeaCacheError(
            f"engine file {path} does not match the manifest (size {path.stat().st_size} bytes; "
            f"truncated or overwritten): rebuild it with `teacache-export ... --build {flavour} --force`"
        )


class TensorRTRunner(Runner):
    def __init__(self, name, spec, device, path: Path, flavour: str, sha256: str | None = None):
        super().__init__(name, spec, device)
        self.path = Path(path)
        self.flavour = flavour
        self.sha256 = sha256
        self.engine = self.context = None
        # File checks at construction: every graph's engine is checked before any GPU work.
        check_engine_file(self.path, self.sha256, self.flavour)

    def _activate(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise TeaCacheError(
                f"backend {self.flavour} runs engines on a CUDA GPU, but device is {self.device} "
                f"(cuda available: {torch.cuda.is_available()}); use device='cuda' on a GPU machine, "
                f"or backend='onnxruntime' on the CPU"
            )
        trt = trt_module(self.flavour)
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TeaCacheError(
                f"{self.flavour} could not deserialize {self.path} (built by another TensorRT version "
                f"or for another GPU?): rebuild with `teacache-export ... --build {self.flavour} --force`"
            )
        self.context = self.engine.create_execution_context()

    def _deactivate(self) -> None:
        self.context = self.engine = None

    def _infer(self, feed):
        ctx = self.context
        for name, t in feed.items():
            t = t.contiguous()
            feed[name] = t  # keep the contiguous copy alive until the launch is queued
            ctx.set_input_shape(name, tuple(t.shape))
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
