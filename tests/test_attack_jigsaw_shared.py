"""The dataset-scale ciphertext-only jigsaw (jigsaw-shared-key) on block schemes with one key."""

from __future__ import annotations

import pytest
import torch

from keyveil import Key, schemes
from keyveil.attacks import AttackError, SharedKeyJigsaw, create_attack
from keyveil.attacks.scenarios import make_scheme, run_scenario
from keyveil.schemes import create


def smooth(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` random low-frequency uint8 images (sums of a few slow waves per channel)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, size)
    u = torch.rand(n, c, 5, 1, 1, generator=g)
    x = (torch.sin(3 * u[:, :, 0] * t[:, None] + 4 * u[:, :, 1] * t + 6 * u[:, :, 2])
         + torch.cos(5 * u[:, :, 3] * t[:, None] * t + 6 * u[:, :, 4])) * 60 + 128
    return x.clamp(0, 255).round().to(torch.uint8)


ETC = {"rotations": True, "negapos": True, "channel_orders": True}


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 24)])
def test_recovers_an_etc_key_from_ciphertexts_alone(channels: int, size: int) -> None:
    s = schemes.create("etc", Key.from_seed(3))
    x = smooth(300, channels, size)
    r = SharedKeyJigsaw(**ETC).run(ciphertexts=s.encrypt(x), test_encrypted=s.encrypt(x[:10]), test_plain=x[:10],
                                   reference=s)
    assert r.metrics["direct"] >= 0.9 and r.metrics["neighbour"] >= 0.9
    assert r.metrics["ssim"] > 0.9 > r.metrics["ssim_encrypted"]
    assert r.metrics["blocks"] == (size // 4) ** 2 and r.metrics["ciphertexts"] == 300
    assert r.metrics["confidence"] > 0.8
    assert create_attack("jigsaw-shared-key").name == "jigsaw-shared-key"


def test_per_image_keys_are_not_recovered() -> None:
    """Every image under its own key: no shared layout, the attack must not claim one."""
    x = smooth(200, 1, 16, seed=1)
    keyed = [schemes.create("etc", Key.from_seed(100 + i)) for i in range(len(x))]
    y = torch.cat([s.encrypt(x[i:i + 1]) for i, s in enumerate(keyed)])
    r = SharedKeyJigsaw(**ETC).run(ciphertexts=y, reference=keyed[0])
    assert r.metrics["direct"] <= 0.15
    assert r.metrics["confidence"] < 0.5


def test_a_full_pixel_permutation_is_not_a_jigsaw() -> None:
    s = schemes.create("pixel", Key.from_seed(5))
    x = smooth(300, 1, 16, seed=2)
    r = SharedKeyJigsaw(**ETC).run(ciphertexts=s.encrypt(x), test_plain=x[:10], test_encrypted=s.encrypt(x[:10]),
                                   reference=s)
    assert r.metrics["direct"] <= 0.15 and r.metrics["ssim"] < 0.5


def test_ciphertext_only_scenario_on_fashion_mnist_blocks() -> None:
    key = Key.from_seed(0)
    sc = run_scenario("ciphertext-only", make_scheme("etc", "fashion-mnist", key), "fashion-mnist", n=300, test_n=20)
    assert sc.result.attack == "jigsaw-shared-key"
    assert sc.result.metrics["direct"] >= 0.9 and sc.result.metrics["ssim"] > 0.9
    assert torch.equal(sc.recovered, sc.originals)  # shown as a viewer turns them: the images themselves
    le = run_scenario("ciphertext-only", make_scheme("le", "fashion-mnist", key), "fashion-mnist", n=300, test_n=5)
    assert le.result.attack == "ciphertext-only-nibbles"  # LE's nibbles go to the template matching instead
    with pytest.raises(AttackError, match="whole blocks"):  # rotated blocks with an in-block shuffle: no attack
        run_scenario("ciphertext-only", create("block", key, rotate=True, negapos="independent"), "fashion-mnist",
                     n=50, test_n=5)
