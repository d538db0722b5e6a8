"""Integrity of artifact files: the manifest records each file's size and sha256; loaders check
both before a file is used.  Also the hashes of JSON values that key what an artifact was made
from (:func:`sha256_json`: export and engine keys; :func:`config_fingerprint`: the model config).

A full sha256 of a multi-GB engine takes seconds, so the hash of a file is computed once per
file state and machine, and cached per user under ``$XDG_CACHE_HOME/teacache-trt/sha256``
(default ``~/.cache``), keyed by device, inode, size, mtime and ctime.  Any write to a file
changes its ctime (which no user can set back), so a cached hash never vouches for changed
bytes.  A warm load costs a ``stat`` and a small read per file; ``teacache-export --check``
ignores the cache and hashes everything.  An unwritable cache folder only costs time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from .errors import TeaCacheError
from .files import atomic_write_bytes

CHUNK = 1 << 20


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_fingerprint(config: dict[str, Any]) -> str:
    """Hash of a model config's own keys (diffusers' ``_``-prefixed bookkeeping left out)."""
    return sha256_json({k: v for k, v in config.items() if not k.startswith("_")})


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "teacache-trt" / "sha256"


def _stamp(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _cache_entry(st: os.stat_result) -> Path:
    return _cache_dir() / f"{st.st_dev}-{st.st_ino}.json"


def _entry(st: os.stat_result) -> dict[str, Any]:
    """What the cache knows about the file state ``st`` (empty when stale or unreadable)."""
    try:
        entry = json.loads(_cache_entry(st).read_text())
    except (OSError, ValueError):
        return {}
    return entry if isinstance(entry, dict) and entry.get("stamp") == _stamp(st) else {}


def _remember(path: Path, st: os.stat_result, key: str, value: Any) -> None:
    """Cache ``value`` for the file state ``st``, unless the file changed while it was read."""
    if _stamp(os.stat(path)) != _stamp(st):
        return
    entry = {**_entry(st), "stamp": _stamp(st), key: value}
    with contextlib.suppress(OSError, TeaCacheError):
        atomic_write_bytes(_cache_entry(st), json.dumps(entry).encode())


def remembered(path: Path, key: str, compute: Callable[[Path], Any], fresh: bool = False) -> Any:
    """``compute(path)`` once per file state (and machine), then from the cache."""
    st = os.stat(path)
    if not fresh:
        entry = _entry(st)
        if key in entry:
            return entry[key]
    value = compute(path)
    _remember(path, st, key, value)
    return value


def file_sha256(path: Path, full: bool = False) -> str:
    """sha256 of ``path``: from the cache when its state was hashed before (unless ``full``)."""
    return remembered(path, "sha256", sha256_file, fresh=full)


def record(path: Path) -> dict[str, Any]:
    """The manifest's entry for a file just written: size and sha256 (cached for the next load)."""
    return {"size": os.stat(path).st_size, "sha256": file_sha256(path, full=True)}


def verify(path: Path, expected: dict[str, Any], fix: str, full: bool = False) -> None:
    """Size, then sha256 of ``path`` against the manifest's record; a mismatch names the file."""
    size = os.stat(path).st_size
    if size != expected["size"]:
        raise TeaCacheError(
            f"{path} has {size} bytes but the manifest recorded {expected['size']} "
            f"(truncated, replaced or still being copied): {fix}"
        )
    sha = file_sha256(path, full)
    if sha != expected["sha256"]:
        raise TeaCacheError(
            f"{path} does not match the manifest (sha256 {sha[:16]}..., recorded "
            f"{expected['sha256'][:16]}...): it was replaced or modified after the export; {fix}"
        )
