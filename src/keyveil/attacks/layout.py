"""Layout recovery of a fixed pixel permutation from ciphertexts alone: the pieces of
:class:`~keyveil.attacks.CiphertextOnly`.

1. **Locality.** Partial correlations (the regularized inverse of the
   correlation matrix of the encrypted positions across many ciphertexts)
   single out *direct* neighbours: plain correlation is high for every pair
   two or three pixels apart and for mirror-image positions of symmetric
   objects, the partial correlation only for grid neighbours (about +0.35 on
   Fashion-MNIST), and it is *negative* (about -0.1) for diagonal neighbours.
2. **Flips** (``pixel-np``): a flip negates its position's row and column of
   that matrix; the signs of the strong entries are synchronized by the top
   eigenvector of the signed neighbour graph (Z2 synchronization).
3. **Growth.** The grid is grown from one pixel, greedily: the (free cell,
   position) pair whose placed 3×3 neighbourhood matches the template best
   (axis neighbours: +partial correlation, diagonal ones: -partial
   correlation) is placed next, inside an H×W bounding box (a jigsaw solver
   with 1×1 pieces, like Gallagher's 2012 placer; a priority queue).
4. **Refinement.** Simulated annealing over position swaps, batched: each
   step evaluates a lattice of swaps that cannot interact, all at once, on an
   objective that adds the template's score to the images' smoothness (minus
   the total variation of the reconstructed ciphertexts, summed over many).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Iterator

import torch

__all__ = ["partial_correlation", "recover_flips", "grow_layout", "total_variation_table", "refine_layout"]

_AXIS = ((-1, 0), (1, 0), (0, -1), (0, 1))
_DIAG = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _standardized(samples: torch.Tensor) -> torch.Tensor:
    z = samples - samples.mean(0, keepdim=True)
    return z / (z.pow(2).mean(0, keepdim=True).sqrt() * math.sqrt(z.shape[0])).clamp_min(1e-9)


def partial_correlation(samples: torch.Tensor, ridge: float = 0.01) -> torch.Tensor:
    """Partial correlations ``(P,P)`` of the columns of ``samples`` (rows: images), zero diagonal.

    The correlation matrix ``R`` is regularized to ``R + ridge·I`` before it is
    inverted; with fewer samples than positions the inverse goes through the
    ``n×n`` Gram matrix (Woodbury), so 10,000 positions from 400 images is cheap.
    """
    z = _standardized(samples.double())
    n, p = z.shape
    eye = torch.eye(min(n, p), dtype=z.dtype, device=z.device)
    if p <= n:
        theta = torch.linalg.inv(z.T @ z + ridge * eye)
    else:  # (Z'Z + rI)^-1 = (I - Z'(rI + ZZ')^-1 Z) / r
        small = torch.linalg.solve(ridge * eye + z @ z.T, z)
        theta = (z.T.float() @ small.float()).neg_().add_(torch.eye(p, device=z.device)).div_(ridge)
    theta = theta.float()
    d = theta.diagonal().clamp_min(1e-12).sqrt()
    return theta.div_(d[:, None]).div_(d[None, :]).neg_().fill_diagonal_(0)


def recover_flips(s: torch.Tensor, neighbours: int = 4) -> torch.Tensor:
    """Signs (+1/-1 per position) that make the strong partial correlations positive, up to one global sign.

    The top eigenvector of the signed graph of each position's ``neighbours``
    strongest entries (by magnitude) carries the signs.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import eigsh

    p = s.shape[0]
    idx = s.abs().topk(neighbours, dim=1).indices
    vals = s.gather(1, idx).double().cpu().numpy().reshape(-1)
    rows = torch.arange(p).repeat_interleave(neighbours).numpy()
    w = coo_matrix((vals, (rows, idx.cpu().numpy().reshape(-1))), shape=(p, p)).tocsr()
    w = (w + w.T) * 0.5  # both directions carry the same sign
    vec = torch.from_numpy(eigsh(w, k=1, which="LA", v0=torch.ones(p, dtype=torch.float64).numpy())[1][:, 0])
    sign = torch.where(vec >= 0, 1.0, -1.0)
    return sign.to(s.dtype).to(s.device)


