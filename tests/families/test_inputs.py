"""A family's inputs declared once: the dims, examples and graph-input names that follow."""
from __future__ import annotations

import pytest
import torch

from teacache_trt.errors import TeaCacheError
from teacache_trt.export.onnx_export import dynamic_dims
from teacache_trt.families import AUTO, Axis, Family, Input, TimestepScale, latent_axes, text_axis
from teacache_trt.families.custom import check_family
from teacache_trt.manifest import TensorSpec

CONFIG = {"in_channels": 4, "text_dim": 8, "patch": 2, "guidance_embeds": False, "out_channels": None}


class Video(Family):
    name = "test_video"
    class_name = "TestVideo"
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "frames", "height", "width"), "latents"),
        Input("packed", ("batch", "frames*height*width", "in_channels"), "latents"),
        Input("encoder_hidden_states", ("batch", "txt_seq", "text_dim")),
        Input("mask", ("batch", "txt_seq"), "mask"),
        Input("timestep", ("batch",), "timestep"),
        Input("guidance", ("batch",), "constant", value=3.5, when="guidance_embeds"),
        Input("scale", (3,), "constant", value=(0.5, 2.0, 4.0), dtype=torch.float32),
        Input("grid", ("frames", "height", "width"), "constant", dtype=torch.int32),
        Input("table", kind="table", make=lambda config, sizes: torch.ones(sizes["frames"], 2), dims={0: AUTO},
              dtype=torch.float32),
    )
    axes = (Axis("batch", 1, 2, 4), *latent_axes(frames=(13, 13), height=(60, 96), width=(90, 160), patch=2),
            text_axis("T5", 226))
    timestep_scale = TimestepScale("flow", 1000.0)


POINT = {"batch": 3, "frames": 2, "height": 4, "width": 6, "txt_seq": 5}


def test_names_and_optional_inputs_follow_the_declaration():
    assert Video.model_inputs == tuple(i.name for i in Video.inputs)
    assert Video.optional_inputs == {"guidance": "guidance_embeds"}
    assert Video.inputs_for(CONFIG) == tuple(n for n in Video.model_inputs if n != "guidance")
    assert "guidance" in Video.inputs_for({**CONFIG, "guidance_embeds": True})


def test_dims_name_axes_derive_expressions_and_fix_config_sizes():
    dims = Video.input_dims(CONFIG)
    assert dims["hidden_states"] == {0: "batch", 2: "frames", 3: "height", 4: "width"}
    assert dims["packed"] == {0: "batch", 1: AUTO}  # frames*height*width: torch.export names it
    assert dims["encoder_hidden_states"] == dims["mask"] == {0: "batch", 1: "txt_seq"}
    assert dims["scale"] == {} and dims["table"] == {0: AUTO}


def test_auto_axes_and_fixed_axes():
    class Guarded(Video):
        auto_axes = ("frames", "height", "width")

        @classmethod
        def axes_for(cls, config):
            return (*cls.axes[:4], Axis("txt_seq", 7, 7, 7, help="the table is built for 7", fixed=True))

    dims = Guarded.input_dims(CONFIG)
    assert dims["hidden_states"] == {0: "batch", 2: AUTO, 3: AUTO, 4: AUTO}
    assert dims["encoder_hidden_states"] == {0: "batch"}  # a size the weights fix is static
    assert Guarded.example_inputs(CONFIG, {**POINT, "txt_seq": 7}, torch.float32)["mask"].shape == (3, 7)
    with pytest.raises(TeaCacheError, match=r"txt_seq=5: .*fixes txt_seq at 7 \(the table is built for 7\).*"
                                            r"--axis txt_seq=7:7:7"):
        Guarded.example_inputs(CONFIG, POINT, torch.float32)


