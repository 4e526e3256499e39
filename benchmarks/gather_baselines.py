"""How fast can any gather be on this machine? Bare permutation gathers vs ``x.clone()``.

Run:  .venv/bin/python benchmarks/gather_baselines.py [--repeats 50]

A fixed-key scheme is, at its core, one gather of every value by a key
permutation. This script times the candidate kernels alone (no keyveil code),
on the batches of ``bench_schemes.py``, each as a fraction of ``x.clone()``
timed in the same run (1.0 = as fast as copying): the ceiling for the schemes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

CASES = [(256, 3, 32, 32), (32, 3, 224, 224)]


def seconds(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def ratios(x: torch.Tensor, perm: torch.Tensor, repeats: int) -> tuple[float, ...]:
    """clone time, then clone time / kernel time for take, index_select and transpose + row take."""
    b, c, h, w = x.shape
    rows, index = x.reshape(b * c, h * w).numpy(), perm.numpy()

    def transposed() -> np.ndarray:
        by_position = np.ascontiguousarray(rows.T)
        return np.ascontiguousarray(np.take(by_position, index, axis=0).T)

    t_clone = seconds(x.clone, repeats)
    kernels = (
        lambda: np.take(rows, index, axis=1, mode="clip"),
        lambda: x.reshape(b * c, h * w).index_select(1, perm),
        transposed,
    )
    return (t_clone, *(t_clone / seconds(k, repeats) for k in kernels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads, "
          f"mean of {args.repeats} calls")
    print("| batch | dtype | clone ms | np.take | index_select | transpose + row take |")
    print("|---|---|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for b, c, h, w in CASES:
        for dtype in (torch.uint8, torch.float32):
            x = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=gen)
            x = x if dtype == torch.uint8 else x.float() / 255
            t_clone, take, select, trans = ratios(x, torch.randperm(h * w, generator=gen), args.repeats)
            print(f"| {h}x{w} B={b} | {str(dtype)[6:]} | {t_clone * 1e3:.3f} | {take:.3f} | {select:.3f} | "
                  f"{trans:.3f} |")


if __name__ == "__main__":
    main()
