"""Algorithm 1 of VisualMixer: the quadtree of windows of every image, and its z-order geometry.

Every image is cut into a quadtree of square windows: tile it with the largest
window side, take the median VFE ``m`` of those tiles, keep a window whole if
its VFE is ``<= m`` (flat regions get large windows) and otherwise split it
into four, down to the smallest side. :func:`quadtree_windows` (image ->
:class:`WindowLayout`) does it for a whole batch with no Python loop over
pixels or windows: on CPU as a compiled loop on the image in raster layout
(:func:`keyveil.schemes.visualmixer._cpu.quadtree_levels`), on other devices as
torch ops on the window sums of :func:`~keyveil.schemes.visualmixer.vfe.window_sums`.
Both choose the same windows for uint8 images (see the kernels module).

The z-order geometry (:class:`_ZGeometry`, :func:`_z_geometry`) is the index
set the torch shuffle of :mod:`~keyveil.schemes.visualmixer.shuffle` uses: one
gather puts every image into a layout in which every window of every level is
a contiguous run of pixels.

Our readings (docs/design.md §3.4): window sides are ``ws_min * 2**l`` (the
paper's powers of two when ``ws_min`` is 1, 2, 4, ...); a window that does not fit
inside the image at the right/bottom edge is clipped and its pixels are
shuffled among themselves; the median is the lower median of the top-level
windows' channel-mean VFE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..base import log2_factorial
from ..errors import SchemeError
from ._backend import _compiled_path, _cpu_kernels
from .vfe import window_sums

__all__ = ["WindowLayout", "window_sizes", "quadtree_windows"]


def window_sizes(ws_min: int, ws_max: int) -> tuple[int, ...]:
    """The window sides Algorithm 1 may use: ``ws_min * 2**l <= ws_max``, largest first.

    Examples:
        >>> window_sizes(2, 16)
        (16, 8, 4, 2)
        >>> window_sizes(3, 20)
        (12, 6, 3)
    """
    if ws_min < 1 or ws_max < ws_min:
        raise SchemeError(f"need 1 <= ws_min <= ws_max, got ws_min={ws_min}, ws_max={ws_max}")
    sizes = [ws_min]
    while sizes[-1] * 2 <= ws_max:
        sizes.append(sizes[-1] * 2)
    return tuple(reversed(sizes))


@dataclass(frozen=True)
class WindowLayout:
    """The windows chosen for a batch: one quadtree per image.

    Attributes:
        sizes: window sides, largest first.
        selected: one bool tensor per size, ``(B, ceil(H/s), ceil(W/s))``:
            true where a window of side ``s`` starts at ``(row*s, col*s)``.
        height, width: the image size (edge windows are clipped to it).
    """

    sizes: tuple[int, ...]
    selected: tuple[torch.Tensor, ...]
    height: int
    width: int

    @property
    def batch(self) -> int:
        return self.selected[0].shape[0]

    def counts(self) -> torch.Tensor:
        """``(B, len(sizes))``: how many windows of each size every image has."""
        return torch.stack([s.flatten(1).sum(1) for s in self.selected], dim=1)

    def size_map(self) -> torch.Tensor:
        """``(B, H, W)`` int64: the side of the window every pixel belongs to."""
        out = torch.zeros(self.batch, self.height, self.width, dtype=torch.int64,
                          device=self.selected[0].device)
        for s, sel in zip(self.sizes, self.selected):
            up = sel.repeat_interleave(s, 1).repeat_interleave(s, 2)[:, : self.height, : self.width]
            out += up.to(torch.int64) * s
        return out

    def boxes(self, index: int) -> list[tuple[int, int, int, int]]:
        """Image ``index``'s windows as ``(top, left, height, width)``, clipped to the image."""
        out = []
        for s, sel in zip(self.sizes, self.selected):
            for r, c in sel[index].nonzero().tolist():
                top, left = r * s, c * s
                out.append((top, left, min(s, self.height - top), min(s, self.width - left)))
        return out

    def shuffle_bits(self, channels: int = 1) -> torch.Tensor:
        """``(B,)`` float64: log2 of the number of outputs the shuffle can give each image.

        ``channels`` independent permutations per window (the channel count
        with ``channel_shuffle=True``, else 1).
        """
        total = torch.zeros(self.batch, dtype=torch.float64)
        for s, sel in zip(self.sizes, self.selected):
            areas = _areas(self.height, self.width, s)
            bits = torch.tensor([[log2_factorial(a) for a in row] for row in areas.tolist()],
                                dtype=torch.float64)
            total += (sel.cpu().to(torch.float64) * bits).flatten(1).sum(1)
        return total * channels


