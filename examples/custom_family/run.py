"""The custom-family example end to end: save a (randomly initialised) TinyDiT as a model
folder, export it with its family file, and sample it the way Open-Sora's RFLOW sampler does,
with the PyTorch module and with the exported graphs at two thresholds.

    python examples/custom_family/run.py --out /tmp/tiny_dit

The same steps from the shell: ``teacache-export OUT/model --out OUT/art --family-module
examples/custom_family/family.py:TinyDiTFamily`` (see docs/custom-families.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FAMILY_MODULE = f"{HERE / 'family.py'}:TinyDiTFamily"
SIZE = dict(batch=1, frames=2, height=8, width=8, txt_seq=4)  # latent sizes of one prompt; CFG doubles the rows


def family():
    from teacache_trt.families import load_family_module

    return load_family_module(FAMILY_MODULE)  # also puts this folder on sys.path


def save_model(model_dir: Path, seed: int = 0) -> Path:
    """A TinyDiT with seeded random weights, saved as config.json + model.safetensors."""
    fam = family()
    from tiny_dit import TinyDiT, TinyDiTConfig

    torch.manual_seed(seed)
    fam.save_model(TinyDiT(TinyDiTConfig()).eval(), model_dir)
    return model_dir


def export(model_dir: Path, art_dir: Path, log=print):
    from teacache_trt.export.exporter import export_model

    return export_model(model_dir, art_dir, family_module=FAMILY_MODULE, build="none", log=log)


def prompt(seed: int = 0):
    """Latent noise, a caption and its mask (the last token padded), and the unconditional caption."""
    g = torch.Generator().manual_seed(seed)
    cfg = family().build({}).config
    z = torch.randn(SIZE["batch"], cfg.in_channels, SIZE["frames"], SIZE["height"], SIZE["width"], generator=g)
    y = torch.randn(SIZE["batch"], SIZE["txt_seq"], cfg.caption_channels, generator=g)
    mask = torch.ones(SIZE["batch"], SIZE["txt_seq"], dtype=torch.int64)
    mask[:, -1] = 0
    return z, y, torch.zeros_like(y), mask


def rflow_sample(model, steps: int, guidance: float = 4.0, seed: int = 0) -> torch.Tensor:
    """Open-Sora's rectified-flow loop: timesteps 1000 sigma from 1000 down, CFG batched into
    one call, called positionally with an extra keyword, ``z += v * dt`` with dt > 0."""
    z, y, null_y, mask = prompt(seed)
    timesteps = [1000.0 * (1 - i / steps) for i in range(steps)] + [0.0]
    if hasattr(model, "reset"):
        model.reset(num_calls=steps)  # one call per step: one cache context ("default")
    for t, t_next in zip(timesteps, timesteps[1:]):
        z_in = torch.cat([z, z])
        t_in = torch.full((2 * z.shape[0],), t)
        v = model(z_in, t_in, torch.cat([y, null_y]), torch.cat([mask, mask]),
                  enable_temporal_attention=True, return_dict=False)[0]
        v_cond, v_uncond = v.chunk(2)
        z = z + (v_uncond + guidance * (v_cond - v_uncond)) * ((t - t_next) / 1000)
    return z


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the model and the artifact")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args(argv)
    import teacache_trt

    model_dir = save_model(args.out / "model")
    export(model_dir, args.out / "art")
    model = family().load_model(model_dir, "fp32")
    with torch.no_grad():
        want = rflow_sample(model, args.steps)
    for threshold in (0.0, args.threshold):
        t = teacache_trt.load_transformer(args.out / "art", threshold=threshold, family_module=FAMILY_MODULE)
        got = rflow_sample(t, args.steps)
        stats = t.stats
        print(f"threshold {threshold}: computed {len(stats['computed_steps'])} of {args.steps} steps, "
              f"max abs difference to the PyTorch module {(got - want).abs().max().item():.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
