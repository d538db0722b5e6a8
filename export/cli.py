"""``teacache-export MODEL_DIR --out ART_DIR``: the build step; ``teacache-export --check
ART_DIR``: verify every file of an artifact in full."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import quiet
from ..options import PRECISION_NAMES, Parser, run


MAX_SIZE = 2**31 - 1  # TensorRT and ONNX Runtime dimensions are 32-bit integers


def parse_range(text: str) -> tuple[int, int, int]:
    """``MIN:OPT:MAX`` or a single ``N`` (fixed size), each a size a graph dimension can hold."""
    try:
        values = [int(v) for v in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not MIN:OPT:MAX (integers)") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not MIN:OPT:MAX")
    too_big = [v for v in values if v > MAX_SIZE]
    if too_big:
        raise argparse.ArgumentTypeError(
            f"{str(too_big[0])[:24]}{'...' if len(str(too_big[0])) > 24 else ''} is larger than any input size: "
            f"graph dimensions are 32-bit (at most {MAX_SIZE}); give the largest size you will run")
    return tuple(values)


def parse_coefficients(text: str) -> list[float]:
    """``c0,c1,...``: finite numbers, numpy.poly1d order (highest degree first), any degree."""
    import math

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers (numpy.poly1d order, e.g. "
            f"498.65,-283.78,55.86,-3.82,0.26)") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every coefficient must be a finite number")
    return values


def parse_axis(text: str) -> tuple[str, tuple[int, int, int]]:
    name, sep, rng = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--axis {text!r} is not NAME=MIN:OPT:MAX")
    return name, parse_range(rng)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="teacache-export",
        description="Export a diffusers DiT as embed / blocks / head graphs with a TeaCache manifest, "
                    "verify them against PyTorch, and build engines.",
    )
    p.add_argument("model_dir", nargs="?",
                   help="diffusers transformer folder (config.json + safetensors) or a pipeline folder with transformer/")
    p.add_argument("--out", help="artifact folder to write: new, empty, or an earlier export (else --force)")
    p.add_argument("--family", help="model family or diffusers class name (default: the config's _class_name)")
    p.add_argument("--family-module", metavar="FILE.py:CLASS|MODULE:CLASS",
                   help="a Family class of your own, for a model outside diffusers (teacache_trt.families.custom); "
                        "its code runs on import")
    p.add_argument("--variant", help="coefficient set, e.g. CogVideoX1.5-5B (default: inferred from the config)")
    p.add_argument("--coefficients", type=parse_coefficients, metavar="C0,C1,...",
                   help="TeaCache coefficients replacing the variant's (comma-separated, numpy.poly1d order: "
                        "highest degree first, any degree); the variant keeps its signal, forced steps and "
                        "accumulation; recorded in the manifest")
    p.add_argument("--precision", choices=PRECISION_NAMES, default="fp32",
                   help="precision of the weights and floating-point graph inputs (default fp32)")
    p.add_argument("--batch", type=parse_range, help="batch size range MIN:OPT:MAX (CFG rows included)")
    p.add_argument("--axis", type=parse_axis, action="append", default=[],
                   help="profile range of a dynamic axis, NAME=MIN:OPT:MAX (repeatable); "
                        "see --list-axes for the family's axes")
    p.add_argument("--build", default="auto", choices=["auto", "none", "tensorrt", "tensorrt-rtx"],
                   help="engines to build (default auto: with a CUDA GPU present, the first TensorRT "
                        "flavour installed; without one, none, and the command that builds them "
                        "ahead of time is printed)")
    p.add_argument("--no-verify", action="store_true", help="skip the numerical checks against PyTorch")
    p.add_argument("--force", action="store_true",
                   help="redo every stage even if its inputs did not change; write into a folder that holds other files")
    p.add_argument("--check", metavar="ART_DIR",
                   help="verify every file of an exported artifact against its manifest (full sha256), then exit")
    p.add_argument("--list-axes", action="store_true",
                   help="print the axes with their ranges (defaults, or as --axis/--batch set them), then exit: "
                        "a model's (MODEL_DIR: its config's limits applied), or a family's (--family NAME, no model)")
    p.add_argument("--list-families", action="store_true",
                   help="print every family: its diffusers class, variants, default thresholds and where the "
                        "coefficients come from, then exit (no model needed)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    listing = args.list_families or (args.list_axes and (args.model_dir or args.family or args.family_module))
    if args.check is None and not listing and (args.model_dir is None or args.out is None):
        parser.error("give MODEL_DIR and --out ART_DIR to export, --check ART_DIR to verify an export, "
                     "--list-families, or --list-axes with MODEL_DIR or --family NAME")
    quiet.install()
    return run("teacache-export", lambda: _main(args))


def _main(args) -> int:
    from .exporter import export_model

    if args.check is not None:
        return check(args.check)
    if args.list_families:
        return list_families()
    axes = dict(args.axis)
    if args.batch:
        axes["batch"] = args.batch
    if args.list_axes:
        return list_axes(args.model_dir, args.family, args.family_module, axes)
    export_model(args.model_dir, args.out, family=args.family, family_module=args.family_module,
                 variant=args.variant, precision=args.precision, axes=axes, build=args.build,
                 force=args.force, verify=not args.no_verify, coefficients=args.coefficients)
    return 0


def list_axes(model_dir, family, family_module, overrides) -> int:
    """The axes of the model's family for its config, as an export would take them; without a
    model folder, the family's own defaults (a config may change them: patch sizes, tables)."""
    from ..families import find_model_dir, read_config
    from .exporter import config_values, resolve_axes, resolve_family, static_axes

    if model_dir is None:
        fam = resolve_family({}, family, family_module)
        src, config = Path("."), None
        print(f"# {fam.name} ({fam.class_name}): the family's defaults; a model's config may change them "
              f"(teacache-export MODEL_DIR --list-axes)")
    else:
        src = find_model_dir(model_dir)
        config = read_config(src)
    with config_values(src):
        if config is not None:
            fam = resolve_family(config, family, family_module)
        axes = resolve_axes(fam, overrides, config)
        fixed = static_axes(axes)
        for a in fam.default_axes(config):
            lo, opt, hi = axes[a.name]
            note = "  (fixed in the graphs)" if a.name in fixed else ""
            print(f"{a.name}={lo}:{opt}:{hi}  {a.help}{note}")
    return 0


def list_families() -> int:
    """Every registered family: class, variants with their default threshold and coefficient source."""
    from ..families import all_families

    for fam in sorted(all_families(), key=lambda f: f.name):
        print(f"{fam.name} ({fam.class_name})")
        width = max(len(v) for v in fam.variants)
        for v in fam.variants.values():
            source = v.source or fam.coefficients_source or "not stated"
            print(f"  {v.name:<{width}}  threshold {v.default_threshold:<5g} coefficients: {source}")
    return 0


def check(art_dir) -> int:
    """Every file of ``art_dir`` against its manifest: names, sizes, full sha256 (no cache)."""
    from ..artifact import Artifact

    t0 = time.perf_counter()
    art = Artifact.open(art_dir)
    manifest, size = art.manifest, art.verify_all()
    print(f"{art_dir}: {len(manifest.files)} files ({size / 1e6:.1f} MB) match the manifest "
          f"({manifest.family} {manifest.variant}, {manifest.precision}, {time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
