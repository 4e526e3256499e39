"""Everyday workflows a user can trust: exact-or-refused decryption, no unprotected output,
bad images converted correctly or refused, one job per folder. Each test drives the CLI on
real photos (scikit-image) in a temp folder, as a user would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from keyveil import Key, schemes
from keyveil.cipherfile import read_header
from keyveil.cli import main
from keyveil.folders import MANIFEST_NAME
from keyveil.schemes import SchemeError

skdata = pytest.importorskip("skimage.data")

INVERTIBLE = [
    ("pixel", []), ("pixel-np", []), ("etc", []), ("le", []), ("ele", []), ("vit", []), ("block", []),
    ("patch", ["--option", "patch_size=16"]),
    ("pixel+etc", []),
    ("patch+pixel-np", []),
]


def photos(root: Path) -> dict[str, Path]:
    """Four real photos, 64x64 and 48x64, RGB and grayscale, two of them in a sub-folder."""
    imgs = {
        "astronaut.png": Image.fromarray(skdata.astronaut()).resize((64, 64)),
        "sub/coffee.png": Image.fromarray(skdata.coffee()).resize((64, 48)),
        "sub/camera.png": Image.fromarray(skdata.camera()).resize((64, 64)),
        "chelsea.jpg": Image.fromarray(skdata.chelsea()).resize((64, 48)),
    }
    out = {}
    for rel, img in imgs.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=95) if rel.endswith(".jpg") else img.save(path)
        out[rel] = path
    return out


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img).copy()


def plain_pixels(path: Path) -> np.ndarray:
    """What keyveil reads from a source (the JPEG decoded once, as encrypt did)."""
    from keyveil.imageio import read_image

    t = read_image(path)
    return t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()


def keyfile(tmp: Path, name: str = "k.key") -> Path:
    path = tmp / name
    Key.generate().save(path)
    return path


# -- 1. decryption is exact or refused ---------------------------------------------------------------

@pytest.mark.parametrize("scheme,opts", INVERTIBLE, ids=[s + (opts[-1] if opts else "") for s, opts in INVERTIBLE])
def test_moved_renamed_subfolder_and_single_files_decrypt_bit_exactly(tmp_path, scheme, opts):
    src = photos(tmp_path / "photos")
    key = keyfile(tmp_path)
    args = ["--scheme", scheme, "--key", str(key), *opts, "--quiet"]
    assert main(["encrypt", *args, str(tmp_path / "photos"), str(tmp_path / "enc")]) == 0
    # move the sub-folder elsewhere and rename a file in it: decryption may not depend on paths
    moved = tmp_path / "elsewhere" / "renamed-sub"
    shutil.move(tmp_path / "enc" / "sub", moved)
    (moved / "coffee.png").rename(moved / "IMG_0001.png")
    assert main(["decrypt", *args, str(moved), str(tmp_path / "dec-sub")]) == 0
    assert np.array_equal(pixels(tmp_path / "dec-sub" / "IMG_0001.png"), plain_pixels(src["sub/coffee.png"]))
    assert np.array_equal(pixels(tmp_path / "dec-sub" / "camera.png"), plain_pixels(src["sub/camera.png"]))
    single = tmp_path / "enc" / "chelsea.png"
    assert main(["decrypt", *args, str(single), str(tmp_path / "one.png")]) == 0
    assert np.array_equal(pixels(tmp_path / "one.png"), plain_pixels(src["chelsea.jpg"]))
    assert not np.array_equal(pixels(single), plain_pixels(src["chelsea.jpg"]))


def test_wrong_key_scheme_or_option_is_refused_per_file_and_nothing_written(tmp_path, capsys):
    photos(tmp_path / "photos")
    key, other = keyfile(tmp_path), keyfile(tmp_path, "other.key")
    assert main(["encrypt", "--scheme", "patch", "--key", str(key), "--option", "patch_size=16", "--quiet",
                 str(tmp_path / "photos"), str(tmp_path / "enc")]) == 0
    capsys.readouterr()
    cases = {
        "wrong key": (["--scheme", "patch", "--key", str(other), "--option", "patch_size=16"], "was encrypted with key"),
        "wrong scheme": (["--scheme", "pixel", "--key", str(key)], "was encrypted with scheme 'patch'"),
        "wrong option": (["--scheme", "patch", "--key", str(key), "--option", "patch_size=8"],
                         "was encrypted with scheme 'patch' with options {'patch_size': 16}"),
    }
    for name, (args, reason) in cases.items():
        out = tmp_path / f"dec-{name.replace(' ', '-')}"
        # the whole folder, a sub-folder, and one file: every file named with the reason
        for target, count in ((tmp_path / "enc", 4), (tmp_path / "enc" / "sub", 2),
                              (tmp_path / "enc" / "astronaut.png", 1)):
            code = main(["decrypt", *args, "--quiet", str(target), str(out)])
            err = capsys.readouterr().err
            assert code == 1, (name, target)
            assert err.count(reason) == count and err.count("FAILED") == count, (name, err)
        assert not list(out.rglob("*.png")) if out.exists() else True


def test_a_file_without_header_or_with_edited_pixels_is_refused(tmp_path, capsys):
    photos(tmp_path / "photos")
    key = keyfile(tmp_path)
    args = ["--scheme", "pixel", "--key", str(key), "--quiet"]
    assert main(["encrypt", *args, str(tmp_path / "photos"), str(tmp_path / "enc")]) == 0
    enc = tmp_path / "enc" / "astronaut.png"
    Image.open(enc).save(tmp_path / "resaved.png")  # another program drops the header
    arr = pixels(enc)
    arr[0, 0, 0] ^= 1
    header = read_header(enc)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("keyveil", header.to_text())
    Image.fromarray(arr).save(tmp_path / "edited.png", pnginfo=info)
    capsys.readouterr()
    assert main(["decrypt", *args, str(tmp_path / "resaved.png"), str(tmp_path / "d1.png")]) == 1
    assert "has no keyveil header" in capsys.readouterr().err
    assert main(["decrypt", *args, str(tmp_path / "edited.png"), str(tmp_path / "d2.png")]) == 1
    assert "its pixels changed after encryption" in capsys.readouterr().err
    assert not (tmp_path / "d1.png").exists() and not (tmp_path / "d2.png").exists()


def test_header_holds_no_secret_and_a_fresh_nonce(tmp_path):
    photos(tmp_path / "photos")
    key = keyfile(tmp_path)
    for out in ("e1", "e2"):
        assert main(["encrypt", "--scheme", "patch", "--key", str(key), "--quiet", str(tmp_path / "photos"),
                     str(tmp_path / out)]) == 0
    secret = json.loads(key.read_text())["secret"]
    h1, h2 = read_header(tmp_path / "e1" / "astronaut.png"), read_header(tmp_path / "e2" / "astronaut.png")
    assert secret not in h1.to_text() and h1.key_fingerprint == Key.load(key).fingerprint
    assert h1.nonce != h2.nonce, "the nonce must be random, not derived from the file name"
    assert not np.array_equal(pixels(tmp_path / "e1" / "astronaut.png"), pixels(tmp_path / "e2" / "astronaut.png"))


# -- 2. no output that protects nothing ----------------------------------------------------------------

def test_instahide_on_a_folder_is_refused_and_writes_nothing(tmp_path, capsys):
    photos(tmp_path / "photos")
    code = main(["encrypt", "--scheme", "instahide", "--quiet", str(tmp_path / "photos"), str(tmp_path / "enc")])
    assert code == 2
    assert "mixed only with itself" in capsys.readouterr().err
    assert not (tmp_path / "enc").exists()


def test_instahide_batch_of_one_is_an_error_not_a_warning():
    with pytest.raises(SchemeError, match="only the sign flip would remain"):
        schemes.create("instahide").encrypt(torch.rand(1, 3, 8, 8))


def test_output_equal_to_input_is_refused(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.full((32, 32, 3), 77, np.uint8)).save(tmp_path / "photos" / "flat.png")
    key = keyfile(tmp_path)
    assert main(["encrypt", "--scheme", "pixel", "--key", str(key), "--quiet", str(tmp_path / "photos"),
                 str(tmp_path / "enc")]) == 1
    assert "flat.png: its ciphertext equals the image itself" in capsys.readouterr().err
    assert not (tmp_path / "enc" / "flat.png").exists()


def test_key_on_a_keyless_scheme_is_refused(tmp_path, capsys):
    photos(tmp_path / "photos")
    key = keyfile(tmp_path)
    for scheme in ("visualmixer", "mix", "noise"):
        assert main(["encrypt", "--scheme", scheme, "--key", str(key), "--quiet", str(tmp_path / "photos"),
                     str(tmp_path / f"enc-{scheme}")]) == 2
        assert "takes no key" in capsys.readouterr().err


# -- 3. bad input never becomes bad output ------------------------------------------------------------

def test_sixteen_bit_is_refused_then_converted_correctly(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    gray8 = np.asarray(Image.fromarray(skdata.camera()).resize((64, 64)))
    gray16 = gray8.astype(np.uint16) * 257 + 100  # a real 16-bit image: high byte = the 8-bit photo
    Image.fromarray(gray16).save(tmp_path / "photos" / "deep.png")
    key = keyfile(tmp_path)
    args = ["--scheme", "pixel", "--key", str(key), "--quiet"]
    assert main(["encrypt", *args, str(tmp_path / "photos"), str(tmp_path / "e1")]) == 1
    err = capsys.readouterr().err
    assert "deep.png: has 16 bits per value" in err and "--mode L" in err
    assert main(["encrypt", *args, "--color", "L", str(tmp_path / "photos"), str(tmp_path / "e2")]) == 0
    assert main(["decrypt", *args, str(tmp_path / "e2"), str(tmp_path / "d")]) == 0
    back = pixels(tmp_path / "d" / "deep.png").astype(int)
    expected = np.round(gray16 / 257.0).astype(int)
    assert np.abs(back - expected).max() <= 1 and (back == 255).mean() < 0.2, "16-bit values must be scaled, not clipped"


def test_palette_alpha_cmyk_and_exif_rotation(tmp_path, capsys):
    root = tmp_path / "photos"
    root.mkdir()
    rgb = Image.fromarray(skdata.astronaut()).resize((64, 48))
    rgb.quantize(64).save(root / "palette.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "alpha.png")
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb.save(root / "rotated.jpg", exif=exif, quality=100)
    key = keyfile(tmp_path)
    args = ["--scheme", "pixel", "--key", str(key), "--quiet"]
    assert main(["encrypt", *args, str(root), str(tmp_path / "enc")]) == 1
    err = capsys.readouterr().err
    assert "alpha.png: has an alpha channel" in err
    assert "cmyk.jpg: is a CMYK image" in err
    assert main(["decrypt", *args, str(tmp_path / "enc"), str(tmp_path / "dec")]) == 0
    assert np.array_equal(pixels(tmp_path / "dec" / "palette.png"), np.asarray(Image.open(root / "palette.png").convert("RGB")))
    upright = pixels(tmp_path / "dec" / "rotated.png")
    assert upright.shape == (64, 48, 3), "EXIF orientation must be applied (shown upright)"
    stored = np.asarray(Image.open(root / "rotated.jpg"))
    assert np.array_equal(upright, np.rot90(stored, k=-1))
    # with --mode RGB the alpha image is composited over white; CMYK stays refused
    assert main(["encrypt", *args, "--color", "RGB", str(root / "alpha.png"), str(tmp_path / "a.png")]) == 0
    assert main(["decrypt", *args, str(tmp_path / "a.png"), str(tmp_path / "a-dec.png")]) == 0
    over_white = (np.asarray(rgb, dtype=float) * 128 + 255 * 127) / 255
    assert np.abs(pixels(tmp_path / "a-dec.png") - over_white).max() <= 1.5
    with pytest.warns(FutureWarning, match="--mode is deprecated.*use --color"):  # the old name still works
        assert main(["encrypt", *args, "--mode", "RGB", str(root / "cmyk.jpg"), str(tmp_path / "c.png")]) == 1
    assert "cmyk.jpg: is a CMYK image" in capsys.readouterr().err


# -- 4. manifest integrity: one job per folder --------------------------------------------------------

def test_one_job_per_folder_and_overwrite_leaves_no_old_output(tmp_path, capsys):
    src = photos(tmp_path / "photos")
    k1, k2 = keyfile(tmp_path, "k1"), keyfile(tmp_path, "k2")
    enc = tmp_path / "enc"
    assert main(["encrypt", "--scheme", "pixel", "--key", str(k1), "--quiet", str(tmp_path / "photos"), str(enc)]) == 0
    first = {p: p.read_bytes() for p in enc.rglob("*.png")}
    capsys.readouterr()
    # a single file with another key (or scheme) into the folder: refused
    for args in (["--scheme", "pixel", "--key", str(k2)], ["--scheme", "etc", "--key", str(k1)]):
        assert main(["encrypt", *args, "--quiet", str(src["astronaut.png"]), str(enc / "extra.png")]) == 2
        assert "holds the outputs of another job" in capsys.readouterr().err
        assert main(["encrypt", *args, "--quiet", str(src["astronaut.png"]), str(enc / "sub")]) == 2
        capsys.readouterr()
    # the whole folder again with another key: refused, never "already done"
    assert main(["encrypt", "--scheme", "pixel", "--key", str(k2), "--quiet", str(tmp_path / "photos"), str(enc)]) == 2
    assert "holds the outputs of another job" in capsys.readouterr().err
    assert first == {p: p.read_bytes() for p in enc.rglob("*.png")}
    # --overwrite with the new key after a source is gone: every old output rewritten or removed
    (tmp_path / "photos" / "sub" / "camera.png").unlink()
    assert main(["encrypt", "--scheme", "pixel", "--key", str(k2), "--quiet", "--overwrite",
                 str(tmp_path / "photos"), str(enc)]) == 0
    out = capsys.readouterr().out
    assert "3 written" in out and "1 outputs of the previous job removed" in out
    fp2 = Key.load(k2).fingerprint
    assert json.loads((enc / MANIFEST_NAME).read_text())["key_fingerprint"] == fp2
    left = sorted(p.relative_to(enc).as_posix() for p in enc.rglob("*.png"))
    assert left == ["astronaut.png", "chelsea.png", "sub/coffee.png"]
    assert all(read_header(enc / p).key_fingerprint == fp2 for p in left)
    # re-running the same job skips finished files; a changed source is not silently skipped
    assert main(["encrypt", "--scheme", "pixel", "--key", str(k2), "--quiet", str(tmp_path / "photos"), str(enc)]) == 0
    assert "0 written, 3 already done" in capsys.readouterr().out
    Image.fromarray(skdata.camera()).resize((64, 64)).convert("RGB").save(src["astronaut.png"])
    assert main(["encrypt", "--scheme", "pixel", "--key", str(k2), "--quiet", str(tmp_path / "photos"), str(enc)]) == 1
    assert "astronaut.png already exists but was encrypted from a different image" in capsys.readouterr().err
