"""The in-window pixel shuffle of VisualMixer: :func:`shuffle_windows`, Fisher–Yates, the worker pool.

:func:`shuffle_windows` (image + :class:`~keyveil.schemes.visualmixer.windows.WindowLayout`
+ randomness -> scrambled image) permutes the pixels inside every window
uniformly at random; with ``channel_shuffle=True`` every channel gets its own
permutation. Every window is shuffled by Fisher–Yates (sorting random keys per
window with ``argsort`` is several times slower, see
``benchmarks/bench_visualmixer.py``), batched with no Python loop over pixels
or windows.

On CPU it runs as a compiled loop (numba,
:func:`keyveil.schemes.visualmixer._cpu.shuffle_level`; compiled on first use,
~4-8 s per input dtype, then cached on disk;
:meth:`~keyveil.schemes.visualmixer.scheme.VisualMixer.prepare` does it ahead)
on the image in raster layout. On other devices it runs as torch ops: one
gather puts every image into the z-order layout of
:func:`~keyveil.schemes.visualmixer.windows._z_geometry`, in which every window
of every level is a contiguous run of pixels; the windows of one size across
the whole batch are gathered as rows of one ``(windows, WS*WS)`` array and
shuffled by a Fisher–Yates shuffle vectorized over all of them (the Python
loop runs over the ``WS**2 - 1`` positions), written back, and one gather
restores the raster layout; edge windows clipped by the image border are
shuffled the same way over their positions inside the image, one group per
clipped shape. Both paths make the same swaps from the same random numbers (a
test runs the torch path on CPU and compares).

The lasting pool of :func:`_worker_pool` runs the chunks of a large batch on
``torch.get_num_threads()`` threads (the compiled kernels release the GIL);
:func:`_child_generator` seeds every chunk's generator in order.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..base import _fresh_generator
from ..errors import SchemeError
from ._backend import _compiled_path, _cpu_kernels
from .windows import WindowLayout, _Level, _z_geometry, _ZGeometry

__all__ = ["shuffle_windows"]


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
    (:mod:`keyveil.schemes.visualmixer._cpu`).
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
