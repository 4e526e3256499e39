"""``visualmixer`` — VFE-guided adaptive window pixel shuffle (VisualMixer, DESIGN.md §3.4).

Every image is cut into a quadtree of square windows (Algorithm 1 of the
paper): tile it with the largest window side, take the median VFE ``m`` of
those tiles, keep a window whole if its VFE is ``<= m`` (flat regions get
large windows) and otherwise split it into four, down to the smallest side.
The pixels inside every window are then permuted uniformly at random; with
``channel_shuffle=True`` every channel gets its own permutation.

Two pure kernels do the work, both batched with no Python loop over pixels or
windows: :func:`quadtree_windows` (image -> :class:`WindowLayout`) and
:func:`shuffle_windows` (image + layout + randomness -> scrambled image). Every
window is shuffled by Fisher–Yates (sorting random keys per window with
``argsort`` is several times slower, see ``benchmarks/bench_visualmixer.py``).

On CPU both run as compiled loops (numba, :mod:`keyveil.schemes._visualmixer_cpu`;
compiled on first use, ~4-8 s per input dtype, then cached on disk;
:meth:`VisualMixer.prepare` does it ahead) on the image
in raster layout. On other devices they run as torch ops: one gather puts every
image into a z-order layout in which every window of every level is a
contiguous run of pixels; the windows of one size across the whole batch are
gathered as rows of one ``(windows, WS*WS)`` array and shuffled by a
Fisher–Yates shuffle vectorized over all of them (the Python loop runs over
the ``WS**2 - 1`` positions), written back, and one gather restores the raster
layout; edge windows clipped by the image border are shuffled the same way
over their positions inside the image, one group per clipped shape. Both
paths choose the same windows (for uint8 images; see the kernels module) and make the same
swaps from the same random numbers (a test runs the torch path on CPU and
compares). A batch of 256K values or more is cut into an even number (at least two) of balanced
chunks of at most ~2M values (they stay in cache); on CPU the chunks run on a
lasting pool of ``torch.get_num_threads()`` threads (the kernels release the
GIL), each chunk with its own generator seeded in order, so the output for a
given generator does not depend on the thread count.

Our readings (DESIGN.md §3.4): window sides are ``ws_min * 2**l`` (the
paper's powers of two when ``ws_min`` is 1, 2, 4, ...); a window that does not fit
inside the image at the right/bottom edge is clipped and its pixels are
shuffled among themselves; the median is the lower median of the top-level
windows' channel-mean VFE.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from ..keys import Key
from ..metrics.bounds import ws_upper
from ..metrics.vfe import window_sums
from .base import Nonce, Scheme, _fresh_generator, log2_factorial, per_image_uniform
from .convert import to_batch
from .errors import SchemeError
from .registry import register_scheme

_CHUNK_VALUES = 1 << 21
_PARALLEL_VALUES = 1 << 18

__all__ = ["VisualMixer", "WindowLayout", "window_sizes", "quadtree_windows", "shuffle_windows"]


#: CPU tensors take the compiled kernels (tests turn this off to run the torch ops used on GPUs).
_COMPILED_ON_CPU = True


def _compiled_path(t: torch.Tensor) -> bool:
    return _COMPILED_ON_CPU and t.device.type == "cpu"


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


def _selected_rows(
    sel: torch.Tensor, level: _Level, channels: int
) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor, np.ndarray | None]]]:
    """The rows ``(image, channel, z-rank)`` of the z layout holding the windows ``sel`` picks.

    Returns the number of picked rows and, per group of :attr:`_Level.groups`
    (empty groups left out), ``(rows, ordinals, positions)``: the rows (int64),
    their ranks among all picked rows of the level, and the group's positions.
    """
    b = sel.shape[0]
    flat = torch.cat([sel.reshape(b, -1), sel.new_zeros(b, 1)], dim=1)
    sel_z = flat[:, torch.from_numpy(level.window).to(sel.device)]  # -1 picks the False column
    picked = sel_z[:, None, :].expand(b, channels, sel_z.shape[1]).reshape(-1)
    ordinal = picked.cumsum(0) - 1
    out = []
    for mask, positions in level.groups:
        m = sel_z & torch.from_numpy(mask).to(sel.device)
        rows = m[:, None, :].expand(b, channels, m.shape[1]).reshape(-1).nonzero().squeeze(1)
        if rows.numel():
            out.append((rows, ordinal[rows], positions))
    return int(picked.sum()), out


def _steps(u: torch.Tensor) -> torch.Tensor:
    """Fisher–Yates partners from uniforms ``u`` ``(m, k)`` in [0, 1]: ``min(floor(u[t] * (t+1)), t)``.

    Step ``t`` of window ``i`` swaps its item ``t`` with item ``steps[t, i]`` (int64), in float32
    arithmetic (the compiled CPU kernel computes the same).
    """
    m = u.shape[0]
    steps = torch.arange(1, m + 1, device=u.device, dtype=torch.float32)[:, None]
    jumps = (u.to(torch.float32) * steps).to(torch.int64)
    return torch.minimum(jumps, torch.arange(m, device=u.device)[:, None], out=jumps)


def _partner_bits(m: int) -> int:
    """``k = 32 - ceil(log2 m)``: random bits per Fisher–Yates step for windows of ``m`` items."""
    return 32 - max(1, math.ceil(math.log2(m)))


def _word_steps(words: torch.Tensor) -> torch.Tensor:
    """Fisher–Yates partners from ``(m, k)`` 32-bit words (as int64): ``(top_k(w) * (t+1)) >> k``.

    ``k`` from :func:`_partner_bits` (24 bits for windows up to 16x16): the bias is
    below ``m / 2**k`` (``2**-16`` for 16x16 windows). Integer arithmetic only.
    """
    m = words.shape[0]
    bits = _partner_bits(m)
    steps = torch.arange(1, m + 1, device=words.device, dtype=torch.int64)[:, None]
    return ((words >> (32 - bits)) * steps) >> bits


def _random_words(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """``(k, n)`` uniform 32-bit words from a PCG64 stream: ``n`` per window of a level."""
    return rng.bit_generator.random_raw((n * k + 1) // 2).view(np.uint32)[: n * k].reshape(k, n)


def _fisher_yates_(d: torch.Tensor, steps: torch.Tensor) -> None:
    """Shuffle every window (row) of ``d`` ``(k, m, g)`` in place along dim 1 (torch ops).

    Step ``t`` (``m-1`` down to 1) swaps item ``t`` of every window ``i`` with its
    item ``steps[t, i]`` in ``[0, t]`` — the Fisher–Yates shuffle run on all ``k``
    windows at once. Items are ``g``-vectors (a pixel's channels when they move
    together). The CPU path makes the same swaps in a compiled loop
    (:mod:`keyveil.schemes._visualmixer_cpu`).
    """
    k, m, g = d.shape
    items = d.view(k * m, g)
    jumps = steps.to(torch.int64) + torch.arange(k, device=d.device) * m
    for t in range(m - 1, 0, -1):
        j = jumps[t]
        item = d[:, t].clone()
        d[:, t] = items.index_select(0, j)
        items.index_copy_(0, j, item)


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_KERNELS: Any = None


def _cpu_kernels() -> Any:
    """The compiled kernels (numba is imported, and the kernels loaded, on first use)."""
    global _KERNELS
    if _KERNELS is None:
        from . import _visualmixer_cpu

        _KERNELS = _visualmixer_cpu
    return _KERNELS


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[:, index]`` for a contiguous ``x`` of 2 or 3 dims (a new contiguous tensor)."""
    shape = (x.shape[0], -1) + tuple(x.shape[2:])
    return x.gather(1, index.view(1, -1, *([1] * (x.dim() - 2))).expand(shape))


