"""PrivDL's Table 1 on a real dataset (Fashion-MNIST by default; CIFAR-10 when present).

Rows, as in the paper (Perez, Lopez, Arguello, ICASSP 2024):

1. non-private: the plain model on plain test images;
2. pre-trained: the same plain model on pixel-shuffled test images;
3. fine-tuned: that model fine-tuned on pixel-shuffled training images;
4. keyed, with the key: the plain model converted with the key
   (:func:`keyveil.models.keyed`) on shuffled images — no retraining;
5. keyed, wrong key: the plain model converted with another key, on the same shuffled images.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data import EncryptedDataset, create_dataset
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import build_model, evaluate, fit, seed_everything
from ..keys import Key
from ..pictures import column_labels
from ..schemes import create
from .common import Timer, markdown_table, predict, save_grid, write_report

__all__ = ["run_privdl"]


def _seed_key(seed: int) -> Key:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Key.from_seed(seed)


def run_privdl(
    *,
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    arch: str = "smallcnn",
    epochs: int = 2,
    finetune_epochs: int = 1,
    batch_size: int = 128,
    limit: int | None = None,
    test_limit: int | None = None,
    mode: str = "features",
    seed: int = 0,
    key: Key | None = None,
    out_dir: str | Path = "results",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run the five PrivDL rows; writes ``privdl.md``, ``privdl.json`` and ``privdl_samples.png``.

    Returns the JSON report (rows with accuracies, the key fingerprint, timings).
    """
    timer = Timer()
    key = key if key is not None else _seed_key(seed)
    wrong = _seed_key(seed + 1)
    train = create_dataset(dataset, "train", data_dir=data_dir).limit(limit)
    test = create_dataset(dataset, "test", data_dir=data_dir).limit(test_limit)
    scheme = create("pixel", key)
    enc_train = EncryptedDataset(train, scheme)
    enc_test = EncryptedDataset(test, scheme, nonce_offset=TEST_NONCE_OFFSET)
    kw = dict(in_channels=train.channels, num_classes=train.num_classes, image_size=train.size)
    log(f"PrivDL table on {dataset}: {len(train)} train / {len(test)} test images, key {key.fingerprint}")
    seed_everything(seed)
    model = build_model(arch, **kw)
    fit(model, train, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress, device="cpu",
        on_epoch=lambda r: log(f"  plain training epoch {r['epoch']}: loss {r['train_loss']:.4f}"))
    model.eval()
    t_train = timer.wall
    rows: list[dict[str, Any]] = []

    def add(name: str, net: torch.nn.Module, data, note: str) -> torch.Tensor:
        r = evaluate(net, data, device="cpu")
        rows.append({"row": name, "accuracy": r.accuracy, "correct": r.correct, "n": r.n, "note": note})
        log(f"  {name}: {100 * r.accuracy:.2f} %")
        return predict(net, data)

    plain_pred = add("non-private (plain model, plain images)", model, test, "")
    add("pre-trained (plain model, shuffled images)", model, enc_test, "no adaptation")
    tuned = copy.deepcopy(model)
    fit(tuned, enc_train, epochs=finetune_epochs, batch_size=batch_size, seed=seed, progress=progress,
        device="cpu", on_epoch=lambda r: log(f"  fine-tuning epoch {r['epoch']}: loss {r['train_loss']:.4f}"))
    add(f"fine-tuned on shuffled images ({finetune_epochs} epoch{'s' * (finetune_epochs != 1)})", tuned.eval(),
        enc_test, "retrained")
    from ..models import keyed

    size = (train.channels, *train.size)
    keyed_model = keyed(model, key, scheme="pixel", mode=mode, input_size=size).eval()
    keyed_pred = add(f"keyed model, with the key ({mode} mode)", keyed_model, enc_test, "no retraining")
    same = int((keyed_pred == plain_pred).sum())
    rows[-1]["same_predictions_as_plain"] = same
    wrong_model = keyed(model, wrong, scheme="pixel", mode=mode, input_size=size).eval()
    add("keyed model, wrong key", wrong_model, enc_test, f"model keyed with {wrong.fingerprint}")
    out = Path(out_dir)
    xs, ys = test.get_batch(range(min(8, len(test))))
    grid = save_grid([xs, scheme.encrypt(xs)], out / "privdl_samples.png", row_labels=["plain", "pixel"],
                     col_labels=column_labels(ys, test.classes, prefix="test"),
                     title=f"{dataset} test images, plain and pixel-shuffled")
    cpu, wall = timer.cpu, timer.wall
    chance = 1 / train.num_classes
    table = markdown_table(["setting", "accuracy (%)", "note"],
                           [[r["row"], f"{100 * r['accuracy']:.2f}", r["note"]] for r in rows])
    md = (f"# PrivDL Table 1 on {dataset}\n\n{len(train)} training / {len(test)} test images, {arch}, "
          f"{epochs} epochs (fine-tuning {finetune_epochs}), key {key.fingerprint} (a fixed seed: not secret), "
          f"chance {100 * chance:.1f} %.\n\n{table}\n\nThe keyed model predicts the same class as the plain "
          f"model for {same} of {len(test)} test images. Run time: {wall:.0f} s wall, {cpu:.0f} s CPU "
          f"(plain training {t_train:.0f} s wall).\n\n![samples](privdl_samples.png)\n")
    data = {"experiment": "privdl", "dataset": dataset, "arch": arch, "train_images": len(train),
            "test_images": len(test), "epochs": epochs, "finetune_epochs": finetune_epochs, "mode": mode,
            "key_fingerprint": key.fingerprint, "wrong_key_fingerprint": wrong.fingerprint, "rows": rows,
            "keyed_same_predictions": same, "chance": chance, "wall_s": wall, "cpu_s": cpu}
    data["files"] = [str(p) for p in write_report(out, "privdl", md, data)] + [str(grid)]
    (out / "privdl.json").write_text(json.dumps(data, indent=2) + "\n")
    return data
