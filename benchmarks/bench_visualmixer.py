"""VisualMixer throughput: the VFE metric and the full scheme, next to ``x.clone()``.

Run:  .venv/bin/python benchmarks/bench_visualmixer.py [--repeats 7] [--threads 2] [--min-time 0.25]

For 3x32x32 uint8 images at B=512 and 3x224x224 at B=64, it times, alternately
in the same run (each timing at least ``--min-time`` seconds of back-to-back calls):
``x.clone()``, ``keyveil.metrics.vfe(x)``, the full
``visualmixer`` encryption (default options: quadtree windows 2..8, one
permutation per channel, fresh randomness from a seeded generator) and, for
reference, the same scheme with ``ws_max=16``. Every figure is the median over
repeats of images/s, and of (clone time / time), i.e. the throughput as a
fraction of a plain memory copy of the batch. "images per CPU-second" divides
by the CPU time this process used (``time.process_time``, all its threads):
on a machine shared with other jobs it is what the wall-clock figure would be
if the process had its cores to itself (with one thread; with two it
understates that figure). It also times the in-window
shuffle alone for uniform 8x8 windows done two ways, the Fisher–Yates
shuffle of the scheme (compiled on CPU) and ``argsort`` of random keys per window,
to show why the scheme does not sort. The public VisualMixer code needs
6.0 s per 224x224 image on this CPU (0.17 images/s): see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from keyveil import schemes
from keyveil.metrics import vfe
from keyveil.schemes.visualmixer import WindowLayout, shuffle_windows

CASES = [((512, 3, 32, 32), "32x32 B=512"), ((64, 3, 224, 224), "224x224 B=64")]


def timed(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def timed_both(fn, inner: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per call."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner, (time.process_time() - cpu) / inner


def argsort_window_shuffle(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform s x s window shuffle by argsort of random keys (the alternative we measured)."""
    b, c, h, w = x.shape
    blocks = x.reshape(b, c, h // s, s, w // s, s).permute(0, 1, 2, 4, 3, 5).reshape(-1, s * s)
    perm = torch.rand(blocks.shape, generator=gen).argsort(dim=1)
    out = blocks.gather(1, perm).view(b, c, h // s, w // s, s, s).permute(0, 1, 2, 4, 3, 5)
    return out.reshape(b, c, h, w)


def loop_vfe(image: np.ndarray, window: int = 14) -> float:
    """VFE with a Python loop over every pixel, the way the public code computes it."""
    c, h, w = image.shape
    values = []
    for ch in range(c):
        for top in range(0, h, window):
            for left in range(0, w, window):
                bottom, right = min(top + window, h), min(left + window, w)
                total = 0.0
                for i in range(top, bottom):
                    for j in range(left, right):
                        v = image[ch, i, j]
                        if j + 1 < right:
                            total += (image[ch, i, j + 1] - v) ** 2
                        if i + 1 < bottom:
                            total += (image[ch, i + 1, j] - v) ** 2
                values.append(total / ((bottom - top) * (right - left)))
    return float(np.mean(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--min-time", type=float, default=0.25,
                        help="seconds of back-to-back calls per timing (default 0.25: a batch after batch "
                             "workload, so one-off costs after switching operations are amortized)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load:.2f} at start, median of {args.repeats} runs")
    print()
    print("| size | operation | images/s (wall) | images per CPU-second | time / x.clone() time |")
    print("|---|---|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    default = schemes.create("visualmixer", ws_min=2, ws_max=8)  # the seed's windows (the figures' setting)
    wide = schemes.create("visualmixer", ws_min=2, ws_max=16)
    for shape, label in CASES:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        uniform8 = WindowLayout((8,), (torch.ones(shape[0], shape[2] // 8, shape[3] // 8, dtype=torch.bool),),
                                shape[2], shape[3])
        ops = {
            "x.clone()": x.clone,
            "vfe(x) (window 14)": lambda x=x: vfe(x),
            "visualmixer encrypt (ws 2..8)": lambda x=x: default.encrypt(x, generator=gen),
            "visualmixer encrypt (ws 2..16)": lambda x=x: wide.encrypt(x, generator=gen),
            "uniform 8x8 shuffle, Fisher-Yates (as the scheme)": lambda x=x, lay=uniform8: shuffle_windows(
                x, lay, generator=gen),
            "uniform 8x8 shuffle, argsort of random keys": lambda x=x: argsort_window_shuffle(x, 8, gen),
        }
        inner = {}
        for name, fn in ops.items():  # warm up, then size the inner loop to --min-time
            fn()
            inner[name] = max(1, int(args.min_time / max(timed(fn, 1), 1e-6)))
        times: dict[str, list[float]] = {name: [] for name in ops}
        cpus: dict[str, list[float]] = {name: [] for name in ops}
        for _ in range(args.repeats):
            for name, fn in ops.items():  # alternate: every repeat times every operation
                wall, cpu = timed_both(fn, inner[name])
                times[name].append(wall)
                cpus[name].append(cpu)
        clone = times["x.clone()"]
        for name in ops:
            rate = statistics.median(shape[0] / t for t in times[name])
            cpu_rate = statistics.median(shape[0] / max(t, 1e-9) for t in cpus[name])
            ratio = statistics.median(t / c for t, c in zip(times[name], clone))
            print(f"| {label} | {name} | {rate:,.0f} | {cpu_rate:,.0f} | {ratio:,.1f} |")
    image = torch.randint(0, 256, (3, 224, 224), generator=torch.Generator().manual_seed(2)).double() / 255
    loops = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        value = loop_vfe(image.numpy())
        loops.append(time.perf_counter() - start)
    assert abs(value - float(vfe(image)[0])) < 1e-9
    rate = 1 / statistics.median(loops)
    print(f"| 224x224 B=1 | vfe with a Python loop over pixels (as the public code) | {rate:,.2f} | | |")
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print()
    print(f"load average {load_end:.2f} at end")


if __name__ == "__main__":
    main()
