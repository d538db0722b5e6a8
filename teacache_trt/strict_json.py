"""JSON that every parser reads: no ``Infinity`` or ``NaN`` (Python's ``json`` writes them by
default; ``jq`` and ``JSON.parse`` reject them).  A non-finite float becomes ``null``, and the
output says where, in a note, so a reader can tell "not measured" from "infinite"."""
from __future__ import annotations

import json
import math
from typing import Any

NOTE = "null stands for a non-finite value (infinite, e.g. a PSNR of identical images, or NaN) at: "


def finite(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by None, and the paths replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [f"{where or '.'} ({value})"]
    if isinstance(value, dict):
        out, paths = {}, []
        for k, v in value.items():
            out[k], more = finite(v, f"{where}.{k}" if where else str(k))
            paths += more
        return out, paths
    if isinstance(value, (list, tuple)):
        out, paths = [], []
        for i, v in enumerate(value):
            item, more = finite(v, f"{where}[{i}]")
            out.append(item)
            paths += more
        return out, paths
    return value, []


def dumps(value: dict[str, Any], **kwargs) -> str:
    """``json.dumps`` of a dict, non-finite floats as null with a ``"notes"`` entry naming them."""
    clean, paths = finite(value)
    if paths:
        clean = {**clean, "notes": [*clean.get("notes", []), NOTE + ", ".join(paths)]}
    return json.dumps(clean, allow_nan=False, **kwargs)
