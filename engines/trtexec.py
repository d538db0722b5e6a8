"""Ready-to-run trtexec command files, one per graph, with the manifest's shapes; written
into the content folder beside the graphs they build."""
from __future__ import annotations

import shlex
from pathlib import Path

from ..files import atomic_write_bytes
from ..manifest import Manifest, graph_names


def _shapes(profile: dict, key: str) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in s[key])}" for name, s in profile.items())


def trtexec_command(manifest: Manifest, graph: str) -> str:
    spec = manifest.graphs[graph]
    engine = f"{graph}.trtexec.engine"
    build = ["trtexec", f"--onnx={spec.file}", f"--saveEngine={engine}", "--stronglyTyped",
             f"--minShapes={_shapes(spec.profile, 'min')}", f"--optShapes={_shapes(spec.profile, 'opt')}",
             f"--maxShapes={_shapes(spec.profile, 'max')}", "--timingCacheFile=timing.trtexec.cache"]
    run = ["trtexec", f"--loadEngine={engine}", f"--shapes={_shapes(spec.profile, 'opt')}"]
    return "\n".join([
        "#!/usr/bin/env sh",
        f"# {manifest.family} {manifest.variant} {graph} graph ({manifest.precision}); "
        f"run from the artifact folder. Build with the manifest's profile, then time at opt shapes.",
        "set -e",
        'cd "$(dirname "$0")"',
        shlex.join(build),
        shlex.join(run),
        "",
    ])


def write_trtexec_files(art_dir: Path, manifest: Manifest) -> list[Path]:
    paths = []
    for graph in graph_names(manifest.graphs):
        path = Path(art_dir) / f"{graph}.trtexec.sh"
        atomic_write_bytes(path, trtexec_command(manifest, graph).encode(), mode=0o777)  # executable
        paths.append(path)
    return paths
