"""Tap tables → pixel layout: the geometry behind reading a key off a keyed CNN's first convolution.

A deformable (or gathered) convolution's tap table says, for every output
cell, which scrambled input positions form its k×k window. Taps side by side
in one window are plain neighbours, so the table gives every position's left
and upper neighbour; ranking those chains (pointer jumping, ⌈log2 W⌉ batched
steps) gives every position's plain row and column, i.e. the permutation
(:func:`layout_from_taps`). :func:`offsets_to_taps` turns the integer
offsets of PrivDL's ``deform_conv2d`` into such a table. Used by
:class:`keyveil.attacks.KeyFromModel`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import AttackError
from .permutation import _is_permutation

__all__ = ["layout_from_taps", "offsets_to_taps"]


def _rank(src: torch.Tensor, dst: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """For links ``src -> dst`` forming chains over ``n`` units: each unit's distance to its chain's start."""
    units = torch.arange(n)
    prev = units.clone()
    prev[dst] = src
    succ = units.clone()
    succ[src] = dst
    if not (torch.equal(prev[dst], src) and torch.equal(succ[src], dst)):
        raise AttackError(f"the {what} links of the tap table contradict each other: it is not a convolution "
                          "window sliding over one permuted grid")
    dist = (prev != units).long()
    ptr = prev
    for _ in range(n.bit_length() + 1):  # pointer jumping: each step doubles the distance covered
        nxt = ptr[ptr]
        if torch.equal(nxt, ptr):
            return dist
        dist = dist + dist[ptr]
        ptr = nxt
    raise AttackError(f"the {what} links of the tap table form a cycle: it is not a convolution over a grid")


def layout_from_taps(taps: torch.Tensor, hw: Sequence[int], *, kernel_size: Sequence[int]) -> torch.Tensor:
    """The permutation π of a scrambled ``H×W`` map, from a convolution's tap table over it.

    ``taps[q, u*kw + v]`` is the (scrambled) input position read by tap
    ``(u, v)`` of output cell ``q``, or ``H*W`` (or a negative value) for a
    padding tap: the ``taps`` buffer of
    :class:`~keyveil.models.layers.DeformableConv2d`, or what the probe reads
    back. Taps ``(u, v)`` and ``(u, v+1)`` of one window are horizontal plain
    neighbours, ``(u, v)`` and ``(u+1, v)`` vertical ones (dilation 1); the
    chains of left and upper neighbours, ranked by pointer jumping, give every
    position's plain column and row. The order of the output cells does not
    matter, so the output's own permutation need not be known.

    Args:
        taps: ``(Q, kh*kw)`` integer table.
        hw: ``(H, W)`` of the scrambled map the taps read.
        kernel_size: ``(kh, kw)``, both at least 2.

    Returns:
        int64 ``(H*W,)`` π: scrambled position ``k`` holds plain position ``π[k]``
        (the ``pixel`` scheme's ``y[..., k] = x[..., π[k]]``).

    Raises:
        AttackError: the table does not determine the layout (a 1-wide kernel,
            windows that do not overlap or cover the map, or inconsistent links).

    Examples:
        >>> import torch
        >>> from keyveil.models.functional import conv_window, window_taps
        >>> perm = torch.randperm(4 * 3)
        >>> taps = window_taps(conv_window(4, 4, 3, 1, 1, 1), conv_window(3, 3, 3, 1, 1, 1), (4, 3),
        ...                    in_perm=perm, out_perm=None)
        >>> bool(torch.equal(layout_from_taps(taps, (4, 3), kernel_size=(3, 3)), perm))
        True
    """
    h, w = (int(v) for v in hw)
    kh, kw = (int(v) for v in kernel_size)
    n = h * w
    if kh < 2 or kw < 2:
        raise AttackError(f"a {kh}x{kw} kernel links no {'vertical' if kh < 2 else 'horizontal'} neighbours; "
                          "the layout needs a window of at least 2x2")
    t = taps.detach().long().cpu().reshape(-1, kh, kw)
    inside = (t >= 0) & (t < n)
    links = []
    for a, b, ok in ((t[:, :, :-1], t[:, :, 1:], inside[:, :, :-1] & inside[:, :, 1:]),
                     (t[:, :-1, :], t[:, 1:, :], inside[:, :-1, :] & inside[:, 1:, :])):
        links.append((a[ok], b[ok]))  # overlapping windows repeat links; _rank checks they agree
    (ls, ld), (us, ud) = links
    col = _rank(ls, ld, n, "left-right")
    row = _rank(us, ud, n, "up-down")
    perm = row * w + col
    if bool((col >= w).any()) or bool((row >= h).any()) or not _is_permutation(perm) or not (
        bool((row[ld] == row[ls]).all()) and bool((col[ud] == col[us]).all())
    ):
        raise AttackError(f"the tap table does not determine the layout of the {h}x{w} map (its windows do not "
                          "overlap enough to link every position to its neighbours)")
    return perm


def offsets_to_taps(
    offset: torch.Tensor,
    in_hw: Sequence[int],
    *,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> torch.Tensor:
    """The tap table that integer ``deform_conv2d`` offsets make a convolution read.

    Inverse of :func:`keyveil.models.functional.taps_to_offsets`: tap ``(u, v)``
    of output cell ``(i, j)`` samples at its regular point
    ``(i*s - p + u*d, j*s - p + v*d)`` plus its offset; a point outside the map
    is a padding tap (returned as ``H*W``).

    Shape:
        offset: ``(1 or B, 2*kh*kw, Hout, Wout)`` (``(dy, dx)`` per tap);
        returns ``(Hout*Wout, kh*kw)`` int64.
    """
    hin, win = (int(v) for v in in_hw)
    kh, kw = (int(v) for v in kernel_size)
    (sh, sw), (ph, pw), (dh, dw) = (tuple(int(a) for a in v) for v in (stride, padding, dilation))
    hout, wout = offset.shape[-2:]
    off = torch.round(offset[0].detach().double().cpu()).long().permute(1, 2, 0).reshape(hout * wout, kh * kw, 2)
    q = torch.arange(hout * wout)
    u = torch.arange(kh).repeat_interleave(kw) * dh
    v = torch.arange(kw).repeat(kh) * dw
    y = (q // wout)[:, None] * sh - ph + u[None, :] + off[..., 0]
    x = (q % wout)[:, None] * sw - pw + v[None, :] + off[..., 1]
    inside = (y >= 0) & (y < hin) & (x >= 0) & (x < win)
    return torch.where(inside, y * win + x, hin * win)
