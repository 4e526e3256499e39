"""Key recovery for fixed-key rearrangements: chosen- and known-plaintext attacks.

Any scheme that applies the same permutation (and negative–positive flips) to
every image — ``pixel``, and the ``block`` presets ``etc``/``le``/``ele``/``vit``
— is a substitution-free cipher: each output value is one input value. Its
key space (log2 (H·W)! bits and more) is irrelevant, because the permutation
can be read off the oracle position by position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..schemes import Scheme
from ..schemes.functional import join_nibbles
from .base import (
    Attack,
    AttackError,
    Cost,
    KeyRecoveryResult,
    Oracle,
    RecoveredPermutation,
    measure,
    register_attack,
)
from .matching import match_units
from .truth import score_permutation, true_permutation

__all__ = ["ChosenPlaintext", "KnownPlaintext", "crafted_images"]


def _digits_needed(n: int, base: int) -> int:
    d = 1
    while base**d < n:
        d += 1
    return d


def crafted_images(chw: Sequence[int], *, spatial: bool = False, nibbles: bool = False) -> torch.Tensor:
    """The chosen plaintexts: image ``d`` holds digit ``d`` of every unit's index.

    Units are the ``H*W`` positions (``spatial``, every channel the same), the
    ``C*H*W`` values (base 256) or the ``2*C*H*W`` nibbles (base 16). Needs
    ⌈log_base(units)⌉ images (Jolfaei et al., IEEE TIFS 2016).

    Returns:
        uint8 ``(D,C,H,W)``.

    Examples:
        >>> crafted_images((3, 32, 32)).shape  # 3072 values: 2 base-256 digits
        torch.Size([2, 3, 32, 32])
        >>> crafted_images((3, 224, 224)).shape[0], crafted_images((3, 224, 224), spatial=True).shape[0]
        (3, 2)
    """
    c, h, w = (int(v) for v in chw)
    units = h * w if spatial else c * h * w * (2 if nibbles else 1)
    base = 16 if nibbles else 256
    digits = _digits_needed(units, base)
    idx = torch.arange(units, dtype=torch.int64)
    planes = torch.stack([(idx // base**d) % base for d in range(digits)]).to(torch.uint8)
    if spatial:
        return planes.view(digits, 1, h, w).expand(digits, c, h, w).contiguous()
    if nibbles:
        return join_nibbles(planes).view(digits, c, h, w)
    return planes.view(digits, c, h, w)


def _split_units(y: torch.Tensor, spatial: bool, nibbles: bool) -> torch.Tensor:
    """``(D,C,H,W)`` uint8 -> ``(D, C, units)`` (spatial) or ``(D, units)`` int64."""
    d, c, h, w = y.shape
    if spatial:
        return y.reshape(d, c, h * w).long()
    if nibbles:
        flat = y.reshape(d, -1).long()
        return torch.stack((flat >> 4, flat & 15), dim=-1).reshape(d, -1)
    return y.reshape(d, -1).long()


def _is_permutation(idx: torch.Tensor) -> bool:
    n = idx.numel()
    return bool(((idx >= 0) & (idx < n)).all()) and bool((torch.bincount(idx, minlength=n) == 1).all())


@register_attack
class ChosenPlaintext(Attack):
    """Recover a fixed-key permutation from ⌈log_256(units)⌉ crafted images.

    Image ``d`` spells digit ``d`` (base 256) of every unit's index; the
    encrypted digits, read back per output unit, spell where that unit came
    from. If the decoded indices are not a permutation, the scheme also flips
    values (EtC/ViT negative–positive step): one black image then reveals the
    flip mask (black comes back white where flipped), which costs one more query.

    Args:
        spatial: assume one permutation of the H·W positions shared by all
            channels (``pixel``); needs ⌈log_256(H·W)⌉ images. Default: the
            general case, a permutation of all C·H·W values.
        nibbles: the scheme rearranges 4-bit halves (``le``, ``ele``): digits
            are base 16 over the 2·C·H·W nibbles.
        flips: ``None`` detects flips when needed, ``True`` always spends the
            black image, ``False`` never does.
        cell: for a chain whose per-image steps stay inside ``cell``×``cell``
            cells before a keyed ``pixel`` shuffle (``visualmixer-seed+pixel``,
            ``mix+pixel``): images constant on every cell spell the cells'
            indices, which pass the per-image step unchanged; the keyed step is
            recovered up to the order inside each cell (:mod:`.cells`).

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("pixel", Key.generate())
        >>> r = ChosenPlaintext().run(oracle=s.encrypt, image_size=(32, 32), channels=3)
        >>> r.cost.queries
        2
        >>> x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        >>> bool(torch.equal(r.decrypt(s.encrypt(x)), x))
        True
    """

    name = "chosen-plaintext"
    description = "crafted images spelling each position in base 256 (Jolfaei et al. 2016)"

    def __init__(self, *, spatial: bool = False, nibbles: bool = False, flips: bool | None = None,
                 cell: int = 1) -> None:
        if spatial and nibbles:
            raise AttackError("spatial=True and nibbles=True exclude each other: choose one unit")
        if cell < 1 or (cell > 1 and nibbles):
            raise AttackError(f"cell must be >= 1 and works on positions, not nibbles; got cell={cell}")
        self.spatial = bool(spatial) or cell > 1
        self.nibbles = bool(nibbles)
        self.flips = flips
        self.cell = int(cell)

    def run(
        self,
        *,
        oracle: Oracle,
        image_size: Sequence[int],
        channels: int = 3,
        reference: Scheme | None = None,
    ) -> KeyRecoveryResult:
        """Query ``oracle`` and recover its permutation.

        Args:
            oracle: encrypts a uint8 batch ``(B,C,H,W)`` under the unknown key.
            image_size: ``(H, W)``.
            channels: C.
            reference: the attacked scheme, only to score the result
                (adds ``fraction_recovered``).

        Returns:
            A :class:`KeyRecoveryResult`; ``reconstructions`` is ``None``.
        """
        h, w = (int(v) for v in image_size)
        chw = (int(channels), h, w)
        if self.cell > 1:
            return self._run_cells(oracle, chw, reference)
        cost = Cost()
        with measure(cost):
            images = crafted_images(chw, spatial=self.spatial, nibbles=self.nibbles)
            base = 16 if self.nibbles else 256
            y = self._query(oracle, images, cost)
            units = _split_units(y, self.spatial, self.nibbles)
            mask = None
            idx = self._decode(units, base)
            if self.flips or (self.flips is None and not _is_permutation(idx)):
                black = self._query(oracle, torch.zeros(1, *chw, dtype=torch.uint8), cost)
                white_units = _split_units(black, self.spatial, self.nibbles)[0]
                mask = white_units != 0
                if self.spatial:
                    if not bool((mask == mask[:1]).all()):
                        raise AttackError("flips differ between channels; run with spatial=False")
                    mask = mask[0]
                units = torch.where(mask, (base - 1) - units, units)
                idx = self._decode(units, base)
            if not _is_permutation(idx):
                raise AttackError(
                    "the oracle's outputs are not a fixed-key permutation of the chosen units"
                    + ("" if self.nibbles else " (if the scheme splits values into nibbles, pass nibbles=True)")
                )
            recovered = RecoveredPermutation(chw, idx, mask, spatial=self.spatial, nibbles=self.nibbles)
        result = KeyRecoveryResult(self.name, cost=cost, recovered=recovered,
                                   details={"crafted_images": int(images.shape[0])})
        result.metrics["queries"] = float(cost.queries)
        if reference is not None:
            result.metrics.update(score_permutation(recovered, true_permutation(reference, chw)))
        return result

    def _run_cells(self, oracle: Oracle, chw: tuple[int, int, int], reference: Scheme | None) -> KeyRecoveryResult:
        from .cells import cell_images, cells_to_permutation, score_cells

        cost = Cost()
        with measure(cost):
            images = cell_images(chw, self.cell)
            units = _split_units(self._query(oracle, images, cost), True, False)
            src = self._decode(units, 256)
            recovered = cells_to_permutation(src, chw, self.cell)
        result = KeyRecoveryResult(self.name, cost=cost, recovered=recovered,
                                   details={"crafted_images": int(images.shape[0]), "cell": self.cell})
        result.metrics.update(queries=float(cost.queries), cell=float(self.cell))
        if reference is not None:
            result.metrics.update(score_cells(recovered, reference, self.cell))
        return result

    def _query(self, oracle: Oracle, images: torch.Tensor, cost: Cost) -> torch.Tensor:
        out = torch.as_tensor(oracle(images.clone()))
        cost.queries += int(images.shape[0])
        if out.shape != images.shape:
            raise AttackError(f"the oracle returned shape {tuple(out.shape)} for input {tuple(images.shape)}")
        if out.dtype != torch.uint8:
            out = torch.round(out.float() * (255 if out.is_floating_point() else 1)).to(torch.uint8)
        return out.cpu()

    def _decode(self, units: torch.Tensor, base: int) -> torch.Tensor:
        weights = torch.tensor([base**d for d in range(units.shape[0])], dtype=torch.int64)
        if self.spatial:
            idx = (units * weights[:, None, None]).sum(0)  # (C, HW)
            if not bool((idx == idx[:1]).all()):
                return torch.full_like(idx[0], -1)  # channels disagree: not a shared permutation
            return idx[0]
        return (units * weights[:, None]).sum(0)


@register_attack
class KnownPlaintext(Attack):
    """Recover a fixed-key rearrangement (with flips) from ``n`` (plain, encrypted) pairs.

    Each output unit's values across the ``n`` pairs (and the C channels, when
    ``spatial``) form a vector that must equal the vector of its source unit —
    or its complement, with ``flips`` (negative–positive steps). Units whose
    vector is unique are determined; units sharing a vector (flat backgrounds)
    are assigned within their group in order, which is right by chance only.
    Li et al., Signal Processing: Image Communication 2008.

    Settings per scheme: ``pixel`` spatial; ``pixel-np`` spatial + flips;
    ``etc``/``vit``/``block`` values + flips; ``le``/``ele`` nibbles + flips.
    For block schemes without an in-block shuffle (``etc``) the block-level
    ``known-plaintext-blocks`` needs a single pair.

    Args:
        spatial: one permutation of the H·W positions shared by the channels
            (``pixel``); otherwise a permutation of all C·H·W values.
        flips: also match complemented units (``white − v``).
        nibbles: work on 4-bit halves (LE/ELE; ``white`` = 15; uint8 images only).
        cell: a chain with per-image steps inside ``cell``×``cell`` cells before a
            keyed ``pixel`` shuffle: each encrypted position goes to the cell whose
            values fit it in the most pairs (:func:`.cells.match_cells`).
        exact: with ``cell``: the per-image step only moves values (VisualMixer);
            ``False`` when it averages them (``mix``): a value fits a cell whose range holds it.

    Examples:
        >>> import torch
        >>> from keyveil import Key, schemes
        >>> s = schemes.create("pixel", Key.generate())
        >>> x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
        >>> r = KnownPlaintext().run(plain=x, encrypted=s.encrypt(x), reference=s)
        >>> r.metrics["fraction_recovered"]
        1.0
        >>> s = schemes.create("vit", Key.generate(), block_size=4)
        >>> x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
        >>> r = KnownPlaintext(spatial=False, flips=True).run(plain=x, encrypted=s.encrypt(x), reference=s)
        >>> r.metrics["fraction_recovered_with_flips"]
        1.0
    """

    name = "known-plaintext"
    description = "match value vectors (or their complements) across n known (plain, encrypted) pairs (Li et al. 2008)"

    def __init__(self, *, spatial: bool = True, flips: bool = False, nibbles: bool = False, cell: int = 1,
                 exact: bool = True) -> None:
        if nibbles and spatial:
            raise AttackError("nibbles=True works on values, not positions: pass spatial=False")
        if cell < 1 or (cell > 1 and (nibbles or flips or not spatial)):
            raise AttackError(f"cell={cell}: cells work on positions (spatial=True) without flips or nibbles")
        self.spatial, self.flips, self.nibbles, self.cell = bool(spatial), bool(flips), bool(nibbles), int(cell)
        self.exact = bool(exact)

    def run(
        self,
        *,
        plain: torch.Tensor,
        encrypted: torch.Tensor,
        reference: Scheme | None = None,
    ) -> KeyRecoveryResult:
        """Recover the rearrangement from pairs.

        Args:
            plain: ``(n,C,H,W)`` known plain images.
            encrypted: their encryptions under one key, same shape and dtype.
            reference: the attacked scheme, only to score (adds ``fraction_recovered``
                and, with flips, ``fraction_recovered_with_flips``).

        Returns:
            A :class:`KeyRecoveryResult` with ``fraction_determined`` (units
            with a unique vector) and the pairs as ``reconstructions``
            (``decrypt(encrypted)``); its ``decrypt`` undoes any image of the key.
        """
        plain, encrypted = torch.as_tensor(plain), torch.as_tensor(encrypted)
        if plain.dim() == 3:
            plain, encrypted = plain[None], encrypted[None]
        if plain.shape != encrypted.shape or plain.dim() != 4:
            raise AttackError(f"plain and encrypted must both be (n,C,H,W), got {tuple(plain.shape)} and "
                              f"{tuple(encrypted.shape)}")
        if self.nibbles and plain.dtype != torch.uint8:
            raise AttackError("nibbles=True needs uint8 images (4-bit halves of 8-bit values)")
        n, c, h, w = plain.shape
        cost = Cost(pairs=n)
        if self.cell > 1:
            return self._run_cells(plain, encrypted, cost, reference)
        with measure(cost):
            recovered = RecoveredPermutation((c, h, w), torch.arange(1), spatial=self.spatial, nibbles=self.nibbles)
            pu, white = recovered._units(plain.cpu())
            eu, _ = recovered._units(encrypted.cpu())
            if self.spatial:  # (n*C, H*W): a position's vector runs over images and channels
                pu, eu = pu.reshape(n, c, h * w).permute(2, 0, 1), eu.reshape(n, c, h * w).permute(2, 0, 1)
            pv, ev = pu.reshape(pu.shape[0], -1).T if not self.spatial else pu.reshape(h * w, -1), \
                eu.reshape(eu.shape[0], -1).T if not self.spatial else eu.reshape(h * w, -1)
            idx, mask, determined = match_units(pv, ev, white=white, flips=self.flips)
            recovered = RecoveredPermutation((c, h, w), idx, mask, spatial=self.spatial, nibbles=self.nibbles)
            recon = recovered.decrypt(encrypted.cpu())
        result = KeyRecoveryResult(self.name, reconstructions=recon, cost=cost, recovered=recovered)
        result.metrics["pairs"] = float(n)
        result.metrics["fraction_determined"] = float(determined.double().mean())
        if reference is not None:
            result.metrics.update(score_permutation(recovered, true_permutation(reference, (c, h, w))))
        return result

    def _run_cells(self, plain: torch.Tensor, encrypted: torch.Tensor, cost: Cost,
                   reference: Scheme | None) -> KeyRecoveryResult:
        from .cells import cells_to_permutation, match_cells, score_cells

        if plain.dtype != torch.uint8:
            raise AttackError("cell matching needs uint8 images")
        n, c, h, w = plain.shape
        with measure(cost):
            src, determined = match_cells(plain.cpu(), encrypted.cpu(), self.cell, exact=self.exact)
            try:
                recovered = cells_to_permutation(src, (c, h, w), self.cell)
            except AttackError:  # too few pairs to tell some cells apart: fill cells greedily, still a guess
                recovered = cells_to_permutation(_balanced(src, h * w // (self.cell * self.cell), self.cell),
                                                 (c, h, w), self.cell)
            recon = recovered.decrypt(encrypted.cpu())
        result = KeyRecoveryResult(self.name, reconstructions=recon, cost=cost, recovered=recovered,
                                   details={"cell": self.cell})
        result.metrics.update(pairs=float(n), cell=float(self.cell),
                              fraction_determined=float(determined.double().mean()))
        if reference is not None:
            result.metrics.update(score_cells(recovered, reference, self.cell))
        return result


def _balanced(source_cell: torch.Tensor, cells: int, cell: int) -> torch.Tensor:
    """Move surplus positions of over-full cells into cells with room, so every cell gets ``cell²``."""
    out = source_cell.clone()
    cap = cell * cell
    counts = torch.bincount(out, minlength=cells)
    room = [c for c in range(cells) for _ in range(max(0, cap - int(counts[c])))]
    for c in torch.nonzero(counts > cap).flatten().tolist():
        for u in torch.nonzero(out == c).flatten()[cap:].tolist():
            out[u] = room.pop()
    return out