def _areas(h: int, w: int, s: int, device: torch.device | None = None) -> torch.Tensor:
    rows = torch.clamp(h - torch.arange(-(-h // s), device=device) * s, max=s)
    cols = torch.clamp(w - torch.arange(-(-w // s), device=device) * s, max=s)
    return rows[:, None] * cols[None, :]


def _planes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-summed squared differences of a batch (float32, any scale)."""
    b, c, h, w = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dh = dv = None
    for ch in range(c):  # a loop over the few channels keeps temporaries small
        plane = x[:, ch].to(dtype)
        d = plane[:, :, 1:] - plane[:, :, :-1]
        dh = d.square_() if dh is None else dh.addcmul_(d, d)
        d = plane[:, 1:, :] - plane[:, :-1, :]
        dv = d.square_() if dv is None else dv.addcmul_(d, d)
    return dh, dv


def quadtree_windows(
    x: torch.Tensor, sizes: Sequence[int], *, min_level: torch.Tensor | None = None
) -> WindowLayout:
    """Algorithm 1: each image's windows between ``sizes[0]`` and ``sizes[-1]``.

    Args:
        x: ``(B,C,H,W)`` uint8 or float images.
        sizes: window sides, largest first, each half of the previous.
        min_level: optional ``(B,)`` int: image ``b`` never splits below
            ``sizes[min_level[b]]`` (its per-image lower bound).

    Returns:
        The :class:`WindowLayout`. Windows at each level are compared with the
        (lower) median channel-mean VFE of the image's top-level windows.
    """
    b, c, h, w = x.shape
    sizes = tuple(int(s) for s in sizes)
    if any(2 * sizes[i + 1] != sizes[i] for i in range(len(sizes) - 1)):
        raise SchemeError(f"window sizes must halve from level to level, got {sizes}")
    if len(sizes) == 1:
        sel = torch.ones(b, -(-h // sizes[0]), -(-w // sizes[0]), dtype=torch.bool, device=x.device)
        return WindowLayout(sizes, (sel,), h, w)
    if _compiled_path(x):
        return _quadtree_cpu(x, sizes, min_level)
    dh, dv = _planes(x)
    selected = []
    active = None
    median = None
    for level, s in enumerate(sizes):
        nh, nw = -(-h // s), -(-w // s)
        if active is None:
            active = torch.ones(b, nh, nw, dtype=torch.bool, device=x.device)
        if level == len(sizes) - 1:
            final = active
        else:
            sums, areas = window_sums(dh, dv, s)
            energy = sums / areas  # channel-summed VFE; comparisons ignore the 1/C factor
            if median is None:
                median = energy.flatten(1).median(dim=1).values
            stop = energy <= median[:, None, None]
            if min_level is not None:
                stop |= (min_level.to(x.device) <= level)[:, None, None]
            final = active & stop
            split = active & ~final
            up = split[:, :, None, :, None].expand(b, nh, 2, nw, 2).reshape(b, 2 * nh, 2 * nw)
            active = up[:, : -(-h // (s // 2)), : -(-w // (s // 2))]
        selected.append(final)
    return WindowLayout(sizes, tuple(selected), h, w)


def _quadtree_cpu(x: torch.Tensor, sizes: tuple[int, ...], min_level: torch.Tensor | None) -> WindowLayout:
    """:func:`quadtree_windows` by the compiled kernel (CPU tensors)."""
    b, _, h, w = x.shape
    x = x.detach()
    if x.dtype not in (torch.uint8, torch.float32, torch.float64):
        x = x.to(torch.float32)
    levels = np.full(b, len(sizes), dtype=np.int64) if min_level is None else min_level.cpu().numpy().astype(np.int64)
    smin = sizes[-1]
    level_map = np.full((b, -(-h // smin), -(-w // smin)), -1, dtype=np.int8)
    _cpu_kernels().quadtree_levels(x.contiguous().numpy(), np.array(sizes, dtype=np.int64), levels,
                                   x.dtype != torch.float64, level_map)
    selected = tuple(torch.from_numpy(level_map[:, :: s // smin, :: s // smin] == level)
                     for level, s in enumerate(sizes))
    return WindowLayout(sizes, selected, h, w)


@dataclass(frozen=True)
class _Level:
    """One window size in the z-order layout (see :class:`_ZGeometry`).

    ``window[r]`` is the index, in the flattened ``ceil(H/s) x ceil(W/s)`` grid
    of :class:`WindowLayout`, of the window with z-rank ``r`` (``-1``: the
    window lies outside the image). ``groups`` lists the windows that can be
    shuffled alike: first those inside the image (all ``s*s`` positions), then
    one group per shape of edge window clipped by the image border, each as
    ``(z-rank mask, positions inside the image)``. ``(di[p], dj[p])`` is the
    offset of z-position ``p`` from the top-left corner of its window.
    """

    window: np.ndarray
    groups: tuple[tuple[np.ndarray, np.ndarray | None], ...]
    di: np.ndarray
    dj: np.ndarray


@dataclass(frozen=True)
class _ZGeometry:
    """Index tensors that put every window of every level into one contiguous row.

    ``zidx[p]`` is the raster position (in the padded ``hp x wp`` image) of
    z-position ``p``: top windows in raster order, each laid out quadrant by
    quadrant down to the smallest windows, which are raster inside. A window of
    side ``s`` is then a run of ``s*s`` z-positions.
    """

    hp: int
    wp: int
    zidx: torch.Tensor
    zinv: torch.Tensor
    levels: tuple[_Level, ...]


_GEOMETRY: dict[tuple[Any, ...], _ZGeometry] = {}


def _z_geometry(h: int, w: int, sizes: tuple[int, ...], device: torch.device) -> _ZGeometry:
    cache_key = (h, w, sizes, str(device))
    geo = _GEOMETRY.get(cache_key)
    if geo is not None:
        return geo
    top, smin = sizes[0], sizes[-1]
    hp, wp = -(-h // top) * top, -(-w // top) * top
    grid = torch.arange(hp * wp).view(hp // top, top, wp // top, top).permute(0, 2, 1, 3)

    def quadrants(block: torch.Tensor) -> torch.Tensor:  # (..., s, s) -> (..., s*s) in z order
        s = block.shape[-1]
        lead = block.shape[:-2]
        if s == smin:
            return block.reshape(*lead, s * s)
        half = s // 2
        q = block.reshape(*lead, 2, half, 2, half).transpose(-3, -2)
        return quadrants(q).reshape(*lead, s * s)

    zidx = quadrants(grid).reshape(-1)
    zinv = torch.empty_like(zidx).scatter_(0, zidx, torch.arange(zidx.numel()))
    row, col = zidx.numpy() // wp, zidx.numpy() % wp
    levels = []
    for s in sizes:
        n = s * s
        first_r, first_c = row[::n] // s, col[::n] // s
        nh, nw = -(-h // s), -(-w // s)
        window = np.where((first_r < nh) & (first_c < nw), first_r * nw + first_c, -1)
        valid = ((row < h) & (col < w)).reshape(-1, n)
        count = valid.sum(1)
        groups: list[tuple[np.ndarray, np.ndarray | None]] = [(count == n, None)]
        clipped = (count > 0) & (count < n)
        patterns = {valid[r].tobytes(): valid[r] for r in np.flatnonzero(clipped)}
        for pattern in patterns.values():
            mask = clipped & (valid == pattern).all(1)
            groups.append((mask, np.flatnonzero(pattern)))
        levels.append(_Level(window, tuple(groups), row[:n].copy(), col[:n].copy()))
    geo = _ZGeometry(hp, wp, zidx.to(device), zinv.to(device), tuple(levels))
    if len(_GEOMETRY) > 64:
        _GEOMETRY.clear()
    _GEOMETRY[cache_key] = geo
    return geo
