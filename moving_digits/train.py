"""Train the bundled Wan video transformer on moving digits.

    python -m teacache_trt.moving_digits.train --out DIR [--steps N] [--batch-size B] [--seed S]

Flow matching as Wan is trained: x_t = (1 - t) x0 + t * noise, the model predicts the
velocity noise - x0 and reads ``timestep = t * 1000`` (the scheduler's sigma * 1000, what the
pipeline passes).  Each optimizer step draws one clip length in 5..9 frames for its batch;
one prompt in ten is replaced by the null prompt, so the model also learns the unconditional
branch that classifier-free guidance needs (the clip's box track, the 17th input channel, stays).

Writes DIR/transformer/, DIR/scheduler/, the prompt embedder, ``training_info.json`` (time,
steps, final loss, settings) and ``loss_curve.png``.  The defaults reproduce the bundled
weights; on the project's 2-core CPU machine that took the time ``model/training_info.json``
records.  On a shared machine start it with OMP_WAIT_POLICY=PASSIVE (spinning OpenMP
threads competing with other processes slow training several times; the numerics do not
change).

Reproducibility: the learning-rate schedule and all randomness depend only on the step and
the seed, never on wall time; ``--minutes`` is a safety cap only (if it stops the run, the
info file says so).  Same seed, thread count and torch build give the same weights.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import options
from ..dtypes import PRECISIONS
from ..files import atomic_write_bytes

# the digits model's training schedule and bookkeeping, shared (same learning-rate curve and EMA)
from ..digits.train import count_parameters, ema_update, lr_at, save_transformer
from .conditioning import PromptEmbedder
from .constants import LATENT_CHANNELS, TRACK_CHANNELS, MAX_FRAMES, MIN_FRAMES
from .data import load_digits, random_clips, to_latents, with_track

# 2.7 M parameters: 4 blocks of width 192 (6 heads of 32; the RoPE splits a head into 12
# frame, 10 row and 10 column channels).  Everything else is Wan2.1's own configuration
# (cross-attention norm, RMS q/k norm across heads, 256 sinusoidal time channels).
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=6,
    attention_head_dim=32,
    in_channels=LATENT_CHANNELS + TRACK_CHANNELS,  # the latents and the box track
    out_channels=LATENT_CHANNELS,
    text_dim=64,
    freq_dim=256,
    ffn_dim=768,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=32,
)
SCHEDULER_CONFIG = dict(shift=1.0)  # FlowMatchEulerDiscreteScheduler


def build_transformer(config: dict | None = None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**(config or TRANSFORMER_CONFIG))


def shift_sigma(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow schedulers' time shift: shift > 1 moves noise levels towards pure noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_t(batch: int, generator: torch.Generator, shift: float = 1.0) -> torch.Tensor:
    """Logit-normal t (more samples at mid noise levels, where the task is hardest), shifted
    like the sampler's noise levels."""
    return shift_sigma(torch.sigmoid(torch.randn(batch, generator=generator)), shift)


def draw_frames(generator: torch.Generator) -> int:
    """The clip length of one optimizer step's batch."""
    return int(torch.randint(MIN_FRAMES, MAX_FRAMES + 1, (1,), generator=generator))


def flow_loss(transformer, embedder, x0, track, digits, directions, speeds, t, noise) -> torch.Tensor:
    """Velocity MSE for one batch of latents (B, 16, F, 8, 8) and their box tracks."""
    tt = t.view(-1, 1, 1, 1, 1)
    x_t = (1.0 - tt) * x0 + tt * noise
    pred = transformer(hidden_states=with_track(x_t, track), timestep=t * 1000.0,
                       encoder_hidden_states=embedder(digits, directions, speeds), return_dict=False)[0]
    return F.mse_loss(pred, noise - x0)


@torch.no_grad()
def drop_conditions(digits, directions, speeds, null, p: float, generator: torch.Generator):
    """Replace a fraction p of the prompts by the null prompt (all three tokens at once)."""
    drop = torch.rand(digits.shape[0], generator=generator) < p
    return tuple(torch.where(drop, torch.full_like(x, n), x) for x, n in zip((digits, directions, speeds), null))


