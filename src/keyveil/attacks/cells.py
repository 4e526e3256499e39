"""Key recovery through a per-image step: the keyed shuffle of ``a+pixel`` read off at the level of cells.

A chain such as ``visualmixer-seed+pixel`` or ``mix+pixel`` first applies fresh
per-image randomness that never leaves a *cell* (VisualMixer's windows are at most
``ws_max`` pixels and aligned; ``mix`` mixes sub-patches inside one patch), then
one fixed keyed permutation of positions. An image that is constant on every
cell passes the per-image step unchanged, so crafted images spelling each cell's
index in base 256 reveal, for every encrypted position, the cell its value came
from; known pairs reveal the same by intersecting, pair after pair, the values
each cell holds. The keyed step is then undone up to the order of the positions
inside each cell — which the per-image step scrambles anyway, so what is left
is exactly what the per-image scheme alone would show.

Only evaluation code reads the true permutation (:func:`score_cells`).
"""

from __future__ import annotations

import torch

from ..schemes import Scheme
from .base import AttackError, RecoveredPermutation

__all__ = ["cell_images", "cells_to_permutation", "match_cells", "score_cells", "cell_size", "moves_values_only"]


def _grid(h: int, w: int, cell: int) -> tuple[int, int]:
    if cell < 1 or h % cell or w % cell:
        raise AttackError(f"cells of {cell}x{cell} do not tile {h}x{w} images: pad the images or pick a cell "
                          "size that divides both sides")
    return h // cell, w // cell


def cell_of_position(h: int, w: int, cell: int) -> torch.Tensor:
    """``(H*W,)`` the cell index (row-major over the grid of cells) of every position."""
    gh, gw = _grid(h, w, cell)
    rows = torch.arange(h)[:, None] // cell
    cols = torch.arange(w)[None, :] // cell
    return (rows * gw + cols).reshape(-1)


def cell_images(chw: tuple[int, int, int], cell: int) -> torch.Tensor:
    """uint8 ``(D,C,H,W)``: image ``d`` holds digit ``d`` (base 256) of its cell's index on every pixel of the cell."""
    c, h, w = chw
    idx = cell_of_position(h, w, cell)
    cells = int(idx.max()) + 1
    digits = 1
    while 256**digits < cells:
        digits += 1
    planes = torch.stack([(idx // 256**d) % 256 for d in range(digits)]).to(torch.uint8)
    return planes.view(digits, 1, h, w).expand(digits, c, h, w).contiguous()


def cells_to_permutation(source_cell: torch.Tensor, chw: tuple[int, int, int], cell: int) -> RecoveredPermutation:
    """A spatial :class:`RecoveredPermutation` that puts every encrypted position back into its source cell.

    Inside a cell the positions are filled in order (the true order there is not recoverable through a
    per-image step that reshuffles it).

    Raises:
        AttackError: the map does not send exactly ``cell²`` positions to every cell (not a keyed
            permutation of positions behind a cell-preserving step).
    """
    c, h, w = chw
    pos_cell = cell_of_position(h, w, cell)
    cells = int(pos_cell.max()) + 1
    source_cell = source_cell.long().cpu()
    if source_cell.numel() != h * w or bool((source_cell < 0).any()) or bool((source_cell >= cells).any()) or \
            not bool((torch.bincount(source_cell, minlength=cells) == cell * cell).all()):
        raise AttackError("the encrypted positions do not come from the cells in equal numbers: the scheme is not "
                          "a per-image step inside cells followed by one keyed shuffle of positions")
    outputs = torch.argsort(source_cell, stable=True)  # encrypted positions grouped by source cell
    sources = torch.argsort(pos_cell, stable=True)  # plain positions grouped by cell
    index = torch.empty(h * w, dtype=torch.int64)
    index[outputs] = sources
    return RecoveredPermutation(chw, index, None, spatial=True)


def match_cells(plain: torch.Tensor, encrypted: torch.Tensor, cell: int, *,
                exact: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """For every encrypted position, the cell whose values fit it in the most pairs.

    With ``exact`` (the per-image step moves values: VisualMixer) a value can only have come from a
    cell that holds it, in every channel; otherwise (it averages them: ``mix``) from a cell whose
    range holds it. The true cell fits in every pair, others by chance, less often with every pair.

    Returns:
        ``(source_cell, determined)``: ``(H*W,)`` each; ``determined`` where one cell fits all pairs.
    """
    n, c, h, w = plain.shape
    pos_cell = cell_of_position(h, w, cell)
    cells = int(pos_cell.max()) + 1
    score = torch.zeros(cells, h * w, dtype=torch.int32)
    for k in range(n):  # one pair at a time: (cells, 256) membership per channel, gathered at the ciphertext
        fits = torch.ones(cells, h * w, dtype=torch.bool)
        for ch in range(c):
            p, e = plain[k, ch].reshape(-1).long(), encrypted[k, ch].reshape(-1).long()
            if exact:
                member = torch.zeros(cells, 256, dtype=torch.bool)
                member[pos_cell, p] = True
                fits &= member[:, e]
            else:
                lo = torch.full((cells,), 255, dtype=torch.long).scatter_reduce(0, pos_cell, p, "amin")
                hi = torch.zeros(cells, dtype=torch.long).scatter_reduce(0, pos_cell, p, "amax")
                fits &= (e[None, :] >= lo[:, None]) & (e[None, :] <= hi[:, None])
        score += fits.int()
    best = score.max(0)
    determined = (score == best.values).sum(0) == 1
    return best.indices, determined


def score_cells(recovered: RecoveredPermutation, reference: Scheme, cell: int) -> dict[str, float]:
    """Fraction of encrypted positions put back into their true cell (the keyed step's true permutation)."""
    from .truth import true_permutation

    c, h, w = recovered.shape
    truth = true_permutation(_keyed_step(reference), (c, h, w))
    pos_cell = cell_of_position(h, w, cell)
    same = pos_cell[recovered.index.cpu()] == pos_cell[truth.index.cpu()]
    return {"fraction_cells_recovered": float(same.double().mean())}


def _keyed_step(scheme: Scheme) -> Scheme:
    steps = getattr(scheme, "steps", None)
    return steps[-1] if steps else scheme


def cell_size(scheme: Scheme) -> int | None:
    """The cell a chain's per-image steps stay inside, when its last step is a keyed ``pixel`` shuffle.

    ``None`` for anything else (a scheme that is not such a chain).
    """
    steps = list(getattr(scheme, "steps", []) or [])
    if len(steps) < 2 or type(steps[-1]).name != "pixel" or getattr(steps[-1], "per_channel", False):
        return None
    size = 1
    for step in steps[:-1]:
        name = type(step).name
        if name.startswith("visualmixer"):
            size = max(size, int(getattr(step, "window", None) or step.ws_max))
        elif name == "mix":
            size = max(size, int(step.patch_size))
        else:
            return None
    return size


def moves_values_only(scheme: Scheme) -> bool:
    """Whether the chain's per-image steps only move values (VisualMixer) rather than average them (``mix``)."""
    return all(type(step).name.startswith("visualmixer") for step in list(getattr(scheme, "steps", []))[:-1])
