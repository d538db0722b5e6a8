"""teacache-trt: TeaCache step skipping for diffusion transformers, compiled.

The import package is ``teacache_trt``; its sub-packages live in the top-level folders, mapped
here, in the order the dependencies point: ``families/`` (model knowledge), ``export/`` and
``engines/``, ``runtime/`` (with ``teacache_trt.policies`` in ``runtime/policies/``), then
``tools/`` (bench, calibrate) and the demos ``digits/`` (images) and ``moving_digits/`` (video).

``cpp_ext/`` builds two optional libraries: the extension ``teacache_trt._criterion`` (the
criterion on the host) when a C++ compiler and pybind11 are present, and the plain shared
library ``teacache_trt/_criterion_cuda*.so`` (the device kernel, loaded with ctypes by the
experimental ``teacache_trt.runtime.experimental.device_criterion``, which no runtime code uses)
when nvcc is present.  A failed or skipped build leaves the pure-Python path, which gives the same
decisions.
"""
import os
import shutil

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CUDA_ARCHS = ("80", "86", "89", "90")  # Ampere, Ada, Hopper; PTX of the last for newer GPUs
CXX_FLAGS = ["-std=c++17", "-O2", "-fvisibility=hidden", "-ffp-contract=off"]  # Python rounds a*b+c twice
NVCC_FLAGS = ["-std=c++17", "-O2", "--fmad=false", "-Xcompiler", "-fPIC,-fvisibility=hidden,-ffp-contract=off",
              *(f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS),
              f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]


def _pybind11_include():
    try:
        import pybind11
    except ImportError:
        return None
    return pybind11.get_include()


def _cuda_home():
    """The CUDA toolkit whose nvcc and static runtime build the kernel, or None."""
    nvcc = shutil.which("nvcc")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
                 nvcc and os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and \
                os.path.isfile(os.path.join(home, "lib64", "libcudart_static.a")):
            return home
    return None


def _extensions():
    exts = []
    include = _pybind11_include()
    if include is None:
        print("teacache-trt: pybind11 is missing, the host criterion is not built (the Python one is used)")
    else:
        exts.append(Extension("teacache_trt._criterion", ["cpp_ext/src/criterion_host.cpp"], language="c++",
                              include_dirs=[include, "cpp_ext/include"], extra_compile_args=CXX_FLAGS,
                              optional=True))
    cuda = _cuda_home()
    if cuda is None:
        print("teacache-trt: no nvcc with a static CUDA runtime, the criterion kernel is not built")
    else:
        # No Python in it (ctypes loads it; no pybind11 compile) and the CUDA runtime linked
        # statically: it needs only the driver at run time, never the torch build's libcudart.
        exts.append(Extension("teacache_trt._criterion_cuda", ["cpp_ext/src/criterion_kernel.cu"], language="c++",
                              include_dirs=["cpp_ext/include"], library_dirs=[os.path.join(cuda, "lib64")],
                              libraries=["cudart_static", "rt", "pthread", "dl"], optional=True))
    return exts


class BuildExt(build_ext):
    """build_ext that hands ``.cu`` sources to nvcc; everything else goes to the C++ compiler."""

    def build_extensions(self):
        self.compiler.src_extensions.append(".cu")
        compile_cxx = self.compiler._compile
        cuda = _cuda_home()

        def compile_one(obj, src, ext, cc_args, extra_postargs, pp_opts):
            if not src.endswith(".cu"):
                return compile_cxx(obj, src, ext, cc_args, extra_postargs, pp_opts)
            includes = [o for o in pp_opts if o.startswith("-I")]
            self.spawn([os.path.join(cuda, "bin", "nvcc"), "-c", src, "-o", obj, *includes, *NVCC_FLAGS])

        self.compiler._compile = compile_one
        super().build_extensions()


SUBPACKAGES = {
    "teacache_trt": "teacache_trt",
    "teacache_trt.families": "families",
    "teacache_trt.export": "export",
    "teacache_trt.engines": "engines",
    "teacache_trt.runtime": "runtime",
    "teacache_trt.runtime.backends": "runtime/backends",
    "teacache_trt.runtime.experimental": "runtime/experimental",  # built and tested, used by no runtime code
    "teacache_trt.policies": "runtime/policies",  # the caching policies the runtime's step applies
    "teacache_trt.tools": "tools",
    "teacache_trt.tools.render": "tools/render",
    "teacache_trt.digits": "digits",
    "teacache_trt.moving_digits": "moving_digits",
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
    package_data={"teacache_trt.digits": ["model/*", "model/*/*", "jobs.jsonl"],
                  "teacache_trt.moving_digits": ["model/*", "model/*/*", "jobs.jsonl"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt},
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
        "matplotlib>=3.6",  # teacache-bench --report's plot (and the demo's)
        "tqdm>=4.60",
    ],
    extras_require={
        "tensorrt": ["tensorrt>=10.0", "polygraphy>=0.49"],
        "tensorrt-rtx": ["tensorrt-rtx-cu13>=1.0", "polygraphy>=0.49"],
        "onnxruntime-gpu": ["onnxruntime-gpu>=1.20"],
        "ray": ["ray>=2.9"],
        "video": ["imageio-ffmpeg>=0.4.9"],
        # The digits demo (teacache_trt.digits: teacache-eval, training): its classifier and
        # data set; scripts/setup.sh installs it for the main job (scripts/run.sh).
        "demo": ["scikit-learn>=1.3"],
        # The Ray and video tests run in CI: Ray adds ~80 MB and ~25 s to a fresh set-up.
        # opencv: diffusers' ConsisIDPipeline imports it (keypoint drawing) even when unused.
        # scikit-learn: the digits tests.
        "test": ["pytest>=7", "hypothesis>=6", "tensorrt-rtx-cu13>=1.0", "polygraphy>=0.49", "ray>=2.9",
                 "imageio-ffmpeg>=0.4.9", "opencv-python-headless>=4.8", "scikit-learn>=1.3"],
    },
    entry_points={
        "console_scripts": [
            "teacache-export=teacache_trt.export.cli:main",
            "teacache-bench=teacache_trt.tools.bench:main",
            "teacache-calibrate=teacache_trt.tools.calibrate:main",
            "teacache-eval=teacache_trt.tools.eval:main",
            "teacache-render=teacache_trt.tools.render.cli:main",
        ],
        # Generation drivers for the tools (calibration, rendering): see tools/drivers.py.
        "teacache_trt.drivers": [
            "digits = teacache_trt.digits.driver:DRIVER",
            "video = teacache_trt.moving_digits.driver:DRIVER",
            "diffusers = teacache_trt.tools.diffusers_driver:DRIVER",
        ],
    },
)
