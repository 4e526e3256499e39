"""Compiled CPU kernels for :mod:`keyveil.schemes.visualmixer` (numba; imported on first use).

:func:`quadtree_levels` is Algorithm 1 (the windows of every image) and
:func:`shuffle_level` the in-window Fisher–Yates shuffle of one window size,
both on the image in raster layout, one image after another. They compute
what the torch ops of :mod:`~keyveil.schemes.visualmixer.windows` and
:mod:`~keyveil.schemes.visualmixer.shuffle` compute on other devices — the
same windows for uint8 images, whose energies are integers
(unless a window's sum of squared differences passes 2**24, which takes
near-maximal contrast across a whole window, where float32 sums on a GPU
round), while float images may differ where a window's energy ties the median
to the last bit — and the same swaps from the same random numbers. They
release the GIL, so chunks on threads run in parallel.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def quadtree_levels(x, sizes, min_level, single, level_map):
    """Fill ``level_map`` ``(B, ceil(H/s_min), ceil(W/s_min))`` int8 with each cell's window level.

    ``x`` is ``(B, C, H, W)`` (uint8 or float); ``sizes`` the window sides,
    largest first (at least two); ``min_level`` ``(B,)``: image ``b`` stops
    splitting at level ``min_level[b]``. A window of level ``l`` covers the
    cells ``[r*f, (r+1)*f) x [c*f, (c+1)*f)``, ``f = sizes[l] // sizes[-1]``.
    Energies are channel-summed squared neighbour differences inside each
    window, summed in float64 (exact for uint8 images) and divided by the
    window's pixel count in float32 (``single``) or float64, as the torch path
    divides; the median is the lower median of the top-level energies.
    """
    b_count, channels, h, w = x.shape
    levels = sizes.shape[0]
    smin = sizes[levels - 1]
    dh = np.zeros((h, w), dtype=np.float64)  # channel-summed squared difference with the right neighbour
    dv = np.zeros((h, w), dtype=np.float64)  # ... with the neighbour below (zero in the last column/row)
    # Every level but the last: window of every row/column, whether a difference stays
    # inside its window (1.0) or leaves it (0.0), every window's pixel count.
    starts = np.zeros(levels, dtype=np.int64)
    total = 0
    for level in range(levels - 1):
        s = sizes[level]
        starts[level] = total
        total += ((h + s - 1) // s) * ((w + s - 1) // s)
    row_win = np.empty((levels, h), dtype=np.int64)
    row_keep = np.empty((levels, h), dtype=np.float64)
    col_keep = np.empty((levels, w), dtype=np.float64)
    areas = np.empty(total, dtype=np.float64)
    for level in range(levels - 1):
        s = sizes[level]
        nw = (w + s - 1) // s
        for i in range(h):
            row_win[level, i] = i // s
            row_keep[level, i] = 1.0 if (i + 1) % s != 0 else 0.0
        for j in range(w):
            col_keep[level, j] = 1.0 if (j + 1) % s != 0 else 0.0
        for r in range((h + s - 1) // s):
            for c in range(nw):
                areas[starts[level] + r * nw + c] = min(s, h - r * s) * min(s, w - c * s)
    sums = np.empty(total, dtype=np.float64)
    energy = np.empty(total, dtype=np.float64)
    nh0, nw0 = (h + sizes[0] - 1) // sizes[0], (w + sizes[0] - 1) // sizes[0]
    ordered = np.empty(nh0 * nw0, dtype=np.float64)
    active = np.zeros((h + smin - 1) // smin * ((w + smin - 1) // smin), dtype=np.bool_)
    nxt = np.zeros(active.size, dtype=np.bool_)
    for b in range(b_count):
        dh.fill(0.0)
        dv.fill(0.0)
        for c in range(channels):
            for i in range(h):
                row, out_h = x[b, c, i], dh[i]
                for j in range(w - 1):
                    d = np.float64(row[j + 1]) - np.float64(row[j])
                    out_h[j] += d * d
                if i + 1 < h:
                    below, out_v = x[b, c, i + 1], dv[i]
                    for j in range(w):
                        d = np.float64(below[j]) - np.float64(row[j])
                        out_v[j] += d * d
        sums.fill(0.0)
        for level in range(levels - 1):  # one pass over the pixels per level
            s = sizes[level]
            nw = (w + s - 1) // s
            ck = col_keep[level]
            for i in range(h):
                first, keep = starts[level] + row_win[level, i] * nw, row_keep[level, i]
                out_h, out_v = dh[i], dv[i]
                for c in range(nw):  # the row's part of every window, summed in a register
                    acc = 0.0
                    for j in range(c * s, min(c * s + s, w)):
                        acc += out_h[j] * ck[j] + out_v[j] * keep
                    sums[first + c] += acc
        for q in range(total):
            if single:
                energy[q] = np.float32(sums[q]) / np.float32(areas[q])
            else:
                energy[q] = sums[q] / areas[q]
        for q in range(nh0 * nw0):
            ordered[q] = energy[q]
        median = _kth_smallest(ordered, (ordered.size - 1) // 2)  # the lower median of the top windows
        for q in range(nh0 * nw0):
            active[q] = True
        for level in range(levels):
            s = sizes[level]
            nh, nw = (h + s - 1) // s, (w + s - 1) // s
            f = s // smin
            last = level == levels - 1
            half = max(1, s // 2)  # a window of side 1 is the last level: it has no children
            nxt_h, nxt_w = (h + half - 1) // half, (w + half - 1) // half
            if not last:
                for q in range(nxt_h * nxt_w):
                    nxt[q] = False
            for r in range(nh):
                for c in range(nw):
                    if not active[r * nw + c]:
                        continue
                    if last or min_level[b] <= level or energy[starts[level] + r * nw + c] <= median:
                        for rr in range(r * f, min((r + 1) * f, level_map.shape[1])):  # keep the window
                            for cc in range(c * f, min((c + 1) * f, level_map.shape[2])):
                                level_map[b, rr, cc] = level
                    else:  # split it: its children are active at the next level
                        for rr in range(2 * r, min(2 * r + 2, nxt_h)):
                            for cc in range(2 * c, min(2 * c + 2, nxt_w)):
                                nxt[rr * nxt_w + cc] = True
            active, nxt = nxt, active


@njit(nogil=True, cache=True)
def _kth_smallest(a, k):
    """The ``k``-th smallest value of ``a`` (0-based; ``a`` is reordered): Hoare's quickselect."""
    lo, hi = 0, a.size - 1
    while lo < hi:
        pivot = a[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


@njit(nogil=True, cache=True)
def _ceil_log2(m):
    """``ceil(log2 m)``, at least 1: a step uses the top ``32 - ceil(log2 m)`` bits of its word."""
    shift = 1
    while (1 << shift) < m:
        shift += 1
    return shift


@njit(nogil=True, cache=True)
def shuffle_level(items, h, w, together, selected, window, nw, s, di, dj, words, uniforms):
    """Fisher–Yates shuffle, in place, of every selected window of side ``s``.

    ``items`` is ``(B, C, H*W)`` (values as same-size integers); ``together``:
    a pixel's channels move as one item (else each channel has its own
    windows, channel after channel). ``selected`` ``(B, nh*nw)`` marks the
    windows of this size (``nw`` per grid row); ``window[r]`` is the grid
    index of the window with z-rank ``r`` (``-1``: outside the image) and
    ``(di[p], dj[p])`` the offset of its z position ``p``. A window's items are
    its positions inside the image, ``p_0 < p_1 < ... < p_(m-1)``; step ``t``
    (``m-1`` down to 1) swaps items ``t`` and ``j`` in ``[0, t]``:
    ``j = min(floor(u * (t+1)), t)`` in float32 for ``u = uniforms[b, c, r*s*s + p_t]``
    when ``uniforms`` has rows, else ``j = (top_k(words[i, p_t]) * (t+1)) >> k``,
    the top ``k = 32 - ceil(log2 m)`` bits of a 32-bit word, ``i`` counting the
    selected windows in (image, channel, z-rank) order.
    """
    b_count, channels, _ = items.shape
    n = s * s
    groups = 1 if together else channels
    keyed = uniforms.shape[0] > 0
    off = di * w + dj  # raster offset of every z position from the window's corner
    pos = np.empty(n, dtype=np.int64)  # a window's positions inside the image (raster)
    every_z = np.arange(n)  # ... and their z positions: all of a whole window,
    clipped_z = np.empty(n, dtype=np.int64)  # or those of a window clipped by the border
    jj = np.empty(n, dtype=np.int64)  # the partner of every step
    whole_shift = _ceil_log2(n)
    i = 0
    for b in range(b_count):
        for g in range(groups):
            plane = items[b, g]
            for r in range(window.shape[0]):
                cell = window[r]
                if cell < 0 or not selected[b, cell]:
                    continue
                top, left = (cell // nw) * s, (cell % nw) * s
                base = top * w + left
                if top + s <= h and left + s <= w:
                    m, zoff, shift = n, every_z, whole_shift
                    for p in range(n):
                        pos[p] = base + off[p]
                else:
                    m, zoff = 0, clipped_z
                    for p in range(n):
                        if top + di[p] < h and left + dj[p] < w:
                            pos[m] = base + off[p]
                            zoff[m] = p
                            m += 1
                    shift = _ceil_log2(m)
                if keyed:
                    urow = uniforms[b, g, r * n : r * n + n]
                    for t in range(1, m):
                        jj[t] = min(np.int64(np.float32(urow[zoff[t]]) * np.float32(t + 1)), t)
                else:
                    wrow = words[i]
                    for t in range(1, m):
                        jj[t] = ((np.int64(wrow[zoff[t]]) >> shift) * (t + 1)) >> (32 - shift)
                if together:
                    for t in range(m - 1, 0, -1):
                        pa, pb = pos[t], pos[jj[t]]
                        for c in range(channels):
                            tmp = items[b, c, pa]
                            items[b, c, pa] = items[b, c, pb]
                            items[b, c, pb] = tmp
                else:
                    for t in range(m - 1, 0, -1):
                        pa, pb = pos[t], pos[jj[t]]
                        tmp = plane[pa]
                        plane[pa] = plane[pb]
                        plane[pb] = tmp
                i += 1
