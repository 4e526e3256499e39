"""Train and evaluate loops: plain PyTorch, seeded, resumable, and DDP-ready.

:func:`train_loop` is keyveil's one training loop (epochs of :func:`train_epoch`,
each batch a :func:`train_step`); whoever trains passes what differs as hooks:
the loss (``loss_fn(model, batch) -> (loss, counts)``), the update
(``step(optimizer, loss)``), per-batch reporting (``on_batch``) and the end of
an epoch (``on_epoch``). :func:`fit` (plain classification),
:func:`keyveil.engine.fit_private` (DP-SGD), ``fit_detector``, distillation,
InstaHide training and the attacks' small networks all run through it. The
learning-rate schedule is torch's own (:func:`warmup_cosine`).

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
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from .checkpoint import check_resumable, load_checkpoint, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .optim import make_optimizer

__all__ = ["fit", "evaluate", "train_loop", "train_epoch", "train_step", "classification_loss", "optimizer_step",
           "warmup_cosine", "index_batches", "to_input", "seed_everything", "EvalResult", "FitResult", "make_loader",
           "LossFn", "StepFn"]


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


def index_batches(n: int, batch_size: int, *, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of shuffled index batches over ``n`` in-memory samples (the last batch may be smaller).

    For trainers that hold their data as tensors (the attacks' small networks):
    ``(x[idx], y[idx]) for idx in index_batches(len(x), 64, generator=g)``.

    Examples:
        >>> [b.tolist() for b in index_batches(5, 2, generator=torch.Generator().manual_seed(0))]
        [[4, 0], [1, 3], [2]]
    """
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _bar(iterable, *, enabled: bool, **kw):
    return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kw)


BatchMetrics = dict[str, float]
"""Per-batch counts a loss function reports: ``n`` (samples, weights the loss) plus any others to sum."""

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, BatchMetrics]]
"""``loss_fn(model, batch) -> (loss, metrics)``: the forward pass and loss of one training batch."""

StepFn = Callable[[torch.optim.Optimizer, torch.Tensor], None]
"""``step(optimizer, loss)``: turn a batch's loss into a parameter update."""


