from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keyveil import Key, __version__
from keyveil.cli import main
from keyveil.folders import MANIFEST_NAME


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keyveil.cli", *args], capture_output=True, text=True)


def make_tree(root: Path, n: int, size: int = 32, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        cls = root / f"class{i % 3}"
        cls.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (size, size, 3) if i % 4 else (size, size), dtype=np.uint8)
        path = cls / f"img{i:03d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).copy()


def test_version_and_schemes_table(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
    assert main(["schemes"]) == 0
    out = capsys.readouterr().out
    for name in ("pixel", "etc", "le", "ele", "vit", "patch", "mix", "block"):
        assert f"\n{name} " in out
    assert "224x224" in out and "invertible" in out


def test_keygen_refuses_to_overwrite(tmp_path, capsys):
    key = tmp_path / "k.key"
    assert main(["keygen", "-o", str(key)]) == 0
    fingerprint = Key.load(key).fingerprint
    assert fingerprint in capsys.readouterr().out
    before = key.read_bytes()
    assert main(["keygen", "-o", str(key)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert key.read_bytes() == before


def test_200_pngs_round_trip_byte_identical(tmp_path):
    src = tmp_path / "src"
    paths = make_tree(src, 200)
    key = tmp_path / "k.key"
    Key.generate().save(key)
    assert main(["encrypt", "--scheme", "etc", "--key", str(key), str(src), str(tmp_path / "enc"), "--quiet"]) == 0
    assert main(["decrypt", "--scheme", "etc", "--key", str(key), str(tmp_path / "enc"), str(tmp_path / "dec"),
                 "--quiet", "--workers", "2"]) == 0
    changed = 0
    for p in paths:
        rel = p.relative_to(src)
        enc, dec = pixels(tmp_path / "enc" / rel), pixels(tmp_path / "dec" / rel)
        assert np.array_equal(dec, pixels(p)) and dec.dtype == np.uint8
        changed += not np.array_equal(enc, pixels(p))
    assert changed == 200
    manifest = json.loads((tmp_path / "enc" / MANIFEST_NAME).read_text())
    assert manifest["key_fingerprint"] == Key.load(key).fingerprint
    assert json.loads(key.read_text())["secret"] not in json.dumps(manifest)


def test_killed_job_resumes_without_redoing_or_corrupting(tmp_path):
    src, enc = tmp_path / "src", tmp_path / "enc"
    paths = make_tree(src, 200, size=96)
    key = tmp_path / "k.key"
    Key.generate().save(key)
    args = [sys.executable, "-m", "keyveil.cli", "encrypt", "--scheme", "pixel", "--key", str(key),
            str(src), str(enc), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(enc.rglob("*.png"))) < 30:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in enc.rglob("*.png")}
    assert 30 <= len(done) < 200, "the job should have been killed midway"
    result = run_cli("encrypt", "--scheme", "pixel", "--key", str(key), str(src), str(enc), "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"{200 - len(done)} written, {len(done)} already done" in result.stdout
    for p, mtime in done.items():
        assert p.stat().st_mtime_ns == mtime, "a finished file was redone"
    assert not list(enc.rglob("*.keyveil-tmp")), "temporary files were left behind"
    assert main(["decrypt", "--scheme", "pixel", "--key", str(key), str(enc), str(tmp_path / "dec"), "--quiet"]) == 0
    for p in paths:
        assert np.array_equal(pixels(tmp_path / "dec" / p.relative_to(src)), pixels(p))


def test_bad_files_are_reported_and_the_rest_processed(tmp_path, capsys):
    src = tmp_path / "src"
    make_tree(src, 6)
    (src / "class0" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(src / "class1" / "alpha.png")
    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(src / "class2" / "odd.png")
    key = tmp_path / "k.key"
    Key.generate().save(key)
    code = main(["encrypt", "--scheme", "etc", "--key", str(key), str(src), str(tmp_path / "enc"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "6 written" in err and "3 failed" in err
    assert "corrupt.png: cannot be read" in err
    assert "alpha.png: has an alpha channel (mode RGBA)" in err
    assert "odd.png: image size 30x32 is not divisible by the block size 4" in err
    assert len(list((tmp_path / "enc").rglob("*.png"))) == 6


def test_never_writes_into_source_or_overwrites(tmp_path, capsys):
    src = tmp_path / "src"
    make_tree(src, 3)
    key = tmp_path / "k.key"
    Key.generate().save(key)
    before = {p: p.read_bytes() for p in src.rglob("*")  if p.is_file()}
    assert main(["encrypt", "--scheme", "pixel", "--key", str(key), str(src), str(src / "out"), "--quiet"]) == 2
    assert "inside the source" in capsys.readouterr().err
    single = next(iter(before))
    assert main(["encrypt", "--scheme", "pixel", "--key", str(key), str(single), str(single), "--quiet"]) == 2
    out = tmp_path / "one.png"
    out.write_bytes(b"user data")
    assert main(["encrypt", "--scheme", "pixel", "--key", str(key), str(single), str(out), "--quiet"]) == 1
    assert "already exists and is not a keyveil ciphertext" in capsys.readouterr().err
    assert out.read_bytes() == b"user data", "an existing output was overwritten without --overwrite"
    assert main(["encrypt", "--scheme", "pixel", "--key", str(key), str(single), str(out), "--quiet", "--overwrite"]) == 0
    assert out.read_bytes() != b"user data"
    assert before == {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}


def test_decrypt_with_the_wrong_key_or_scheme_is_refused(tmp_path, capsys):
    src = tmp_path / "src"
    make_tree(src, 2)
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    Key.generate().save(k1)
    Key.generate().save(k2)
    assert main(["encrypt", "--scheme", "etc", "--key", str(k1), str(src), str(tmp_path / "enc"), "--quiet"]) == 0
    assert main(["decrypt", "--scheme", "etc", "--key", str(k2), str(tmp_path / "enc"), str(tmp_path / "d"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("was encrypted with key") == 2 and "0 written" in err
    assert not list((tmp_path / "d").rglob("*.png"))
    assert main(["decrypt", "--scheme", "mix", str(tmp_path / "enc"), str(tmp_path / "d2"), "--quiet"]) == 2
    assert "cannot be recovered" in capsys.readouterr().err


def test_per_image_scheme_with_key_uses_fresh_nonces_and_decrypts(tmp_path):
    src = tmp_path / "src"
    paths = make_tree(src, 4)
    key = tmp_path / "k"
    Key.generate().save(key)
    opts = ["--scheme", "patch", "--key", str(key), "--option", "patch_size=8", "--quiet"]
    assert main(["encrypt", *opts, str(src), str(tmp_path / "e1")]) == 0
    assert main(["encrypt", *opts, str(src), str(tmp_path / "e2")]) == 0
    assert main(["decrypt", *opts, str(tmp_path / "e1"), str(tmp_path / "d")]) == 0
    same = 0
    for p in paths:
        rel = p.relative_to(src)
        same += np.array_equal(pixels(tmp_path / "e1" / rel), pixels(tmp_path / "e2" / rel))
        assert np.array_equal(pixels(tmp_path / "d" / rel), pixels(p))
    assert same == 0, "the per-image randomness must be a fresh nonce, not a function of the file name"


def test_missing_key_and_bad_option_messages(tmp_path, capsys):
    src = tmp_path / "src"
    make_tree(src, 1)
    assert main(["encrypt", "--scheme", "pixel", str(src), str(tmp_path / "e")]) == 2
    assert "needs a key" in capsys.readouterr().err
    key = tmp_path / "k"
    Key.generate().save(key)
    assert main(["encrypt", "--scheme", "pixel", "--key", str(key), "--option", "nope", str(src), str(tmp_path / "e")]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["encrypt", "--scheme", "pixel", "--key", str(key), "--option", "colour=1", str(src), str(tmp_path / "e")]) == 2
    assert "bad --option" in capsys.readouterr().err
