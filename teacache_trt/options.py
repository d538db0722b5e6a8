"""Command-line options shared by every ``teacache-*`` command.

Values are checked as they are parsed, so a bad one fails before any model loads, export
starts or graph runs; every user error is one line on stderr and exit code 2, never a
traceback or argparse's usage dump.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable

from .errors import TeaCacheError


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


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` for a GPU this machine has."""
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
    """The nearest existing ancestor of ``folder`` is a folder this process can write into."""
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise argparse.ArgumentTypeError(f"{what}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{what}: cannot write into {probe} (permissions or a read-only "
                                         f"file system): choose another path")


def output_file(text: str) -> Path:
    """A file that can be (re)written: not a folder, in a folder that is writable."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file name")
    _writable_folder(path.parent if str(path.parent) else Path("."), text)
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
