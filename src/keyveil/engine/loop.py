"""Train and evaluate loops: plain PyTorch, seeded, resumable, and DDP-ready.

Run :func:`fit` in a normal process, or in every process of a ``torchrun``
job: it then joins the process group (gloo on CPU), shards the training set
with a ``DistributedSampler``, averages gradients with DDP, and only rank 0
shows progress, evaluates and writes checkpoints.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from .checkpoint import check_resumable, load_checkpoint, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .optim import make_optimizer

__all__ = ["fit", "evaluate", "train_epoch", "to_input", "seed_everything", "EvalResult", "FitResult",
           "make_loader"]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (model initialization and shuffling become reproducible)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_input(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 ``(B,C,H,W)`` images -> float in ``[0, 1]`` on ``device`` (floats pass through).

    Position-wise, so it commutes with every pixel-rearranging scheme.
    """
    images = images.to(device, non_blocking=True)
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


@dataclass
class EvalResult:
    """Accuracy, mean loss, confusion matrix (rows: true class, columns: predicted) and every prediction.

    ``predictions[i]`` is the predicted class of the dataset's ``i``-th image
    (in order), so two runs can be compared image by image.
    """

    accuracy: float
    loss: float
    n: int
    correct: int
    confusion: list[list[int]] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """What :func:`fit` did: the per-epoch history and the final model (unwrapped from DDP)."""

    model: nn.Module
    history: list[dict[str, Any]]
    epoch: int
    checkpoint: str | None = None


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
                num_workers: int = 0, dist_info: DistInfo | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader; sharded with ``DistributedSampler`` in a multi-process job.

    The shuffle order depends only on ``seed`` and ``epoch``, so a resumed run
    sees the same batches as an uninterrupted one.
    """
    if dist_info is not None and dist_info.distributed:
        sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, persistent_workers=False,
                      pin_memory=dist_info is not None and dist_info.device.type == "cuda")


def _bar(iterable, *, enabled: bool, **kw):
    return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kw)


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                device: torch.device | str, scheduler: Any = None, progress: bool = False,
                desc: str = "train") -> dict[str, float]:
    """One pass over ``loader``; returns this process's ``loss_sum``, ``correct``, ``n``, ``seconds``."""
    model.train()
    loss_sum, correct, n = 0.0, 0, 0
    start = time.perf_counter()
    bar = _bar(loader, enabled=progress, desc=desc, unit="batch")
    for images, labels in bar:
        x, y = to_input(images, device), labels.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        b = y.shape[0]
        loss_sum += loss.item() * b
        correct += int((logits.argmax(1) == y).sum())
        n += b
        if progress:
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{correct / n:.3f}")
    return {"loss_sum": loss_sum, "correct": correct, "n": n, "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, num_classes: int | None = None, batch_size: int = 512,
             device: torch.device | str | None = None, num_workers: int = 0, progress: bool = False,
             desc: str = "evaluate") -> EvalResult:
    """Accuracy, mean cross-entropy and confusion matrix of ``model`` on ``dataset``.

    Args:
        model: takes float ``[0, 1]`` images (see :func:`to_input`).
        dataset: yields ``(uint8 image, label)``.
        num_classes: size of the confusion matrix (default: the dataset's ``num_classes``).

    Examples:
        >>> import torch
        >>> from keyveil.data import TensorImageDataset
        >>> ds = TensorImageDataset(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), [0, 1, 1, 1], name="toy",
        ...                         split="test", classes=["a", "b"])
        >>> always_b = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> with torch.no_grad():
        ...     _ = always_b[1].weight.zero_(); _ = always_b[1].bias.copy_(torch.tensor([0.0, 1.0]))
        >>> r = evaluate(always_b, ds)
        >>> r.accuracy, r.confusion
        (0.75, [[0, 1], [0, 3]])
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    k = num_classes if num_classes is not None else dataset.num_classes
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    loss_sum, n = 0.0, 0
    predictions: list[torch.Tensor] = []
    for images, labels in _bar(loader, enabled=progress, desc=desc, unit="batch"):
        logits = model(to_input(images, device))
        y = labels.to(logits.device)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        pred = logits.argmax(1)
        predictions.append(pred.cpu())
        confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).reshape(k, k)
        n += y.shape[0]
    model.train(was_training)
    correct = int(confusion.diagonal().sum())
    return EvalResult(accuracy=correct / max(n, 1), loss=loss_sum / max(n, 1), n=n, correct=correct,
                      confusion=confusion.tolist(),
                      predictions=torch.cat(predictions).tolist() if predictions else [])


def _cosine(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, min(100, total_steps // 20))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(
    model: nn.Module,
    train_set: Dataset,
    *,
    test_set: Dataset | None = None,
    epochs: int,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float | None = None,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    seed: int = 0,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``train_set`` for ``epochs`` epochs (in total, counting resumed ones).

    Args:
        model: takes float ``[0, 1]`` images; its initial weights should come
            from a seeded build (call :func:`seed_everything` first).
        train_set, test_set: datasets yielding ``(uint8 image, label)``; plain
            or encrypted (:class:`keyveil.data.EncryptedDataset`). The test set
            is evaluated after every epoch (on rank 0).
        epochs: total number of epochs.
        optimizer: ``"sgd"``, ``"adam"`` or ``"stadam"`` (see :func:`make_optimizer`).
        lr: learning rate (default per optimizer).
        schedule: ``"cosine"`` (short warm-up, then cosine decay per step) or ``"constant"``.
        seed: seeds the shuffle order (per epoch).
        device: default CUDA if available (``cuda:LOCAL_RANK`` under torchrun), else CPU.
        checkpoint: path written (by rank 0, atomically) after every epoch.
        resume: a checkpoint to continue from: weights, optimizer and schedule
            state and the epoch count are restored.
        meta: metadata stored in the checkpoint (``arch``, ``model_kwargs``,
            ``dataset``, ``scheme``...): never put a key's secret here.
        on_epoch: called on rank 0 with each epoch's metrics.

    Returns:
        :class:`FitResult` with the trained (unwrapped) model and the history.

    Examples:
        >>> import torch
        >>> from keyveil.data import TensorImageDataset
        >>> from keyveil.engine import build_model
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
        >>> ds = TensorImageDataset(x, (x.float().mean((1, 2, 3)) > 127).long(), name="toy", split="train",
        ...                         classes=["dark", "bright"])
        >>> seed_everything(0)
        >>> r = fit(build_model("smallcnn", in_channels=1, num_classes=2, image_size=(8, 8)), ds, test_set=ds,
        ...         epochs=2, batch_size=16, progress=False, device="cpu")
        >>> r.epoch, sorted(r.history[-1])[:3]
        (2, ['epoch', 'images_per_s', 'lr'])
    """
    info = init_distributed(device)
    dev = info.device
    model = model.to(dev)
    opt = make_optimizer(optimizer, model.parameters(), lr=lr, weight_decay=weight_decay)
    per_rank = math.ceil(len(train_set) / info.world_size)
    drop_last = per_rank > batch_size and per_rank % batch_size == 1  # never a lone sample (BatchNorm)
    steps_per_epoch = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    if schedule == "cosine":
        sched = _cosine(opt, steps_per_epoch * epochs)
    elif schedule == "constant":
        sched = None
    else:
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    history: list[dict[str, Any]] = []
    start_epoch = 0
    meta = dict(meta or {})
    if resume is not None:
        state = load_checkpoint(resume, map_location=dev)
        check_resumable(state, meta, resume)
        model.load_state_dict(state["model_state"])
        opt.load_state_dict(state["optimizer_state"])
        if sched is not None and state.get("scheduler_state"):
            sched.load_state_dict(state["scheduler_state"])
        history = list(state.get("history", []))
        start_epoch = int(state["epoch"])
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    for epoch in range(start_epoch, epochs):
        loader = make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed, epoch=epoch,
                             num_workers=num_workers, dist_info=info, drop_last=drop_last)
        stats = train_epoch(net, loader, opt, device=dev, scheduler=sched, progress=progress and info.is_main,
                            desc=f"epoch {epoch + 1}/{epochs}")
        loss_sum, correct, n = all_reduce_sum([stats["loss_sum"], stats["correct"], stats["n"]], dev)
        seconds = max(all_reduce_sum([stats["seconds"]], dev)[0] / info.world_size, 1e-9)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / n, "train_accuracy": correct / n,
                                  "images_per_s": n / seconds, "seconds": seconds,
                                  "lr": opt.param_groups[0]["lr"]}
        if info.is_main and test_set is not None:
            result = evaluate(model, test_set, device=dev, batch_size=max(batch_size, 256), num_workers=num_workers)
            record.update(test_loss=result.loss, test_accuracy=result.accuracy)
        history.append(record)
        if info.is_main:
            if checkpoint is not None:
                save_checkpoint(checkpoint, {
                    **meta, "epoch": epoch + 1, "epochs": epochs, "history": history, "metrics": record,
                    "optimizer": optimizer, "hparams": {"lr": opt.defaults["lr"], "weight_decay": weight_decay,
                                                        "batch_size": batch_size, "schedule": schedule,
                                                        "seed": seed, "world_size": info.world_size},
                    "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer_state": opt.state_dict(),
                    "scheduler_state": sched.state_dict() if sched is not None else None,
                })
            if on_epoch is not None:
                on_epoch(record)
        barrier()
    return FitResult(model=model, history=history, epoch=max(epochs, start_epoch),
                     checkpoint=str(checkpoint) if checkpoint is not None else None)
