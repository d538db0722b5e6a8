"""The batching benchmark, small: per-job decisions in batches give one-at-a-time's steps and
images; the report has every setting.  (Speed is reported by the benchmark, not tested.)"""
from __future__ import annotations

from teacache_trt.tools.render import bench


def test_bench_reports_every_setting_and_sample_mode_matches_one_at_a_time(digits_art):
    from teacache_trt.digits.driver import DRIVER

    jobs = bench.digit_jobs(8, steps=6)
    result = bench.bench(digits_art, DRIVER.default_model(), jobs, batch_size=4, repeats=1, log=lambda m: None)
    a, b, c = result["rows"]
    assert a["setting"].startswith("a:") and b["setting"].startswith("b:") and c["setting"].startswith("c:")
    assert a["same_steps_as_a"] == 8 and a["psnr_vs_a"] == float("inf")
    assert c["same_steps_as_a"] == 8 and c["max_pixel_diff_vs_a"] <= 2
    assert c["mean_computed_steps"] == a["mean_computed_steps"]
    for row in (a, b, c):
        assert row["images_per_s"] > 0 and len(row["wall_s"]) == 1
    table = bench.table(result)
    assert table.count("\n") == 5 and "| c: batches of 4, sample decisions |" in table
