"""`keyveil experiment optimizers`: ST-Adam vs Adam, the learning-rate search and the seed spread, on a tiny subset."""

import json
import math

import numpy as np
import pytest

from keyveil.cli import main
from keyveil.experiments.optimizers import mean_std, verdict


def test_mean_std_and_verdict_match_numpy():
    a, b = [0.5, 0.7, 0.9], [0.4, 0.45, 0.5]
    m, s = mean_std(a)
    assert math.isclose(m, np.mean(a)) and math.isclose(s, np.std(a, ddof=1))
    spread = math.hypot(np.std(a, ddof=1), np.std(b, ddof=1))
    assert (np.mean(a) - np.mean(b) > spread) == (verdict(a, b) == "faster")
    assert verdict(b, [x + 1 for x in b]) == "slower"
    assert verdict([1.0, 1.1], [2.0, 2.1], higher_is_better=False) == "faster"  # a lower loss is better


def test_optimizers_experiment_on_a_tiny_subset(tmp_path, capsys):
    assert main(["experiment", "optimizers", "--dataset", "mnist5k", "--models", "smallcnn", "--limit", "40",
                 "--val-limit", "20", "--test-limit", "20", "--epochs", "2", "--lrs", "1e-3", "1e-2",
                 "--seeds", "0", "1", "-o", str(tmp_path), "--quiet"]) == 0
    data = json.loads((tmp_path / "optimizers.json").read_text())
    assert (tmp_path / "optimizers.png").stat().st_size > 10_000
    assert [(g["model"], g["data"]) for g in data["groups"]] == [("smallcnn", "plain"),
                                                                  ("smallcnn", "visualmixer-seed")]
    for g in data["groups"]:
        for name, o in g["optimizers"].items():
            # the chosen rate is the search's best final validation accuracy (ties: lower validation loss)
            best = max(o["search"], key=lambda r: (r["val_accuracy"], -r["val_loss"]))
            assert o["lr"] == best["lr"] and [r["lr"] for r in o["search"]] == [1e-3, 1e-2]
            assert [r["seed"] for r in o["runs"]] == [0, 1] and all(r["optimizer"] == name for r in o["runs"])
            for run in o["runs"]:
                assert [p["epoch"] for p in run["curve"]] == [0, 1, 2] and run["curve"][0]["train_loss"] is None
            for e in (1, 2):
                accs = [r["curve"][e]["test_accuracy"] for r in o["runs"]]
                assert np.allclose(o["summary"]["test_accuracy"][e], [np.mean(accs), np.std(accs, ddof=1)])
        st, ad = g["optimizers"]["stadam"], g["optimizers"]["adam"]
        acc1 = [[r["curve"][1]["test_accuracy"] for r in x["runs"]] for x in (st, ad)]
        assert g["verdict"]["test_accuracy_epoch_1"] == verdict(*acc1)
        # same rate, same seed: the two optimizers really differ
        assert st["search"][0]["val_loss"] != ad["search"][0]["val_loss"]
    md = (tmp_path / "optimizers.md").read_text()
    assert "Does ST-Adam converge faster?" in md and "±" in md and "CPU" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "0", "0"], "seeds must be distinct"),
    (["--lrs", "-1"], "learning rates must be positive"),
    (["--models", "resnet19"], "unknown"),
    (["--scheme", "nope"], "unknown"),
    (["--epochs", "0"], "must be >= 1"),
])
def test_optimizers_experiment_rejects_bad_input(tmp_path, capsys, extra, message):
    assert main(["experiment", "optimizers", "--dataset", "mnist5k", "-o", str(tmp_path), "--quiet", *extra]) != 0
    assert message in capsys.readouterr().err