def train(
    out: str,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup: int = 100,
    cond_dropout: float = 0.1,
    ema_decay: float = 0.998,
    seed: int = 0,
    minutes: float = 45.0,
    save_dtype: str = "fp16",
    threads: int = 2,
    t_shift: float = 1.0,
    config: dict | None = None,
    progress: bool = True,
    checkpoint_every: int = 0,
) -> dict:
    from tqdm import tqdm

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # one generator drives data, t, noise and dropout
    config = dict(config or TRANSFORMER_CONFIG)

    images, labels = load_digits()
    transformer = build_transformer(config)
    embedder = PromptEmbedder(text_dim=config["text_dim"])
    # Start from a zero velocity: the first steps learn the mean flow instead of undoing noise.
    torch.nn.init.zeros_(transformer.proj_out.weight)
    torch.nn.init.zeros_(transformer.proj_out.bias)
    transformer.train()
    embedder.train()
    params = list(transformer.parameters()) + list(embedder.parameters())
    n_params = count_parameters(transformer)

    # The EMA copies are what gets saved: averaged weights sample cleaner than the last iterate.
    ema_transformer = copy.deepcopy(transformer).eval().requires_grad_(False)
    ema_embedder = copy.deepcopy(embedder).eval().requires_grad_(False)
    ema_params = list(ema_transformer.parameters()) + list(ema_embedder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)

    losses: list[float] = []
    start = time.time()
    stopped_by_time = False
    bar = tqdm(total=steps, desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    step = 0
    while step < steps:
        if time.time() - start > minutes * 60.0:
            stopped_by_time = True
            break
        frames = draw_frames(gen)
        # the track stays when the prompt is dropped: both CFG branches read it, as both read
        # an image-to-video model's image
        pixels, digits, directions, speeds, track = random_clips(images, labels, batch_size, frames, gen)
        digits, directions, speeds = drop_conditions(digits, directions, speeds, embedder.null, cond_dropout, gen)
        x0 = to_latents(pixels)
        t = sample_t(batch_size, gen, t_shift)
        noise = torch.randn(x0.shape, generator=gen)

        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        loss = flow_loss(transformer, embedder, x0, track, digits, directions, speeds, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # Warm-started EMA so that the first weights do not dominate.
        ema_update(ema_params, params, min(ema_decay, (1 + step) / (10 + step)))

        losses.append(loss.item())
        step += 1
        bar.update(1)
        if step % 10 == 0 or step == steps:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", frames=frames)
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            save(os.path.join(out, "checkpoints", f"step_{step:05d}"), ema_transformer, ema_embedder, save_dtype,
                 dict(steps_done=step, train_seconds=round(time.time() - start, 1),
                      loss=round(sum(losses[-100:]) / len(losses[-100:]), 5)))
    bar.close()
    elapsed = time.time() - start
    final_loss = sum(losses[-100:]) / max(1, len(losses[-100:]))

    info = dict(
        seed=seed, steps_done=step, steps_planned=steps, stopped_by_time=stopped_by_time,
        train_seconds=round(elapsed, 1), final_loss=round(final_loss, 5),
        final_loss_window="mean of the last 100 steps' batch losses",
        batch_size=batch_size, frames=[MIN_FRAMES, MAX_FRAMES], lr=lr, warmup=warmup,
        cond_dropout=cond_dropout, ema_decay=ema_decay, t_shift=t_shift, threads=threads, torch_version=torch.__version__,
        transformer_parameters=n_params, prompt_embedder_parameters=count_parameters(embedder),
        save_dtype=save_dtype,
    )
    save(out, ema_transformer, ema_embedder, save_dtype, info)
    plot_losses(losses, os.path.join(out, "loss_curve.png"))
    print(f"done: {step} steps in {elapsed:.0f}s, final loss {final_loss:.4f}; saved to {out}", flush=True)
    return info


def save(out: str, transformer, embedder, save_dtype: str, info: dict) -> None:
    """A folder MovingDigitsPipeline.from_pretrained reads: transformer/, scheduler/, prompt embedder."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    dtype = PRECISIONS[save_dtype]
    os.makedirs(out, exist_ok=True)
    save_transformer(transformer, dtype, os.path.join(out, "transformer"))
    embedder.save_pretrained(out, dtype=dtype)
    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(os.path.join(out, "scheduler"))
    atomic_write_bytes(Path(out) / "training_info.json", json.dumps(info, indent=2).encode())


def plot_losses(losses: list[float], path: str, window: int = 50) -> None:
    """Per-step batch losses and their running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, color="0.75", linewidth=0.6, label="batch loss")
    if len(losses) >= window:
        kernel = torch.ones(window) / window
        smooth = torch.conv1d(torch.tensor(losses).view(1, 1, -1), kernel.view(1, 1, -1)).flatten()
        ax.plot(range(window, len(losses) + 1), smooth.tolist(), color="C0", label=f"mean of {window}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("flow-matching loss (velocity MSE)")
    ax.set_yscale("log")
    ax.set_title("moving digits: Wan transformer training")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def main(argv=None) -> None:
    p = options.Parser(prog="python -m teacache_trt.moving_digits.train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=options.output_folder,
                   help="output folder (gets transformer/, scheduler/, the prompt embedder)")
    p.add_argument("--steps", type=options.integer(1), default=3000, help="optimizer steps; fixes the LR schedule")
    p.add_argument("--batch-size", type=options.integer(1), default=32)
    p.add_argument("--lr", type=options.number(0.0), default=1e-3)
    p.add_argument("--seed", type=options.integer(0), default=0)
    p.add_argument("--minutes", type=options.number(0.0), default=45.0, help="wall-time cap (a safety stop)")
    p.add_argument("--save-dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--threads", type=options.integer(1), default=2)
    p.add_argument("--t-shift", type=options.number(0.0), default=1.0)
    p.add_argument("--checkpoint-every", type=options.integer(0), default=0,
                   help="also save the averaged weights every N steps under DIR/checkpoints/ (0: never)")
    a = p.parse_args(argv)
    train(str(a.out), steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, minutes=a.minutes,
          save_dtype=a.save_dtype, threads=a.threads, t_shift=a.t_shift, checkpoint_every=a.checkpoint_every)


if __name__ == "__main__":
    main()
