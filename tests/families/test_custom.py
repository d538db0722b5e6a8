"""Families for models outside diffusers: ``--family-module`` and ``family_module=``, the
ModuleFamily folder format, and the errors a user meets on the way."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import teacache_trt
from models import opensora, opensora_plan
from teacache_trt import TeaCacheError
from teacache_trt.export import cli
from teacache_trt.families import get_family, load_family_module

ROOT = Path(__file__).resolve().parents[2]
FILE_SPEC = "tests/models/opensora.py:OpenSora"  # as a user types it, from the repository root
AXES = ["--axis", "frames=1:2:3", "--axis", "height=2:4:8", "--axis", "width=2:6:8", "--axis", "txt_seq=2:5:8",
        "--batch", "1:2:2"]


def test_both_spec_forms_load_and_register(monkeypatch):
    monkeypatch.chdir(ROOT)
    by_path = load_family_module(FILE_SPEC)
    by_name = load_family_module(opensora_plan.FAMILY_MODULE)
    assert by_path.name == "opensora_stdit" and by_path.class_name == "STDiT"  # from module_class
    assert by_name is opensora_plan.OpenSoraPlan
    assert get_family("opensora_stdit") is by_path and load_family_module(FILE_SPEC) is by_path  # loaded once


def test_cli_list_axes_and_rerun_with_a_file_path(exported, tmp_path, monkeypatch, capsys):
    ex = exported("opensora")
    monkeypatch.chdir(ROOT)
    assert cli.main([str(ex.model_dir), "--out", "unused", "--family-module", FILE_SPEC, "--list-axes"]) == 0
    assert "frames=1:2:3" in capsys.readouterr().out
    art = ex.copy(tmp_path / "art")
    assert cli.main([str(ex.model_dir), "--out", str(art), "--build", "none", "--family-module", ex.family_module,
                     *AXES]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert ex.manifest.family_module == ex.family_module and ex.manifest.class_name == "STDiT"


def test_loading_needs_the_family_module_named(exported, tmp_path):
    ex = exported("opensora_plan")
    art = ex.copy(tmp_path / "art")
    manifest = (art / "manifest.json").read_text().replace('"opensora_plan"', '"someone_elses_dit"')
    (art / "manifest.json").write_text(manifest)
    with pytest.raises(TeaCacheError, match=r"custom family 'someone_elses_dit' from 'models.opensora_plan:Open"
                                            r"SoraPlan': pass family_module="):
        teacache_trt.load_transformer(art)
    with pytest.raises(TeaCacheError, match="exported for family 'someone_elses_dit'; family module .* defines"):
        teacache_trt.load_transformer(art, family_module=ex.family_module)


def test_torch_backend_builds_the_module_from_its_folder(exported):
    # No model given: ModuleFamily.load_model builds it from config.json and model.safetensors.
    ex = exported("opensora_plan")
    t = teacache_trt.load_transformer(ex.art_dir, backend="torch", threshold=0, family_module=ex.family_module)
    fam = ex.family
    kwargs = fam.kwargs_from_feed(fam.example_inputs(fam.config_of(ex.model), ex.spec.POINT, torch.float32))
    t.reset(1)
    got = t(**kwargs)
    assert isinstance(got, torch.Tensor)  # the module's own output type, not a diffusers output
    assert (got - ex.model(**kwargs)).abs().max().item() <= 1e-5


BAD_FAMILY = '''
from teacache_trt.families import ModuleFamily
import torch

class NotAFamily:
    pass

class Half(ModuleFamily):
    name = "half"
    module_class = torch.nn.Linear

class Flux(ModuleFamily):
    name = "flux"
    module_class = torch.nn.Linear
    model_inputs = ("x",)
    variants = {}
    axes = ()
    signal = "x"
    signal_dims = {}
    cached = ("x",)
    parts = classmethod(lambda cls, model, variant=None: {})
    input_dims = classmethod(lambda cls, config: {})
    example_inputs = classmethod(lambda cls, config, dims, dtype, seed=0: {})
'''


@pytest.mark.parametrize("attr, message", [
    ("Missing", r"has no 'Missing'; the Family classes it defines: \['Flux', 'Half'\]"),
    ("NotAFamily", "NotAFamily is type .* not a subclass of teacache_trt.families.Family"),
    ("Half", r"Half does not define inputs, variants, axes, signal, signal_dims, cached, parts\(\): "),
    ("Flux", "family name 'flux' of .* is taken by the built-in teacache_trt.families.flux.Flux"),
])
def test_bad_family_modules_fail_clearly(tmp_path, capsys, attr, message):
    path = tmp_path / "my_family.py"
    path.write_text(BAD_FAMILY)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    rc = cli.main([str(tmp_path / "model"), "--out", str(tmp_path / "art"), "--family-module", f"{path}:{attr}"])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


@pytest.mark.parametrize("spec, message", [
    ("nowhere.py:Fam", "family module file .*nowhere.py does not exist"),
    ("no_such_package.mod:Fam", "cannot import family module 'no_such_package.mod'"),
    ("models.opensora", "is not FILE.py:ClassName or package.module:ClassName"),
])
def test_unloadable_specs_fail_clearly(tmp_path, spec, message):
    with pytest.raises(TeaCacheError, match=message):
        load_family_module(spec)


def test_importing_a_broken_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('no weights here')\n")
    with pytest.raises(TeaCacheError, match=r"importing family module .*broken.py failed: RuntimeError: no weights"):
        load_family_module(f"{path}:Fam")


def test_opensora_modules_follow_upstream():
    assert opensora.OpenSora.variants["Open-Sora-1.2"].coefficients[0] == 217.546007
    assert opensora_plan.OpenSoraPlan.variants["Open-Sora-Plan-v1.1"].coefficients[0] == 205943.668


def test_a_declaration_imports_every_name_from_the_public_module():
    import teacache_trt.families as public

    for name in ("ANY_VALUE", "AUTO", "Axis", "ForcedSteps", "Input", "ModuleFamily", "Part", "TimestepScale",
                 "Variant", "criterion_sums", "latent_axes", "text_axis", "load_family_module"):
        assert name in public.__all__ and getattr(public, name) is not None, name


SIBLING_FAMILY = '''
from teacache_trt.families import ModuleFamily
from my_sibling_model import Tiny   # a file beside this one

class TinyFamily(ModuleFamily):
    name = "sibling_tiny"
    module_class = Tiny
'''


def test_a_family_file_imports_a_sibling_file(tmp_path):
    (tmp_path / "my_sibling_model.py").write_text("import torch\nclass Tiny(torch.nn.Linear):\n    pass\n")
    (tmp_path / "fam.py").write_text(SIBLING_FAMILY)
    with pytest.raises(TeaCacheError, match="does not define inputs"):  # imported fine; incomplete on purpose
        load_family_module(f"{tmp_path / 'fam.py'}:TinyFamily")


class _Out:
    pass


@pytest.mark.parametrize("returns, declared, message", [
    ((torch.ones(2, 3),), torch.Tensor, "returned a builtins.tuple, but the family .* declares output_type = "
                                        "Tensor: set output_type = tuple"),
    (torch.ones(2, 3), tuple, "returned a torch.Tensor, but .* declares output_type = tuple: set output_type = Tensor"),
])
def test_the_export_checks_the_declared_output_type(returns, declared, message):
    from teacache_trt.families import ModuleFamily

    class Fam(ModuleFamily):
        name = "output_type_check"
        module_class = torch.nn.Identity
        output_type = declared

    model = lambda **kwargs: returns  # noqa: E731 - the module's forward, as call_model calls it
    with pytest.raises(TeaCacheError, match=message):
        Fam.call_model(model, {})


def test_output_type_shapes_what_the_drop_in_returns():
    import dataclasses

    from teacache_trt.families import ModuleFamily

    @dataclasses.dataclass
    class Output:
        sample: torch.Tensor
        extra: int = 0

    class Fam(ModuleFamily):
        name = "output_type_wrap"
        module_class = torch.nn.Identity
        output_type = Output

    x = torch.ones(2, 3)
    assert Fam.call_model(lambda **kw: Output(x), {}) is x
    assert Fam.wrap_output(x, True) == Output(x) and Fam.wrap_output(x, False) == (x,)
    Fam.output_type = tuple
    assert Fam.wrap_output(x, True) == (x,)
    Fam.output_type = torch.Tensor
    assert Fam.wrap_output(x, True) is x and Fam.wrap_output(x, False) == (x,)


def test_a_batch_given_as_a_number_names_the_input_and_the_fix(exported, tmp_path):
    """The mistake behind torch.export's "Constraints violated (batch)": a declaration that
    fixes a size the other tensors take from an axis."""
    import shutil

    from teacache_trt.export.exporter import export_model

    example = ROOT / "examples" / "custom_family"
    for f in ("tiny_dit.py", "family.py"):
        shutil.copy(example / f, tmp_path / f)
    family = tmp_path / "family.py"
    text = family.read_text()
    family.write_text(text.replace('Input("y", ("batch", ', 'Input("y", (2, ').replace('"tiny_dit"', '"tiny_dit_b"'))
    spec = f"{family}:TinyDiTFamily"
    fam = load_family_module(spec)
    from tiny_dit import TinyDiT, TinyDiTConfig

    torch.manual_seed(0)
    fam.save_model(TinyDiT(TinyDiTConfig(depth=1)), tmp_path / "model")
    with pytest.raises(TeaCacheError, match=r"Likely cause: the embed graph's input 'y': the family's Input\('y'\) "
                                            r"has a number at dims \[0\], traced at the size of \['batch'\]; name the "
                                            r"axis there; the blocks graph's input 'text': the embed graph produced "
                                            r"it with its batch dim \(0\) fixed"):
        export_model(tmp_path / "model", tmp_path / "art", family_module=spec, build="none", log=lambda m: None)


def test_a_dynamic_entry_that_drops_dims_names_the_part_and_the_fix(tmp_path):
    """A custom part's ``dynamic`` entry that leaves out dims the graphs make dynamic: the export
    fails naming the part, the tensor, the dims and ``Part.dynamic``, not only torch's message."""
    import shutil

    from teacache_trt.export.exporter import export_model

    example = ROOT / "examples" / "custom_family"
    for f in ("tiny_dit.py", "family.py"):
        shutil.copy(example / f, tmp_path / f)
    family = tmp_path / "family.py"
    text = family.read_text().replace('"tiny_dit"', '"tiny_dit_d"')
    anchor = '    input_names = ("hidden", "text", "mask", "t_mlp")\n'
    assert anchor in text
    family.write_text(text.replace(anchor, anchor + '    dynamic = {"hidden": {1: "frames"}}\n'))
    spec = f"{family}:TinyDiTFamily"
    fam = load_family_module(spec)
    from tiny_dit import TinyDiT, TinyDiTConfig

    torch.manual_seed(0)
    fam.save_model(TinyDiT(TinyDiTConfig(depth=1)), tmp_path / "model")
    with pytest.raises(TeaCacheError, match=r"Likely cause: the blocks graph's input 'hidden': Blocks\.dynamic\["
                                            r"'hidden'\] leaves out dims \{0: 'batch'.*drop that entry"):
        export_model(tmp_path / "model", tmp_path / "art", family_module=spec, build="none", log=lambda m: None)
    assert not (tmp_path / "art" / "manifest.json").exists()
