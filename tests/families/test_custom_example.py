"""examples/custom_family stays working: a family written from docs/custom-families.md for a
model outside diffusers (tuple and dataclass outputs, a config-object constructor, a sibling
import, RFLOW timesteps, positional calls with an extra keyword) exports and runs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.export import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_family"
SPEC = "examples/custom_family/family.py:TinyDiTFamily"  # as the docs type it, from the repository root


def _load_run():
    spec = importlib.util.spec_from_file_location("custom_family_example_run", EXAMPLE / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()


@pytest.fixture(scope="module")
def example(tmp_path_factory, monkeypatch_module):
    """The example's model folder, exported once through the CLI with the family file's path."""
    root = tmp_path_factory.mktemp("custom_family")
    model_dir = run.save_model(root / "model")
    monkeypatch_module.chdir(ROOT)
    assert cli.main([str(model_dir), "--out", str(root / "art"), "--family-module", SPEC, "--build", "none"]) == 0
    model = run.family().load_model(model_dir, "fp32")
    return root / "art", model


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def load(art, threshold):
    return teacache_trt.load_transformer(art, threshold=threshold, family_module=SPEC)


def test_rflow_sampling_matches_the_module_at_threshold_0_and_skips_above(example):
    art, model = example
    with torch.no_grad():
        want = run.rflow_sample(model, steps=10)
    exact = load(art, 0.0)
    got = run.rflow_sample(exact, steps=10)
    assert exact.stats["computed_steps"] == list(range(10))
    assert (got - want).abs().max().item() <= 1e-4
    cached = load(art, 0.5)
    run.rflow_sample(cached, steps=10)
    computed = cached.stats["computed_steps"]
    assert 0 in computed and 9 in computed and len(computed) < 10  # forced first and last, some skipped


def test_output_types_follow_the_module(example):
    art, model = example
    fam = run.family()
    feed = fam.example_inputs(fam.config_of(model), {"batch": 2, "frames": 2, "height": 4, "width": 4,
                                                     "txt_seq": 3}, torch.float32)
    t = load(art, 0.0)
    t.reset(num_calls=3)
    with torch.no_grad():
        ref = model(**feed).sample
    as_dataclass = t(**feed)
    assert type(as_dataclass).__name__ == "DiTOutput" and as_dataclass.sample.shape == ref.shape
    as_tuple = t(**feed, return_dict=False)
    assert type(as_tuple) is tuple and len(as_tuple) == 1
    assert as_tuple[0].shape == ref.shape == (2, 4, 2, 4, 4)  # the whole batch, not row 0
    positional = t(feed["x"], feed["timestep"], feed["y"], feed["mask"], True, False)[0]  # mask, flag, return_dict
    assert (positional - ref).abs().max().item() <= 1e-4


def test_keywords_the_graphs_cannot_follow_are_refused_by_name(example):
    art, model = example
    fam = run.family()
    feed = fam.example_inputs(fam.config_of(model), {"batch": 1, "frames": 2, "height": 4, "width": 4,
                                                     "txt_seq": 3}, torch.float32)
    t = load(art, 0.0)
    t.reset(num_calls=4)
    with pytest.raises(TeaCacheError, match=r"enable_temporal_attention=False: .* exported with "
                                            r"enable_temporal_attention=True \(the family's ignored_kwargs\)"):
        t(**feed, enable_temporal_attention=False)
    with pytest.raises(TeaCacheError, match=r"\['fps'\] are not inputs .* ignored_kwargs.* forward_kwargs"):
        t(**feed, fps=24)
    with pytest.raises(TeaCacheError, match=r"7 positional arguments given, but TinyDiT.forward takes at most 6"):
        t(*feed.values(), True, False, 1)
    with pytest.raises(TeaCacheError, match=r"\['x'\] given both by position and by keyword"):
        t(feed["x"], **feed)
    assert t(**feed, enable_temporal_attention=True, fps=None).sample.shape == feed["x"].shape


def test_a_pndm_sampler_counts_calls_not_steps(example):
    """PNDM's warm-up calls the model 4 times in each of its first 3 steps: 10 steps are 19
    calls.  reset(num_calls=len(scheduler.timesteps)) forces the last call, as the module's
    own loop computes it; the latents agree at threshold 0."""
    from diffusers import PNDMScheduler

    art, model = example
    fam = run.family()
    feed = fam.example_inputs(fam.config_of(model), {"batch": 2, "frames": 2, "height": 4, "width": 4,
                                                     "txt_seq": 3}, torch.float32, seed=3)

    def sample(transformer, reset=None):
        scheduler = PNDMScheduler()
        scheduler.set_timesteps(10)
        if reset:
            reset(scheduler)
        x = feed["x"]
        for step in scheduler.timesteps:
            out = transformer(x, step, feed["y"], feed["mask"].long(), return_dict=False)[0]  # upstream style
            x = scheduler.step(out, step, x).prev_sample
        return x, len(scheduler.timesteps)

    with torch.no_grad():
        want, calls = sample(model)
    assert calls == 19
    exact = load(art, 0.0)
    got, _ = sample(exact, lambda s: exact.reset(num_calls=len(s.timesteps)))
    assert exact.stats["computed_steps"] == list(range(19))
    assert (got - want).abs().max().item() <= 1e-3 * want.abs().max().item()
    cached = load(art, 0.5)
    sample(cached, lambda s: cached.reset(num_inference_steps=len(s.timesteps)))  # the earlier name still works
    computed = cached.stats["computed_steps"]
    assert 18 in computed and len(computed) < 19  # the last call is forced; some are skipped


def test_the_family_file_imports_its_sibling_model():
    # run.family() loaded family.py by path; its `from tiny_dit import ...` found the sibling.
    fam = run.family()
    assert fam.module_class.__module__ == "tiny_dit"
    assert str(EXAMPLE) in sys.path
