"""`keyveil audit` on users' own schemes (tests/audit_toys.py), on a tiny subset."""

from __future__ import annotations

import json

import pytest

import keyveil.audit as audit_mod
from keyveil.attacks.reidentify import face_split
from keyveil.audit import AuditSettings, audit
from keyveil.cli import main

TINY = AuditSettings(limit=300, test_limit=200, epochs=1, cnn_epochs=2, adapted_draws=1, inversion_epochs=1,
                     known_pairs=4, membership_records=100, recognizers=("eigenfaces",))


@pytest.fixture(scope="module")
def faces():
    g, gl, p, pl = face_split()
    return g[gl < 6], gl[gl < 6], p[pl < 6], pl[pl < 6]


def rows(card):
    return {r["attack"]: r for r in card["attacks"]}


@pytest.fixture(scope="module")
def xor_card(tmp_path_factory, faces):
    """`keyveil audit --scheme tests/audit_toys.py:xor --quick` with the quick budget shrunk to TINY."""
    out = tmp_path_factory.mktemp("audit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(audit_mod, "QUICK", TINY)
        mp.setattr(audit_mod, "face_split", lambda: faces)
        code = main(["audit", "--scheme", "tests/audit_toys.py:xor", "--quick", "--dataset", "mnist5k",
                     "-o", str(out), "--quiet"])
    assert code == 0
    return out, json.loads((out / "xor" / "audit.json").read_text())


def test_every_attack_is_measured_or_explained(xor_card):
    out, card = xor_card
    assert card["kind"] == {"keyed": True, "invertible": True, "per_image": False}
    for r in card["attacks"]:
        if r["applies"]:
            assert r["trials"] > 0 and r["verdict"] and "n=" in r["figure"], r
        else:
            assert r["reason"], r
    kp = rows(card)["known-plaintext"]
    assert kp["applies"] and kp["model"] == "XOR / additive pad" and kp["verdict"] == "key recovered"
    assert rows(card)["re-identification (key-recovery)"]["applies"] is False  # not a rearrangement: no key found
    md = (out / "xor" / "audit.md").read_text()
    assert "95 % interval" in md and "not applicable:" in md and "drop of" in md
    assert (out / "xor" / "frontier.png").stat().st_size > 10_000


def test_a_blur_is_reidentified_at_a_glance_and_has_no_key(tmp_path, faces):
    card = audit("tests/audit_toys.py:blur", settings=TINY, faces=faces, dataset="mnist5k", out_dir=tmp_path)
    r = rows(card)
    assert r["re-identification (glance)"]["verdict"] == "re-identified"
    assert not r["known-plaintext"]["applies"] and "keyless" in r["known-plaintext"]["reason"]
    assert "falls to" in (tmp_path / "blur" / "audit.md").read_text()


def test_cli_audit_names_a_missing_factory(tmp_path, capsys):
    assert main(["audit", "--scheme", "tests/audit_toys.py:nope", "--quick", "-o", str(tmp_path)]) == 2
    assert "has no 'nope'" in capsys.readouterr().err
