"""Ciphertext-only attack on LE (and ELE's blocks): the shared in-block nibble shuffle, by graph matching.

LE (Tanaka 2018) splits every 8-bit value into two 4-bit nibbles and applies ONE
secret permutation and flip mask to the ``2·C·M²`` nibbles of every M×M block
of every image. A server holding many ciphertexts under one key therefore holds
``images × blocks`` samples of the same scrambled unit vector. The correlations
between the units are those of the plain image's nibbles, permuted: neighbouring
high nibbles correlate strongly, low nibbles hardly. The attacker knows the
scheme and what natural images look like (public images of the same kind, never
the victims'), so it computes the *template* of those correlations from public
plain images and looks for the permutation that maps the ciphertext's
correlation matrix onto the template (a quadratic assignment, solved by swap
hill-climbing from a spectral start; |correlation|, so flips do not matter),
then reads each unit's flip off the sign of its correlations.

ELE uses a different permutation and mask per block position and scrambles the
blocks: the same matching runs per block position (samples: the images), which
undoes each block's inside; the blocks stay where the key put them (a block
jigsaw would be the next step).
"""

from __future__ import annotations

import torch

from ..schemes.functional import join_nibbles, split_nibbles
from .base import Attack, AttackError, AttackResult, Cost, measure, register_attack

__all__ = ["NibbleLayout", "block_units", "units_to_image"]


