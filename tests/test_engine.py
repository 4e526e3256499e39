"""keyveil.engine: models, optimizers, train/evaluate loops, checkpoints and the train/evaluate CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from keyveil import Key
from keyveil.cli import main
from keyveil.data import TensorImageDataset
from keyveil.engine import (
    CheckpointError,
    build_model,
    evaluate,
    fit,
    load_checkpoint,
    make_optimizer,
    model_from_checkpoint,
    seed_everything,
    small_cnn,
)


def bright_dark(n: int = 96, size: int = 8, seed: int = 0) -> TensorImageDataset:
    """A learnable toy task: is the image's mean brightness above 127?"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    shift = torch.where(torch.arange(n) % 2 == 0, -60, 60).view(-1, 1, 1, 1)
    x = (x.int() + shift).clamp(0, 255).to(torch.uint8)
    y = (x.float().mean((1, 2, 3)) > 127).long()
    return TensorImageDataset(x, y, name="toy", split="train", classes=["dark", "bright"])


# -- models -------------------------------------------------------------------------
ALLOWED = (nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear)


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (112, 92)])
def test_small_cnn_uses_only_keyable_modules(size):
    m = small_cnn(in_channels=1, num_classes=7, image_size=size)
    assert all(isinstance(mod, ALLOWED) for mod in m.modules())
    assert m(torch.rand(3, 1, *size)).shape == (3, 7)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn", "mobilenet_v3_small"])
def test_torchvision_models_adapt_to_small_grayscale_inputs(arch):
    m = build_model(arch, in_channels=1, num_classes=5, image_size=(28, 28)).eval()
    first = next(mod for mod in m.modules() if isinstance(mod, nn.Conv2d))
    assert first.in_channels == 1 and first.stride == (1, 1)
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 5)
    if arch == "resnet18":
        assert isinstance(m.maxpool, nn.Identity) and first.kernel_size == (3, 3)
    import torchvision

    big = build_model(arch, in_channels=3, num_classes=5, image_size=(224, 224))
    orig = torchvision.models.get_model(arch, weights=None)
    stem = [next(mod for mod in net.modules() if isinstance(mod, nn.Conv2d)) for net in (big, orig)]
    assert stem[0].stride == stem[1].stride and stem[0].kernel_size == stem[1].kernel_size


def test_unknown_model_name_suggests_one():
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        build_model("resnet19", in_channels=1, num_classes=2, image_size=(28, 28))


# -- optimizers ------------------------------------------------------------------------
def test_make_optimizer_names_and_defaults():
    params = list(nn.Linear(3, 2).parameters())
    sgd = make_optimizer("sgd", params, lr=0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["lr"] == 0.1
    assert isinstance(make_optimizer("adam", params), torch.optim.Adam)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lion", params)
    with pytest.raises(ValueError, match="positive"):
        make_optimizer("adam", params, lr=0)


def test_stadam_is_keyveils_stadam_or_says_it_is_missing():
    try:
        from keyveil.optim import STAdam
    except ImportError:  # keyveil.optim is being written in parallel
        with pytest.raises(ValueError, match="stadam optimizer is not available"):
            make_optimizer("stadam", nn.Linear(3, 2).parameters())
    else:
        opt = make_optimizer("stadam", nn.Linear(3, 2).parameters(), lr=0.01)
        assert isinstance(opt, STAdam) and opt.defaults["lr"] == 0.01


# -- evaluate ---------------------------------------------------------------------------
def test_evaluate_matches_a_loop_computation():
    ds = bright_dark(n=50)
    torch.manual_seed(0)
    model = small_cnn(in_channels=1, num_classes=2, image_size=(8, 8)).eval()
    r = evaluate(model, ds, batch_size=7)
    confusion, loss, correct = [[0, 0], [0, 0]], 0.0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            logits = model(x[None].float() / 255)[0]
            pred = int(logits.argmax())
            confusion[y][pred] += 1
            correct += pred == y
            loss += float(torch.logsumexp(logits, 0) - logits[y])
    assert r.confusion == confusion and r.correct == correct and r.n == 50
    assert r.accuracy == correct / 50 and abs(r.loss - loss / 50) < 1e-5


# -- fit, checkpoints, resume ---------------------------------------------------------------
def test_fit_learns_and_writes_checkpoint_without_the_secret(tmp_path):
    ds = bright_dark()
    key = Key.from_seed(11)
    seed_everything(0)
    model = build_model("smallcnn", in_channels=1, num_classes=2, image_size=(8, 8))
    meta = {"arch": "smallcnn", "model_kwargs": {"in_channels": 1, "num_classes": 2, "image_size": [8, 8]},
            "dataset": ds.info.to_dict(), "scheme": {"scheme": "pixel", "key_fingerprint": key.fingerprint}}
    r = fit(model, ds, test_set=ds, epochs=4, batch_size=16, lr=3e-3, progress=False, device="cpu",
            checkpoint=tmp_path / "m.pt", meta=meta)
    assert r.epoch == 4 and len(r.history) == 4
    assert r.history[-1]["test_accuracy"] >= 0.9
    raw = (tmp_path / "m.pt").read_bytes()
    assert key._secret not in raw and key.fingerprint.encode() in raw
    state = load_checkpoint(tmp_path / "m.pt")
    assert state["epoch"] == 4 and state["scheme"]["key_fingerprint"] == key.fingerprint
    assert state["dataset"]["num_classes"] == 2 and state["hparams"]["batch_size"] == 16
    again = model_from_checkpoint(state)
    assert evaluate(again, ds).correct == evaluate(r.model, ds).correct


def test_resume_continues_exactly_where_training_stopped(tmp_path):
    ds = bright_dark()
    kw = dict(batch_size=16, lr=3e-3, schedule="constant", progress=False, device="cpu", seed=5)

    def fresh():
        seed_everything(1)
        return build_model("smallcnn", in_channels=1, num_classes=2, image_size=(8, 8))

    straight = fit(fresh(), ds, epochs=3, **kw).model
    fit(fresh(), ds, epochs=2, checkpoint=tmp_path / "a.pt", **kw)
    resumed = fit(fresh(), ds, epochs=3, resume=tmp_path / "a.pt", checkpoint=tmp_path / "b.pt", **kw)
    assert resumed.epoch == 3 and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="cannot resume"):
        fit(fresh(), ds, epochs=4, resume=tmp_path / "a.pt", meta={"arch": "resnet18"}, **kw)


