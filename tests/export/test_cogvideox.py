"""CogVideoX / CogVideoX 1.5 export: variants, verification, the int64 timestep (docs/traps.md),
the fixed-size positional tables, the ofs signal, TensorRT-RTX."""
from __future__ import annotations

import pytest
import torch

import teacache_trt
from models import cogvideox as M
from reference import TeaCacheReference
from teacache_trt import TeaCacheError
from teacache_trt.artifact import Artifact
from teacache_trt.export.exporter import export_model, resolve_axes
from teacache_trt.families.cogvideox import fixed_sizes
from teacache_trt.families import get_family
from teacache_trt.manifest import GRAPH_NAMES
from teacache_trt.shapes import propagate

NAME = "cogvideox"
FAM = get_family(NAME)
STEPS = 10

# diffusers configs of the released checkpoints (only the keys the adapter reads).
BASE = dict(patch_size=2, patch_size_t=None, ofs_embed_dim=None, temporal_compression_ratio=4,
            sample_frames=49, sample_height=60, sample_width=90, max_text_seq_length=226,
            use_learned_positional_embeddings=False)
CONFIGS = {
    "CogVideoX-2b": dict(BASE, num_attention_heads=30, in_channels=16, out_channels=16,
                         use_rotary_positional_embeddings=False),
    "CogVideoX-5b": dict(BASE, num_attention_heads=48, in_channels=16, out_channels=16,
                         use_rotary_positional_embeddings=True),
    "CogVideoX-5b-I2V": dict(BASE, num_attention_heads=48, in_channels=32, out_channels=16,
                             use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    "CogVideoX1.5-5B": dict(BASE, num_attention_heads=48, in_channels=16, out_channels=16, patch_size_t=2,
                            sample_height=300, sample_width=300, sample_frames=81,
                            use_rotary_positional_embeddings=True),
    "CogVideoX1.5-5B-I2V": dict(BASE, num_attention_heads=48, in_channels=32, out_channels=16, patch_size_t=2,
                                ofs_embed_dim=512, sample_height=300, sample_width=300, sample_frames=81,
                                use_rotary_positional_embeddings=True),
}


@pytest.mark.parametrize("checkpoint, variant", [
    ("CogVideoX-2b", "CogVideoX-2b"), ("CogVideoX-5b", "CogVideoX-5b"), ("CogVideoX-5b-I2V", "CogVideoX-5b"),
    ("CogVideoX1.5-5B", "CogVideoX1.5-5B"), ("CogVideoX1.5-5B-I2V", "CogVideoX1.5-5B-I2V"),
])
def test_variant_is_inferred_from_the_config(checkpoint, variant):
    assert FAM.variant_for(CONFIGS[checkpoint]) == variant


def test_other_widths_fall_back_on_the_positional_embedding():
    tiny = dict(CONFIGS["CogVideoX-5b"], num_attention_heads=2)
    assert FAM.variant_for(tiny) == "CogVideoX-5b"  # RoPE came with the 5b models
    assert FAM.variant_for(dict(tiny, use_rotary_positional_embeddings=False)) == "CogVideoX-2b"
    # 1.5 I2V without an ofs embedding still shows its image channels.
    assert FAM.variant_for(dict(CONFIGS["CogVideoX1.5-5B-I2V"], ofs_embed_dim=None)) == "CogVideoX1.5-5B-I2V"


def test_axes_follow_the_config():
    c15 = CONFIGS["CogVideoX1.5-5B-I2V"]
    assert FAM.axis("frames", c15).multiple_of == 2  # latent frames padded to patch_size_t
    assert resolve_axes(FAM, None, c15)["frames"] == [2, 22, 42]
    assert resolve_axes(FAM, None, CONFIGS["CogVideoX-5b"])["frames"] == [1, 13, 13]
    with pytest.raises(TeaCacheError, match="not a multiple of 2"):
        resolve_axes(FAM, {"frames": (2, 21, 42)}, c15)
    # A sin-cos (2b) or learned (5b-I2V) table fixes the sizes; RoPE alone does not.
    fixed = {"batch": [1, 2, 4], "frames": [13] * 3, "height": [60] * 3, "width": [90] * 3,
             "txt_seq": [226] * 3}
    for checkpoint in ("CogVideoX-2b", "CogVideoX-5b-I2V"):
        assert resolve_axes(FAM, None, CONFIGS[checkpoint]) == fixed, checkpoint
    for checkpoint in ("CogVideoX-5b", "CogVideoX1.5-5B", "CogVideoX1.5-5B-I2V"):
        assert fixed_sizes(CONFIGS[checkpoint]) is None, checkpoint


def test_feed_from_kwargs_takes_what_pipelines_pass():
    hidden = torch.zeros(2, 3, 8, 4, 4)
    cos, sin = torch.zeros(12, 16), torch.ones(12, 16)
    feed = FAM.feed_from_kwargs(dict(hidden_states=hidden, encoder_hidden_states=torch.zeros(2, 5, 32),
                                     timestep=torch.tensor(999), ofs=torch.tensor([2.0]),
                                     image_rotary_emb=(cos, sin), attention_kwargs=None))
    assert feed["timestep"].tolist() == [999, 999] and feed["timestep"].dtype == torch.int64
    assert feed["ofs"].tolist() == [2.0, 2.0]  # the I2V pipeline's (1,) for the whole batch
    assert feed["rotary_cos"] is cos and feed["rotary_sin"] is sin
    assert FAM.kwargs_from_feed(feed)["image_rotary_emb"] == (cos, sin)
    with pytest.raises(TeaCacheError, match="timestep_cond"):
        FAM.feed_from_kwargs(dict(hidden_states=hidden, encoder_hidden_states=None, timestep=1,
                                  timestep_cond=torch.zeros(2, 4)))


# --- the tiny CogVideoX-5b layout (the shared session export) --------------------------------
def test_manifest_records_verification_and_the_int64_timestep(exported):
    ex = exported(NAME)
    m = ex.manifest
    assert m.variant == "CogVideoX-5b"
    assert m.policy_data["teacache"]["coefficients"] == list(FAM.variants["CogVideoX-5b"].coefficients)
    assert m.signal.cached == ["hidden_states"] and "text" in m.signal.note
    embed_inputs = {s.name: s for s in m.graphs["embed"].inputs}
    assert embed_inputs["timestep"].dtype == "int64"
    assert {"rotary_cos", "rotary_sin"} <= set(embed_inputs) and "ofs" not in embed_inputs
    for graph in GRAPH_NAMES:
        rows = m.graphs[graph].verification
        assert len(rows) == 2 and rows[0]["axes"] != rows[1]["axes"], graph
        for r in rows:
            assert r["max_abs"] <= 1e-5, (graph, r)
    for r in m.graphs["head"].verification:
        assert r["split_vs_model_max_abs"] <= 1e-5, r


def test_runtime_matches_the_model_at_an_unverified_shape(exported):
    ex = exported(NAME)
    point = {"batch": 3, "frames": 3, "height": 8, "width": 4, "txt_seq": 7}
    feed = FAM.example_inputs(ex.manifest.config, point, torch.float32, seed=4)
    shapes = propagate([ex.manifest.graphs[g] for g in GRAPH_NAMES], {n: t.shape for n, t in feed.items()})
    assert shapes["hidden"] == shapes["residual"] == (3, 3, 4, 2, 32)  # (B, F', H', W', D)
    assert shapes["output"] == (3, 3, 4, 8, 4)  # (B, F, C, H, W), as the model returns
    kwargs = FAM.kwargs_from_feed(feed)
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0)
    t.reset(1)
    got = t(**kwargs).sample
    assert (got - ex.model(**kwargs).sample).abs().max().item() <= 1e-4


