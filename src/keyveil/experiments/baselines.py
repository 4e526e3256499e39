"""VisualMixer's comparisons, Tables II and III's shape: plain, VisualMixer, DP-SGD, noise, InstaHide.

For each architecture the same recipe (Adam, a fixed seed) trains on plain
Fashion-MNIST, on VisualMixer images (the paper's 2..8-pixel windows,
``visualmixer-seed``, and keyveil's default whole-image window), with DP-SGD
(Opacus, at a stated ε; BatchNorm replaced by GroupNorm as Opacus does it), on
images with Gaussian noise (``noise``), and on InstaHide encodings
(``instahide``: mixed images and mixed labels; tested, as Huang et al. do, on
test images encoded the same way with partners from the test set).
Throughput is each method's training images per second relative to plain,
measured side by side in one run (the paper: DP-SGD −68…−91 %, VIM −0.8 %).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import EncryptedDataset, create_dataset
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import build_model, fit, seed_everything
from ..engine.loop import LossFn, classification_loss, evaluate, make_loader, to_input, train_loop, train_step
from ..engine.optim import make_optimizer
from ..keys import Key
from ..schemes import PrivacyWarning, create
from .common import PaddedDataset, Timer, markdown_table, write_report

__all__ = ["run_baselines", "METHODS", "MODELS", "instahide_loss", "train_instahide", "instahide_accuracy",
           "soft_cross_entropy"]

METHODS = ("plain", "visualmixer-seed", "visualmixer", "dp-sgd", "noise", "instahide")
MODELS = ("smallcnn", "mobilenet_v3_small", "shufflenet_v2_x0_5")
PAPER_THROUGHPUT = {"dp-sgd": "−68…−91 %", "visualmixer-seed": "−0.8 %"}


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against mixed (soft) labels, the loss InstaHide trains with."""
    return torch.sum(-soft * F.log_softmax(logits, 1), 1).mean()


def instahide_loss(scheme: Any, num_classes: int) -> LossFn:
    """The training loss on InstaHide encodings: each batch is encoded with its labels mixed alike.

    The loss hook of :func:`keyveil.engine.train_loop`: soft cross-entropy of the
    model on the encodings against the mixed labels.
    """

    def loss_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        x, soft = scheme.encrypt_with_labels(images, F.one_hot(labels, num_classes).float())
        return soft_cross_entropy(model(to_input(x, "cpu")), soft), {"n": int(labels.shape[0])}

    return loss_fn


def train_instahide(model: nn.Module, scheme: Any, train, *, epochs: int, batch_size: int, seed: int,
                    progress: bool) -> None:
    """Train on InstaHide encodings of each batch with the labels mixed the same way (soft cross-entropy)."""
    opt = make_optimizer("adam", model.parameters())
    train_loop(model, opt, lambda epoch: make_loader(train, batch_size=batch_size, shuffle=True, seed=seed,
                                                     epoch=epoch, drop_last=True),
               epochs=epochs, loss_fn=instahide_loss(scheme, train.num_classes), progress=progress,
               desc="instahide")


@torch.no_grad()
def instahide_accuracy(model: nn.Module, scheme: Any, test, *, batch_size: int = 500) -> float:
    """Accuracy on test images encoded with partners from the test set: the mixed label's top class."""
    model.eval()
    correct, n = 0, 0
    g = torch.Generator().manual_seed(TEST_NONCE_OFFSET)
    for images, labels in make_loader(test, batch_size=batch_size, shuffle=False):
        x, soft = scheme.encrypt_with_labels(images, F.one_hot(labels, test.num_classes).float(), generator=g)
        correct += int((model(to_input(x, "cpu")).argmax(1) == labels).sum())
        n += labels.shape[0]
    return correct / max(n, 1)


