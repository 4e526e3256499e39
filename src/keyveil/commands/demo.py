"""``keyveil demo``: encrypt real images with every scheme, then train and key a CNN (PrivDL-style table).

Steps: a (fixed, not secret) demo key; the schemes table; photos and dataset
samples encrypted with every scheme (PNG grids); a small CNN trained briefly
on Fashion-MNIST (MNIST-5k if Fashion-MNIST is absent); the same CNN
converted with the key (``keyveil.models.keyed``) and tested on
pixel-shuffled images with and without the key. Finishes in a few minutes
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from ..keys import Key
from ..pictures import column_labels, save_grid
from ..schemes import GeometryError, PrivacyWarning, create, list_schemes
from ..schemes.measured import DEFAULT_REIDENTIFICATION
from .schemes import HEADER, format_table, schemes_table

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def sample_photos(size: int = 224) -> torch.Tensor:
    """The scikit-image photos :data:`PHOTOS`, centre-cropped to ``size``: uint8 ``(B,3,size,size)``."""
    from skimage import data, transform

    images = []
    for name in PHOTOS:
        img = getattr(data, name)()
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        img = transform.resize(img, (size, size), anti_aliasing=True, preserve_range=True)
        images.append(torch.from_numpy(img.round().astype(np.uint8)).permute(2, 0, 1))
    return torch.stack(images)


def scheme_grid(x: torch.Tensor, key: Key) -> tuple[torch.Tensor, list[str]]:
    """Rows: the plain images, then each scheme's encryption of them."""
    rows, names = [x], ["plain"]
    with warnings.catch_warnings():  # the seed presets are shown on purpose; run() prints what they leave
        warnings.simplefilter("ignore", PrivacyWarning)
        for name in list_schemes():
            scheme = create(name, key)
            try:
                rows.append(scheme.encrypt(x))
            except GeometryError:
                continue
            names.append(name)
    return torch.stack(rows), names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demonstration on bundled real data")
    p.add_argument("-o", "--output", default="keyveil-demo", help="folder for the pictures and the report")
    p.add_argument("--train-images", type=int, default=8000, help="training images (default 8000)")
    p.add_argument("--test-images", type=int, default=2000, help="test images (default 2000)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--no-train", action="store_true", help="only the pictures and the schemes table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(2024)
    print(f"demo key {key.fingerprint} (a fixed demo seed: not secret)\n")
    print(format_table(HEADER, schemes_table()), "\n")
    grid, names = scheme_grid(sample_photos(), key)
    path = save_grid(list(grid.transpose(0, 1)), out / "schemes.png", pad=4, row_labels=list(PHOTOS),
                     col_labels=names, title="scikit-image photos, encrypted with each scheme (demo key)")
    print(f"columns: {', '.join(names)}\nwrote {path}")
    print("note: the visualmixer-seed columns use the seed's 2..8-pixel windows, which leave faces re-identified "
          f"as often as plain photos; {DEFAULT_REIDENTIFICATION['visualmixer-seed']} (see `keyveil schemes`)")
    if args.no_train:
        return 0
    return train_and_key(args, key, out)


def _demo_dataset() -> str:
    from ..data import dataset_source

    return "fashion-mnist" if dataset_source("fashion-mnist").available() else "mnist5k"


def train_and_key(args: argparse.Namespace, key: Key, out: Path) -> int:
    """Train the small CNN briefly, key it, and print the PrivDL-style table."""
    import json

    from ..data import EncryptedDataset, create_dataset
    from ..data.encrypted import TEST_NONCE_OFFSET
    from ..engine import build_model, evaluate, fit, seed_everything
    from ..experiments import PaddedDataset, Timer, predict
    from ..models import keyed

    timer = Timer()
    name = _demo_dataset()
    train = create_dataset(name, "train").limit(args.train_images)
    test = create_dataset(name, "test").limit(args.test_images)
    # dataset samples with every scheme (padded to 32x32 so block and patch schemes fit)
    padded = PaddedDataset(test, 16)
    xs, ys = padded.get_batch(range(0, len(padded), max(1, len(padded) // 8))[:8])
    classes = column_labels(ys, test.classes, prefix="test")
    rows, used = [xs], ["plain"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        for sname in list_schemes():
            try:
                s = create(sname, key, patch_size=8) if sname in ("patch", "mix") else create(sname, key)
                rows.append(s.encrypt(xs, nonce=list(range(len(xs)))) if s.per_image else s.encrypt(xs))
                used.append(sname)
            except GeometryError:
                continue
    samples = save_grid(rows, out / f"{name}_schemes.png", scale=3, row_labels=used, col_labels=classes,
                        title=f"{name} test images, encrypted with each scheme")
    print(f"rows: {', '.join(used)}\nwrote {samples}\n")
    print(f"training smallcnn on {len(train)} {name} images for {args.epochs} epoch(s) ...", flush=True)
    seed_everything(0)
    model = build_model("smallcnn", in_channels=train.channels, num_classes=train.num_classes, image_size=train.size)
    fit(model, train, epochs=args.epochs, batch_size=64, progress=True, device="cpu")
    model.eval()
    pixel = create("pixel", key)
    enc_test = EncryptedDataset(test, pixel, nonce_offset=TEST_NONCE_OFFSET)
    size = (train.channels, *train.size)
    keyed_model = keyed(model, key, scheme="pixel", mode="features", input_size=size).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrong = Key.from_seed(9999)
    no_key = keyed(model, wrong, scheme="pixel", mode="features", input_size=size).eval()
    results = [
        ("plain model, plain images", evaluate(model, test, device="cpu")),
        ("keyed model with the key, encrypted images", evaluate(keyed_model, enc_test, device="cpu")),
        ("keyed model without the key (wrong key), encrypted images", evaluate(no_key, enc_test, device="cpu")),
        ("plain model, encrypted images", evaluate(model, enc_test, device="cpu")),
    ]
    same = int((predict(keyed_model, enc_test) == predict(model, test)).sum())
    chance = 100 / train.num_classes
    header = ["setting", "accuracy (%)", "correct"]
    table = [[s, f"{100 * r.accuracy:.2f}", f"{r.correct}/{r.n}"] for s, r in results]
    print()
    print(format_table(header, table))
    print(f"\nkey {key.fingerprint}; chance is {chance:.1f} %. The keyed model gives the plain model's prediction "
          f"for {same} of {len(test)} test images.")
    grid = save_grid([xs[:, :, 2:30, 2:30], pixel.encrypt(xs[:, :, 2:30, 2:30])], out / "pixel_samples.png",
                     scale=3, row_labels=["plain", "pixel"], col_labels=classes,
                     title=f"{name} test images, plain and pixel-shuffled")
    report = out / "demo.json"
    report.write_text(json.dumps({
        "dataset": name, "train_images": len(train), "test_images": len(test), "epochs": args.epochs,
        "key_fingerprint": key.fingerprint, "chance": chance / 100, "same_predictions": same,
        "rows": [{"setting": s, "accuracy": r.accuracy, "correct": r.correct, "n": r.n} for s, r in results],
        "wall_s": timer.wall, "cpu_s": timer.cpu}, indent=2) + "\n")
    print(f"wrote {report}, {grid}\n({timer.wall:.0f} s wall for training and testing)")
    return 0