def test_float_timesteps_are_refused_with_the_fix(exported):
    ex = exported(NAME)
    kwargs = FAM.kwargs_from_feed(FAM.example_inputs(ex.manifest.config, ex.spec.POINT, torch.float32))
    t = teacache_trt.load_transformer(ex.art_dir, threshold=0)
    t.reset(1)
    with pytest.raises(TeaCacheError, match=r"timestep.*int64"):
        t(**{**kwargs, "timestep": kwargs["timestep"].float()})


def test_tiny_model_schedules_are_mixed_at_the_parity_thresholds(exported):
    # test_parity compares decisions with the reference; they must include both kinds of
    # steps, or equal schedules would prove little (the signal ignores the latents).
    ex = exported(NAME)
    schedules = {}
    for threshold in (0.05, 0.2, 0.6, 2.0):  # test_parity's thresholds
        ref = TeaCacheReference(ex.model, M.reference_hooks(ex.model), ex.manifest.policy_data["teacache"]["coefficients"],
                                threshold, STEPS)
        kwargs = FAM.kwargs_from_feed(FAM.example_inputs(ex.manifest.config, M.POINT, torch.float32))
        for i in range(STEPS):
            kwargs["timestep"] = M.timestep(i, STEPS, M.POINT["batch"])
            ref(**kwargs)
        schedules[threshold] = ref.computed
    assert schedules[0.05] == list(range(STEPS))
    assert schedules[2.0] == [0, STEPS - 1]
    assert 2 < len(schedules[0.2]) < STEPS and 2 < len(schedules[0.6]) < STEPS, schedules


