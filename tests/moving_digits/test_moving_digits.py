"""The bundled video model (moving digits, a Wan transformer): it really draws the conditioned
digit moving the conditioned way; it exports through the Wan family and decides as the
PyTorch reference does; calibration and rendering find it through its driver; bad input fails
with a clear error."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import teacache_trt
from models import wan as WAN
from reference import ReferenceTransformer
from teacache_trt.errors import TeaCacheError
from teacache_trt.families import get_family
from teacache_trt.moving_digits import (
    DEFAULT_MODEL_DIR,
    DIRECTION_NAMES,
    MAX_FRAMES,
    MIN_FRAMES,
    SPEEDS,
    MovingDigitsPipeline,
    frame_accuracy,
    get_classifier,
    motion_report,
)
from teacache_trt.moving_digits.constants import (
    CALIBRATION_FILE,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    LATENT_SIZE,
    MAGCACHE_FILE,
    NUM_TEXT_TOKENS,
)
from teacache_trt.policies import MagCache

# The shipped sampling settings on one clip per digit, every direction and both speeds among
# them.  Ten clips keep this under ~15 s; the README gives the same measurement on 160 clips.
DIGITS = list(range(10))
DIRECTIONS = [DIRECTION_NAMES[i % len(DIRECTION_NAMES)] for i in DIGITS]
SPEED = [SPEEDS[i % len(SPEEDS)] for i in DIGITS]
MIN_FRAME_ACCURACY = 0.9
MIN_MOTION_PASS = 0.9


@pytest.fixture(scope="module")
def pipe():
    return MovingDigitsPipeline.from_pretrained()


@pytest.fixture(scope="module")
def full_step_clips(pipe):
    return pipe(DIGITS, DIRECTIONS, SPEED, num_frames=MAX_FRAMES, num_inference_steps=DEFAULT_STEPS,
                guidance_scale=DEFAULT_GUIDANCE, seed=0).frames


def test_bundled_weights_are_small_fp16_and_a_wan_transformer():
    from safetensors.torch import load_file

    files = [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 1024 * 1024
    state = load_file(DEFAULT_MODEL_DIR / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in state.values()} == {torch.float16}
    config = json.loads((DEFAULT_MODEL_DIR / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel" and tuple(config["patch_size"]) == (1, 2, 2)
    info = json.loads((DEFAULT_MODEL_DIR / "training_info.json").read_text())
    assert not info["stopped_by_time"] and info["steps_done"] == info["steps_planned"]


def test_the_wan_family_knows_the_model_and_its_profile():
    wan = get_family("wan")
    config = json.loads((DEFAULT_MODEL_DIR / "transformer" / "config.json").read_text())
    assert wan.variant_for(config) == "moving-digits"
    axes = {a.name: (a.min, a.opt, a.max) for a in wan.axes_for(config)}
    assert axes["frames"] == (MIN_FRAMES, MAX_FRAMES, MAX_FRAMES)
    assert axes["height"] == axes["width"] == (LATENT_SIZE,) * 3 and axes["txt_seq"] == (NUM_TEXT_TOKENS,) * 3
    assert wan.variant_for(WAN.TINY) == wan.variant_for(WAN.REAL_CONFIG) == "Wan2.1-T2V-1.3B"  # others unchanged
    # The variant's coefficients are the ones teacache-calibrate fitted (shipped beside the weights).
    shipped = json.loads((DEFAULT_MODEL_DIR / CALIBRATION_FILE).read_text())
    assert np.allclose(wan.variant("moving-digits").coefficients, shipped["coefficients"], rtol=1e-6)
    # The fit explains about half of the change on held-out generations (the README says so)
    assert 0 < shipped["holdout"]["r2"] <= 1 and all(math.isfinite(c) for c in shipped["coefficients"])


def test_a_generation_samples_at_few_steps(pipe):
    out = pipe([3, 7], ["E", "SW"], [1, 2], num_frames=MIN_FRAMES, num_inference_steps=3, seed=1)
    assert out.frames.shape == (2, 1, MIN_FRAMES, 32, 32)
    assert out.frames.min() >= -1 and out.frames.max() <= 1 and out.frames.std() > 0.1
    frames = pipe(3, num_frames=MIN_FRAMES, num_inference_steps=2, seed=1, output_type="np").frames
    assert frames.dtype == np.uint8 and frames.shape == (1, MIN_FRAMES, 32, 32)


def test_the_transformer_reads_the_latents_and_their_box_track(pipe):
    """17 channels in (the latents, then where each frame's digit box lies), 16 out, in both CFG
    branches: the track is what tells the model which way the clip runs."""
    from teacache_trt.moving_digits.data import box_track, path

    seen = []
    model = pipe.transformer

    class Recorder(torch.nn.Module):
        def forward(self, hidden_states, **kwargs):
            seen.append(hidden_states.clone())
            return model(hidden_states=hidden_states, **kwargs)

    pipe.transformer = Recorder()
    try:
        latents = torch.randn(2, 16, 7, LATENT_SIZE, LATENT_SIZE)
        pipe([4, 1], ["W", "S"], [2, 1], num_frames=7, num_inference_steps=1, latents=latents.clone())
    finally:
        pipe.transformer = model
    cond, uncond = seen
    assert cond.shape == (2, 17, 7, LATENT_SIZE, LATENT_SIZE) and torch.equal(cond[:, :16], latents)
    assert torch.equal(cond[:, 16:], uncond[:, 16:]) and torch.equal(cond[:, 16:], box_track([(-2, 0), (0, 1)], 7))
    track = cond[:, 16]  # (clips, frames, 8, 8): a 16x16 box covers 16 of its 64 cells' worth
    assert torch.allclose(track.sum(dim=(2, 3)), torch.full((2, 7), 16.0))
    cols = (track.sum(dim=2) * torch.arange(8.0)).sum(dim=2) / 16  # the box's centre column, per frame
    rows = (track.sum(dim=3) * torch.arange(8.0)).sum(dim=2) / 16
    assert torch.allclose(cols[0].diff(), torch.full((6,), -2 / 4)) and torch.allclose(rows[0].diff(), torch.zeros(6))
    assert torch.allclose(rows[1].diff(), torch.full((6,), 1 / 4)) and torch.allclose(cols[1].diff(), torch.zeros(6))
    assert path((-2, 0), 7)[3] == path((0, 1), 7)[3] == (8, 8)  # centred: the middle frame mid-canvas


def test_frames_show_the_conditioned_digit_at_full_steps(full_step_clips):
    assert get_classifier().heldout_accuracy > 0.97  # the judge itself is good on real digits
    assert frame_accuracy(full_step_clips, DIGITS) >= MIN_FRAME_ACCURACY


def test_the_digit_moves_as_conditioned_at_full_steps(full_step_clips):
    report = motion_report(full_step_clips, DIRECTIONS, SPEED)
    assert report["pass_rate"] >= MIN_MOTION_PASS, report


@pytest.mark.parametrize("call, message", [
    (dict(digits=10), "digit 10 does not exist"),
    (dict(digits=[3], directions=["UP"]), "direction 'UP'"),
    (dict(digits=[3], speeds=[3]), "speed 3 is out of range"),
    (dict(digits=[3], num_frames=MIN_FRAMES - 1), f"num_frames={MIN_FRAMES - 1}"),
    (dict(digits=[3], num_frames=MAX_FRAMES + 1), f"num_frames={MAX_FRAMES + 1}"),
])
def test_bad_conditions_are_refused_before_sampling(pipe, call, message):
    with pytest.raises(TeaCacheError, match=message):
        pipe(**call, num_inference_steps=2)


def test_a_frame_count_outside_the_export_is_refused(video_art):
    t = teacache_trt.load_transformer(video_art)
    t.reset(2)
    with pytest.raises(TeaCacheError, match="outside the built profile"):
        t(hidden_states=torch.randn(1, 17, MAX_FRAMES + 1, 8, 8), timestep=torch.tensor([1000.0]),
          encoder_hidden_states=torch.randn(1, 3, 64))


def test_compiled_pipeline_decides_as_the_reference(video_art, pipe):
    """The exported graphs in MovingDigitsPipeline (cond and uncond each with its own state)
    against tests/reference.py hooking the diffusers model in the same pipeline."""
    steps, threshold = 8, 0.1
    manifest = teacache_trt.load_transformer(video_art).manifest
    assert manifest.family == "wan" and manifest.variant == "moving-digits"
    call = dict(digits=[2, 5], directions=["N", "SE"], speeds=[2, 1], num_frames=MIN_FRAMES,
                num_inference_steps=steps, guidance_scale=DEFAULT_GUIDANCE, seed=3)
    model = pipe.transformer
    ref = ReferenceTransformer(model, WAN.reference_hooks(model), manifest.policy_data["teacache"]["coefficients"],
                               threshold, steps)
    want = MovingDigitsPipeline(ref, pipe.prompt_embedder, pipe.scheduler)(**call).frames

    compiled = MovingDigitsPipeline(model, pipe.prompt_embedder, type(pipe.scheduler).from_config(pipe.scheduler.config))
    t = teacache_trt.enable(compiled, video_art, threshold=threshold)
    got = compiled(**call).frames
    computed = {name: ctx["computed_steps"] for name, ctx in t.stats["contexts"].items()}
    assert computed == ref.computed(), (computed, ref.computed())
    assert 2 < len(computed["cond"]) < steps  # some steps skipped, not only the forced ones computed
    assert (got - want).abs().max().item() <= 1e-4


def test_the_bundled_export_carries_the_shipped_calibrations(video_art):
    """teacache-render's export of the bundled model records the TeaCache coefficients and the
    MagCache ratios calibrated for it (the files beside its weights)."""
    from teacache_trt.artifact import Artifact

    data = Artifact.open(video_art).manifest.policy_data
    shipped = json.loads((DEFAULT_MODEL_DIR / CALIBRATION_FILE).read_text())
    assert data["teacache"]["coefficients"] == shipped["coefficients"]
    assert data["teacache"]["source"].startswith("teacache-calibrate --driver video")
    ratios = json.loads((DEFAULT_MODEL_DIR / MAGCACHE_FILE).read_text())
    assert sorted(ratios["mag_ratios"]) == ["cond", "uncond"] and ratios["steps"] == DEFAULT_STEPS
    assert data["magcache"]["mag_ratios"] == ratios["mag_ratios"]
    assert data["magcache"]["source"].startswith("teacache-calibrate --policy magcache --driver video")


def test_magcache_decides_with_the_shipped_ratios(video_art, pipe):
    """MagCache in the compiled pipeline: each branch computes the steps its own shipped ratios
    schedule, and the clips stay close to the uncached ones."""
    call = dict(digits=[6, 9], directions=["W", "NE"], speeds=[1, 2], num_frames=MIN_FRAMES,
                num_inference_steps=DEFAULT_STEPS, guidance_scale=DEFAULT_GUIDANCE, seed=4)
    compiled = MovingDigitsPipeline(pipe.transformer, pipe.prompt_embedder,
                                    type(pipe.scheduler).from_config(pipe.scheduler.config))
    t = teacache_trt.enable(compiled, video_art, policy=MagCache(threshold=0.06))
    got = compiled(**call).frames
    bound = t._settings().bound
    for context in ("cond", "uncond"):
        want = bound.schedule(DEFAULT_STEPS, context)
        assert t.stats["contexts"][context]["computed_steps"] == want
        assert len(want) < DEFAULT_STEPS
    uncached = pipe(**call).frames
    assert (got - uncached).abs().mean().item() < 0.1  # pixels in [-1, 1]


def test_calibration_finds_the_video_driver(video_art):
    from teacache_trt.artifact import Artifact
    from teacache_trt.moving_digits.calibration import video_driver
    from teacache_trt.tools.calibrate import run_calibration
    from teacache_trt.tools.drivers import driver_for

    assert driver_for(Artifact.open(video_art).manifest).name == "video"
    cal = run_calibration(video_art, video_driver(steps=4, clips=2, num_frames=MIN_FRAMES), seeds=2, holdout=1,
                          steps=4, order=1, log=lambda m: None)
    assert cal.fit["n"] == 2 * 2 * 3  # 2 seeds x (cond, uncond) x 3 consecutive pairs
    assert cal.holdout["n"] == 6 and np.isfinite(cal.coefficients).all()


def test_render_driver_renders_videos(video_cache, video_art):
    from teacache_trt.tools.drivers import render_driver_for
    from teacache_trt.tools.render.jobs import Job
    from teacache_trt.tools.render.worker import Worker, WorkerSpec

    assert render_driver_for(DEFAULT_MODEL_DIR).name == "video"
    pytest.importorskip("imageio_ffmpeg", reason="MP4 output needs the [video] extra")
    worker = Worker(WorkerSpec("video", str(DEFAULT_MODEL_DIR), str(video_art)))
    jobs = [Job("a", 1, "4", 7, 4, DEFAULT_GUIDANCE, 0.0, {"direction": "W", "frames": MIN_FRAMES}),
            Job("b", 2, "8", 8, 4, DEFAULT_GUIDANCE, 1e9, {"speed": 2, "frames": MIN_FRAMES})]
    a, b = worker.render(jobs)
    assert a.ok and b.ok, (a.error, b.error)
    assert a.suffix == b.suffix == "mp4" and a.data[4:8] == b"ftyp"
    assert a.computed_steps == [0, 1, 2, 3] and b.computed_steps == [0, 3]  # the forced steps only


@pytest.mark.parametrize("line, message", [
    ({"prompt": "12"}, "prompt '12' is not a digit"),
    ({"prompt": "1", "direction": "up"}, "direction 'up'"),
    ({"prompt": "1", "speed": 5}, "speed 5 is out of range"),
    ({"prompt": "1", "frames": 17}, "frames=17 is outside what the model was trained on"),
])
def test_bad_render_jobs_are_recorded_with_the_fix(tmp_path, line, message):
    from teacache_trt.moving_digits.driver import DRIVER
    from teacache_trt.tools.render.jobs import BadJob, JobReader

    reader = JobReader(DRIVER.job_fields(DEFAULT_MODEL_DIR), DRIVER.defaults(DEFAULT_MODEL_DIR), 0.0,
                       lambda job: DRIVER.check_job(DEFAULT_MODEL_DIR, job))
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"id": "x", **line}) + "\n")
    (job,) = reader.read(path)
    assert isinstance(job, BadJob) and message in job.error, job


def test_training_script_writes_a_loadable_model(tmp_path):
    """Two steps of a tiny configuration: the script's outputs, not its quality."""
    from teacache_trt.moving_digits.driver import DRIVER
    from teacache_trt.moving_digits.train import TRANSFORMER_CONFIG, train

    tiny = dict(TRANSFORMER_CONFIG, num_attention_heads=2, attention_head_dim=12, ffn_dim=32, text_dim=16,
                freq_dim=32, num_layers=1)
    info = train(str(tmp_path), steps=2, batch_size=2, warmup=1, config=tiny, progress=False)
    assert info["steps_done"] == 2 and math.isfinite(info["final_loss"])
    assert json.loads((tmp_path / "training_info.json").read_text()) == info
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert DRIVER.handles(tmp_path)
    frames = MovingDigitsPipeline.from_pretrained(tmp_path)(1, num_frames=MIN_FRAMES, num_inference_steps=1).frames
    assert frames.shape == (1, 1, MIN_FRAMES, 32, 32)


def test_teacache_render_model_video_writes_mp4s_a_sheet_and_records_bad_jobs(tmp_path, video_cache, capsys):
    """``teacache-render JOBS --model video``: good jobs become videos (MP4 + GIF preview, or the
    GIF alone without imageio-ffmpeg) with a contact sheet of labelled strips; a frame count
    outside the profile, a digit that does not exist and a motion out of range are recorded
    as failed with the fix, and the run goes on."""
    from teacache_trt.tools.drivers import model_folder
    from teacache_trt.tools.render import cli
    from teacache_trt.tools.render.encode import mp4_available

    assert model_folder("video") == DEFAULT_MODEL_DIR and model_folder(None).name == "model"
    lines = [{"id": "ok-teacache", "prompt": "4", "seed": 1, "steps": 4, "frames": MIN_FRAMES, "threshold": 0.1},
             {"id": "ok-magcache", "prompt": "8", "seed": 2, "steps": 4, "frames": MIN_FRAMES, "direction": "N",
              "speed": 2, "policy": {"name": "magcache", "params": {"threshold": 0.06}}},
             {"id": "frames", "prompt": "4", "frames": MAX_FRAMES + 1},
             {"id": "digit", "prompt": "a"},
             {"id": "motion", "prompt": "4", "speed": 3}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    status = cli.main([str(jobs), "--model", "video", "--out", str(out), "--cache-dir", str(video_cache),
                       "--no-progress", "--contact-sheet"])
    assert status == 1  # some jobs failed
    records = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    suffix = "mp4" if mp4_available() else "gif"
    for job in ("ok-teacache", "ok-magcache"):
        assert records[job]["status"] == "ok" and records[job]["output"] == f"{job}.{suffix}"
        assert (out / f"{job}.gif").is_file()
    assert records["ok-magcache"]["policy"]["name"] == "magcache"
    assert "outside what the model was trained on" in records["frames"]["error"]
    assert "is not a digit" in records["digit"]["error"]
    assert "speed 3 is out of range" in records["motion"]["error"]
    assert all(records[j]["status"] == "failed" for j in ("frames", "digit", "motion"))
    assert (out / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_harness_scores_every_policy_at_equal_compute(tmp_path, video_art):
    """A short teacache-eval --model video: every policy's rows, uniform and fewer-step rows at
    each computed level, the uncached row exact, and the table, plot and side-by-side GIF."""
    from PIL import Image

    from teacache_trt.moving_digits import harness

    result = harness.evaluate(video_art, steps=8, frames=MIN_FRAMES, per_class=1, repeats=1, log=lambda m: None,
                              sweeps={"teacache": [0.2], "magcache": [0.1], "easycache": [0.1]})
    rows = result["rows"]
    assert [r.policy for r in rows[:4]] == ["uncached", "teacache", "magcache", "easycache"]
    assert rows[0].psnr == math.inf and rows[0].temporal == 0 and rows[0].computed == 8
    assert all(math.isfinite(r.psnr) for r in rows[1:])
    levels = {round(r.computed) for r in rows if r.policy in harness.CACHING} - {8}
    for policy in ("uniform", "fewer-steps"):
        assert {round(r.computed) for r in rows if r.policy == policy} == levels
    for r in rows[1:]:
        assert r.wall_ratio > 0 and r.ratio_range[0] <= r.wall_ratio <= r.ratio_range[1]
        assert 0 <= r.accuracy <= 1 and 0 <= r.motion <= 1 and r.temporal >= 0
    paths = harness.write_outputs(result, tmp_path)
    table = paths["table"].read_text()
    assert "| magcache | 0.1 |" in table and "| uncached | 8 | 8.0 | 1.00 (1.00-1.00) | inf |" in table
    with Image.open(paths["worst_gif"]) as gif:
        assert gif.n_frames == MIN_FRAMES and gif.size == ((2 * 32 + 2) * harness.GIF_SCALE, 32 * harness.GIF_SCALE)
    data = json.loads(paths["json"].read_text())  # strict JSON: the infinite PSNR as null, with a note
    assert data["worst_case"]["policy"] in harness.CACHING and data["rows"][0]["psnr"] is None and data["notes"]


def test_a_folder_without_a_model_is_one_line_before_any_sampling(tmp_path, capsys):
    from teacache_trt.moving_digits import check

    assert check.main(["--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path} holds no moving-digits model" in err
