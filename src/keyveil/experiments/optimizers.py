"""ST-Adam against Adam, per epoch, on plain and VisualMixer images: the shape of VisualMixer's Fig. 6.

For each architecture and each kind of training image (plain, and the
VisualMixer setting of the paper, ``visualmixer-seed``), both optimizers get
the same learning-rate search: every rate of the grid trains once (first
seed) on the training split and is scored on a held-out validation split
carved from the training images (stratified, disjoint), by its final
validation accuracy (ties: lower validation loss). The chosen rate then
trains with every seed; training loss, test loss and test accuracy are
recorded before training (epoch 0) and after every epoch. The learning rate
is constant (no warm-up, no decay), so the comparison shows the optimizers,
not a schedule. ST-Adam drops Adam's bias correction, so at step ``t`` its
step is ``(1 - beta1**t) / sqrt(1 - beta2**t)`` times Adam's: 3.2× at t = 1,
6.5× at t = 10, 3.2× at t = 100, 1.3× at t = 1000 (betas 0.9, 0.999) — larger
steps early on, which the shared learning-rate search is there to separate
from a mere change of rate (docs/design.md §3.4).

**Verdict rule** (ours; the paper only shows curves): after epoch 1, ST-Adam
"converges faster" if its mean test accuracy exceeds Adam's by more than the
spread ``sqrt(std_a² + std_b²)`` of the two means over seeds, "slower" if it
falls short by more than that, otherwise "no clear difference"; the same rule
is reported on the final epoch and on the training loss.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import EncryptedDataset, create_dataset
from ..data.base import stratified_split
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import build_model, evaluate, fit, seed_everything
from ..keys import Key
from ..schemes import PrivacyWarning, create
from .common import PaddedDataset, Timer, markdown_table, write_report

__all__ = ["run_optimizers", "mean_std", "verdict", "OPTIMIZERS", "LRS"]

OPTIMIZERS = ("adam", "stadam")
LRS = (3e-4, 1e-3, 3e-3)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value).

    Examples:
        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    v = [float(x) for x in values]
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def verdict(st: Sequence[float], adam: Sequence[float], *, higher_is_better: bool = True) -> str:
    """``"faster"``, ``"slower"`` or ``"no clear difference"`` for ST-Adam vs Adam (see the module docstring).

    Examples:
        >>> verdict([0.80, 0.82, 0.81], [0.70, 0.71, 0.69])
        'faster'
        >>> verdict([0.80, 0.70, 0.90], [0.79, 0.81, 0.80])
        'no clear difference'
    """
    (ms, ss), (ma, sa) = mean_std(st), mean_std(adam)
    diff = (ms - ma) if higher_is_better else (ma - ms)
    spread = math.sqrt(ss**2 + sa**2)
    if diff > spread:
        return "faster"
    if diff < -spread:
        return "slower"
    return "no clear difference"


def _run(arch: str, kw: dict[str, Any], train, val, test, *, optimizer: str, lr: float, epochs: int,
         batch_size: int, seed: int, progress: bool) -> dict[str, Any]:
    """Train once; the curve holds ``test`` metrics at epoch 0 (before training) and after every epoch, ``val``'s at the end."""
    t = Timer()
    seed_everything(seed)
    model = build_model(arch, **kw)

    def point(epoch: int, train_loss: float | None, train_acc: float | None) -> dict[str, Any]:
        te = evaluate(model, test, device="cpu")
        p = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc, "test_loss": te.loss,
             "test_accuracy": te.accuracy}
        if epoch == epochs:  # the search scores the final epoch only
            v = evaluate(model, val, device="cpu")
            p.update(val_loss=v.loss, val_accuracy=v.accuracy)
        return p

    curve = [point(0, None, None)]
    fit(model, train, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, schedule="constant",
        seed=seed, progress=progress, device="cpu",
        on_epoch=lambda r: curve.append(point(r["epoch"], r["train_loss"], r["train_accuracy"])))
    model.train()
    return {"optimizer": optimizer, "lr": lr, "seed": seed, "curve": curve, "cpu_s": t.cpu, "wall_s": t.wall}


