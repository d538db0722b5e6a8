"""Train the tiny class-conditional FLUX transformer on 16x16 digits.

    python -m teacache_trt.digits.train --out DIR [--minutes M] [--seed S] [--steps N]

Rectified flow, as FLUX itself is trained: x_t = (1-t) x0 + t * noise and the
model predicts v = noise - x0. The timestep goes in as t in [0, 1] because
FluxTransformer2DModel multiplies it by 1000 internally.

Default: 600 steps of batch 64 (about 5-6 minutes on 2 free CPU cores; the
loss plateaus near 0.19 and the samples classify at ~100 %).

On a shared machine, start it with OMP_WAIT_POLICY=PASSIVE: spinning OpenMP
threads competing with other processes slowed training ~5x here (the
setting does not change the numerics).

Reproducibility: the learning-rate schedule and all randomness depend only on
the step index and the seed, never on wall time; ``--minutes`` is only a
safety cap (if it triggers, the run is shorter and the info file says so).
Same seed + same thread count + same torch build gives the same weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..dtypes import PRECISIONS
from ..files import atomic_write_bytes
from .conditioning import LabelEmbedder
from .data import (
    NULL_LABEL,
    NUM_TEXT_TOKENS,
    TOKEN_CHANNELS,
    load_digits_16,
    make_img_ids,
    make_txt_ids,
    pack_tokens,
    random_shift,
)

# ~2.3 M parameters. inner_dim = 4 heads * 32 = 128; the rope axes (8, 12, 12)
# add up to attention_head_dim = 32 as FluxPosEmbed requires. in_channels = 4
# because one token is a 2x2 patch of a 1-channel image.
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=TOKEN_CHANNELS,
    out_channels=None,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    pooled_projection_dim=64,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)

LABEL_EMBEDDER_CONFIG = dict(
    num_tokens=NUM_TEXT_TOKENS,
    joint_attention_dim=TRANSFORMER_CONFIG["joint_attention_dim"],
    pooled_projection_dim=TRANSFORMER_CONFIG["pooled_projection_dim"],
)


def build_transformer(config: dict | None = None):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**(config or TRANSFORMER_CONFIG))


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of base_lr (a function of the step only)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def sample_t(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Logit-normal t (SD3 / FLUX style): more samples at mid noise levels where the task is hardest."""
    return torch.sigmoid(torch.randn(batch, generator=generator))


def flow_loss(transformer, embedder, x0, labels, t, noise, img_ids, txt_ids) -> torch.Tensor:
    """Rectified-flow velocity MSE for one batch of images (B,1,16,16)."""
    tt = t.view(-1, 1, 1, 1)
    x_t = (1.0 - tt) * x0 + tt * noise
    target = pack_tokens(noise - x0)
    enc, pooled = embedder(labels)
    pred = transformer(
        hidden_states=pack_tokens(x_t),
        encoder_hidden_states=enc,
        pooled_projections=pooled,
        timestep=t,
        img_ids=img_ids,
        txt_ids=txt_ids,
        return_dict=False,
    )[0]
    return F.mse_loss(pred, target)


@torch.no_grad()
def ema_update(ema_params, params, decay: float) -> None:
    for e, p in zip(ema_params, params):
        e.lerp_(p, 1.0 - decay)


