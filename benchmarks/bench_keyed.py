"""Keyed-model latency: keyed / plain forward time, measured side by side in one run.

For VGG16-BN at 32×32 (batch 64), ResNet-50 at 224×224 (batch 8) and
ViT-B/16 at 224×224 (batch 4), random weights, eval mode, ``torch.no_grad``:
plain and keyed forwards alternate, each timed ``--reps`` times; the table
shows the ratio of the medians, for both memory formats (the plain and the
keyed model always get the same input layout), and the conversion time of
``keyveil.models.keyed`` (median of 3; with and without its self-check).

    .venv/bin/python benchmarks/bench_keyed.py
    .venv/bin/python benchmarks/bench_keyed.py --cases vgg16_bn --reps 7
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torchvision

from keyveil import Key
from keyveil.models import keyed

CASES = {
    "vgg16_bn": dict(size=32, batch=64, modes=("input", "features", "deformable")),
    "resnet50": dict(size=224, batch=8, modes=("input", "features", "deformable")),
    "vit_b_16": dict(size=224, batch=4, modes=("vit",)),
}


def _time(f, x) -> float:
    t = time.perf_counter()
    f(x)
    return time.perf_counter() - t


def convert_time(model, key, mode: str, size: int, *, check: bool, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        if mode == "vit":
            keyed(model, key, scheme="vit", check=check)
        else:
            keyed(model, key, mode=mode, input_size=(size, size), check=check)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formats", nargs="+", default=["channels_last", "contiguous"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    key = Key.from_seed(0)
    rows = []
    for arch in args.cases:
        case = CASES[arch]
        size, batch = case["size"], case["batch"]
        torch.manual_seed(0)
        base = torchvision.models.get_model(arch).eval()
        for mode in case["modes"]:
            conv_check = convert_time(base, key, mode, size, check=True)
            conv_nocheck = convert_time(base, key, mode, size, check=False)
            for fmt in args.formats:
                memory_format = getattr(torch, fmt if fmt == "channels_last" else "contiguous_format")
                plain = copy.deepcopy(base).to(memory_format=memory_format)
                if mode == "vit":
                    km = keyed(plain, key, scheme="vit", check=False)
                else:
                    km = keyed(plain, key, mode=mode, input_size=(size, size), check=False)
                x = torch.rand(batch, 3, size, size).contiguous(memory_format=memory_format)
                tp, tk = [], []
                with torch.no_grad():
                    plain(x), km(x)  # warm-up
                    for _ in range(args.reps):
                        tp.append(_time(plain, x))
                        tk.append(_time(km, x))
                mp, mk = statistics.median(tp), statistics.median(tk)
                rows.append((arch, size, batch, mode, fmt, mp * 1e3, mk * 1e3, mk / mp, conv_check, conv_nocheck))
                print(f"{arch:9s} {size:3d}px B={batch:<3d} {mode:10s} {fmt:13s} plain {mp * 1e3:8.1f} ms  "
                      f"keyed {mk * 1e3:8.1f} ms  ratio {mk / mp:5.2f}  convert {conv_check:.2f} s "
                      f"(no check {conv_nocheck:.2f} s)", flush=True)
    print()
    print("| model | input | batch | mode | memory format | plain ms | keyed ms | keyed/plain | convert s "
          "(with self-check) | convert s (no check) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]}x{r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.3f} | "
              f"{r[8]:.2f} | {r[9]:.2f} |")
    print(f"\n{args.reps} alternating repetitions per cell, median; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
