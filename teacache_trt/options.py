"""Command-line options shared by every ``teacache-*`` command.

Values are checked as they are parsed, so a bad one fails before any model loads, export
starts or graph runs; every user error is one line on stderr and exit code 2, never a
traceback or argparse's usage dump.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Callable

from .errors import TeaCacheError
from .files import STREAMS


# Names the command lines offer, importable without torch (so ``--help`` answers at once);
# tests check them against teacache_trt.runtime.backends.BACKENDS and teacache_trt.dtypes.PRECISIONS.
BACKEND_NAMES = ("onnxruntime", "tensorrt", "tensorrt-rtx", "torch")
PRECISION_NAMES = ("bf16", "fp16", "fp32")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message``, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run(prog: str, body: Callable[[], int]) -> int:
    """``body()``; a :class:`TeaCacheError` becomes one line on stderr and exit code 2."""
    try:
        return body()
    except TeaCacheError as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def emit(text: str, what: str = "the output") -> None:
    """``print(text)`` on stdout, flushed now: a full device or a closed pipe is a
    :class:`TeaCacheError` (one line), and stdout is then pointed at /dev/null so that the
    interpreter's own flush at exit cannot print a traceback after it."""
    try:
        print(text, flush=True)
    except OSError as exc:
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        raise TeaCacheError(f"writing {what} to stdout failed: {exc.strerror or exc}: free some space, or send "
                            f"stdout elsewhere") from None


def integer(lo: int, hi: int | None = None, hint: str = "") -> Callable[[str], int]:
    """An integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"{value} is out of range: need an integer {span}{hint}")
        return value

    return parse


def threads(text: str) -> int:
    """0 (the backend's default) up to this machine's CPU count: more only oversubscribes."""
    cpus = os.cpu_count() or 1
    return integer(0, cpus, f" (0 = the backend's default; this machine has {cpus} CPUs)")(text)


def number(lo: float | None = None) -> Callable[[str], float]:
    """A finite float (>= lo): ``nan`` and ``inf`` would silently switch features off."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or (lo is not None and value < lo):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be a finite number" + (f" >= {lo:g}" if lo is not None else ""))
        return value

    return parse


def thresholds(text: str) -> list[float]:
    """Comma-separated thresholds, each a finite number >= 0 (0 never skips)."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} holds no threshold, e.g. 0.25,0.4,0.6")
    try:
        return [number(0.0)(v) for v in values]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"threshold {exc} (a comma-separated list, e.g. 0.25,0.4,0.6)") from None


def step_counts(text: str) -> list[int]:
    """Comma-separated numbers of computed steps, each >= 1, e.g. 7,10 (sorted, duplicates dropped)."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be numbers of computed steps >= 1, comma-separated, e.g. 7,10")
    return values


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` for a GPU this machine has."""
    if text == "cpu":  # the default: answered without importing torch (argparse converts defaults too)
        return text
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA device(s)" + ("; use --device cpu" if not count else ""))
    return text


def _writable_folder(folder: Path, what: str) -> None:
    """The nearest existing ancestor of ``folder`` is a folder this process can write into, and
    the names still to be made fit the file system (a 300-character name fails when it is
    created: hours later, after the work it was meant to keep)."""
    probe = _existing(folder)
    _name_lengths(folder, probe, what)
    if not probe.is_dir():
        raise argparse.ArgumentTypeError(f"{what}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{what}: cannot write into {probe} (permissions or a read-only "
                                         f"file system): choose another path")


def _existing(path: Path) -> Path:
    """The nearest ancestor of ``path`` (itself included) that exists."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _name_lengths(path: Path, existing: Path, what: str) -> None:
    """Every name of ``path`` within the limits of the file system ``existing`` is on."""
    def limit(name: str, default: int) -> int:
        try:
            return os.pathconf(existing if existing.is_dir() else existing.parent, name)
        except (OSError, ValueError):
            return default

    name_max, path_max = limit("PC_NAME_MAX", 255), limit("PC_PATH_MAX", 4096)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise argparse.ArgumentTypeError(
                f"{what[:60]}{'...' if len(what) > 60 else ''}: the name {part[:24]!r}... is {size} bytes long, "
                f"over the file system's limit of {name_max} per name: choose a shorter one")
    if len(os.fsencode(str(path.absolute()))) >= path_max:
        raise argparse.ArgumentTypeError(f"{what[:60]}...: the path is longer than the file system's limit of "
                                         f"{path_max} bytes: choose a shorter one")


def output_file(text: str) -> Path:
    """A file that can be (re)written: not a folder, in a folder that is writable, with names
    the file system takes.  An existing FIFO or device (``/dev/stdout``) is written through
    (``files.write_output``)."""
    path = Path(text)
    parent = path.parent if str(path.parent) else Path(".")
    _name_lengths(path, _existing(parent), text)  # first: a name too long fails every other check
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file name")
    if os.path.exists(path) and (not path.is_file() or str(path.absolute()).startswith(STREAMS)):
        return path  # a stream or device: written through, nothing to create
    _writable_folder(parent, text)
    return path


def output_folder(text: str) -> Path:
    """A folder that exists or can be created, and that is writable."""
    path = Path(text)
    _writable_folder(path, text)
    return path


def check_writable(path: Path, parse: Callable[[str], Path]) -> None:
    """The same checks for a path given through the Python API: a :class:`TeaCacheError`."""
    try:
        parse(str(path))
    except argparse.ArgumentTypeError as exc:
        raise TeaCacheError(str(exc)) from None
