"""teacache-trt: TeaCache step skipping for diffusion transformers, compiled.

The import package is ``teacache_trt``; its sub-packages live in the top-level folders, mapped
here, in the order the dependencies point: ``families/`` (model knowledge), ``export/`` and
``engines/``, ``runtime/``, then ``tools/`` (bench, calibrate) and the ``digits/`` demo.
"""
from setuptools import setup

SUBPACKAGES = {
    "teacache_trt": "teacache_trt",
    "teacache_trt.families": "families",
    "teacache_trt.export": "export",
    "teacache_trt.engines": "engines",
    "teacache_trt.runtime": "runtime",
    "teacache_trt.runtime.backends": "runtime/backends",
    "teacache_trt.tools": "tools",
    "teacache_trt.digits": "digits",
}

setup(
    name="teacache-trt",
    version="0.1.0",
    description="TeaCache step skipping for diffusion transformers exported to ONNX / TensorRT",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(SUBPACKAGES),
    package_dir=SUBPACKAGES,
    package_data={"teacache_trt.digits": ["model/*", "model/*/*"]},
    install_requires=[
        # Ranges that the CPU build of torch 2.13.0 satisfies: a range admitting only newer
        # torch would pull a multi-GB CUDA build on machines without a GPU.
        "torch>=2.5,<=2.13",
        "diffusers>=0.35,<0.43",
        "transformers>=4.45",
        "accelerate>=0.30",
        "onnx>=1.17",
        "onnxscript>=0.3",
        "onnxruntime>=1.20",
        "numpy>=1.24",
        "safetensors>=0.4",
        "pillow>=9",
        "scikit-learn>=1.3",
        "matplotlib>=3.6",
    ],
    extras_require={
        "tensorrt": ["tensorrt>=10.0", "polygraphy>=0.49"],
        "tensorrt-rtx": ["tensorrt-rtx-cu13>=1.0", "polygraphy>=0.49"],
        "onnxruntime-gpu": ["onnxruntime-gpu>=1.20"],
        "test": ["pytest>=7", "tensorrt-rtx-cu13>=1.0", "polygraphy>=0.49"],
    },
    entry_points={
        "console_scripts": [
            "teacache-export=teacache_trt.export.cli:main",
            "teacache-bench=teacache_trt.tools.bench:main",
            "teacache-calibrate=teacache_trt.tools.calibrate:main",
            "teacache-eval=teacache_trt.digits.harness:main",
        ],
        # Generation drivers for the tools (calibration, rendering): see tools/drivers.py.
        "teacache_trt.drivers": ["digits = teacache_trt.digits.driver:DRIVER"],
    },
)