def test_examples_follow_shapes_kinds_and_dtype_rules():
    feed = Video.example_inputs(CONFIG, POINT, torch.float16, seed=4)
    assert list(feed) == [n for n in Video.model_inputs if n != "guidance"]
    assert feed["hidden_states"].shape == (3, 4, 2, 4, 6) and feed["hidden_states"].dtype == torch.float16
    assert feed["packed"].shape == (3, 48, 4)
    assert feed["encoder_hidden_states"].shape == (3, 5, 8)
    # right-padded, each sample one token shorter, 0/1 in the model dtype
    assert feed["mask"].dtype == torch.float16 and feed["mask"].sum(dim=1).tolist() == [4, 3, 2]
    t = feed["timestep"]
    assert t.dtype == torch.float16 and t.shape == (3,) and ((t >= 0) & (t < 1000)).all() and t.max() > 1
    assert feed["scale"].dtype == torch.float32 and feed["scale"].tolist() == [0.5, 2.0, 4.0]
    assert feed["grid"].dtype == torch.int32 and feed["grid"].shape == (2, 4, 6) and not feed["grid"].any()
    assert feed["table"].dtype == torch.float32 and feed["table"].shape == (2, 2)
    again = Video.example_inputs(CONFIG, POINT, torch.float16, seed=4)
    assert all(torch.equal(feed[k], again[k]) for k in feed)  # one seeded generator
    other = Video.example_inputs(CONFIG, POINT, torch.float16, seed=5)
    assert not torch.equal(feed["hidden_states"], other["hidden_states"])
    guided = Video.example_inputs({**CONFIG, "guidance_embeds": True}, POINT, torch.float32)
    assert guided["guidance"].tolist() == [3.5] * 3


def test_integer_timesteps_for_ddpm_schedules():
    class Integer(Video):
        timestep_scale = TimestepScale("ddpm")

    t = Integer.example_inputs(CONFIG, POINT, torch.float16)["timestep"]
    assert t.dtype == torch.int64 and ((t >= 0) & (t < 1000)).all()


def test_conditions_spans_and_sizes_the_config_holds_otherwise():
    class Conditioned(Video):
        inputs = (
            Input("x", ("batch", "latent_channels"), "latents"),
            Input("t", ("batch",), "timestep", span=(-1.5, 1.0)),
            Input("condition", ("batch", 1), "constant", value=1.0, when=lambda config: config["in_channels"] > 4),
        )

        @classmethod
        def config_sizes(cls, config):  # a size the config does not hold as one integer
            return {**super().config_sizes(config), "latent_channels": config["in_channels"] - 1}

    assert Conditioned.inputs_for(CONFIG) == ("x", "t")
    assert Conditioned.latent_input == "x" and Video.latent_input == "hidden_states"  # the first latents input
    assert Conditioned.inputs_for({**CONFIG, "in_channels": 5}) == ("x", "t", "condition")
    feed = Conditioned.example_inputs({**CONFIG, "in_channels": 5}, POINT, torch.float32)
    assert feed["x"].shape == (3, 4) and feed["condition"].tolist() == [[1.0]] * 3
    t = Conditioned.example_inputs(CONFIG, {**POINT, "batch": 64}, torch.float32)["t"]
    assert ((t >= -1.5) & (t < 1.0)).all() and t.min() < 0 < t.max()


def test_a_shape_entry_nothing_binds_is_a_clear_error():
    class Broken(Video):
        inputs = (Input("x", ("batch", "out_channels")),)  # None in the config: not a size

    with pytest.raises(TeaCacheError, match=r"input 'x' has shape \('batch', 'out_channels'\).*out_channels"):
        Broken.example_inputs(CONFIG, POINT, torch.float32)


def test_bad_declarations_are_refused():
    with pytest.raises(TeaCacheError, match="kind 'noise'"):
        Input("x", ("batch",), "noise")
    with pytest.raises(TeaCacheError, match="'table' input and only it takes make="):
        Input("x", ("batch",), "table")
    with pytest.raises(TeaCacheError, match="needs its shape"):
        Input("x")


