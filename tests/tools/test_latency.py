"""teacache-bench's latency report: trtexec output parsing, trtexec runs, the no-trtexec path."""
from __future__ import annotations

import json
import os
import stat

import pytest
from PIL import Image

from teacache_trt.errors import TeaCacheError
from teacache_trt.manifest import graph_names

GRAPHS = graph_names(["context"])  # the flux artifact's: context first
from teacache_trt.tools import bench, latency

NEVER = 1e6


def summary(median: float, stamp: str = "[11/23/2026-13:52:55]") -> str:
    """trtexec's (TensorRT 10) performance summary, as it prints it, around a given median."""
    return f"""\
{stamp} [I] === Performance summary ===
{stamp} [I] Throughput: 2960.42 qps
{stamp} [I] Latency: min = 0.352051 ms, max = 0.541748 ms, mean = 0.364479 ms, median = 0.362793 ms, \
percentile(90%) = 0.372314 ms, percentile(95%) = 0.37793 ms, percentile(99%) = 0.401123 ms
{stamp} [I] Enqueue Time: min = 0.0222168 ms, max = 0.101074 ms, mean = 0.0241833 ms, median = 0.0234375 ms, \
percentile(90%) = 0.0256348 ms, percentile(95%) = 0.0273438 ms, percentile(99%) = 0.0380859 ms
{stamp} [I] H2D Latency: min = 0.0114746 ms, max = 0.0275879 ms, mean = 0.0124614 ms, median = 0.0123291 ms, \
percentile(90%) = 0.0129395 ms, percentile(95%) = 0.0133057 ms, percentile(99%) = 0.0166016 ms
{stamp} [I] GPU Compute Time: min = {median * 0.97:g} ms, max = {median * 1.6:g} ms, mean = {median * 1.01:g} ms, \
median = {median:g} ms, percentile(90%) = {median * 1.03:g} ms, percentile(95%) = {median * 1.05:g} ms, \
percentile(99%) = {median * 1.1:g} ms
{stamp} [I] D2H Latency: min = 0.00512695 ms, max = 0.0129395 ms, mean = 0.00571251 ms, median = 0.00561523 ms, \
percentile(90%) = 0.00610352 ms, percentile(95%) = 0.00634766 ms, percentile(99%) = 0.00708008 ms
{stamp} [I] Total Host Walltime: 3.00088 s
{stamp} [I] Total GPU Compute Time: 2.96178 s
{stamp} [W] * GPU compute time is unstable, with coefficient of variance = 5.37%.
{stamp} [I] Explanations of the performance metrics are printed in the verbose logs.
"""


def log_text(build_median: float, time_median: float) -> str:
    """What a <graph>.trtexec.sh prints: a build run (with its own summary), then the timing run."""
    return ("&&&& RUNNING TensorRT.trtexec [TensorRT v101300] [b10] # trtexec --onnx=blocks.onnx ...\n"
            "[11/23/2026-13:50:01] [I] [TRT] Loaded engine size: 58 MiB\n" + summary(build_median)
            + "&&&& PASSED TensorRT.trtexec [TensorRT v101300] [b10] # trtexec --onnx=blocks.onnx ...\n"
            + "&&&& RUNNING TensorRT.trtexec [TensorRT v101300] [b10] # trtexec --loadEngine=blocks.trtexec.engine\n"
            + summary(time_median) + "&&&& PASSED TensorRT.trtexec\n")


def test_parser_takes_the_timing_runs_gpu_compute_time():
    stats = latency.parse_trtexec_log(log_text(build_median=0.5, time_median=0.331787), "blocks.trtexec.log")
    assert stats["median"] == 0.331787  # the last summary's, not the build run's, nor "Total GPU Compute Time"
    assert stats["min"] == pytest.approx(0.331787 * 0.97, rel=1e-5)
    assert stats["percentile(99%)"] == pytest.approx(0.331787 * 1.1, rel=1e-5)
    assert set(stats) == {"min", "max", "mean", "median", "percentile(90%)", "percentile(95%)", "percentile(99%)"}


def test_parser_refuses_output_without_a_summary():
    with pytest.raises(TeaCacheError, match="x.log has no 'GPU Compute Time: min = "):
        latency.parse_trtexec_log("&&&& FAILED TensorRT.trtexec\n[I] Total GPU Compute Time: 2.9 s\n", "x.log")