# --- CogVideoX 1.5 I2V layout: patch_size_t, ofs, image channels ----------------------------
@pytest.fixture(scope="module")
def ex15(tmp_path_factory):
    model = M.make_model_15()
    art = tmp_path_factory.mktemp("cogvideox15") / "art"
    manifest = export_model(None, art, model=model, axes=M.AXES_15, build="none", log=lambda msg: None)
    return model, art, manifest


def test_15_export_is_verified_at_two_shapes(ex15):
    model, art, manifest = ex15
    assert manifest.variant == "CogVideoX1.5-5B-I2V"
    embed_inputs = {s.name: s for s in manifest.graphs["embed"].inputs}
    assert embed_inputs["ofs"].dtype == "float32" and embed_inputs["timestep"].dtype == "int64"
    for graph in GRAPH_NAMES:
        rows = manifest.graphs[graph].verification
        # Traced at the smallest sizes >= 2, distinct where the range allows; then the
        # minimum, or the next size up where the minimum was traced.
        assert [r["axes"] for r in rows] == [
            {"batch": 2, "frames": 4, "height": 6, "width": 4, "txt_seq": 3},
            {"batch": 1, "frames": 2, "height": 4, "width": 6, "txt_seq": 4}], graph
        assert all(r["max_abs"] <= 1e-5 for r in rows), (graph, rows)
    assert all(r["split_vs_model_max_abs"] <= 1e-5 for r in manifest.graphs["head"].verification)
    # 8 input channels (latents + image latents) in, 4 out; frames unpatchified by patch_size_t.
    feed = FAM.example_inputs(manifest.config, {"batch": 1, "frames": 4, "height": 6, "width": 6,
                                                "txt_seq": 4}, torch.float32)
    shapes = propagate([manifest.graphs[g] for g in GRAPH_NAMES], {n: t.shape for n, t in feed.items()})
    assert shapes["hidden"] == (1, 2, 3, 3, 32) and shapes["output"] == (1, 4, 4, 6, 6)


