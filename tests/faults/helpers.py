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
