"""Views: the image processing a re-identification attacker tries first (blur, average pooling).

A window shuffle keeps every window's mean, so average pooling at the window size
undoes most of it; blur does the same for smaller windows. Gallery and probes are
processed alike and the recognizers compare what remains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import AttackError

__all__ = ["View", "default_views", "apply_view"]


@dataclass(frozen=True)
class View:
    """One image-processing step applied to gallery and probes alike.

    ``kind`` is ``"plain"`` (no processing), ``"pool"`` (average pooling with
    kernel = stride = ``size``) or ``"blur"`` (Gaussian blur, sigma = ``size``).
    """

    kind: str
    size: int = 1

    @property
    def name(self) -> str:
        return "plain" if self.kind == "plain" else f"{self.kind}{self.size}"


def default_views(max_size: int = 16) -> tuple[View, ...]:
    """No processing, average pooling by 2, 4, ... ``max_size`` and blur with sigma 1, 2, 4, ... ``max_size // 2``."""
    sizes = [2 ** i for i in range(1, int(math.log2(max_size)) + 1)]
    return (View("plain"), *(View("pool", s) for s in sizes), *(View("blur", s // 2) for s in sizes))


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with replicated borders."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                 groups=c)
    return F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                    groups=c)


def apply_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """``x`` float ``(B,C,H,W)`` processed by ``view`` (pooling shrinks it, blur keeps its size).

    Examples:
        >>> import torch
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> apply_view(x, View("pool", 2)).flatten().tolist()
        [2.5, 4.5, 10.5, 12.5]
        >>> apply_view(x, View("blur", 1)).shape
        torch.Size([1, 1, 4, 4])
    """
    if view.kind == "plain":
        return x
    if view.kind == "pool":
        return F.avg_pool2d(x, view.size, ceil_mode=True)
    if view.kind == "blur":
        return _gaussian(x, float(view.size))
    raise AttackError(f"unknown view kind {view.kind!r}; use plain, pool or blur")
