from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from checkers import check_scheme, random_images
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from keyveil import Key, schemes
from keyveil.schemes import GeometryError, NotInvertibleError, SchemeError, UnknownSchemeError

FIXED = ["pixel", "pixel-np", "block", "etc", "le", "ele", "vit"]
PER_IMAGE = ["patch", "mix"]
UNIT = {"pixel": 1, "pixel-np": 1, "block": 4, "etc": 4, "le": 4, "ele": 4, "vit": 16, "patch": 16, "mix": 16}


def make(name: str, seed: int = 0, **kw):
    return schemes.create(name, Key.from_seed(seed), **kw)


def test_registry_lists_every_scheme_and_rejects_unknown_and_duplicates():
    assert set(FIXED + PER_IMAGE) <= set(schemes.list_schemes())
    with pytest.raises(UnknownSchemeError, match="did you mean 'pixel'"):
        schemes.create("pixle", Key.generate())
    with pytest.raises(ValueError, match="already registered"):
        schemes.register_preset("etc", schemes.scheme_class("block"), "dup")


def test_keyed_scheme_without_key_is_a_clear_error():
    with pytest.raises(SchemeError, match="needs a key"):
        schemes.create("pixel")


@pytest.mark.parametrize("name", FIXED + PER_IMAGE)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_contract_hypothesis(name, dtype, data):
    unit = UNIT[name]
    b = data.draw(st.integers(0, 3), label="B")
    c = data.draw(st.sampled_from([1, 3]), label="C")
    h = unit * data.draw(st.integers(1, 3 if unit > 1 else 9), label="h")
    w = unit * data.draw(st.integers(1, 3 if unit > 1 else 9), label="w")
    x = random_images((b, c, h, w), dtype, seed=data.draw(st.integers(0, 2**16)))
    check_scheme(make(name), x)


@pytest.mark.parametrize("name", FIXED)
def test_odd_sizes_and_one_pixel(name):
    m = UNIT[name]
    for shape in [(1, 3, m, m), (2, 3, 3 * m, 5 * m), (1, 1, m, 7 * m)]:
        for dtype in (torch.uint8, torch.float32, torch.float64):
            check_scheme(make(name), random_images(shape, dtype))


@pytest.mark.parametrize("name", FIXED)
def test_wrong_key_gives_a_different_image_and_does_not_decrypt(name):
    x = random_images((2, 3, 32, 32), torch.uint8)
    right, wrong = make(name, 0), make(name, 1)
    y = right.encrypt(x)
    assert not torch.equal(y, wrong.encrypt(x))
    assert not torch.equal(wrong.decrypt(y), x)
    assert (wrong.decrypt(y) != x).float().mean() > 0.5


@pytest.mark.parametrize("name", FIXED)
def test_encryption_actually_scrambles(name):
    x = random_images((1, 3, 64, 64), torch.uint8)
    assert (make(name).encrypt(x) != x).float().mean() > 0.6


def test_pixel_matches_the_definition():
    key = Key.from_seed(7)
    x = random_images((2, 3, 5, 7), torch.float32)
    y = schemes.create("pixel", key).encrypt(x)
    perm = key.permutation("pixel/perm/5x7", 35)
    flat = x.reshape(2, 3, 35)
    for k in range(35):
        assert torch.equal(y.reshape(2, 3, 35)[:, :, k], flat[:, :, perm[k]])


def test_pixel_per_channel_uses_different_permutations():
    x = torch.arange(3 * 64, dtype=torch.float32).reshape(1, 3, 8, 8) % 64
    y = make("pixel", per_channel=True).encrypt(x)
    assert not torch.equal(y[0, 0], y[0, 1])
    z = make("pixel").encrypt(x)
    assert torch.equal(z[0, 0], z[0, 1])


def test_block_scramble_moves_whole_blocks():
    x = random_images((1, 3, 16, 16), torch.uint8)
    y = make("block", block_size=4).encrypt(x)
    blocks = lambda t: {t[0, :, i:i + 4, j:j + 4].numpy().tobytes() for i in range(0, 16, 4) for j in range(0, 16, 4)}  # noqa: E731
    assert blocks(x) == blocks(y)


