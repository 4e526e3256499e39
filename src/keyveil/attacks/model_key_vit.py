"""Reading the ``vit`` block key out of a keyed ViT: its buffers, or the smoothness of its folded weights.

:func:`keyveil.models.keyed` folds a block scheme into a torchvision ViT
(:mod:`keyveil.models.keyed_vit`): the in-block shuffle ``src`` and the
negative–positive flips permute and negate the columns of the patch
embedding ``conv_proj`` (column ``j`` = plain column ``src[j]``, negated where
``flip[j]``), and the block order permutes the rows of the position
embedding (row ``1 + n`` = plain row ``1 + order[n]``). It also keeps the
fold as buffers (``keyveil_token_order``, ``keyveil_fold_src``,
``keyveil_fold_scale``) so that :func:`~keyveil.models.save_keyed` can write
the plain weights back; the forward pass never reads them, so a copy of the
model exported for serving (TorchScript, ONNX, a state dict without them)
may lack them while its weights still carry the key.

* :func:`fold_from_buffers` reads ``(order, src, flip)`` off the buffers.
* :func:`fold_from_weights` recovers them from the weights alone, assuming
  the plain model was *trained*: trained weights are smooth in space, so
  neighbouring pixels' embedding columns and neighbouring patches' position
  embeddings are more alike than distant ones. The flips follow from the
  signs of the columns' cosine similarities along a maximum spanning tree of
  their magnitudes (trained columns of nearby pixels point the same way);
  then similarities become a layout by annealing (the ciphertext-only
  attack's objective, summed similarity of grid neighbours). Smoothness cannot tell the 8
  symmetries of a square grid apart, nor a global negative from a positive;
  :func:`best_candidate` picks among those candidates by running the model on
  public images encrypted with each (the one whose outputs fit best).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import AttackError, RecoveredPermutation
from .ciphertext_only import grid_symmetries
from .layout import anneal_swaps, grid_score

__all__ = ["fold_from_buffers", "fold_from_weights", "fold_to_permutation", "best_candidate", "VitFold"]

VitFold = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(order, src, flip)`` as :func:`keyveil.models.keyed_vit.block_fold` returns them."""


def fold_from_buffers(state: Mapping[str, torch.Tensor], what: str) -> VitFold:
    """The fold's buffers; :class:`AttackError` when the model or file has none."""
    order, src, scale = (state.get(f"keyveil_{n}") for n in ("token_order", "fold_src", "fold_scale"))
    if order is None or src is None or scale is None:
        raise AttackError(f"found no key material in {what}: no keyveil_token_order / keyveil_fold_src buffers. "
                          "A keyed checkpoint saved without key material (save_keyed's default) holds the plain "
                          "weights; method='weights' reads the key's trace in the weights of a keyed model "
                          "that lost its buffers")
    return order.long().cpu(), src.long().cpu(), scale.cpu() < 0


