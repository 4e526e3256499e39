"""Object detection: a small torchvision FCOS (no downloaded weights), its training loop and metrics.

* :func:`build_detector` — torchvision's ``FCOS`` on a small convolutional
  backbone (two levels, strides 8 and 16, random initialization: nothing is
  downloaded), with a transform that normalizes and batches but **never
  resizes** (:class:`FixedSizeTransform`), so a pixel shuffle of the input
  commutes with everything before the backbone (see
  :mod:`keyveil.models.keyed_detection`).
* :func:`fit_detector` / :func:`predict_detections` — AdamW training on
  ``(uint8 image, {boxes, labels})`` datasets, and inference.
* :func:`detection_metrics` — mAP@[.5:.95], mAP@.5, mAP@.75 and COCO recall
  (``mar_100``) from torchmetrics' ``MeanAveragePrecision`` (pycocotools
  backend), plus precision and recall at one operating point
  (:func:`precision_recall`: score ≥ ``score_threshold`` (0.5), IoU ≥ 0.5, same class,
  greedy by score), the way detection tables such as VisualMixer's Table VI
  report them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou

from ..data.detection import collate_detection
from .loop import train_loop, warmup_cosine

__all__ = ["build_detector", "FixedSizeTransform", "SmallDetectionBackbone", "fit_detector", "predict_detections",
           "detection_metrics", "precision_recall", "DetectionResult", "detector_from_checkpoint", "DETECTORS",
           "to_float_images"]

DETECTORS = ("fcos-small",)


class FixedSizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without the resize: normalize, then batch (pad to the largest image).

    Keyed detection needs it: a resize (interpolation) mixes neighbouring
    pixels, which does not commute with a pixel shuffle; normalization per
    channel does. With images of one size nothing is padded.
    """

    def __init__(self, image_mean: Sequence[float], image_std: Sequence[float], size_divisible: int = 1) -> None:
        super().__init__(min_size=1, max_size=1 << 30, image_mean=list(image_mean), image_std=list(image_std),
                         size_divisible=size_divisible)

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        return image, target


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallDetectionBackbone(nn.Module):
    """Plain conv stages to strides 8 and 16; each level projected to ``out_channels`` by a 1×1 conv.

    Only convolutions, BatchNorm and ReLU: every operation is a convolution or
    acts position by position (no upsampling), so a keyed conversion carries it.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        w = int(width)
        self.stem = nn.Sequential(*_conv(in_channels, w // 2, 2), *_conv(w // 2, w, 2), *_conv(w, w, 1))  # /4
        self.stage8 = nn.Sequential(*_conv(w, 2 * w, 2), *_conv(2 * w, 2 * w, 1))  # /8
        self.stage16 = nn.Sequential(*_conv(2 * w, 2 * w, 2), *_conv(2 * w, 2 * w, 1))  # /16
        self.lateral8 = nn.Conv2d(2 * w, w, 1)
        self.lateral16 = nn.Conv2d(2 * w, w, 1)
        self.out_channels = w

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c8 = self.stage8(self.stem(x))
        c16 = self.stage16(c8)
        return OrderedDict([("0", self.lateral8(c8)), ("1", self.lateral16(c16))])


def build_detector(arch: str = "fcos-small", *, num_classes: int, in_channels: int = 1, width: int = 32,
                   head_convs: int = 2, score_thresh: float = 0.05, image_mean: Sequence[float] | None = None,
                   image_std: Sequence[float] | None = None) -> FCOS:
    """torchvision ``FCOS`` with :class:`SmallDetectionBackbone`, random weights, no resize.

    Args:
        arch: ``"fcos-small"`` (the only one so far).
        num_classes: classes including the background (``len(dataset.categories)``).
        in_channels: image channels.
        width: backbone/head channels (a multiple of 32: the head's GroupNorm uses 32 groups).
        head_convs: convolutions in each head tower (torchvision's default is 4).
        score_thresh: detections below this score are dropped before NMS.
        image_mean, image_std: per-channel normalization of ``[0, 1]`` images (default 0.5, 0.5).
    """
    if arch not in DETECTORS:
        raise ValueError(f"unknown detector {arch!r}; known: {', '.join(DETECTORS)}")
    if width % 32 or width < 32:
        raise ValueError(f"width must be a positive multiple of 32 (GroupNorm with 32 groups), got {width}")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so it must be >= 2; got {num_classes}")
    backbone = SmallDetectionBackbone(in_channels, width)
    anchors = AnchorGenerator(((8,), (16,)), ((1.0,), (1.0,)))  # FCOS: one point per location, size = stride
    head = FCOSHead(width, 1, num_classes, num_convs=head_convs)
    mean = list(image_mean) if image_mean is not None else [0.5] * in_channels
    std = list(image_std) if image_std is not None else [0.5] * in_channels
    model = FCOS(backbone, num_classes, anchor_generator=anchors, head=head, score_thresh=score_thresh,
                 nms_thresh=0.6, detections_per_img=100, topk_candidates=1000, image_mean=mean, image_std=std)
    model.transform = FixedSizeTransform(mean, std)
    return model


def to_float_images(images: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """uint8 ``(C,H,W)`` images -> float ``[0, 1]`` (position-wise: commutes with pixel rearrangements)."""
    return [x.to(device).float().div(255) if x.dtype == torch.uint8 else x.to(device).float() for x in images]


def _loader(ds, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> DataLoader:
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, collate_fn=collate_detection)


@dataclass
class DetectionResult:
    """What :func:`fit_detector` returns: the trained model and one record per epoch."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)


def fit_detector(
    model: nn.Module,
    train,
    *,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    test_set=None,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> DetectionResult:
    """Train a torchvision detector (loss = the sum of its losses) with AdamW and a cosine schedule.

    The loop is :func:`keyveil.engine.train_loop`; the warm-up is 10 % of the steps (at most 100).

    ``test_set`` (optional) is scored with :func:`detection_metrics` after the last epoch.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if len(train) == 0:
        raise ValueError("the training set is empty")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train) / batch_size)
    sched = warmup_cosine(opt, steps, min(100, steps // 10))
    result = DetectionResult(model)

    def detection_loss(net: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = net(to_float_images(images, device), targets)
        return sum(losses.values()), {"n": len(images)}

    def end_epoch(epoch: int, stats: dict[str, float]) -> None:
        seconds = max(stats["seconds"], 1e-9)
        rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": stats["loss_sum"] / max(stats["n"], 1),
                               "seconds": seconds, "images_per_s": stats["n"] / seconds}
        if test_set is not None and epoch == epochs - 1:
            rec.update({f"test_{k}": v for k, v in detection_metrics(
                predict_detections(model, test_set, device=device), test_set).items()})
        result.history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)

    train_loop(model, opt, lambda epoch: _loader(train, batch_size, shuffle=True, seed=seed, epoch=epoch),
               epochs=epochs, loss_fn=detection_loss, scheduler=sched, on_epoch=end_epoch, progress=progress)
    return result


@torch.no_grad()
def predict_detections(model: nn.Module, dataset, *, batch_size: int = 32,
                       device: str | torch.device = "cpu") -> list[dict[str, torch.Tensor]]:
    """The model's detections (``boxes``, ``scores``, ``labels``; on the CPU) for every image, in order."""
    model.eval()
    out: list[dict[str, torch.Tensor]] = []
    for images, _ in _loader(dataset, batch_size, shuffle=False):
        out += [{k: v.cpu() for k, v in d.items()} for d in model(to_float_images(images, device))]
    return out


def _targets(dataset) -> list[dict[str, torch.Tensor]]:
    return [dataset[i][1] for i in range(len(dataset))]


def precision_recall(preds: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]], *,
                     iou_threshold: float = 0.5, score_threshold: float = 0.5) -> tuple[float, float]:
    """Precision and recall at one operating point.

    Detections with score ≥ ``score_threshold`` are matched greedily (highest
    score first) to unmatched ground-truth boxes of the same label with IoU ≥
    ``iou_threshold``. Precision = matched / detections, recall = matched /
    ground-truth boxes (no detections: precision 1.0 if there is nothing to find, else 0.0;
    no ground truth: recall 1.0).

    Examples:
        >>> import torch
        >>> t = [{"boxes": torch.tensor([[0., 0., 10., 10.]]), "labels": torch.tensor([1])}]
        >>> p = [{"boxes": torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]]),
        ...       "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1])}]
        >>> precision_recall(p, t)
        (0.5, 1.0)
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} images")
    tp = n_pred = n_gt = 0
    for p, t in zip(preds, targets):
        keep = p["scores"] >= score_threshold
        pb, ps, pl = p["boxes"][keep], p["scores"][keep], p["labels"][keep]
        n_pred += int(keep.sum())
        n_gt += int(t["labels"].numel())
        if pb.numel() == 0 or t["boxes"].numel() == 0:
            continue
        iou = box_iou(pb.float(), t["boxes"].float())
        iou[pl[:, None] != t["labels"][None, :]] = -1
        used = torch.zeros(t["labels"].numel(), dtype=torch.bool)
        for i in torch.argsort(ps, descending=True, stable=True).tolist():
            row = iou[i].masked_fill(used, -1)
            j = int(row.argmax())
            if row[j] >= iou_threshold:
                used[j] = True
                tp += 1
    return (tp / n_pred if n_pred else float(n_gt == 0)), (tp / n_gt if n_gt else 1.0)


def detection_metrics(preds: Sequence[dict[str, torch.Tensor]], dataset_or_targets, *,
                      score_threshold: float = 0.5) -> dict[str, float]:
    """mAP@[.5:.95] (``map``), ``map_50``, ``map_75``, ``mar_100`` (torchmetrics) and ``precision``/``recall``.

    Args:
        preds: one dict per image with ``boxes`` (xyxy), ``scores``, ``labels``.
        dataset_or_targets: a detection dataset or the list of its targets.
        score_threshold: the operating point of :func:`precision_recall`.

    Raises:
        ImportError: torchmetrics/pycocotools are missing (``pip install 'keyveil[detection]'``).
    """
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError:
        raise ImportError("detection metrics need torchmetrics and pycocotools: pip install 'keyveil[detection]'") \
            from None
    targets = list(dataset_or_targets) if isinstance(dataset_or_targets, list) else _targets(dataset_or_targets)
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} images")
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    metric.update([{k: p[k].float() if k != "labels" else p[k] for k in ("boxes", "scores", "labels")} for p in preds],
                  [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in targets])
    m = metric.compute()
    prec, rec = precision_recall(preds, targets, score_threshold=score_threshold)
    out = {k: float(m[k]) for k in ("map", "map_50", "map_75", "mar_100")}
    return {**out, "precision": prec, "recall": rec, "images": len(targets),
            "objects": sum(int(t["labels"].numel()) for t in targets)}


def detector_from_checkpoint(state: dict[str, Any]) -> nn.Module:
    """Rebuild a detector saved by ``keyveil train --task detection`` (eval mode)."""
    if state.get("task") != "detection":
        raise ValueError("this checkpoint holds a classifier, not a detector (trained without --task detection)")
    model = build_detector(state["arch"], **state["model_kwargs"])
    model.load_state_dict(state["model_state"])
    return model.eval()
