"""The child process of the kill -9 tests: ``export_model`` as teacache-export runs it, with the
two slow parts (ONNX tracing, the TensorRT builder) replaced by copies (faults/helpers.py); the
lock, reuse check, staging, commit and cleanup are the real ones.  TEACACHE_TRT_FAULT names the
stage at which the child kills itself.

    python tests/faults/driver.py SPEC.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    sys.path.insert(0, spec["tests"])
    from faults.helpers import copying_export, fake_engine_bytes
    from teacache_trt.artifact import Artifact
    from teacache_trt.engines import build
    from teacache_trt.export import exporter

    exporter._export_graphs = copying_export(Artifact.open(spec["template"]).manifest, spec["graphs"])
    build.build_engine_bytes = fake_engine_bytes(spec["engine_tag"])
    exporter.export_model(spec["model_dir"], spec["art"], axes=spec["axes"], build=spec["build"],
                          force=spec["force"], log=print)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
