"""The one training loop (keyveil.engine.loop): its hooks and its schedule (torch's own schedulers)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from keyveil.engine import build_model, seed_everything
from keyveil.engine.loop import (
    _restore_schedule,
    classification_loss,
    fit_warmup,
    train_epoch,
    train_loop,
    warmup_cosine,
)


def old_cosine_factor(step: int, total: int, warm: int) -> float:
    """The LambdaLR formula keyveil used before SequentialLR (fit: warm = fit_warmup(total))."""
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def lrs(total: int, warm: int, lr: float = 0.3) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched, out = warmup_cosine(opt, total, warm), []
    for _ in range(total + 1):  # the value after the last step is what fit's history reports
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total", [1, 2, 7, 39, 40, 50, 333, 2500])
def test_warmup_cosine_is_the_old_formula(total):
    warm = fit_warmup(total)
    expected = [0.3 * old_cosine_factor(s, total, warm) for s in range(total + 1)]
    assert lrs(total, warm) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("total", "warm"), [(10, 0), (1, 0), (30, 3), (5, 5)])
def test_warmup_cosine_with_detections_warmup(total, warm):
    expected = [0.3 * old_cosine_factor(s, total, warm) for s in range(total + 1)]
    assert lrs(total, warm) == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_refuses_negative_counts():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        warmup_cosine(opt, 10, -1)


def test_a_lambdalr_state_from_an_older_checkpoint_is_replayed():
    total, done = 60, 17
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    legacy = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: old_cosine_factor(s, total, fit_warmup(total)))
    for _ in range(done):
        opt.step()
        legacy.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    sched = warmup_cosine(opt2, total, fit_warmup(total))
    opt2.load_state_dict(opt.state_dict())
    _restore_schedule(sched, legacy.state_dict())
    for _ in range(5):
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step(), legacy.step(), opt2.step(), sched.step()


def toy_batches(n: int = 48, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = (x.float().mean((1, 2, 3)) > 127).long()
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def smallcnn() -> torch.nn.Module:
    seed_everything(0)
    return build_model("smallcnn", in_channels=1, num_classes=2, image_size=(8, 8))


def test_train_epoch_equals_a_hand_written_loop():
    batches = toy_batches()
    a, b = smallcnn(), smallcnn()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    stats = train_epoch(a, batches, opt_a, device="cpu")
    b.train()
    loss_sum, correct = 0.0, 0
    for images, labels in batches:
        logits = b(images.float() / 255)
        loss = F.cross_entropy(logits, labels)
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()
        loss_sum += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
    assert stats["n"] == 48 and stats["steps"] == 3 and stats["correct"] == correct
    assert stats["loss_sum"] == pytest.approx(loss_sum)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_hooks_loss_step_and_per_batch_metrics():
    seen, steps = [], []

    def loss_fn(model, batch):  # a custom loss reporting its own count
        images, labels = batch
        logits = model(images.float() / 255)
        return F.cross_entropy(logits, labels, label_smoothing=0.1), {"n": len(labels), "ones": int(labels.sum())}

    def step(optimizer, loss):
        steps.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def on_batch(i, totals):
        seen.append((i, totals["n"]))

    model = smallcnn()
    opt = torch.optim.Adam(model.parameters())
    epochs_seen = []
    hist = train_loop(model, opt, lambda epoch: toy_batches(seed=epoch), epochs=3, start_epoch=1, loss_fn=loss_fn,
                      step=step, on_batch=on_batch, on_epoch=lambda e, s: epochs_seen.append(e))
    assert [h["epoch"] for h in hist] == [2, 3] and epochs_seen == [1, 2]
    assert len(steps) == 6 and seen[:3] == [(0, 16), (1, 32), (2, 48)]
    assert hist[0]["ones"] == sum(int(y.sum()) for _, y in toy_batches(seed=1))
    assert hist[0]["loss_sum"] == pytest.approx(16 * sum(steps[:3]))


def test_an_empty_batch_is_a_step_that_counts_nothing():
    model = smallcnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    empty = (torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    stats = train_epoch(model, [empty, *toy_batches(16)], opt, loss_fn=classification_loss("cpu"))
    assert stats["steps"] == 2 and stats["n"] == 16
