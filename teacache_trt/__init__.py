"""teacache-trt: TeaCache step skipping for diffusion transformers exported to ONNX / TensorRT.

    teacache-export MODEL_DIR --out ART_DIR        # embed / blocks / head graphs + manifest
    pipe.transformer = teacache_trt.load_transformer(ART_DIR, backend="onnxruntime")
    teacache_trt.enable(pipe, ART_DIR, threshold=0.4)
    teacache_trt.enable(pipe, ART_DIR, policy=teacache_trt.policies.Schedule.uniform(28, 10))
"""
__version__ = "0.1.0"

from .errors import TeaCacheError  # noqa: E402

__all__ = ["TeaCacheError", "load_transformer", "enable", "policies", "__version__"]


def __getattr__(name):
    # The runtime imports torch and diffusers; keep `import teacache_trt` itself light.
    if name in ("load_transformer", "enable"):
        from .runtime import api

        return getattr(api, name)
    if name == "policies":  # the caching policies (runtime/policies/)
        import importlib

        return importlib.import_module(f"{__name__}.policies")
    raise AttributeError(name)
