"""``visualmixer`` — VFE-guided adaptive window pixel shuffle (VisualMixer, DESIGN.md §3.4).

Every image is cut into a quadtree of square windows (Algorithm 1 of the
paper): tile it with the largest window side, take the median VFE ``m`` of
those tiles, keep a window whole if its VFE is ``<= m`` (flat regions get
large windows) and otherwise split it into four, down to the smallest side.
The pixels inside every window are then permuted uniformly at random; with
``channel_shuffle=True`` every channel gets its own permutation.

Two pure kernels do the work, both batched with no Python loop over pixels or
windows: :func:`quadtree_windows` (image -> :class:`WindowLayout`) and
:func:`shuffle_windows` (image + layout + randomness -> scrambled image).
One gather puts every image into a z-order layout in which every window of
every level is a contiguous run of pixels; the windows of one size across the
whole batch are then gathered as rows of one ``(windows, WS*WS)`` array and
shuffled by a Fisher–Yates shuffle vectorized over all of them (the Python
loop runs over the ``WS**2 - 1`` positions, each step a handful of
whole-array ops), written back, and one gather restores the raster layout.
Edge windows clipped by the image border are shuffled the same way over their
positions inside the image, one group per clipped shape.
Sorting random keys per window (``argsort``) is 2-4x slower on CPU (see
``benchmarks/bench_visualmixer.py``); the CPU path runs the index steps through
numpy views of the same memory, which index faster than torch here. A batch
of 256K values or more is cut into an even number (at least two) of balanced
chunks of at most ~2M values (they stay in cache); on CPU the chunks run on a
lasting pool of ``torch.get_num_threads()`` threads (numpy's indexing releases
the GIL) whose torch ops are single-threaded, each chunk with its own
generator seeded in order, so the output for a given generator does not
depend on the thread count.

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
_PRECOMPUTE_PARTNERS = 1 << 20

__all__ = ["VisualMixer", "WindowLayout", "window_sizes", "quadtree_windows", "shuffle_windows"]


#: CPU tensors take the numpy paths (tests turn this off to run the torch paths used on GPUs).
_NUMPY_ON_CPU = True


def _numpy_path(t: torch.Tensor) -> bool:
    return _NUMPY_ON_CPU and t.device.type == "cpu"


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


@dataclass(frozen=True)
class _Level:
    """One window size in the z-order layout (see :class:`_ZGeometry`).

    ``window[r]`` is the index, in the flattened ``ceil(H/s) x ceil(W/s)`` grid
    of :class:`WindowLayout`, of the window with z-rank ``r`` (``-1``: the
    window lies outside the image). ``groups`` lists the windows that can be
    shuffled alike: first those inside the image (all ``s*s`` positions), then
    one group per shape of edge window clipped by the image border, each as
    ``(z-rank mask, positions inside the image)``.
    """

    window: np.ndarray
    groups: tuple[tuple[np.ndarray, np.ndarray | None], ...]


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
        levels.append(_Level(window, tuple(groups)))
    geo = _ZGeometry(hp, wp, zidx.to(device), zinv.to(device), tuple(levels))
    if len(_GEOMETRY) > 64:
        _GEOMETRY.clear()
    _GEOMETRY[cache_key] = geo
    return geo


def _selected_rows(sel: torch.Tensor, level: _Level, channels: int) -> list[tuple[torch.Tensor, np.ndarray | None]]:
    """The rows ``(image, channel, z-rank)`` of the z layout holding windows ``sel`` picks.

    One ``(rows, positions)`` entry per group of :attr:`_Level.groups` (empty
    groups left out); ``rows`` is an int64 tensor on ``sel``'s device.
    """
    b = sel.shape[0]
    if _numpy_path(sel):
        flat = np.concatenate([sel.reshape(b, -1).numpy(), np.zeros((b, 1), dtype=bool)], axis=1)
        sel_z = flat[:, level.window]  # index -1 picks the False column: windows outside the image
        out = []
        for mask, positions in level.groups:
            m = sel_z & mask
            rows = np.flatnonzero(np.broadcast_to(m[:, None, :], (b, channels, m.shape[1])))
            if rows.size:
                out.append((torch.from_numpy(rows), positions))
        return out
    flat = torch.cat([sel.reshape(b, -1), sel.new_zeros(b, 1)], dim=1)
    sel_z = flat[:, torch.from_numpy(level.window).to(sel.device)]
    out = []
    for mask, positions in level.groups:
        m = sel_z & torch.from_numpy(mask).to(sel.device)
        rows = m[:, None, :].expand(b, channels, m.shape[1]).reshape(-1).nonzero().squeeze(1)
        if rows.numel():
            out.append((rows, positions))
    return out


def _jumps(u: torch.Tensor) -> torch.Tensor:
    """Fisher–Yates partners from uniforms ``u`` ``(n, k)`` in [0, 1], as flat item indices.

    Row ``t`` holds ``column * n + floor(u[t] * (t+1))``: the item of the
    ``(k, n)`` window-major array that step ``t`` swaps with (int64).
    """
    n, k = u.shape
    steps = torch.arange(1, n + 1, device=u.device, dtype=torch.float32)[:, None]
    jumps = (u.to(torch.float32) * steps).to(torch.int64)
    torch.minimum(jumps, torch.arange(n, device=u.device)[:, None], out=jumps)
    return jumps.add_(torch.arange(k, device=u.device) * n)


def _partner_bits(n: int) -> int:
    """``b = 32 - ceil(log2 n)``: random bits per Fisher–Yates step for windows of ``n`` items."""
    return 32 - max(1, math.ceil(math.log2(n)))


def _partners(words: np.ndarray) -> np.ndarray:
    """Fisher–Yates partners from ``(n, k)`` uint32 words, as flat item indices (see :func:`_jumps`).

    Step ``t`` of window ``w`` swaps with ``w * n + floor(r * (t+1) / 2**b)``, ``r`` the
    top ``b = 32 - ceil(log2 n)`` bits of its word (24 bits for windows up to 16x16):
    the bias is below ``n / 2**b`` (``2**-16`` for 16x16 windows). Integer arithmetic
    on 32-bit words, ~2x faster than float uniforms in torch.
    """
    n, k = words.shape
    bits = _partner_bits(n)
    r = words >> np.uint32(32 - bits)
    r *= np.arange(1, n + 1, dtype=np.uint32)[:, None]
    r >>= np.uint32(bits)
    partners = r.astype(np.int64)  # int64: numpy fancy indexing is ~2x faster than with int32
    partners += np.arange(0, n * k, n, dtype=np.int64)
    return partners


def _random_jumps(rng: np.random.Generator, n: int, k: int) -> torch.Tensor:
    """Fisher–Yates partners from a PCG64 stream, as a tensor of flat item indices."""
    return torch.from_numpy(_partners(_random_words(rng, n, k)))


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _random_words(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``(n, k)`` uniform 32-bit words from a PCG64 stream (for :func:`_fisher_yates_`)."""
    return rng.bit_generator.random_raw((n * k + 1) // 2).view(np.uint32)[: n * k].reshape(n, k)


def _fisher_yates_(
    d: torch.Tensor, jumps: torch.Tensor | np.ndarray, *, use_numpy: bool | None = None
) -> None:
    """Shuffle every window (row) of ``d`` ``(k, n, g)`` in place along dim 1.

    Step ``t`` (``n-1`` down to 1) swaps item ``t`` of every window with an
    item in ``[0, t]`` of the same window — the Fisher–Yates shuffle run on
    all ``k`` windows at once. Items are ``g``-vectors (a pixel's channels
    when they move together). ``jumps`` is either the ``(n, k)`` flat partner
    indices of :func:`_jumps`, or ``(n, k)`` uint32 random words from which
    step ``t`` draws its partners ``floor(r * (t+1) / 2**b)`` on the fly (``r``
    the top ``b = 32 - ceil(log2 n)`` bits; bias below ``n / 2**b``, i.e.
    ``2**-16`` for 16x16 windows), which keeps every step in cache (up to
    ``_PRECOMPUTE_PARTNERS`` items, all partners are computed at once). On CPU the
    steps run through numpy indexing on zero-copy views (~2x faster than
    torch's index ops here).
    """
    k, n, g = d.shape
    words = isinstance(jumps, np.ndarray)
    if words or (use_numpy if use_numpy is not None else _numpy_path(d)):
        arr = d.view(_SAME_SIZE_INT[d.element_size()]).numpy()  # shares memory with d
        if g == 1:
            arr = arr.reshape(k, n)
        items = arr.reshape(k * n, g) if g > 1 else arr.reshape(k * n)
        base = np.arange(0, n * k, n, dtype=np.int64)
        bits = _partner_bits(n)
        shift = np.uint32(32 - bits)
        if words and n * k <= _PRECOMPUTE_PARTNERS:  # few items: all partners at once, 3 ops a step
            idx, words = _partners(jumps), False
        else:
            idx = None if words else jumps.numpy().astype(np.int64, copy=False)
        for t in range(n - 1, 0, -1):
            if words:
                r = jumps[t] >> shift
                r *= np.uint32(t + 1)
                r >>= np.uint32(bits)
                j = base + r  # int64: numpy fancy indexing is ~2x faster than with int32
            else:
                j = idx[t]
            item = arr[:, t].copy()
            arr[:, t] = items[j]
            items[j] = item
        return
    items = d.view(k * n, g)
    jumps = jumps.to(torch.int64)
    for t in range(n - 1, 0, -1):
        j = jumps[t]
        item = d[:, t].clone()
        d[:, t] = items.index_select(0, j)
        items.index_copy_(0, j, item)


def _item_view(rows: torch.Tensor) -> np.ndarray:
    """A contiguous CPU ``(R, n, g)`` tensor as a numpy ``(R, n)`` array of items (zero-copy).

    Items of 1, 2, 4 or 8 bytes are integers (numpy indexes them much faster than opaque ones).
    """
    r, n, g = rows.shape
    size = g * rows.element_size()
    raw = rows.view(torch.uint8).numpy().reshape(r, n, size)
    if size in (1, 2, 4, 8):
        return raw.view(np.dtype(f"u{size}"))[..., 0]
    return raw.view(np.dtype((np.void, size)))[..., 0]


def _take(x: torch.Tensor, index: torch.Tensor, *, use_numpy: bool | None = None) -> torch.Tensor:
    """``x[:, index]`` for a contiguous ``x`` of 2 or 3 dims (a new contiguous tensor).

    On CPU through ``numpy.take`` (2-6x faster than ``torch.gather`` with an
    expanded index here); elsewhere ``torch.gather``.
    """
    if use_numpy if use_numpy is not None else _numpy_path(x):
        as_int = _SAME_SIZE_INT[x.element_size()]
        out = np.take(x.view(as_int).numpy(), index.numpy(), axis=1)
        return torch.from_numpy(out).view(x.dtype)
    shape = (x.shape[0], -1) + tuple(x.shape[2:])
    return x.gather(1, index.view(1, -1, *([1] * (x.dim() - 2))).expand(shape))


_POOL: tuple[ThreadPoolExecutor, int] | None = None  # the pool and its thread count
_POOL_LOCK = threading.Lock()


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """A lasting pool of ``workers`` threads whose torch ops run single-threaded.

    numpy's indexing releases the GIL, so chunks on threads use all cores; but
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
    if (hp, wp) != (h, w):
        xp = x.new_zeros(b, c, hp, wp)
        xp[:, :, :h, :w] = x
    else:
        xp = x
    if channel_shuffle:
        z = _take(xp.reshape(b * c, hp * wp), geo.zidx)  # rows (image, channel)
    else:
        z = _take(xp.reshape(b, c, hp * wp).transpose(1, 2).contiguous(), geo.zidx)  # (B, P, C)
    rng = None
    if uniforms is None:
        rng = _seeded_numpy(generator if generator is not None else _fresh_generator())
    on_cpu = _numpy_path(x)
    for level, (s, sel) in enumerate(zip(layout.sizes, layout.selected)):
        n = s * s
        if n == 1:
            continue
        rows = z.view(-1, n, g)
        urows = None if uniforms is None else uniforms.reshape(-1, n)
        for idx, positions in _selected_rows(sel, geo.levels[level], cu):
            k = idx.numel()
            m = n if positions is None else positions.size  # clipped edge windows: the positions inside
            pos = None if positions is None else torch.from_numpy(positions).to(x.device)
            if urows is not None:
                u = urows.index_select(0, idx)
                jumps = _jumps((u if pos is None else u[:, pos]).t())
            elif on_cpu:
                jumps = _random_words(rng, m, k)
            else:
                jumps = _random_jumps(rng, m, k).to(x.device)
            if k == rows.shape[0] and positions is None:  # every window of this size: shuffle in place
                _fisher_yates_(rows, jumps)
            elif on_cpu:  # numpy take / assignment: 3-15x faster than torch's index ops here
                view = _item_view(rows)
                picked = idx.numpy()
                if positions is None:
                    part = np.take(view, picked, axis=0)
                else:
                    part = view[picked[:, None], positions[None, :]]
                d = torch.from_numpy(part.view(np.uint8).reshape(k, -1)).view(rows.dtype).view(k, m, g)
                _fisher_yates_(d, jumps)
                if positions is None:
                    view[picked] = part
                else:
                    view[picked[:, None], positions[None, :]] = part
            else:
                d = rows.index_select(0, idx)
                d = d if pos is None else d.index_select(1, pos).contiguous()
                _fisher_yates_(d, jumps)
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
        # Work in balanced chunks of at most ~2M values: temporaries stay in cache
        # and below the allocator's mmap threshold (a 2-3x speed-up on CPU at
        # 224x224). From ~256K values on, the count is even (at least two), so
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

        workers = min(torch.get_num_threads(), len(starts)) if _numpy_path(x) else 1
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
