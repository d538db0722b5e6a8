"""teacache-calibrate --pipeline: generations through a diffusers pipeline folder, each Wan2.2
A14B expert calibrated on the steps it runs (the other expert in PyTorch)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.export.exporter import export_model
from teacache_trt.tools import calibrate as C
from teacache_trt.tools.calibrate_pipeline import PipelineCalibration, default_expert, load_pipeline, parse_call_args
from models import wan, wan_a14b as M

STEPS = 16  # 11 high-noise steps, 5 low-noise ones
CALL = ["--pipeline-arg", f"height={wan.HEIGHT}", "--pipeline-arg", f"width={wan.WIDTH}",
        "--pipeline-arg", f"num_frames={wan.FRAMES}"]


@pytest.fixture(scope="module")
def folder(exported, tmp_path_factory):
    """A saved two-expert WanPipeline (no text encoder), a prompt's embeddings, both artifacts."""
    root = tmp_path_factory.mktemp("a14b_pipeline")
    high = exported("wan_a14b")
    M.make_experts_pipeline(high.model, M.make_low_model()).save_pretrained(root / "pipe")
    export_model(root / "pipe" / "transformer_2", root / "low", axes=M.AXES, build="none",
                 variant="Wan2.2-T2V-A14B-low", log=lambda m: None)
    g = torch.Generator().manual_seed(0)
    save_file({"prompt_embeds": torch.randn(1, wan.TEXT, M.TINY["text_dim"], generator=g),
               "negative_prompt_embeds": torch.randn(1, wan.TEXT, M.TINY["text_dim"], generator=g)},
              str(root / "prompt.safetensors"))
    return root, high.art_dir, root / "low"


def calibrate(art, root, *extra, capsys):
    rc = C.main([str(art), "--pipeline", str(root / "pipe"), "--prompt-embeds", str(root / "prompt.safetensors"),
                 "--seeds", "2", "--holdout", "1", "--steps", str(STEPS), *CALL, "--json", str(root / "out.json"),
                 *extra])
    assert rc == 0, capsys.readouterr().err
    return json.loads((root / "out.json").read_text())


def test_each_expert_is_calibrated_on_its_own_steps(folder, capsys):
    root, high_art, low_art = folder
    # The low-noise expert's variant names its component: 5 steps, 4 pairs per branch and seed.
    low = calibrate(low_art, root, "--order", "1", capsys=capsys)
    assert low["fit"]["n"] == 2 * 2 * 4 and low["holdout"]["n"] == 1 * 2 * 4
    high = calibrate(high_art, root, "--order", "1", capsys=capsys)
    assert high["fit"]["n"] == 2 * 2 * 10
    assert low["coefficients"] != high["coefficients"]
    # MagCache's ratios likewise: per cache context of the expert, its 5 steps.
    ratios = calibrate(low_art, root, "--policy", "magcache", capsys=capsys)
    assert ratios["steps"] == 5 and {c: len(v) for c, v in ratios["mag_ratios"].items()} == {"cond": 5, "uncond": 5}


def test_the_calibrated_expert_sees_only_its_timesteps(folder):
    root, high_art, low_art = folder
    assert default_expert("Wan2.2-T2V-A14B-low") == "transformer_2" and default_expert("Wan2.1-T2V-14B") == "transformer"
    pipe = load_pipeline(root / "pipe", "transformer_2", "fp32")
    assert pipe.transformer_2 is None and pipe.transformer is not None  # the expert's PyTorch weights stay on disk
    run = PipelineCalibration(pipe, "transformer_2", STEPS, [load_file(str(root / "prompt.safetensors"))],
                              {"height": wan.HEIGHT, "width": wan.WIDTH, "num_frames": wan.FRAMES})
    assert run.context_steps == 5
    t = teacache_trt.load_transformer(low_art, threshold=0)
    seen = []
    t.observers.append(lambda context, step, computed, pool: seen.append((context, step)))
    timesteps = []
    forward = t.forward
    t.forward = lambda *a, **kw: (timesteps.append(float(kw["timestep"][0])), forward(*a, **kw))[1]
    run.generate(t, seed=0)
    assert sorted(seen) == sorted((c, s) for c in ("cond", "uncond") for s in range(5))
    assert timesteps and max(timesteps) < M.BOUNDARY["T2V"] * 1000


def test_bad_pipeline_options(folder, capsys, tmp_path):
    root, high_art, low_art = folder
    assert C.main([str(low_art), "--prompt-embeds", str(root / "prompt.safetensors")]) == 2
    assert "go with --pipeline PIPELINE_DIR" in capsys.readouterr().err
    assert C.main([str(low_art), "--pipeline", str(tmp_path)]) == 2
    assert "has no model_index.json" in capsys.readouterr().err
    assert C.main([str(low_art), "--pipeline", str(root / "pipe"), *CALL]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert C.main([str(low_art), "--pipeline", str(root / "pipe"), "--prompt-embeds", str(root / "prompt.safetensors"),
                   "--steps", "4"]) == 2
    assert "runs 1 step(s)" in capsys.readouterr().err
    with pytest.raises(TeaCacheError, match="not KEY=VALUE"):
        parse_call_args(["height"])
