"""Data-set-level edge costs, channel orders and layout refinement for :mod:`.jigsaw_shared`.

Every cost here is an average over all ciphertexts of one key, written as a quadratic
form in the pixels' first and second moments, so the images are touched once.
"""

from __future__ import annotations

import itertools

import torch

__all__ = ["moments", "edge_costs", "channel_orders", "refine", "layout_cost"]


def moments(z: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and second moment ``E[z zᵀ]`` ``(D, D)`` of the rows of ``z`` ``(N, D)``."""
    s = torch.zeros(z.shape[1], z.shape[1], dtype=z.dtype)
    for i in range(0, z.shape[0], chunk):
        part = z[i:i + chunk]
        s += part.T @ part
    return z.mean(0), s / z.shape[0]


def _predictor(s: torch.Tensor, mu: torch.Tensor, line: torch.Tensor, inner: torch.Tensor,
               target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Moments of ``P = 2·line - inner`` (a linear prediction across an edge) against ``Q = target``.

    ``line``/``inner``: ``(A, L)`` value indices; ``target``: ``(B, L)``. Returns ``E|P|²`` (A,),
    ``ΣE[P]`` (A,), ``E|Q|²`` (B,), ``ΣE[Q]`` (B,) and ``E[P·Q]`` (A, B).
    """
    pp = (4 * s[line, line] - 4 * s[line, inner] + s[inner, inner]).sum(-1)
    ep = (2 * mu[line] - mu[inner]).sum(-1)
    qq = s[target, target].sum(-1)
    eq = mu[target].sum(-1)
    t = target[None]
    cross = (2 * s[line[:, None], t] - s[inner[:, None], t]).sum(-1)
    independent = (2 * mu[line] - mu[inner]) @ mu[target].T  # E[P]·E[Q]: the cross term without any relation
    return pp, ep, qq, eq, cross, independent


def _side_cost(s: torch.Tensor, mu: torch.Tensor, last: torch.Tensor, second: torch.Tensor, first: torch.Tensor,
               next_: torch.Tensor, signs: int) -> torch.Tensor:
    """Mean squared prediction error, both ways, of piece ``b`` following piece ``a`` across an edge,
    relative to the error if the two were unrelated (same means and variances, independent).

    The ratio keeps edges that are flat in most images (background) from matching everything.
    With ``signs == 2`` each piece is also tried negated (``1 - v``): the result is
    ``(A·signs, B·signs)`` with piece index ``a * signs + negated``.
    """
    pp1, ep1, qq1, eq1, cross1, ind1 = _predictor(s, mu, last, second, first)  # a predicts b
    pp2, ep2, qq2, eq2, cross2, ind2 = _predictor(s, mu, first, next_, last)  # b predicts a
    d = _combine(last.shape[1], signs, (pp1, ep1, qq1, eq1, cross1), (pp2, ep2, qq2, eq2, cross2))
    unrelated = _combine(last.shape[1], signs, (pp1, ep1, qq1, eq1, ind1), (pp2, ep2, qq2, eq2, ind2))
    eps = 1e-3 * float(unrelated.mean())
    return (d + eps) / (unrelated + eps)


def _combine(length: int, signs: int, one: tuple[torch.Tensor, ...], two: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Both prediction errors for every sign pair from the moments of :func:`_predictor`."""
    pp1, ep1, qq1, eq1, cross1 = one
    pp2, ep2, qq2, eq2, cross2 = two
    n = torch.arange(signs, dtype=cross1.dtype)
    beta = 1 - 2 * n  # +1 plain, -1 negated
    na, nb = n.view(1, -1, 1, 1), n.view(1, 1, 1, -1)
    ba, bb = beta.view(1, -1, 1, 1), beta.view(1, 1, 1, -1)
    delta = na - nb  # offset of a's value minus b's value (white = 1)

    def col(v: torch.Tensor) -> torch.Tensor:
        return v.view(-1, 1, 1, 1)

    def row(v: torch.Tensor) -> torch.Tensor:
        return v.view(1, 1, -1, 1)

    t1 = (length * delta**2 + col(pp1) + row(qq1) + 2 * delta * ba * col(ep1) - 2 * delta * bb * row(eq1)
          - 2 * ba * bb * cross1[:, None, :, None])
    t2 = (length * delta**2 + row(pp2) + col(qq2) - 2 * delta * bb * row(ep2) + 2 * delta * ba * col(eq2)
          - 2 * ba * bb * cross2.T[:, None, :, None])
    return (t1 + t2).reshape(cross1.shape[0] * signs, cross1.shape[1] * signs)


def edge_costs(s: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, signs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right and up-down costs of every oriented block against every other.

    Args:
        s, mu: the pixels' second moments and means (:func:`moments`), values in [0, 1].
        var: ``(P, K, C, m, m)`` value indices of the ``K`` orientations of each block.
        signs: 2 to try every piece negated as well, else 1.

    Returns:
        ``lr``, ``ud``: ``(P·K·signs, P·K·signs)``, piece index ``(block * K + k) * signs + negated``;
        a block against itself costs ``inf``.
    """
    p, k = var.shape[:2]
    flat = var.reshape(p * k, *var.shape[2:])

    def lines(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(p * k, -1)

    lr = _side_cost(s, mu, lines(flat[..., :, -1]), lines(flat[..., :, -2]), lines(flat[..., :, 0]),
                    lines(flat[..., :, 1]), signs)
    ud = _side_cost(s, mu, lines(flat[..., -1, :]), lines(flat[..., -2, :]), lines(flat[..., 0, :]),
                    lines(flat[..., 1, :]), signs)
    block = torch.arange(p).repeat_interleave(k * signs)
    same = block[:, None] == block[None, :]
    return lr.masked_fill(same, float("inf")), ud.masked_fill(same, float("inf"))


def channel_orders(x: torch.Tensor, m: int, sweeps: int = 5) -> torch.Tensor:
    """Per-block channel orders that agree across blocks, from correlations of the blocks' channel means.

    Same colour channels of two blocks correlate more than different ones over a data set (the
    chroma of objects); a negated block flips every sign. Each pair's best relative order is found,
    a maximum spanning tree over the pairs' margins fixes every block's order relative to one, and
    sweeps re-choose each block's order against all others.

    Args:
        x: ``(N, C, H, W)`` ciphertexts (float).
        m: block side.

    Returns:
        ``(P, C)`` int64: restored channel ``t`` of block ``p`` is stored channel ``order[p, t]``.
    """
    n, c, h, w = x.shape
    means = x.reshape(n, c, h // m, m, w // m, m).mean((3, 5)).permute(0, 2, 3, 1).reshape(n, -1)
    means = means - means.mean(0)
    std = means.pow(2).mean(0).sqrt().clamp_min(1e-9)
    corr = (means.T @ means / n) / (std[:, None] * std[None, :])
    p = corr.shape[0] // c
    r = corr.view(p, c, p, c)
    perms = torch.tensor(list(itertools.permutations(range(c))))  # (F, C)
    chan = torch.arange(c)
    score = torch.stack([r[:, chan, :, pi].sum(0) for pi in perms], -1)  # (P, P, F): stored i of a ~ pi[i] of b
    weight = r.sum((1, 3))  # brightness correlation; its sign says whether one of the pair is negated
    signed = score * weight.sign()[..., None]
    top = signed.topk(2, dim=-1)
    margin = (top.values[..., 0] - top.values[..., 1]).fill_diagonal_(-1.0)
    best = top.indices[..., 0]
    truth = torch.full((p, c), -1, dtype=torch.int64)  # stored channel j of block p is true channel truth[p, j]
    truth[0] = chan
    inside = torch.zeros(p, dtype=torch.bool)
    inside[0] = True
    for _ in range(p - 1):  # Prim's maximum spanning tree
        cand = margin.masked_fill(~inside[:, None] | inside[None, :], -float("inf"))
        a, b = divmod(int(cand.argmax()), p)
        pi = perms[best[a, b]]
        truth[b, pi] = truth[a]
        inside[b] = True
    for _ in range(sweeps):
        changed = False
        for b in range(p):
            vals = []
            for cand_truth in perms:  # candidate: stored channel j of b is true channel cand_truth[j]
                j = torch.argsort(cand_truth)[truth]  # (P, C): b's stored channel matching a's stored i
                v = (r[torch.arange(p)[:, None], chan, b, j].sum(1) * weight[:, b]).masked_fill(
                    torch.arange(p) == b, 0.0).sum()
                vals.append(v)
            new = perms[int(torch.stack(vals).argmax())]
            changed |= not torch.equal(new, truth[b])
            truth[b] = new
        if not changed:
            break
    return torch.argsort(truth, dim=1)


def layout_cost(grid: torch.Tensor, lr: torch.Tensor, ud: torch.Tensor) -> float:
    """Summed edge cost of an ``(nh, nw)`` grid of piece indices."""
    return float(lr[grid[:, :-1], grid[:, 1:]].sum() + ud[grid[:-1, :], grid[1:, :]].sum())


def _cell_costs(grid: torch.Tensor, lr: torch.Tensor, ud: torch.Tensor) -> torch.Tensor:
    """``(cells, pieces)``: cost of putting each piece in each cell against the current neighbours."""
    nh, nw = grid.shape
    out = torch.zeros(nh, nw, lr.shape[0], dtype=lr.dtype)
    out[:, 1:] += lr[grid[:, :-1]]
    out[:, :-1] += lr[:, grid[:, 1:]].permute(1, 2, 0)
    out[1:, :] += ud[grid[:-1, :]]
    out[:-1, :] += ud[:, grid[1:, :]].permute(1, 2, 0)
    return out.reshape(nh * nw, -1)


def refine(grid: torch.Tensor, lr: torch.Tensor, ud: torch.Tensor, nv: int, rounds: int,
           tries: int = 32) -> tuple[torch.Tensor, int]:
    """Swap two blocks (or re-orient one) while the summed edge cost falls.

    Each round ranks all swaps by their gain against the current neighbours (each block in its
    best variant there), then accepts the first of the ``tries`` best whose exact cost is lower.

    Returns:
        The refined grid and the number of accepted moves.
    """
    grid = grid.clone()
    current = layout_cost(grid, lr, ud)
    accepted = 0
    for _ in range(rounds):
        cc = _cell_costs(grid, lr, ud)
        flat = grid.reshape(-1)
        cur = cc.gather(1, flat[:, None])[:, 0]
        best, arg = cc.view(cc.shape[0], -1, nv).min(2)  # (cells, blocks)
        blk = flat // nv
        mat = best[:, blk]  # mat[u, v]: u's cost with v's block in its best variant
        gain = (cur[:, None] + cur[None, :] - mat - mat.T).nan_to_num(nan=-float("inf"))
        order = gain.reshape(-1).argsort(descending=True)[:tries]
        moved = False
        for idx in order.tolist():
            u, v = divmod(idx, flat.numel())
            if not gain[u, v] > 1e-12:
                break
            trial = flat.clone()
            trial[u] = blk[v] * nv + arg[u, blk[v]]
            if u != v:
                trial[v] = blk[u] * nv + arg[v, blk[u]]
            cost = layout_cost(trial.view_as(grid), lr, ud)
            if cost < current - 1e-12:
                grid, current, moved = trial.view_as(grid), cost, True
                accepted += 1
                break
        if not moved:
            break
    return grid, accepted
