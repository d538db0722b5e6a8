"""ONNX Runtime: CPU provider everywhere; CUDA provider when present.  Both through IO binding
into the caller's buffers, so a step allocates nothing and copies nothing."""
from __future__ import annotations

from pathlib import Path

import torch

from ...errors import TeaCacheError
# IOBinding takes ONNX element numbers (onnxruntime >= 1.20): the only way to name bfloat16.
from ...dtypes import ONNX_ELEM_OF
from .base import Runner


class OnnxRuntimeRunner(Runner):
    def __init__(self, name, spec, device, path: Path, threads: int = 0, stream=None):
        super().__init__(name, spec, device, stream)
        self.path = Path(path)
        self.threads = threads
        self.session = None
        self._binding = None
        self._bound_in: dict[str, tuple] = {}
        self._bound_out: dict[str, tuple] = {}

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
        self._run_options = ort.RunOptions()
        # onnxruntime's Python run_with_iobinding looks this key up on every run; absent, the
        # lookup raises and catches a C++ exception (~70 us a run, a third of a skipped step's
        # host work on the bench model).  -1 = "no graph capture", which is what runs anyway:
        # no session here enables CUDA (or WebGPU) graph capture.
        self._run_options.add_run_config_entry("gpu_graph_id", "-1")
        disabled = []
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise TeaCacheError(
                    "backend onnxruntime on device cuda needs onnxruntime-gpu "
                    "(pip install 'teacache-trt[onnxruntime-gpu]'), or use device='cpu'"
                )
            cuda = {"device_id": self.device.index or 0}
            if self.stream is not None:
                # ORT runs on the transformer's stream: inputs queued there are ordered before
                # the graph, and Run need not wait for the device when it returns.
                cuda.update(has_user_compute_stream="1", user_compute_stream=str(self.stream.cuda_stream))
                self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
            providers = [("CUDAExecutionProvider", cuda)]
        else:
            providers = ["CPUExecutionProvider"]
            # The CPU kernel of the fused Add + LayerNormalization (SkipLayerNormalization) is
            # 4-6x slower than the two ops it replaces (onnxruntime 1.32, one thread: 371 us
            # against 62 us on 256 x 256): it made the FLUX head 2.6x slower (477 -> 182 us)
            # and was 40% of a skipped step on the bench model.
            disabled.append("SkipLayerNormFusion")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers,
                                                disabled_optimizers=disabled)
        except Exception as exc:
            raise TeaCacheError(f"ONNX Runtime cannot load {self.path}: {exc}; re-export with --force") from exc
        if self.device.type == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            # ORT falls back to the CPU silently when CUDA libraries are missing.
            raise TeaCacheError(
                f"ONNX Runtime could not start its CUDA provider for {self.path.name} (providers: "
                f"{self.session.get_providers()}): check the CUDA / cuDNN libraries onnxruntime-gpu needs"
            )
        self._binding = self.session.io_binding()
        self._bound_in, self._bound_out = {}, {}
        self._where = ("cuda" if self.device.type == "cuda" else "cpu", self.device.index or 0)

    def _deactivate(self) -> None:
        self.session = self._binding = None
        self._bound_in, self._bound_out = {}, {}

    def _infer_into(self, feed, outputs) -> None:
        # One binding per session, rebound only where a tensor moved: within a generation the
        # plan's buffers and the prompt tensors keep their addresses, so most steps rebind
        # only the latents and the timestep (each bind costs ~10 us of Python-C++ crossing).
        binding, bound = self._binding, self._bound_in
        where, index = self._where
        for name in self.spec.input_names:
            t = feed[name]
            key = (t.data_ptr(), t.shape)
            if bound.get(name) != key:
                binding.bind_input(name, where, index, ONNX_ELEM_OF[t.dtype], tuple(t.shape), key[0])
                bound[name] = key
        bound = self._bound_out
        for name, t in outputs.items():
            key = (t.data_ptr(), t.shape)
            if bound.get(name) != key:
                binding.bind_output(name, where, index, ONNX_ELEM_OF[t.dtype], tuple(t.shape), key[0])
                bound[name] = key
        self.session.run_with_iobinding(binding, self._run_options)
