"""Image-quality metrics used to score reconstructions: PSNR and SSIM.

Both are batched and run on any device. SSIM follows Wang et al. (2004) and
reproduces scikit-image's ``structural_similarity`` (tested against it): the
statistics are computed over every full window inside the image (no padding),
then averaged over positions and channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]


def _prepare(x: torch.Tensor, y: torch.Tensor, data_range: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 2:
        x, y = x[None, None], y[None, None]
    elif x.dim() == 3:
        x, y = x[None], y[None]
    elif x.dim() != 4:
        raise ValueError(f"expected (H,W), (C,H,W) or (B,C,H,W) images, got shape {tuple(x.shape)}")
    if data_range is None:
        data_range = 255.0 if x.dtype == torch.uint8 else 1.0
    return x.double(), y.to(x.device).double(), float(data_range)


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, one value per image.

    Args:
        x: reference images ``(B,C,H,W)``, ``(C,H,W)`` or ``(H,W)``.
        y: images to score, same shape.
        data_range: white level minus black level; default 255 for uint8, 1 for floats.

    Returns:
        float64 tensor ``(B,)`` (``inf`` for identical images).

    Examples:
        >>> import torch
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> round(float(psnr(x, x + 0.1)[0]), 4)
        20.0
    """
    a, b, rng = _prepare(x, y, data_range)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(rng**2 / mse)


def _gaussian_taps(sigma: float, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float | None = None,
    gaussian: bool = True,
    sigma: float = 1.5,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity, one value per image (mean over windows and channels).

    Args:
        x: reference images ``(B,C,H,W)``, ``(C,H,W)`` or ``(H,W)``.
        y: images to score, same shape.
        data_range: white level minus black level; default 255 for uint8, 1 for floats.
        gaussian: Gaussian-weighted windows (σ = ``sigma``, 11 taps for σ=1.5) with
            population covariances, as Wang et al.; equals scikit-image's
            ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False)``. ``False``: uniform ``win_size`` windows
            with sample covariances, scikit-image's default.
        sigma: Gaussian width.
        win_size: uniform window side (odd).
        k1: stabilizer constant of the means.
        k2: stabilizer constant of the variances.

    Returns:
        float64 tensor ``(B,)``; 1 for identical images.

    Raises:
        ValueError: images of different shapes, or smaller than the window.

    Examples:
        >>> import torch
        >>> x = torch.rand(2, 3, 32, 32)
        >>> ssim(x, x).tolist()
        [1.0, 1.0]
        >>> bool((ssim(x, torch.rand(2, 3, 32, 32)) < 0.1).all())
        True
    """
    a, b, rng = _prepare(x, y, data_range)
    bsz, c, h, w = a.shape
    if gaussian:
        taps = _gaussian_taps(sigma).to(a.device)
        cov_norm = 1.0
    else:
        if win_size % 2 != 1:
            raise ValueError(f"win_size must be odd, got {win_size}")
        taps = torch.full((win_size,), 1.0 / win_size, dtype=torch.float64, device=a.device)
        np_ = win_size * win_size
        cov_norm = np_ / (np_ - 1)
    k = taps.numel()
    if h < k or w < k:
        raise ValueError(f"images of {h}x{w} are smaller than the {k}x{k} SSIM window; use larger images")

    def filt(t: torch.Tensor) -> torch.Tensor:  # separable valid filtering of (N,1,H,W)
        t = F.conv2d(t, taps.view(1, 1, k, 1))
        return F.conv2d(t, taps.view(1, 1, 1, k))

    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1).reshape(bsz * 5 * c, 1, h, w)
    ux, uy, uxx, uyy, uxy = filt(stack).reshape(bsz, 5, c, h - k + 1, w - k + 1).unbind(1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (k1 * rng) ** 2
    c2 = (k2 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


