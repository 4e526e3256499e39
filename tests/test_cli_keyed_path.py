"""The command-line path from ``keyveil train`` to keyed inference, as a user runs it.

``train`` → ``convert`` → ``evaluate --key`` gives exactly the plain model's
predictions; keyed files are treated like keys (no key material unless asked,
0600 when there is, never overwritten silently); ``--resume`` and ``--key``
mistakes end in one clear line and exit status 2.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
from pathlib import Path

import pytest
import torch

from keyveil import Key, schemes
from keyveil.attacks import AttackError, KeyFromModel
from keyveil.cli import main
from keyveil.models.checkpoint import read_checkpoint

DATA = ["--dataset", "mnist5k", "--test-limit", "200"]


def _train(tmp, name, *extra, limit="1000"):
    out = tmp / name
    assert main(["train", *DATA, "--limit", limit, "--epochs", "2", "--batch-size", "50", "--quiet", "-o", str(out),
                 *extra]) == 0
    return out


def _evaluate(tmp, name, *flags):
    out = tmp / f"{name}.json"
    assert main(["evaluate", "--test-limit", "200", *flags, "-o", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny training run, its key and its default keyed conversion (shared: training is the slow part)."""
    tmp = tmp_path_factory.mktemp("keyed-path")
    key = Key.from_seed(19)
    key.save(tmp / "key.json")
    plain = _train(tmp, "plain.pt")
    assert main(["convert", "--checkpoint", str(plain), "--scheme", "pixel", "--key", str(tmp / "key.json"),
                 "-o", str(tmp / "keyed.pt")]) == 0
    return tmp, key


def test_train_convert_evaluate_gives_the_plain_predictions(run, capsys):
    tmp, key = run
    plain = _evaluate(tmp, "plain", "--checkpoint", str(tmp / "plain.pt"), "--plain")
    keyed = _evaluate(tmp, "keyed", "--checkpoint", str(tmp / "keyed.pt"), "--scheme", "pixel", "--key",
                      str(tmp / "key.json"))
    assert plain["n"] == keyed["n"] == 200 and plain["accuracy"] >= 0.7
    assert keyed["accuracy"] == plain["accuracy"] and keyed["predictions"] == plain["predictions"]
    assert keyed["dataset"] == "mnist5k"  # from the keyed checkpoint's metadata
    assert keyed["keyed"]["key_fingerprint"] == key.fingerprint == keyed["scheme"]["key_fingerprint"]
    out = capsys.readouterr().out
    assert f"accuracy {plain['accuracy']:.4f}" in out and key.fingerprint in out
    secret = json.loads((tmp / "key.json").read_text())["secret"]
    assert secret not in (tmp / "keyed.json").read_text() and secret not in out
    # --keyed on the plain classifier converts it on the fly: the same predictions, never silently ignored
    on_the_fly = _evaluate(tmp, "fly", "--checkpoint", str(tmp / "plain.pt"), "--keyed", "features", "--key",
                           str(tmp / "key.json"))
    assert on_the_fly["predictions"] == plain["predictions"] and on_the_fly["keyed"]["mode"] == "features"
    assert on_the_fly["scheme"]["scheme"] == "pixel"


def test_wrong_key_is_near_chance_or_refused(run, capsys):
    tmp, key = run
    plain = json.loads((tmp / "plain.json").read_text()) if (tmp / "plain.json").exists() else _evaluate(
        tmp, "plain", "--checkpoint", str(tmp / "plain.pt"), "--plain")
    wrong = _evaluate(tmp, "wrong", "--checkpoint", str(tmp / "keyed.pt"), "--key", str(tmp / "key.json"),
                      "--wrong-key")
    assert wrong["accuracy"] <= 0.3 < plain["accuracy"]
    assert wrong["scheme"]["wrong_key"] and wrong["scheme"]["key_fingerprint"] != key.fingerprint
    # a checkpoint without key material re-keys with the key it was made with, and only with it
    other = Key.from_seed(20)
    other.save(tmp / "other.json")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp / "keyed.pt"), "--key", str(tmp / "other.json"),
                 "--test-limit", "20", "-o", str(tmp / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "wrong key" in err and key.fingerprint in err and other.fingerprint in err
    # ... and none at all is a clear error too
    assert main(["evaluate", "--checkpoint", str(tmp / "keyed.pt"), "--test-limit", "20", "-o",
                 str(tmp / "x.json")]) == 2
    assert "--key" in capsys.readouterr().err


def test_keyed_file_holds_no_key_material_unless_asked(run, capsys):
    tmp, key = run
    pixel = schemes.create("pixel", key)
    default = read_checkpoint(tmp / "keyed.pt")
    assert not default["contains_key_material"] and default["key_fingerprint"] == key.fingerprint
    assert not any(k.split(".")[0].startswith("keyveil_") or k.endswith((".index", ".taps"))
                   for k in default["state_dict"])
    with pytest.raises(AttackError, match="found no key material"):
        KeyFromModel().run(model=tmp / "keyed.pt")
    leaky = tmp / "leaky.pt"
    assert main(["convert", "--checkpoint", str(tmp / "plain.pt"), "--key", str(tmp / "key.json"),
                 "--with-key-material", "-o", str(leaky)]) == 0
    assert "contains key material" in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(leaky).st_mode) == 0o600
    assert KeyFromModel().run(model=leaky, reference=pixel).metrics["fraction_recovered"] == 1.0
    # a file with key material runs without the key file; the images still need the key
    keyed = _evaluate(tmp, "leaky", "--checkpoint", str(leaky), "--key", str(tmp / "key.json"))
    plain = _evaluate(tmp, "plain", "--checkpoint", str(tmp / "plain.pt"), "--plain")
    assert keyed["predictions"] == plain["predictions"] and keyed["keyed"]["contains_key_material"]