_POOL: tuple[ThreadPoolExecutor, int] | None = None  # the pool and its thread count
_POOL_LOCK = threading.Lock()


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """A lasting pool of ``workers`` threads whose torch ops run single-threaded.

    The compiled kernels release the GIL, so chunks on threads use all cores; but
    a torch op called from a thread with torch's default thread count starts
    its own team of OpenMP threads, and the teams fight for the cores (slower
    than one thread). A thread takes torch's count when it first runs an op,
    so the workers are started while the count is 1 (it is per thread: the
    caller's is restored, other threads are not affected). The pool lasts
    because fresh threads cost more than the work at 32x32 (new malloc arenas).
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL[1] >= workers:
            return _POOL[0]
        if _POOL is not None:
            _POOL[0].shutdown(wait=False)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="keyveil-visualmixer")
        barrier = threading.Barrier(workers)

        def start(_: int) -> int:
            barrier.wait()  # one task per thread: every thread is started now
            return torch.get_num_threads()  # the thread takes torch's count (1) here

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            list(pool.map(start, range(workers)))
        finally:
            torch.set_num_threads(before)
        _POOL = (pool, workers)
        return pool


def _forget_pool() -> None:
    """In a forked child (e.g. a DataLoader worker): none of the threads exist there."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def _child_generator(generator: torch.Generator) -> torch.Generator:
    """A CPU generator seeded from ``generator`` (independent streams for parallel chunks)."""
    return torch.Generator().manual_seed(_draw_seed(generator))


