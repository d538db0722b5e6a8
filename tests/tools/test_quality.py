import pytest
import torch

from teacache_trt.tools.quality import psnr, ssim


def test_identical_images():
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_psnr_of_known_error():
    x = torch.zeros(2, 1, 8, 8)
    # MSE 0.01 over a data range of 2 -> 10*log10(4/0.01) = 26.02 dB
    assert psnr(x + 0.1, x) == pytest.approx(torch.full((2,), 26.0206, dtype=torch.float64), abs=1e-3)


def test_ssim_orders_by_degradation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
    small = x + 0.05 * torch.randn(x.shape, generator=g)
    large = x + 0.5 * torch.randn(x.shape, generator=g)
    s_small, s_large = ssim(small, x).mean(), ssim(large, x).mean()
    assert 1 > s_small > s_large > -1
    assert psnr(small, x).mean() > psnr(large, x).mean()
