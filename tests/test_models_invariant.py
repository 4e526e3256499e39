"""Hao et al.'s invariant models: PE-ViT under ``patch``, the MI embedding under ``mix``."""

from __future__ import annotations

import pytest
import torch

from keyveil import schemes
from keyveil.models import (
    MixInvariantPatchEmbed,
    create_invariant_vit,
    mix_invariant_vit,
    patch_invariant_vit,
)
from keyveil.schemes.hao import shuffle_patches


def fashion_pe_vit():
    torch.manual_seed(0)
    return patch_invariant_vit(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64, depth=4,
                               heads=4).eval()


def test_pe_vit_invariant_to_any_patch_permutation():
    net = fashion_pe_vit()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 28, 28, generator=g)
    with torch.no_grad():
        ref = net(x)
        for _ in range(3):
            perm = torch.stack([torch.randperm(16, generator=g) for _ in range(4)])
            assert (net(shuffle_patches(x, perm, 7)) - ref).abs().max() <= 1e-5
        y = schemes.create("patch", patch_size=7).encrypt(x, generator=g)
        assert (net(y) - ref).abs().max() <= 1e-5
        other = net(torch.rand(4, 1, 28, 28, generator=g))
    assert (other - ref).abs().max() > 1e-3  # it does look at the content


def test_learned_positions_are_not_invariant():
    """The same network with a position table does change: the invariance test can fail."""
    torch.manual_seed(0)
    net = patch_invariant_vit(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=32, depth=2, heads=4,
                              position="learned").eval()
    x = torch.rand(2, 1, 28, 28)
    perm = torch.stack([torch.randperm(16) for _ in range(2)])
    with torch.no_grad():
        assert (net(shuffle_patches(x, perm, 7)) - net(x)).abs().max() > 1e-4


def test_mi_embedding_and_model_invariant_to_mix():
    torch.manual_seed(0)
    emb = MixInvariantPatchEmbed(patch_size=16, grid=4, in_channels=3, dim=24)
    net = mix_invariant_vit(image_size=32, patch_size=16, grid=4, num_classes=5, dim=32, depth=2, heads=2).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 32, 32, generator=g)
    mix = schemes.create("mix", patch_size=16, grid=4)
    y = mix.encrypt(x, generator=g)
    assert (y - x).abs().max() > 0.1  # the scheme did change the image
    with torch.no_grad():
        assert (emb(y) - emb(x)).abs().max() <= 1e-5
        assert (net(y) - net(x)).abs().max() <= 1e-5
        plain_embed = torch.nn.Conv2d(3, 24, 16, stride=16)
        assert (plain_embed(y) - plain_embed(x)).abs().max() > 1e-3  # a plain patch embedding is not invariant


def test_configs_timm_and_torchvision_style():
    a = create_invariant_vit({"img_size": 32, "patch_size": 8, "in_chans": 1, "embed_dim": 48, "depth": 2,
                              "num_heads": 3, "mlp_ratio": 2.0}, num_classes=7)
    assert a.head.out_features == 7 and a.blocks[0].mlp[0].out_features == 96
    b = create_invariant_vit({"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2,
                              "hidden_dim": 16, "mlp_dim": 32}, kind="mix", grid=2, num_classes=3)
    assert isinstance(b.patch_embed, MixInvariantPatchEmbed) and len(b.blocks) == 1
    assert b(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert create_invariant_vit("tiny", num_classes=10).head.in_features == 192
    with pytest.raises(ValueError, match="unknown config"):
        create_invariant_vit("huge")
    with pytest.raises(ValueError, match="divisible"):
        patch_invariant_vit(image_size=30, patch_size=7)