def _seeded_numpy(generator: torch.Generator) -> np.random.Generator:
    """A fast PCG64 stream whose seed is drawn from ``generator`` (so it is reproducible)."""
    return np.random.Generator(np.random.PCG64(_draw_seed(generator)))


def shuffle_windows(
    x: torch.Tensor,
    layout: WindowLayout,
    *,
    channel_shuffle: bool = True,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Permute the pixels inside every window of ``layout``, uniformly at random.

    Args:
        x: ``(B,C,H,W)`` images (any dtype; never modified).
        layout: the windows, e.g. from :func:`quadtree_windows`.
        channel_shuffle: one permutation per channel (else one per window,
            shared by its channels: pixels move whole).
        generator: randomness source when ``uniforms`` is not given (a
            private secure one if neither is).
        uniforms: optional ``(B, C', P)`` uniforms in [0, 1] with ``C' = C``
            (or 1 without ``channel_shuffle``) and ``P`` the pixel count of the
            image padded to a multiple of ``layout.sizes[0]``: every image's
            permutations then depend only on its own uniforms.

    Returns:
        The scrambled batch, same shape, dtype and device.
    """
    x = x.detach()
    b, c, h, w = x.shape
    geo = _z_geometry(h, w, layout.sizes, x.device)
    hp, wp = geo.hp, geo.wp
    cu, g = (c, 1) if channel_shuffle else (1, c)
    if uniforms is not None and tuple(uniforms.shape) != (b, cu, hp * wp):
        raise SchemeError(f"uniforms must have shape {(b, cu, hp * wp)}, got {tuple(uniforms.shape)}")
    if b == 0 or all(s == 1 for s in layout.sizes):
        return x.clone(memory_format=torch.contiguous_format)
    rng = None
    if uniforms is None:
        rng = _seeded_numpy(generator if generator is not None else _fresh_generator())
    if _compiled_path(x):
        return _shuffle_cpu(x, layout, geo, channel_shuffle, rng, uniforms)
    if (hp, wp) != (h, w):
        xp = x.new_zeros(b, c, hp, wp)
        xp[:, :, :h, :w] = x
    else:
        xp = x
    if channel_shuffle:
        z = _take(xp.reshape(b * c, hp * wp), geo.zidx)  # rows (image, channel)
    else:
        z = _take(xp.reshape(b, c, hp * wp).transpose(1, 2).contiguous(), geo.zidx)  # (B, P, C)
    for level, (s, sel) in enumerate(zip(layout.sizes, layout.selected)):
        n = s * s
        if n == 1:
            continue
        rows = z.view(-1, n, g)
        urows = None if uniforms is None else uniforms.reshape(-1, n)
        count, groups = _selected_rows(sel, geo.levels[level], cu)
        words = None
        if rng is not None and count:
            words = torch.from_numpy(_random_words(rng, count, n).astype(np.int64)).to(x.device)
        for idx, ordinal, positions in groups:
            pos = None if positions is None else torch.from_numpy(positions).to(x.device)
            if urows is not None:
                u = urows.index_select(0, idx)
                steps = _steps((u if pos is None else u[:, pos]).t())
            else:
                r = words.index_select(0, ordinal)
                steps = _word_steps((r if pos is None else r[:, pos]).t())
            if idx.numel() == rows.shape[0] and pos is None:  # every window of this size: in place
                _fisher_yates_(rows, steps)
                continue
            d = rows.index_select(0, idx)
            d = d if pos is None else d.index_select(1, pos).contiguous()
            _fisher_yates_(d, steps)
            if pos is None:
                rows.index_copy_(0, idx, d)
            else:
                rows[idx[:, None], pos[None, :]] = d
    if channel_shuffle:
        out = _take(z, geo.zinv).view(b, c, hp, wp)
    else:
        out = _take(z, geo.zinv).transpose(1, 2).reshape(b, c, hp, wp)
    if (hp, wp) != (h, w):
        out = out[:, :, :h, :w]
    return out.contiguous()


def _shuffle_cpu(
    x: torch.Tensor,
    layout: WindowLayout,
    geo: _ZGeometry,
    channel_shuffle: bool,
    rng: np.random.Generator | None,
    uniforms: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`shuffle_windows` by the compiled kernel, in raster layout (CPU tensors)."""
    b, c, h, w = x.shape
    out = x.clone(memory_format=torch.contiguous_format)
    items = out.view(_SAME_SIZE_INT[out.element_size()]).numpy().reshape(b, c, h * w)
    cu = c if channel_shuffle else 1
    no_words = np.empty((0, 1), dtype=np.uint32)
    u = np.empty((0, 1, 1), dtype=np.float32) if uniforms is None else uniforms.to(torch.float32).contiguous().numpy()
    kernels = _cpu_kernels()
    for s, sel, level in zip(layout.sizes, layout.selected, geo.levels):
        if s == 1:
            continue
        picked = np.ascontiguousarray(sel.reshape(b, -1).numpy())
        count = int(np.count_nonzero(picked)) * cu
        if count == 0:
            continue
        words = no_words
        if rng is not None:
            words = _random_words(rng, count, s * s)
        kernels.shuffle_level(items, h, w, not channel_shuffle, picked, level.window, sel.shape[2], s,
                              level.di, level.dj, words, u)
    return out


@register_scheme
class VisualMixer(Scheme):
    """VisualMixer (VIM): per-image random pixel shuffle in VFE-guided windows.

    Args:
        key: optional; with a key, ``encrypt(x, nonce=...)`` is reproducible
            (same key and nonce give the same output, batched or not).
        ws_min: smallest window side (privacy floor, default 2).
        ws_max: largest window side (utility ceiling, default 8; rounded down
            to ``ws_min * 2**l``).
        window: a uniform window side instead of the adaptive quadtree (the
            plain window shuffle of the paper's Fig. 3); excludes the options above.
        target_vfe: per-image privacy target: each image's smallest window is
            raised to :func:`keyveil.metrics.ws_lower` for its own pixel
            variance (at ``confidence``, over the whole image); images that
            cannot reach it get ``ws_max``-sized windows only.
        delta_max: derive ``ws_max`` from :func:`keyveil.metrics.ws_upper`
            (Monte-Carlo, seed 0) instead of giving it.
        confidence: confidence for both bounds (default 0.95).
        channel_shuffle: one permutation per channel (default, as the paper).

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("visualmixer", ws_min=2, ws_max=8)
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> y = s.encrypt(x)
        >>> y.shape, y.dtype
        (torch.Size([2, 3, 32, 32]), torch.uint8)
        >>> bool(torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values))
        True
        >>> keyed = schemes.create("visualmixer", Key.from_seed(1))
        >>> bool(torch.equal(keyed.encrypt(x, nonce=[5, 6]), keyed.encrypt(x, nonce=[5, 6])))
        True
        >>> sorted(set(s.windows(x).sizes))
        [2, 4, 8]

    Notes:
        Window sides are in pixels, so the same options hide less of a larger
        image: the default 2..8 scrambles a CIFAR-size image but leaves a
        512x512 photo recognizable; scale ``ws_min``/``ws_max`` with the
        resolution or set ``target_vfe``.
        Shuffling keeps every window's multiset of values, so window
        histograms (and with ``channel_shuffle=False`` whole pixels) stay in
        the clear, and a learned inverse can be trained by anyone on public
        images, since no secret is involved. See SECURITY.md and
        ``keyveil.attacks``.
    """

    name = "visualmixer"
    description = "VFE-guided adaptive window pixel shuffle in space and per channel (VisualMixer)"
    invertible = False
    per_image = True
    needs_key = False

    def __init__(
        self,
        key: Key | None = None,
        *,
        ws_min: int | None = None,
        ws_max: int | None = None,
        window: int | None = None,
        target_vfe: float | None = None,
        delta_max: float | None = None,
        confidence: float = 0.95,
        channel_shuffle: bool = True,
    ) -> None:
        super().__init__(key)
        for label, v in (("ws_min", ws_min), ("ws_max", ws_max), ("window", window)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SchemeError(f"{label} must be a positive int, got {v!r}")
        if not 0.0 < confidence < 1.0:
            raise SchemeError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
        if window is not None and any(v is not None for v in (ws_min, ws_max, target_vfe, delta_max)):
            raise SchemeError("window=... sets one uniform window size; do not combine it with "
                              "ws_min, ws_max, target_vfe or delta_max")
        if ws_max is not None and delta_max is not None:
            raise SchemeError("give either ws_max or delta_max (which derives ws_max), not both")
        if target_vfe is not None and target_vfe <= 0:
            raise SchemeError(f"target_vfe must be positive, got {target_vfe!r}")
        self.window = window
        self.target_vfe = None if target_vfe is None else float(target_vfe)
        self.delta_max = None if delta_max is None else float(delta_max)
        self.confidence = float(confidence)
        self.channel_shuffle = bool(channel_shuffle)
        if window is not None:
            self.ws_min = self.ws_max = window
        else:
            self.ws_min = 2 if ws_min is None else ws_min
            if ws_max is None:
                ws_max = 8 if delta_max is None else max(1, ws_upper(delta_max, confidence))
            if ws_max < self.ws_min:
                raise SchemeError(f"ws_max ({ws_max}) is below ws_min ({self.ws_min}); "
                                  "lower ws_min or raise ws_max/delta_max")
            self.ws_max = ws_max
        self.sizes = window_sizes(self.ws_min, self.ws_max)

    def params_dict(self) -> dict[str, Any]:
        return {
            "ws_min": self.ws_min,
            "ws_max": self.ws_max,
            "window": self.window,
            "target_vfe": self.target_vfe,
            "delta_max": self.delta_max,
            "confidence": self.confidence,
            "channel_shuffle": self.channel_shuffle,
        }

    def not_invertible_reason(self) -> str:
        return ("visualmixer shuffles with fresh per-image randomness and is used without decryption "
                "(models train on the shuffled images)")

    def _min_level(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-image lowest level reaching ``target_vfe`` (DESIGN.md §3.4 lower bound)."""
        if self.target_vfe is None or len(self.sizes) == 1:
            return None
        b, c, h, w = x.shape
        xf = x.to(torch.float32) / (255.0 if x.dtype == torch.uint8 else 1.0)
        sigma2 = xf.flatten(2).var(dim=2, unbiased=False).mean(1)  # (B,)
        z = NormalDist().inv_cdf(self.confidence)
        sizes = torch.tensor(self.sizes, dtype=torch.float32, device=x.device)  # largest first
        windows = torch.clamp(torch.tensor([(h * w) // (s * s) for s in self.sizes],
                                           dtype=torch.float32, device=x.device), min=1)
        mean = 4 * sigma2[:, None] * (sizes - 1) / sizes
        std = (2 * sigma2[:, None] / sizes**2) * torch.sqrt(4 * sizes * (sizes - 1)) / windows.sqrt()
        ok = (mean - z * std) >= self.target_vfe  # (B, L), true for the large sizes first
        # the last level (smallest size) that still reaches the target; 0 if none does
        idx = torch.arange(len(self.sizes), device=x.device)
        return torch.where(ok, idx, torch.zeros_like(idx)).amax(dim=1)

    def prepare(self, dtype: torch.dtype = torch.uint8) -> None:
        """Load (the first time: compile, ~4-8 s) the CPU kernels for ``dtype`` images."""
        self.encrypt(torch.zeros(1, 1, 2 * self.sizes[0], 2 * self.sizes[0], dtype=dtype),
                     generator=torch.Generator().manual_seed(0))

    def windows(self, x: Any) -> WindowLayout:
        """The windows :meth:`encrypt` uses for ``x`` (they depend only on the image)."""
        batch, _ = to_batch(x)
        self._check_dtype(batch)
        return quadtree_windows(batch, self.sizes, min_level=self._min_level(batch))

    def _encrypt(self, x: torch.Tensor, *, generator: torch.Generator | None, nonce: Nonce | None) -> torch.Tensor:
        x = x.detach()
        b, c, h, w = x.shape
        top = self.sizes[0]
        hp, wp = -(-h // top) * top, -(-w // top) * top
        cu = c if self.channel_shuffle else 1
        uniforms = None
        if nonce is not None:
            uniforms = per_image_uniform(
                b, cu * hp * wp, label=f"visualmixer/shuffle/{cu}x{hp}x{wp}", key=self.key,
                generator=None, nonce=nonce, device=x.device,
            ).view(b, cu, hp * wp)
        if generator is None and uniforms is None:
            generator = _fresh_generator()
        # Work in balanced chunks of at most ~2M values (the torch path's temporaries
        # stay small). From ~256K values on, the count is even (at least two), so
        # two cores share the work equally. The split depends only on the shape.
        values = b * c * hp * wp
        if values < _PARALLEL_VALUES or b == 1:
            return self._encrypt_chunk(x, generator, uniforms)
        chunks = max(2, -(-values // _CHUNK_VALUES))
        step = -(-b // min(b, chunks + chunks % 2))
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        starts = range(0, b, step)
        # Every chunk gets its own generator, seeded in order from ``generator``,
        # so the output does not depend on how the chunks are scheduled.
        gens = [None if uniforms is not None else _child_generator(generator) for _ in starts]

        def run(i: int, gen: torch.Generator | None) -> None:
            part = None if uniforms is None else uniforms[i : i + step]
            out[i : i + step] = self._encrypt_chunk(x[i : i + step], gen, part)

        workers = min(torch.get_num_threads(), len(starts)) if _compiled_path(x) else 1
        if workers > 1:
            list(_worker_pool(workers).map(run, starts, gens))
        else:
            for i, gen in zip(starts, gens):
                run(i, gen)
        return out

    def _encrypt_chunk(self, x: torch.Tensor, generator: torch.Generator | None,
                       uniforms: torch.Tensor | None) -> torch.Tensor:
        layout = quadtree_windows(x, self.sizes, min_level=self._min_level(x))
        return shuffle_windows(x, layout, channel_shuffle=self.channel_shuffle, generator=generator,
                               uniforms=uniforms)

    def key_space_bits(self, shape: Sequence[int]) -> float:
        """log2 of the shuffles one image can receive, for the smallest windows (a lower bound).

        Larger windows chosen by the quadtree only add to it; use
        ``windows(x).shuffle_bits(C)`` for the exact figure of given images.
        """
        c, h, w = (3, *shape) if len(shape) == 2 else tuple(shape)
        s = self.sizes[-1]
        areas = _areas(h, w, s).flatten().tolist()
        bits = sum(log2_factorial(a) for a in areas)
        return bits * (c if self.channel_shuffle else 1)
