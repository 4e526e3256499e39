"""Ciphertext-only attack on a fixed-key pixel permutation (docs/design.md §5).

Natural images are smooth: across a dataset, neighbouring pixels are far more
correlated than distant ones. A fixed permutation moves the pixels but keeps
every pixel's values across the dataset, so the correlation matrix of the
encrypted positions is the plain one with rows and columns permuted. The
attack turns correlations into distances, embeds the positions in the plane
with Isomap (geodesic distances on the k-nearest-neighbour graph, then
classical MDS) and snaps the embedding onto the H×W grid.

The layout comes back up to the 8 symmetries of the grid (rotations and
mirror images): correlations cannot tell left from right. A person looking at
the un-scrambled images fixes that at a glance; the reported ``ssim_best_symmetry``
takes the best of the 8 (scored with the plain images), ``ssim`` does not.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch

from ..metrics.quality import ssim
from ..schemes import Scheme
from .base import Attack, AttackError, Cost, KeyRecoveryResult, RecoveredPermutation, measure, register_attack
from .truth import true_permutation

__all__ = ["CiphertextOnly", "grid_symmetries", "neighbour_accuracy"]


def grid_symmetries(h: int, w: int) -> list[torch.Tensor]:
    """Index maps of the symmetries of an ``h×w`` grid (8 if square, else 4).

    Each map ``s`` reorders a flattened image: ``img.flatten()[s]``.
    """
    grid = torch.arange(h * w).view(h, w)
    maps = []
    for k in range(4 if h == w else 2):
        g = torch.rot90(grid, 2 * k if h != w else k)
        maps += [g.reshape(-1), g.flip(1).reshape(-1)]
    return maps


def neighbour_accuracy(layout: torch.Tensor, origin: torch.Tensor, h: int, w: int) -> float:
    """Fraction of adjacent cells of ``layout`` whose pixels are adjacent in the original.

    Args:
        layout: ``(h*w,)`` encrypted position placed at each grid cell.
        origin: ``(h*w,)`` original position of each encrypted position.
    """
    pos = origin[layout].view(h, w)
    r, c = pos // w, pos % w
    horiz = (r[:, 1:] - r[:, :-1]).abs() + (c[:, 1:] - c[:, :-1]).abs() == 1
    vert = (r[1:, :] - r[:-1, :]).abs() + (c[1:, :] - c[:-1, :]).abs() == 1
    return float(torch.cat([horiz.reshape(-1), vert.reshape(-1)]).double().mean())


def _correlation(x: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between columns of ``x`` (samples × positions)."""
    x = x - x.mean(0, keepdim=True)
    std = x.pow(2).mean(0).sqrt()
    cov = (x.T @ x) / x.shape[0]
    corr = cov / (std[:, None] * std[None, :]).clamp_min(1e-12)
    corr[std < 1e-9, :] = 0
    corr[:, std < 1e-9] = 0
    return corr