def test_load_checkpoint_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a keyveil checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "y.pt")


# -- CLI ------------------------------------------------------------------------------------
def test_train_resume_and_evaluate_commands_on_mnist5k(tmp_path, capsys):
    key = Key.from_seed(7)
    key.save(tmp_path / "k.json")
    ckpt = tmp_path / "plain.pt"
    common = ["--dataset", "mnist5k", "--limit", "1000", "--test-limit", "200", "--batch-size", "50", "--quiet"]
    assert main(["train", *common, "--model", "smallcnn", "--epochs", "1", "-o", str(ckpt)]) == 0
    assert "epoch 1:" in capsys.readouterr().out
    assert main(["train", *common, "--epochs", "2", "--resume", str(ckpt)]) == 0
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert state["scheme"] is None and state["dataset"]["length"] == 1000 and state["arch"] == "smallcnn"
    reports = {}
    for name, flags in {"plain": [], "pixel": ["--scheme", "pixel", "--key", str(tmp_path / "k.json")]}.items():
        out_json = tmp_path / f"{name}.json"
        assert main(["evaluate", "--checkpoint", str(ckpt), "--test-limit", "200", *flags, "-o", str(out_json)]) == 0
        reports[name] = json.loads(out_json.read_text())
    plain, pixel = reports["plain"], reports["pixel"]
    assert plain["n"] == 200 and sum(map(sum, plain["confusion"])) == 200
    assert plain["correct"] == sum(plain["confusion"][i][i] for i in range(10))
    assert plain["scheme"] is None and pixel["scheme"]["key_fingerprint"] == key.fingerprint
    # a plain model works on plain digits and fails on pixel-shuffled ones
    assert plain["accuracy"] >= 0.7 and pixel["accuracy"] <= plain["accuracy"] - 0.3


def test_checkpoint_of_encrypted_training_asks_for_its_key(tmp_path, capsys):
    key = Key.from_seed(8)
    key.save(tmp_path / "k.json")
    ckpt = tmp_path / "enc.pt"
    assert main(["train", "--dataset", "mnist5k", "--limit", "100", "--test-limit", "50", "--scheme", "pixel",
                 "--key", str(tmp_path / "k.json"), "--epochs", "1", "-o", str(ckpt), "--quiet"]) == 0
    assert f"key {key.fingerprint}" in capsys.readouterr().out
    state = load_checkpoint(ckpt)
    assert state["scheme"]["scheme"] == "pixel" and state["scheme"]["key_fingerprint"] == key.fingerprint
    assert key._secret not in ckpt.read_bytes()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--test-limit", "50"]) == 2
    assert "pass --key" in capsys.readouterr().err
    fps = {}
    for flag in (["--key", str(tmp_path / "k.json")], ["--wrong-key"]):
        out_json = tmp_path / "r.json"
        assert main(["evaluate", "--checkpoint", str(ckpt), "--test-limit", "50", *flag, "-o", str(out_json)]) == 0
        fps[flag[0]] = json.loads(out_json.read_text())["scheme"]["key_fingerprint"]
    assert fps["--key"] == key.fingerprint and fps["--wrong-key"] not in (None, key.fingerprint)


def test_train_command_explains_missing_key(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist5k", "--scheme", "pixel", "-o", str(tmp_path / "m.pt")]) == 2
    assert "needs a key" in capsys.readouterr().err
