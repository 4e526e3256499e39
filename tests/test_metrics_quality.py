"""PSNR, SSIM and key-space bits, checked against scikit-image and direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from keyveil import Key, schemes
from keyveil.metrics import key_space_bits, psnr, ssim


def _pair(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8), (y * 255).round().to(torch.uint8)
    return x, y


@pytest.mark.parametrize("shape", [(2, 3, 32, 29), (3, 1, 28, 28), (1, 3, 11, 40)])
def test_ssim_gaussian_matches_skimage(shape):
    x, y = _pair(shape)
    ours = ssim(x, y)
    ref = [structural_similarity(a.numpy(), b.numpy(), channel_axis=0, data_range=1.0, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False) for a, b in zip(x, y)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-10)


def test_ssim_uniform_matches_skimage_default_uint8():
    x, y = _pair((2, 3, 20, 24), seed=1, dtype=torch.uint8)
    ours = ssim(x, y, gaussian=False)
    ref = [structural_similarity(a.numpy(), b.numpy(), channel_axis=0, data_range=255) for a, b in zip(x, y)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-10)


def test_ssim_two_dimensional_and_identity():
    x, y = _pair((30, 30), seed=2)
    ref = structural_similarity(x.numpy(), y.numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert float(ssim(x, y)[0]) == pytest.approx(ref, abs=1e-10)
    assert float(ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-12)


def test_psnr_matches_skimage():
    x, y = _pair((3, 3, 16, 16), seed=3, dtype=torch.uint8)
    ours = psnr(x, y)
    ref = [peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=255) for a, b in zip(x, y)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12)


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(1, 1, 20, 20), torch.rand(1, 1, 20, 21))
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="odd"):
        ssim(torch.rand(1, 1, 20, 20), torch.rand(1, 1, 20, 20), gaussian=False, win_size=6)


def test_key_space_bits_delegates_and_matches_log_factorial():
    key = Key.from_seed(0)
    direct = sum(math.log2(k) for k in range(1, 1025))  # log2(1024!)
    assert key_space_bits("pixel", (3, 32, 32)) == pytest.approx(direct, rel=1e-12)
    etc = schemes.create("etc", key)
    assert key_space_bits(etc, (3, 32, 32)) == etc.key_space_bits((3, 32, 32))
    assert key_space_bits(etc, (3, 32, 32), cap_by_secret=True) == 256.0
    assert math.isinf(key_space_bits("mix", (3, 32, 32)))