def fold_to_permutation(fold: VitFold, chw: tuple[int, int, int], p: int) -> RecoveredPermutation:
    """The fold as a value-level :class:`RecoveredPermutation` (decrypts ``vit`` ciphertexts)."""
    order, src, flip = fold
    c, h, w = chw
    nw = w // p
    k = torch.arange(c * h * w)
    ch, rest = k // (h * w), k % (h * w)
    r, col = rest // w, rest % w
    n, j = (r // p) * nw + col // p, ch * p * p + (r % p) * p + col % p
    blk, el = order[n], src[j]
    index = (el // (p * p)) * (h * w) + ((blk // nw) * p + (el % (p * p)) // p) * w + (blk % nw) * p + el % p
    return RecoveredPermutation(chw, index, flip[j].clone() if bool(flip.any()) else None)


def _cosine(rows: torch.Tensor, *, center: bool = True) -> torch.Tensor:
    v = rows.double() - rows.double().mean(0, keepdim=True) if center else rows.double()
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return v @ v.T


def _layout(sim: torch.Tensor, h: int, w: int, *, seconds: float, restarts: int, seed: int) -> torch.Tensor:
    """Cell -> unit maximizing the summed similarity of grid neighbours (annealed from random starts)."""
    n = h * w
    best, best_score = torch.arange(n), -float("inf")
    gen = torch.Generator().manual_seed(seed)
    for r in range(restarts):
        start = torch.randperm(n, generator=gen)
        layout, _ = anneal_swaps(start, sim, h, w, seconds=seconds / restarts, radius=max(h, w), seed=seed + r)
        score = grid_score(layout, sim, h, w)
        if score > best_score:
            best, best_score = layout, score
    return best


def _signs(sim: torch.Tensor) -> torch.Tensor:
    """±1 per unit from the similarities' signs along a maximum spanning tree of ``|sim|`` (Prim)."""
    n = sim.shape[0]
    sign = torch.ones(n)
    inside = torch.zeros(n, dtype=torch.bool)
    inside[0] = True
    strength = sim[0].abs().clone()
    parent = torch.zeros(n, dtype=torch.long)
    for _ in range(n - 1):
        cand = torch.where(inside, torch.full_like(strength, -1.0), strength)
        v = int(cand.argmax())
        sign[v] = sign[parent[v]] * (1.0 if float(sim[v, parent[v]]) >= 0 else -1.0)
        inside[v] = True
        better = (sim[v].abs() > strength) & ~inside
        strength = torch.where(better, sim[v].abs(), strength)
        parent = torch.where(better, torch.full_like(parent, v), parent)
    return sign


def fold_from_weights(conv_weight: torch.Tensor, pos_embedding: torch.Tensor, grid: tuple[int, int], *,
                      seconds: float = 4.0, seed: int = 0) -> list[VitFold]:
    """Candidate folds from the smoothness of trained weights (see the module docstring).

    Args:
        conv_weight: the keyed ``conv_proj.weight``, ``(E, C, p, p)``.
        pos_embedding: the keyed ``encoder.pos_embedding``, ``(1, 1 + N, E)``.
        grid: the ``(rows, cols)`` of patches.
        seconds: CPU seconds of annealing (split between the two layouts).

    Returns:
        The 8·8·2 candidates (grid symmetry of the block order, of the in-block order, global flip),
        the annealed layouts first.
    """
    e, c, p, _ = conv_weight.shape
    if c != 1:
        raise AttackError(f"method='weights' lays out the in-block pixels of one channel; this ViT embeds {c} "
                          "channels (colour: not implemented)")
    cols = conv_weight.detach().double().reshape(e, p * p).T.cpu()
    sim_px = _cosine(cols, center=False)  # a flip negates a column: no common part to remove
    rows = pos_embedding.detach().double()[0, 1:].cpu()
    if rows.shape[0] != grid[0] * grid[1]:
        raise AttackError(f"the position embedding has {rows.shape[0]} patch rows, not {grid[0]}x{grid[1]}")
    sim_blk = _cosine(rows)
    sign = _signs(sim_px)
    px = _layout(sim_px * sign[:, None] * sign[None, :], p, p, seconds=seconds / 3, restarts=4,
                 seed=seed)  # cell -> encrypted element
    blk = _layout(sim_blk, *grid, seconds=2 * seconds / 3, restarts=4, seed=seed + 100)  # cell -> token
    out: list[VitFold] = []
    for sb in grid_symmetries(*grid):
        for sp in grid_symmetries(p, p):
            order, src = torch.empty_like(blk), torch.empty_like(px)
            order[blk[sb]] = torch.arange(blk.numel())
            src[px[sp]] = torch.arange(px.numel())
            for s in (sign, -sign):
                out.append((order, src, s < 0))
    return out


def best_candidate(model: nn.Module, candidates: list[VitFold], chw: tuple[int, int, int], p: int,
                   plain: torch.Tensor, labels: torch.Tensor | None, mean: Any, std: Any) -> tuple[int, list[float]]:
    """The candidate under which ``model`` fits public ``plain`` images best (lowest loss), and every loss.

    The loss is the cross-entropy with ``labels`` when given, else the mean entropy of the outputs.
    """
    x = torch.as_tensor(plain)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    param = next(model.parameters())
    m = torch.zeros(chw[0]) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
    s = torch.ones(chw[0]) if std is None else torch.as_tensor(std, dtype=torch.float32)
    losses = []
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for cand in candidates:
                enc = fold_to_permutation(cand, chw, p).encrypt(x)
                logits = model(((enc - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)).to(param))
                if labels is not None:
                    losses.append(float(F.cross_entropy(logits.float(), torch.as_tensor(labels).to(logits.device))))
                else:
                    prob = logits.float().softmax(1)
                    losses.append(float(-(prob * prob.clamp_min(1e-12).log()).sum(1).mean()))
    finally:
        model.train(was)
    return int(torch.tensor(losses).argmin()), losses
