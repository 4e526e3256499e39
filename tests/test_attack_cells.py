"""Key recovery through a per-image step: chains ``visualmixer-seed+pixel`` / ``mix+pixel`` read off per cell."""

from __future__ import annotations

import pytest
import torch

from keyveil import Key
from keyveil.attacks import AttackError, ChosenPlaintext, KnownPlaintext
from keyveil.attacks.cells import cell_size, moves_values_only
from keyveil.schemes import create


def _cells_sorted(x: torch.Tensor, cell: int) -> torch.Tensor:
    """Every cell's values, sorted per channel: what a shuffle inside cells cannot change."""
    b, c, h, w = x.shape
    t = x.reshape(b, c, h // cell, cell, w // cell, cell).permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1, cell * cell)
    return t.sort(-1).values


@pytest.fixture(scope="module")
def chain():
    return create("visualmixer-seed+pixel", Key.from_seed(3))


def test_cell_size_reads_the_chain():
    assert cell_size(create("visualmixer-seed+pixel", Key.from_seed(0))) == 8
    assert cell_size(create("mix+pixel", Key.from_seed(0))) == 16
    assert cell_size(create("pixel", Key.from_seed(0))) is None
    assert moves_values_only(create("visualmixer-seed+pixel", Key.from_seed(0)))
    assert not moves_values_only(create("mix+pixel", Key.from_seed(0)))


def test_chosen_cells_undo_the_keyed_step_exactly_up_to_the_cells(chain):
    g = torch.Generator().manual_seed(0)
    r = ChosenPlaintext(cell=8).run(oracle=lambda im: chain.encrypt(im, generator=g), image_size=(32, 32),
                                    channels=3, reference=chain)
    assert r.metrics["fraction_cells_recovered"] == 1.0 and r.cost.queries == 1  # 16 cells: one base-256 digit
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    back = r.decrypt(chain.encrypt(x, generator=g))
    assert torch.equal(_cells_sorted(back, 8), _cells_sorted(x, 8))  # each cell holds its own values again
    assert not torch.equal(back, x)  # ... in the per-image step's order, not the original one


def test_chosen_cells_find_nothing_when_every_query_is_shuffled_afresh(chain):
    g = torch.Generator().manual_seed(1)
    fresh = lambda im: im.flatten(2)[..., torch.randperm(32 * 32, generator=g)].reshape(im.shape)  # noqa: E731
    r = ChosenPlaintext(cell=8).run(oracle=fresh, image_size=(32, 32), channels=3, reference=chain)
    assert r.metrics["fraction_cells_recovered"] < 0.2  # chance is 1/16


def test_chosen_cells_refuse_a_step_that_moves_values_between_cells():
    s = create("visualmixer-seed+pixel", Key.from_seed(0))
    with pytest.raises(AttackError, match="do not tile"):
        ChosenPlaintext(cell=8).run(oracle=s.encrypt, image_size=(30, 32), channels=3)
    half = lambda im: torch.cat([im[:, :, :, :16], im[:, :, :, :16]], 3)  # noqa: E731  (cells counted twice)
    with pytest.raises(AttackError, match="equal numbers"):
        ChosenPlaintext(cell=8).run(oracle=half, image_size=(32, 32), channels=3)


def test_known_pairs_find_the_cells_and_unrelated_pairs_do_not(chain):
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    enc = chain.encrypt(x, generator=g)
    good = KnownPlaintext(cell=8).run(plain=x, encrypted=enc, reference=chain).metrics
    assert good["fraction_cells_recovered"] >= 0.95
    other = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    bad = KnownPlaintext(cell=8).run(plain=other, encrypted=enc, reference=chain).metrics
    assert bad["fraction_cells_recovered"] < 0.3


def test_known_pairs_through_mixing_use_ranges():
    s = create("compose", Key.from_seed(4), steps=[("mix", {"patch_size": 8, "grid": 2}), "pixel"])
    g = torch.Generator().manual_seed(5)
    base = torch.rand(12, 3, 4, 4, generator=g) * 255  # smooth images: each 8x8 cell spans a narrow range
    x = torch.nn.functional.interpolate(base, size=(32, 32), mode="bilinear", align_corners=False).round()
    x = x.clamp(0, 255).to(torch.uint8)
    enc = s.encrypt(x, generator=g)
    ranged = KnownPlaintext(cell=8, exact=False).run(plain=x, encrypted=enc, reference=s).metrics
    assert ranged["fraction_cells_recovered"] >= 0.5  # chance is 1/16
    with pytest.raises(AttackError, match="cells work on positions"):
        KnownPlaintext(cell=8, flips=True)
