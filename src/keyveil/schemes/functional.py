"""Pure, batched kernels the schemes are built from (no key handling here).

Every fixed-key rearrangement of a ``(C,H,W)`` image is a permutation of its
``C*H*W`` values, and every negative–positive step is an elementwise flip, so
one gather plus one elementwise op applies any of them to a whole batch.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "take_columns",
    "gather_flat",
    "gather_spatial",
    "invert_permutation",
    "flip_values",
    "flip_operands",
    "split_nibbles",
    "join_nibbles",
]


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: ``inv[perm[i]] = i`` (works on the last dim)."""
    inv = torch.empty_like(perm)
    src = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return inv.scatter_(-1, perm, src)


def take_columns(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``y[r, k] = x[r, index[k]]`` for a 2-D tensor: the one gather every scheme uses.

    On the CPU (no autograd) this runs numpy's ``take`` into a fresh tensor,
    which is several times faster than ``index_select`` for uint8 and does not
    fight over threads; elsewhere it is ``index_select``. ``mode="clip"`` only
    skips numpy's bounds bookkeeping: indices are permutations, always in range.
    """
    if x.device.type == "cpu" and index.device.type == "cpu" and not x.requires_grad and x.dtype in _NUMPY_OK:
        x = x.contiguous()
        out = torch.empty(x.shape, dtype=x.dtype)
        if x.numel():
            np.take(x.numpy(), index.numpy(), axis=1, out=out.numpy(), mode="clip")
        return out
    return x.index_select(1, index)


_NUMPY_OK = {torch.uint8, torch.float32, torch.float64, torch.int16, torch.int32, torch.int64}


def gather_flat(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``y[b].flatten()[k] = x[b].flatten()[index[k]]`` for ``x`` of shape ``(B,...)``.

    Shape:
        x: ``(B, *S)``; index: ``(prod(S),)`` int64; returns ``(B, *S)``.
    """
    return take_columns(x.reshape(x.shape[0], index.numel()), index).view(x.shape)


def gather_spatial(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The same spatial permutation for every image and channel.

    ``y[b, c].flatten()[k] = x[b, c].flatten()[index[k]]``.

    Shape:
        x: ``(B, C, H, W)``; index: ``(H*W,)`` int64; returns ``(B, C, H, W)``.
    """
    b, c, h, w = x.shape
    return take_columns(x.reshape(b * c, h * w), index).view(b, c, h, w)


def flip_operands(mask: torch.Tensor, white: int | float, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Precompute what :func:`flip_values` needs for ``mask`` and ``dtype`` (derive once)."""
    if dtype == torch.uint8:
        return (mask.to(torch.uint8) * int(white),)
    m = mask.to(dtype)
    return (m * white, 1 - 2 * m)


def flip_values(
    x: torch.Tensor, mask: torch.Tensor, white: int | float, *, operands: tuple[torch.Tensor, ...] | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Negative–positive transform ``v -> white - v`` where ``mask`` is true.

    ``mask`` broadcasts against ``x``. For uint8 with ``white`` 255 or 15 the
    flip is an exact XOR; for floats ``white - v`` is computed in one rounding
    (as ``o + s*v`` with ``s = 1 - 2m``, ``o = white*m``), so flipping twice
    restores ``v`` to within one ulp of ``white``. ``operands`` (from
    :func:`flip_operands`) skips re-deriving them; ``inplace`` writes into ``x``.
    """
    ops = operands if operands is not None else flip_operands(mask, white, x.dtype)
    out = x if inplace else None
    if x.dtype == torch.uint8:
        return torch.bitwise_xor(x, ops[0], out=out)
    return torch.addcmul(ops[0], x, ops[1], out=out)


def split_nibbles(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, N)`` -> ``(B, 2N)``: each byte becomes (high 4 bits, low 4 bits)."""
    return torch.stack((x >> 4, x & 15), dim=-1).reshape(x.shape[0], 2 * x.shape[1])


def join_nibbles(n: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_nibbles`."""
    pairs = n.reshape(n.shape[0], n.shape[1] // 2, 2)
    return (pairs[..., 0] << 4) | pairs[..., 1]
