"""Keyed-model latency: keyed / plain forward time, measured side by side in one run.

For VGG16-BN at 32×32 (batch 64), ResNet-50 at 224×224 (batch 8) and
ViT-B/16 at 224×224 (batch 4) by default, and on request (``--cases``) the
modern families: torchvision ConvNeXt-tiny, timm models (``timm/NAME``,
built with ``timm.create_model``) and the segmentation models FCN-ResNet50
and LR-ASPP-MobileNetV3 (dict output ``{"out": map}``, un-scrambled at the
end); random weights, eval mode, ``torch.no_grad``:
plain and keyed forwards run in back-to-back pairs (``--reps`` pairs, the
order alternating), and the table shows the median of the per-pair ratios
(robust to the load of a shared machine drifting between pairs) and the ratio
of the fastest runs, for both memory formats of the CNNs (plain and keyed
always get the same input layout; a keyed ViT has no gathers, so it runs in
the default format only), and the conversion time of
``keyveil.models.keyed`` (median of 3; with and without its self-check).

    .venv/bin/python benchmarks/bench_keyed.py
    .venv/bin/python benchmarks/bench_keyed.py --cases vgg16_bn --reps 7
    .venv/bin/python benchmarks/bench_keyed.py --cases convnext_tiny --modes features --reps 21
    .venv/bin/python benchmarks/bench_keyed.py --cases timm/resnet18 fcn_resnet50 --reps 7
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import torch
import torchvision

from keyveil import Key
from keyveil.models import keyed

ALL_MODES = ("input", "features", "deformable")
CASES = {
    "vgg16_bn": dict(size=32, batch=64, modes=ALL_MODES),
    "resnet50": dict(size=224, batch=8, modes=ALL_MODES),
    "vit_b_16": dict(size=224, batch=4, modes=("vit",), formats=("contiguous",)),
    "convnext_tiny": dict(size=224, batch=4, modes=ALL_MODES),
    "timm/resnet18": dict(size=224, batch=8, modes=ALL_MODES),
    "timm/efficientnet_b0": dict(size=224, batch=8, modes=ALL_MODES),
    "timm/convnext_atto": dict(size=224, batch=8, modes=ALL_MODES),
    "timm/mobilenetv3_large_100": dict(size=224, batch=8, modes=ALL_MODES),
    "fcn_resnet50": dict(size=224, batch=1, modes=ALL_MODES),
    "lraspp_mobilenet_v3_large": dict(size=224, batch=4, modes=ALL_MODES),
}
DEFAULT_CASES = ["vgg16_bn", "resnet50", "vit_b_16"]


def build(arch: str) -> torch.nn.Module:
    """The plain model of a case, random weights (nothing is downloaded)."""
    if arch.startswith("timm/"):
        import timm

        return timm.create_model(arch[len("timm/"):])
    if arch in ("fcn_resnet50", "lraspp_mobilenet_v3_large"):
        return torchvision.models.get_model(arch, weights=None, weights_backbone=None)
    return torchvision.models.get_model(arch)


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
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formats", nargs="+", default=["channels_last", "contiguous"])
    ap.add_argument("--modes", nargs="+", default=None, help="only these modes (default: all of each case)")
    ap.add_argument("--batch", type=int, default=None, help="batch size for every case (default: each case's)")
    ap.add_argument("--convert-reps", type=int, default=3, help="keyed() calls timed per conversion column")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    key = Key.from_seed(0)
    rows = []
    for arch in args.cases:
        case = CASES[arch]
        size, batch = case["size"], args.batch or case["batch"]
        torch.manual_seed(0)
        base = build(arch).eval()
        for mode in [m for m in case["modes"] if args.modes is None or m in args.modes]:
            conv_check = convert_time(base, key, mode, size, check=True, reps=args.convert_reps)
            conv_nocheck = convert_time(base, key, mode, size, check=False, reps=args.convert_reps)
            for fmt in case.get("formats", args.formats):
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
                    for i in range(args.reps):  # back-to-back pairs, alternating which goes first
                        if i % 2:
                            tk.append(_time(km, x))
                            tp.append(_time(plain, x))
                        else:
                            tp.append(_time(plain, x))
                            tk.append(_time(km, x))
                mp, mk = statistics.median(tp), statistics.median(tk)
                ratio = statistics.median(k / p for k, p in zip(tk, tp))
                ratio_min = min(tk) / min(tp)
                rows.append((arch, size, batch, mode, fmt, mp * 1e3, mk * 1e3, ratio, ratio_min, conv_check,
                             conv_nocheck))
                print(f"{arch:26s} {size:3d}px B={batch:<3d} {mode:10s} {fmt:13s} plain {mp * 1e3:8.1f} ms  "
                      f"keyed {mk * 1e3:8.1f} ms  ratio {ratio:5.3f} (min/min {ratio_min:5.3f})  "
                      f"convert {conv_check:.2f} s (no check {conv_nocheck:.2f} s)", flush=True)
    print()
    print("| model | input | batch | mode | memory format | plain ms | keyed ms | keyed/plain (median of pairs) "
          "| min/min | convert s (with self-check) | convert s (no check) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]}x{r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.3f} | "
              f"{r[8]:.3f} | {r[9]:.2f} | {r[10]:.2f} |")
    print(f"\n{args.reps} back-to-back (plain, keyed) pairs per cell; ms columns are medians; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; load average at the end "
          f"{os.getloadavg()[0]:.1f} (other jobs share the machine)")


if __name__ == "__main__":
    main()
