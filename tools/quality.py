"""Image quality of a cached render against the uncached one: PSNR and SSIM.

Images are tensors (B, C, H, W) in [-1, 1] (a pipeline's ``output_type="pt"``) or [0, 1];
``data_range`` says which.  SSIM follows Wang et al. 2004 (Gaussian window, σ = 1.5,
K1 = 0.01, K2 = 0.03), with a 7-pixel window so that it fits small images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(images: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB (inf where identical)."""
    mse = (images.double() - reference.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _window(size: int, sigma: float, channels: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(images: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0,
         window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM over valid window positions."""
    x, y = images.double(), reference.double()
    c = x.shape[1]
    w = _window(window, sigma, c)
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    var_x = F.conv2d(x * x, w, groups=c) - mu_x**2
    var_y = F.conv2d(y * y, w, groups=c) - mu_y**2
    cov = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1)
