"""Federated averaging (Flower's FedAvg) across N simulated clients, each encrypting its own shard.

VisualMixer Table IV: FL on plain images, FL + ``visualmixer-seed`` (the
paper's setting), FL with one keyed scheme (``pixel``, every client shares one
key, so the server model is trained on ciphertexts), and a centralized
(non-FL) baseline with the same total epochs (``rounds × local_epochs``).
The test set is encrypted the same way as the training shards.

Mechanism: the clients and the server run in-process on one machine (Flower's
own simulation needs ray, which is not installed here). Each client is a
:class:`ShardClient` (Flower's ``NumPyClient`` interface) that trains the
global weights on its own encrypted shard with :func:`keyveil.engine.fit`; the
server aggregates with Flower's ``FedAvg`` strategy (``aggregate_fit`` on
``FitRes`` messages carrying Flower ``Parameters``, weighted by the clients'
sample counts). No network.

Real machines: wrap the same pieces in a Flower app (Flower >= 1.13)::

    # app.py
    from flwr.client import ClientApp
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg

    def client_fn(context):          # runs on each client machine
        shard = EncryptedDataset(my_local_images, create("visualmixer"), randomness="fresh")
        return ShardClient(build_model("smallcnn", ...), shard, local_epochs=1,
                           batch_size=64, seed=0).to_flower().to_client()

    client = ClientApp(client_fn=client_fn)
    server = ServerApp(server_fn=lambda ctx: ServerAppComponents(
        strategy=FedAvg(), config=ServerConfig(num_rounds=3)))

then start ``flower-superlink --insecure`` on the server machine, ``flower-supernode
--insecure --superlink SERVER:9092`` on every client machine, and submit the
project with ``flwr run . my-federation`` (``pyproject.toml`` naming
``app:server`` / ``app:client``). Every client encrypts locally; only weights
leave a client.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import EncryptedDataset, create_dataset
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import build_model, fit, seed_everything
from ..keys import Key
from ..schemes import PrivacyWarning, create
from .common import PaddedDataset, Timer, markdown_table, predict, write_report

__all__ = ["run_federated", "fedavg", "split_shards", "ShardClient", "FL_SCHEMES"]

FL_SCHEMES = ["plain", "visualmixer-seed", "pixel"]


def split_shards(n: int, clients: int, *, seed: int = 0) -> list[list[int]]:
    """IID split of ``range(n)`` into ``clients`` shards (a fixed-seed permutation)."""
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    if clients > n:
        raise ValueError(f"more clients ({clients}) than training images ({n}): use at most {n} clients "
                         f"or more images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [sorted(perm[i::clients]) for i in range(clients)]


def fedavg(results: Sequence[tuple[list[np.ndarray], int]], *, server_round: int = 1) -> list[np.ndarray]:
    """Aggregate client updates with Flower's own ``FedAvg`` strategy (sample-weighted mean).

    Each update travels in Flower's wire format (``FitRes`` holding ``Parameters``), exactly what
    ``FedAvg.aggregate_fit`` receives from remote clients in a real deployment.
    """
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Flower's deprecation notes for the pre-1.13 strategy API
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=len(results),
                          min_available_clients=len(results), fit_metrics_aggregation_fn=lambda m: {})
        fit_results = [(None, FitRes(status=Status(code=Code.OK, message=""),
                                     parameters=ndarrays_to_parameters(w), num_examples=n, metrics={}))
                       for w, n in results]
        params, _ = strategy.aggregate_fit(server_round, fit_results, [])  # type: ignore[arg-type]
    if params is None:
        raise RuntimeError("Flower's FedAvg returned no parameters (no client results)")
    return parameters_to_ndarrays(params)


class ShardClient:
    """One federated client: its own (encrypted) shard, local training with :func:`keyveil.engine.fit`.

    Implements Flower's ``NumPyClient`` interface (``get_parameters`` / ``fit`` / ``evaluate``); use
    :meth:`to_flower` to get the ``flwr.client.NumPyClient`` for a real deployment.
    """

    def __init__(self, model: torch.nn.Module, shard: Any, *, local_epochs: int, batch_size: int, seed: int,
                 progress: bool = False) -> None:
        self.model, self.shard = model, shard
        self.local_epochs, self.batch_size, self.seed, self.progress = local_epochs, batch_size, seed, progress

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return _get(self.model)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        _set(self.model, parameters)
        rnd = int(config.get("server_round", 1))
        fit(self.model, self.shard, epochs=self.local_epochs, batch_size=self.batch_size,
            seed=self.seed + 1000 * rnd, progress=self.progress, device="cpu")
        return _get(self.model), len(self.shard), {}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        _set(self.model, parameters)
        acc = float((predict(self.model, self.shard) == self.shard.targets).float().mean())
        return 1.0 - acc, len(self.shard), {"accuracy": acc}

    def to_flower(self) -> Any:
        """This client as a ``flwr.client.NumPyClient`` (for ``ClientApp`` / ``start_client``)."""
        from flwr.client import NumPyClient

        outer = self

        class _Client(NumPyClient):
            def get_parameters(self, config):  # type: ignore[override]
                return outer.get_parameters(config)

            def fit(self, parameters, config):  # type: ignore[override]
                return outer.fit(parameters, config)

            def evaluate(self, parameters, config):  # type: ignore[override]
                return outer.evaluate(parameters, config)

        return _Client()


def _get(model: torch.nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def _set(model: torch.nn.Module, arrays: Sequence[np.ndarray]) -> None:
    sd = model.state_dict()
    model.load_state_dict({k: torch.as_tensor(np.asarray(a)).to(v.dtype) for (k, v), a in zip(sd.items(), arrays)})


def _load(dataset: str | None):
    names = [dataset] if dataset else ["fashion-mnist", "mnist5k"]
    err: Exception | None = None
    for name in names:
        try:
            return name, create_dataset(name, "train"), create_dataset(name, "test")
        except Exception as e:  # noqa: BLE001 - fall back to the bundled dataset
            err = e
    raise RuntimeError(f"no dataset available ({names}): {err}")


def run_federated(
    *,
    dataset: str | None = None,
    clients: int = 4,
    rounds: int = 3,
    local_epochs: int = 1,
    limit: int | None = 8000,
    test_limit: int | None = None,
    schemes: Sequence[str] = tuple(FL_SCHEMES),
    centralized: bool = True,
    batch_size: int = 64,
    seed: int = 0,
    out_dir: str | Path = "results",
    progress: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """FedAvg on plain and encrypted shards (+ a centralized baseline); writes ``federated.md`` / ``.json``.

    Raises:
        ValueError: ``clients < 1``, ``rounds < 1``, ``local_epochs < 1`` or more clients than images.
    """
    problems = [f"{k} must be >= 1, got {v}" for k, v in
                (("clients", clients), ("rounds", rounds), ("local_epochs", local_epochs)) if v < 1]
    if problems:
        raise ValueError("; ".join(problems))
    timer = Timer()
    ds_name, train_raw, test_raw = _load(dataset)
    train = PaddedDataset(train_raw.limit(limit, seed=seed), 16)
    test = PaddedDataset(test_raw.limit(test_limit, seed=seed), 16)
    shards = split_shards(len(train), clients, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(seed)
    log(f"{ds_name}: {len(train)} train / {len(test)} test, {clients} clients x {[len(s) for s in shards]} images, "
        f"{rounds} rounds x {local_epochs} local epochs")
    kw = dict(in_channels=train.channels, num_classes=train.num_classes)
    results: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # the seed preset is compared on purpose
        for name in ["plain", *[s for s in schemes if s != "plain"]]:
            scheme = None if name == "plain" else create(name, key)
            te = test if scheme is None else EncryptedDataset(test, scheme, randomness="nonce",
                                                              nonce_offset=TEST_NONCE_OFFSET)
            client_sets = [train.subset(s) if scheme is None else EncryptedDataset(train.subset(s), scheme,
                                                                                  randomness="fresh")
                           for s in shards]  # each client encrypts its own shard
            t = Timer()
            seed_everything(seed)
            global_model = build_model("smallcnn", image_size=train.size, **kw)
            weights = _get(global_model)
            clients_ = [ShardClient(copy.deepcopy(global_model), cs, local_epochs=local_epochs,
                                    batch_size=batch_size, seed=seed + c, progress=progress)
                        for c, cs in enumerate(client_sets)]
            history = []
            for rnd in range(1, rounds + 1):
                updates = [cl.fit(weights, {"server_round": rnd})[:2] for cl in clients_]
                weights = fedavg(updates, server_round=rnd)
                _set(global_model, weights)
                acc = float((predict(global_model, te) == te.targets).float().mean())
                history.append({"round": rnd, "test_accuracy": acc})
                log(f"  FL {name:<17} round {rnd}/{rounds}: {100 * acc:6.2f} %  ({t.wall:.0f} s)")
            results.append({"setting": "FL", "scheme": name, "accuracy": history[-1]["test_accuracy"],
                            "rounds": rounds, "clients": clients, "local_epochs": local_epochs,
                            "history": history, "wall_s": t.wall, "cpu_s": t.cpu})
    if centralized:
        t = Timer()
        seed_everything(seed)
        model = build_model("smallcnn", image_size=train.size, **kw)
        fit(model, train, epochs=rounds * local_epochs, batch_size=batch_size, seed=seed, progress=progress,
            device="cpu")
        acc = float((predict(model, test) == test.targets).float().mean())
        log(f"  centralized plain: {100 * acc:6.2f} %  ({t.wall:.0f} s)")
        results.append({"setting": "centralized", "scheme": "plain", "accuracy": acc, "rounds": None,
                        "clients": 1, "local_epochs": rounds * local_epochs, "history": [],
                        "wall_s": t.wall, "cpu_s": t.cpu})
    table = markdown_table(
        ["setting", "scheme", "accuracy (%)", "rounds", "clients", "local epochs", "CPU time (s)"],
        [[r["setting"], r["scheme"], f"{100 * r['accuracy']:.2f}", r["rounds"] or "—", r["clients"],
          r["local_epochs"], f"{r['cpu_s']:.0f}"] for r in results])
    md = (f"# Federated averaging (Flower FedAvg) on encrypted shards\n\n"
          f"{ds_name}: {len(train)} training images split IID into {clients} shards (seed {seed}), "
          f"{len(test)} test images encrypted the same way; smallcnn, Adam, batch {batch_size}; "
          f"each client encrypts its own shard; `pixel` clients share one key {key.fingerprint} (fixed seed, "
          f"not secret). Centralized: same total epochs ({rounds * local_epochs}). "
          f"Run time: {timer.wall:.0f} s wall, {timer.cpu:.0f} s CPU.\n\n{table}\n")
    data = {"experiment": "federated", "dataset": ds_name, "train_images": len(train), "test_images": len(test),
            "clients": clients, "rounds": rounds, "local_epochs": local_epochs, "seed": seed,
            "key_fingerprint": key.fingerprint, "mechanism": "in-process Flower FedAvg aggregate",
            "results": results, "wall_s": timer.wall, "cpu_s": timer.cpu}
    data["files"] = [str(p) for p in write_report(out_dir, "federated", md, data)]
    return data
