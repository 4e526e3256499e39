"""Known-plaintext key recovery for every keyed rearrangement: value matching with flips and nibbles,
and block matching for EtC. Tiny inputs; each test fails if the attack is broken."""

from __future__ import annotations

import pytest
import torch
from checkers import random_images

from keyveil import Key, schemes
from keyveil.attacks import AttackError, BlockKnownPlaintext, KnownPlaintext, create_attack
from keyveil.attacks.matching import match_units

SETTINGS = {  # scheme -> (options, attack settings, pairs that suffice on random images)
    "pixel": ({}, dict(spatial=True), 1),
    "pixel-np": ({}, dict(spatial=True, flips=True), 1),
    "etc": ({}, dict(spatial=False, flips=True), 3),
    "vit": ({"block_size": 4}, dict(spatial=False, flips=True), 3),
    "block": ({"block_size": 4}, dict(spatial=False, flips=True), 3),
    "le": ({}, dict(spatial=False, flips=True, nibbles=True), 6),
    "ele": ({}, dict(spatial=False, flips=True, nibbles=True), 6),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_known_plaintext_recovers_every_keyed_rearrangement(name):
    opts, kw, pairs = SETTINGS[name]
    s = schemes.create(name, Key.from_seed(7), **opts)
    x = random_images((pairs, 3, 16, 16), torch.uint8, seed=1)
    r = create_attack("known-plaintext", **kw).run(plain=x, encrypted=s.encrypt(x), reference=s)
    assert r.metrics.get("fraction_recovered_with_flips", r.metrics["fraction_recovered"]) == 1.0
    held = random_images((3, 3, 16, 16), torch.uint8, seed=2)
    assert torch.equal(r.decrypt(s.encrypt(held)), held), "the recovered key must decrypt other images"
    if not kw["spatial"]:  # one pair of value units is not enough: the figure must respond to the pairs
        one = create_attack("known-plaintext", **kw).run(plain=x[:1], encrypted=s.encrypt(x[:1]), reference=s)
        assert one.metrics["fraction_recovered"] < 1.0


def test_flipped_schemes_need_flips_and_a_full_random_substitution_is_not_matched():
    s = schemes.create("pixel-np", Key.from_seed(1))
    x = random_images((4, 3, 8, 8), torch.uint8)
    with pytest.raises(AttackError, match="not a rearrangement"):
        KnownPlaintext().run(plain=x, encrypted=s.encrypt(x))
    noise = random_images((4, 3, 8, 8), torch.uint8, seed=5)  # no value of the output comes from the input
    with pytest.raises(AttackError, match="matches no"):
        KnownPlaintext(spatial=False, flips=True).run(plain=x, encrypted=noise)


def test_match_units_assigns_ambiguous_groups_once_and_flags_them():
    p = torch.tensor([[7, 7], [7, 7], [1, 2]])
    e = torch.tensor([[1, 2], [7, 7], [248, 248]])  # 248 = 255 - 7: a flipped copy of a flat unit
    idx, mask, det = match_units(p, e, white=255, flips=True)
    assert idx[0] == 2 and not mask[0] and det[0]
    assert sorted(idx[1:].tolist()) == [0, 1] and mask[1:].tolist() == [False, True]
    assert not det[1] and not det[2]


def test_block_matching_breaks_etc_from_one_pair():
    s = schemes.create("etc", Key.from_seed(3))
    x = random_images((1, 3, 32, 32), torch.uint8, seed=4)
    r = BlockKnownPlaintext(block_size=4).run(plain=x, encrypted=s.encrypt(x), reference=s)
    assert r.metrics["fraction_recovered_with_flips"] == 1.0 and r.metrics["fraction_determined"] == 1.0
    held = random_images((2, 3, 32, 32), torch.uint8, seed=6)
    assert torch.equal(r.decrypt(s.encrypt(held)), held)
    # without searching the negative-positive step, blocks it negated cannot be matched
    with pytest.raises(AttackError, match="matches no plain block"):
        BlockKnownPlaintext(negapos=False).run(plain=x, encrypted=s.encrypt(x))


@pytest.mark.parametrize("name", ["le", "vit"])
def test_block_matching_refuses_schemes_that_shuffle_inside_blocks(name):
    s = schemes.create(name, Key.from_seed(3), **({"block_size": 4} if name == "vit" else {}))
    x = random_images((1, 3, 16, 16), torch.uint8, seed=4)
    with pytest.raises(AttackError, match="matches no plain block"):
        BlockKnownPlaintext().run(plain=x, encrypted=s.encrypt(x))