def grow_layout(s: torch.Tensor, h: int, w: int, *, candidates: int = 12, diagonal: float = -1.0,
                start: int | None = None) -> torch.Tensor:
    """Grow the ``h×w`` grid greedily from the affinity ``s`` (partial correlations, flips undone).

    Returns ``layout``: the position placed at each cell (``(h*w,)``). The
    score of position ``q`` at a free cell sums ``s[q, r]`` over its placed
    axis neighbours ``r`` and ``diagonal·s[q, r]`` over its diagonal ones;
    only each placed position's ``candidates`` strongest partners are scored.
    The growth starts from position ``start`` (default: the one with the
    strongest four partners).
    Positions left over when no candidate fits are assigned to the free
    cells by the Hungarian method on the same score.
    """
    from scipy.optimize import linear_sum_assignment

    p, h2, w2 = h * w, 2 * h - 1, 2 * w - 1
    top = s.abs().topk(min(candidates, p - 1), dim=1).indices
    cand, weights = top.tolist(), s.gather(1, top).tolist()
    offs = [(dr, dc, 1.0) for dr, dc in _AXIS] + [(dr, dc, diagonal) for dr, dc in _DIAG]
    where, grid, score, heap = [-1] * p, {}, {}, []
    box = [h - 1, h - 1, w - 1, w - 1]

    def place(q: int, cell: int) -> None:
        r, c = divmod(cell, w2)
        grid[cell], where[q] = q, cell
        box[:] = [min(box[0], r), max(box[1], r), min(box[2], c), max(box[3], c)]
        row = weights[q]
        for dr, dc, k in offs:
            rr, cc = r + dr, c + dc
            if not (0 <= rr < h2 and 0 <= cc < w2) or rr * w2 + cc in grid:
                continue
            u = rr * w2 + cc
            for t, st in zip(cand[q], row):
                if where[t] < 0:
                    v = score.get((u, t), 0.0) + k * st
                    score[(u, t)] = v
                    heapq.heappush(heap, (-v, u, t))

    place(int(s.topk(4, dim=1).values.sum(1).argmax()) if start is None else int(start), (h - 1) * w2 + (w - 1))
    placed = 1
    while heap and placed < p:
        v, u, t = heapq.heappop(heap)
        if where[t] >= 0 or u in grid or score.get((u, t)) != -v:
            continue
        r, c = divmod(u, w2)
        if max(box[1], r) - min(box[0], r) >= h or max(box[3], c) - min(box[2], c) >= w:
            continue  # the grid would outgrow the image; never fits again (the box only grows)
        place(t, u)
        placed += 1
    r0, c0 = min(box[0], h2 - h), min(box[2], w2 - w)
    layout = torch.full((p,), -1, dtype=torch.int64)
    for cell, q in grid.items():
        r, c = divmod(cell, w2)
        layout[(r - r0) * w + (c - c0)] = q
    left = torch.tensor([q for q in range(p) if where[q] < 0], dtype=torch.int64)
    if len(left):
        free = (layout < 0).nonzero().flatten()
        g = torch.cat([layout, torch.tensor([-1])])  # index -1 reads the sentinel
        fr, fc = free // w, free % w
        gain = torch.zeros(len(left), len(free), dtype=s.dtype, device=s.device)
        for dr, dc, k in offs:
            rr, cc = fr + dr, fc + dc
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            nb = g[torch.where(ok, rr * w + cc, torch.full_like(rr, p))]
            has = nb >= 0
            gain[:, has] += k * s[left.to(s.device)][:, nb[has].to(s.device)]
        ri, ci = linear_sum_assignment((-gain).cpu().numpy())
        layout[free[torch.as_tensor(ci)]] = left[torch.as_tensor(ri)]
    return layout


def total_variation_table(samples: torch.Tensor, max_samples: int = 2000) -> torch.Tensor:
    """``(P,P)``: mean absolute difference of two positions' values over (up to ``max_samples``) images."""
    z = samples[:max_samples].float().T.contiguous()
    return torch.cdist(z, z, p=1) / z.shape[1]


def _cooling(seconds: float, t_start: float, t_end: float) -> Iterator[float | None]:
    """The annealers' geometric temperature schedule over ``seconds`` of CPU time: each ``next`` gives the
    temperature now, and ``None`` once the time is spent."""
    start = time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        yield t_start * (t_end / t_start) ** (elapsed / seconds)
    while True:
        yield None


