"""Keyed ViT: the ``vit`` block scheme folded into a torchvision VisionTransformer."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

from keyveil import Key, schemes
from keyveil.models import KeyedModelError, keyed
from keyveil.models.keyed_vit import block_fold

KEY, OTHER = Key.from_seed(21), Key.from_seed(22)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_head(vit: VisionTransformer) -> VisionTransformer:
    """torchvision zero-initializes the head (all logits 0); give it random weights so tests can fail."""
    torch.nn.init.normal_(vit.heads.head.weight, std=0.5)
    return vit


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return random_head(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                         mlp_dim=64, num_classes=10).eval())


def normalize(x, mean, std):
    if mean is None:
        return x
    return torchvision.transforms.functional.normalize(x, list(mean), list(std))


def test_block_fold_matches_slow_encryption():
    """Encrypting block n = flip(plain block order[n] at src) — checked element by element."""
    s = schemes.create("vit", KEY, block_size=4)
    x = torch.rand(3, 8, 8)
    y = s.encrypt(x)
    order, src, flip = block_fold(s, (3, 8, 8))
    for n in range(4):
        bi, bj = divmod(n, 2)
        si, sj = divmod(int(order[n]), 2)
        enc = y[:, bi * 4:(bi + 1) * 4, bj * 4:(bj + 1) * 4].reshape(-1)
        plain = x[:, si * 4:(si + 1) * 4, sj * 4:(sj + 1) * 4].reshape(-1)
        for j in range(48):
            v = plain[int(src[j])]
            assert enc[j] == (1 - v if flip[j] else v)


@pytest.mark.parametrize("mean,std", [(None, None), (MEAN, STD)])
def test_tiny_vit_logits_equal(mean, std):
    vit = tiny_vit()
    s = schemes.create("vit", KEY, block_size=8)
    x = torch.rand(3, 3, 32, 32)
    km = keyed(vit, KEY, scheme="vit", mean=mean, std=std)
    with torch.no_grad():
        ref = vit(normalize(x, mean, std))
        out = km(normalize(s.encrypt(x), mean, std))
        wrong = keyed(vit, OTHER, scheme="vit", mean=mean, std=std, check=False)(normalize(s.encrypt(x), mean, std))
    assert (out - ref).abs().max() < 1e-5
    assert (wrong - ref).abs().max() > 1e-2
    assert km.keyveil_config.kind == "vit" and km.keyveil_config.scheme == "vit"
    assert torch.equal(vit.conv_proj.weight, tiny_vit().conv_proj.weight)  # the plain model is untouched


def test_vit_b_16_logits_equal():
    torch.manual_seed(0)
    vit = random_head(torchvision.models.vit_b_16().eval())
    x = torch.rand(1, 3, 224, 224)
    s = schemes.create("vit", KEY)
    km = keyed(vit, KEY, scheme="vit", mean=MEAN, std=STD, check=False)
    with torch.no_grad():
        ref = vit(normalize(x, MEAN, STD))
        d = (km(normalize(s.encrypt(x), MEAN, STD)) - ref).abs().max()
    assert ref.abs().max() > 0.1
    assert d <= 1e-4


def test_unfoldable_block_schemes_are_refused():
    vit = tiny_vit()
    per_block = schemes.create("block", KEY, block_size=8, rotate=True)
    with pytest.raises(KeyedModelError, match="same in-block transform"):
        keyed(vit, KEY, scheme=per_block)
    with pytest.raises(KeyedModelError, match="patch size"):
        keyed(vit, KEY, scheme=schemes.create("vit", KEY, block_size=4))
    with pytest.raises(KeyedModelError, match="VisionTransformer"):
        keyed(torch.nn.Conv2d(3, 3, 1), KEY, scheme="vit")


def test_scheme_patch_points_to_invariant_models():
    with pytest.raises(KeyedModelError, match="patch_invariant_vit"):
        keyed(tiny_vit(), KEY, scheme="patch")