def _pick(search: list[dict[str, Any]]) -> float:
    """The rate whose run ends with the best validation accuracy (ties: the lower validation loss)."""
    best = max(search, key=lambda r: (r["curve"][-1]["val_accuracy"], -r["curve"][-1]["val_loss"]))
    return best["lr"]


def run_optimizers(
    *,
    dataset: str = "fashion-mnist",
    models: Sequence[str] = ("smallcnn", "shufflenet_v2_x0_5"),
    scheme: str = "visualmixer-seed",
    optimizers: Sequence[str] = OPTIMIZERS,
    lrs: Sequence[float] = LRS,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 5,
    limit: int = 2000,
    val_limit: int = 500,
    test_limit: int | None = 1000,
    batch_size: int = 64,
    out_dir: str | Path = "results/optimizers",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """ST-Adam vs Adam on plain and ``scheme`` images; writes ``optimizers.md``, ``.json`` and ``.png``."""
    problems = []
    if epochs < 1 or limit < 1 or val_limit < 1 or batch_size < 1:
        problems.append(f"epochs, limit, val_limit and batch_size must be >= 1, got {epochs}, {limit}, "
                        f"{val_limit}, {batch_size}")
    if not seeds or len(set(seeds)) != len(seeds):
        problems.append(f"seeds must be distinct and at least one, got {list(seeds)}")
    if not lrs or any(lr <= 0 for lr in lrs):
        problems.append(f"learning rates must be positive, got {list(lrs)}")
    bad = [o for o in optimizers if o not in ("sgd", "adam", "stadam")]
    if bad:
        problems.append(f"unknown optimizer(s) {', '.join(bad)}: choose adam, stadam or sgd")
    if problems:
        raise ValueError("; ".join(problems))
    timer = Timer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(0)
        enc = create(scheme, key)
    pool = create_dataset(dataset, "train").limit(limit + val_limit)
    if len(pool) < limit + val_limit:
        raise ValueError(f"{dataset} has {len(pool)} training images, fewer than limit + val_limit = "
                         f"{limit + val_limit}")
    tr_idx, val_idx = stratified_split(pool.targets, limit / (limit + val_limit), seed=1)
    train = PaddedDataset(pool.subset(tr_idx), 16)
    val = PaddedDataset(pool.subset(val_idx), 16)
    test = PaddedDataset(create_dataset(dataset, "test").limit(test_limit), 16)
    kw = {"in_channels": train.channels, "num_classes": train.num_classes, "image_size": tuple(train.size)}
    data_sets = {"plain": (train, val, test),
                 scheme: (EncryptedDataset(train, enc, randomness="fresh"),
                          EncryptedDataset(val, enc, randomness="nonce", nonce_offset=TEST_NONCE_OFFSET // 2),
                          EncryptedDataset(test, enc, randomness="nonce", nonce_offset=TEST_NONCE_OFFSET))}
    log(f"{dataset}: {len(train)} train / {len(val)} validation (held out from training) / {len(test)} test, "
        f"padded to {train.size}; {epochs} epochs, constant learning rate, grid {list(lrs)}, seeds {list(seeds)}")
    groups: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # the paper's setting is the one compared, on purpose
        for arch in models:
            for data_name, (tr, va, te) in data_sets.items():
                group: dict[str, Any] = {"model": arch, "data": data_name, "optimizers": {}}
                for opt in optimizers:
                    search = [_run(arch, kw, tr, va, te, optimizer=opt, lr=lr, epochs=epochs, batch_size=batch_size,
                                   seed=seeds[0], progress=progress) for lr in lrs]
                    lr = _pick(search)
                    runs = [next(r for r in search if r["lr"] == lr)]
                    runs += [_run(arch, kw, tr, va, te, optimizer=opt, lr=lr, epochs=epochs, batch_size=batch_size,
                                  seed=s, progress=progress) for s in seeds[1:]]
                    group["optimizers"][opt] = {"lr": lr, "search": [
                        {"lr": r["lr"], "val_accuracy": r["curve"][-1]["val_accuracy"],
                         "val_loss": r["curve"][-1]["val_loss"], "cpu_s": r["cpu_s"]} for r in search],
                        "runs": runs, "summary": _summary(runs, epochs)}
                    s = group["optimizers"][opt]["summary"]
                    log(f"  {arch:<20} {data_name:<17} {opt:<7} lr {lr:g} (val: " + ", ".join(
                        f"{r['lr']:g}→{100 * r['curve'][-1]['val_accuracy']:.1f}" for r in search)
                        + f")  test acc epoch 1 {100 * s['test_accuracy'][1][0]:.2f} ± {100 * s['test_accuracy'][1][1]:.2f}"
                        f", epoch {epochs} {100 * s['test_accuracy'][-1][0]:.2f} ± "
                        f"{100 * s['test_accuracy'][-1][1]:.2f}")
                if "adam" in group["optimizers"] and "stadam" in group["optimizers"]:
                    group["verdict"] = _verdicts(group["optimizers"]["stadam"]["runs"],
                                                 group["optimizers"]["adam"]["runs"])
                groups.append(group)
    data = {"experiment": "optimizers", "dataset": dataset, "scheme": scheme, "key_fingerprint": key.fingerprint,
            "train_images": len(train), "val_images": len(val), "test_images": len(test),
            "padded_to": list(train.size), "epochs": epochs, "batch_size": batch_size, "lrs": list(lrs),
            "seeds": list(seeds), "schedule": "constant", "groups": groups, "wall_s": timer.wall, "cpu_s": timer.cpu,
            "torch_threads": torch.get_num_threads()}
    out = Path(out_dir)
    plot = _plot(groups, out / "optimizers.png", epochs=epochs)
    data["plot"] = str(plot)
    data["files"] = [str(p) for p in write_report(out, "optimizers", _markdown(data), data)] + [str(plot)]
    return data


def _summary(runs: list[dict[str, Any]], epochs: int) -> dict[str, list[tuple[float, float]]]:
    """Per epoch (0..epochs): mean and std over seeds of each metric (train metrics start at epoch 1)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for metric in ("train_loss", "test_loss", "test_accuracy"):
        out[metric] = [mean_std([r["curve"][e][metric] for r in runs]) if runs[0]["curve"][e][metric] is not None
                       else (math.nan, math.nan) for e in range(epochs + 1)]
    return out


def _verdicts(st: list[dict[str, Any]], adam: list[dict[str, Any]]) -> dict[str, str]:
    def at(runs: list[dict[str, Any]], epoch: int, metric: str) -> list[float]:
        return [r["curve"][epoch][metric] for r in runs]

    return {"test_accuracy_epoch_1": verdict(at(st, 1, "test_accuracy"), at(adam, 1, "test_accuracy")),
            "train_loss_epoch_1": verdict(at(st, 1, "train_loss"), at(adam, 1, "train_loss"), higher_is_better=False),
            "test_accuracy_final": verdict(at(st, -1, "test_accuracy"), at(adam, -1, "test_accuracy"))}


def _pm(v: tuple[float, float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{scale * v[0]:.{digits}f} ± {scale * v[1]:.{digits}f}"


def _markdown(data: dict[str, Any]) -> str:
    epochs = data["epochs"]
    rows = []
    for g in data["groups"]:
        for opt, o in g["optimizers"].items():
            s = o["summary"]
            rows.append([g["model"], g["data"], opt, f"{o['lr']:g}",
                         *[_pm(s["train_loss"][e], digits=3) for e in range(1, epochs + 1)],
                         *[_pm(s["test_accuracy"][e], 100) for e in range(0, epochs + 1)]])
    curves = markdown_table(["model", "images", "optimizer", "lr", *[f"train loss ep {e}" for e in range(1, epochs + 1)],
                             *[f"test acc % ep {e}" for e in range(0, epochs + 1)]], rows)
    search = markdown_table(
        ["model", "images", "optimizer", *[f"val acc % at lr {lr:g}" for lr in data["lrs"]], "chosen"],
        [[g["model"], g["data"], opt, *[f"{100 * r['val_accuracy']:.2f}" for r in o["search"]], f"{o['lr']:g}"]
         for g in data["groups"] for opt, o in g["optimizers"].items()])
    verdicts = markdown_table(
        ["model", "images", "test acc after epoch 1", "train loss in epoch 1", f"test acc after epoch {epochs}"],
        [[g["model"], g["data"], g["verdict"]["test_accuracy_epoch_1"], g["verdict"]["train_loss_epoch_1"],
          g["verdict"]["test_accuracy_final"]] for g in data["groups"] if "verdict" in g])
    return (f"# ST-Adam vs Adam per epoch (VisualMixer Fig. 6's shape)\n\n"
            f"Command: `keyveil experiment optimizers`. {data['dataset']}: {data['train_images']} training / "
            f"{data['val_images']} validation (held out from the training images, for the learning-rate search) / "
            f"{data['test_images']} test images padded to {data['padded_to'][0]}x{data['padded_to'][1]}; plain and "
            f"`{data['scheme']}` (key {data['key_fingerprint']}, fresh randomness per epoch); {epochs} epochs, batch "
            f"{data['batch_size']}, constant learning rate; seeds {data['seeds']} (mean ± sample std over seeds). "
            f"Run time: {data['wall_s']:.0f} s wall, {data['cpu_s']:.0f} s CPU, torch threads "
            f"{data['torch_threads']}.\n\n## Learning-rate search (first seed, final validation accuracy)\n\n"
            f"{search}\n\n## Curves (mean ± std over seeds)\n\nTrain loss: mean over the epoch's batches; "
            f"epoch 0 = before training.\n\n{curves}\n\n## Does ST-Adam converge faster?\n\nST-Adam vs Adam: "
            "'faster' / 'slower' when the difference of the means exceeds sqrt(std_ST² + std_Adam²), else 'no clear "
            f"difference'.\n\n{verdicts}\n\n![curves](optimizers.png)\n")


def _plot(groups: list[dict[str, Any]], path: Path, *, epochs: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(g["model"] for g in groups))
    datas = list(dict.fromkeys(g["data"] for g in groups))
    fig, axes = plt.subplots(2 * len(models), len(datas), figsize=(5 * len(datas), 3.2 * 2 * len(models)),
                             squeeze=False)
    colors = {"adam": "tab:blue", "stadam": "tab:red", "sgd": "tab:green"}
    for g in groups:
        i, j = models.index(g["model"]), datas.index(g["data"])
        for row, metric, label, scale in ((2 * i, "train_loss", "training loss", 1.0),
                                          (2 * i + 1, "test_accuracy", "test accuracy (%)", 100.0)):
            ax = axes[row][j]
            for opt, o in g["optimizers"].items():
                pts = [(e, m, s) for e, (m, s) in enumerate(o["summary"][metric]) if not math.isnan(m)]
                xs = [p[0] for p in pts]
                ms = [scale * p[1] for p in pts]
                ss = [scale * p[2] for p in pts]
                name = "ST-Adam" if opt == "stadam" else opt.capitalize()
                ax.plot(xs, ms, marker="o", color=colors.get(opt), label=f"{name} (lr {o['lr']:g})")
                ax.fill_between(xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)],
                                color=colors.get(opt), alpha=0.2)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.set_xticks(range(epochs + 1))
            ax.set_title(f"{g['model']}, {g['data']} images")
            ax.legend()
            ax.grid(alpha=0.3)
    fig.suptitle("ST-Adam vs Adam: mean ± std over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
