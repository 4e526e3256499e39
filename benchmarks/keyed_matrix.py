"""Exactness matrix of keyed CNNs/ViT (issue 3 acceptance), printed as a table.

For every torchvision architecture, input size and mode: the max abs
difference between ``keyed(encrypt(x))`` and ``plain(x)`` logits (float32,
batch 2, random weights in eval mode; ``--calibrate`` first sets BatchNorm statistics
from random images so logits are O(1)), and the same for a keyed model made with a different key
("wrong key"), relative to the spread of the plain logits.

    .venv/bin/python benchmarks/keyed_matrix.py            # full matrix (~15 min on 2 cores)
    .venv/bin/python benchmarks/keyed_matrix.py --archs resnet18 --sizes 32x32
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torchvision
from torch import nn

from keyveil import Key, schemes
from keyveil.models import keyed

ARCHS = ["vgg16_bn", "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0",
         "densenet121", "efficientnet_b0", "regnet_y_400mf"]


def calibrate(model: nn.Module, shape: tuple[int, ...], *, batches: int = 2, seed: int = 0) -> nn.Module:
    """Set BatchNorm running statistics from random images (cumulative average), then eval."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(8, *shape, generator=gen))
    return model.eval()


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archs", nargs="+", default=ARCHS)
    ap.add_argument("--sizes", nargs="+", default=["32x32", "64x64", "48x80"])
    ap.add_argument("--modes", nargs="+", default=["input", "features", "deformable"])
    ap.add_argument("--vit", action="store_true", help="also vit_b_16 with the vit scheme at 224")
    ap.add_argument("--calibrate", action="store_true",
                    help="set BatchNorm statistics from random images first (logits O(1) instead of torchvision's "
                         "raw init, where some models output ~1e-10)")
    args = ap.parse_args()
    key, other = Key.from_seed(1), Key.from_seed(2)
    calib = args.calibrate
    pixel = schemes.create("pixel", key)
    print(f"{'arch':20s} {'size':7s} {'mode':10s} {'max|diff|':>10s} {'wrong-key':>10s} {'logit spread':>12s}")
    worst = 0.0
    for arch in args.archs:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            torch.manual_seed(0)
            model = torchvision.models.get_model(arch, num_classes=10).eval()
            if calib:
                model = calibrate(model, (3, h, w))
            x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                ref = model(x)
            spread = float((ref - ref.mean(0)).abs().max())
            y = pixel.encrypt(x)
            for mode in args.modes:
                t = time.perf_counter()
                km = keyed(model, key, mode=mode, input_size=(h, w))
                wrong = keyed(model, other, mode=mode, input_size=(h, w), check=False)
                with torch.no_grad():
                    d = float((km(y) - ref).abs().max())
                    dw = float((wrong(y) - ref).abs().max())
                worst = max(worst, d)
                print(f"{arch:20s} {size:7s} {mode:10s} {d:10.2e} {dw:10.2e} {spread:12.2e}  "
                      f"({time.perf_counter() - t:.1f} s)", flush=True)
    if args.vit:
        torch.manual_seed(0)
        vit = torchvision.models.vit_b_16().eval()
        torch.nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision zero-initializes the head
        x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        norm = torchvision.transforms.Normalize(mean, std)
        s = schemes.create("vit", key)
        with torch.no_grad():
            ref = vit(norm(x))
            spread = float((ref - ref.mean(0)).abs().max())
            d = float((keyed(vit, key, scheme="vit", mean=mean, std=std)(norm(s.encrypt(x))) - ref).abs().max())
            dw = float((keyed(vit, other, scheme="vit", mean=mean, std=std, check=False)(norm(s.encrypt(x)))
                        - ref).abs().max())
        worst = max(worst, d)
        print(f"{'vit_b_16':20s} {'224x224':7s} {'vit':10s} {d:10.2e} {dw:10.2e} {spread:12.2e}")
    print(f"worst max|diff| = {worst:.2e} (bound 1e-4)")


if __name__ == "__main__":
    main()
