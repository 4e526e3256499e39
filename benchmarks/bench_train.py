"""Training throughput on images encrypted on the fly vs plain images, same model, side by side.

Each repetition trains the same small CNN (fresh copy of the same initial
weights) for the same batches of Fashion-MNIST, once per scheme, in an
interleaved order; the scheme is applied to every batch as it is fetched
(``EncryptedDataset``, one batched call per batch). Prints the median
images/s per scheme and the median of the per-repetition ratios to plain.

    .venv/bin/python benchmarks/bench_train.py --images 1536 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch

from keyveil import Key, schemes
from keyveil.data import EncryptedDataset, create_dataset, dataset_source
from keyveil.engine import build_model, make_loader, make_optimizer, seed_everything, train_epoch

SCHEMES = ["pixel", "etc", "le", "visualmixer"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1536)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
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
            sets[s] = EncryptedDataset(base, schemes.create(s, key), randomness="fresh")
        except ValueError as exc:
            print(f"skipping {s}: {exc}")
    seed_everything(0)
    model0 = build_model("smallcnn", in_channels=base.channels, num_classes=base.num_classes,
                         image_size=base.size)
    speed: dict[str, list[float]] = {k: [] for k in sets}
    ratios: dict[str, list[float]] = {k: [] for k in sets}
    for rep in range(args.repeats + 1):  # the first round warms up and is discarded
        order = list(sets) if rep % 2 == 0 else list(reversed(sets))
        this: dict[str, float] = {}
        for k in order:
            model = copy.deepcopy(model0)
            opt = make_optimizer("adam", model.parameters())
            loader = make_loader(sets[k], batch_size=args.batch_size, shuffle=True, seed=0, epoch=rep)
            t = time.perf_counter()
            stats = train_epoch(model, loader, opt, device="cpu")
            this[k] = stats["n"] / (time.perf_counter() - t)
        print(f"round {rep}: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in this.items()), flush=True)
        if rep == 0:
            continue
        for k, v in this.items():
            speed[k].append(v)
            ratios[k].append(v / this["plain"])
    enc_ms: dict[str, float] = {}
    xb = base.get_batch(range(args.batch_size))[0]
    for k, ds in sets.items():
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            if k != "plain":
                ds.scheme.encrypt(xb)
            runs.append(time.perf_counter() - t)
        enc_ms[k] = 1000 * statistics.median(runs)
    print(f"{name}, {len(base)} images, batch {args.batch_size}, smallcnn, {args.threads} threads, "
          f"median of {args.repeats} interleaved repetitions")
    print(f"{'data':<14}{'images/s':>10}{'ratio to plain':>16}{'min ratio':>11}{'encrypt ms/batch':>18}")
    for k in sets:
        print(f"{k:<14}{statistics.median(speed[k]):>10.0f}{statistics.median(ratios[k]):>16.3f}"
              f"{min(ratios[k]):>11.3f}{enc_ms[k]:>18.2f}")


if __name__ == "__main__":
    main()
