"""Throughput of every scheme relative to ``x.clone()`` of the same batch.

Run:  .venv/bin/python benchmarks/bench_schemes.py [--repeats 7] [--markdown]

For each scheme, size (3x32x32 at B=256, 3x224x224 at B=32) and dtype (uint8,
float32), encrypt and ``x.clone()`` are timed alternately in the same run;
each figure is the median over repeats of (clone time / encrypt time), i.e.
the scheme's throughput as a fraction of a plain memory copy (1.0 = as fast
as copying the batch). Parameters are derived before timing (derive once,
apply many). Per-image schemes include drawing their fresh randomness.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from keyveil import Key, schemes

CASES = [((256, 3, 32, 32), "32x32 B=256"), ((32, 3, 224, 224), "224x224 B=32")]


def timed(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def measure(scheme, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median ratio clone_time / encrypt_time and median encrypt images/s."""
    scheme.encrypt(x)  # derive parameters, warm up
    probe = timed(lambda: scheme.encrypt(x), 1)
    inner = max(1, int(0.05 / max(probe, 1e-6)))
    ratios, rates = [], []
    for _ in range(repeats):
        t_clone = timed(x.clone, inner * 4)
        t_enc = timed(lambda: scheme.encrypt(x), inner)
        ratios.append(t_clone / t_enc)
        rates.append(x.shape[0] / t_enc)
    return statistics.median(ratios), statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--schemes", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(0)
    names = args.schemes or schemes.list_schemes()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} runs")
    print("| scheme | size | dtype | ratio to x.clone() | images/s |")
    print("|---|---|---|---:|---:|")
    for name in names:
        scheme = schemes.create(name, key, **({"ws_min": 2, "ws_max": 8} if name == "visualmixer" else {}))
        for shape, label in CASES:
            for dtype in (torch.uint8, torch.float32):
                x = torch.randint(0, 256, shape, dtype=torch.uint8)
                x = x if dtype == torch.uint8 else x.float() / 255
                try:
                    ratio, rate = measure(scheme, x, args.repeats)
                except schemes.GeometryError:
                    print(f"| {name} | {label} | {str(dtype)[6:]} | n/a (size) | |")
                    continue
                print(f"| {name} | {label} | {str(dtype)[6:]} | {ratio:.2f} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
