"""The benchmark FLUX config: a block stack that dominates the compute, small enough for a CPU.

    python scripts/make_bench_model.py /tmp/bench_flux
    teacache-export /tmp/bench_flux --out /tmp/bench_art --build none --axis img_seq=256:256:256 --axis txt_seq=32:32:32 --batch 1:1:1
    teacache-bench /tmp/bench_art --steps 20 --thresholds 0.25,0.4,0.6,0.8

6 double + 12 single blocks at width 256 (4 heads x 64) against an embed (x_embedder,
time/text embedders, rotary tables, block 0's norm1) and a head (norm_out, proj_out) that
are each a few small matmuls: the ratio of the two is what a skipped step costs.
Random weights (seeded): this measures speed, not image quality.
"""
from __future__ import annotations

import argparse
import sys


def make_model():
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=6, num_single_layers=12, attention_head_dim=64,
        num_attention_heads=4, joint_attention_dim=128, pooled_projection_dim=128,
        guidance_embeds=False, axes_dims_rope=(16, 24, 24),  # sums to attention_head_dim
    ).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to save the diffusers model to (save_pretrained)")
    args = p.parse_args(argv)
    model = make_model()
    model.save_pretrained(args.out)
    n = sum(t.numel() for t in model.parameters())
    print(f"saved FluxTransformer2DModel ({n / 1e6:.1f}M parameters) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
