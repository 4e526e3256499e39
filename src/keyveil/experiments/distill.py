"""Knowledge distillation on plain and VisualMixer images: the shape of VisualMixer's Table V.

A teacher (the small CNN) is trained on plain or on VisualMixer-encrypted
Fashion-MNIST; a smaller student is distilled from it (Hinton et al. 2015:
``α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE``) on plain or on
VisualMixer images, the teacher seeing the student's inputs. Each student is
tested on test images prepared as its own training images, top-1/3/5. Two
reference rows train the student alone (no teacher). VisualMixer runs as the
paper sets it (``visualmixer-seed``: windows of 2..8 pixels) unless
``scheme`` says otherwise; keyveil's default ``visualmixer`` (one
whole-image window) is much stronger and costs far more accuracy (RESULTS.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import EncryptedDataset, create_dataset
from ..data.encrypted import TEST_NONCE_OFFSET
from ..engine import build_model, fit, seed_everything
from ..engine.loop import LossFn, make_loader, to_input, train_loop
from ..engine.optim import make_optimizer
from ..keys import Key
from ..schemes import PrivacyWarning, create
from .common import PaddedDataset, Timer, markdown_table, write_report

__all__ = ["run_distill", "distillation_loss", "distillation_loss_fn", "topk_accuracy"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                      temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al.'s loss: softened teacher/student KL (scaled by ``T²``) mixed with cross-entropy.

    Examples:
        >>> t = torch.tensor([[2.0, 0.0, -1.0]])
        >>> float(distillation_loss(t, t, torch.tensor([0]), alpha=1.0))  # same logits: KL is zero
        0.0
    """
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ValueError(f"temperature must be > 0 and alpha in [0, 1]; got {temperature}, {alpha}")
    soft = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                    reduction="batchmean", log_target=True)
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


@torch.no_grad()
def topk_accuracy(model: nn.Module, dataset, ks: tuple[int, ...] = (1, 3, 5), *,
                  batch_size: int = 500) -> dict[int, float]:
    """Fraction of ``dataset`` whose label is among the model's ``k`` highest logits, for each ``k``."""
    model.eval()
    hits = dict.fromkeys(ks, 0)
    n = 0
    for images, labels in make_loader(dataset, batch_size=batch_size, shuffle=False):
        top = model(to_input(images, "cpu")).topk(max(ks), 1).indices
        for k in ks:
            hits[k] += int((top[:, :k] == labels[:, None]).any(1).sum())
        n += labels.shape[0]
    return {k: hits[k] / max(n, 1) for k in ks}


