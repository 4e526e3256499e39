"""CPU cost checks moved out of the tests (issue 21): attacks and the throughput meter, on this machine.

Run:  .venv/bin/python benchmarks/bench_attack_cost.py [--skip-ciphertext-only]

Prints, for each check, the measured CPU seconds (process time: other jobs on
the machine do not count) and the budget the tests used to assert:

- chosen-plaintext recovery of a pixel key at 32x32 and 224x224: < 1 s;
- ciphertext-only layout recovery from 3,000 Fashion-MNIST ciphertexts: < 60 s;
- ``experiments.baselines.measure_throughput``: a step burning twice the CPU
  per image is measured at about half the rate (-35 % to -65 % vs plain).

Exit status 1 if any check is over its budget.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from keyveil import Key, schemes
from keyveil.attacks import ChosenPlaintext, CiphertextOnly
from keyveil.attacks._data import fashion_mnist
from keyveil.experiments.baselines import measure_throughput


def chosen_plaintext(size: tuple[int, int]) -> float:
    s = schemes.create("pixel", Key.from_seed(11))
    s.encrypt(torch.zeros(1, 3, *size, dtype=torch.uint8))  # derive the key's permutation before timing
    t0 = time.process_time()
    r = ChosenPlaintext().run(oracle=s.encrypt, image_size=size, reference=s)
    cpu = time.process_time() - t0
    assert r.metrics["fraction_recovered"] == 1.0
    return cpu


def ciphertext_only() -> float:
    s = schemes.create("pixel", Key.from_seed(15))
    x, _ = fashion_mnist("train", 3000)
    xt, _ = fashion_mnist("test", 50)
    r = CiphertextOnly(anneal_seconds=3).run(ciphertexts=s.encrypt(x), test_encrypted=s.encrypt(xt),
                                             test_plain=xt, reference=s)
    return r.cost.cpu_seconds


def throughput_ratio() -> float:
    def burn(units: int):
        def step() -> int:
            x = 0
            for i in range(200_000 * units):
                x += i
            return 10
        return step

    return measure_throughput({"plain": burn(1), "twice": burn(2)}, rounds=3, steps=2)["twice"]["vs_plain"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-ciphertext-only", action="store_true", help="skip the ~10 s layout recovery")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    failed = 0
    for size in ((32, 32), (224, 224)):
        cpu = chosen_plaintext(size)
        failed += cpu >= 1.0
        print(f"chosen-plaintext {size[0]}x{size[1]}: {cpu:.3f} s CPU (budget 1 s)")
    if not args.skip_ciphertext_only:
        cpu = ciphertext_only()
        failed += cpu >= 60
        print(f"ciphertext-only, 3000 ciphertexts: {cpu:.1f} s CPU (budget 60 s)")
    ratio = throughput_ratio()
    failed += not -0.65 < ratio < -0.35
    print(f"throughput meter, twice the CPU per image: {100 * ratio:+.1f} % vs plain (expected -35 % to -65 %)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
