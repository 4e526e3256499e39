"""The baselines experiment (VisualMixer Tables II-III's shape) on a tiny subset, and its errors."""

import json

import pytest

from keyveil.cli import main
from keyveil.experiments.baselines import run_baselines


def test_baselines_experiment_on_a_tiny_subset(tmp_path, capsys):
    assert main(["experiment", "baselines", "--dataset", "mnist5k", "--models", "smallcnn", "--methods", "plain",
                 "visualmixer-seed", "dp-sgd", "noise", "instahide", "--limit", "128", "--test-limit", "64",
                 "--epochs", "1", "-o", str(tmp_path), "--quiet"]) == 0
    data = json.loads((tmp_path / "baselines.json").read_text())
    methods = [r["method"] for r in data["rows"]]
    assert methods == ["plain", "visualmixer-seed", "dp-sgd", "noise", "instahide"]
    for r in data["rows"]:
        assert 0 <= r["accuracy"] <= 1 and r["images_per_s"] > 0
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
