"""Fault injection for the crash-safety tests: ``TEACACHE_TRT_FAULT=<stage>`` makes the process
kill itself with SIGKILL when it reaches ``<stage>``, as a power cut or an OOM kill would.

Stages (see the fault suite in tests/faults/): ``write:<file name>`` (an atomic write, after the
temporary file is complete and before the rename), ``export:staged``, ``export:renamed``,
``export:committed``, ``build:written``, ``build:committed``.  Unset in normal use: one
environment lookup per commit step, none on the step loop.
"""
from __future__ import annotations

import os
import signal

VARIABLE = "TEACACHE_TRT_FAULT"


def point(stage: str) -> None:
    if os.environ.get(VARIABLE) == stage:
        os.kill(os.getpid(), signal.SIGKILL)