def train(
    out: str,
    minutes: float = 12.0,
    seed: int = 0,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup: int = 50,
    label_dropout: float = 0.1,
    max_shift: int = 1,
    ema_decay: float = 0.995,
    save_dtype: str = "fp16",
    threads: int = 2,
    log_every_s: float = 30.0,
) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)  # one generator drives data, t, noise and dropout

    images, labels = load_digits_16()
    n = images.shape[0]
    img_ids = make_img_ids()
    txt_ids = make_txt_ids(NUM_TEXT_TOKENS)

    transformer = build_transformer()
    embedder = LabelEmbedder(**LABEL_EMBEDDER_CONFIG)
    # Start from a zero velocity prediction: the first steps then learn the mean flow instead of undoing noise.
    torch.nn.init.zeros_(transformer.proj_out.weight)
    torch.nn.init.zeros_(transformer.proj_out.bias)
    transformer.train()
    embedder.train()
    params = list(transformer.parameters()) + list(embedder.parameters())
    n_params = count_parameters(transformer)
    print(f"transformer parameters: {n_params:,}  label embedder: {count_parameters(embedder):,}", flush=True)

    # EMA copies are what gets saved: averaged weights sample visibly cleaner than the last iterate.
    ema_transformer = copy.deepcopy(transformer).eval().requires_grad_(False)
    ema_embedder = copy.deepcopy(embedder).eval().requires_grad_(False)
    ema_params = list(ema_transformer.parameters()) + list(ema_embedder.parameters())

    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)

    start = time.time()
    last_log = start
    running, running_n = 0.0, 0
    perm, pos = torch.randperm(n, generator=gen), 0
    step = 0
    stopped_by_time = False
    while step < steps:
        if time.time() - start > minutes * 60.0:
            stopped_by_time = True
            break
        if pos + batch_size > n:  # reshuffle each epoch
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size

        x0 = images[idx]
        if max_shift > 0:
            x0 = random_shift(x0, max_shift, gen)
        y = labels[idx].clone()
        y[torch.rand(batch_size, generator=gen) < label_dropout] = NULL_LABEL
        t = sample_t(batch_size, gen)
        noise = torch.randn(x0.shape, generator=gen)

        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        loss = flow_loss(transformer, embedder, x0, y, t, noise, img_ids, txt_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # Warm-started EMA so early weights do not dominate a short run.
        ema_update(ema_params, params, min(ema_decay, (1 + step) / (10 + step)))

        running += loss.item()
        running_n += 1
        step += 1
        now = time.time()
        if now - last_log >= log_every_s or step == steps:
            print(
                f"step {step:5d}/{steps}  loss {running / running_n:.4f}  "
                f"lr {opt.param_groups[0]['lr']:.2e}  elapsed {now - start:6.1f}s",
                flush=True,
            )
            last_log = now
            final_loss = running / running_n
            running, running_n = 0.0, 0
    if running_n:
        final_loss = running / running_n
    elapsed = time.time() - start

    info = dict(
        seed=seed,
        steps_done=step,
        steps_planned=steps,
        stopped_by_time=stopped_by_time,
        train_seconds=round(elapsed, 1),
        final_loss=round(final_loss, 5),
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        label_dropout=label_dropout,
        max_shift=max_shift,
        ema_decay=ema_decay,
        threads=threads,
        torch_version=torch.__version__,
        transformer_parameters=n_params,
        save_dtype=save_dtype,
    )
    save(out, ema_transformer, ema_embedder, save_dtype, info)
    print(f"done: {step} steps in {elapsed:.0f}s, final loss {final_loss:.4f}; saved to {out}", flush=True)
    return info


def save_transformer(transformer, dtype: torch.dtype, folder: str) -> None:
    """``transformer`` saved in ``dtype`` (a copy: the caller's module keeps its own), without
    diffusers' warning about casting with ``to()``: the bundled models are saved in fp16 to keep
    the repository small and loaded in fp32 (CPU fp16 is slow), so it does not apply."""
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        copy.deepcopy(transformer).to(dtype).save_pretrained(folder, safe_serialization=True)
    finally:
        dlogging.set_verbosity(verbosity)


def save(out: str, transformer, embedder, save_dtype: str, info: dict) -> None:
    """Write a folder DigitsPipeline.from_pretrained can read: transformer/, scheduler/, label embedder."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    dtype = PRECISIONS[save_dtype]
    os.makedirs(out, exist_ok=True)
    save_transformer(transformer, dtype, os.path.join(out, "transformer"))
    embedder.save_pretrained(out, dtype=dtype)
    FlowMatchEulerDiscreteScheduler(shift=1.0).save_pretrained(os.path.join(out, "scheduler"))
    atomic_write_bytes(Path(out) / "training_info.json", json.dumps(info, indent=2).encode())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (gets transformer/, scheduler/, label embedder)")
    p.add_argument("--minutes", type=float, default=12.0, help="wall-time cap (safety stop)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=600, help="optimizer steps; fixes the LR schedule")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--save-dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    train(
        a.out,
        minutes=a.minutes,
        seed=a.seed,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        save_dtype=a.save_dtype,
        threads=a.threads,
    )


if __name__ == "__main__":
    main()
