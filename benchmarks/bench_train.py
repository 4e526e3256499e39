"""Training throughput on images encrypted on the fly vs plain images, same model, side by side.

Every dataset (plain, and one per scheme) gets its own copy of the same small
CNN (same initial weights), its own Adam optimizer and its own DataLoader over
the same Fashion-MNIST images; the scheme runs on every batch as it is fetched
(``EncryptedDataset``, one batched call per batch, fresh randomness for
per-image schemes). The training steps are interleaved batch by batch: each
round fetches one batch and trains one step on every dataset in turn (the
order alternates), so a slow spell of a shared machine hits all of them
alike. A step's time covers fetching (and encrypting) the batch and the
forward, backward and optimizer step (``keyveil.engine.train_epoch`` on that
one batch). Prints, per dataset, images/s from the median step time, the
median over rounds of (plain step time / step time), its 10th percentile,
the ratio of total times, the encryption time of a batch alone, and the
median time of a step's two parts: fetching the batch (encryption included,
unless a worker does it) and training on it.

    .venv/bin/python benchmarks/bench_train.py [--workers 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from collections.abc import Iterator

import torch

from keyveil import Key, schemes
from keyveil.data import EncryptedDataset, create_dataset, dataset_source
from keyveil.engine import build_model, make_loader, make_optimizer, seed_everything, train_epoch

SCHEMES = ["pixel", "etc", "le", "visualmixer"]


def endless(dataset, batch_size: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of shuffled epochs, one after the other."""
    epoch = 0
    while True:
        yield from make_loader(dataset, batch_size=batch_size, shuffle=True, seed=0, epoch=epoch,
                               num_workers=workers)
        epoch += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16000, help="training images (epochs repeat; a worker "
                   "process restarts at every epoch)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200, help="timed rounds (one step per dataset each)")
    p.add_argument("--warmup", type=int, default=6, help="rounds run first and not timed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: encrypt in the "
                   "training process)")
    p.add_argument("--schemes", nargs="*", default=SCHEMES)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    name = "fashion-mnist" if dataset_source("fashion-mnist").available() else "mnist5k"
    base = create_dataset(name, "train").limit(args.images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(2024)
    sets = {"plain": base}
    for s in args.schemes:
        try:
            sets[s] = EncryptedDataset(base, schemes.create(s, key, **({"ws_min": 2, "ws_max": 8} if s == "visualmixer" else {})), randomness="fresh")
        except ValueError as exc:
            print(f"skipping {s}: {exc}")
    seed_everything(0)
    model0 = build_model("smallcnn", in_channels=base.channels, num_classes=base.num_classes,
                         image_size=base.size)
    runs = {}
    for k, ds in sets.items():
        model = copy.deepcopy(model0)
        runs[k] = (model, make_optimizer("adam", model.parameters()), endless(ds, args.batch_size, args.workers))
    times: dict[str, list[float]] = {k: [] for k in sets}
    fetch: dict[str, list[float]] = {k: [] for k in sets}
    for step in range(args.warmup + args.steps):
        order = list(sets) if step % 2 == 0 else list(reversed(sets))
        for k in order:
            model, opt, batches = runs[k]
            t = time.perf_counter()
            batch = next(batches)
            fetched = time.perf_counter()
            train_epoch(model, [batch], opt, device="cpu")
            if step >= args.warmup:
                times[k].append(time.perf_counter() - t)
                fetch[k].append(fetched - t)
    enc_ms: dict[str, float] = {}
    xb = base.get_batch(range(args.batch_size))[0]
    for k, ds in sets.items():
        runs_ms = []
        for _ in range(21):
            t = time.perf_counter()
            if k != "plain":
                ds.scheme.encrypt(xb)
            runs_ms.append(1000 * (time.perf_counter() - t))
        enc_ms[k] = statistics.median(runs_ms)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{name}, {len(base)} images, batch {args.batch_size}, smallcnn, {args.threads} threads, "
          f"{args.workers} loader workers, {args.steps} interleaved rounds after {args.warmup} warm-up rounds, "
          f"load average {load:.2f} at the end")
    print(f"{'data':<13}{'images/s':>10}{'ratio (median)':>16}{'ratio (p10)':>13}{'ratio (totals)':>16}"
          f"{'encrypt ms/batch':>18}{'fetch ms':>10}{'train ms':>10}")
    for k in sets:
        ratios = sorted(p / t for p, t in zip(times["plain"], times[k]))
        p10 = ratios[len(ratios) // 10]
        rate = args.batch_size / statistics.median(times[k])
        total = sum(times["plain"]) / sum(times[k])
        train_ms = 1000 * statistics.median(t - f for t, f in zip(times[k], fetch[k]))
        print(f"{k:<13}{rate:>10.0f}{statistics.median(ratios):>16.3f}{p10:>13.3f}{total:>16.3f}"
              f"{enc_ms[k]:>18.2f}{1000 * statistics.median(fetch[k]):>10.2f}{train_ms:>10.2f}")


if __name__ == "__main__":
    main()
