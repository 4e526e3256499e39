"""Object-detection datasets: real objects on canvases (offline) and COCO-format folders (docs/design.md §9).

Every detection dataset yields ``(image, target)``: ``image`` a uint8
``(C,H,W)`` tensor (so schemes apply exactly) and ``target`` a dict with
``boxes`` (float32 ``(N, 4)``, ``x1, y1, x2, y2`` in pixels, torchvision's
convention: a box covering pixel columns ``a..b`` has ``x1 = a``, ``x2 = b + 1``)
and ``labels`` (int64 ``(N,)``, ``1..K``; ``0`` is the background, as
torchvision's detectors expect). ``dataset.categories[label]`` names a label.

* ``fashion-canvas`` — **real objects in a synthetic layout**: Fashion-MNIST
  items (real photographs of clothing, 28×28) resized to a random side and
  pasted at random positions on black canvases, 1–4 per canvas, boxes from
  each pasted item's non-zero pixels, a fixed seed. Training canvases use
  Fashion-MNIST's training items, test canvases its test items (held-out
  objects, held-out layouts).
* ``coco`` — a folder in torchvision's ``CocoDetection`` layout given with
  ``--data-dir`` (``annotations/instances_{split}.json`` plus the images
  under ``{split}/``; the ``…2017`` names work too). Needs pycocotools
  (``pip install 'keyveil[detection]'``).

Examples:
    >>> from keyveil.data.detection import CanvasDetection
    >>> import torch
    >>> items = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    >>> items[:, :, 4:24, 6:20] = 200
    >>> ds = CanvasDetection.generate(items, torch.tensor([0, 1, 2]), ["a", "b", "c"], count=2, size=(40, 40),
    ...                               seed=0, name="toy", split="train")
    >>> x, t = ds[0]
    >>> x.dtype, tuple(x.shape), t["boxes"].dtype, t["labels"].min() >= 1
    (torch.uint8, (1, 40, 40), torch.float32, tensor(True))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import KeyveilError
from .registry import Availability, DatasetSource, DatasetUnavailableError, create_dataset, register_dataset
from .sources import FASHION_CLASSES

__all__ = ["DetectionDataset", "CanvasDetection", "CocoDetectionDataset", "EncryptedDetection", "FashionCanvas",
           "CocoFolder", "DetectionDataError", "is_detection_dataset", "collate_detection", "CANVAS_SIZE"]

#: The embedded set's canvas side (pixels): small enough to train a detector on one CPU thread in minutes.
CANVAS_SIZE = 64


class DetectionDataError(KeyveilError):
    """A detection dataset's files or annotations are missing or malformed; the message says what to do."""


class DetectionDataset(Dataset):
    """Base class: uint8 images with boxes and labels.

    Subclasses set :attr:`name`, :attr:`split`, :attr:`categories` (index 0 is
    ``"__background__"``), :attr:`channels`, :attr:`size` (``None`` when the
    images differ in size) and implement :meth:`__getitem__` / ``__len__``.
    """

    task = "detection"
    name: str = ""
    split: str = ""
    categories: list[str]
    channels: int
    size: tuple[int, int] | None

    @property
    def num_classes(self) -> int:
        """Classes a detector predicts, the background included (torchvision's ``num_classes``)."""
        return len(self.categories)

    @property
    def info(self) -> dict[str, Any]:
        """What a checkpoint records about the data."""
        return {"name": self.name, "split": self.split, "task": "detection", "num_classes": self.num_classes,
                "categories": list(self.categories), "channels": self.channels,
                "size": None if self.size is None else list(self.size), "length": len(self)}

    def limit(self, n: int | None) -> DetectionDataset:
        """The first ``n`` images (all of them for ``None``)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"a limit must be at least 1, got {n}")
        return DetectionSubset(self, range(n))

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class DetectionSubset(DetectionDataset):
    """Some images of a detection dataset, in the given order."""

    def __init__(self, base: DetectionDataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, [int(i) for i in indices]
        self.name, self.split, self.categories = base.name, base.split, list(base.categories)
        self.channels, self.size = base.channels, base.size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.base[self.indices[index]]


def is_detection_dataset(ds: Any) -> bool:
    """Whether ``ds`` yields ``(image, {boxes, labels})`` rather than ``(image, label)``."""
    return getattr(ds, "task", None) == "detection"


def collate_detection(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """A ``DataLoader`` collate: lists of images and targets (detectors take lists)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def tight_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(x1, y1, x2, y2)`` of a 2-D mask's non-zero pixels (``x2``, ``y2`` exclusive), ``None`` if empty."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if rows.numel() == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