def test_convert_never_overwrites_without_asking(run, capsys):
    tmp, key = run
    target = tmp / "keyed.pt"
    before, mtime = target.read_bytes(), target.stat().st_mtime_ns
    for extra in ([], ["--with-key-material"]):
        assert main(["convert", "--checkpoint", str(tmp / "plain.pt"), "--key", str(tmp / "key.json"), *extra,
                     "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == before and target.stat().st_mtime_ns == mtime
    copy = tmp / "again.pt"
    copy.write_bytes(before)
    assert main(["convert", "--checkpoint", str(tmp / "plain.pt"), "--key", str(tmp / "key.json"), "--keyed",
                 "input", "--overwrite", "-o", str(copy)]) == 0
    assert read_checkpoint(copy)["config"]["mode"] == "input"


def test_deprecated_flags_still_work_and_warn(run):
    tmp, _ = run
    with pytest.warns(FutureWarning, match="--arch is deprecated"):
        assert main(["convert", "--checkpoint", str(tmp / "plain.pt"), "--arch", "smallcnn", "--key",
                     str(tmp / "key.json"), "-o", str(tmp / "arch.pt")]) == 0
    with pytest.warns(FutureWarning, match="--without-key-material is deprecated"):
        assert main(["convert", "--checkpoint", str(tmp / "plain.pt"), "--without-key-material", "--key",
                     str(tmp / "key.json"), "-o", str(tmp / "without.pt")]) == 0
    assert not read_checkpoint(tmp / "without.pt")["contains_key_material"]


def test_resume_refuses_another_dataset_model_or_scheme(run, capsys):
    tmp, _ = run
    ckpt = tmp / "resume.pt"
    ckpt.write_bytes((tmp / "plain.pt").read_bytes())
    base = ["train", "--limit", "300", "--test-limit", "200", "--epochs", "2", "--quiet", "--resume", str(ckpt)]
    cases = {
        "dataset": (["--dataset", "att-faces"], "dataset is 'mnist5k' there, 'att-faces' here"),
        "model": (["--dataset", "mnist5k", "--model", "resnet18"], "model is 'smallcnn' there, 'resnet18' here"),
        "scheme": (["--dataset", "mnist5k", "--scheme", "pixel", "--key", str(tmp / "key.json")],
                   "scheme is none (plain images) there, 'pixel' here"),
    }
    before = ckpt.read_bytes()
    for what, (flags, message) in cases.items():
        assert main([*base, *flags]) == 2, what
        err = capsys.readouterr().err
        assert message in err and "cannot resume" in err, (what, err)
    assert ckpt.read_bytes() == before


def test_a_folder_as_key_is_one_clear_line(run, capsys):
    tmp, _ = run
    folder = tmp / "keys"
    folder.mkdir()
    for argv in (["convert", "--checkpoint", str(tmp / "plain.pt"), "--key", str(folder), "-o", str(tmp / "f.pt")],
                 ["evaluate", "--checkpoint", str(tmp / "keyed.pt"), "--key", str(folder)],
                 ["train", *DATA, "--scheme", "pixel", "--key", str(folder), "-o", str(tmp / "t.pt")]):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(folder) in err and "folder" in err, err
    assert not (tmp / "f.pt").exists()


def test_evaluate_keyed_refuses_what_it_cannot_do(run, capsys):
    tmp, _ = run
    enc = _train(tmp, "enc.pt", "--scheme", "pixel", "--key", str(tmp / "key.json"), limit="64")
    for argv, message in [
        (["evaluate", "--checkpoint", str(enc), "--keyed", "features", "--key", str(tmp / "key.json")],
         "--keyed converts a model trained on plain images"),
        (["evaluate", "--checkpoint", str(tmp / "plain.pt"), "--keyed", "features"], "pass --key"),
        (["evaluate", "--checkpoint", str(tmp / "keyed.pt"), "--keyed", "input", "--key", str(tmp / "key.json")],
         "already keyed"),
        (["convert", "--checkpoint", str(enc), "--key", str(tmp / "key.json"), "-o", str(tmp / "e.pt")],
         "already takes encrypted images"),
        (["convert", "--checkpoint", str(tmp / "keyed.pt"), "--key", str(tmp / "key.json"), "-o", str(tmp / "e.pt")],
         "already a keyed model"),
        (["convert", "--checkpoint", str(tmp), "--key", str(tmp / "key.json"), "-o", str(tmp / "e.pt")],
         "is a folder"),
        (["evaluate", "--checkpoint", str(tmp / "keyed.pt"), "--key", str(tmp / "key.json"), "--dataset",
          "att-faces"], "takes 1x28x28 images; att-faces/test has 1x112x92"),
        (["evaluate", "--checkpoint", str(tmp / "plain.pt"), "--dataset", "att-faces"], "takes 1x28x28 images"),
    ]:
        assert main([*argv, "--test-limit", "20"] if argv[0] == "evaluate" else argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "e.pt").exists()


def test_convert_a_keyveil_trained_resnet18_with_a_one_channel_stem(tmp_path):
    Key.from_seed(21).save(tmp_path / "key.json")
    plain = tmp_path / "r18.pt"
    assert main(["train", "--dataset", "mnist5k", "--limit", "64", "--test-limit", "32", "--epochs", "1",
                 "--batch-size", "32", "--model", "resnet18", "--quiet", "-o", str(plain)]) == 0
    assert main(["convert", "--checkpoint", str(plain), "--key", str(tmp_path / "key.json"), "-o",
                 str(tmp_path / "k.pt")]) == 0
    payload = read_checkpoint(tmp_path / "k.pt")
    assert payload["config"]["arch"] == "resnet18" and payload["config"]["input_size"] == [1, 28, 28]
    reports = {}
    for name, flags in {"plain": ["--checkpoint", str(plain), "--plain"],
                        "keyed": ["--checkpoint", str(tmp_path / "k.pt"), "--key", str(tmp_path / "key.json")]}.items():
        assert main(["evaluate", "--test-limit", "32", *flags, "-o", str(tmp_path / f"{name}.json")]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["keyed"]["predictions"] == reports["plain"]["predictions"]
    assert torch.tensor(reports["keyed"]["confusion"]).sum() == reports["keyed"]["n"] == 30  # 3 per class


def test_the_readme_sequence_runs_as_written(tmp_path, monkeypatch, capsys):
    """README's train → convert → evaluate block, on mnist5k with fewer images (same flags otherwise)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S) if "keyveil convert --checkpoint" in b]
    assert len(blocks) == 1, "README should show the train -> convert -> evaluate sequence once"
    monkeypatch.chdir(tmp_path)
    printed = []
    for line in blocks[0].strip().splitlines():
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "keyveil", line
        argv = [{"fashion-mnist": "mnist5k", "2000": "600", "500": "100"}.get(a, a) for a in argv[1:]]
        assert main(argv) == 0, line
        printed += [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("accuracy ")]
    assert len(printed) == 2 and printed[0] == printed[1]
    plain, keyed = (json.loads((tmp_path / f"{n}.eval.json").read_text()) for n in ("plain", "keyed"))
    assert plain["predictions"] == keyed["predictions"] and plain["n"] == 100
    assert not read_checkpoint(tmp_path / "keyed.pt")["contains_key_material"]


def test_convert_a_keyveil_trained_vit_for_the_vit_scheme(tmp_path):
    key = Key.from_seed(22)
    key.save(tmp_path / "key.json")
    plain = tmp_path / "vit.pt"
    assert main(["train", "--dataset", "mnist5k", "--limit", "60", "--test-limit", "30", "--epochs", "1",
                 "--model", "vit_mini", "--quiet", "-o", str(plain)]) == 0
    assert main(["convert", "--checkpoint", str(plain), "--scheme", "vit", "--key", str(tmp_path / "key.json"),
                 "-o", str(tmp_path / "k.pt")]) == 0
    assert read_checkpoint(tmp_path / "k.pt")["config"]["input_size"] == [1, 28, 28]  # a 1-channel patch stem
    reports = {}
    for name, flags in {"plain": ["--checkpoint", str(plain), "--plain"],
                        "keyed": ["--checkpoint", str(tmp_path / "k.pt"), "--key", str(tmp_path / "key.json")],
                        "fly": ["--checkpoint", str(plain), "--keyed", "features", "--scheme", "vit", "--key",
                                str(tmp_path / "key.json")]}.items():
        assert main(["evaluate", "--test-limit", "30", *flags, "-o", str(tmp_path / f"{name}.json")]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["keyed"]["predictions"] == reports["plain"]["predictions"] == reports["fly"]["predictions"]
    assert reports["keyed"]["scheme"]["scheme"] == "vit"


def test_load_keyed_rebuilds_a_keyveil_architecture_from_the_file(run):
    """The Python API reads what the CLI wrote: no model argument, the key re-attaches."""
    from keyveil.data import create_dataset
    from keyveil.engine import model_from_checkpoint
    from keyveil.models import load_keyed

    tmp, key = run
    km = load_keyed(tmp / "keyed.pt", key=key)
    plain = model_from_checkpoint(tmp / "plain.pt")
    x = torch.stack([create_dataset("mnist5k", "test")[i][0] for i in range(8)]).float() / 255
    with torch.no_grad():
        assert (km(schemes.create("pixel", key).encrypt(x)) - plain(x)).abs().max() < 1e-4