def test_etc_negapos_is_255_minus_v_per_block():
    """With only K3 on, every block is either unchanged or exactly 255 - v."""
    x = random_images((1, 3, 16, 16), torch.uint8)
    s = make("block", block_size=4, scramble=False, negapos="block")
    y = s.encrypt(x)
    flipped = 0
    for i in range(0, 16, 4):
        for j in range(0, 16, 4):
            a, b = x[0, :, i:i + 4, j:j + 4], y[0, :, i:i + 4, j:j + 4]
            assert torch.equal(a, b) or torch.equal(255 - a, b)
            flipped += int(torch.equal(255 - a, b))
    assert 0 < flipped < 16


def test_rotation_keeps_block_content_up_to_rotation():
    x = random_images((1, 1, 8, 8), torch.uint8)
    y = make("block", block_size=4, scramble=False, rotate=True).encrypt(x)
    for i in range(0, 8, 4):
        for j in range(0, 8, 4):
            a, b = x[0, 0, i:i + 4, j:j + 4], y[0, 0, i:i + 4, j:j + 4]
            variants = [torch.rot90(a, k) for k in range(4)] + [torch.rot90(a, k).flip(1) for k in range(4)]
            assert any(torch.equal(v, b) for v in variants)


def test_le_nibbles_are_a_shuffle_and_flip_of_the_block_nibbles():
    x = random_images((1, 3, 4, 4), torch.uint8)
    y = make("le").encrypt(x)
    nib = lambda t: np.stack([t.numpy() >> 4, t.numpy() & 15]).ravel()  # noqa: E731
    xs, ys = nib(x), nib(y)
    # each output nibble is some input nibble v or 15 - v: the multiset of min(v, 15 - v) is kept
    assert sorted(np.minimum(xs, 15 - xs)) == sorted(np.minimum(ys, 15 - ys))


def test_le_rejects_floats_that_are_not_8_bit():
    with pytest.raises(SchemeError, match="multiples of 1/255"):
        make("le").encrypt(torch.full((1, 3, 4, 4), 0.3333))


def test_vit_preset_keeps_patch_multiset_up_to_mask():
    s = make("vit")
    p = s.params((3, 32, 32))
    assert p.mask is not None and p.index.shape == (3 * 32 * 32,)
    assert sorted(p.index.tolist()) == list(range(3 * 32 * 32))


