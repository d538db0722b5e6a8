"""Helpers of the fault suite (fixtures are in conftest.py)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


class Outside:
    """Files beside the artifact folder: a test asserts they are exactly as they were."""

    def __init__(self, root: Path):
        root.mkdir()
        self.root = root
        self.file = root / "victim.txt"
        self.file.write_text("the user's own file\n")
        (root / "folder").mkdir()
        (root / "folder" / "keep.txt").write_text("keep me\n")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, str]:
        return {str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
                for p in sorted(self.root.rglob("*"))}

    def untouched(self) -> bool:
        return self.snapshot() == self.before


def edit_manifest(art: Path, change) -> None:
    """Apply ``change(data)`` to the raw manifest.json, as a careless or hostile user would."""
    path = art / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def other_checkpoint(path: Path, dest: Path) -> Path:
    """``path``'s graph with every float weight changed: the same graph from another checkpoint
    of the same architecture (same size, other bytes)."""
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.raw_data) > 4:
            values = np.frombuffer(init.raw_data, dtype=np.float32) * 1.5 + 0.01
            init.raw_data = values.astype(np.float32).tobytes()
    onnx.save(model, str(dest))
    return dest


def copying_export(template, graphs: dict):
    """A stand-in for ``exporter._export_graphs`` that writes copies of ``graphs`` (name -> path)
    and returns ``template``'s manifest for them: the ONNX tracing is the slow part of an
    export, and nothing the commit does depends on how the graphs were made."""
    import copy

    from teacache_trt.export import exporter
    from teacache_trt.manifest import graph_names

    def export_graphs(settings, model, out, log):
        manifest = copy.deepcopy(template)
        manifest.engines, manifest.files, manifest.content = {}, {}, ""
        manifest.export_key, manifest.weights_hash = settings.export_key, settings.weights_hash
        manifest.source = str(settings.source)
        for g in graph_names(manifest.graphs):
            (out / manifest.graphs[g].file).write_bytes(Path(graphs[g]).read_bytes())
            manifest.graphs[g].sha256 = exporter._graph_hash(out / manifest.graphs[g].file)
        return manifest

    return export_graphs


def fake_engine_bytes(tag: str):
    """A stand-in for ``build.build_engine_bytes``: distinct bytes per graph and ``tag``."""

    def build_engine_bytes(onnx_path, profile, flavour, timing_cache, device) -> bytes:
        return f"{tag}:{Path(onnx_path).name}:".encode() * 64

    return build_engine_bytes


class Mount:
    """A real read-only folder or a real full disk, where this process may mount (root with
    CAP_SYS_ADMIN, as in CI containers); tests that need one are skipped with the reason."""

    def __init__(self, root: Path):
        self.root, self.points = root, []

    def _mount(self, args: list[str], target: Path) -> Path:
        import subprocess

        import pytest

        target.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mount", *args, str(target)], capture_output=True).returncode:
            pytest.skip("cannot mount here (needs root with CAP_SYS_ADMIN) for a real read-only or full file system")
        self.points.append(target)
        return target

    def read_only(self, source: Path) -> Path:
        """``source`` seen through a read-only bind mount (EROFS on every write)."""
        import subprocess

        target = self._mount(["--bind", str(source)], self.root / f"ro{len(self.points)}")
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        return target

    def small_disk(self, size: str) -> Path:
        """A tmpfs of ``size`` bytes (ENOSPC once full)."""
        return self._mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs"], self.root / f"disk{len(self.points)}")

    def close(self) -> None:
        import subprocess

        for target in reversed(self.points):
            subprocess.run(["umount", str(target)], check=True)
