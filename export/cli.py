"""``teacache-export MODEL_DIR --out ART_DIR``: the build step."""
from __future__ import annotations

import argparse
import sys

from ..dtypes import PRECISIONS
from ..errors import TeaCacheError


def parse_range(text: str, what: str) -> tuple[int, int, int]:
    """``MIN:OPT:MAX`` or a single ``N`` (fixed size)."""
    try:
        values = [int(v) for v in text.split(":")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise TeaCacheError(f"{what} {text!r} is not MIN:OPT:MAX (integers) or a single size N")
    return tuple(values)


def parse_axis(text: str) -> tuple[str, tuple[int, int, int]]:
    name, sep, rng = text.partition("=")
    if not sep or not name:
        raise TeaCacheError(f"--axis {text!r} is not NAME=MIN:OPT:MAX (see --list-axes for the names)")
    return name, parse_range(rng, f"--axis {name}=")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="teacache-export",
        description="Export a diffusers DiT as embed / blocks / head graphs with a TeaCache manifest, "
                    "verify them against PyTorch, and build engines.",
    )
    p.add_argument("model_dir", help="diffusers transformer folder (config.json + safetensors) or a pipeline folder with transformer/")
    p.add_argument("--out", help="artifact folder to write (not needed with --list-axes)")
    p.add_argument("--family", help="model family or diffusers class name (default: the config's _class_name)")
    p.add_argument("--variant", help="coefficient set, e.g. CogVideoX1.5-5B (default: inferred from the config)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--batch", help="batch size range MIN:OPT:MAX (CFG rows included)")
    p.add_argument("--axis", action="append", default=[],
                   help="profile range of a dynamic axis, NAME=MIN:OPT:MAX (repeatable); "
                        "see --list-axes for the family's axes")
    p.add_argument("--build", default="auto", choices=["auto", "none", "tensorrt", "tensorrt-rtx"],
                   help="engines to build (default auto: with a CUDA GPU present, the first TensorRT "
                        "flavour installed; without one, none, and the command that builds them "
                        "ahead of time is printed)")
    p.add_argument("--no-verify", action="store_true", help="skip the numerical checks against PyTorch")
    p.add_argument("--force", action="store_true", help="redo every stage even if its inputs did not change")
    p.add_argument("--list-axes", action="store_true",
                   help="print the family's axes with their ranges (defaults, or as --axis/--batch set them), then exit")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        axes = dict(parse_axis(a) for a in args.axis)
        if args.batch:
            axes["batch"] = parse_range(args.batch, "--batch")
        if args.list_axes:
            return list_axes(args.model_dir, args.family, axes)
        if not args.out:
            raise TeaCacheError("--out ART_DIR is required (only --list-axes runs without it)")
        from .exporter import export_model

        export_model(args.model_dir, args.out, family=args.family, variant=args.variant,
                     precision=args.precision, axes=axes, build=args.build, force=args.force,
                     verify=not args.no_verify)
    except TeaCacheError as exc:
        print(f"teacache-export: error: {exc}", file=sys.stderr)
        return 2
    return 0


def list_axes(model_dir, family, overrides) -> int:
    """The axes of the model's family for its config, as an export would take them."""
    from ..families import find_model_dir, read_config
    from .exporter import resolve_axes, resolve_family, static_axes

    config = read_config(find_model_dir(model_dir))
    fam = resolve_family(config, family)
    axes = resolve_axes(fam, overrides, config)
    fixed = static_axes(axes)
    for a in fam.axes_for(config):
        lo, opt, hi = axes[a.name]
        note = "  (fixed in the graphs)" if a.name in fixed else ""
        print(f"{a.name}={lo}:{opt}:{hi}  {a.help}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
