"""The baselines experiment (VisualMixer Tables II-III's shape) on a tiny subset, and its errors."""

import json

import pytest

from keyveil.cli import main
from keyveil.experiments.baselines import measure_throughput, run_baselines


def test_baselines_experiment_on_a_tiny_subset(tmp_path, capsys):
    assert main(["experiment", "baselines", "--dataset", "mnist5k", "--models", "smallcnn", "--methods", "plain",
                 "visualmixer-seed", "dp-sgd", "noise", "instahide", "--limit", "128", "--test-limit", "64",
                 "--epochs", "1", "--throughput-rounds", "2", "--throughput-steps", "1", "-o", str(tmp_path), "--quiet"]) == 0
    data = json.loads((tmp_path / "baselines.json").read_text())
    methods = [r["method"] for r in data["rows"]]
    assert methods == ["plain", "visualmixer-seed", "dp-sgd", "noise", "instahide"]
    for r in data["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["images_per_cpu_s"] > 0
    dp = data["rows"][2]
    assert 0 < dp["epsilon"] <= 8.0 + 1e-6  # Opacus' accountant, the target the run stated
    assert data["rows"][0]["throughput_vs_plain"] == 0
    md = (tmp_path / "baselines.md").read_text()
    assert "Training throughput" in md and "ε spent" in md and "CPU" in capsys.readouterr().out


def test_baselines_rejects_unknown_methods_and_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        run_baselines(methods=["plain", "hope"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="epochs"):
        run_baselines(epochs=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="epsilon"):
        run_baselines(epsilon=0, out_dir=tmp_path)


def test_throughput_is_measured_interleaved_against_plain():
    """The meter's bookkeeping, on counted steps (its CPU-time accuracy: benchmarks/bench_attack_cost.py)."""
    calls = {"plain": 0, "other": 0}

    def counted(name, images):
        def step():
            calls[name] += 1
            return images
        return step

    out = measure_throughput({"plain": counted("plain", 10), "other": counted("other", 20)}, rounds=3, steps=2)
    assert calls == {"plain": 1 + 3 * 2, "other": 1 + 3 * 2}  # one warm-up step each, then rounds x steps
    assert out["plain"]["vs_plain"] == 0
    assert set(out["other"]) == {"images_per_cpu_s", "vs_plain", "rounds", "steps"}
    assert out["other"]["rounds"] == 3 and out["other"]["steps"] == 2


def test_soft_cross_entropy_is_torchs_cross_entropy_with_probabilities():
    import torch
    import torch.nn.functional as F

    from keyveil.experiments.baselines import soft_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits, soft = torch.randn(5, 4, generator=g), torch.rand(5, 4, generator=g)
    soft = soft / soft.sum(1, keepdim=True)
    torch.testing.assert_close(soft_cross_entropy(logits, soft), F.cross_entropy(logits, soft))
