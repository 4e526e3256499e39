"""DP-SGD (keyveil.engine.dp, keyveil train --dp): budget reached, clipping active, BatchNorm fixed, clear errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from keyveil import Key
from keyveil.cli import main
from keyveil.data import TensorImageDataset
from keyveil.engine import (
    PrivacyConfig,
    PrivacyConfigError,
    build_model,
    fit_private,
    load_checkpoint,
    make_dp_compatible,
    make_optimizer,
    make_private,
    model_from_checkpoint,
    seed_everything,
)
from keyveil.engine.dp import default_delta, require_opacus

opacus = pytest.importorskip("opacus")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # opacus: secure RNG off, RDP alpha range


def toy(n: int = 64, size: int = 8, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    return TensorImageDataset(x, (x.float().mean((1, 2, 3)) > 127).long(), name="toy", split="train",
                              classes=["dark", "bright"])


def smallcnn() -> nn.Module:
    seed_everything(0)
    return build_model("smallcnn", in_channels=1, num_classes=2, image_size=(8, 8))


# -- configuration ------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target_epsilon": 0.0}, "epsilon must be > 0"),
    ({"target_epsilon": -2.0}, "epsilon must be > 0"),
    ({"target_epsilon": 8.0, "noise_multiplier": 1.0}, "not both"),
    ({}, "give a privacy budget"),
    ({"target_epsilon": 8.0, "delta": 0.0}, "delta must be in (0, 1)"),
    ({"target_epsilon": 8.0, "delta": 1.0}, "delta must be in (0, 1)"),
    ({"noise_multiplier": -1.0}, "noise multiplier must be >= 0"),
    ({"target_epsilon": 8.0, "max_grad_norm": 0.0}, "max grad norm"),
    ({"target_epsilon": 8.0, "accountant": "moments"}, "accountant must be"),
])
def test_bad_privacy_config_is_explained(kwargs, message):
    with pytest.raises(PrivacyConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PrivacyConfig(**kwargs).validate()
    assert issubclass(PrivacyConfigError, ValueError)


def test_every_problem_is_listed_at_once():
    with pytest.raises(PrivacyConfigError) as info:
        PrivacyConfig(target_epsilon=-1, noise_multiplier=1, delta=2).validate()
    assert all(s in str(info.value) for s in ("epsilon must", "not both", "delta must"))


def test_default_delta_is_below_one_over_n():
    assert default_delta(128) == 1e-5 and default_delta(10**6) == pytest.approx(1e-7)


def test_missing_opacus_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)
    with pytest.raises(ImportError, match=r"pip install 'keyveil\[privacy\]'"):
        require_opacus()


# -- the model, optimizer and loader ------------------------------------------------------
def test_batchnorm_is_replaced_and_validated():
    model = smallcnn()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fixed = make_dp_compatible(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fixed.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in fixed.modules())
    assert opacus.validators.ModuleValidator.validate(fixed, strict=False) == []
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the input is left alone
    assert fixed(torch.rand(3, 1, 8, 8)).shape == (3, 2)


def test_per_sample_gradients_are_clipped():
    ds = toy()
    module = make_dp_compatible(smallcnn())
    opt = make_optimizer("sgd", module.parameters(), lr=0.1)
    clip = 1e-3
    pt = make_private(module, opt, DataLoader(ds, batch_size=16), epochs=1,
                      config=PrivacyConfig(noise_multiplier=0.0, max_grad_norm=clip))
    assert isinstance(pt.model, opacus.GradSampleModule)
    assert type(pt.loader).__name__ == "DPDataLoader" and pt.loader.sample_rate == pytest.approx(16 / 64)
    x, y = next(iter(DataLoader(ds, batch_size=16)))
    x = x.float() / 255
    # the plain gradient is far above the clipping norm
    F.cross_entropy(module(x), y).backward()
    plain_norm = torch.cat([p.grad.flatten() for p in module.parameters()]).norm()
    pt.optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(pt.model(x), y).backward()
    params = [p for p in module.parameters() if p.requires_grad]
    assert all(p.grad_sample is not None and p.grad_sample.shape[0] == 16 for p in params)
    pt.optimizer.step()
    # without noise the update is the mean of per-sample gradients clipped to `clip`
    private_norm = torch.cat([p.grad.flatten() for p in params]).norm()
    assert private_norm <= clip * (1 + 1e-4) < plain_norm / 100
    assert pt.steps() == 1


def test_fit_private_reaches_target_epsilon_and_checkpoints_it(tmp_path):
    ckpt = tmp_path / "dp.pt"
    r = fit_private(smallcnn(), toy(), test_set=toy(32, seed=1), privacy=PrivacyConfig(target_epsilon=8.0),
                    epochs=1, batch_size=16, progress=False, device="cpu", checkpoint=ckpt,
                    meta={"arch": "smallcnn", "model_kwargs": {"in_channels": 1, "num_classes": 2,
                                                               "image_size": [8, 8]}})
    eps = r.privacy["epsilon"]
    assert 7.0 < eps <= 8.0 and r.privacy["delta"] == 1e-5 and r.privacy["noise_multiplier"] > 0
    assert r.history[-1]["epsilon"] == eps and r.privacy["steps"] == 4
    state = load_checkpoint(ckpt)
    assert state["privacy"]["epsilon"] == eps and state["privacy"]["target_epsilon"] == 8.0
    rebuilt = model_from_checkpoint(state)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in rebuilt.modules())
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(rebuilt(x), r.model.eval()(x))


# -- the command line ---------------------------------------------------------------------
COMMON = ["--dataset", "mnist5k", "--limit", "64", "--test-limit", "32", "--batch-size", "16", "--epochs", "1",
          "--quiet"]


@pytest.mark.parametrize("scheme", [None, "visualmixer"])
def test_train_dp_command(tmp_path, capsys, scheme):
    flags: list[str] = []
    if scheme:
        Key.from_seed(3).save(tmp_path / "k.json")
        flags = ["--scheme", scheme, "--key", str(tmp_path / "k.json")]
    ckpt, report = tmp_path / "m.pt", tmp_path / "r.json"
    assert main(["train", *COMMON, *flags, "--dp", "--dp-epsilon", "8", "-o", str(ckpt), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "DP-SGD (target epsilon 8" in out and " eps " in out
    data = json.loads(report.read_text())
    eps = data["privacy"]["epsilon"]
    assert 0 < eps <= 8.0 and data["metrics"]["epsilon"] == eps and data["privacy"]["delta"] == 1e-5
    state = load_checkpoint(ckpt)
    assert state["privacy"]["epsilon"] == eps
    assert (state["scheme"] or {}).get("scheme") == scheme
    assert main(["evaluate", "--checkpoint", str(ckpt), "--test-limit", "32", *flags[2:],
                 "-o", str(tmp_path / "e.json")]) == 0


@pytest.mark.parametrize(("extra", "message"), [
    (["--dp-epsilon", "8"], "add --dp"),
    (["--noise-multiplier", "1", "--max-grad-norm", "2"], "--max-grad-norm, --noise-multiplier only apply"),
    (["--dp"], "--dp-epsilon EPS"),
    (["--dp", "--dp-epsilon", "0"], "--dp-epsilon must be > 0"),
    (["--dp", "--dp-epsilon", "-1"], "--dp-epsilon must be > 0"),
    (["--dp", "--dp-epsilon", "8", "--dp-delta", "1.5"], "--dp-delta must be in (0, 1)"),
    (["--dp", "--dp-epsilon", "8", "--dp-delta", "0"], "--dp-delta must be in (0, 1)"),
    (["--dp", "--dp-epsilon", "8", "--noise-multiplier", "1"], "--dp-epsilon or --noise-multiplier, not both"),
    (["--dp", "--dp-epsilon", "8", "--max-grad-norm", "0"], "--max-grad-norm must"),
    (["--dp", "--dp-epsilon", "8", "--resume", "m.pt"], "cannot --resume"),
])
def test_train_dp_errors(tmp_path, capsys, extra, message):
    assert main(["train", *COMMON, "-o", str(tmp_path / "m.pt"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_train_dp_refuses_ddp(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", *COMMON, "--dp", "--noise-multiplier", "1", "-o", str(tmp_path / "m.pt")]) == 2
    assert "torchrun/DDP" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18"])
def test_residual_blocks_that_add_in_place_train_privately(arch):
    """torchvision's ``out += identity`` breaks Opacus' hooks; the fixed model adds out of place, same outputs."""
    import copy

    from torchvision.models import mobilenetv3, resnet

    from keyveil.engine import build_model
    from keyveil.engine.dp import make_dp_compatible

    torch.manual_seed(0)
    fixed = make_dp_compatible(build_model(arch, in_channels=1, num_classes=10, image_size=(32, 32))).eval()
    originals = copy.deepcopy(fixed)
    swapped = 0
    for m in originals.modules():  # back to torchvision's own in-place classes
        for base in (resnet.BasicBlock, resnet.Bottleneck, mobilenetv3.InvertedResidual):
            if isinstance(m, base) and type(m) is not base:
                m.__class__, swapped = base, swapped + 1
    assert swapped > 0
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), originals(x), rtol=0, atol=0)
    import opacus

    model = opacus.GradSampleModule(fixed.train())
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2])).backward()
    assert all(p.grad_sample is not None for p in model.parameters() if p.requires_grad)