def distillation_loss_fn(teacher: nn.Module, *, temperature: float, alpha: float) -> LossFn:
    """The loss hook of :func:`keyveil.engine.train_loop` that distils ``teacher`` (frozen) into the model."""

    def loss_fn(student: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        x = to_input(images, "cpu")
        with torch.no_grad():
            t = teacher(x)
        loss = distillation_loss(student(x), t, labels, temperature=temperature, alpha=alpha)
        return loss, {"n": int(labels.shape[0])}

    return loss_fn


def _distil(student: nn.Module, teacher: nn.Module, train, *, epochs: int, batch_size: int, seed: int,
            temperature: float, alpha: float, progress: bool) -> None:
    opt = make_optimizer("adam", student.parameters())
    teacher.eval()
    train_loop(student, opt, lambda epoch: make_loader(train, batch_size=batch_size, shuffle=True, seed=seed,
                                                       epoch=epoch),
               epochs=epochs, loss_fn=distillation_loss_fn(teacher, temperature=temperature, alpha=alpha),
               progress=progress, desc="distil")


def run_distill(
    *,
    dataset: str = "fashion-mnist",
    scheme: str = "visualmixer-seed",
    limit: int | None = 10000,
    test_limit: int | None = None,
    teacher_epochs: int = 2,
    student_epochs: int = 2,
    batch_size: int = 64,
    temperature: float = 4.0,
    alpha: float = 0.9,
    student_width: int = 8,
    seed: int = 0,
    out_dir: str | Path = "results",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Teacher on plain / ``scheme`` × student on plain / ``scheme``; writes ``distill.md`` and ``distill.json``."""
    if teacher_epochs < 1 or student_epochs < 1:
        raise ValueError(f"epochs must be >= 1; got teacher {teacher_epochs}, student {student_epochs}")
    timer = Timer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = Key.from_seed(seed)
        enc = create(scheme, key)
    train = PaddedDataset(create_dataset(dataset, "train").limit(limit), 16)
    test = PaddedDataset(create_dataset(dataset, "test").limit(test_limit), 16)
    kw = dict(in_channels=train.channels, num_classes=train.num_classes, image_size=train.size)
    sets = {"plain": (train, test),
            scheme: (EncryptedDataset(train, enc, randomness="fresh"),
                     EncryptedDataset(test, enc, randomness="nonce", nonce_offset=TEST_NONCE_OFFSET))}
    log(f"{dataset}: {len(train)} train / {len(test)} test, padded to {train.size}; scheme {scheme}; teacher "
        f"smallcnn {teacher_epochs} epochs, student smallcnn(width={student_width}) {student_epochs} epochs")
    rows: list[dict[str, Any]] = []
    teachers: dict[str, nn.Module] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # the seed's setting is the one compared, on purpose
        for data_name, (tr, te) in sets.items():
            t = Timer()
            seed_everything(seed)
            teacher = fit(build_model("smallcnn", **kw), tr, epochs=teacher_epochs, batch_size=batch_size,
                          seed=seed, progress=progress, device="cpu").model.eval()
            teachers[data_name] = teacher
            rows.append({"role": "teacher", "teacher_data": data_name, "student_data": None,
                         "topk": topk_accuracy(teacher, te), "cpu_s": t.cpu})
            log(f"  teacher on {data_name}: top-1 {100 * rows[-1]['topk'][1]:.2f} %  ({t.cpu:.0f} s CPU)")
        for student_data, (tr, te) in sets.items():
            for teacher_data in (None, *sets):
                t = Timer()
                seed_everything(seed + 1)
                student = build_model("smallcnn", width=student_width, hidden=32, **kw)
                if teacher_data is None:
                    student = fit(student, tr, epochs=student_epochs, batch_size=batch_size, seed=seed,
                                  progress=progress, device="cpu").model
                else:
                    _distil(student, teachers[teacher_data], tr, epochs=student_epochs, batch_size=batch_size,
                            seed=seed, temperature=temperature, alpha=alpha, progress=progress)
                rows.append({"role": "student", "teacher_data": teacher_data, "student_data": student_data,
                             "topk": topk_accuracy(student, te), "cpu_s": t.cpu})
                log(f"  student on {student_data}, teacher {teacher_data or 'none'}: top-1 "
                    f"{100 * rows[-1]['topk'][1]:.2f} %  ({t.cpu:.0f} s CPU)")
    table = markdown_table(
        ["model", "teacher trained on", "student trained on", "top-1 (%)", "top-3 (%)", "top-5 (%)", "CPU s"],
        [["teacher" if r["role"] == "teacher" else "student", r["teacher_data"] or "— (no teacher)",
          r["student_data"] or "—", *[f"{100 * r['topk'][k]:.2f}" for k in (1, 3, 5)], f"{r['cpu_s']:.0f}"]
         for r in rows])
    md = (f"# Knowledge distillation on plain and {scheme} images (VisualMixer Table V's shape)\n\n"
          f"Command: `keyveil experiment distill` (key {key.fingerprint}, a fixed seed). Run time: "
          f"{timer.wall:.0f} s wall, {timer.cpu:.0f} s CPU, torch threads {torch.get_num_threads()}.\n\n"
          f"{dataset}: {len(train)} training / {len(test)} test images padded to {train.size[0]}x{train.size[1]}. "
          f"Teacher: smallcnn, {teacher_epochs} epochs of Adam; student: smallcnn(width={student_width}, hidden=32), "
          f"{student_epochs} epochs, distilled with T={temperature}, α={alpha} on its own training images (the "
          "teacher sees the student's inputs); each model is tested on test images prepared as its training "
          f"images. Privacy of `{scheme}`: see RESULTS.md (privacy–utility frontier).\n\n{table}\n")
    data = {"experiment": "distill", "key_fingerprint": key.fingerprint, "dataset": dataset, "scheme": scheme,
            "train_images": len(train), "test_images": len(test), "teacher_epochs": teacher_epochs,
            "student_epochs": student_epochs, "temperature": temperature, "alpha": alpha,
            "student_width": student_width,
            "rows": [{**r, "topk": {str(k): v for k, v in r["topk"].items()}} for r in rows],
            "wall_s": timer.wall, "cpu_s": timer.cpu}
    data["files"] = [str(p) for p in write_report(Path(out_dir), "distill", md, data)]
    return data
