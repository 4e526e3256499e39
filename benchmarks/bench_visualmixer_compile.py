"""First-call cost of VisualMixer's compiled CPU kernels: compiling them, then loading them from the cache.

Run:  .venv/bin/python benchmarks/bench_visualmixer_compile.py

Starts fresh Python processes with ``NUMBA_CACHE_DIR`` pointing at a new empty
folder (the package's own cache is left alone). Each imports keyveil (not
timed), then times its first ``encrypt`` of 4 uint8 images of 3x32x32 (numba's
import, the kernels for uint8 and the call), its first of float32 images, and a
second uint8 call. The first process compiles and fills the cache; the next
ones load from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, time, torch
from keyveil import schemes
s = schemes.create("visualmixer", ws_min=2, ws_max=8)  # the seed's windows
x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
times = []
for batch in (x, x.float() / 255, x):
    start = time.perf_counter()
    s.encrypt(batch)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        print("| process | first uint8 call (s) | first float32 call (s) | second uint8 call (s) |")
        print("|---|---:|---:|---:|")
        for label in ("1st (empty cache: compiles)", "2nd (loads the cache)", "3rd (loads the cache)"):
            out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
            first, floats, again = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {label} | {first:.2f} | {floats:.2f} | {again:.4f} |")


if __name__ == "__main__":
    main()