@register_attack
class CiphertextOnly(Attack):
    """Rebuild a fixed pixel permutation from ciphertexts alone (dataset statistics).

    Args:
        neighbours: k of the k-nearest-neighbour graph (by correlation distance).
        angles: rotations of the embedding tried when snapping it to the grid.
        anneal_seconds: CPU seconds of simulated annealing (swaps of cells at
            most ``radius`` apart) that raise the summed correlation of grid
            neighbours, after the Isomap layout (0 to skip).
        radius: largest row/column distance of two swapped cells.
        seed: seed of the annealing's random choices.

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("pixel", Key.generate())
        >>> t = torch.linspace(0, 1, 12)
        >>> u = torch.rand(3000, 4, 1, 1) * 6.3
        >>> x = (torch.sin(u[:, 0] * t[:, None] + u[:, 1] * t[None, :] + u[:, 2]) * 100 + 128)
        >>> x = x.round().to(torch.uint8)[:, None]
        >>> r = CiphertextOnly(anneal_seconds=1).run(ciphertexts=s.encrypt(x), reference=s)
        >>> r.metrics["neighbour_accuracy"] > 0.5
        True
    """

    name = "ciphertext-only"
    description = "position correlations across many ciphertexts -> Isomap layout of a pixel permutation"

    def __init__(
        self, *, neighbours: int = 5, angles: int = 90, anneal_seconds: float = 30.0, radius: int = 4, seed: int = 0,
    ) -> None:
        if neighbours < 2:
            raise AttackError(f"neighbours must be at least 2, got {neighbours}")
        self.neighbours = int(neighbours)
        self.angles = int(angles)
        self.anneal_seconds = float(anneal_seconds)
        self.radius = int(radius)
        self.seed = int(seed)

    def run(
        self,
        *,
        ciphertexts: torch.Tensor,
        test_encrypted: torch.Tensor | None = None,
        test_plain: torch.Tensor | None = None,
        reference: Scheme | None = None,
    ) -> KeyRecoveryResult:
        """Recover the layout.

        Args:
            ciphertexts: ``(N,C,H,W)`` images encrypted under one ``pixel`` key.
            test_encrypted: images to un-scramble with the recovered layout
                (default: the first 100 ciphertexts).
            test_plain: their plain versions, only to score (adds ``ssim``,
                ``ssim_best_symmetry``, ``ssim_encrypted``).
            reference: the attacked scheme, only to score (adds ``neighbour_accuracy``).
        """
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import shortest_path

        y = torch.as_tensor(ciphertexts)
        if y.dim() != 4 or y.shape[0] < 2:
            raise AttackError(f"ciphertexts must be a batch (N,C,H,W) with N >= 2, got {tuple(y.shape)}")
        n, c, h, w = y.shape
        cost = Cost(ciphertexts=n)
        with measure(cost):
            samples = y.permute(0, 1, 2, 3).reshape(n * c, h * w).double()
            corr = _correlation(samples)
            dist = (2 * (1 - corr)).clamp_min(0).sqrt()
            dist.fill_diagonal_(math.inf)
            k = min(self.neighbours, h * w - 1)
            nd, ni = dist.topk(k, dim=1, largest=False)
            rows = torch.arange(h * w).repeat_interleave(k)
            graph = csr_matrix((nd.reshape(-1).numpy() + 1e-9, (rows.numpy(), ni.reshape(-1).numpy())),
                               shape=(h * w, h * w))
            geo = shortest_path(graph, method="D", directed=False)
            finite = np.isfinite(geo)
            geo[~finite] = geo[finite].max() * 1.5
            coords = _classical_mds(torch.from_numpy(geo))
            layout = self._snap(coords, corr, h, w)
            steps = 0
            if self.anneal_seconds > 0:
                layout, steps = _anneal(layout, corr, h, w, seconds=self.anneal_seconds, radius=self.radius,
                                        seed=self.seed)
            index = torch.empty_like(layout)
            index[layout] = torch.arange(h * w)
            recovered = RecoveredPermutation((c, h, w), index, spatial=True)
            test_y = y[:100] if test_encrypted is None else torch.as_tensor(test_encrypted)
            recon = recovered.decrypt(test_y)
        result = KeyRecoveryResult(self.name, reconstructions=recon, cost=cost, recovered=recovered,
                                   details={"layout": layout, "anneal_steps": steps})
        result.metrics["ciphertexts"] = float(n)
        if reference is not None:
            origin = true_permutation(reference, (c, h, w))
            if not origin.spatial:
                raise AttackError("the ciphertext-only attack targets the shared pixel permutation ('pixel')")
            result.metrics["neighbour_accuracy"] = neighbour_accuracy(layout, origin.index, h, w)
        if test_plain is not None:
            plain = torch.as_tensor(test_plain)
            result.metrics["ssim_encrypted"] = float(ssim(plain, test_y).mean())
            result.metrics["ssim"] = float(ssim(plain, recon).mean())
            flat = recon.reshape(*recon.shape[:2], h * w)
            scores = [float(ssim(plain, flat[..., s].reshape(recon.shape)).mean()) for s in grid_symmetries(h, w)]
            best = int(np.argmax(scores))
            result.metrics["ssim_best_symmetry"] = scores[best]
            result.details["symmetry"] = best
        result.metrics["cpu_seconds"] = cost.cpu_seconds
        return result

    def _snap(self, coords: torch.Tensor, corr: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Rotate the embedding, bin it row by row onto the grid, keep the best angle."""
        best, best_score = None, -math.inf
        for a in range(self.angles):
            t = math.pi / 2 * a / self.angles
            rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=coords.dtype)
            p = coords @ rot
            rows = p[:, 1].argsort().view(h, w)
            xs = p[:, 0][rows]
            layout = torch.gather(rows, 1, xs.argsort(dim=1)).reshape(-1)
            score = _grid_score(layout, corr, h, w)
            if score > best_score:
                best, best_score = layout, score
        assert best is not None
        return best


def _classical_mds(d: torch.Tensor) -> torch.Tensor:
    n = d.shape[0]
    d2 = d.pow(2)
    j = torch.eye(n, dtype=d.dtype) - 1.0 / n
    b = -0.5 * j @ d2 @ j
    vals, vecs = torch.linalg.eigh(b)
    return vecs[:, -2:] * vals[-2:].clamp_min(0).sqrt()


def _grid_score(layout: torch.Tensor, corr: torch.Tensor, h: int, w: int) -> float:
    g = layout.view(h, w)
    return float(corr[g[:, :-1], g[:, 1:]].sum() + corr[g[:-1, :], g[1:, :]].sum())


def _anneal(
    layout: torch.Tensor, corr: torch.Tensor, h: int, w: int, *, seconds: float, radius: int, seed: int,
    t_start: float = 0.1, t_end: float = 0.001,
) -> tuple[torch.Tensor, int]:
    """Simulated annealing over swaps of nearby cells, maximizing the summed
    correlation of grid neighbours. Runs for ``seconds`` of CPU time.

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

    n, steps, temp = h * w, 0, t_start
    start = time.process_time()
    while True:
        if steps % 1024 == 0:
            elapsed = time.process_time() - start
            if elapsed >= seconds:
                break
            temp = t_start * (t_end / t_start) ** (elapsed / seconds)
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