class CanvasDetection(DetectionDataset):
    """Real objects pasted on black canvases, each canvas made from its own seed (``(seed, index)``).

    Build one with :meth:`generate`. Canvases are made when first fetched and
    kept, so a prefix (``limit``) costs only its own canvases, and canvas ``i``
    is the same whatever ``count`` is. :meth:`placements` lists, per object,
    ``(item index, side, x, y)``: the item was resized to ``side×side`` and
    pasted with its top-left corner at ``(x, y)`` (overlaps keep the brighter pixel).
    """

    def __init__(self, items: torch.Tensor, item_labels: torch.Tensor, categories: list[str], *, count: int,
                 size: tuple[int, int], objects: tuple[int, int], side: tuple[int, int], max_overlap: float,
                 seed: int, name: str, split: str) -> None:
        self.items, self.item_labels = items, torch.as_tensor(item_labels, dtype=torch.int64)
        self.categories = list(categories)
        self.count, self.objects, self.side = int(count), tuple(objects), tuple(side)
        self.max_overlap, self.seed = float(max_overlap), int(seed)
        self.name, self.split = name, split
        self.channels, self.size = int(items.shape[1]), (int(size[0]), int(size[1]))
        self._cache: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor], list[tuple[int, int, int, int]]]] = {}

    @classmethod
    def generate(
        cls,
        items: torch.Tensor,
        item_labels: torch.Tensor,
        classes: Sequence[str],
        *,
        count: int,
        size: tuple[int, int] = (CANVAS_SIZE, CANVAS_SIZE),
        objects: tuple[int, int] = (1, 4),
        side: tuple[int, int] = (16, 32),
        max_overlap: float = 0.2,
        seed: int = 0,
        name: str = "canvas",
        split: str = "train",
    ) -> CanvasDetection:
        """``count`` canvases of ``objects[0]..objects[1]`` random items, each resized to a side in ``side``.

        Args:
            items: uint8 ``(N, C, h, w)`` object images on a zero background.
            item_labels: ``(N,)`` class indices ``0..K-1`` (stored as ``1..K``).
            classes: the ``K`` class names.
            count: canvases to make.
            size: canvas ``(H, W)``.
            objects: fewest and most objects per canvas.
            side: smallest and largest side (pixels) an item is resized to.
            max_overlap: largest IoU a new object's box may have with an earlier one
                (a placement is redrawn up to 50 times; then the object is left out).
            seed: the layout's seed (numpy PCG64, one stream per canvas).
        """
        h, w = int(size[0]), int(size[1])
        lo, hi = int(side[0]), int(side[1])
        if count < 1 or not 1 <= objects[0] <= objects[1] or not 1 <= lo <= hi or hi > min(h, w):
            raise ValueError(f"bad canvas settings: count={count}, objects={objects}, side={side} on {h}x{w} "
                             "(need count >= 1, 1 <= min <= max objects, 1 <= min <= max side <= canvas side)")
        if items.dtype != torch.uint8 or items.ndim != 4 or len(items) == 0:
            raise ValueError(f"items must be uint8 (N, C, h, w) with N >= 1, got {items.dtype} {tuple(items.shape)}")
        if len(item_labels) != len(items):
            raise ValueError(f"{len(items)} items but {len(item_labels)} labels")
        return cls(items, item_labels, ["__background__", *classes], count=count, size=(h, w), objects=objects,
                   side=(lo, hi), max_overlap=max_overlap, seed=seed, name=name, split=split)

    def _make(self, i: int):
        h, w = self.size
        rng = np.random.Generator(np.random.PCG64([self.seed, i]))
        image = torch.zeros(self.channels, h, w, dtype=torch.uint8)
        boxes: list[tuple[int, int, int, int]] = []
        labels: list[int] = []
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(self.objects[0], self.objects[1] + 1))):
            j = int(rng.integers(len(self.items)))
            s = int(rng.integers(self.side[0], self.side[1] + 1))
            obj = F.interpolate(self.items[j:j + 1].float(), size=(s, s), mode="bilinear", antialias=True,
                                align_corners=False).round().clamp(0, 255).to(torch.uint8)[0]
            box = tight_box(obj.amax(0) > 0)
            if box is None:
                continue
            for _try in range(50):
                x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
                cand = (box[0] + x, box[1] + y, box[2] + x, box[3] + y)
                if all(_iou(cand, b) <= self.max_overlap for b in boxes):
                    break
            else:
                continue
            region = image[:, y:y + s, x:x + s]
            torch.maximum(region, obj, out=region)
            boxes.append(cand)
            labels.append(int(self.item_labels[j]) + 1)
            placed.append((j, s, x, y))
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.tensor(labels, dtype=torch.int64)}
        return image, target, placed

    def _get(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} canvases")
        index %= len(self)
        if index not in self._cache:
            self._cache[index] = self._make(index)
        return self._cache[index]

    def placements(self, index: int) -> list[tuple[int, int, int, int]]:
        """``(item index, side, x, y)`` of every object pasted on canvas ``index``."""
        return list(self._get(index)[2])

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        image, t, _ = self._get(index)
        return image, {"boxes": t["boxes"].clone(), "labels": t["labels"].clone()}


