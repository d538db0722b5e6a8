"""teacache-bench on the tiny FLUX export: structure and consistency, never timings."""
from __future__ import annotations

import json
import re
import math

import pytest
import torch

import teacache_trt
from teacache_trt.errors import TeaCacheError
from teacache_trt.families import get_family
from teacache_trt.tools import bench
from teacache_trt.runtime.backends.base import Runner

STEPS = 5
NEVER = 1e6  # acc never reaches it: only the forced first and last steps compute


def check_run(run, steps):
    n = len(run.computed_steps)
    assert n + run.skipped == steps
    assert run.computed_steps == sorted(set(run.computed_steps))
    assert run.ideal_ratio == pytest.approx(steps / n)
    for value in (run.wall_s, run.wall_ratio, run.efficiency, run.step_efficiency, run.computed_step_ms):
        assert math.isfinite(value) and value > 0
    assert run.graph_median_ms["embed"] > 0 and run.graph_median_ms["head"] > 0
    assert run.graph_median_ms["blocks"] > 0  # step 0 is forced, so the blocks always ran
    assert (run.skip_cost is None) == (run.skipped == 0)
    if run.skip_cost is not None:
        assert math.isfinite(run.skip_cost) and run.skip_cost > 0
    assert math.isfinite(run.max_abs_diff) and run.max_abs_diff >= 0


def test_run_bench_baseline_and_thresholds(exported):
    ex = exported("flux")
    res = bench.run_bench(ex.art_dir, steps=STEPS, thresholds=[0, 0.05, NEVER], warmup=0, repeat=2)
    assert res.axes == {a: opt for a, (lo, opt, hi) in ex.manifest.axes.items()}
    assert res.baseline.threshold == 0
    assert res.baseline.computed_steps == list(range(STEPS)) and res.baseline.skipped == 0
    assert res.baseline.wall_ratio == 1.0 and res.baseline.max_abs_diff == 0
    assert [r.threshold for r in res.runs] == [0.05, NEVER]  # 0 is the baseline, not repeated
    for run in [res.baseline, *res.runs]:
        check_run(run, STEPS)
        assert len(run.walls_s) == 2
    never = res.runs[1]
    assert never.computed_steps == [0, STEPS - 1]
    assert never.ideal_ratio == pytest.approx(STEPS / 2)
    assert never.max_abs_diff > 0  # reused residuals change the latents


def test_same_schedule_as_transformer(exported):
    # The bench's loop drives the transformer like a sampler would; its schedule must be
    # the one a plain loop over load_transformer gets with the same inputs and timesteps.
    ex = exported("flux")
    res = bench.run_bench(ex.art_dir, steps=STEPS, thresholds=[0.3], warmup=0)
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0.3)
    t.reset(STEPS)
    sizes = bench.resolve_axes(ex.manifest, None)
    feed = get_family("flux").example_inputs(ex.manifest.config, sizes, torch.float32)
    scale = get_family("flux").timestep_scale
    ts, dts = scale.timesteps(STEPS), scale.step_sizes(STEPS)
    for i in range(STEPS):
        feed["timestep"] = torch.full_like(feed["timestep"], ts[i])
        feed["hidden_states"] = feed["hidden_states"] + dts[i] * t(return_dict=False, **feed)[0]
    assert res.runs[0].computed_steps == t.stats["computed_steps"]


def test_cli_json(exported, capsys):
    ex = exported("flux")
    rc = bench.main([str(ex.art_dir), "--steps", "4", "--thresholds", f"0.05,{NEVER}", "--warmup", "0",
                     "--axis", "img_seq=8", "--threads", "1", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] == 4 and data["axes"]["img_seq"] == 8 and data["threads"] == 1
    assert data["baseline"]["computed_steps"] == [0, 1, 2, 3]
    for run in data["runs"]:
        assert len(run["computed_steps"]) + run["skipped"] == 4
        assert run["ideal_ratio"] == pytest.approx(4 / len(run["computed_steps"]))
        assert set(run["graph_median_ms"]) == {"context", "embed", "blocks", "head"}
        assert run["graph_runs"] == {"context": 1, "embed": 4, "blocks": len(run["computed_steps"]), "head": 4}
    assert data["runs"][1]["computed_steps"] == [0, 3]


def test_cli_table_uses_manifest_default_threshold(exported, capsys):
    ex = exported("flux")
    assert bench.main([str(ex.art_dir), "--steps", "3", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0][0].isdigit()]
    assert [float(r[0]) for r in rows] == [0.0, ex.manifest.policy.params["threshold"]]
    assert "skip cost" in out


@pytest.mark.parametrize("argv, message", [
    (["--axis", "frames=3"], "no axis 'frames'"),
    (["--axis", "img_seq=1000"], "outside the built profile"),
    (["--steps", "0"], "--steps: 0 is out of range"),
    (["--thresholds", "-1"], "must be a finite number >= 0"),
])
def test_cli_errors(exported, capsys, argv, message):
    ex = exported("flux")
    try:
        code = bench.main([str(ex.art_dir), *argv])
    except SystemExit as exit_:  # option values are refused while parsing (argparse exits)
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("teacache-bench: error:") and message in err and err.count("\n") == 1


def test_missing_artifacts(tmp_path):
    with pytest.raises(TeaCacheError, match="not an exported artifact folder"):
        bench.run_bench(tmp_path)


def test_timing_wrap_is_per_instance_and_undone(exported):
    ex = exported("flux")
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0)
    head = t.runners["head"]
    timed = bench.TimedRunner(head, bench.Clock("cpu"))
    assert "infer_into" in vars(head) and "infer_into" not in vars(t.runners["embed"])
    assert type(head).infer_into is Runner.infer_into  # the class is never patched
    feed = get_family("flux").example_inputs(ex.manifest.config, bench.resolve_axes(ex.manifest, None),
                                             torch.float32)
    t.reset(2)
    t(**feed)
    t(**feed)
    assert len(timed.times) == 2 and all(x > 0 for x in timed.times)
    timed.unwrap()
    assert "infer_into" not in vars(head)


