"""Score a DigitsPipeline: generate N digits per class and classify them.

    python -m teacache_trt.digits.evaluate [--model DIR] [--steps 20] [--guidance 3.0] [--seed 0] [--grid out.png]
"""

from __future__ import annotations

import argparse
import time

import torch

from .classifier import accuracy, get_classifier
from .data import NUM_CLASSES


def grid_labels(per_class: int = 10) -> torch.Tensor:
    """0,0,..,1,1,..: with per_class == 10 and a 10-wide grid, row i holds digit i."""
    return torch.arange(NUM_CLASSES).repeat_interleave(per_class)


def evaluate(
    pipe,
    per_class: int = 10,
    num_inference_steps: int = 20,
    guidance_scale: float = 3.0,
    seed: int = 0,
    batch_size: int | None = None,
) -> dict:
    """Generate ``per_class`` digits of every class (fixed seed) and return accuracy, timing and the images.

    ``batch_size`` None generates everything in one pipeline call.
    """
    labels = grid_labels(per_class)
    bs = batch_size or len(labels)
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    start = time.perf_counter()
    for i in range(0, len(labels), bs):
        out = pipe(
            labels[i : i + bs],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pt",
        )
        chunks.append(out.images)
    seconds = time.perf_counter() - start
    images = torch.cat(chunks)
    return dict(
        accuracy=accuracy(images, labels),
        seconds=seconds,
        num_images=len(labels),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        images=images,
        labels=labels,
    )


def main(argv=None) -> None:
    from .pipeline import DigitsPipeline, save_grid

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the bundled digits/model)")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid", default=None, help="write a PNG grid of the samples here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    clf = get_classifier()
    print(f"classifier held-out accuracy: {clf.heldout_accuracy:.4f} (shifted +-1px: {clf.heldout_accuracy_shifted:.4f})")
    pipe = DigitsPipeline.from_pretrained(a.model)
    r = evaluate(pipe, a.per_class, a.steps, a.guidance, a.seed)
    print(
        f"{r['num_images']} digits, {a.steps} steps, guidance {a.guidance}, seed {a.seed}: "
        f"accuracy {r['accuracy']:.4f}, sampling {r['seconds']:.2f}s"
    )
    if a.grid:
        save_grid(r["images"], a.grid, nrow=10)
        print(f"grid written to {a.grid}")


if __name__ == "__main__":
    main()