class EncryptedDetection(DetectionDataset):
    """``base`` with ``scheme`` applied to every image (boxes and labels unchanged).

    Args mirror :class:`keyveil.data.EncryptedDataset`: ``randomness="nonce"``
    encrypts image ``i`` with nonce ``nonce_offset + i`` (reproducible),
    ``"fresh"`` draws new randomness at every fetch.
    """

    def __init__(self, base: DetectionDataset, scheme, *, randomness: str = "nonce", nonce_offset: int = 0) -> None:
        if randomness not in ("nonce", "fresh"):
            raise ValueError(f"randomness must be 'nonce' or 'fresh', got {randomness!r}")
        if base.size is None:
            raise DetectionDataError("encrypting needs images of one size: load the COCO folder with "
                                     "image_size=(H, W) (--image-size H W)")
        scheme.check_geometry((base.channels, *base.size))
        self.base, self.scheme, self.randomness, self.nonce_offset = base, scheme, randomness, int(nonce_offset)
        self.name, self.split, self.categories = base.name, base.split, list(base.categories)
        self.channels, self.size = base.channels, base.size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, t = self.base[index]
        if self.scheme.per_image and self.scheme.key is not None and self.randomness == "nonce":
            return self.scheme.encrypt(x[None], nonce=[self.nonce_offset + index])[0], t
        return self.scheme.encrypt(x), t


@register_dataset
class FashionCanvas(DatasetSource):
    """Detection: real Fashion-MNIST items at random positions and scales on 64×64 canvases.

    Train: 4,000 canvases from the training items (seed 0); test: 1,000 from
    the test items (seed 1). Each canvas holds 1–4 items resized to 16–32 px,
    overlapping by at most IoU 0.2; each box is its item's non-zero pixels.
    Real objects in a synthetic layout: the objects are photographs, their
    arrangement is not.
    """

    name = "fashion-canvas"
    description = ("detection: real Fashion-MNIST items in a synthetic layout, 1-4 per 64x64 canvas, 16-32 px, "
                   "4000/1000 canvases, boxes from the items' pixels")
    num_classes, channels, size = 10, 1, (CANVAS_SIZE, CANVAS_SIZE)
    counts = {"train": 4000, "test": 1000}
    task = "detection"

    def available(self) -> Availability:
        from .registry import dataset_source

        return dataset_source("fashion-mnist", self.data_dir).available()

    def _load(self, split: str) -> CanvasDetection:
        items = create_dataset("fashion-mnist", split, data_dir=self.data_dir)
        x, y = items.get_batch(range(len(items)))
        return CanvasDetection.generate(x, y, FASHION_CLASSES, count=self.counts[split], seed=0 if split == "train"
                                        else 1, name=self.name, split=split)


def _coco_paths(root: Path, split: str) -> tuple[Path | None, Path | None]:
    ann = next((p for p in (root / "annotations" / f"instances_{split}.json",
                            root / "annotations" / f"instances_{split}2017.json") if p.is_file()), None)
    img = next((p for p in (root / split, root / f"{split}2017", root / "images" / split) if p.is_dir()), None)
    return ann, img