def run_baselines(
    *,
    dataset: str = "fashion-mnist",
    models: Sequence[str] = MODELS,
    methods: Sequence[str] = METHODS,
    limit: int | None = 5000,
    test_limit: int | None = 2000,
    epochs: int = 2,
    batch_size: int = 64,
    epsilon: float = 8.0,
    sigma: float = 0.1,
    instahide_k: int = 4,
    seed: int = 0,
    throughput_rounds: int = 5,
    throughput_steps: int = 8,
    out_dir: str | Path = "results",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Every method × every model; writes ``baselines.md`` and ``baselines.json`` under ``out_dir``."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    problems = [f"{name} must be {rule}, got {v}" for name, v, ok, rule in (
        ("epochs", epochs, epochs >= 1, ">= 1"), ("epsilon", epsilon, epsilon > 0, "> 0 (the DP-SGD budget)"),
        ("sigma", sigma, sigma > 0, "> 0"), ("instahide_k", instahide_k, instahide_k >= 2, ">= 2")) if not ok]
    if problems:
        raise ValueError("bad baselines options: " + "; ".join(problems))
    methods = ["plain", *[m for m in methods if m != "plain"]]
    timer = Timer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(seed)
    train = PaddedDataset(create_dataset(dataset, "train").limit(limit), 16)
    test = PaddedDataset(create_dataset(dataset, "test").limit(test_limit), 16)
    kw = dict(in_channels=train.channels, num_classes=train.num_classes, image_size=train.size)
    log(f"{dataset}: {len(train)} train / {len(test)} test, padded to {train.size}, {epochs} epochs, "
        f"batch {batch_size}; DP-SGD target epsilon {epsilon:g}; noise sigma {sigma:g}; InstaHide k={instahide_k}")
    rows: list[dict[str, Any]] = []
    for arch in models:
        plain_acc = None
        for method in methods:
            t = Timer()
            seed_everything(seed)
            model = build_model(arch, **kw)
            extra: dict[str, Any] = {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PrivacyWarning)  # the seed's setting is compared on purpose
                if method == "dp-sgd":
                    from ..engine.dp import PrivacyConfig, fit_private

                    r = fit_private(model, train, privacy=PrivacyConfig(target_epsilon=epsilon), test_set=test,
                                    epochs=epochs, batch_size=batch_size, optimizer="adam", progress=progress,
                                    device="cpu")
                    acc = r.history[-1]["test_accuracy"]
                    extra = {"epsilon": r.privacy["epsilon"], "delta": r.privacy["delta"]}
                elif method == "instahide":
                    scheme = create("instahide", key, k=instahide_k)
                    train_instahide(model, scheme, train, epochs=epochs, batch_size=batch_size, seed=seed,
                                    progress=progress)
                    acc = instahide_accuracy(model, scheme, test)
                else:
                    scheme = None if method == "plain" else (create("noise", key, sigma=sigma) if method == "noise"
                                                             else create(method, key))
                    tr = train if scheme is None else EncryptedDataset(train, scheme, randomness="fresh")
                    te = test if scheme is None else EncryptedDataset(test, scheme, randomness="nonce",
                                                                      nonce_offset=TEST_NONCE_OFFSET)
                    r = fit(model, tr, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                            device="cpu")
                    acc = evaluate(r.model, te).accuracy
            if method == "plain":
                plain_acc = acc
            row = {"model": arch, "method": method, "accuracy": acc, "drop_points": 100 * (plain_acc - acc),
                   "cpu_s": t.cpu, **extra}
            rows.append(row)
            log(f"  {arch:<20} {method:<17} {100 * acc:6.2f} %  ({t.cpu:.0f} s CPU)")
        t = Timer()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus' notes on secure RNG and hooks; the seed preset's warning
            steppers = {m: _stepper(m, arch, kw, train, key, batch_size=batch_size, epsilon=epsilon, epochs=epochs,
                                    sigma=sigma, k=instahide_k, seed=seed) for m in methods}
            speed = measure_throughput(steppers, rounds=throughput_rounds, steps=throughput_steps)
        for row in rows:
            if row["model"] == arch:
                row.update(images_per_cpu_s=speed[row["method"]]["images_per_cpu_s"],
                           throughput_vs_plain=speed[row["method"]]["vs_plain"])
                log(f"  {arch:<20} {row['method']:<17} {row['images_per_cpu_s']:7.0f} training images per CPU-s "
                    f"({100 * row['throughput_vs_plain']:+.1f} % vs plain)")
        log(f"  ({t.cpu:.0f} s CPU for the throughput rounds)")
    md = _markdown(rows, dataset=dataset, train=len(train), test=len(test), epochs=epochs, batch_size=batch_size,
                   epsilon=epsilon, sigma=sigma, k=instahide_k, timer=timer, key=key,
                   rounds=throughput_rounds, steps=throughput_steps)
    data = {"experiment": "baselines", "key_fingerprint": key.fingerprint, "dataset": dataset,
            "train_images": len(train), "test_images": len(test), "epochs": epochs, "batch_size": batch_size,
            "epsilon": epsilon, "sigma": sigma, "instahide_k": instahide_k, "throughput_rounds": throughput_rounds,
            "throughput_steps": throughput_steps, "rows": rows, "wall_s": timer.wall,
            "cpu_s": timer.cpu, "torch_threads": torch.get_num_threads()}
    data["files"] = [str(p) for p in write_report(Path(out_dir), "baselines", md, data)]
    return data


