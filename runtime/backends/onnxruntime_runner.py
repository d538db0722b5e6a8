"""ONNX Runtime: CPU provider everywhere; CUDA provider (IO binding, no host copies) when present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import TeaCacheError
from ...shapes import propagate
from .base import TORCH_DTYPES, Runner


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
            binding.bind_input(n, "cuda", index, _np_dtype(t.dtype), tuple(t.shape), t.data_ptr())
        outs = {}
        for spec in self.spec.outputs:
            out = torch.empty(shapes[spec.name], dtype=TORCH_DTYPES[spec.dtype], device=self.device)
            binding.bind_output(spec.name, "cuda", index, _np_dtype(out.dtype), tuple(out.shape), out.data_ptr())
            outs[spec.name] = out
        self.session.run_with_iobinding(binding)
        return outs


def _np_dtype(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype if dtype != torch.bfloat16 else np.uint16
