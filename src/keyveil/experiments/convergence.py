"""How many epochs the frontier's plain models need: test accuracy per epoch on the frontier's recipe.

The frontier trains every point for a fixed number of epochs (2). A drop is
only the scheme's if the plain reference has converged, and a ViT may need
more epochs than the small CNN. This trains the plain models of given
architectures (:func:`keyveil.experiments.frontier.model_spec` tuples) on
plain Fashion-MNIST padded to 32×32 and records the test accuracy and CPU time
after every epoch. The learning-rate schedule (cosine) spans the whole run, so
epoch ``k`` of an 8-epoch run is not the ``k``-epoch recipe's result.

Examples:
    ``python -c "from keyveil.experiments.convergence import run_convergence; run_convergence(out_dir='out')"``
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import create_dataset
from ..engine import fit, seed_everything
from .common import PaddedDataset, Timer, markdown_table, write_report
from .frontier import build_spec, spec_label

__all__ = ["run_convergence", "DEFAULT_SPECS"]

DEFAULT_SPECS: tuple[tuple[Any, ...], ...] = (("smallcnn",), ("inv-ViT", "patch", 8), ("inv-ViT", "patch", 4))
"""The small CNN and the patch-order-invariant ViT at the frontier's 1/4 and 1/8 patches."""


def run_convergence(
    *, specs: Sequence[tuple[Any, ...]] = DEFAULT_SPECS, epochs: int = 8, limit: int | None = 10000,
    test_limit: int | None = None, batch_size: int = 64, dataset: str = "fashion-mnist", seed: int = 0,
    out_dir: str | Path = "results/frontier", log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train each plain model ``epochs`` epochs; writes ``convergence.md`` / ``.json`` under ``out_dir``."""
    train = PaddedDataset(create_dataset(dataset, "train").limit(limit), 16)
    test = PaddedDataset(create_dataset(dataset, "test").limit(test_limit), 16)
    runs = []
    for spec in specs:
        t = Timer()
        curve: list[dict[str, float]] = []

        def record(m: dict[str, Any], curve: list[dict[str, float]] = curve, t: Timer = t,
                   spec: tuple[Any, ...] = tuple(spec)) -> None:
            curve.append({"epoch": int(m["epoch"]), "test_accuracy": float(m["test_accuracy"]), "cpu_s": t.cpu})
            log(f"  {spec_label(spec)} epoch {m['epoch']}: {100 * m['test_accuracy']:.2f} % ({t.cpu:.0f} s CPU)")

        seed_everything(seed)
        fit(build_spec(spec, train), train, test_set=test, epochs=epochs, batch_size=batch_size, seed=seed,
            progress=False, device="cpu", on_epoch=record)
        runs.append({"model_spec": list(spec), "model": spec_label(spec), "curve": curve, "cpu_s": t.cpu})
    data = {"experiment": "convergence", "dataset": dataset, "train_images": len(train), "test_images": len(test),
            "epochs": epochs, "batch_size": batch_size, "seed": seed, "torch_threads": torch.get_num_threads(),
            "runs": runs}
    header = ["model", *[f"epoch {e}" for e in range(1, epochs + 1)], "CPU s"]
    table = markdown_table(header, [[r["model"], *[f"{100 * c['test_accuracy']:.2f}" for c in r["curve"]],
                                     f"{r['cpu_s']:.0f}"] for r in runs])
    md = (f"# Epochs to converge: the frontier's plain models\n\n{dataset}, {len(train)} training / {len(test)} test "
          f"images padded to 32x32, batch {batch_size}, Adam, cosine schedule over all {epochs} epochs (so epoch k "
          f"here is not the k-epoch recipe), seed {seed}, torch threads {data['torch_threads']}. Test accuracy (%) "
          f"after each epoch.\n\n{table}\n")
    write_report(Path(out_dir), "convergence", md, data)
    return data