def _stepper(method: str, arch: str, kw: dict[str, Any], train, key: Key, *, batch_size: int, epsilon: float,
             epochs: int, sigma: float, k: int, seed: int) -> Callable[[], int]:
    """One training step of ``method`` (data preparation included) per call; returns the images it trained on."""
    seed_everything(seed)
    model = build_model(arch, **kw)
    scheme = None
    if method == "dp-sgd":
        from ..engine.dp import PrivacyConfig, make_dp_compatible, make_private

        model = make_dp_compatible(model)
        opt = make_optimizer("adam", model.parameters())
        pt = make_private(model, opt, make_loader(train, batch_size=batch_size, shuffle=True, seed=seed),
                          # the step's cost does not depend on the noise scale: skip the ε search
                          config=PrivacyConfig(noise_multiplier=1.0), epochs=epochs)
        model, opt, loader = pt.model, pt.optimizer, pt.loader
    else:
        opt = make_optimizer("adam", model.parameters())
        if method == "instahide":
            scheme = create("instahide", key, k=k)
            data = train
        elif method == "plain":
            data = train
        else:
            enc = create("noise", key, sigma=sigma) if method == "noise" else create(method, key)
            data = EncryptedDataset(train, enc, randomness="fresh")
        loader = make_loader(data, batch_size=batch_size, shuffle=True, seed=seed, drop_last=True)
    model.train()
    batches = _forever(loader)
    loss_fn = instahide_loss(scheme, train.num_classes) if scheme is not None else classification_loss("cpu")

    def step() -> int:
        return int(train_step(model, opt, next(batches), loss_fn=loss_fn)[1]["n"])

    return step


def _forever(loader: Any):
    while True:
        yield from loader


def measure_throughput(steppers: dict[str, Callable[[], int]], *, rounds: int = 5, steps: int = 8) -> dict[str, Any]:
    """Training images per CPU-second of every method, interleaved: each round times ``steps`` steps of every
    method in turn (process CPU time, so other jobs on the machine do not count). Returns per-method medians
    and the median over rounds of each method's rate relative to ``plain`` in the same round."""
    rates: dict[str, list[float]] = {m: [] for m in steppers}
    for step in steppers.values():  # warm-up: allocations, first-call compilation
        step()
    for _ in range(rounds):
        for method, step in steppers.items():
            start = time.process_time()
            n = sum(step() for _ in range(steps))
            rates[method].append(n / max(time.process_time() - start, 1e-9))
    out: dict[str, Any] = {}
    for method, rs in rates.items():
        rel = [r / p - 1 for r, p in zip(rs, rates["plain"])]
        out[method] = {"images_per_cpu_s": statistics.median(rs), "vs_plain": statistics.median(rel),
                       "rounds": rounds, "steps": steps}
    return out


def _markdown(rows: list[dict[str, Any]], *, dataset: str, train: int, test: int, epochs: int, batch_size: int,
              epsilon: float, sigma: float, k: int, timer: Timer, key: Key, rounds: int, steps: int) -> str:
    acc = markdown_table(
        ["model", "method", "accuracy (%)", "drop vs plain (points)", "ε spent"],
        [[r["model"], r["method"], f"{100 * r['accuracy']:.2f}",
          "—" if r["method"] == "plain" else f"{r['drop_points']:.2f}",
          f"{r['epsilon']:.2f} (δ {r['delta']:.0e})" if "epsilon" in r else "—"] for r in rows])
    speed = markdown_table(
        ["model", "method", "training images per CPU-second", "vs plain (median of rounds)", "paper"],
        [[r["model"], r["method"], f"{r['images_per_cpu_s']:.0f}",
          "—" if r["method"] == "plain" else f"{100 * r['throughput_vs_plain']:+.1f} %",
          PAPER_THROUGHPUT.get(r["method"], "")] for r in rows])
    return (f"# Baselines: plain, VisualMixer, DP-SGD, noise, InstaHide (VisualMixer Tables II–III's shape)\n\n"
            f"Command: `keyveil experiment baselines` (key {key.fingerprint}, a fixed seed). Run time: "
            f"{timer.wall:.0f} s wall, {timer.cpu:.0f} s CPU, torch threads {torch.get_num_threads()}.\n\n"
            f"{dataset}: {train} training / {test} test images padded to 32x32, {epochs} epochs, batch "
            f"{batch_size}, Adam. DP-SGD: Opacus, target ε = {epsilon:g}, per-sample clipping norm 1.0, "
            f"Poisson sampling, BatchNorm → GroupNorm. noise: σ = {sigma:g} of the value range. InstaHide: "
            f"k = {k} (partners from the same batch, private-set variant), labels mixed alike.\n\n"
            f"## Accuracy\n\n{acc}\n\n## Training throughput (side by side in this run)\n\n"
            f"Each model's methods are timed in turn, {rounds} rounds of {steps} training steps each (batch "
            f"{batch_size}, data preparation — encryption, noise, mixing — included), in process CPU time; the "
            f"ratio is the median over rounds of each method's rate against plain's in the same round.\n\n"
            f"{speed}\n")
