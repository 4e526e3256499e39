"""``noise`` and ``instahide``: the shared contract, their definitions, label mixing and clear errors."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkers import check_scheme, random_images
from PIL import Image

from keyveil import Key, schemes
from keyveil.schemes import NotInvertibleError, SchemeError
from keyveil.schemes.baselines import instahide_values


def make(name: str, seed: int = 0, **kw):
    return schemes.create(name, Key.from_seed(seed), **kw)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- contract ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (2, 1, 7, 13), (1, 3, 5, 5), (0, 3, 8, 8)])
@pytest.mark.parametrize("options", [
    ("noise", {}), ("noise", {"sigma": 0.3}), ("instahide", {}), ("instahide", {"k": 2}),
    ("instahide", {"k": 6, "public": "tensor"}), ("instahide", {"k": 3, "public": "tensor", "k_private": 1}),
])
def test_contract(options, shape, dtype):
    name, kw = options
    if kw.get("public") == "tensor":
        kw = {**kw, "public": random_images((5, *shape[1:]), torch.uint8, seed=9)}
    scheme = make(name, **kw)
    if scheme.mixes_batch and shape[0] == 1:  # alone in its batch it would be mixed with itself
        with pytest.raises(SchemeError, match="only the sign flip would remain"):
            scheme.encrypt(random_images(shape, dtype))
        return
    check_scheme(scheme, random_images(shape, dtype))


def test_instahide_with_public_images_only_is_strictly_per_image():
    s = make("instahide", k=3, public=random_images((6, 3, 8, 8), torch.float32, seed=2), k_private=1)
    assert not s.mixes_batch
    x = random_images((4, 3, 8, 8), torch.float32)
    y = s.encrypt(x, nonce=[1, 2, 3, 4])
    singles = torch.stack([s.encrypt(x[i], nonce=[i + 1]) for i in range(4)])
    assert torch.equal(y, singles)


def test_same_generator_same_output_and_fresh_randomness_differs():
    x = random_images((5, 3, 16, 16), torch.float32)
    for name in ("noise", "instahide"):
        s = schemes.create(name)
        assert torch.equal(s.encrypt(x, generator=gen(3)), s.encrypt(x, generator=gen(3)))
        assert not torch.equal(s.encrypt(x), s.encrypt(x))
        ks = make(name)
        assert not torch.equal(ks.encrypt(x, nonce=[1, 2, 3, 4, 5]), ks.encrypt(x, nonce=[6, 7, 8, 9, 10]))


@pytest.mark.parametrize("name", ["noise", "instahide"])
def test_decrypt_refuses_with_a_reason_and_pickles(name):
    s = make(name)
    y = s.encrypt(random_images((2, 3, 8, 8), torch.uint8))
    with pytest.raises(NotInvertibleError, match="cannot be"):
        s.decrypt(y)
    assert pickle.loads(pickle.dumps(s)).config == s.config
    assert math.isinf(s.key_space_bits((3, 32, 32)))
    assert s.per_image and not s.invertible and not s.needs_key


def test_numpy_and_pil_images_keep_their_kind():
    arr = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    for name in ("noise", "instahide"):
        s = schemes.create(name, public=torch.from_numpy(arr).permute(2, 0, 1)[None].repeat(3, 1, 1, 1),
                           k_private=1) if name == "instahide" else schemes.create(name)
        y = s.encrypt(arr)
        assert isinstance(y, np.ndarray) and y.shape == arr.shape and y.dtype == np.uint8
        assert isinstance(s.encrypt(Image.fromarray(arr)), Image.Image)


# -- noise ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.2])
def test_noise_std_is_sigma_on_mid_grey_images(sigma):
    x = torch.full((4, 3, 64, 64), 0.5)
    d = make("noise", sigma=sigma).encrypt(x, generator=gen(1)) - x
    assert abs(d.mean().item()) < 0.01 * sigma + 1e-3
    assert d.std().item() == pytest.approx(sigma, rel=0.02)
    # uint8: sigma is a fraction of 255 grey levels; rounding adds a variance of 1/12
    x8 = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)
    d8 = make("noise", sigma=sigma).encrypt(x8, generator=gen(1)).double() - 128
    assert d8.std().item() == pytest.approx(math.sqrt((255 * sigma) ** 2 + 1 / 12), rel=0.02)


def test_noise_is_gaussian_and_independent_across_pixels():
    x = torch.full((8, 1, 64, 64), 0.5)
    d = (make("noise", sigma=0.05).encrypt(x, generator=gen(2)) - x).flatten() / 0.05
    assert ((d.abs() < 1).float().mean().item()) == pytest.approx(0.6827, abs=0.01)  # one-sigma mass
    assert ((d.abs() < 2).float().mean().item()) == pytest.approx(0.9545, abs=0.006)
    assert abs(torch.corrcoef(torch.stack([d[:-1], d[1:]]))[0, 1].item()) < 0.02


def test_noise_clips_to_the_valid_range():
    black, white = torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32, dtype=torch.float64)
    s = make("noise", sigma=0.3)
    yb, yw = s.encrypt(black, generator=gen(0)), s.encrypt(white, generator=gen(0))
    assert yb.min() == 0 and yb.max() <= 1 and yb.mean() > 0.05
    assert yw.max() == 1 and yw.min() >= 0 and yw.mean() < 0.95
    assert torch.equal(make("noise", sigma=0.0).encrypt(black), black)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_noise_rejects_bad_sigma(sigma):
    with pytest.raises(SchemeError, match="sigma must be a finite number"):
        schemes.create("noise", sigma=sigma)


# -- instahide: definition ---------------------------------------------------------------------------------------

def _reference(x: torch.Tensor, public: torch.Tensor | None, index, coeffs, signs) -> torch.Tensor:
    """The encoding computed image by image, partner by partner, from the same draws."""
    to_signed = lambda t: t.double() / 127.5 - 1 if t.dtype == torch.uint8 else t.double() * 2 - 1  # noqa: E731
    pool = [to_signed(t) for t in x] + ([to_signed(t) for t in public] if public is not None else [])
    out = []
    for i in range(x.shape[0]):
        mix = sum(coeffs[i, j].item() * pool[index[i, j].item()] for j in range(index.shape[1]))
        out.append(signs[i].double() * mix)
    return torch.stack(out)


@pytest.mark.parametrize("k,kp,npub", [(4, 4, 0), (2, 2, 0), (6, 2, 7), (3, 1, 4)])
def test_instahide_matches_its_definition(k, kp, npub):
    x = random_images((5, 3, 8, 8), torch.float64)
    public = random_images((npub, 3, 8, 8), torch.uint8, seed=4) if npub else None
    s = schemes.create("instahide", k=k, k_private=kp, public=public)
    index, coeffs, signs = s.draws(5, (3, 8, 8), generator=gen(7), nonce=None, device=torch.device("cpu"))
    y = s.encrypt(x, generator=gen(7))
    assert torch.allclose(y, _reference(x, public, index, coeffs, signs), atol=1e-12)
    assert y.abs().max() <= 1
    # the draws: own image first, private partners are other images of the batch, public ones index the set
    assert torch.equal(index[:, 0], torch.arange(5))
    assert ((index[:, 1:kp] != torch.arange(5).view(-1, 1)) & (index[:, 1:kp] < 5)).all()
    assert ((index[:, kp:] >= 5) & (index[:, kp:] < 5 + npub)).all()
    assert torch.allclose(coeffs.sum(1), torch.ones(5, dtype=coeffs.dtype))
    assert (coeffs.max(1).values <= 0.65 + 1e-9).all() and (coeffs > 0).all()
    assert set(signs.unique().tolist()) == {-1.0, 1.0}


def test_instahide_coefficients_signs_and_partners_are_spread():
    s = schemes.create("instahide", k=4)
    index, coeffs, signs = s.draws(4000, (1, 4, 4), generator=gen(0), nonce=None, device=torch.device("cpu"))
    assert coeffs.mean(0).tolist() == pytest.approx([0.25] * 4, abs=0.01)  # exchangeable coefficients
    assert coeffs.max().item() <= 0.65 + 1e-9 and coeffs.max().item() > 0.6
    assert signs.mean().item() == pytest.approx(0, abs=0.02)
    # partners: every other image of the batch equally often (offsets 1..B-1 from the image's own position)
    g = gen(1)
    offsets = torch.cat([
        ((lambda idx: idx[:, 1:] - idx[:, :1])(s.draws(9, (1, 2, 2), generator=g, nonce=None,
                                                      device=torch.device("cpu"))[0]) % 9).flatten()
        for _ in range(300)
    ])
    freq = torch.bincount(offsets, minlength=9).double() / offsets.numel()
    assert freq[0] == 0 and torch.allclose(freq[1:], torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.012)


def test_instahide_uint8_is_the_documented_mapping_of_the_float_encoding():
    x = random_images((6, 3, 16, 16), torch.uint8)
    s = schemes.create("instahide", k=3)
    y8 = s.encrypt(x, generator=gen(5))
    yf = s.encrypt(x.double() / 255, generator=gen(5))
    assert y8.dtype == torch.uint8 and yf.dtype == torch.float64
    assert (instahide_values(y8) - yf).abs().max() <= 0.5 / 127.5 + 1e-9
    assert yf.min() < -0.5 and yf.max() > 0.5  # float encodings span [-1, 1], not [0, 1]


def test_instahide_batch_of_one_is_refused_since_only_the_sign_flip_would_remain():
    x = random_images((1, 3, 8, 8), torch.float32)
    with pytest.raises(SchemeError, match="only the sign flip would remain"):
        schemes.create("instahide").encrypt(x)
    pub = schemes.create("instahide", k=2, public=random_images((3, 3, 8, 8), torch.float32), k_private=1)
    assert pub.encrypt(x).shape == x.shape  # public partners: a single image is fine


# -- instahide: labels -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,kp,npub", [(4, 4, 0), (6, 2, 5), (3, 1, 3)])
def test_mixed_labels_sum_to_one_and_are_the_coefficient_weighted_one_hots(k, kp, npub):
    b, classes = 7, 10
    x = random_images((b, 1, 8, 8), torch.float32)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 9])
    public = random_images((npub, 1, 8, 8), torch.float32, seed=3) if npub else None
    s = schemes.create("instahide", k=k, k_private=kp, public=public)
    enc, soft = s.encrypt_with_labels(x, F.one_hot(labels, classes).float(), generator=gen(11))
    index, coeffs, _ = s.draws(b, (1, 8, 8), generator=gen(11), nonce=None, device=torch.device("cpu"))
    assert torch.equal(enc, s.encrypt(x, generator=gen(11)))
    assert torch.allclose(soft.sum(1), torch.ones(b))
    for i in range(b):
        expected = torch.zeros(classes)
        for j in range(kp):  # public partners carry no label
            expected[labels[index[i, j]]] += coeffs[i, j].item()
        assert torch.allclose(soft[i], expected / expected.sum(), atol=1e-6)
    assert soft[:, labels].diagonal().ge(coeffs[:, 0].float() / coeffs[:, :kp].float().sum(1) - 1e-6).all()


def test_encrypt_with_labels_takes_the_baselines_call_and_nonces():
    s = make("instahide", k=4)
    x = random_images((8, 3, 12, 12), torch.uint8)
    onehot = F.one_hot(torch.arange(8) % 3, 3).float()
    enc, soft = s.encrypt_with_labels(x, onehot)
    assert enc.dtype == torch.uint8 and soft.shape == (8, 3)
    e1, s1 = s.encrypt_with_labels(x, onehot, nonce=list(range(8)))
    e2, s2 = s.encrypt_with_labels(x, onehot, nonce=list(range(8)))
    assert torch.equal(e1, e2) and torch.equal(s1, s2) and torch.equal(e1, s.encrypt(x, nonce=list(range(8))))
    with pytest.raises(SchemeError, match="onehot_labels must be a float tensor"):
        s.encrypt_with_labels(x, torch.arange(8))
    with pytest.raises(SchemeError, match="B = 8 images"):
        s.encrypt_with_labels(x, onehot[:5])


# -- instahide: errors and the public set ------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 0, -3, 2.5, True])
def test_instahide_k_below_two_is_a_clear_error(k):
    with pytest.raises(ValueError, match="k >= 2"):
        schemes.create("instahide", k=k)


def test_instahide_bad_options_are_clear_errors():
    with pytest.raises(SchemeError, match="no public set was given"):
        schemes.create("instahide", k=4, k_private=2)
    with pytest.raises(SchemeError, match="k_private must be"):
        schemes.create("instahide", k=4, k_private=5)
    with pytest.raises(SchemeError, match="upper must be"):
        schemes.create("instahide", k=4, upper=0.2)
    with pytest.raises(SchemeError, match="public must be"):
        schemes.create("instahide", public=[1, 2])
    with pytest.raises(SchemeError, match="neither an image file nor a folder"):
        schemes.create("instahide", public="/nonexistent/public")
    s = schemes.create("instahide", public=torch.zeros(3, 3, 8, 8))
    with pytest.raises(SchemeError, match="same size"):
        s.encrypt(torch.zeros(2, 1, 8, 8))
    with pytest.raises(SchemeError, match="nonce needs a key"):
        schemes.create("instahide").encrypt(torch.zeros(2, 1, 8, 8), nonce=[1, 2])


def test_public_folder_and_keyveil_encrypt(tmp_path):
    from keyveil.commands.crypt import parse_options
    from keyveil.folders import process_tree

    rng = np.random.default_rng(0)
    pub, src, dst = tmp_path / "public", tmp_path / "src", tmp_path / "dst"
    pub.mkdir(), src.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(pub / f"p{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / f"x{i}.png")
    opts = parse_options([f"public='{pub}'", "k=3", "k_private=1"])
    s = schemes.create("instahide", **opts)  # keyless: a key would do nothing in a file job
    assert s.public.shape == (4, 3, 16, 16) and s.config["params"]["public"] == str(pub)
    report = process_tree(s, src, dst, progress=False)
    assert report.ok
    for i in range(4):
        x = torch.from_numpy(np.array(Image.open(src / f"x{i}.png"))).permute(2, 0, 1)
        y = torch.from_numpy(np.array(Image.open(dst / f"x{i}.png"))).permute(2, 0, 1)
        assert y.shape == x.shape and not torch.equal(x, y)
    assert process_tree(schemes.create("noise", sigma=0.2), src, tmp_path / "noisy", progress=False).ok