def test_geometry_errors_are_clear():
    with pytest.raises(GeometryError, match="not divisible by the block size 4"):
        make("etc").encrypt(torch.zeros(3, 30, 32, dtype=torch.uint8))
    with pytest.raises(GeometryError, match="patch size 16"):
        schemes.create("patch").encrypt(torch.zeros(3, 28, 28))
    with pytest.raises(ValueError, match=r"\(C,H,W\) or \(B,C,H,W\)"):
        make("pixel").encrypt(torch.zeros(8, 8))
    with pytest.raises(SchemeError, match="uint8"):
        make("pixel").encrypt(torch.zeros(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(TypeError):
        make("pixel").encrypt([1, 2, 3])


def test_pil_and_numpy_round_trip():
    arr = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    s = make("etc")
    y = s.encrypt(arr)
    assert isinstance(y, np.ndarray) and y.shape == arr.shape and y.dtype == np.uint8
    assert np.array_equal(s.decrypt(y), arr)
    img = Image.fromarray(arr)
    yi = s.encrypt(img)
    assert isinstance(yi, Image.Image) and np.array_equal(np.asarray(yi), y)
    assert np.array_equal(np.asarray(s.decrypt(yi)), arr)
    gray = arr[..., 0]
    assert np.array_equal(make("pixel").decrypt(make("pixel").encrypt(gray)), gray)


def test_patch_is_a_permutation_of_patches_and_fresh_per_call():
    s = schemes.create("patch", patch_size=4)
    x = random_images((2, 3, 16, 16), torch.float32)
    y1, y2 = s.encrypt(x), s.encrypt(x)
    assert not torch.equal(y1, y2)
    pat = lambda t: sorted(t[:, i:i + 4, j:j + 4].numpy().tobytes() for i in range(0, 16, 4) for j in range(0, 16, 4))  # noqa: E731
    assert pat(x[0]) == pat(y1[0])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(s.encrypt(x, generator=g1), s.encrypt(x, generator=g2))
    with pytest.raises(NotInvertibleError, match="nonce"):
        s.decrypt(y1)


def test_patch_with_key_and_nonce_is_invertible_and_nonce_sensitive():
    s = make("patch", patch_size=4)
    x = random_images((3, 3, 16, 16), torch.uint8)
    y = s.encrypt(x, nonce=[1, 2, 3])
    assert torch.equal(s.decrypt(y, nonce=[1, 2, 3]), x)
    assert not torch.equal(s.encrypt(x, nonce=[4, 5, 6]), y)
    with pytest.raises(SchemeError, match="one per image"):
        s.encrypt(x, nonce=[1])


def test_mix_preserves_each_patch_mean_subpatch_and_is_doubly_stochastic():
    s = schemes.create("mix", patch_size=8, grid=2)
    mats = s.mixing_matrices(2, 5, generator=torch.Generator().manual_seed(0), nonce=None, device=torch.device("cpu"))
    assert torch.allclose(mats.sum(-1), torch.ones(2, 5, 4), atol=1e-6)
    assert torch.allclose(mats.sum(-2), torch.ones(2, 5, 4), atol=1e-6)
    x = random_images((2, 3, 16, 16), torch.float64)
    y = s.encrypt(x)
    sub = lambda t: t.reshape(2, 3, 2, 2, 4, 2, 2, 4).mean(dim=(3, 6))  # noqa: E731  mean sub-patch per patch
    assert torch.allclose(sub(x), sub(y), atol=1e-12)
    assert (y - x).abs().max() > 0.1
    with pytest.raises(NotInvertibleError, match="mixture"):
        s.decrypt(y)


@pytest.mark.parametrize("name", FIXED + PER_IMAGE)
def test_scheme_is_a_transform_and_picklable(name):
    from torchvision.transforms import v2

    s = make(name)
    pipeline = v2.Compose([v2.ToImage(), s])
    out = pipeline(Image.fromarray(np.zeros((32, 32, 3), np.uint8)))
    assert out.shape == (3, 32, 32)
    assert pickle.loads(pickle.dumps(s)).config == s.config


def test_key_space_bits():
    assert make("pixel").key_space_bits((3, 32, 32)) == pytest.approx(math.lgamma(1025) / math.log(2))
    n, d = 64, 16 * 16 * 3  # vit at 128x128: N!·(M²C)!·2^(M²C)
    expected = (math.lgamma(n + 1) + math.lgamma(d + 1)) / math.log(2) + d
    assert make("vit").key_space_bits((3, 128, 128)) == pytest.approx(expected)
    n = 64  # etc at 32x32: 8^N·2^N·6^N·N!
    assert make("etc").key_space_bits((3, 32, 32)) == pytest.approx(n * 3 + n + n * math.log2(6) + math.lgamma(n + 1) / math.log(2))
    assert math.isinf(schemes.create("mix").key_space_bits((3, 32, 32)))


def test_config_never_contains_the_secret():
    key = Key.generate()
    s = schemes.create("etc", key)
    assert s.config["key_fingerprint"] == key.fingerprint and s.config["scheme"] == "etc"
    assert key.to_json().split('"secret": "')[1][:20] not in repr(s.config) + repr(s)


@pytest.mark.parametrize("name", schemes.list_schemes())
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_every_registered_scheme_keeps_the_contract(name, dtype):
    """Parametrized over the registry, so a newly registered scheme is checked too."""
    check_scheme(make(name), random_images((3, 3, 32, 32), dtype))
    if make(name).mixes_batch:  # alone in its batch it would be mixed with itself: refused
        with pytest.raises(SchemeError, match="mixed with itself"):
            make(name).encrypt(random_images((1, 1, 64, 32), dtype, seed=1))
        return
    check_scheme(make(name), random_images((1, 1, 64, 32), dtype, seed=1))
