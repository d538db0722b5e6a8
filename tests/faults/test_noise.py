"""Third-party noise before the project's own messages is filtered; real warnings still show."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest

from teacache_trt import quiet


@pytest.mark.parametrize("logger, noise", [
    ("diffusers.models.modeling_utils", "Some weights of X were not initialized ... You should probably TRAIN this "
                                        "model on a down-stream task"),
    ("onnxscript.optimizer._constant_folding", "Skipping constant folding for op Split with multiple outputs."),
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled for this Ray cluster."),
])
def test_noise_is_dropped_and_other_warnings_kept(logger, noise):
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        quiet.install()
        quiet.install()  # idempotent
        log.warning(noise)
        log.warning("a real warning")
    finally:
        log.removeHandler(handler)
    assert seen == ["a real warning"]
    assert sum(isinstance(f, quiet._Drop) for f in log.filters) == 1


def test_a_checkpoint_that_does_not_match_its_config_says_so_once(flux, tmp_path):
    """diffusers' "TRAIN this model" warning no longer precedes the project's own message."""
    model = shutil.copytree(flux.model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["num_layers"] += 1
    (model / "config.json").write_text(json.dumps(config))
    child = subprocess.run([sys.executable, "-m", "teacache_trt.export.cli", str(model), "--out", str(tmp_path / "art"),
                            "--build", "none"], capture_output=True, text=True, timeout=300)
    assert child.returncode == 2
    lines = child.stderr.strip().splitlines() + child.stdout.strip().splitlines()
    assert not [l for l in lines if "TRAIN" in l or "newly initialized" in l], lines
    assert [l for l in lines if l.startswith("teacache-export: error: the weights in")]
