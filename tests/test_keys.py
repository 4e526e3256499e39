from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest

from keyveil import InsecureKeyWarning, Key, KeyFileError


def test_from_seed_warns_and_is_reproducible():
    with pytest.warns(InsecureKeyWarning):
        a = Key.from_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = Key.from_seed(0)
        c = Key.from_seed(1)
    assert a == b and a != c and a.fingerprint == b.fingerprint


def test_literal_test_vectors():
    # Pinned once: a change here breaks every key file and encrypted dataset ever made.
    key = Key.from_seed(0)
    assert key.fingerprint == "bdfe5cb3eea8257c"
    assert key.permutation("pixel/perm/32x32", 1024)[:8].tolist() == [694, 1007, 631, 320, 132, 603, 326, 520]


def test_stream_is_hmac_sha256_and_pcg64():
    """Re-derive a permutation independently from the spec in docs/design.md §2."""
    key = Key.from_seed(3)
    secret = base64.b64decode(json.loads(key.to_json())["secret"])
    assert key.fingerprint == hashlib.sha256(secret).digest()[:8].hex()
    seed = hmac.new(secret, b"feature/7x7", hashlib.sha256).digest()
    words = np.random.PCG64(np.random.SeedSequence(int.from_bytes(seed, "little"))).random_raw(49)
    expected = sorted(range(49), key=lambda i: (int(words[i]), i))
    assert key.permutation("feature/7x7", 49).tolist() == expected


def test_permutations_reproducible_across_processes():
    code = (
        "import warnings; warnings.simplefilter('ignore'); from keyveil import Key; "
        "print(Key.from_seed(5).permutation('block/k1', 50).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(Key.from_seed(5).permutation("block/k1", 50).tolist())


def test_labels_are_independent_and_streams_valid():
    key = Key.generate()
    p1, p2 = key.permutation("a", 1000), key.permutation("b", 1000)
    assert sorted(p1.tolist()) == list(range(1000)) and not (p1 == p2).all()
    rows = key.permutations("rows", 5, 16)
    assert rows.shape == (5, 16) and all(sorted(r) == list(range(16)) for r in rows.tolist())
    ints = key.integers("i", 10000, 8)
    assert ints.min() >= 0 and ints.max() == 7 and len(set(ints.tolist())) == 8
    bits = key.bits("bits", 10000).float().mean().item()
    assert 0.45 < bits < 0.55
    u = key.uniform("u", 10000)
    assert 0 <= u.min() and u.max() < 1
    assert key.derive("x") != key and key.derive("x") == key.derive("x")


def test_generate_is_random_and_secret_not_in_repr():
    a, b = Key.generate(), Key.generate()
    assert a != b
    secret = json.loads(a.to_json())["secret"]
    assert secret not in repr(a) and secret not in str(a) and a.fingerprint in repr(a)


def test_passphrase_kdf():
    a = Key.from_passphrase("correct horse battery staple")
    assert a == Key.from_passphrase("correct horse battery staple")
    assert a != Key.from_passphrase("correct horse battery stapler")
    expected = hashlib.scrypt(b"pw", salt=b"keyveil/passphrase/v1", n=2**14, r=8, p=1, dklen=32)
    assert Key.from_passphrase("pw").fingerprint == hashlib.sha256(expected).digest()[:8].hex()
    with pytest.raises(ValueError):
        Key.from_passphrase("")


def test_save_load_roundtrip_and_mode(tmp_path):
    key = Key.generate()
    path = key.save(tmp_path / "k.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Key.load(path) == key
    with pytest.raises(FileExistsError):
        key.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "keyveil-key" and data["version"] == 1 and data["fingerprint"] == key.fingerprint


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t[: len(t) // 2], "not valid JSON"),
        (lambda t: t.replace('"keyveil-key"', '"other"'), "not a keyveil key file"),
        (lambda t: t.replace('"version": 1', '"version": 9'), "version 9"),
        (lambda t: json.dumps({**json.loads(t), "fingerprint": "0" * 16}), "fingerprint does not match"),
        (lambda t: json.dumps({**json.loads(t), "secret": base64.b64encode(b"x" * 16).decode()}), "16 bytes"),
        (lambda t: json.dumps({**json.loads(t), "secret": "!!!"}), "not valid base64"),
        (lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "secret"}), "no 'secret'"),
        (lambda t: "[1, 2]", "not a keyveil key file"),
    ],
)
def test_bad_key_files_give_one_line_errors(tmp_path, mutate, message):
    path = tmp_path / "k.json"
    path.write_text(mutate(Key.generate().to_json()))
    with pytest.raises(KeyFileError) as info:
        Key.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_and_binary_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        Key.load(tmp_path / "nope")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(KeyFileError):
        Key.load(tmp_path / "bin")