def classification_loss(device: torch.device | str | None = None) -> LossFn:
    """Cross-entropy on ``(uint8 images, labels)`` batches; reports ``n`` and ``correct``.

    An empty batch (Poisson sampling in DP-SGD can draw one) gives a zero loss
    that still has a graph, so the step is taken and counted; it adds nothing
    to the metrics.

    Args:
        device: where inputs go (default: the model's first parameter's device).
    """

    def loss_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, BatchMetrics]:
        images, labels = batch
        dev = device if device is not None else next((p.device for p in model.parameters()), "cpu")
        x, y = to_input(images, dev), labels.to(dev, non_blocking=True)
        logits = model(x)
        b = y.shape[0]
        if not b:
            return logits.sum(), {"n": 0, "correct": 0}
        return F.cross_entropy(logits, y), {"n": b, "correct": int((logits.argmax(1) == y).sum())}

    return loss_fn


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """The default step: clear the gradients, backpropagate ``loss``, take one optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any, *, loss_fn: LossFn,
               step: StepFn = optimizer_step) -> tuple[torch.Tensor, BatchMetrics]:
    """One training step on ``batch``: ``loss_fn``, then ``step``; returns the (detached) loss and metrics."""
    loss, metrics = loss_fn(model, batch)
    step(optimizer, loss)
    return loss.detach(), metrics


def train_epoch(model: nn.Module, loader: Iterable[Any], optimizer: torch.optim.Optimizer, *,
                device: torch.device | str | None = None, loss_fn: LossFn | None = None,
                step: StepFn = optimizer_step, scheduler: Any = None,
                on_batch: Callable[[int, dict[str, float]], dict[str, str] | None] | None = None,
                progress: bool = False, desc: str = "train") -> dict[str, float]:
    """One pass over ``loader``: a :func:`train_step` per batch, then ``scheduler.step()``.

    Args:
        loader: any iterable of batches (a DataLoader, Opacus' Poisson loader, a generator).
        loss_fn: the batch's forward pass and loss (default :func:`classification_loss` on ``device``).
        step: the update (default :func:`optimizer_step`).
        scheduler: stepped after every batch (per-step schedules).
        on_batch: called after each step with the batch index and the running totals; may return
            extra progress-bar fields.

    Returns:
        This process's totals: ``loss_sum`` (the loss weighted by each batch's ``n``), ``n``, every
        other count the loss reports (``correct`` for classification), ``steps`` and ``seconds``.
    """
    loss_fn = loss_fn if loss_fn is not None else classification_loss(device)
    model.train()
    totals: dict[str, float] = {"loss_sum": 0.0, "n": 0}
    start = time.perf_counter()
    bar = _bar(loader, enabled=progress, desc=desc, unit="batch")
    steps = 0
    for i, batch in enumerate(bar):
        loss, metrics = train_step(model, optimizer, batch, loss_fn=loss_fn, step=step)
        steps += 1
        if scheduler is not None:
            scheduler.step()
        if metrics.get("n", 0):
            totals["loss_sum"] += loss.item() * metrics["n"]
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0) + v
        extra = on_batch(i, totals) if on_batch is not None else None
        if progress and totals["n"]:
            fields = {"loss": f"{totals['loss_sum'] / totals['n']:.3f}"}
            if "correct" in totals:
                fields["acc"] = f"{totals['correct'] / totals['n']:.3f}"
            bar.set_postfix(**fields, **(extra or {}))
    return {**totals, "steps": steps, "seconds": time.perf_counter() - start}


def train_loop(model: nn.Module, optimizer: torch.optim.Optimizer,
               batches: Iterable[Any] | Callable[[int], Iterable[Any]], *, epochs: int, start_epoch: int = 0,
               loss_fn: LossFn | None = None, step: StepFn = optimizer_step, scheduler: Any = None,
               on_batch: Callable[[int, dict[str, float]], dict[str, str] | None] | None = None,
               on_epoch: Callable[[int, dict[str, float]], None] | None = None, progress: bool = False,
               desc: str = "epoch") -> list[dict[str, float]]:
    """keyveil's training loop: epochs ``start_epoch..epochs-1``, each one :func:`train_epoch`.

    Every trainer in keyveil runs through it — plain and DP-SGD classification
    (Opacus' wrapped model, optimizer and Poisson loader go in as they are),
    detection, distillation, InstaHide and the attacks' small networks — and
    passes only what differs: the loss, the update, the batches.

    Args:
        batches: the epoch's batches: an iterable read once per epoch (a DataLoader) or a
            function ``epoch -> iterable`` (a loader reshuffled per epoch, freshly encrypted data).
        epochs: the last epoch (exclusive), counting from 0.
        on_epoch: called after each epoch with its index and :func:`train_epoch`'s totals.
        Others: as in :func:`train_epoch`.

    Returns:
        Each epoch's totals (``epoch`` is the 1-based epoch number).

    Examples:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> data = [(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0]]))]
        >>> mse = lambda m, b: (torch.nn.functional.mse_loss(m(b[0]), b[1]), {"n": 1})
        >>> hist = train_loop(net, opt, data, epochs=3, loss_fn=mse)
        >>> [h["epoch"] for h in hist], hist[-1]["loss_sum"] < hist[0]["loss_sum"]
        ([1, 2, 3], True)
    """
    history: list[dict[str, float]] = []
    for epoch in range(start_epoch, epochs):
        data = batches(epoch) if callable(batches) else batches
        stats = train_epoch(model, data, optimizer, loss_fn=loss_fn, step=step, scheduler=scheduler,
                            on_batch=on_batch, progress=progress, desc=f"{desc} {epoch + 1}/{epochs}")
        stats["epoch"] = epoch + 1
        history.append(stats)
        if on_epoch is not None:
            on_epoch(epoch, stats)
    return history


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


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> LRScheduler:
    """A linear warm-up over ``warmup_steps`` steps, then a cosine decay to 0 at ``total_steps`` (per step).

    torch's own schedulers: ``SequentialLR(LinearLR, CosineAnnealingLR)``. The
    factor at step ``s`` is ``(s + 1) / warmup_steps`` during the warm-up, then
    ``(1 + cos(pi (s - warmup) / (total - warmup))) / 2`` (torch computes it
    recursively, equal to float rounding); no warm-up with ``warmup_steps=0``.

    Examples:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p], lr=1.0)
        >>> sched, lrs = warmup_cosine(opt, 6, 2), []
        >>> for _ in range(6):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 3)); opt.step(); sched.step()
        >>> lrs
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if total_steps < 0 or warmup_steps < 0:
        raise ValueError(f"step counts must be >= 0, got total_steps={total_steps}, warmup_steps={warmup_steps}")
    total_steps = max(1, total_steps)
    warmup_steps = min(warmup_steps, total_steps)
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if not warmup_steps:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def fit_warmup(total_steps: int) -> int:
    """:func:`fit`'s warm-up length: 5 % of the steps, at least 1, at most 100."""
    return max(1, min(100, total_steps // 20))


def _restore_schedule(sched: LRScheduler, state: dict[str, Any]) -> None:
    if "_schedulers" in state or not isinstance(sched, SequentialLR):
        sched.load_state_dict(state)
        return
    # a checkpoint from before SequentialLR (a LambdaLR of the same formula): replay its steps from step 0
    for group, lr in zip(sched.optimizer.param_groups, sched.get_last_lr()):
        group["lr"] = lr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
        for _ in range(int(state["last_epoch"])):
            sched.step()


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
        sched = warmup_cosine(opt, steps_per_epoch * epochs, fit_warmup(steps_per_epoch * epochs))
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
            _restore_schedule(sched, state["scheduler_state"])
        history = list(state.get("history", []))
        start_epoch = int(state["epoch"])
    net: nn.Module = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    def batches(epoch: int) -> DataLoader:
        return make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed, epoch=epoch,
                           num_workers=num_workers, dist_info=info, drop_last=drop_last)

    def end_epoch(epoch: int, stats: dict[str, float]) -> None:
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

    train_loop(net, opt, batches, epochs=epochs, start_epoch=start_epoch, loss_fn=classification_loss(dev),
               scheduler=sched, on_epoch=end_epoch, progress=progress and info.is_main, desc="epoch")
    return FitResult(model=model, history=history, epoch=max(epochs, start_epoch),
                     checkpoint=str(checkpoint) if checkpoint is not None else None)