def test_cli_policy_and_never_skipped(exported, capsys, tmp_path):
    ex = exported("flux")
    assert bench.main([str(ex.art_dir), "--steps", "4", "--warmup", "0", "--policy", "schedule",
                       "--policy-param", "steps=[0,2]", "--json", "--report", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    (run,) = data["runs"]
    assert run["computed_steps"] == [0, 2] and run["threshold"] is None
    assert run["policy"] == {"name": "schedule", "params": {"steps": [0, 2]}}
    assert [r["setting"] for r in data["latency"]["rows"]] == ["0", "schedule of 2 steps"]
    assert (tmp_path / "latency.png").is_file()
    # a threshold that never skips: one line with the cause and a fix
    assert bench.main([str(ex.art_dir), "--steps", "4", "--warmup", "0", "--thresholds", "1e-9",
                       "--no-progress"]) == 0
    err = [l for l in capsys.readouterr().err.strip().splitlines() if "unreliable" not in l]  # load: not this test's
    assert err == [line for line in err if line.startswith("teacache-bench: teacache threshold 1e-09 never skipped")]
    assert len(err) == 1 and "try threshold" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--policy", "nope"], "policy 'nope' is unknown"),
    (["--policy", "schedule"], r"needs the parameter(s) ['steps']"),
    (["--policy", "schedule", "--policy-param", "steps=[1]"], "must include step 0"),
    (["--policy", "schedule", "--policy-param", "steps=[0]", "--thresholds", "0.2"], "has no threshold"),
    (["--policy-param", "threshold=0.2"], "needs --policy NAME"),
    (["--policy", "teacache", "--policy-param", "threshold"], "'threshold' is not KEY=VALUE"),
    (["--policy", "teacache", "--policy-param", "threshold=-1"], "threshold -1 must be a number >= 0"),
])
def test_cli_policy_errors_before_any_graph_runs(exported, capsys, monkeypatch, argv, message):
    ex = exported("flux")
    monkeypatch.setattr(bench, "load_transformer", lambda *a, **k: pytest.fail("loaded before the policy was checked"))
    try:
        code = bench.main([str(ex.art_dir), "--warmup", "0", *argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("teacache-bench: error:") and message in err and err.count("\n") == 1, err


def test_progress_bars_per_setting_load_average_and_reliability(exported, capsys):
    ex = exported("flux")
    assert bench.main([str(ex.art_dir), "--steps", "4", "--warmup", "1", "--thresholds", "0.2,0.6"]) == 0
    captured = capsys.readouterr()
    bars = captured.err.replace("\r", "\n")
    for name in ("baseline", "teacache 0.2", "teacache 0.6"):  # one bar per setting, counting steps
        assert any(name in line and "step" in line for line in bars.splitlines()), name
    assert "8/8" in bars and "4/4" in bars  # the baseline's bar counts its warm-up loop too
    assert re.search(r"load average [\d.]+, [\d.]+, [\d.]+ \(1, 5, 15 min\) on \d+ CPUs", captured.out)


def test_wall_ratios_outside_the_possible_range_are_flagged(exported):
    """A wall ratio below half the ideal one (0.6x for 15 of 20 steps, ideal 1.33x) or above 1.1x
    of it (3.28x where 2.5x is ideal) is load, not the runtime: flagged with the load average."""
    from teacache_trt.tools.bench import BenchResult, RunResult, format_table

    def run(setting, computed, wall_ratio, ideal):
        r = RunResult(threshold=0.2, steps=20, computed_steps=list(range(computed)), skipped=20 - computed,
                      wall_s=1.0, walls_s=[1.0], graph_median_ms={g: 1.0 for g in ("embed", "blocks", "head")},
                      computed_step_ms=1.0, skipped_step_ms=0.1, wall_ratio=wall_ratio, ideal_ratio=ideal,
                      efficiency=wall_ratio / ideal, setting=setting)
        r.reliable = bench.RELIABLE[0] <= r.efficiency <= bench.RELIABLE[1]
        return r

    result = BenchResult(art_dir="a", family="flux", backend="onnxruntime", device="cpu", precision="fp32", steps=20,
                         axes={}, warmup=1, repeat=1, threads=0, baseline=run("0", 20, 1.0, 1.0),
                         runs=[run("0.2", 15, 0.6, 20 / 15), run("0.4", 8, 3.28, 2.5), run("0.6", 10, 1.9, 2.0)],
                         load_average=[8.1, 7.5, 6.0], cpus=2)
    assert [r.setting for r in result.unreliable] == ["0.2", "0.4"]
    table = format_table(result)
    assert "! unreliable: wall x is outside [0.5, 1.1] x ideal x for 0.2, 0.4" in table
    assert "load average 8.1, 7.5, 6.0 (1, 5, 15 min) on 2 CPUs" in table
    assert "  0.60! " in table and "  1.90  " in table


def test_json_is_strict_and_says_where_a_value_was_not_finite(exported, capsys, monkeypatch):
    ex = exported("flux")
    real = bench._summarise

    def with_nan(*args, **kwargs):  # a run whose final latents differ by NaN (e.g. a model that overflows)
        r = real(*args, **kwargs)
        r.max_abs_diff = float("nan")
        return r

    monkeypatch.setattr(bench, "_summarise", with_nan)
    assert bench.main([str(ex.art_dir), "--steps", "3", "--warmup", "0", "--json", "--no-progress"]) == 0
    data = json.loads(capsys.readouterr().out,  # what jq and JSON.parse accept: no NaN, no Infinity
                      parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert data["baseline"]["max_abs_diff"] is None
    assert any("baseline.max_abs_diff (nan)" in note for note in data["notes"])


def test_json_on_a_full_stdout_is_one_line(exported):
    import subprocess
    import sys

    ex = exported("flux")
    with open("/dev/full", "w") as full:
        child = subprocess.run([sys.executable, "-m", "teacache_trt.tools.bench", str(ex.art_dir), "--steps", "2",
                                "--warmup", "0", "--json", "--no-progress"], stdout=full, stderr=subprocess.PIPE,
                               text=True)
    assert child.returncode == 2 and "Traceback" not in child.stderr and "Exception ignored" not in child.stderr
    assert child.stderr.strip().splitlines()[-1].startswith(
        "teacache-bench: error: writing the JSON to stdout failed: No space left on device")


def test_eager_upstream_loop_pairs_each_run_at_the_same_schedule(exported, capsys):
    ex = exported("flux")
    rc = bench.main([str(ex.art_dir), "--steps", "4", "--thresholds", str(NEVER), "--warmup", "0", "--repeat", "2",
                     "--eager", "--model-dir", str(ex.model_dir), "--json", "--no-progress"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    for run in [data["baseline"], *data["runs"]]:
        low, high = run["eager_ratio_range"]
        assert len(run["eager_walls_s"]) == 2 and low <= run["eager_ratio"] <= high and low > 0
        # the same computed steps through the same model: the same latents up to graph rounding
        assert run["eager_max_abs_diff"] < 1e-3
    assert data["runs"][0]["computed_steps"] == [0, 3]


def test_eager_loop_follows_the_schedule_it_is_given(exported):
    from teacache_trt.tools.eager import EagerLoop
    from teacache_trt.tools.sampling import sample

    ex = exported("flux")
    family = get_family(ex.manifest.family)
    reference = bench.load_transformer(ex.art_dir, backend="torch", model_dir=ex.model_dir)
    parts = {g: r.part for g, r in reference.runners.items()}
    sizes = {n: opt for n, (lo, opt, hi) in ex.manifest.axes.items()}
    inputs = family.example_inputs(ex.manifest.config, sizes, torch.float32, seed=0)
    loop = EagerLoop(parts, family, bench.Clock("cpu"), inputs, 4)
    every, ends = loop.run([0, 1, 2, 3]).final, loop.run([0, 3]).final
    compiled = bench.load_transformer(ex.art_dir, threshold=0)
    uncached = sample(compiled, inputs, family.timestep_scale, 4)
    compiled.policy = {"name": "schedule", "params": {"steps": [0, 3]}}
    skipping = sample(compiled, inputs, family.timestep_scale, 4)
    assert (every - uncached).abs().max() < 1e-4 and (ends - skipping).abs().max() < 1e-4
    assert (every - ends).abs().max() > 100 * max((every - uncached).abs().max(), 1e-7)
