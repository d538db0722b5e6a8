"""teacache-render --model PATH on diffusers pipeline folders (tiny components saved to disk),
with prompt_embeds files since no tokenizer can be downloaded here: FLUX exported on first use
into the cache and reused on the next run; CogVideoX to MP4 with batched CFG."""
from __future__ import annotations

import json

import pytest
import torch

from render_helpers import latest, pixels, probe, results

from teacache_trt.tools.render import cli
from teacache_trt.tools.render.output import sha256_of

SIZE = 64  # the tiny VAE halves it, FLUX packs 2x2: (64/4)^2 = 256 image tokens, the family's profile min
TEXT_TOKENS = 128  # the family's txt_seq min


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from safetensors.torch import save_file

    from models import flux

    root = tmp_path_factory.mktemp("flux_pipeline")
    pipe = flux.make_pipeline(flux.make_model())
    pipe.save_pretrained(root / "model")
    jobs_dir = root / "jobs"
    jobs_dir.mkdir()
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(4):
        save_file({"prompt_embeds": torch.randn(1, TEXT_TOKENS, 32, generator=g),
                   "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}, jobs_dir / f"p{i}.safetensors")
        lines.append({"id": f"f{i}", "prompt_embeds": f"p{i}.safetensors", "seed": i, "steps": 8,
                      "threshold": [0.0, 0.8][i % 2], "height": SIZE, "width": SIZE})
    lines += [
        {"id": "small", "prompt_embeds": "p0.safetensors", "steps": 8, "height": 512, "width": 512},  # above the profile
        {"id": "text", "prompt": "a cat", "steps": 8},  # no text encoder in the folder
        {"id": "frames", "prompt_embeds": "p0.safetensors", "frames": 9},  # FluxPipeline takes no frames
    ]
    (jobs_dir / "jobs.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return root


def render(flux_folder, out, *options):
    return cli.main([str(flux_folder / "jobs" / "jobs.jsonl"), "--out", str(out), "--model",
                     str(flux_folder / "model"), "--cache-dir", str(flux_folder / "cache"), "--no-progress",
                     *options])


def test_flux_pipeline_folder_end_to_end(flux_folder, tmp_path, capsys):
    assert render(flux_folder, tmp_path / "a", "--batch-size", "4") == 1  # the bad jobs failed
    err = capsys.readouterr().err
    assert "[export 1/" in err  # exported on first use ...
    by_id = latest(tmp_path / "a")
    for i in range(4):
        r = by_id[f"f{i}"]
        assert r["status"] == "ok" and sha256_of(tmp_path / "a" / r["output"]) == r["sha256"]
        assert pixels(tmp_path / "a", f"f{i}").shape == (SIZE, SIZE, 3)
    assert by_id["f0"]["skipped_steps"] == [] and by_id["f1"]["skipped_steps"]
    assert "img_seq=16384 is outside the built profile" in by_id["small"]["error"]
    assert "has no text encoder" in by_id["text"]["error"] and "prompt_embeds" in by_id["text"]["error"]
    assert "unknown field(s) ['frames']" in by_id["frames"]["error"]

    # ... and reused: one job at a time gives the same steps, and images up to rounding
    assert render(flux_folder, tmp_path / "b", "--batch-size", "1") == 1
    assert "[export 1/" not in capsys.readouterr().err
    alone = latest(tmp_path / "b")
    for i in range(4):
        assert alone[f"f{i}"]["computed_steps"] == by_id[f"f{i}"]["computed_steps"]
        assert abs(pixels(tmp_path / "b", f"f{i}") - pixels(tmp_path / "a", f"f{i}")).max() <= 2
    assert len(results(tmp_path / "b")) == 7


def test_cogvideox_pipeline_folder_renders_mp4_with_batched_cfg(exported, tmp_path):
    """Video: one MP4 per job (H.264 yuv420p at the job's fps, else the pipeline's: 8 for
    CogVideoX) with a GIF preview beside it, a contact sheet with a strip of frames per job;
    batched CFG (the cond and uncond rows of a prompt decide together)."""
    pytest.importorskip("imageio_ffmpeg", reason="video output is an extra: pip install -e '.[video]'")
    from PIL import Image
    from safetensors.torch import save_file

    from models.cogvideox import FRAMES, HEIGHT, TEXT, WIDTH, make_pipeline

    ex = exported("cogvideox")
    make_pipeline(ex.model).save_pretrained(tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(3):
        save_file({"prompt_embeds": torch.randn(1, TEXT, 32, generator=g),
                   "negative_prompt_embeds": torch.randn(1, TEXT, 32, generator=g)}, tmp_path / f"v{i}.safetensors")
        lines.append({"id": f"v{i}", "prompt_embeds": f"v{i}.safetensors", "seed": i, "steps": 8, "guidance": 6.0,
                      "threshold": [0.0, 0.3, 0.6][i], "height": HEIGHT, "width": WIDTH, "frames": FRAMES})
    lines[2]["fps"] = 12
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    for name, size in (("by2", "2"), ("alone", "1")):
        assert cli.main([str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / name), "--model", str(tmp_path / "model"),
                         "--artifacts", str(ex.art_dir), "--batch-size", size, "--no-progress", "--contact-sheet"]) == 0
    by2, alone = latest(tmp_path / "by2"), latest(tmp_path / "alone")
    for i in range(3):
        r = by2[f"v{i}"]
        assert r["output"] == f"v{i}.mp4" and (tmp_path / "by2" / r["output"]).read_bytes()[4:8] == b"ftyp"
        assert r["computed_steps"] == alone[f"v{i}"]["computed_steps"]
        info = probe((tmp_path / "by2" / r["output"]).read_bytes(), tmp_path / "probe.mp4")
        assert info["pix_fmt"] == "yuv420p" and info["fps"] == (12.0 if i == 2 else 8.0)
        assert r["preview"] == f"v{i}.gif" and sha256_of(tmp_path / "by2" / r["preview"]) == r["preview_sha256"]
    assert by2["v0"]["skipped_steps"] == []
    with Image.open(tmp_path / "by2" / "contact_sheet.png") as sheet:  # a strip of frames per video job
        assert sheet.height >= 3 * 96 and sheet.width > 96 * min(FRAMES, 8)
    # --fps sets the jobs that give none; a changed fps is a changed result, rendered again
    assert cli.main([str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "by2"), "--model", str(tmp_path / "model"),
                     "--artifacts", str(ex.art_dir), "--batch-size", "2", "--no-progress", "--fps", "24"]) == 0
    again = latest(tmp_path / "by2")
    assert [probe((tmp_path / "by2" / again[f"v{i}"]["output"]).read_bytes(), tmp_path / "p.mp4")["fps"]
            for i in range(3)] == [24.0, 24.0, 12.0]
    assert len(results(tmp_path / "by2")) == 5  # v2 (its own fps) was done
    # latents that overflow to NaN / inf (CFG at guidance 1e308) fail the job, with the step
    (tmp_path / "nan.jsonl").write_text(json.dumps({**lines[0], "id": "nan", "guidance": 1e308}) + "\n")
    assert cli.main([str(tmp_path / "nan.jsonl"), "--out", str(tmp_path / "nan"), "--model", str(tmp_path / "model"),
                     "--artifacts", str(ex.art_dir), "--no-progress"]) == 1
    error = latest(tmp_path / "nan")["nan"]["error"]
    assert "the latents became NaN or infinite at step " in error and "lower the guidance" in error


def test_two_expert_pipeline_exports_and_renders_both_experts(exported, tmp_path, capsys):
    """Wan2.2 A14B: both experts exported on first use (each with its expert variant), both
    compiled in the render; a job's steps run 0..N-1 across the two (the low-noise expert's after
    the high-noise one's)."""
    pytest.importorskip("imageio_ffmpeg", reason="video output is an extra: pip install -e '.[video]'")
    from safetensors.torch import save_file

    from models import wan, wan_a14b
    from teacache_trt.artifact import Artifact

    high = exported("wan_a14b")
    wan_a14b.make_experts_pipeline(high.model, wan_a14b.make_low_model()).save_pretrained(tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    save_file({"prompt_embeds": torch.randn(1, wan.TEXT, 16, generator=g),
               "negative_prompt_embeds": torch.randn(1, wan.TEXT, 16, generator=g)}, tmp_path / "p.safetensors")
    lines = [{"id": f"w{i}", "prompt_embeds": "p.safetensors", "seed": i, "steps": 16, "threshold": t,
              "height": wan.HEIGHT, "width": wan.WIDTH, "frames": wan.FRAMES} for i, t in enumerate((0.0, 0.6))]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    args = [str(tmp_path / "jobs.jsonl"), "--model", str(tmp_path / "model"), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress", "--batch-size", "1", "--axis", "txt_seq=1:8:64"]
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    arts = sorted(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    manifests = {Artifact.open(a).manifest.variant: Artifact.open(a).manifest for a in arts}
    assert sorted(manifests) == ["Wan2.2-T2V-A14B-high", "Wan2.2-T2V-A14B-low"]
    assert all(m.axes["txt_seq"] == [1, 8, 64] for m in manifests.values())  # --axis shaped the export
    # the jobs' sizes shaped the rest: the optimum at theirs (latents), the range the default's within
    # the RoPE table (rope_max_seq_len 32 x patch 2)
    assert all(m.axes["height"] == [2, 4, 64] and m.axes["frames"] == [1, 2, 21] for m in manifests.values())
    by_id = latest(tmp_path / "out")
    assert by_id["w0"]["computed_steps"] == list(range(16)) and by_id["w0"]["skipped_steps"] == []
    computed, skipped = by_id["w1"]["computed_steps"], by_id["w1"]["skipped_steps"]
    assert skipped and sorted(computed + skipped) == list(range(16))
    assert {0, 10, 11, 15} <= set(computed)  # each expert's first and last step (11 high, 5 low)

    # --artifacts-2 is for two-expert pipelines; --axis for first-use exports only
    from models import wan as wan_module
    wan_module.make_pipeline(exported("wan").model).save_pretrained(tmp_path / "single")
    assert cli.main([*args[:1], "--model", str(tmp_path / "single"), "--artifacts", str(exported("wan").art_dir),
                     "--artifacts-2", str(arts[0]), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "has no transformer_2" in capsys.readouterr().err
    assert cli.main([*args[:1], "--model", str(tmp_path / "model"), "--artifacts", str(arts[0]), "--axis",
                     "txt_seq=1:8:64", "--out", str(tmp_path / "o3"), "--no-progress"]) == 2
    assert "--axis shapes the first-use export" in capsys.readouterr().err

    # the experts named: the finished jobs stay done (same graphs); a job naming coefficients fails
    # alone (they would reach both experts); experts swapped: refused before any job
    art = {m.variant: a for a, m in zip(arts, (Artifact.open(a).manifest for a in arts))}
    named = [*args[:1], "--model", str(tmp_path / "model"), "--artifacts", str(art["Wan2.2-T2V-A14B-high"]),
             "--no-progress", "--batch-size", "1"]
    with open(tmp_path / "jobs.jsonl", "a") as f:
        f.write(json.dumps({**lines[0], "id": "c", "policy": {"name": "teacache", "params": {"coefficients": [1, 0]}}})
                + "\n")
    assert cli.main([*named, "--artifacts-2", str(art["Wan2.2-T2V-A14B-low"]), "--out", str(tmp_path / "out")]) == 1
    assert "would reach both experts" in latest(tmp_path / "out")["c"]["error"]
    assert "0 to render" in capsys.readouterr().err
    assert cli.main([*named, "--artifacts-2", str(art["Wan2.2-T2V-A14B-high"]), "--out", str(tmp_path / "o4")]) == 2
    assert "--artifacts-2" in (err := capsys.readouterr().err) and "weights differ" in err
    assert cli.main([*args[:1], "--model", str(tmp_path / "model"), "--artifacts-2", str(arts[0]),
                     "--out", str(tmp_path / "o5")]) == 2
    assert "goes with --artifacts" in capsys.readouterr().err
    assert cli.main([*args, "--coefficients", "upstream", "--out", str(tmp_path / "o6")]) == 2
    assert "each expert of a two-expert pipeline keeps its own" in capsys.readouterr().err
