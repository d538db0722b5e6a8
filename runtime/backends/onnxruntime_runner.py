"""ONNX Runtime: CPU provider everywhere; CUDA provider (IO binding, no host copies) when present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import TeaCacheError
from ...shapes import propagate
# IOBinding takes ONNX element numbers (onnxruntime >= 1.20): the only way to name bfloat16.
from ...dtypes import ONNX_ELEM_OF, TORCH_DTYPES
from .base import Runner


class OnnxRuntimeRunner(Runner):
    def __init__(self, name, spec, device, path: Path, threads: int = 0):
        super().__init__(name, spec, device)
        self.path = Path(path)
        self.threads = threads
        self.session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise TeaCacheError(f"graph file {self.path} is missing: re-run teacache-export")
        if self.device.type == "cpu" and any(t.dtype == "bfloat16" for t in self.spec.inputs + self.spec.outputs):
            raise TeaCacheError(
                f"the {self.name} graph is bfloat16, which ONNX Runtime's CPU provider cannot run: "
                f"use device='cuda' (onnxruntime-gpu), a TensorRT backend, or export with --precision fp16/fp32"
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        # Three sessions run back to back every step, each with its own intra-op pool: a
        # pool left spinning after its Run steals the cores the next session needs (on a
        # 2-core CPU, skipped steps took 20-30 ms instead of 3 ms, and the blocks graph ran
        # 2x slower while other processes shared the CPU).  Sleeping workers cost ~us per op.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise TeaCacheError(
                    "backend onnxruntime on device cuda needs onnxruntime-gpu "
                    "(pip install 'teacache-trt[onnxruntime-gpu]'), or use device='cpu'"
                )
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:
            raise TeaCacheError(f"ONNX Runtime cannot load {self.path}: {exc}; re-export with --force") from exc
        if self.device.type == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            # ORT falls back to the CPU silently when CUDA libraries are missing.
            raise TeaCacheError(
                f"ONNX Runtime could not start its CUDA provider for {self.path.name} (providers: "
                f"{self.session.get_providers()}): check the CUDA / cuDNN libraries onnxruntime-gpu needs"
            )

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feed):
        if self.device.type == "cuda":
            return self._infer_cuda(feed)
        arrays = {n: t.detach().contiguous().numpy() for n, t in feed.items()}
        outs = self.session.run(self.output_names, arrays)
        return {n: torch.from_numpy(np.asarray(v)) for n, v in zip(self.output_names, outs)}

    def _infer_cuda(self, feed):
        # Outputs are allocated by torch at the shapes the manifest's expressions give,
        # so ORT writes straight into tensors the caller owns.
        shapes = propagate([self.spec], {n: t.shape for n, t in feed.items()})
        binding = self.session.io_binding()
        index = self.device.index or 0
        for n, t in feed.items():
            t = t.contiguous()
            feed[n] = t
            binding.bind_input(n, "cuda", index, ONNX_ELEM_OF[t.dtype], tuple(t.shape), t.data_ptr())
        outs = {}
        for spec in self.spec.outputs:
            out = torch.empty(shapes[spec.name], dtype=TORCH_DTYPES[spec.dtype], device=self.device)
            binding.bind_output(spec.name, "cuda", index, ONNX_ELEM_OF[out.dtype], tuple(out.shape), out.data_ptr())
            outs[spec.name] = out
        # ORT's CUDA provider runs on its own stream: the inputs torch just queued must be ready.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return outs
