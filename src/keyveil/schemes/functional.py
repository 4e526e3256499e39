"""Pure, batched kernels the schemes are built from (no key handling here).

Every fixed-key rearrangement of a ``(C,H,W)`` image is a permutation of its
``C*H*W`` values, and every negative–positive step is an elementwise flip, so
one gather plus one elementwise op applies any of them to a whole batch.
"""

from __future__ import annotations

import torch

__all__ = [
    "gather_flat",
    "gather_spatial",
    "invert_permutation",
    "flip_values",
    "split_nibbles",
    "join_nibbles",
]


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: ``inv[perm[i]] = i`` (works on the last dim)."""
    inv = torch.empty_like(perm)
    src = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return inv.scatter_(-1, perm, src)


def gather_flat(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``y[b].flatten()[k] = x[b].flatten()[index[k]]`` for ``x`` of shape ``(B,...)``.

    Shape:
        x: ``(B, *S)``; index: ``(prod(S),)`` int64; returns ``(B, *S)``.
    """
    return x.reshape(x.shape[0], index.numel()).index_select(1, index).view(x.shape)


def gather_spatial(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The same spatial permutation for every image and channel.

    ``y[b, c].flatten()[k] = x[b, c].flatten()[index[k]]``.

    Shape:
        x: ``(B, C, H, W)``; index: ``(H*W,)`` int64; returns ``(B, C, H, W)``.
    """
    b, c, h, w = x.shape
    return x.reshape(b * c, h * w).index_select(1, index).view(b, c, h, w)


def flip_values(x: torch.Tensor, mask: torch.Tensor, white: int | float) -> torch.Tensor:
    """Negative–positive transform ``v -> white - v`` where ``mask`` is true.

    ``mask`` broadcasts against ``x``. For uint8 with ``white`` 255 or 15 the
    flip is an exact XOR; for floats ``white - v`` is computed in one rounding,
    so flipping twice restores ``v`` to within one ulp of ``white``.
    """
    if x.dtype == torch.uint8:
        return x ^ (mask.to(torch.uint8) * int(white))
    m = mask.to(x.dtype)
    # o + s*v with s = 1 - 2m, o = white*m: equals white - v where masked, v elsewhere.
    return torch.addcmul(m * white, x, 1 - 2 * m)


def split_nibbles(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, N)`` -> ``(B, 2N)``: each byte becomes (high 4 bits, low 4 bits)."""
    return torch.stack((x >> 4, x & 15), dim=-1).reshape(x.shape[0], 2 * x.shape[1])


def join_nibbles(n: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_nibbles`."""
    pairs = n.reshape(n.shape[0], n.shape[1] // 2, 2)
    return (pairs[..., 0] << 4) | pairs[..., 1]
