"""Where two threads lose time in VisualMixer at 32x32: the GIL, or the two chunks of a call?

Run:  .venv/bin/python benchmarks/bench_visualmixer_threads.py [--repeats 7]

For 3x32x32 uint8 images it times, alternately, median of ``--repeats``:

- one stream: one thread encrypting 256-image chunks back to back (what each
  of the two threads of a 512-image ``encrypt`` does);
- two free-running streams on two threads, and on two processes (no GIL
  shared): the best two threads could do, and the cost of the GIL;
- ``encrypt`` of 512 images (two chunks on keyveil's pool), with the times of
  its slower and its faster chunk: a call waits for the slower one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from keyveil import schemes

CHUNK, CALLS = 256, 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    scheme = schemes.create("visualmixer", ws_min=2, ws_max=8)  # the seed's windows
    x = torch.randint(0, 256, (2 * CHUNK, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    half = x[:CHUNK].clone()

    def stream(_: int = 0) -> None:
        gen = torch.Generator().manual_seed(0)
        for _ in range(CALLS):
            scheme._encrypt_chunk(half, gen, None)

    def one_stream() -> float:
        start = time.perf_counter()
        stream()
        return CALLS * CHUNK / (time.perf_counter() - start)

    def two_threads() -> float:
        with ThreadPoolExecutor(2) as pool:  # new threads take torch's count: 1 (set in main)
            start = time.perf_counter()
            list(pool.map(stream, range(2)))
            return 2 * CALLS * CHUNK / (time.perf_counter() - start)

    def two_processes() -> float:
        procs = [mp.get_context("fork").Process(target=stream) for _ in range(2)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return 2 * CALLS * CHUNK / (time.perf_counter() - start)

    chunk_times: list[float] = []
    original = scheme._encrypt_chunk

    def timed_chunk(*a):
        start = time.perf_counter()
        out = original(*a)
        chunk_times.append(time.perf_counter() - start)
        return out

    def encrypt_calls() -> float:
        torch.set_num_threads(2)
        gen = torch.Generator().manual_seed(0)
        scheme._encrypt_chunk = timed_chunk
        try:
            start = time.perf_counter()
            for _ in range(CALLS):
                scheme.encrypt(x, generator=gen)
            return CALLS * 2 * CHUNK / (time.perf_counter() - start)
        finally:
            scheme._encrypt_chunk = original
            torch.set_num_threads(1)

    torch.set_num_threads(1)
    ops = {"one stream, 1 thread": one_stream, "two streams, 2 threads": two_threads,
           "two streams, 2 processes": two_processes, "encrypt(512 images), 2 chunks on the pool": encrypt_calls}
    for fn in ops.values():
        fn()
    chunk_times.clear()
    rates: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(args.repeats):
        for name, fn in ops.items():
            rates[name].append(fn())
    print(f"torch {torch.__version__}, 3x32x32 uint8, chunks of {CHUNK} images, {CALLS} calls per timing, "
          f"median of {args.repeats}")
    print()
    print("| run | images/s |")
    print("|---|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):,.0f} |")
    pairs = [sorted(chunk_times[i : i + 2]) for i in range(0, len(chunk_times) - 1, 2)]
    print()
    print(f"encrypt's chunks: faster {1e3 * statistics.median(p[0] for p in pairs):.1f} ms, "
          f"slower {1e3 * statistics.median(p[1] for p in pairs):.1f} ms (medians over {len(pairs)} calls)")


if __name__ == "__main__":
    main()
