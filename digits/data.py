"""Digits data set and FLUX token packing.

The images come from scikit-learn's bundled ``load_digits()`` (1797 grey 8x8
digits, values 0..16), so nothing is downloaded. They are upsampled to 16x16
so that 2x2 patches give 64 image tokens, the same packing FLUX applies to its
VAE latents.
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F

from ..errors import TeaCacheError
from .constants import (  # noqa: F401 - the sizes, defined where they import without torch
    IMAGE_SIZE, NULL_LABEL, NUM_CHANNELS, NUM_CLASSES, NUM_IMAGE_TOKENS, NUM_TEXT_TOKENS, PATCH_SIZE, TOKEN_CHANNELS,
)


def upsample_to_16(images8: torch.Tensor) -> torch.Tensor:
    """(N,1,8,8) raw 0..16 values -> (N,1,16,16) in [-1, 1] (bilinear)."""
    x = images8.float() / 16.0 * 2.0 - 1.0
    # align_corners=False keeps the digit centred; bilinear output stays inside [-1, 1].
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.clamp(-1.0, 1.0)


def sklearn(module: str):
    """``sklearn.<module>``: the demo's data set and classifier come from scikit-learn, which
    the ``demo`` extra installs (a plain ``pip install teacache-trt`` leaves it out)."""
    try:
        return importlib.import_module(f"sklearn.{module}")
    except ImportError as exc:
        raise TeaCacheError(
            f"the digits demo needs scikit-learn ({exc}): pip install -e '.[demo]' "
            f"(scripts/setup.sh installs it)"
        ) from exc


@functools.lru_cache(maxsize=1)
def _load_cached() -> tuple[torch.Tensor, torch.Tensor]:
    bunch = sklearn("datasets").load_digits()
    images8 = torch.from_numpy(bunch.images).float().unsqueeze(1)  # (N,1,8,8)
    labels = torch.from_numpy(bunch.target).long()
    return upsample_to_16(images8), labels


def load_digits_16() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits: images (N,1,16,16) float32 in [-1,1], labels (N,) int64 in 0..9.

    Returns fresh clones so callers may modify them in place.
    """
    images, labels = _load_cached()
    return images.clone(), labels.clone()


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random train/test split of range(n) (used by the classifier)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_test = int(round(n * test_fraction))
    return perm[n_test:], perm[:n_test]


def random_shift(images: torch.Tensor, max_shift: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y (augmentation).

    Pads with the background value -1 and crops, so no content wraps around.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    offs = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    out = torch.empty_like(images)
    for i in range(b):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def pack_tokens(images: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B, H/2*W/2, C*4): FLUX's 2x2 patch packing (same order as FluxPipeline._pack_latents)."""
    b, c, h, w = images.shape
    x = images.view(b, c, h // PATCH_SIZE, PATCH_SIZE, w // PATCH_SIZE, PATCH_SIZE)
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PATCH_SIZE) * (w // PATCH_SIZE), c * PATCH_SIZE * PATCH_SIZE)


def unpack_tokens(tokens: torch.Tensor, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> torch.Tensor:
    """(B, S, C*4) -> (B,C,H,W); inverse of :func:`pack_tokens`."""
    b, s, d = tokens.shape
    c = d // (PATCH_SIZE * PATCH_SIZE)
    x = tokens.reshape(b, height // PATCH_SIZE, width // PATCH_SIZE, c, PATCH_SIZE, PATCH_SIZE)
    x = x.permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def make_img_ids(height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> torch.Tensor:
    """(H/2*W/2, 3) position ids in the FLUX convention: channel 0 zero, 1 = row, 2 = col."""
    hh, ww = height // PATCH_SIZE, width // PATCH_SIZE
    ids = torch.zeros(hh, ww, 3)
    ids[..., 1] = torch.arange(hh).float()[:, None]
    ids[..., 2] = torch.arange(ww).float()[None, :]
    return ids.reshape(hh * ww, 3)


def make_txt_ids(num_tokens: int = NUM_TEXT_TOKENS) -> torch.Tensor:
    """(T, 3) all-zero text position ids, as FLUX uses for T5 tokens."""
    return torch.zeros(num_tokens, 3)