def refine_layout(
    layout: torch.Tensor, axis: torch.Tensor, diag: torch.Tensor, h: int, w: int, *, seconds: float,
    radius: int = 3, seed: int = 0, t_start: float = 0.03, t_end: float = 0.001,
) -> tuple[torch.Tensor, int]:
    """Simulated annealing of ``Σ axis[a,b]`` over grid-adjacent and ``Σ diag[a,b]`` over diagonal cells.

    Every step draws one swap offset (at most ``radius`` cells) and a lattice
    of swaps ``radius + 2`` cells apart, whose score changes do not interact,
    and evaluates them together (batched; runs on the tables' device; no table is copied).
    Runs for ``seconds`` of CPU time; returns the layout and the swaps tried.
    """
    p, dev = h * w, axis.device
    def table(k: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # index p: outside the grid, scores 0
        t = axis if k == 0 else diag
        inside = (x < p) & (y < p)
        return torch.where(inside, t[x.clamp(max=p - 1), y.clamp(max=p - 1)], torch.zeros((), dtype=t.dtype))

    hp, wp = h + 2, w + 2
    g = torch.full((hp * wp,), p, dtype=torch.int64, device=dev)
    inner = ((torch.arange(h, device=dev)[:, None] + 1) * wp + torch.arange(w, device=dev) + 1).reshape(-1)
    g[inner] = layout.to(dev)
    offs = torch.tensor([dr * wp + dc for dr, dc in _AXIS + _DIAG], device=dev)
    gen = torch.Generator().manual_seed(seed)
    stride, tried, step = radius + 2, 0, 0
    cooling = _cooling(seconds, t_start, t_end)
    while True:
        if step % 32 == 0:
            temp = next(cooling)
            if temp is None:
                break
        step += 1
        dr, dc = (int(v) for v in torch.randint(-radius, radius + 1, (2,), generator=gen))
        if dr == 0 and dc == 0:
            continue
        pr, pc = (int(v) for v in torch.randint(0, stride, (2,), generator=gen))
        r = torch.arange(pr, h, stride, device=dev)
        c = torch.arange(pc, w, stride, device=dev)
        r, c = r[(r + dr >= 0) & (r + dr < h)], c[(c + dc >= 0) & (c + dc < w)]
        if len(r) == 0 or len(c) == 0:
            continue
        a = ((r[:, None] + 1) * wp + c[None, :] + 1).reshape(-1)
        b = a + dr * wp + dc
        la, lb = g[a], g[b]
        na, nb = a[:, None] + offs, b[:, None] + offs
        va, vb = g[na], g[nb]
        va2 = torch.where(na == b[:, None], la[:, None], va)
        vb2 = torch.where(nb == a[:, None], lb[:, None], vb)
        delta = sum(table(k, lb[:, None], va2[:, sl]).sum(1) + table(k, la[:, None], vb2[:, sl]).sum(1)
                    - table(k, la[:, None], va[:, sl]).sum(1) - table(k, lb[:, None], vb[:, sl]).sum(1)
                    for k, sl in ((0, slice(0, 4)), (1, slice(4, 8))))
        u = torch.rand(len(delta), generator=gen).to(dev)
        ok = (delta > 0) | (u < torch.exp((delta / temp).clamp(max=0)))
        g[a[ok]], g[b[ok]] = lb[ok], la[ok]
        tried += len(a)
    return g[inner].cpu(), tried


def grid_objective(layout: torch.Tensor, axis: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``Σ axis[a,b]`` over the horizontally and vertically adjacent cells of each layout in a batch ``(B,h*w)``."""
    g = layout.view(-1, h, w)
    return axis[g[:, :, :-1], g[:, :, 1:]].sum((1, 2)) + axis[g[:, :-1, :], g[:, 1:, :]].sum((1, 2))


def recentre(layout: torch.Tensor, axis: torch.Tensor, spread: torch.Tensor, h: int, w: int,
             tolerance: float = 0.02) -> torch.Tensor:
    """Fix the grid's translation: a growth can put the flat border rows or columns on the wrong side.

    Among the cyclic shifts (rows, then columns) that cost at most ``tolerance``
    of the objective, keep the one that gathers ``spread`` (each position's
    standard deviation) closest around the middle: the objects of a data set sit there.
    """
    g = layout.view(h, w)
    for dim, n in ((0, h), (1, w)):
        rolls = torch.stack([torch.roll(g, k, dims=dim).reshape(-1) for k in range(n)])
        score = grid_objective(rolls, axis, h, w)
        mass = spread[rolls].view(n, h, w).sum(2 - dim)  # (n, size along dim)
        spread_out = (mass * (torch.arange(n, dtype=mass.dtype) - (n - 1) / 2).pow(2)).sum(1) / mass.sum(1).clamp_min(1e-9)
        ok = score >= score.max() - tolerance * score.max().abs()
        off = torch.where(ok, spread_out, torch.full_like(spread_out, math.inf))
        g = rolls[int(off.argmin())].view(h, w)
    return g.reshape(-1)


def refine_flips(layout: torch.Tensor, samples: torch.Tensor, h: int, w: int, white: float, *, sweeps: int = 4,
                 max_samples: int = 2000) -> torch.Tensor:
    """Positions whose flip to toggle so that each agrees with its recovered grid neighbours (smoothness).

    ``samples`` are the ciphertexts with the current flips undone. In each
    sweep, one colour of a checkerboard at a time, a position is toggled when
    ``white - v`` is closer (mean absolute difference) to its axis neighbours
    than ``v``: this settles flat regions that correlations cannot sign.
    Returns a bool per position (to XOR with the current flips).
    """
    p = h * w
    z = samples[:max_samples].float().clone()
    toggle = torch.zeros(p, dtype=torch.bool, device=z.device)
    grid = layout.view(h, w).to(z.device)
    cell = torch.arange(p, device=z.device)
    board = ((cell // w + cell % w) % 2).view(h, w)
    pad = torch.nn.functional.pad(grid, (1, 1, 1, 1), value=p)
    nb = torch.stack([pad[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr, dc in _AXIS], -1)  # (h,w,4) positions
    for _ in range(sweeps):
        for colour in (0, 1):
            pos, near = grid[board == colour], nb[board == colour]  # (k,), (k,4)
            zz = torch.cat([z, torch.full((len(z), 1), float("nan"), device=z.device)], 1)
            v, u = zz[:, pos][:, :, None], zz[:, near]  # (n,k,1), (n,k,4)
            keep = (v - u).abs().nanmean(0).nansum(1)
            flip = (white - v - u).abs().nanmean(0).nansum(1)
            change = pos[flip < keep]
            z[:, change] = white - z[:, change]
            toggle[change] ^= True
    return toggle


def grid_score(layout: torch.Tensor, corr: torch.Tensor, h: int, w: int) -> float:
    """Summed ``corr`` of the grid neighbours that ``layout`` (cell -> unit) puts side by side."""
    g = layout.view(h, w)
    return float(corr[g[:, :-1], g[:, 1:]].sum() + corr[g[:-1, :], g[1:, :]].sum())


def anneal_swaps(
    layout: torch.Tensor, corr: torch.Tensor, h: int, w: int, *, seconds: float, radius: int, seed: int,
    t_start: float = 0.1, t_end: float = 0.001,
) -> tuple[torch.Tensor, int]:
    """Simulated annealing over swaps of nearby cells, maximizing the summed
    correlation of grid neighbours. Runs for ``seconds`` of CPU time (the keyed
    ViT's weight-smoothness attack, :mod:`.model_key_vit`, lays out its small grids with it).

    A scalar loop on purpose: each step touches 8 table entries, which plain
    Python lists do faster than any tensor call.
    """
    rng = random.Random(seed)
    table = corr.tolist()
    g = layout.tolist()
    nbrs = [
        [a * w + b for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)) if 0 <= a < h and 0 <= b < w]
        for i in range(h) for j in range(w)
    ]

    def local(cell: int, v: int, other: int, ov: int) -> float:
        row = table[v]
        return sum(row[ov if q == other else g[q]] for q in nbrs[cell])

    n, steps = h * w, 0
    cooling = _cooling(seconds, t_start, t_end)
    while True:
        if steps % 1024 == 0:
            temp = next(cooling)
            if temp is None:
                break
        steps += 1
        a = rng.randrange(n)
        i, j = divmod(a, w)
        bi, bj = i + rng.randint(-radius, radius), j + rng.randint(-radius, radius)
        if not (0 <= bi < h and 0 <= bj < w) or (bi == i and bj == j):
            continue
        b = bi * w + bj
        va, vb = g[a], g[b]
        delta = local(a, vb, b, va) + local(b, va, a, vb) - local(a, va, b, vb) - local(b, vb, a, va)
        if delta >= 0 or rng.random() < math.exp(delta / temp):
            g[a], g[b] = vb, va
    return torch.tensor(g, dtype=torch.int64), steps