class CocoDetectionDataset(DetectionDataset):
    """A COCO-format folder read with torchvision's ``CocoDetection`` (pycocotools).

    Category ids are mapped to contiguous labels ``1..K`` in id order; crowd
    annotations and boxes without area are dropped; images become uint8
    ``(C,H,W)`` (``mode`` ``"RGB"`` or ``"L"``), resized with their boxes to
    ``image_size`` when given (needed for encryption and keyed detectors).
    """

    def __init__(self, root: Path, split: str, *, image_size: tuple[int, int] | None = None,
                 mode: str = "RGB") -> None:
        ann, img = _coco_paths(root, split)
        if ann is None:
            raise DetectionDataError(
                f"no COCO annotation file for split {split!r} under {root}: expected "
                f"{root / 'annotations' / f'instances_{split}.json'} (or instances_{split}2017.json), the layout "
                "torchvision's CocoDetection reads")
        if img is None:
            raise DetectionDataError(f"no image folder for split {split!r} under {root}: expected {root / split} "
                                     f"(or {root / (split + '2017')}) holding the images {ann.name} lists")
        try:
            meta = json.loads(ann.read_text())
        except (OSError, ValueError) as exc:
            raise DetectionDataError(f"{ann} is not a readable COCO annotation file ({exc})") from None
        missing = [k for k in ("images", "annotations", "categories") if k not in meta]
        if missing:
            raise DetectionDataError(f"{ann} lacks the COCO key(s) {', '.join(missing)}")
        try:
            import pycocotools  # noqa: F401
            from torchvision.datasets import CocoDetection
        except ImportError:
            raise DetectionDataError("reading COCO folders needs pycocotools: pip install 'keyveil[detection]'") \
                from None
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = CocoDetection(str(img), str(ann))
        cats = sorted(meta["categories"], key=lambda c: c["id"])
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.categories = ["__background__", *[c["name"] for c in cats]]
        self.name, self.split, self.mode = "coco", split, mode
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.channels, self.size = (3 if mode == "RGB" else 1), self.image_size

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int):
        from torchvision.transforms.functional import pil_to_tensor

        try:
            pil, anns = self.coco[index]
        except FileNotFoundError as exc:
            raise DetectionDataError(f"an image listed in the annotations is missing: {exc.filename}") from None
        x = pil_to_tensor(pil.convert(self.mode))
        boxes, labels = [], []
        for a in anns:
            bx, by, bw, bh = a["bbox"]
            if a.get("iscrowd", 0) or bw <= 0 or bh <= 0:
                continue
            if a["category_id"] not in self.cat_to_label:
                raise DetectionDataError(f"annotation {a.get('id')} has category_id {a['category_id']}, not in "
                                         "the file's categories")
            boxes.append([bx, by, bx + bw, by + bh])
            labels.append(self.cat_to_label[a["category_id"]])
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if self.image_size is not None and tuple(x.shape[1:]) != self.image_size:
            sy, sx = self.image_size[0] / x.shape[1], self.image_size[1] / x.shape[2]
            x = F.interpolate(x[None].float(), size=self.image_size, mode="bilinear", antialias=True,
                              align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
            b = b * torch.tensor([sx, sy, sx, sy])
        return x, {"boxes": b, "labels": torch.tensor(labels, dtype=torch.int64)}


@register_dataset
class CocoFolder(DatasetSource):
    """Detection: a COCO-format folder under ``--data-dir`` (torchvision's ``CocoDetection`` layout)."""

    name = "coco"
    description = ("detection: a COCO-format folder in --data-dir (annotations/instances_SPLIT.json + SPLIT/ "
                   "images; needs pycocotools)")
    num_classes, channels, size = 0, 3, None
    splits = ("train", "val", "test")
    task = "detection"

    def __init__(self, data_dir=None, *, image_size: tuple[int, int] | None = None, mode: str = "RGB") -> None:
        super().__init__(data_dir)
        if mode not in ("RGB", "L", "auto"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
        self.image_size, self.mode = image_size, "RGB" if mode == "auto" else mode

    def available(self) -> Availability:
        if self.data_dir is None:
            return Availability(False, "pass --data-dir: a folder with annotations/instances_train.json and train/")
        ann, img = _coco_paths(self.data_dir, "train")
        if ann is None or img is None:
            return Availability(False, f"{self.data_dir} has no annotations/instances_train.json with a train/ "
                                "image folder (torchvision's CocoDetection layout)")
        return Availability(True, str(self.data_dir))

    def load(self, split: str = "train") -> CocoDetectionDataset:
        if split not in self.splits:
            raise ValueError(f"dataset 'coco' has splits {', '.join(self.splits)}; got {split!r}")
        if self.data_dir is None:
            raise DatasetUnavailableError("dataset 'coco' needs --data-dir: a folder in torchvision's "
                                          "CocoDetection layout (annotations/instances_SPLIT.json, SPLIT/)")
        if not self.data_dir.is_dir():
            raise DatasetUnavailableError(f"--data-dir {self.data_dir} is not a folder")
        return CocoDetectionDataset(self.data_dir, split, image_size=self.image_size, mode=self.mode)
