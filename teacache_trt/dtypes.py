"""The one dtype table: export precisions, manifest dtype names, ONNX element types.

The manifest names dtypes as torch does without the ``torch.`` prefix (``float32``); ONNX
files and ONNX Runtime's IO binding use TensorProto element numbers.  Every part of the
project converts through here.
"""
from __future__ import annotations

import torch

from .errors import TeaCacheError

# --precision -> torch dtype of the exported weights and floating-point graph I/O
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# manifest dtype name -> torch dtype
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool,
    "uint8": torch.uint8, "int8": torch.int8,
}

# ONNX TensorProto element type <-> manifest dtype name
ONNX_ELEM_TYPES: dict[int, str] = {
    1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64", 16: "bfloat16",
}
ONNX_ELEM_OF: dict[torch.dtype, int] = {TORCH_DTYPES[name]: elem for elem, name in ONNX_ELEM_TYPES.items()}


def precision_dtype(precision: str) -> torch.dtype:
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise TeaCacheError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}") from None


def torch_dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise TeaCacheError(
            f"dtype {name!r} is not one teacache-trt handles ({sorted(TORCH_DTYPES)}); re-export with --force"
        ) from None
