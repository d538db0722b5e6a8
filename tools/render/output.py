"""The output folder: an exclusive lock, atomic output files and an fsynced ``results.jsonl``.

- Lock: ``flock`` on ``.render.lock`` (holding the owner's pid, for the message).  The kernel
  drops it when its process dies, so a run killed with -9 never blocks the resume, and a live
  run always blocks a second one.
- Outputs: written to a temporary file in the folder and renamed (``atomic_write_bytes``).
- Results: one line per finished job, appended with one ``write`` and an ``fsync`` each.  A
  line cut short by a kill is removed on the next start (its job is simply redone).  The last
  line of an id wins; a job is finished when that line is ``ok`` and its output file still
  has the recorded hash.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from ...errors import TeaCacheError
from ...manifest import atomic_write_bytes

RESULTS = "results.jsonl"
LOCK = ".render.lock"
SUMMARY = "summary.json"
# atomic_write_bytes' temporary files (".<name>.<random>.tmp"): left behind only by a kill.
_TEMP = re.compile(r"\..+\.tmp")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


class OutputDir:
    """``with OutputDir(path) as out:`` holds the folder's lock for the whole run."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._results_fd: int | None = None

    def __enter__(self) -> "OutputDir":
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TeaCacheError(f"cannot create the output folder {self.path} ({exc}): choose a writable --out") from exc
        self._lock()
        try:
            self._repair()
            self._results_fd = os.open(self.path / RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._results_fd is not None:
            os.close(self._results_fd)
            self._results_fd = None
        self._unlock()

    # --- the lock ---------------------------------------------------------------------------
    def _lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TeaCacheError(
                f"{self.path} is being rendered by another teacache-render (pid {owner}): two renders never "
                f"share an output folder; wait for it to finish, stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # --- what a killed run left behind ------------------------------------------------------
    def _repair(self) -> None:
        """Drop a results line cut short by a kill, and temporary files of unfinished writes."""
        results = self.path / RESULTS
        if results.is_file():
            data = results.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                os.truncate(results, end)
        for p in self.path.iterdir():
            if _TEMP.fullmatch(p.name) and p.is_file():
                p.unlink()

    # --- results ----------------------------------------------------------------------------
    def results(self) -> dict[str, dict[str, Any]]:
        """The last result line of every id."""
        latest: dict[str, dict[str, Any]] = {}
        path = self.path / RESULTS
        if not path.is_file():
            return latest
        with path.open("rb") as f:
            for raw in f:
                try:
                    record = json.loads(raw)
                    latest[record["id"]] = record
                except (ValueError, KeyError, TypeError):
                    continue  # an edited or foreign line: its job is redone, which is safe
        return latest

    def finished(self, results: dict[str, dict[str, Any]]) -> set[str]:
        """Ids whose last line is ``ok`` and whose output still has the recorded hash."""
        done = set()
        for job_id, record in results.items():
            if record.get("status") != "ok" or not isinstance(record.get("output"), str):
                continue
            path = self.inside(record["output"])
            if path is not None and sha256_of(path) == record.get("sha256"):
                done.add(job_id)
        return done

    def inside(self, name: str) -> Path | None:
        """``name`` (read from results.jsonl) as a path in this folder, or None if it leaves it."""
        path = (self.path / name).resolve()
        return path if path.parent == self.path.resolve() else None

    def write_output(self, name: str, data: bytes) -> str:
        atomic_write_bytes(self.path / name, data)
        return sha256_bytes(data)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """One line per record, each written whole and fsynced before the next."""
        for record in records:
            line = memoryview((json.dumps(record) + "\n").encode())
            while line:  # a regular file takes a short line whole; loop for the exotic case
                line = line[os.write(self._results_fd, line):]
            os.fsync(self._results_fd)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.path / SUMMARY
        atomic_write_bytes(path, (json.dumps(summary, indent=2) + "\n").encode())
        return path
