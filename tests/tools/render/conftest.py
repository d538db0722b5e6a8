"""The teacache-render CLI on the digits model, exported once per session."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def render_cli(digits_cache):
    """render_cli(jobs, out, *options) -> exit status of teacache-render on the digits model."""
    from teacache_trt.tools.render import cli

    def run(jobs: Path, out: Path, *options: str) -> int:
        return cli.main([str(jobs), "--out", str(out), "--cache-dir", str(digits_cache), "--no-progress", *options])

    return run
