"""Re-identification: identities are found on plain images and lost under a full per-image permutation."""

from __future__ import annotations

import torch

from keyveil import Key, schemes
from keyveil.attacks import AttackError, Reidentify, View, create_attack
from keyveil.attacks.reidentify import Eigenfaces, apply_view, default_views, face_split
from keyveil.cli import main

PEOPLE, SHOTS = 8, 8


def _identities(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic people: each is a random arrangement of the *same* multiset of values (so the histogram,
    which any shuffle keeps, says nothing about who it is), photographed with a little noise."""
    g = torch.Generator().manual_seed(seed)
    values = torch.linspace(0, 255, 16 * 16)
    faces = torch.stack([values[torch.randperm(256, generator=g)] for _ in range(PEOPLE)]).view(PEOPLE, 1, 16, 16)
    faces = torch.nn.functional.avg_pool2d(faces, 3, stride=1, padding=1, count_include_pad=False)  # smooth
    shots = faces.repeat_interleave(SHOTS, 0) + 8 * torch.randn(PEOPLE * SHOTS, 1, 16, 16, generator=g)
    x = shots.clamp(0, 255).round().to(torch.uint8)
    ids = torch.arange(PEOPLE).repeat_interleave(SHOTS)
    gallery = torch.arange(len(x)) % SHOTS < SHOTS // 2
    return x[gallery], ids[gallery], x[~gallery], ids[~gallery]


def _run(scheme, **kw):
    g, gl, p, pl = _identities()
    kw.setdefault("cnn_epochs", 40)
    kw.setdefault("components", 16)
    return Reidentify(**kw).run(gallery=g, gallery_labels=gl, probes=p, probe_labels=pl, scheme=scheme)


def test_plain_identities_are_found_by_both_recognizers():
    r = _run(None, variants=("glance",))
    assert r.metrics["chance"] == 1 / PEOPLE
    assert r.metrics["glance/eigenfaces/top1"] == 1.0
    assert r.metrics["glance/cnn/top1"] >= 0.8
    assert set(r.details["not_applicable"]) == set()


def test_a_full_random_permutation_of_each_image_hides_identity():
    shuffle = schemes.create("visualmixer", window=16)  # one window = the whole 16x16 image, fresh per image
    r = _run(shuffle, variants=("glance", "adapted"))
    # 32 probes at chance 1/8: a rate of 0.35 (12 hits) is > 4 standard deviations above chance
    assert r.metrics["worst_top1"] <= 0.35, r.metrics
    assert r.details["not_applicable"] == {}


def test_keyed_permutation_is_an_isometry_for_the_adapted_attacker_and_falls_to_key_recovery():
    pixel = schemes.create("pixel", Key.from_seed(3))
    plain = _run(None, variants=("glance",), recognizers=("eigenfaces",))
    r = _run(pixel, variants=("glance", "adapted", "key-recovery"), recognizers=("eigenfaces",))
    row = {(t["variant"], t["view"]): t["top1"] for t in r.details["table"]}
    plain_row = {t["view"]: t["top1"] for t in plain.details["table"]}
    assert row[("adapted", "plain")] == plain_row["plain"] == 1.0  # distances survive a fixed permutation
    assert r.metrics["key-recovery/eigenfaces/top1"] == plain.metrics["glance/eigenfaces/top1"]
    assert r.metrics["glance/eigenfaces/top1"] < 0.5


def test_keyless_schemes_have_no_key_recovery_and_inversion_runs():
    r = _run(schemes.create("visualmixer", window=4), variants=("inverted", "key-recovery"),
             recognizers=("eigenfaces",), inversion_epochs=1)
    assert "key-recovery" in r.details["not_applicable"]
    assert r.reconstructions is not None and r.reconstructions.shape == (32, 1, 16, 16)
    assert "inverted/eigenfaces/top1" in r.metrics


def test_eigenfaces_against_an_svd_reference():
    g, gl, p, _ = _identities(1)
    rec = Eigenfaces(components=5).fit(g, gl, classes=PEOPLE)
    f = g.double().flatten(1) / 255
    centred = f - f.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    ref = (p.double().flatten(1) / 255 - f.mean(0)) @ vh[:5].T
    ours = (p.double().flatten(1) / 255 - rec.mean) @ rec.basis
    # same subspace: the projections agree up to the sign of each component
    assert torch.allclose(ours.abs(), ref.abs(), atol=1e-8)


def test_views():
    x = torch.full((1, 1, 9, 7), 0.5)
    assert torch.allclose(apply_view(x, View("blur", 2)), x)
    assert apply_view(x, View("pool", 4)).shape == (1, 1, 3, 2)
    assert [v.name for v in default_views(4)] == ["plain", "pool2", "pool4", "blur1", "blur2"]


def test_bad_inputs_are_explained():
    for kw in ({"variants": ("stare",)}, {"recognizers": ()}, {"cnn_epochs": 0}):
        try:
            Reidentify(**kw)
        except AttackError as exc:
            assert "variants" in str(exc) or ">= 1" in str(exc)
        else:
            raise AssertionError(f"{kw} was accepted")
    try:
        face_split(range(1, 6), range(5, 11))
    except AttackError as exc:
        assert "overlap" in str(exc)
    else:
        raise AssertionError("overlapping gallery and probes were accepted")
    assert create_attack("reidentify", variants=("glance",)).variants == ("glance",)


def test_cli_plain_faces_are_recognized(tmp_path, capsys):
    out = tmp_path / "reid.png"
    assert main(["attack", "reidentify", "--scheme", "plain", "--variants", "glance", "--recognizers",
                 "eigenfaces", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    line = next(s for s in text.splitlines() if s.strip().startswith("glance"))
    assert float(line.split()[2].rstrip("%")) >= 85.0  # the classic recognizer on plain probes
    assert "chance 2.5 %" in text and out.stat().st_size > 0
