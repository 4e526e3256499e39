"""Jigsaw-puzzle solver for block scrambling (EtC, ``patch``) (docs/design.md §5).

Block schemes without an in-block shuffle (K5) keep every block's pixels
together, so the image is a jigsaw puzzle: each block's border continues its
true neighbour's border. The solver scores every ordered pair of (oriented)
pieces with a gradient-based edge compatibility and places pieces greedily
(Chuman, Kurihara, Kiya, "On the security of block scrambling-based
encryption-then-compression images against jigsaw puzzle solver attacks",
ICASSP 2017 / IEICE 2018; Gallagher, CVPR 2012, for the gradient idea).

With ``rotations`` (EtC K2), ``negapos`` (K3) and ``channel_orders`` (K4) each
piece is tried in all its orientations, since those steps are applied per
block with unknown key bits.
"""

from __future__ import annotations

import itertools

import torch

from ..metrics.quality import ssim
from .base import Attack, AttackError, AttackResult, Cost, measure, register_attack

__all__ = ["JigsawSolver", "block_comparison", "dihedral", "orientations", "orient", "best_symmetry", "greedy_assemble"]

Orientation = tuple[int, bool, tuple[int, ...]]
"""``(dihedral k, negated, channel order)`` of a block or of a whole image."""


def dihedral(t: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` in 0..7 of the last two dims: rotate by ``k % 4`` quarter turns, flip if ``k >= 4``."""
    t = torch.rot90(t, k % 4, dims=(-2, -1))
    return t.flip(-1) if k >= 4 else t


def orientations(c: int, *, rotations: bool, negapos: bool, channel_orders: bool) -> list[Orientation]:
    """Every ``(k, negated, order)`` searched: 8 rotations/flips, 2 signs, ``c!`` channel orders (when on)."""
    rots = range(8) if rotations else range(1)
    negs = (False, True) if negapos else (False,)
    orders = list(itertools.permutations(range(c))) if (channel_orders and c > 1) else [tuple(range(c))]
    return [(k, n, o) for k in rots for n in negs for o in orders]


def orient(x: torch.Tensor, o: Orientation) -> torch.Tensor:
    """Apply ``o`` to the last three dims ``(C, H, W)`` of ``x`` (channels reordered, turned, negated)."""
    k, neg, order = o
    v = dihedral(x[..., list(order), :, :], k)
    if not neg:
        return v
    return (255 - v) if v.dtype == torch.uint8 else 1.0 - v


def best_symmetry(recon: torch.Tensor, plain: torch.Tensor, block_size: int,
                  candidates: list[Orientation]) -> tuple[dict[str, float], Orientation]:
    """Block scores of ``recon`` (``(C,H,W)``) under the global symmetry in ``candidates`` that fits ``plain`` best.

    Ranked by neighbour, then direct (:func:`block_comparison`); quarter turns are skipped for non-square images.
    """
    h, w = recon.shape[-2:]
    best: dict[str, float] = {}
    chosen = candidates[0]
    for o in candidates:
        if h != w and o[0] % 2 == 1:
            continue
        s = block_comparison(orient(recon, o), plain, block_size)
        if not best or (s["neighbour"], s["direct"]) > (best["neighbour"], best["direct"]):
            best, chosen = s, o
    return best, chosen


def _blocks(x: torch.Tensor, m: int) -> torch.Tensor:
    """``(C,H,W)`` -> ``(nh, nw, C, m, m)``."""
    c, h, w = x.shape
    return x.reshape(c, h // m, m, w // m, m).permute(1, 3, 0, 2, 4)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    nh, nw, c, m, _ = b.shape
    return b.permute(2, 0, 3, 1, 4).reshape(c, nh * m, nw * m)


def block_comparison(recon: torch.Tensor, plain: torch.Tensor, block_size: int) -> dict[str, float]:
    """Direct and neighbour comparison of a reassembled image (Chuman et al.).

    Blocks are compared by content, so two identical blocks (flat background)
    are interchangeable. ``direct``: fraction of blocks equal to the original
    block at the same place; ``neighbour``: fraction of adjacent block pairs
    (right and below) that are adjacent the same way in the original.

    Shape:
        recon, plain: ``(C,H,W)``.
    """
    m = block_size
    rb, pb = _blocks(recon, m), _blocks(plain, m)
    nh, nw = rb.shape[:2]
    flat = torch.cat([rb.reshape(nh * nw, -1), pb.reshape(nh * nw, -1)])
    _, ids = torch.unique(flat, dim=0, return_inverse=True)
    rid, pid = ids[: nh * nw].view(nh, nw), ids[nh * nw:].view(nh, nw)
    k = int(ids.max()) + 1
    direct = float((rid == pid).double().mean())
    right_p = (pid[:, :-1] * k + pid[:, 1:]).reshape(-1)
    down_p = (pid[:-1, :] * k + pid[1:, :]).reshape(-1)
    right_r = (rid[:, :-1] * k + rid[:, 1:]).reshape(-1)
    down_r = (rid[:-1, :] * k + rid[1:, :]).reshape(-1)
    hits = torch.cat([torch.isin(right_r, right_p), torch.isin(down_r, down_p)])
    return {"direct": direct, "neighbour": float(hits.double().mean()) if hits.numel() else 1.0}


@register_attack
class JigsawSolver(Attack):
    """Greedy jigsaw solver with a gradient-prediction edge compatibility.

    The dissimilarity of piece ``p`` left of piece ``q`` is the L1 error of
    predicting ``q``'s first column from ``p``'s last two columns (linear
    extrapolation of the gradient) plus the mirror prediction; likewise
    vertically. Placement grows from the piece with the most distinctive
    best match, each time adding the (slot, oriented piece) pair with the
    lowest mean dissimilarity to its placed neighbours, inside the known
    image size.

    Args:
        block_size: side M of the blocks (4 for EtC, the patch size for ``patch``).
        rotations: try the 8 rotations/flips of each piece (EtC K2).
        negapos: try each piece negated (EtC K3).
        channel_orders: try the 6 channel orders of each colour piece (EtC K4).

    Examples:
        >>> import torch
        >>> from keyveil import schemes
        >>> t = torch.linspace(0, 1, 16)
        >>> x = ((t[:, None] * 0.7 + t[None, :] * 0.3) * 255).round().to(torch.uint8)[None, None]
        >>> y = schemes.create("patch", patch_size=4).encrypt(x)
        >>> r = JigsawSolver(block_size=4).run(encrypted=y, plain=x)
        >>> r.metrics["direct"]
        1.0
    """

    name = "jigsaw"
    description = "greedy jigsaw solver with gradient edge compatibility (Chuman et al. 2017)"

    def __init__(
        self, *, block_size: int = 4, rotations: bool = False, negapos: bool = False, channel_orders: bool = False,
    ) -> None:
        if block_size < 2:
            raise AttackError(f"block_size must be at least 2 (edges need two columns), got {block_size}")
        self.block_size = int(block_size)
        self.rotations = bool(rotations)
        self.negapos = bool(negapos)
        self.channel_orders = bool(channel_orders)

    def _orientations(self, c: int) -> list[Orientation]:
        return orientations(c, rotations=self.rotations, negapos=self.negapos, channel_orders=self.channel_orders)

    def _variants(self, pieces: torch.Tensor, white: float) -> torch.Tensor:
        """``(N,C,M,M)`` -> ``(N, V, C, M, M)`` oriented pieces."""
        out = []
        for k, neg, order in self._orientations(pieces.shape[1]):
            v = dihedral(pieces[:, list(order)], k)
            out.append(white - v if neg else v)
        return torch.stack(out, dim=1)

    def run(self, *, encrypted: torch.Tensor, plain: torch.Tensor | None = None) -> AttackResult:
        """Reassemble every image of ``encrypted``.

        Args:
            encrypted: ``(B,C,H,W)`` or ``(C,H,W)`` scrambled images.
            plain: the originals, only to score (adds ``direct``, ``neighbour``,
                ``ssim`` — each the best over the global symmetries the
                solver cannot tell apart — and ``ssim_encrypted``).

        Returns:
            An :class:`AttackResult` with the reassembled images.
        """
        y = torch.as_tensor(encrypted)
        y = y if y.dim() == 4 else y[None]
        b, c, h, w = y.shape
        m = self.block_size
        if h % m or w % m:
            raise AttackError(f"image size {h}x{w} is not a multiple of block_size {m}")
        cost = Cost(ciphertexts=b)
        with measure(cost):
            recon = torch.stack([self._solve(img) for img in y])
        result = AttackResult(self.name, reconstructions=recon, cost=cost)
        if plain is not None:
            p = torch.as_tensor(plain)
            p = p if p.dim() == 4 else p[None]
            scores = [self._score(r, q) for r, q in zip(recon, p)]
            for key in ("direct", "neighbour", "ssim"):
                result.metrics[key] = sum(s[key] for s in scores) / len(scores)
            # per image, for intervals over images, blocks and edges (metrics.intervals)
            result.details.update(per_image={k: [s[k] for s in scores] for k in ("direct", "neighbour", "ssim")},
                                  block_size=m)
            result.metrics["ssim_encrypted"] = float(ssim(p, y).mean())
        result.metrics["cpu_seconds_per_image"] = cost.cpu_seconds / max(b, 1)
        return result

    def _score(self, recon: torch.Tensor, plain: torch.Tensor) -> dict[str, float]:
        best, o = best_symmetry(recon, plain, self.block_size, self._orientations(recon.shape[0]))
        return {**best, "ssim": float(ssim(plain, orient(recon, o))[0])}

    def _solve(self, img: torch.Tensor) -> torch.Tensor:
        c, h, w = img.shape
        m = self.block_size
        nh, nw = h // m, w // m
        n = nh * nw
        white = 255 if img.dtype == torch.uint8 else 1.0
        pieces = _blocks(img, m).reshape(n, c, m, m)
        var = self._variants(pieces, white)  # (N, V, C, M, M)
        nv = var.shape[1]
        f = var.reshape(n * nv, c, m, m).float() / (255.0 if img.dtype == torch.uint8 else 1.0)
        lr = _dissimilarity(f[..., :, -1], f[..., :, -2], f[..., :, 0], f[..., :, 1])  # p left of q
        ud = _dissimilarity(f[..., -1, :], f[..., -2, :], f[..., 0, :], f[..., 1, :])  # p above q
        placed, rmin, cmin = greedy_assemble(lr, ud, n, nv, nh, nw)
        grid = var.reshape(n * nv, c, m, m)
        out = torch.empty(nh, nw, c, m, m, dtype=img.dtype)
        for (r, cc), p in placed.items():
            out[r - rmin, cc - cmin] = grid[p]
        return _unblocks(out)


def _dissimilarity(last: torch.Tensor, second: torch.Tensor, first: torch.Tensor, next_: torch.Tensor) -> torch.Tensor:
    """``D[p, q]``: gradient-prediction error of ``q`` following ``p`` across an edge.

    ``last``/``second`` are p's edge line and the line before it; ``first``/``next_``
    are q's edge line and the one after it; all ``(P, C, M)``.
    """
    p_pred = (2 * last - second).flatten(1)  # predicts q's first line
    q_pred = (2 * first - next_).flatten(1)  # predicts p's last line
    return torch.cdist(p_pred, first.flatten(1), p=1) + torch.cdist(last.flatten(1), q_pred, p=1)


def greedy_assemble(lr: torch.Tensor, ud: torch.Tensor, n: int, nv: int, nh: int,
                    nw: int) -> tuple[dict[tuple[int, int], int], int, int]:
    """Grow an ``nh×nw`` layout of ``n`` pieces, each in one of ``nv`` variants, from edge costs.

    ``lr[p, q]`` / ``ud[p, q]``: cost of variant-piece ``p`` (index ``piece * nv + variant``) left of /
    above ``q``. Starts from the piece whose best right/down match stands out most, then adds the
    (free slot, unused piece) with the lowest mean cost to its placed neighbours, inside the frame.

    Returns:
        ``{(row, col): variant-piece}`` and the smallest row and column used (subtract them).
    """
    base = torch.arange(n).repeat_interleave(nv)
    # Seed: the piece (upright) whose best right/down match stands out most.
    upright = torch.arange(n) * nv

    def margin(d: torch.Tensor) -> torch.Tensor:
        d = d.clone()
        d[base[upright][:, None] == base[None, :]] = float("inf")
        two = d.topk(2, dim=1, largest=False).values
        return two[:, 1] - two[:, 0]

    seed = int(upright[(margin(lr[upright]) + margin(ud[upright])).argmax()])
    placed: dict[tuple[int, int], int] = {(0, 0): seed}
    used = torch.zeros(n, dtype=torch.bool)
    used[base[seed]] = True
    rmin = rmax = cmin = cmax = 0
    inf = float("inf")
    while len(placed) < n:
        slots = []
        for (r, cc) in placed:
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                s = (r + dr, cc + dc)
                if s in placed or s in slots:
                    continue
                if max(rmax, s[0]) - min(rmin, s[0]) >= nh or max(cmax, s[1]) - min(cmin, s[1]) >= nw:
                    continue
                slots.append(s)
        costs = torch.zeros(len(slots), n * nv)
        for i, (r, cc) in enumerate(slots):
            total, cnt = torch.zeros(n * nv), 0
            if (r, cc - 1) in placed:
                total += lr[placed[(r, cc - 1)]]
                cnt += 1
            if (r, cc + 1) in placed:
                total += lr[:, placed[(r, cc + 1)]]
                cnt += 1
            if (r - 1, cc) in placed:
                total += ud[placed[(r - 1, cc)]]
                cnt += 1
            if (r + 1, cc) in placed:
                total += ud[:, placed[(r + 1, cc)]]
                cnt += 1
            costs[i] = total / cnt
        costs[:, used[base]] = inf
        flat = int(costs.argmin())
        si, p = divmod(flat, n * nv)
        r, cc = slots[si]
        placed[(r, cc)] = p
        used[base[p]] = True
        rmin, rmax, cmin, cmax = min(rmin, r), max(rmax, r), min(cmin, cc), max(cmax, cc)
    return placed, rmin, cmin
