"""Federated averaging with Flower: the aggregation against numpy, shards, errors and a 2-client run."""

import json

import numpy as np
import pytest
import torch

from keyveil.cli import main
from keyveil.data import TensorImageDataset
from keyveil.experiments.federated import ShardClient, fedavg, run_federated, split_shards


def test_fedavg_is_flowers_sample_weighted_mean():
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    b = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    out = fedavg([(a, 10), (b, 30)])
    for o, x, y in zip(out, a, b):
        np.testing.assert_allclose(o, (10 * x.astype(np.float64) + 30 * y) / 40, rtol=1e-6, atol=1e-6)


def test_shards_cover_the_data_once_and_too_many_clients_is_a_clear_error():
    shards = split_shards(10, 3, seed=1)
    assert sorted(i for s in shards for i in s) == list(range(10)) and [len(s) for s in shards] == [4, 3, 3]
    with pytest.raises(ValueError, match="more clients"):
        split_shards(5, 6)
    with pytest.raises(ValueError, match="more clients"):
        run_federated(dataset="mnist5k", clients=300, limit=200, out_dir="/nonexistent")
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        run_federated(dataset="mnist5k", rounds=0, out_dir="/nonexistent")


def test_shard_client_is_a_flower_numpy_client_that_trains_locally():
    from flwr.client import NumPyClient

    x = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    ds = TensorImageDataset(x, [0, 1] * 4, name="toy", split="train", classes=["a", "b"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 2))
    client = ShardClient(model, ds, local_epochs=1, batch_size=4, seed=0)
    start = client.get_parameters({})
    new, n, _ = client.fit(start, {"server_round": 1})
    assert n == 8 and any(not np.array_equal(s, w) for s, w in zip(start, new))
    assert isinstance(client.to_flower(), NumPyClient)
    loss, n, metrics = client.evaluate(new, {})
    assert n == 8 and 0 <= metrics["accuracy"] <= 1 and loss == pytest.approx(1 - metrics["accuracy"])


def test_federated_experiment_two_clients_two_rounds(tmp_path, capsys, one_thread):
    # 2 rounds x 2 local epochs x 8 steps: FedAvg reaches ~70-85 % here, the centralized baseline ~95 %
    assert main(["experiment", "federated", "--dataset", "mnist5k", "--clients", "2", "--rounds", "2",
                 "--local-epochs", "2", "--limit", "256", "--test-limit", "100", "--batch-size", "16",
                 "-o", str(tmp_path), "--quiet"]) == 0
    data = json.loads((tmp_path / "federated.json").read_text())
    rows = [(r["setting"], r["scheme"]) for r in data["results"]]
    assert rows == [("FL", "plain"), ("FL", "visualmixer-seed"), ("FL", "pixel"), ("centralized", "plain")]
    assert all(0.4 < r["accuracy"] <= 1 for r in data["results"]) and data["clients"] == 2  # chance: 0.1
    assert "FedAvg" in (tmp_path / "federated.md").read_text() and "CPU" in capsys.readouterr().out
