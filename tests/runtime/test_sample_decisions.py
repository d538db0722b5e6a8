"""decisions="sample": each prompt of a batch decides alone, the blocks graph runs on the rows
that compute, and a prompt's schedule and output do not depend on its batch neighbours."""
from __future__ import annotations

import json

import pytest
import torch

import teacache_trt
from teacache_trt import TeaCacheError
from teacache_trt.families import get_family

STEPS = 10
THRESHOLDS = [0.05, 0.6, 0.2, 2.0]  # different schedules on the tiny FLUX (test_parity)


def prompt_inputs(ex, seed):
    """One prompt's forward kwargs (batch 1) on the tiny FLUX."""
    fam = get_family("flux")
    return fam.kwargs_from_feed(fam.example_inputs(dict(ex.model.config), {**ex.spec.POINT, "batch": 1},
                                                   torch.float32, seed=seed))


def stack(prompts):
    """Prompts concatenated along the batch (ids are shared, not per row)."""
    return {k: v if k.endswith("_ids") else torch.cat([p[k] for p in prompts]) for k, v in prompts[0].items()}


def render(t, kwargs, steps=STEPS):
    """An Euler loop; the final latents."""
    t.reset(steps)
    kwargs = dict(kwargs)
    latents = kwargs["hidden_states"]
    for i in range(steps):
        kwargs["timestep"] = torch.full((latents.shape[0],), 1.0 - i / steps)
        kwargs["hidden_states"] = latents
        latents = latents - t(return_dict=False, **kwargs)[0] / steps
    return latents


@pytest.fixture(scope="module")
def flux(exported):
    return exported("flux")


@pytest.fixture(scope="module")
def alone(flux):
    """Each prompt rendered on its own: (final latents, computed steps) per seed."""
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample")
    out = {}
    for seed, threshold in enumerate(THRESHOLDS):
        t.sample_thresholds = [threshold]
        latents = render(t, prompt_inputs(flux, seed))
        out[seed] = (latents, t.stats["samples"][0]["computed_steps"])
    return out


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 1], [2, 0, 1]])
def test_a_prompt_decides_and_renders_as_alone_whatever_its_neighbours(flux, alone, order):
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample")
    t.sample_thresholds = [THRESHOLDS[s] for s in order]
    latents = render(t, stack([prompt_inputs(flux, s) for s in order]))
    samples = t.stats["samples"]
    assert len(samples) == len(order)
    worst = 0.0
    for row, seed in enumerate(order):
        want, computed = alone[seed]
        assert samples[row]["computed_steps"] == computed
        assert sorted(samples[row]["computed_steps"] + samples[row]["skipped_steps"]) == list(range(STEPS))
        worst = max(worst, (latents[row] - want[0]).abs().max().item())
    assert worst <= 1e-5, worst  # sub-batches differ from batch 1 only by float rounding
    print(f"largest |batched - alone| over prompts {order}: {worst:.3g}")
    schedules = {tuple(alone[s][1]) for s in order}
    assert len(schedules) > 1  # the test means something: neighbours really decide differently


def test_blocks_run_on_the_rows_that_compute(flux):
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample")
    rows = []
    infer_into = t.runners["blocks"].infer_into
    t.runners["blocks"].infer_into = lambda feed, out: (rows.append(feed["hidden"].shape[0]), infer_into(feed, out))[1]
    t.sample_thresholds = [0.0, 2.0]  # prompt 0 computes every step, prompt 1 only when forced
    render(t, stack([prompt_inputs(flux, 0), prompt_inputs(flux, 1)]))
    samples = t.stats["samples"]
    assert samples[0]["computed_steps"] == list(range(STEPS))
    assert samples[1]["computed_steps"] == [0, STEPS - 1]
    assert rows == [2] + [1] * (STEPS - 2) + [2]
    assert t.stats["computed_steps"] == list(range(STEPS))  # the union over prompts


def test_batched_cfg_rows_of_a_prompt_decide_together(flux, alone):
    """N = 2P rows [uncond; cond]: row r is prompt r % P, like a pipeline's batched CFG."""
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample")
    seeds = [1, 2]
    t.sample_thresholds = [THRESHOLDS[s] for s in seeds]
    uncond = [prompt_inputs(flux, 10 + s) for s in seeds]
    cond = [prompt_inputs(flux, s) for s in seeds]
    latents = render(t, stack(uncond + cond))
    samples = t.stats["samples"]
    one = teacache_trt.load_transformer(flux.art_dir, decisions="sample")
    for p, seed in enumerate(seeds):
        one.sample_thresholds = [THRESHOLDS[seed]]
        want = render(one, stack([uncond[p], cond[p]]))
        assert samples[p]["computed_steps"] == one.stats["samples"][0]["computed_steps"]
        assert (latents[[p, 2 + p]] - want).abs().max().item() <= 1e-5


def test_batch_mode_is_one_decision_for_the_batch(flux):
    t = teacache_trt.load_transformer(flux.art_dir, threshold=0.2)
    render(t, stack([prompt_inputs(flux, s) for s in range(4)]))
    assert "samples" not in t.stats
    assert [len(c["rel_l1"]) for c in t.stats["contexts"].values()] == [STEPS]
    with pytest.raises(TeaCacheError, match="sample_thresholds needs decisions='sample'"):
        t.sample_thresholds = [0.1, 0.2]


def test_without_sample_thresholds_every_row_is_a_prompt(flux, alone):
    t = teacache_trt.load_transformer(flux.art_dir, threshold=THRESHOLDS[1], decisions="sample")
    render(t, stack([prompt_inputs(flux, 1), prompt_inputs(flux, 1)]))
    assert [s["computed_steps"] for s in t.stats["samples"]] == [alone[1][1]] * 2


def test_rows_that_are_no_multiple_of_the_prompts_are_refused(flux):
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample")
    t.sample_thresholds = [0.1, 0.2]
    calls = []
    t.runners["embed"].infer_into = lambda feed, out: calls.append(feed)
    with pytest.raises(TeaCacheError, match=r"batch N=3 rows cannot be split over P=2 prompts"):
        t.reset(STEPS)
        t(**stack([prompt_inputs(flux, s) for s in range(3)]))
    assert calls == []


@pytest.mark.parametrize("bad", [[], [0.1, -1.0], [float("nan")], ["0.2"]])
def test_bad_sample_thresholds(flux, bad):
    t = teacache_trt.load_transformer(flux.art_dir, decisions="sample")
    with pytest.raises(TeaCacheError, match="sample_thresholds"):
        t.sample_thresholds = bad


def test_unknown_decisions(flux):
    with pytest.raises(TeaCacheError, match=r"decisions='prompt' is not one of \('batch', 'sample'\)"):
        teacache_trt.load_transformer(flux.art_dir, decisions="prompt")


def test_a_blocks_profile_that_forbids_sub_batches_is_refused(flux, tmp_path):
    art = flux.copy(tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    for prof in data["graphs"]["blocks"]["profile"].values():
        if len(prof["min"]) > 2:  # the per-row inputs (hidden, encoder_hidden)
            prof["min"][0] = 2
    (art / "manifest.json").write_text(json.dumps(data))
    t = teacache_trt.load_transformer(art, decisions="sample")
    t.sample_thresholds = [0.1, 0.2]
    t.reset(STEPS)
    with pytest.raises(TeaCacheError, match=r"built for batch >= 2: re-export with --batch 1:"):
        t(**stack([prompt_inputs(flux, 0), prompt_inputs(flux, 1)]))
