"""The README's commands are the project's commands: they exist and take the options shown."""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(lang="sh"):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_first_block_is_the_two_setup_commands():
    first = [line.split("#")[0].strip() for line in code_blocks()[0].splitlines() if line.strip()]
    assert first == ["./scripts/run.sh", "./scripts/test.sh"]
    for script in first:
        path = ROOT / script
        assert path.is_file() and os.access(path, os.X_OK), script
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_main_job_renders_the_bundled_jobs_then_runs_the_eval_harness():
    script = (ROOT / "scripts" / "run.sh").read_text()
    render = "teacache-render digits/jobs.jsonl --out out/digits/render --contact-sheet"
    assert render in script and "teacache-eval --out out/digits" in script
    assert script.index(render) < script.index("teacache-eval --out")
    assert (ROOT / "digits" / "jobs.jsonl").is_file()
    video = "teacache-render moving_digits/jobs.jsonl --model video --out out/video/render --contact-sheet"
    assert script.index(video) < script.index("teacache-eval --model video --out out/video")
    assert (ROOT / "moving_digits" / "jobs.jsonl").is_file()


def _parsers():
    from teacache_trt.digits import harness
    from teacache_trt.export import cli
    from teacache_trt.tools import bench, calibrate
    from teacache_trt.tools.render import cli as render_cli

    return {"teacache-export": cli.build_parser(), "teacache-bench": bench.build_parser(),
            "teacache-calibrate": calibrate.build_parser(), "teacache-render": render_cli.build_parser(),
            "teacache-eval": None}


def test_every_command_shown_is_an_entry_point():
    setup = (ROOT / "setup.py").read_text()
    shown = {line.split()[0] for block in code_blocks() for line in block.splitlines()
             if line.startswith("teacache-")}
    assert {"teacache-export", "teacache-bench", "teacache-calibrate", "teacache-render"} <= shown
    for command in shown:
        assert f'"{command}=teacache_trt.' in setup, command


@pytest.mark.parametrize("command", ["teacache-export", "teacache-bench", "teacache-calibrate", "teacache-render"])
def test_options_shown_exist(command):
    parser = _parsers()[command]
    known = {opt for action in parser._actions for opt in action.option_strings}
    for block in code_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0]
            if not line.strip().startswith(command):
                continue
            for token in shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " ")):
                if token.startswith("--"):
                    assert token.split("=")[0] in known, f"{command} {token}"


def test_readme_states_the_eval_limits_the_cli_takes(capsys):
    from teacache_trt.digits import harness

    with pytest.raises(SystemExit):
        harness.main(["--help"])
    (most,) = re.findall(r"at most (\d+): the exported batch profile", " ".join(capsys.readouterr().out.split()))
    assert f"`--per-class` up to {most}," in " ".join(README.split())


def test_the_examples_output_folders_are_ignored():
    """Every README example writes into art/ or out/: git must not offer them for commit."""
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert {"art", "out"} <= ignored
