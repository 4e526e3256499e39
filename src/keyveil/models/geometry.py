"""Where a convolution or pooling window starts: padding arithmetic for keyed layers.

Keyed convolutions and pools read their taps by index, so they need the
padding before the first row and column of every layer: numeric padding,
``padding="same"`` / ``"valid"``, and the TensorFlow-style ``SAME`` padding
of layers registered with :func:`keyveil.models.rules.register_same_padded`
(timm's ``Conv2dSame``, ``MaxPool2dSame``, ...), which depends on the input size.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from .rules import same_padded

__all__ = ["same_padding", "start_padding", "is_plain_forward"]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding of one axis as ``(before, after)`` (timm's ``get_same_padding``)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def start_padding(m: nn.Module, in_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The padding before the first row and column that a conv or pool ``m`` applies to an ``in_hw`` map.

    Handles numeric padding, ``padding="same"`` / ``"valid"`` and registered
    dynamic ``SAME`` layers; ``None`` for anything else.
    """
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    d = _pair(getattr(m, "dilation", 1))
    if same_padded(m) is not None:
        return same_padding(in_hw[0], k[0], s[0], d[0])[0], same_padding(in_hw[1], k[1], s[1], d[1])[0]
    p = m.padding
    if p == "valid":
        return (0, 0)
    if p == "same":  # torch.nn: stride 1, the extra padding goes after
        return (d[0] * (k[0] - 1)) // 2, (d[1] * (k[1] - 1)) // 2
    if isinstance(p, str):
        return None
    return _pair(p)


def is_plain_forward(m: nn.Module) -> bool:
    """Whether ``m`` computes what its ``torch.nn`` conv/pool class computes (registered SAME layers included)."""
    for base in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d):
        if isinstance(m, base):
            return type(m).forward is base.forward or bool(same_padded(m))
    return False