def test_integer_masks_arrive_in_the_latents_dtype():
    latents = torch.zeros(2, 4, 2, 4, 6, dtype=torch.float16)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    feed = Video.feed_from_kwargs({"hidden_states": latents, "mask": mask, "guidance": None, "other": 1})
    assert feed["mask"].dtype == torch.float16 and feed["mask"].tolist() == mask.tolist()
    assert set(feed) == {"hidden_states", "mask"}


def test_per_sample_inputs_given_once_are_one_per_sample_at_their_declared_dtype():
    class Declared(Video):
        inputs = (*Video.inputs[:4], Input("timestep", ("batch",), "timestep", dtype=torch.float32),
                  *Video.inputs[5:])

    latents = torch.zeros(3, 4, 2, 4, 6, dtype=torch.float16)
    for given in (torch.tensor(7), torch.tensor([7]), 7):
        feed = Declared.feed_from_kwargs({"hidden_states": latents, "timestep": given, "guidance": 3.5})
        assert feed["timestep"].tolist() == [7.0] * 3 and feed["timestep"].dtype == torch.float32
        assert feed["guidance"].tolist() == [3.5] * 3  # no dtype declared: as given
    per_sample = torch.tensor([1, 2, 3])
    assert Declared.feed_from_kwargs({"hidden_states": latents, "timestep": per_sample})["timestep"].tolist() == [1, 2, 3]
    # Not a tensor nor a number: passed on for the runtime to refuse by name.
    assert Declared.feed_from_kwargs({"hidden_states": latents, "timestep": "0.5"})["timestep"] == "0.5"


def test_latent_axes_state_ranges_and_help_once():
    frames, height, width = latent_axes(frames=(21, 33), height=(16, 40), width=(24, 40), spatial=32, temporal=8)
    assert (frames.min, frames.opt, frames.max, frames.multiple_of) == (1, 21, 33, 1)
    assert frames.help == "latent frames: (video frames - 1)/8 + 1; 161 frames -> 21"
    assert (height.min, height.multiple_of, height.help) == (1, 1, "latent height: pixels/32")
    _, h = latent_axes(height=(60, 96), width=(90, 160), patch=2)[:2]
    assert (h.min, h.multiple_of) == (2, 2) and h.help.endswith("a multiple of patch_size")
    assert text_axis("T5", 226).help == "text tokens (T5, padded to max_sequence_length=226)"


def test_dims_between_graphs_come_from_the_exported_outputs():
    spec = TensorSpec("hidden", "float32", ["batch", "img_seq + txt_seq", 0, 16, "s12", "txt_seq"])
    assert dynamic_dims(spec, {"batch", "txt_seq", "img_seq"}) == {0: "batch", 1: AUTO, 2: AUTO, 4: AUTO,
                                                                   5: "txt_seq"}


def test_a_family_written_without_inputs_still_checks_and_feeds():
    class Older(Family):
        name, class_name, model_inputs = "older", "Older", ("x",)
        variants, axes, signal, signal_dims, cached = {}, (), "x", {}, ("x",)

        @classmethod
        def parts(cls, model, variant=None):
            return {}

        @classmethod
        def input_dims(cls, config):
            return {"x": {0: "batch"}}

        @classmethod
        def example_inputs(cls, config, dims, dtype, seed=0):
            return {"x": torch.zeros(dims["batch"], dtype=dtype)}

    check_family(Older)
    assert Older.inputs_for({}) == ("x",) and Older.accepted_kwargs() == {"x"}
    x = torch.ones(2)
    assert Older.feed_from_kwargs({"x": x, "flag": True}) == {"x": x}

    class Undeclared(Family):
        name, class_name, model_inputs = "undeclared", "Undeclared", ("x",)
        variants, axes, signal, signal_dims, cached = {}, (), "x", {}, ("x",)
        parts = Older.parts

    with pytest.raises(TeaCacheError, match=r"does not define input_dims\(\), example_inputs\(\): "):
        check_family(Undeclared)
    with pytest.raises(TeaCacheError, match="declares no inputs"):
        Undeclared.input_dims({})
