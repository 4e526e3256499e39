"""Knowledge distillation: the loss against an independent computation, top-k, and the tiny-subset experiment."""

import json

import pytest
import torch

from keyveil.cli import main
from keyveil.data import TensorImageDataset
from keyveil.experiments.distill import distillation_loss, topk_accuracy


def test_distillation_loss_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0])
    T, a = 3.0, 0.7
    p, q = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(5), y].mean()
    assert torch.allclose(distillation_loss(s, t, y, temperature=T, alpha=a), a * T * T * kl + (1 - a) * ce, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, t, y, temperature=0)


def test_topk_accuracy_counts_labels_among_the_k_best():
    x = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    ds = TensorImageDataset(x, [0, 1, 2], name="toy", split="test", classes=["a", "b", "c", "d"])

    class Fixed(torch.nn.Module):
        def forward(self, x):  # ranks classes d > c > b > a for every image
            return torch.tensor([[0.0, 1.0, 2.0, 3.0]]).expand(x.shape[0], 4)

    assert topk_accuracy(Fixed(), ds, (1, 2, 3)) == {1: 0.0, 2: 1 / 3, 3: 2 / 3}


def test_distill_experiment_on_a_tiny_subset(tmp_path, capsys, one_thread):
    # 32 steps each: the smallest run whose teachers (~75 %) and students (~30 %) beat chance (10 %)
    assert main(["experiment", "distill", "--dataset", "mnist5k", "--limit", "256", "--test-limit", "100",
                 "--teacher-epochs", "2", "--student-epochs", "2", "--batch-size", "16", "-o", str(tmp_path),
                 "--quiet"]) == 0
    data = json.loads((tmp_path / "distill.json").read_text())
    roles = [(r["role"], r["teacher_data"], r["student_data"]) for r in data["rows"]]
    assert roles[:2] == [("teacher", "plain", None), ("teacher", "visualmixer-seed", None)]
    assert len(roles) == 8 and ("student", "visualmixer-seed", "plain") in roles
    for r in data["rows"]:
        assert 0 <= r["topk"]["1"] <= r["topk"]["3"] <= r["topk"]["5"] <= 1
    assert all(r["topk"]["1"] > 0.5 for r in data["rows"] if r["role"] == "teacher")
    students = [r["topk"]["1"] for r in data["rows"] if r["role"] == "student"]
    assert sum(students) / len(students) > 0.2  # chance: 0.1
    assert "top-5" in (tmp_path / "distill.md").read_text() and "CPU" in capsys.readouterr().out
