"""Default profiles never exceed what a config supports; a range beyond it is refused before
any weight is read; families and their axes are listed without a model."""
from __future__ import annotations

import importlib
import inspect
import json

import pytest

from teacache_trt import TeaCacheError
from teacache_trt.export import cli
from teacache_trt.export.exporter import export_model, resolve_axes
from teacache_trt.families import get_family
from models import FAMILIES, wan

WAN = get_family("wan")
ROPE64 = dict(wan.TINY, num_layers=1, rope_max_seq_len=64)


def config_of(family, kwargs) -> dict:
    """The config a diffusers model built from ``kwargs`` would save (its defaults filled in)."""
    params = inspect.signature(family.model_class().__init__).parameters
    return {**{k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty},
            **kwargs, "_class_name": family.class_name}


def test_wan_defaults_stop_at_the_rope_table():
    axes = resolve_axes(WAN, None, config_of(WAN, ROPE64))
    # 64 positions per axis, 2 latent rows / columns per patch: 128 at most (the family's 160 cut)
    assert axes["height"] == [2, 60, 128] and axes["width"] == [2, 104, 128] and axes["frames"] == [1, 21, 21]
    real = resolve_axes(WAN, None, config_of(WAN, wan.REAL_CONFIG))  # rope_max_seq_len 1024: no cut
    assert real["height"] == [2, 60, 160]


def test_wan_with_a_short_rope_table_exports_at_default_axes(tmp_path):
    """Before the limits, this export failed after every graph: "input 'rotary_cos' has size 10
    on dim 3 ... exported with 12" (the model's table slice came out shorter at the profile's max)."""
    from diffusers import WanTransformer3DModel

    WanTransformer3DModel(**ROPE64).save_pretrained(tmp_path / "model")
    manifest = export_model(tmp_path / "model", tmp_path / "art", build="none", log=lambda m: None)
    assert manifest.axes["height"] == [2, 60, 128]
    assert manifest.graphs["embed"].profile["hidden_states"]["max"][3] == 128


@pytest.mark.parametrize("name, kwargs, axis, message", [
    ("wan", ROPE64, "height=2:60:160",
     "height at most 128 (the RoPE table holds 64 positions per axis, 2 latent rows per patch; config key "
     "rope_max_seq_len=64); use --axis height=2:60:128"),
    ("wan", ROPE64, "frames=1:21:80", "frames at most 64 "),
    ("hidream", {"max_resolution": (64, 64)}, "size=2:64:128", "config key max_resolution=[64, 64]); use --axis size=2:64:64"),
    ("cosmos", {"max_size": (16, 60, 60)}, "width=2:60:64", "config key max_size=[16, 60, 60]); use --axis width=2:60:60"),
    ("lumina2", {"axes_lens": (300, 32, 32)}, "height=2:64:128", "config key axes_lens=[300, 32, 32]); use --axis height=2:64:64"),
    ("lumina2", {"axes_lens": (100, 512, 512)}, "txt_seq=8:100:200", "txt_seq at most 99 "),
    ("latte", {"video_length": 16}, "frames=16:16:24", "config key video_length=16"),
])
def test_a_range_beyond_the_config_is_refused_before_loading(tmp_path, capsys, name, kwargs, axis, message):
    spec = importlib.import_module(f"models.{name}")
    fam = get_family(spec.FAMILY)
    config = config_of(fam, {**getattr(spec, "REAL_CONFIG", {}), **kwargs} if name != "wan" else kwargs)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config, default=list))  # no weights
    assert cli.main([str(tmp_path / "model"), "--out", str(tmp_path / "art"), "--axis", axis, "--build", "none"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("name", [n for n in FAMILIES if hasattr(importlib.import_module(f"models.{n}"), "REAL_CONFIG")])
def test_default_profiles_of_real_configs_stay_inside_their_limits(name):
    spec = importlib.import_module(f"models.{name}")
    fam = get_family(spec.FAMILY) if not hasattr(spec, "FAMILY_MODULE") else None
    if fam is None:
        pytest.skip(f"{name}: a family outside diffusers (no config limits)")
    for attr in [a for a in dir(spec) if a == "REAL_CONFIG" or a.startswith("REAL_CONFIG_")]:
        config = config_of(fam, getattr(spec, attr))
        limits = fam.axis_limits(config)
        for axis in fam.default_axes(config):
            if axis.name in limits:
                assert axis.max <= limits[axis.name].max, (attr, axis)


def test_list_families_needs_no_model(capsys):
    assert cli.main(["--list-families"]) == 0
    out = capsys.readouterr().out
    assert "wan (WanTransformer3DModel)" in out and "flux (FluxTransformer2DModel)" in out
    ti2v = next(line for line in out.splitlines() if "Wan2.2-TI2V-5B" in line)
    assert "threshold 0.26" in ti2v and "LightX2V" in ti2v
    expert = next(line for line in out.splitlines() if "Wan2.2-T2V-A14B-low" in line)
    assert "none published for this expert" in expert and "Wan2.1-T2V-14B" in expert
    # every built-in family says where its coefficients come from (families loaded from files by
    # earlier tests in the session, e.g. the custom-family examples, are listed too and may not)
    from teacache_trt.families import all_families

    builtin = [f for f in all_families() if f.__module__.startswith("teacache_trt.families")]
    assert len(builtin) >= 15
    for fam in builtin:
        assert all(v.source or fam.coefficients_source for v in fam.variants.values()), fam.name


def test_list_axes_of_a_family_without_a_model(capsys):
    assert cli.main(["--family", "wan", "--list-axes", "--axis", "height=2:90:160"]) == 0
    out = capsys.readouterr().out
    assert "the family's defaults" in out and "height=2:90:160" in out and "txt_seq=1:512:512" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["--list-axes"])
    assert exc.value.code == 2 and "--list-axes with MODEL_DIR or --family NAME" in capsys.readouterr().err
    with pytest.raises(TeaCacheError, match="unknown model family 'sdxl'"):
        cli._main(cli.build_parser().parse_args(["--family", "sdxl", "--list-axes"]))
