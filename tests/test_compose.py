from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from checkers import check_scheme, random_images
from PIL import Image
from torch import nn

from keyveil import Key, schemes
from keyveil.models import keyed
from keyveil.schemes import GeometryError, NotInvertibleError, SchemeError, UnknownSchemeError

PRESETS = ["visualmixer-seed+pixel", "mix+pixel"]


def compose(steps, seed: int = 0):
    return schemes.create("compose", Key.from_seed(seed), steps=steps)


def small_cnn(channels: int, side: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * (side // 4) ** 2, 10),
    ).eval()


# -- the contract ------------------------------------------------------------
@pytest.mark.parametrize("steps", [
    ["etc", "pixel"],
    ["pixel-np", "etc"],
    [("block", {"block_size": 8}), ("pixel", {"per_channel": True})],
    ["patch", "pixel"],  # keyed patch with nonces: invertible and per-image
    ["visualmixer-seed", "pixel"],
    ["mix", "pixel"],
    [("compose", {"steps": ["pixel", "etc"]}), "patch"],  # nested
])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_contract(steps, dtype):
    s = compose(steps)
    check_scheme(s, random_images((3, 3, 32, 32), dtype))
    check_scheme(s, random_images((1, 1, 32, 64), dtype, seed=1))


def test_presets_are_listed_and_the_template_is_not():
    assert set(PRESETS) <= set(schemes.list_schemes())
    assert "compose" not in schemes.list_schemes()
    assert "compose" in schemes.list_schemes(include_templates=True)
    assert schemes.scheme_class("mix+pixel").needs_key  # what the command-line tools ask
    for name in PRESETS:
        s = schemes.create(name, Key.from_seed(0))
        assert [schemes.compose.step_name(t) for t in s.steps][-1] == "pixel"
        assert s.per_image and not s.invertible


def test_invertible_chain_round_trips_exactly_in_every_kind():
    s = compose(["etc", "pixel"])
    x = random_images((4, 3, 16, 24), torch.uint8)
    y = s.encrypt(x)
    assert torch.equal(s.decrypt(y), x) and (y != x).float().mean() > 0.6
    xf = random_images((4, 3, 16, 24), torch.float64)
    assert (s.decrypt(s.encrypt(xf)) - xf).abs().max() <= 6e-8  # etc's 1 - (1 - v)
    arr = x[0].permute(1, 2, 0).numpy()
    assert np.array_equal(s.decrypt(s.encrypt(arr)), arr)
    img = Image.fromarray(arr)
    assert np.array_equal(np.asarray(s.decrypt(s.encrypt(img))), arr)


def test_steps_apply_in_order_and_decrypt_in_reverse():
    s = compose(["etc", "pixel"])
    etc, pixel = s.steps
    x = random_images((2, 3, 16, 16), torch.uint8)
    y = s.encrypt(x)
    assert torch.equal(y, pixel.encrypt(etc.encrypt(x)))
    assert not torch.equal(y, etc.encrypt(pixel.encrypt(x)))
    assert torch.equal(s.decrypt(y), etc.decrypt(pixel.decrypt(y)))


def test_each_named_step_gets_its_own_derived_key_and_the_secret_stays_hidden():
    key = Key.generate()
    s = schemes.create("compose", key, steps=["pixel", "pixel", "etc"])
    for i, name in enumerate(["pixel", "pixel", "etc"]):
        assert s.step_key(i) == key.derive(f"compose/{i}/{name}")
    fingerprints = {s.step_key(i).fingerprint for i in range(3)} | {key.fingerprint}
    assert len(fingerprints) == 4
    x = random_images((1, 3, 8, 8), torch.uint8)
    assert not torch.equal(s.steps[0].encrypt(x), s.steps[1].encrypt(x))
    assert [t["key_fingerprint"] for t in s.config["params"]["steps"]] == [s.step_key(i).fingerprint for i in range(3)]
    secret = key.to_json().split('"secret": "')[1][:20]
    assert secret not in repr(s.config) + repr(s)
    # same key, same steps: the same scheme; another key: another one
    assert torch.equal(schemes.create("compose", key, steps=["pixel", "pixel", "etc"]).encrypt(x), s.encrypt(x))
    assert not torch.equal(schemes.create("compose", Key.generate(), steps=["pixel", "pixel", "etc"]).encrypt(x),
                           s.encrypt(x))


def test_config_rebuilds_the_chain_and_checks_fingerprints():
    key = Key.from_seed(3)
    s = schemes.create("mix+pixel", key)
    again = schemes.create(s.config["scheme"], key, **s.config["params"])
    x = random_images((2, 3, 32, 32), torch.uint8)
    assert torch.equal(again.encrypt(x, nonce=[1, 2]), s.encrypt(x, nonce=[1, 2]))
    assert again.config == s.config
    with pytest.raises(SchemeError, match="config names key"):
        schemes.create("compose", Key.from_seed(4), **s.config["params"])


def test_key_space_is_the_sum_of_the_steps():
    s = compose(["etc", "pixel"])
    shape = (3, 32, 32)
    assert s.key_space_bits(shape) == pytest.approx(sum(t.key_space_bits(shape) for t in s.steps))
    assert s.key_space_bits(shape) > schemes.create("pixel", Key.generate()).key_space_bits(shape)
    assert schemes.create("mix+pixel", Key.generate()).key_space_bits(shape) == float("inf")


def test_pickled_chain_encrypts_alike():
    s = schemes.create("visualmixer-seed+pixel", Key.from_seed(0))
    clone = pickle.loads(pickle.dumps(s))
    x = random_images((2, 3, 32, 32), torch.uint8)
    assert torch.equal(clone.encrypt(x, nonce=[7, 8]), s.encrypt(x, nonce=[7, 8]))
    assert clone.config == s.config and clone.step_key(1) == s.step_key(1)


# -- per-image randomness ------------------------------------------------------
def test_batched_equals_per_image_under_the_same_nonces():
    s = schemes.create("visualmixer-seed+pixel", Key.from_seed(1))
    x = random_images((3, 3, 32, 32), torch.float32)
    y = s.encrypt(x, nonce=[10, 11, 12])
    singles = torch.cat([s.encrypt(x[i:i + 1], nonce=[10 + i]) for i in range(3)])
    assert torch.equal(y, singles)
    assert not torch.equal(s.encrypt(x, nonce=[20, 21, 22]), y)


def test_nonce_streams_are_independent_per_step():
    """Two identical per-image steps with one nonce still draw different randomness (different keys)."""
    s = compose([("patch", {"patch_size": 4}), ("patch", {"patch_size": 4})])
    x = random_images((1, 3, 16, 16), torch.uint8)
    first, second = s.steps
    y = s.encrypt(x, nonce=[5])
    assert torch.equal(y, second.encrypt(first.encrypt(x, nonce=[5]), nonce=[5]))
    assert not torch.equal(first.encrypt(x, nonce=[5]), second.encrypt(x, nonce=[5]))
    assert torch.equal(s.decrypt(y, nonce=[5]), x)


def test_one_generator_feeds_the_per_image_steps_in_turn():
    s = compose([("patch", {"patch_size": 4}), "pixel", ("patch", {"patch_size": 4})])
    x = random_images((2, 3, 16, 16), torch.uint8)
    y = s.encrypt(x, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    a, pixel, b = s.steps
    expected = b.encrypt(pixel.encrypt(a.encrypt(x, generator=gen)), generator=gen)
    assert torch.equal(y, expected)
    assert torch.equal(s.encrypt(x, generator=torch.Generator().manual_seed(9)), y)


# -- the keyed-model claim of the presets ----------------------------------------
@pytest.mark.parametrize("preset,first,shape", [
    ("visualmixer-seed+pixel", "visualmixer-seed", (1, 28, 28)),
    ("mix+pixel", "mix", (3, 32, 32)),
])
def test_a_keyed_cnn_on_the_chain_equals_the_plain_cnn_on_the_first_step(preset, first, shape):
    """keyed(m, pixel step's key) on preset images == m on the first step's images (same randomness)."""
    m = small_cnn(shape[0], shape[1])
    s = schemes.create(preset, Key.from_seed(5))
    knet = keyed(m, s.step_key(1), input_size=shape)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0))
    y = s.encrypt(x, generator=torch.Generator().manual_seed(1))
    plain_step = schemes.create(first).encrypt(x, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (knet(y) - m(plain_step)).abs().max() <= 1e-5
        # with nonces too, against the chain's own first step
        yn = s.encrypt(x, nonce=[0, 1, 2, 3])
        assert (knet(yn) - m(s.steps[0].encrypt(x, nonce=[0, 1, 2, 3]))).abs().max() <= 1e-5
        wrong = keyed(m, Key.from_seed(6), input_size=shape)
        assert (wrong(y) - m(plain_step)).abs().max() > 1e-3
    # whoever holds the pixel step's key is back to the first step's images
    assert torch.equal(s.steps[1].decrypt(y), plain_step)
    # while a viewer without it sees a permutation of every pixel position
    assert (y != plain_step).float().mean() > 0.9


# -- errors ----------------------------------------------------------------------
def test_not_invertible_names_the_step():
    s = compose(["pixel", "visualmixer-seed", "etc"])
    y = s.encrypt(random_images((1, 3, 16, 16), torch.uint8), nonce=[0])
    with pytest.raises(NotInvertibleError, match=r"compose step 1 \(visualmixer-seed\) is not invertible"):
        s.decrypt(y, nonce=[0])
    with pytest.raises(NotInvertibleError, match=r"step 0 \(mix\).*mixture"):
        schemes.create("mix+pixel", Key.generate()).decrypt(torch.zeros(1, 3, 16, 16))
    keyless = schemes.chain(schemes.create("patch", patch_size=4), schemes.create("pixel", Key.generate()))
    with pytest.raises(NotInvertibleError, match=r"step 0 \(patch\).*nonce"):
        keyless.decrypt(torch.zeros(1, 3, 16, 16))


def test_bad_steps_are_clear_errors():
    key = Key.generate()
    with pytest.raises(UnknownSchemeError, match=r"step 1 \(pixle\).*did you mean 'pixel'"):
        schemes.create("compose", key, steps=["etc", "pixle"])
    with pytest.raises(SchemeError, match="at least one step"):
        schemes.create("compose", key, steps=[])
    with pytest.raises(SchemeError, match="at least one step"):
        schemes.create("compose", key)
    with pytest.raises(SchemeError, match="list of steps"):
        schemes.create("compose", key, steps="pixel")
    with pytest.raises(SchemeError) as info:  # every problem in one error
        schemes.create("compose", key, steps=[("etc", {"foo": 1}), 3, ("pixel", "negapos"), "mixx"])
    text = str(info.value)
    assert "step 0 (etc)" in text and "'foo'" in text and "step 1 (int)" in text
    assert "step 2 (pixel): its options must be a dict" in text and "step 3 (mixx)" in text
    with pytest.raises(SchemeError, match=r"step 1 \(pixel\).*needs a key"):
        schemes.create("compose", None, steps=["visualmixer", "pixel"])
    k = Key.generate()
    with pytest.raises(SchemeError, match="same key"):
        schemes.chain(schemes.create("etc", k), schemes.create("pixel", k))
    with pytest.raises(TypeError, match="Scheme objects"):
        schemes.chain(schemes.create("etc", k), "pixel")


def test_errors_from_a_step_keep_their_class_and_name_the_step():
    s = compose(["pixel", "etc"])
    with pytest.raises(GeometryError, match=r"compose step 1 \(etc\).*block size 4"):
        s.encrypt(torch.zeros(1, 3, 30, 32, dtype=torch.uint8))
    with pytest.raises(GeometryError, match=r"compose step 0 \(mix\).*patch size 16"):
        schemes.create("mix+pixel", Key.generate()).encrypt(torch.zeros(1, 1, 28, 28))
    with pytest.raises(SchemeError, match="takes no generator or nonce"):
        s.encrypt(torch.zeros(1, 3, 8, 8), nonce=[1])
    keyless = schemes.chain(schemes.create("visualmixer"))
    with pytest.raises(SchemeError, match=r"compose step 0 \(visualmixer\).*a nonce needs a key"):
        keyless.encrypt(torch.zeros(1, 3, 8, 8), nonce=[1])
    with pytest.raises(SchemeError, match=r"step 0 \(le\).*multiples of 1/255"):
        compose(["le"]).encrypt(torch.full((1, 3, 4, 4), 0.3333))


def test_chain_wraps_the_given_schemes():
    etc, pixel = schemes.create("etc", Key.generate()), schemes.create("pixel", Key.generate())
    both = schemes.chain(etc, pixel)
    assert both.steps[0] is etc and both.step_key(1) is pixel.key and both.key is None
    check_scheme(both, random_images((2, 3, 16, 16), torch.uint8))
    assert "etc -> pixel" in repr(both)


def test_schemes_command_lists_the_chains(capsys):
    from keyveil.cli import main

    assert main(["schemes"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert f"\n{name} " in out
    assert "schemes.chain(a, b)" in out and "\ncompose " not in out
