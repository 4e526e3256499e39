"""Accuracy of the same training recipe on images encrypted with each scheme, vs plain images.

Images are zero-padded to a multiple of 16 pixels per side (Fashion-MNIST
28×28 → 32×32, AT&T faces 112×92 → 112×96) so every scheme runs on the same
inputs. Fixed-key and VisualMixer schemes train the small CNN; ``patch`` and
``mix`` train Hao et al.'s invariant ViTs (``keyveil.models``). Per-image
schemes draw fresh randomness every epoch. The drop is measured against the
small CNN on plain images; VisualMixer's paper reports 2.35 points on average.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data import EncryptedDataset, create_dataset
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import build_model, fit, seed_everything
from ..keys import Key
from ..pictures import column_labels
from ..schemes import create
from .common import PaddedDataset, Timer, markdown_table, save_grid, write_report

__all__ = ["run_schemes", "SCHEMES", "PAPER_DROP"]

SCHEMES = ["plain", "pixel", "etc", "le", "ele", "vit", "patch", "mix", "visualmixer"]
PAPER_DROP = 2.35
PATCH = 8
DEFAULT_EPOCHS = {"fashion-mnist": 2, "att-faces": 25, "mnist5k": 4}
DEFAULT_LIMIT = {"fashion-mnist": 10000}


def _scheme(name: str, key: Key):
    if name == "plain":
        return None
    if name == "patch":
        return create("patch", key, patch_size=PATCH)
    if name == "mix":
        return create("mix", key, patch_size=PATCH, grid=4)
    return create(name, key)


def _model(name: str, ds) -> Any:
    kw = dict(in_channels=ds.channels, num_classes=ds.num_classes)
    if name in ("patch", "mix"):
        from ..models import mix_invariant_vit, patch_invariant_vit

        make = patch_invariant_vit if name == "patch" else mix_invariant_vit
        extra = {"grid": 4} if name == "mix" else {}
        return make(image_size=tuple(ds.size), patch_size=PATCH, dim=64, depth=4, heads=4, **extra, **kw), "inv-ViT"
    return build_model("smallcnn", image_size=ds.size, **kw), "smallcnn"


def run_schemes(
    *,
    datasets: Sequence[str] = ("fashion-mnist", "att-faces"),
    schemes: Sequence[str] = tuple(SCHEMES),
    epochs: dict[str, int] | int | None = None,
    limit: dict[str, int | None] | int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    out_dir: str | Path = "results",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Train on every scheme for every dataset; writes ``schemes.md``, ``schemes.json``, ``schemes_<ds>.png``."""
    timer = Timer()
    schemes = ["plain", *[s for s in schemes if s != "plain"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(seed)
    out = Path(out_dir)
    results: list[dict[str, Any]] = []
    grids = []
    md_parts = []
    for ds_name in datasets:
        n_epochs = epochs if isinstance(epochs, int) else {**DEFAULT_EPOCHS, **(epochs or {})}.get(ds_name, 2)
        n_limit = limit if isinstance(limit, int) else {**DEFAULT_LIMIT, **(limit or {})}.get(ds_name)
        train = PaddedDataset(create_dataset(ds_name, "train").limit(n_limit), 16)
        test = PaddedDataset(create_dataset(ds_name, "test"), 16)
        log(f"{ds_name}: {len(train)} train / {len(test)} test, padded to {train.size}, {n_epochs} epochs")
        xs, ys = test.get_batch(range(0, len(test), max(1, len(test) // 6))[:6])
        rows_img, img_names, rows = [xs], ["plain"], []
        plain_acc = None
        for name in schemes:
            t = Timer()
            scheme = _scheme(name, key)
            tr = train if scheme is None else EncryptedDataset(train, scheme, randomness="fresh")
            te = test if scheme is None else EncryptedDataset(test, scheme, randomness="nonce",
                                                              nonce_offset=TEST_NONCE_OFFSET)
            seed_everything(seed)
            model, arch = _model(name, train)
            r = fit(model, tr, test_set=te, epochs=n_epochs, batch_size=batch_size, seed=seed, progress=progress,
                    device="cpu")
            acc = r.history[-1]["test_accuracy"]
            if name == "plain":
                plain_acc = acc
            if scheme is not None:
                rows_img.append(scheme.encrypt(xs, nonce=list(range(len(xs)))) if scheme.per_image and
                                scheme.key is not None else scheme.encrypt(xs))
                img_names.append(name)
            drop = None if plain_acc is None else 100 * (plain_acc - acc)
            rec = {"dataset": ds_name, "scheme": name, "model": arch, "accuracy": acc, "drop_points": drop,
                   "over_paper_drop": drop is not None and drop > PAPER_DROP, "epochs": n_epochs,
                   "train_images": len(train), "test_images": len(test), "wall_s": t.wall, "cpu_s": t.cpu}
            results.append(rec)
            rows.append(rec)
            log(f"  {name:<12} {arch:<9} {100 * acc:6.2f} %  drop {drop if drop is None else round(drop, 2)}"
                f"  ({t.wall:.0f} s)")
        grids.append(str(save_grid(rows_img, out / f"schemes_{ds_name}.png", row_labels=img_names,
                                   col_labels=column_labels(ys, test.classes, prefix="test"),
                                   title=f"{ds_name} test images, encrypted with each scheme")))
        table = markdown_table(
            ["scheme", "model", "accuracy (%)", "drop vs plain (points)", f"> {PAPER_DROP}?", "time (s)"],
            [[r["scheme"], r["model"], f"{100 * r['accuracy']:.2f}",
              "—" if r["drop_points"] is None or r["scheme"] == "plain" else f"{r['drop_points']:.2f}",
              "**yes**" if r["over_paper_drop"] else "no", f"{r['wall_s']:.0f}"] for r in rows])
        md_parts.append(f"## {ds_name}\n\n{len(train)} training / {len(test)} test images, padded to "
                        f"{train.size[0]}x{train.size[1]}, {n_epochs} epochs, batch {batch_size}, Adam.\n\n"
                        f"{table}\n\n![samples](schemes_{ds_name}.png) (rows: plain, then each scheme in order)\n")
    md = (f"# Accuracy on encrypted images, per scheme\n\nKey {key.fingerprint} (a fixed seed: not secret). "
          f"Run time: {timer.wall:.0f} s wall, {timer.cpu:.0f} s CPU.\n\n" + "\n".join(md_parts))
    data = {"experiment": "schemes", "key_fingerprint": key.fingerprint, "paper_drop": PAPER_DROP,
            "results": results, "wall_s": timer.wall, "cpu_s": timer.cpu, "grids": grids}
    data["files"] = [str(p) for p in write_report(out, "schemes", md, data)] + grids
    return data