def check_report(report, steps, latencies):
    k, e, b, h = (latencies[g] for g in GRAPHS)
    rows = report["rows"]
    assert rows[0]["threshold"] == 0 and rows[0]["computed"] == steps
    for r in rows:
        assert r["context_runs"] == 1  # one generation: the context graph's inputs stay the same
        assert r["predicted_ms"] == pytest.approx(k + steps * (e + h) + r["computed"] * b)
        assert r["predicted_speedup"] == pytest.approx((k + steps * (e + b + h)) / r["predicted_ms"])
        assert r["ideal_speedup"] == pytest.approx(steps / r["computed"])
        assert r["measured_ms"] > 0 and r["measured_speedup"] > 0
    assert rows[-1]["computed"] == 2 and rows[-1]["predicted_speedup"] > 1  # NEVER: first and last only


def test_without_trtexec_the_bench_timing_fills_the_report(exported, tmp_path, capsys, monkeypatch):
    ex = exported("flux")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no trtexec anywhere
    out = tmp_path / "report"
    rc = bench.main([str(ex.art_dir), "--steps", "4", "--thresholds", f"0.05,{NEVER}", "--warmup", "0",
                     "--trtexec", "--report", str(out)])
    captured = capsys.readouterr()
    assert rc == 0 and "trtexec is not on PATH" in captured.err
    report = json.loads((out / "latency.json").read_text())
    assert {g["source"] for g in report["graphs"].values()} == {"bench"} and report["note"] == ""
    check_report(report, 4, {g: report["graphs"][g]["median_ms"] for g in GRAPHS})
    md = (out / "latency.md").read_text()
    assert "| threshold | computed | predicted ms | measured ms |" in md and "teacache-bench" in md
    assert "predicted ms" in captured.out  # the same table under the bench's
    with Image.open(out / "latency.png") as im:
        assert im.format == "PNG" and im.size[0] > 500


def fake_trtexec(bin_dir, medians):
    """A trtexec on PATH that prints a realistic summary, the median chosen by the ONNX / engine file."""
    bin_dir.mkdir()
    cases = "\n".join(f'  *{g}.*) m={m} ;;' for g, m in medians.items())
    script = bin_dir / "trtexec"
    script.write_text(f"""#!/bin/sh
case "$*" in
{cases}
esac
case "$*" in *--loadEngine*) ;; *) m=99 ;; esac  # the build run prints its own summary first
cat <<EOF
{summary(0).replace("0 ms", "$m ms")}EOF
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_trtexec_runs_each_graphs_script_and_keeps_its_log(exported, tmp_path, capsys, monkeypatch):
    art = exported("flux").copy(tmp_path / "art")
    medians = {"context": 0.25, "embed": 0.125, "blocks": 2.5, "head": 0.0625}
    fake_trtexec(tmp_path / "bin", medians)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    rc = bench.main([str(art), "--steps", "4", "--thresholds", str(NEVER), "--warmup", "0", "--trtexec", "--json"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)["latency"]
    assert {g: report["graphs"][g]["median_ms"] for g in GRAPHS} == medians
    assert {g["source"] for g in report["graphs"].values()} == {"trtexec"}
    check_report(report, 4, medians)
    for g in GRAPHS:  # kept, so --from-trtexec ART reads them back
        assert latency.parse_trtexec_log((art / f"{g}.trtexec.log").read_text(), g)["median"] == medians[g]
    assert latency.logged_latencies(art)["blocks"].median_ms == 2.5


def test_from_trtexec_reads_saved_logs_before_the_bench_runs(exported, tmp_path, capsys):
    ex = exported("flux")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "context.trtexec.log").write_text(log_text(1.0, 0.125))
    (logs / "embed.trtexec.log").write_text(log_text(1.0, 0.25))
    (logs / "blocks.trtexec.log").write_text(log_text(1.0, 4.0))
    assert bench.main([str(ex.art_dir), "--from-trtexec", str(logs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "head.trtexec.log is missing" in err
    (logs / "head.trtexec.log").write_text(log_text(1.0, 0.5))
    rc = bench.main([str(ex.art_dir), "--steps", "3", "--thresholds", str(NEVER), "--warmup", "0",
                     "--axis", "img_seq=8", "--from-trtexec", str(logs)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "context 0.125 ms, embed 0.25 ms, blocks 4 ms, head 0.5 ms" in out
    assert "| 0 | 3 | 14.375 |" in out  # 1 x 0.125 + 3 x (0.25 + 0.5) + 3 x 4
    if ex.manifest.axes["img_seq"][1] != 8:
        assert "trtexec timed the profile's opt shapes" in out


def test_latency_flags_are_exclusive(exported, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([str(exported("flux").art_dir), "--trtexec", "--from-trtexec", "x"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
