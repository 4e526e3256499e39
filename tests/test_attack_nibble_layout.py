"""Ciphertext-only attack on LE: the shared in-block nibble shuffle recovered by graph matching."""

from __future__ import annotations

import pytest
import torch

from keyveil import Key
from keyveil.attacks import AttackError
from keyveil.attacks._data import load
from keyveil.attacks.nibble_layout import NibbleLayout, _swap_gains, block_units, units_to_image
from keyveil.attacks.scenarios import make_scheme, run_scenario
from keyveil.schemes import create


def test_swap_gains_match_a_brute_force_objective():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(9, 9, generator=g, dtype=torch.float64)
    t = torch.rand(9, 9, generator=g, dtype=torch.float64)
    a, t = a + a.T, t + t.T
    a.fill_diagonal_(0)
    t.fill_diagonal_(0)
    p = torch.randperm(9, generator=g)
    objective = lambda q: float((a[q][:, q] * t).sum())  # noqa: E731
    for i in (0, 4, 8):
        gains = _swap_gains(a[p][:, p], t, i)
        for j in range(9):
            q = p.clone()
            q[[i, j]] = q[[j, i]]
            assert float(gains[j]) == pytest.approx(objective(q) - objective(p), abs=1e-9)


def test_block_units_round_trip_in_the_block_schemes_order():
    x = torch.randint(0, 256, (2, 3, 8, 12), dtype=torch.uint8)
    u = block_units(x, 4)
    assert u.shape == (2, 6, 96) and torch.equal(units_to_image(u, (3, 8, 12), 4), x)
    s = create("le", Key.from_seed(1))  # LE's shuffle stays inside each block of these units
    y = block_units(s.encrypt(x), 4)
    low_high = lambda v: torch.minimum(v, 15 - v).sort(-1).values  # noqa: E731  (flips: u or 15 - u)
    assert torch.equal(low_high(y), low_high(u))
    with pytest.raises(AttackError, match="do not tile"):
        block_units(x[..., :10], 4)


def test_le_falls_to_ciphertexts_alone_and_noise_gives_nothing(fashion):
    x, _ = load(fashion, "train", 3000)
    test, _ = load(fashion, "test", 40)
    s = create("le", Key.from_seed(2))
    r = NibbleLayout().run(ciphertexts=s.encrypt(x[:1000]), public=x[1000:], test_encrypted=s.encrypt(test),
                           test_plain=test)
    assert r.metrics["units_correct"] == 1.0 and torch.equal(r.reconstructions, test)
    noise = torch.randint(0, 256, (1000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    bad = NibbleLayout().run(ciphertexts=noise, public=x[1000:], test_encrypted=s.encrypt(test), test_plain=test)
    assert bad.metrics["ssim"] < 0.2 and bad.metrics["high_correct"] < 0.6


def test_scenario_runs_le_and_ele_and_refuses_rotating_blocks(fashion):
    with pytest.raises(AttackError, match="rotates"):
        run_scenario("ciphertext-only", create("block", Key.from_seed(0), nibbles=True, shuffle="shared",
                                               rotate=True, scramble=False), fashion, n=50, test_n=5)
    ele = run_scenario("ciphertext-only", make_scheme("ele", fashion, Key.from_seed(0)), fashion, n=1500,
                       test_n=20, options={"public": 1000})
    assert ele.result.metrics["high_correct"] > 0.8 and ele.result.metrics["ssim"] > 0.8
    sc = run_scenario("ciphertext-only", make_scheme("le", fashion, Key.from_seed(0)), fashion, n=600, test_n=10,
                      options={"public": 400})
    assert sc.settings == {"ciphertexts": 600, "public": 400} and sc.result.metrics["units_correct"] > 0.9


def test_vit_falls_in_two_steps_inside_the_blocks_then_their_places(fashion):
    vit = make_scheme("vit", fashion, Key.from_seed(5))
    sc = run_scenario("ciphertext-only", vit, fashion, n=1500, test_n=50, options={"public": 1500})
    exact = sc.result.metrics["decrypted_exactly"]
    assert exact >= 0.9 and sc.settings == {"ciphertexts": 1500, "public": 1500}
    assert float((sc.recovered == sc.originals).flatten(1).all(1).double().mean()) == exact
    # a different key for every image: nothing is shared, nothing comes back
    keys = [make_scheme("vit", fashion, Key.from_seed(100 + k)) for k in range(3)]
    x, _ = load(fashion, "train", 1200)
    mixed = torch.cat([keys[k % 3].encrypt(x[k::3]) for k in range(3)])
    inside = NibbleLayout(nibbles=False, block_size=4).run(ciphertexts=mixed[:1000], public=x[:200],
                                                           test_encrypted=keys[0].encrypt(x[:20]), test_plain=x[:20])
    assert inside.metrics["units_correct"] < 0.6