def test_15_signal_includes_ofs_and_decisions_equal_the_reference(ex15):
    model, art, manifest = ex15
    threshold = 0.2
    t = teacache_trt.load_transformer(art, threshold=threshold)
    t.reset(STEPS)
    ref = TeaCacheReference(model, M.reference_hooks(model), manifest.policy_data["teacache"]["coefficients"], threshold,
                            STEPS)
    point = {"batch": 2, "frames": 4, "height": 4, "width": 6, "txt_seq": 5}
    kwargs = FAM.kwargs_from_feed(FAM.example_inputs(manifest.config, point, torch.float32, seed=7))
    latents, image = kwargs["hidden_states"].split(4, dim=2)  # I2V: image latents ride along
    outs = {"runtime": [], "reference": []}
    for name, forward in (("runtime", lambda **kw: t(**kw).sample), ("reference", ref)):
        x = latents
        for i in range(STEPS):
            kwargs["timestep"] = M.timestep(i, STEPS, point["batch"])
            out = forward(**{**kwargs, "hidden_states": torch.cat([x, image], dim=2)})
            outs[name].append(out)
            x = x - out / STEPS
    assert t.stats["computed_steps"] == ref.computed
    assert 2 < len(ref.computed) < STEPS, ref.computed
    assert max((a - b).abs().max().item() for a, b in zip(*outs.values())) <= 1e-4
    # The signal is temb + ofs embedding (what the blocks get), not the time embedding alone.
    with torch.no_grad():
        def rel(signal):
            a, b = signal(M.timestep(0, STEPS, 2)), signal(M.timestep(1, STEPS, 2))
            return ((b - a).abs().sum() / a.abs().sum()).item()

        ofs = model.ofs_embedding(model.ofs_proj(kwargs["ofs"]))
        with_ofs = rel(lambda ts: model.time_embedding(model.time_proj(ts)) + ofs)
        without = rel(lambda ts: model.time_embedding(model.time_proj(ts)))
    got = t.stats["contexts"]["default"]["rel_l1"][1]
    assert got == pytest.approx(with_ofs, rel=1e-5) and abs(with_ofs - without) > 1e-3


def test_15_graphs_build_with_tensorrt_rtx(ex15, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx-cu13 is not installed (pip install -e .[test])")
    pytest.importorskip("polygraphy", reason="polygraphy is not installed")
    import shutil

    from teacache_trt.engines.build import build_in_place

    art = shutil.copytree(ex15[1], tmp_path / "art")
    build_in_place(art, Artifact.open(art).manifest, "tensorrt-rtx", log=lambda msg: None)
    assert set(Artifact.open(art).manifest.engines["tensorrt-rtx"]) == set(GRAPH_NAMES)


# --- CogVideoX-2b layout: a sin-cos positional table fixes the sizes ------------------------
@pytest.fixture(scope="module")
def ex2b(tmp_path_factory):
    model = M.make_model_2b()
    art = tmp_path_factory.mktemp("cogvideox2b") / "art"
    # --variant override: the config alone says CogVideoX-2b.
    assert FAM.variant_for(dict(model.config)) == "CogVideoX-2b"
    manifest = export_model(None, art, model=model, axes=M.AXES_2B, variant="CogVideoX-5b", build="none",
                            log=lambda msg: None)
    return model, art, manifest


def test_2b_exports_at_its_fixed_size(ex2b):
    model, art, manifest = ex2b
    assert manifest.variant == "CogVideoX-5b"
    assert manifest.policy_data["teacache"]["coefficients"] == list(FAM.variants["CogVideoX-5b"].coefficients)
    embed_inputs = {s.name: s.shape for s in manifest.graphs["embed"].inputs}
    assert embed_inputs["hidden_states"] == ["batch", 3, 4, 4, 6]
    assert embed_inputs["encoder_hidden_states"] == ["batch", 5, 32]
    assert "rotary_cos" not in embed_inputs
    for graph in GRAPH_NAMES:
        assert all(r["max_abs"] <= 1e-5 for r in manifest.graphs[graph].verification), graph
    t = teacache_trt.load_transformer(art, threshold=0)
    t.reset(2)
    at_sample = {"batch": 2, "frames": 3, "height": 4, "width": 6, "txt_seq": 5}
    kwargs = FAM.kwargs_from_feed(FAM.example_inputs(manifest.config, at_sample, torch.float32))
    assert (t(**kwargs).sample - model(**kwargs).sample).abs().max().item() <= 1e-4
    with pytest.raises(TeaCacheError, match="fixed in the graph"):
        t(**{**kwargs, "hidden_states": torch.zeros(2, 3, 4, 6, 6)})


def test_2b_dynamic_axes_are_refused_with_the_fix(tmp_path):
    with pytest.raises(TeaCacheError, match=r"sin-cos positional table.*--axis height=4:4:4"):
        export_model(None, tmp_path / "art", model=M.make_model_2b(), axes={**M.AXES_2B, "height": (4, 6, 8)},
                     build="none", log=lambda msg: None)
    art = tmp_path / "art"
    assert not (art / "manifest.json").exists() and not list(art.glob(".staging-*"))  # nothing committed or left