def block_units(x: torch.Tensor, m: int, *, nibbles: bool = True) -> torch.Tensor:
    """uint8 ``(B,C,H,W)`` -> ``(B, blocks, 2·C·M²)`` nibbles in the block schemes' order (c, i, j, high/low),
    or ``(B, blocks, C·M²)`` values without ``nibbles``."""
    b, c, h, w = x.shape
    if h % m or w % m:
        raise AttackError(f"{m}x{m} blocks do not tile {h}x{w} images")
    v = x.reshape(b, c, h // m, m, w // m, m).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // m) * (w // m), c * m * m)
    if not nibbles:
        return v
    return split_nibbles(v.reshape(-1, c * m * m)).reshape(b, (h // m) * (w // m), 2 * c * m * m)


def units_to_image(u: torch.Tensor, chw: tuple[int, int, int], m: int, *, nibbles: bool = True) -> torch.Tensor:
    """Inverse of :func:`block_units`."""
    c, h, w = chw
    b = u.shape[0]
    flat = u.reshape(-1, u.shape[-1]).to(torch.uint8)
    v = (join_nibbles(flat) if nibbles else flat).reshape(b, h // m, w // m, c, m, m)
    return v.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _corr(samples: torch.Tensor) -> torch.Tensor:
    x = samples.double()
    x = x - x.mean(0)
    sd = x.pow(2).mean(0).sqrt().clamp_min(1e-9)
    return (x.T @ x) / x.shape[0] / (sd[:, None] * sd[None, :])


def _match(r: torch.Tensor, t: torch.Tensor, restarts: int, gen: torch.Generator) -> torch.Tensor:
    """``p`` maximising sum |r[p[a], p[b]]| * |t[a, b]|: template site ``a`` is ciphertext unit ``p[a]``."""
    a_abs, t_abs = r.abs().clone(), t.abs().clone()
    a_abs.fill_diagonal_(0)
    t_abs.fill_diagonal_(0)
    n = a_abs.shape[0]
    best, best_score = torch.arange(n), -1.0
    for k in range(restarts):
        p = torch.randperm(n, generator=gen) if k else _spectral_start(a_abs, t_abs)
        improved = True
        while improved:
            improved = False
            for i in range(n):  # best swap partner of site i, all partners at once
                ap = a_abs[p][:, p]
                gain = _swap_gains(ap, t_abs, i)
                j = int(gain.argmax())
                if float(gain[j]) > 1e-9:
                    p[[i, j]] = p[[j, i]]
                    improved = True
        score = float((a_abs[p][:, p] * t_abs).sum())
        if score > best_score:
            best, best_score = p.clone(), score
    return best


def _spectral_start(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Sites and units paired by the order of their leading eigenvector entries."""
    va = torch.linalg.eigh(a)[1][:, -1]
    vt = torch.linalg.eigh(t)[1][:, -1]
    va, vt = va * torch.sign(va.sum()), vt * torch.sign(vt.sum())
    p = torch.empty(len(va), dtype=torch.int64)
    p[torch.argsort(vt)] = torch.argsort(va)
    return p


def _swap_gains(ap: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
    """Objective gain of swapping the units at sites ``i`` and ``j``, for every ``j`` at once.

    ``ap`` is the ciphertext affinity permuted to the sites; both matrices symmetric with zero diagonals:
    gain_j = 2·[Σ_k (ap[j,k] − ap[i,k])·(t[i,k] − t[j,k]) + 2·ap[i,j]·t[i,j]].
    """
    cross = ap @ t[i] + t @ ap[i] - (ap * t).sum(1) - ap[i] @ t[i]
    gain = 2 * (cross + 2 * ap[i] * t[i])
    gain[i] = 0.0
    return gain


def _flips(rp: torch.Tensor, t: torch.Tensor, mean_c: torch.Tensor, mean_t: torch.Tensor,
           white: int = 15) -> torch.Tensor:
    """Which sites hold a flipped unit (``white - u``).

    Relative flips: ``rp[a,b] ≈ s_a s_b t[a,b]``, so ``s`` is the sign pattern of the leading eigenvector of
    ``rp ∘ sign(t)``. Correlations cannot tell ``s`` from ``-s`` (the whole block negated); the units' means
    can: a flipped unit's mean is ``white -`` the template's.
    """
    m = rp * torch.sign(t)
    m = (m + m.T) / 2
    v = torch.linalg.eigh(m)[1][:, -1]
    s = torch.where(v >= 0, 1.0, -1.0).double()
    vote = (mean_c - mean_t).abs() - (mean_c - (white - mean_t)).abs()  # > 0: looks flipped
    if float((vote * s).sum()) < 0:  # the sites with s = +1 should look flipped less than the others
        s = -s
    return s > 0


def _signature(units: torch.Tensor, white: int) -> torch.Tensor:
    """What a block's statistics look like whatever its shuffle and flips: sorted |corr| and folded means."""
    r = _corr(units).abs()
    iu = torch.triu_indices(r.shape[0], r.shape[0], 1)
    mean = units.double().mean(0)
    folded = torch.minimum(mean, white - mean) / white
    return torch.cat([r[iu[0], iu[1]].sort().values, folded.sort().values])


def _per_block(cu: torch.Tensor, pu: torch.Tensor, white: int, restarts: int, candidates: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ELE: (unit map, flips, plain position) of every cipher block; see :class:`NibbleLayout`."""
    from scipy.optimize import linear_sum_assignment

    n = cu.shape[1]
    sig_c = torch.stack([_signature(cu[:, g], white) for g in range(n)])
    sig_p = torch.stack([_signature(pu[:, q], white) for q in range(n)])
    near = torch.cdist(sig_c, sig_p).topk(min(candidates, n), largest=False).indices
    temps = [_corr(pu[:, q]) for q in range(n)]
    score = torch.full((n, n), -1e9, dtype=torch.float64)
    found: dict[tuple[int, int], torch.Tensor] = {}
    for g in range(n):
        r = _corr(cu[:, g])
        for q in near[g].tolist():
            t = temps[q]
            perm = _match(r, t, restarts, gen)
            score[g, q] = float((r[perm][:, perm].abs() * t.abs()).sum()) / float(t.abs().pow(2).sum().clamp_min(1e-9))
            found[(g, q)] = perm
    rows, cols = linear_sum_assignment(score.numpy(), maximize=True)
    place = torch.as_tensor(cols)[torch.argsort(torch.as_tensor(rows))]
    maps, flips = [], []
    for g in range(n):
        q = int(place[g])
        perm = found.get((g, q))
        if perm is None:  # assigned outside its candidates: match it there now
            perm = _match(_corr(cu[:, g]), temps[q], restarts, gen)
        r = _corr(cu[:, g])
        maps.append(perm)
        flips.append(_flips(r[perm][:, perm], temps[q], cu[:, g].double().mean(0)[perm], pu[:, q].double().mean(0),
                            white))
    return torch.stack(maps), torch.stack(flips), place


@register_attack
class NibbleLayout(Attack):
    """Recover LE's shared in-block nibble permutation and flips from ciphertexts alone (see the module text).

    Args:
        block_size: the scheme's block side M.
        per_block: ELE: one permutation and mask per block, blocks scrambled. Each cipher block's
            correlations (samples: the images) are matched to the templates of the ``candidates`` plain
            block positions whose statistics look most alike (sorted |correlations| and folded means:
            invariant to the shuffle and flips), and the blocks are placed by the best total match
            (a linear assignment, SciPy).
        nibbles: units are 4-bit halves (LE); ``False``: 8-bit values (the ``vit`` scheme's shared in-block
            shuffle and flips, whose blocks then stay scrambled for a block jigsaw to place).
        restarts: hill-climbing restarts (the first starts from the spectral order).
        seed: seed of the restarts.
    """

    name = "ciphertext-only-nibbles"
    description = "LE/ELE: match the ciphertext nibbles' correlations to a public template (graph matching)"

    def __init__(self, *, block_size: int = 4, per_block: bool = False, restarts: int = 4, seed: int = 0,
                 nibbles: bool = True, candidates: int = 6) -> None:
        self.candidates = int(candidates)
        self.block_size, self.per_block, self.restarts, self.seed = int(block_size), bool(per_block), int(restarts), seed
        self.nibbles = bool(nibbles)

    def run(self, *, ciphertexts: torch.Tensor, public: torch.Tensor, test_encrypted: torch.Tensor,
            test_plain: torch.Tensor | None = None) -> AttackResult:
        """Learn the unit map from ``ciphertexts``, the template from ``public`` plain images, decrypt ``test_encrypted``.

        Metrics (with ``test_plain``): ``units_correct`` (fraction of nibbles put back exactly, high nibbles
        ``high_correct``), ``ssim`` of the reconstructions and ``ssim_encrypted``.
        """
        from ..metrics import ssim

        if ciphertexts.dtype != torch.uint8 or public.dtype != torch.uint8:
            raise AttackError("LE works on 8-bit images: pass uint8 ciphertexts and public images")
        m, chw = self.block_size, tuple(int(v) for v in ciphertexts.shape[1:])
        cost = Cost(ciphertexts=len(ciphertexts))
        gen = torch.Generator().manual_seed(self.seed)
        with measure(cost):
            nib, white = self.nibbles, 15 if self.nibbles else 255
            cu, pu = block_units(ciphertexts, m, nibbles=nib), block_units(public, m, nibbles=nib)
            tu = block_units(test_encrypted, m, nibbles=nib)
            if self.per_block:
                p, f, place = _per_block(cu, pu, white, self.restarts, self.candidates, gen)
                tu = tu[:, torch.argsort(place)]  # cipher block g goes to plain position place[g]
                p, f = p[torch.argsort(place)], f[torch.argsort(place)]
            else:
                r, t = _corr(cu.reshape(-1, cu.shape[-1])), _corr(pu.reshape(-1, pu.shape[-1]))
                q = _match(r, t, self.restarts, gen)  # site a <- unit q[a]
                fl = _flips(r[q][:, q], t, cu.reshape(-1, cu.shape[-1]).double().mean(0)[q],
                            pu.reshape(-1, pu.shape[-1]).double().mean(0), white)
                p, f = q.expand(tu.shape[1], -1), fl.expand(tu.shape[1], -1)
            rec_u = torch.gather(tu.long(), 2, p[None].expand(tu.shape[0], -1, -1))
            rec_u = torch.where(f[None], white - rec_u, rec_u)
            rec = units_to_image(rec_u, chw, m, nibbles=nib)
        result = AttackResult(self.name, reconstructions=rec, cost=cost,
                              details={"block_size": m, "per_block": self.per_block, "nibbles": nib})
        result.metrics["ciphertexts"] = float(len(ciphertexts))
        if test_plain is not None:
            truth = block_units(test_plain, m, nibbles=nib).long()
            hi = torch.zeros(truth.shape[-1], dtype=torch.bool)
            hi[0 :: 2 if nib else 1] = True
            same = rec_u == truth
            result.metrics.update(units_correct=float(same.double().mean()),
                                  high_correct=float(same[..., hi].double().mean()),
                                  ssim=float(ssim(test_plain, rec).mean()),
                                  ssim_encrypted=float(ssim(test_plain, test_encrypted).mean()))
        return result
