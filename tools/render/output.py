"""The output folder: an exclusive lock, atomic output files and an fsynced ``results.jsonl``.

- Lock: ``flock`` on ``.render.lock`` (holding the owner's pid, for the message).  The kernel
  drops it when its process dies, so a run killed with -9 never blocks the resume, and a live
  run always blocks a second one.
- Outputs: written to a temporary file in the folder and renamed (``atomic_write_bytes``); the
  temporary names carry the renderer's tag, so the repair after a kill removes its own
  leftovers and nothing else of the user's.
- Results: one line per finished job, appended with one ``write`` and an ``fsync`` each.  A
  line cut short by a kill is removed on the next start (its job is simply redone).  The last
  line of an id wins; a job is finished when that line is ``ok``, made for the same job (its
  ``key``), and its output files still have the recorded hashes.
- The renderer's own files (``.render.lock``, ``results.jsonl``, outputs) are regular files in
  the folder: a symlink, FIFO or device in their place is refused, never followed, so nothing
  outside ``--out`` is ever written, truncated or replaced.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Iterable

from ...errors import TeaCacheError
from ...files import atomic_write_bytes, os_errors

RESULTS = "results.jsonl"
LOCK = ".render.lock"
SUMMARY = "summary.json"
SHEET = "contact_sheet.png"
# Job ids that would name one of the renderer's own files (contact_sheet.png, ...): refused.
RESERVED_IDS = frozenset({Path(RESULTS).stem, Path(SUMMARY).stem, Path(SHEET).stem})
TAG = "teacache-render-"  # in the temporary names of the renderer's writes (atomic_write_bytes)
_TEMP = re.compile(rf"\..+\.{re.escape(TAG)}[a-z0-9_]{{8}}\.tmp")


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
        with os_errors(f"creating the output folder {self.path}"):
            self.path.mkdir(parents=True, exist_ok=True)
        if not self.path.is_dir():
            raise TeaCacheError(f"--out {self.path} is a file, not a folder: choose a folder")
        self._lock()
        try:
            self._repair()
            self.own_file(RESULTS)
            with os_errors(f"opening {self.path / RESULTS}"):
                self._results_fd = os.open(self.path / RESULTS,
                                           os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._results_fd is not None:
            os.close(self._results_fd)
            self._results_fd = None
        self._unlock()

    # --- the renderer's own files -------------------------------------------------------------
    def own_file(self, name: str) -> Path:
        """``OUT/name`` if it is a regular file or a new name; anything else there (a symlink,
        which may lead outside --out, a FIFO, a device, a folder) is refused, never followed."""
        path = self.path / name
        with os_errors(f"checking {path}"):
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                return path
        if not stat.S_ISREG(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "a FIFO or device"
            target = f" (to {os.readlink(path)})" if stat.S_ISLNK(mode) else ""
            raise TeaCacheError(f"{path} is {kind}{target}, not a file the renderer wrote: it never writes through "
                                f"one; remove it, or choose another --out")
        return path

    # --- the lock ---------------------------------------------------------------------------
    def _lock(self) -> None:
        path = self.own_file(LOCK)
        with os_errors(f"locking {self.path}"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise TeaCacheError(
                    f"{self.path} is being rendered by another teacache-render (pid {owner}): two renders never "
                    f"share an output folder; wait for it to finish, stop it, or choose another --out"
                ) from None
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except BaseException:
                os.close(fd)
                raise
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # --- what a killed run left behind ------------------------------------------------------
    def _repair(self) -> None:
        """Drop a results line cut short by a kill, and the renderer's own temporary files
        (tagged names only: a user's ``.notes.tmp`` in the folder stays)."""
        results = self.own_file(RESULTS)
        with os_errors(f"repairing {self.path}"):
            if results.is_file():
                with open(results, "rb") as f:
                    data = f.read()
                end = data.rfind(b"\n") + 1
                if end < len(data):
                    os.truncate(results, end)
            for p in self.path.iterdir():
                if _TEMP.fullmatch(p.name) and stat.S_ISREG(os.lstat(p).st_mode):
                    p.unlink()

    # --- results ----------------------------------------------------------------------------
    def results(self) -> dict[str, dict[str, Any]]:
        """The last result line of every id."""
        latest: dict[str, dict[str, Any]] = {}
        path = self.own_file(RESULTS)
        if not path.is_file():
            return latest
        with os_errors(f"reading {path}"), path.open("rb") as f:
            for raw in f:
                try:
                    record = json.loads(raw)
                    latest[record["id"]] = record
                except (ValueError, KeyError, TypeError, RecursionError):
                    continue  # an edited or foreign line: its job is redone, which is safe
        return latest

    def finished(self, results: dict[str, dict[str, Any]]) -> set[str]:
        """Ids whose last line is ``ok`` and whose output files still have the recorded hashes."""
        done = set()
        for job_id, record in results.items():
            if record.get("status") != "ok" or not isinstance(record.get("output"), str):
                continue
            files = [(record["output"], record.get("sha256"))]
            if record.get("preview") is not None:
                files.append((record["preview"], record.get("preview_sha256")))
            if all(isinstance(name, str) and self._intact(name, sha) for name, sha in files):
                done.add(job_id)
        return done

    def _intact(self, name: str, sha: str | None) -> bool:
        path = self.inside(name)
        return path is not None and stat.S_ISREG(os.lstat(path).st_mode) and sha256_of(path) == sha

    def inside(self, name: str) -> Path | None:
        """``name`` (read from results.jsonl) as an existing path in this folder, or None if it
        leaves it (``..``, a symlink) or is missing."""
        path = self.path / name
        if path.parent != self.path or not os.path.lexists(path) or os.path.islink(path):
            return None
        return path

    def write_output(self, name: str, data: bytes) -> str:
        atomic_write_bytes(self.own_file(name), data, tag=TAG)
        return sha256_bytes(data)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """One line per record, each written whole and fsynced before the next."""
        for record in records:
            line = memoryview((json.dumps(record) + "\n").encode())
            with os_errors(f"appending to {self.path / RESULTS}"):
                while line:  # a regular file takes a short line whole; loop for the exotic case
                    line = line[os.write(self._results_fd, line):]
                os.fsync(self._results_fd)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.own_file(SUMMARY)
        atomic_write_bytes(path, (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode(), tag=TAG)
        return path
